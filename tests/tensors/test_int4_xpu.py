"""Int4XpuTensor (integer zero point) and Int4XpuFloatZpTensor (float zero point).

No Intel GPU is available here: the xpu conformance runs skip, and packing, unpacking,
the reference linear and serialization are tested with the tensors stored on CPU.
"""

import sys

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.errors import UnsupportedError
from lowbit.packing.int4_xpu import codes_to_xpu_convert_input, pack_int4_xpu, unpack_int4_xpu
from lowbit.tensors import Int4XpuFloatZpTensor, Int4XpuTensor
from lowbit.testing import FormatConformance, make_weight

_CLASSES = [Int4XpuTensor, Int4XpuFloatZpTensor]


class _StoredOnCpu(FormatConformance):
    devices = ["cpu"]
    kernel_devices = ("xpu",)
    batch_sizes = [1, 7]
    min_linear_sqnr = 45.0
    fuzz_group_sizes = (16, 32, 64, 128, 256)
    fuzz_k_multiple = 8


class TestInt4XpuOnXpu(FormatConformance):
    tensor_cls = Int4XpuTensor
    devices = ["xpu"]
    act_dtypes = [torch.bfloat16, torch.float16]


class TestInt4XpuFloatZpOnXpu(FormatConformance):
    tensor_cls = Int4XpuFloatZpTensor
    devices = ["xpu"]
    act_dtypes = [torch.bfloat16, torch.float16]


class TestInt4XpuStoredOnCpu(_StoredOnCpu):
    tensor_cls = Int4XpuTensor


class TestInt4XpuFloatZpStoredOnCpu(_StoredOnCpu):
    tensor_cls = Int4XpuFloatZpTensor


# ---------------------------------------------------------------------- packing


_SHAPES = [(1, 8), (16, 64), (48, 256), (100, 1024)]


@pytest.mark.parametrize("n,k", _SHAPES, ids=[f"{n}x{k}" for n, k in _SHAPES])
@pytest.mark.parametrize("seed", range(3))
def test_pack_unpack_round_trip(n, k, seed):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    packed = pack_int4_xpu(codes)
    assert packed.shape == (n, k // 8) and packed.dtype == torch.int32
    assert torch.equal(unpack_int4_xpu(packed), codes)


@pytest.mark.skipif(sys.byteorder != "little", reason="the byte view below assumes a little-endian host")
def test_packed_bytes_are_the_convert_input():
    # XPU's _convert_weight_to_int4pack copies 4 input bytes into each int32, first byte
    # lowest; so the int32 tensor viewed as bytes must equal the [N, K/2] uint8 input,
    # whose bytes hold the even k in the low nibble.
    codes = torch.randint(0, 16, (24, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(pack_int4_xpu(codes).view(torch.uint8), codes_to_xpu_convert_input(codes))
    assert int(codes_to_xpu_convert_input(codes)[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4)


# ---------------------------------------------------------------------- codes interface


@pytest.mark.parametrize("group_size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("zp_dtype", [torch.int8, torch.int32, torch.uint8, torch.int64], ids=str)
def test_int_zero_point_codes_bit_exact(group_size, zp_dtype):
    g = torch.Generator().manual_seed(group_size)
    n, k = 40, 512
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = (torch.rand(n, k // group_size, generator=g) + 0.1).to(torch.float16)
    zero = torch.randint(0, 16, (n, k // group_size), generator=g).to(zp_dtype)
    t = Int4XpuTensor.from_codes(codes, scale, zero, group_size=group_size, shape=(n, k), dtype=torch.float16)
    assert t.zero_point.dtype == torch.int8 and t.zero_point.shape == (k // group_size, n)
    c2, s2, z2 = t.to_codes()
    assert torch.equal(c2, codes) and torch.equal(s2, scale)
    assert torch.equal(z2.to(torch.int64), zero.to(torch.int64))


@pytest.mark.parametrize("group_size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_float_zero_point_codes_bit_exact(group_size, param_dtype):
    g = torch.Generator().manual_seed(group_size)
    n, k = 40, 512
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = (torch.rand(n, k // group_size, generator=g) + 0.1).to(param_dtype)
    zero = torch.randn(n, k // group_size, generator=g).to(param_dtype)
    t = Int4XpuFloatZpTensor.from_codes(codes, scale, zero, group_size=group_size, shape=(n, k), dtype=param_dtype)
    assert t.scale_and_zero.shape == (k // group_size, n, 2)
    c2, s2, z2 = t.to_codes()
    assert torch.equal(c2, codes) and torch.equal(s2, scale) and torch.equal(z2, zero)


@pytest.mark.parametrize("cls,kind", [(Int4XpuTensor, "int"), (Int4XpuFloatZpTensor, "float")], ids=["int", "float"])
def test_dequantize_matches_primitives(cls, kind):
    w = make_weight((32, 256), torch.float32)
    t = cls.from_float(w, group_size=64)
    codes, scale, zero = t.to_codes()
    expected = lowbit.primitives.dequantize_affine(
        codes, (1, 64), scale, zero, 0, 15, zero_point_kind=kind, output_dtype=torch.float32
    )
    assert torch.equal(t.dequantize(torch.float32), expected)
    assert lowbit.sqnr(w, expected) > 18


def test_zero_point_kinds_are_separate_classes():
    w = make_weight((32, 256))
    ci, si, zi = Int4XpuTensor.from_float(w).to_codes()
    cf, sf, zf = Int4XpuFloatZpTensor.from_float(w).to_codes()
    kw = dict(group_size=128, shape=(32, 256), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="integer zero point"):
        Int4XpuTensor.from_codes(cf, sf, zf, **kw)
    with pytest.raises(ValueError, match="float zero point"):
        Int4XpuFloatZpTensor.from_codes(ci, si, zi, **kw)


@pytest.mark.parametrize("cls", _CLASSES, ids=lambda c: c.__name__)
def test_supports_and_device_moves(cls):
    w = make_weight((32, 256))
    assert "xpu" in cls.supports(w, "cpu")
    assert "xpu" in cls.supports(w, "cuda")
    assert "group_size" in cls.supports(w, "xpu", group_size=100)
    t = cls.from_float(w)
    with pytest.raises(UnsupportedError, match="runs on 'meta'"):  # moves repack; no int4 format runs there
        t.to("meta")
    with pytest.raises(ValueError, match="group_size"):
        cls.from_float(w, group_size=48)


@pytest.mark.parametrize("cls,op", [(Int4XpuTensor, "int4_xpu_mm"), (Int4XpuFloatZpTensor, "int4_xpu_float_zp_mm")])
def test_opcheck_reference(cls, op):
    t = cls.from_float(make_weight((32, 256)), group_size=64)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    params = (t.scale, t.zero_point) if cls is Int4XpuTensor else (t.scale_and_zero,)
    torch.library.opcheck(getattr(torch.ops.lowbit, op), (x, t.qdata, *params, 64))


@pytest.mark.parametrize("cls", _CLASSES, ids=lambda c: c.__name__)
def test_cpu_linear_is_reference(cls):
    t = cls.from_float(make_weight((64, 512)), group_size=32)
    x = torch.randn(4, 512)
    assert lowbit.sqnr(F.linear(x, t.dequantize(torch.float32)), F.linear(x, t)) > 100
