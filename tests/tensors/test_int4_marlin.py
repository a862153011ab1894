"""Int4MarlinTensor: Marlin layout pack/unpack (CPU, bit-exact), the layout's meaning
(fragment mapping), the reference linear on CPU and the Triton kernel on CUDA."""

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.errors import UnsupportedError
from lowbit.packing.int4_marlin import (
    pack_marlin_int4,
    pack_marlin_scales,
    pack_marlin_zero_points,
    unpack_marlin_int4,
    unpack_marlin_scales,
    unpack_marlin_zero_points,
)
from lowbit.tensors import Int4MarlinTensor
from lowbit.testing import FormatConformance, make_weight


class TestInt4MarlinCuda(FormatConformance):
    tensor_cls = Int4MarlinTensor
    shapes = [(64, 256), (128, 512)]
    devices = ["cuda"]
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    min_linear_sqnr = 45.0
    fuzz_group_sizes = (32, 64, 128)
    fuzz_n_multiple = 64  # MARLIN_N_CHUNK
    fuzz_k_multiple = 128  # Marlin's smallest K tile


class TestInt4MarlinStoredOnCpu(FormatConformance):
    """Stored on CPU; F.linear runs the reference op (the only implementation so far)."""

    tensor_cls = Int4MarlinTensor
    shapes = [(64, 256), (128, 512)]
    devices = ["cpu"]
    kernel_devices = ("cuda",)
    batch_sizes = [1, 7]
    min_linear_sqnr = 45.0
    fuzz_group_sizes = (32, 64, 128)
    fuzz_n_multiple = 64  # MARLIN_N_CHUNK
    fuzz_k_multiple = 128  # Marlin's smallest K tile


# ---------------------------------------------------------------------- layout meaning

# Nibble j of a packed int32 -> (n-half, k offset) within a lane's fragment, from the
# PTX m16n8k16 B fragment (b0: k = 2c, 2c+1; b1: k = 2c+8, 2c+9 with c = lane % 4) and
# Marlin's dequant, which reads nibbles (0, 4) and (1, 5) for the first n8 block and,
# after ">> 8", nibbles (2, 6) and (3, 7) for the second.
_NIBBLE_TO_HALF_DK = {0: (0, 0), 4: (0, 1), 1: (0, 8), 5: (0, 9), 2: (1, 0), 6: (1, 1), 3: (1, 8), 7: (1, 9)}


def _decode_by_fragment_spec(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Scalar decoder written from the fragment description (independent of the packer)."""
    out = torch.zeros(n, k, dtype=torch.uint8)
    words = (packed.to(torch.int64) & 0xFFFFFFFF).tolist()
    for kt, row in enumerate(words):
        for col, word in enumerate(row):
            chunk, pos = divmod(col, 128)  # 128 int32 = 1024 values = four 16x16 tiles
            lane, tile = divmod(pos, 4)  # each lane owns 4 consecutive words, one per tile
            for nib in range(8):
                half, dk = _NIBBLE_TO_HALF_DK[nib]
                nn = 64 * chunk + 16 * tile + 8 * half + lane // 4
                kk = 16 * kt + 2 * (lane % 4) + dk
                out[nn, kk] = (word >> (4 * nib)) & 0xF
    return out


@pytest.mark.parametrize("seed", range(2))
def test_layout_matches_mma_fragment_spec(seed):
    codes = torch.randint(0, 16, (128, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(_decode_by_fragment_spec(pack_marlin_int4(codes), 128, 32), codes)


def test_scale_order_matches_spec():
    n, g = 128, 4
    s = torch.arange(n * g, dtype=torch.float32).reshape(n, g)
    packed = pack_marlin_scales(s, k=g * 128)
    for c in range(n // 64):  # grouped: slot 8 i + j of each 64-chunk holds column i + 8 j
        for i in range(8):
            for j in range(8):
                assert torch.equal(packed[:, 64 * c + 8 * i + j], s[64 * c + i + 8 * j, :])
    single = pack_marlin_scales(s[:, :1], k=128)  # channelwise: pairs 2i + {0,1,8,9,16,17,24,25}
    offs = (0, 1, 8, 9, 16, 17, 24, 25)
    for c in range(n // 32):
        for i in range(4):
            for jj, o in enumerate(offs):
                assert single[0, 32 * c + 8 * i + jj] == s[32 * c + 2 * i + o, 0]


# ---------------------------------------------------------------------- round trips (fuzz)

_SHAPES = [(64, 16), (64, 128), (128, 256), (192, 512), (256, 1024)]


@pytest.mark.parametrize("n,k", _SHAPES, ids=[f"{n}x{k}" for n, k in _SHAPES])
@pytest.mark.parametrize("seed", range(3))
def test_weight_pack_unpack_round_trip(n, k, seed):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    packed = pack_marlin_int4(codes)
    assert packed.shape == (k // 16, 2 * n) and packed.dtype == torch.int32
    assert torch.equal(unpack_marlin_int4(packed), codes)


_GROUPS = [(64, 256, 32), (128, 512, 64), (192, 1024, 128), (64, 1024, 256), (128, 256, 256)]


@pytest.mark.parametrize("n,k,group_size", _GROUPS, ids=[f"{n}x{k}-g{g}" for n, k, g in _GROUPS])
@pytest.mark.parametrize("seed", range(2))
def test_scale_and_zero_point_round_trip(n, k, group_size, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k // group_size, generator=g).to(torch.float16)
    z = torch.randint(0, 16, (n, k // group_size), generator=g, dtype=torch.uint8)
    assert torch.equal(unpack_marlin_scales(pack_marlin_scales(s, k)), s)
    zp = pack_marlin_zero_points(z)
    assert zp.shape == (k // group_size, n // 8) and zp.dtype == torch.int32
    assert torch.equal(unpack_marlin_zero_points(zp), z)


@pytest.mark.parametrize("group_size", [32, 64, 128, 512])  # 512 == K: channelwise
@pytest.mark.parametrize("zp_dtype", [torch.int32, torch.uint8, torch.int64], ids=str)
def test_from_codes_to_codes_bit_exact(group_size, zp_dtype):
    g = torch.Generator().manual_seed(group_size)
    n, k = 128, 512
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = (torch.rand(n, k // group_size, generator=g) + 0.1).to(torch.bfloat16)
    zero = torch.randint(0, 16, (n, k // group_size), generator=g).to(zp_dtype)
    t = Int4MarlinTensor.from_codes(codes, scale, zero, group_size=group_size, shape=(n, k), dtype=torch.bfloat16)
    c2, s2, z2 = t.to_codes()
    assert torch.equal(c2, codes) and torch.equal(s2, scale)
    assert z2.dtype == torch.int8 and torch.equal(z2.to(torch.int64), zero.to(torch.int64))


def test_dequantize_matches_primitives():
    w = make_weight((64, 256), torch.float32)
    t = Int4MarlinTensor.from_float(w, group_size=64)
    codes, scale, zero = t.to_codes()
    expected = lowbit.primitives.dequantize_affine(
        codes, (1, 64), scale, zero, 0, 15, zero_point_kind="int", output_dtype=torch.float32
    )
    assert torch.equal(t.dequantize(torch.float32), expected)
    assert lowbit.sqnr(w, expected) > 18


def test_errors_and_devices():
    w = make_weight((64, 256))
    t = Int4MarlinTensor.from_float(w)
    codes, scale, zero = t.to_codes()
    kw = dict(group_size=128, shape=(64, 256), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="integer zero point"):
        Int4MarlinTensor.from_codes(codes, scale, zero.to(torch.bfloat16), **kw)
    with pytest.raises(ValueError, match="zero points must be in 0..15"):
        Int4MarlinTensor.from_codes(codes, scale, zero.to(torch.int32) + 16, **kw)
    with pytest.raises(ValueError, match="out_features % 64"):
        Int4MarlinTensor.from_float(make_weight((96, 256)))
    with pytest.raises(ValueError, match="group_size"):
        Int4MarlinTensor.from_float(make_weight((64, 512)), group_size=256)
    assert "CUDA" in Int4MarlinTensor.supports(w, "cpu")
    with pytest.raises(UnsupportedError, match="runs on 'meta'"):  # moves repack; no int4 format runs there
        t.to("meta")


def test_opcheck_reference():
    t = Int4MarlinTensor.from_float(make_weight((64, 256)), group_size=64)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.lowbit.int4_marlin_mm, (x, t.qdata, t.scale, t.zero_point, 64))


def test_linear_is_the_reference_numerics():
    t = Int4MarlinTensor.from_float(make_weight((128, 512)), group_size=32)
    x = torch.randn(5, 512, dtype=torch.float32)
    ref = F.linear(x, t.dequantize(torch.float32))
    assert lowbit.sqnr(ref, F.linear(x, t)) > 100


def test_cuda_linear_is_the_triton_kernel_not_the_reference():
    from lowbit.ops import triton_int4
    from lowbit.ops.library import kernel

    assert kernel("int4_marlin_mm", "cuda") is triton_int4._int4_marlin_mm_cuda


def test_config_marlin_with_float_zero_point_raises():
    with pytest.raises(ValueError, match="zero_point='int'"):
        lowbit.Int4WeightOnlyConfig(packing="marlin")
    assert lowbit.Int4WeightOnlyConfig(packing="marlin", zero_point="int").zero_point == "int"


@pytest.mark.parametrize("group_size", [32, 128])
def test_cuda_kernel_matches_cpu_reference(group_size):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    t = Int4MarlinTensor.from_float(make_weight((128, 512)), group_size=group_size)
    x = torch.randn(9, 512, dtype=torch.bfloat16)
    y_cuda = F.linear(x.cuda(), t.to("cuda")).cpu()
    assert lowbit.sqnr(F.linear(x, t).float(), y_cuda.float()) > 45
    # Off CUDA a Marlin tensor is unpacked into the CPU's int4 format, codes unchanged.
    back = t.to("cuda").to("cpu")
    assert type(back).__name__ == "Int4TinygemmCpuTensor"
    assert torch.equal(back.to_codes()[0], t.to_codes()[0])
