"""Int4TiledCudaTensor: tiled pack/unpack (CPU), reference numerics, and on CUDA the
bit-equality with aten._convert_weight_to_int4pack and the tinygemm kernel."""

import importlib.util

import pytest
import torch

import lowbit
from lowbit.configs.int4 import int4_from_codes
from lowbit.errors import UnsupportedError
from lowbit.ops import reference
from lowbit.packing.int4_tiled import (
    codes_to_convert_input,
    pack_int4_tiled,
    pack_tinygemm_scale_and_zero,
    unpack_int4_tiled,
    unpack_tinygemm_scale_and_zero,
)
from lowbit.tensors import Int4TiledCudaTensor
from lowbit.tensors.int4_common import quantize_int4, scale_dtype_for
from lowbit.testing import FormatConformance, make_weight, skip_unless_supported


class TestInt4TiledCuda(FormatConformance):
    tensor_cls = Int4TiledCudaTensor
    devices = ["cuda"]
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    batch_sizes = [1, 7, 32, 33, 100]  # both sides of CUDA_INT4_TILED_MAX_M
    min_linear_sqnr = 45.0
    fuzz_group_sizes = (32, 64, 128, 256)
    fuzz_n_multiple = 8  # N_TILE


class TestInt4TiledCudaStoredOnCpu(FormatConformance):
    """The tensor stored on CPU (build, save, load); F.linear runs the reference op there."""

    tensor_cls = Int4TiledCudaTensor
    devices = ["cpu"]
    kernel_devices = ("cuda",)
    batch_sizes = [1, 7]
    min_linear_sqnr = 45.0
    fuzz_group_sizes = (32, 64, 128, 256)
    fuzz_n_multiple = 8  # N_TILE


# ---------------------------------------------------------------------- packing on CPU


def _convert_like_cuda_kernel(in_u8: torch.Tensor, inner_k_tiles: int) -> torch.Tensor:
    """Scalar transliteration of int4mm.cu's matrix_to_m16n8k16_Bint4_layout (independent of
    the vectorized packer): one int32 per (n-tile, outer k-tile, lane, k-tile pair)."""
    n, k_half = in_u8.shape
    out = torch.zeros(n // 8, k_half * 2 // (inner_k_tiles * 16), 32, inner_k_tiles // 2, dtype=torch.int64)
    b = in_u8.tolist()
    for nt in range(out.shape[0]):
        for ko in range(out.shape[1]):
            for lane in range(32):
                for ik in range(0, inner_k_tiles, 2):
                    row = b[nt * 8 + lane // 4]
                    base = (ko * inner_k_tiles + ik) * 8
                    v = [row[base + lane % 4], row[base + lane % 4 + 4], row[base + 8 + lane % 4], row[base + 12 + lane % 4]]
                    packed = 0
                    for i in range(4):
                        packed |= (v[i] >> 4) << (4 * i)  # high nibbles (even k) -> low 16 bits
                        packed |= (v[i] & 0xF) << (16 + 4 * i)  # low nibbles (odd k) -> high 16 bits
                    out[nt, ko, lane, ik // 2] = packed
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


@pytest.mark.parametrize("inner_k_tiles", [2, 4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_pack_matches_kernel_transliteration(inner_k_tiles, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (16, inner_k_tiles * 32), generator=g, dtype=torch.uint8)
    expected = _convert_like_cuda_kernel(codes_to_convert_input(codes), inner_k_tiles)
    assert torch.equal(pack_int4_tiled(codes, inner_k_tiles), expected)


_FUZZ = [(n, k, ikt) for n, k in [(8, 128), (24, 256), (64, 512), (136, 1024)] for ikt in (2, 4, 8) if k % (ikt * 16) == 0]


@pytest.mark.parametrize("n,k,inner_k_tiles", _FUZZ, ids=[f"{n}x{k}-ikt{i}" for n, k, i in _FUZZ])
@pytest.mark.parametrize("seed", range(3))
def test_pack_unpack_round_trip(n, k, inner_k_tiles, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    packed = pack_int4_tiled(codes, inner_k_tiles)
    assert packed.shape == (n // 8, k // (inner_k_tiles * 16), 32, inner_k_tiles // 2)
    assert packed.dtype == torch.int32
    assert torch.equal(unpack_int4_tiled(packed), codes)


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("seed", range(2))
def test_from_codes_to_codes_bit_exact(group_size, seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 48, 512
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = (torch.rand(n, k // group_size, generator=g) + 0.1).to(torch.bfloat16)
    zero = torch.randn(n, k // group_size, generator=g).to(torch.bfloat16)
    t = Int4TiledCudaTensor.from_codes(codes, scale, zero, group_size=group_size, shape=(n, k), dtype=torch.bfloat16)
    c2, s2, z2 = t.to_codes()
    assert torch.equal(c2, codes) and torch.equal(s2, scale) and torch.equal(z2, zero)
    s3, z3 = unpack_tinygemm_scale_and_zero(pack_tinygemm_scale_and_zero(scale, zero))
    assert torch.equal(s3, scale) and torch.equal(z3, zero)


def test_dequantize_matches_primitives():
    w = make_weight((64, 256), torch.float32)
    t = Int4TiledCudaTensor.from_float(w, group_size=64)
    codes, scale, zero = t.to_codes()
    expected = lowbit.primitives.dequantize_affine(
        codes, (1, 64), scale, zero, 0, 15, zero_point_kind="float", output_dtype=torch.float32
    )
    assert torch.equal(t.dequantize(torch.float32), expected)
    assert lowbit.sqnr(w, expected) > 18  # min-max int4, group 64, Gaussian weights


def test_errors_are_clear():
    w = make_weight((64, 256))
    codes, scale, zero = Int4TiledCudaTensor.from_float(w).to_codes()
    kw = dict(group_size=128, shape=(64, 256), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="float zero point"):
        Int4TiledCudaTensor.from_codes(codes, scale, zero.to(torch.int32), **kw)
    with pytest.raises(ValueError, match="0..15"):
        Int4TiledCudaTensor.from_codes(codes + 16, scale, zero, **kw)
    with pytest.raises(ValueError, match="group_size"):
        Int4TiledCudaTensor.from_float(w, group_size=100)
    with pytest.raises(ValueError, match="N % 8"):
        Int4TiledCudaTensor.from_float(make_weight((60, 256)))
    assert "CUDA" in Int4TiledCudaTensor.supports(w, "cpu")
    assert "group_size" in Int4TiledCudaTensor.supports(w, "cuda", group_size=16)
    with pytest.raises(UnsupportedError, match="runs on 'meta'"):
        Int4TiledCudaTensor.from_float(w).to("meta")  # moves repack; no int4 format runs there


def test_opcheck_reference():
    t = Int4TiledCudaTensor.from_float(make_weight((32, 256)), group_size=64)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.lowbit.int4_tiled_cuda_mm, (x, t.qdata, t.scale_and_zero, 64))


def test_compiled_graph_calls_lowbit_op():
    from torch._inductor.utils import run_and_get_code

    m = torch.nn.Linear(256, 64, bias=False, dtype=torch.bfloat16)
    m.weight = torch.nn.Parameter(Int4TiledCudaTensor.from_float(m.weight.detach()), requires_grad=False)
    torch._dynamo.reset()
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(m, fullgraph=True), torch.randn(4, 256, dtype=torch.bfloat16))
    assert "lowbit.int4_tiled_cuda_mm" in "\n".join(code)


# ---------------------------------------------------------------------- CUDA (skip without it)


def _cuda_weight(shape, **kw):
    w = make_weight(shape, torch.bfloat16, "cpu", seed=3)
    skip_unless_supported(Int4TiledCudaTensor, w.to("cuda") if torch.cuda.is_available() else w, "cuda")
    return w


@pytest.mark.parametrize("inner_k_tiles", [2, 4, 8])
@pytest.mark.parametrize("n,k", [(8, 128), (96, 512), (256, 4096)])
def test_pack_equals_aten_convert_on_cuda(n, k, inner_k_tiles):
    _cuda_weight((n, k))
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(n + k))
    ours = pack_int4_tiled(codes, inner_k_tiles)
    theirs = torch.ops.aten._convert_weight_to_int4pack(codes_to_convert_input(codes).cuda(), inner_k_tiles)
    assert theirs.shape == ours.shape and theirs.dtype == ours.dtype
    assert torch.equal(theirs.cpu(), ours)
    assert torch.equal(unpack_int4_tiled(theirs).cpu(), codes)  # unpack runs on CUDA too


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("inner_k_tiles", [2, 8])
@pytest.mark.parametrize("m", [1, 16, 32, 33, 512])  # both sides of CUDA_INT4_TILED_MAX_M
def test_cuda_kernel_matches_reference(group_size, inner_k_tiles, m):
    w = _cuda_weight((512, 1024))
    t = Int4TiledCudaTensor.from_float(w, group_size=group_size, inner_k_tiles=inner_k_tiles).to("cuda")
    x = torch.randn(m, 1024, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(m)).cuda()
    y = torch.ops.lowbit.int4_tiled_cuda_mm(x, t.qdata, t.scale_and_zero, group_size)
    ref = reference.int4_tiled_cuda_mm(x.cpu(), t.qdata.cpu(), t.scale_and_zero.cpu(), group_size)
    assert lowbit.sqnr(ref.float(), y.float().cpu()) >= 45.0


@pytest.mark.parametrize("group_size", [32, 256])
def test_cuda_fast_dequantize_is_bit_exact(group_size):
    from lowbit.ops import cuda as lowbit_cuda

    w = _cuda_weight((256, 2048))
    t = Int4TiledCudaTensor.from_float(w, group_size=group_size).to("cuda")
    fast = lowbit_cuda._dequantize_int4_tiled_bf16(t.qdata, t.scale_and_zero, group_size)
    assert torch.equal(fast, lowbit_cuda._dequantize_int4_tiled_torch(t.qdata, t.scale_and_zero, group_size))
    assert torch.equal(fast.cpu(), t.dequantize(torch.float32).to(torch.bfloat16).cpu())


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package (pip install triton)")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the compiled kernel is tested above")
@pytest.mark.parametrize(("group_size", "inner_k_tiles", "shape"),
                         [(32, 2, (40, 2048)), (256, 8, (24, 1024)), (64, 8, (8, 256))])
def test_fast_dequantize_in_the_triton_interpreter(monkeypatch, group_size, inner_k_tiles, shape):
    # The CPU stand-in for the GPU kernel: every output element comes from the right nibble
    # and group. The interpreter rounds float32 -> bf16 differently from CUDA, so this
    # allows one bf16 step (an index error is off by whole quantization steps).
    from lowbit.ops import cuda as lowbit_cuda

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(lowbit_cuda, "_TRITON_DEQUANT", None)  # re-decorate under the interpreter
    t = Int4TiledCudaTensor.from_float(make_weight(shape, torch.float32), group_size=group_size,
                                       inner_k_tiles=inner_k_tiles)
    fast = lowbit_cuda._dequantize_int4_tiled_bf16(t.qdata, t.scale_and_zero, group_size).float()
    exact = t.dequantize(torch.float32)
    assert fast.shape == exact.shape
    assert torch.all((fast - exact).abs() <= exact.abs() * 2**-7)


@pytest.mark.parametrize("k", [576, 1024], ids=["K576", "K1024"])
def test_from_float_matches_the_config_path(k):
    # One quantizer, one tiling rule: from_float and Int4WeightOnlyConfig's handler build
    # the same tensor (same inner_k_tiles, epsilon and stored scale dtype).
    w = make_weight((64, k), torch.float32)
    via_config = int4_from_codes(
        Int4TiledCudaTensor, *quantize_int4(w, 64, "float", "minmax", scale_dtype_for(Int4TiledCudaTensor, w.dtype)),
        "float", group_size=64, shape=w.shape, dtype=w.dtype,
    )
    t = Int4TiledCudaTensor.from_float(w, group_size=64)
    assert t.inner_k_tiles == via_config.inner_k_tiles
    assert torch.equal(t.qdata, via_config.qdata) and torch.equal(t.scale_and_zero, via_config.scale_and_zero)
