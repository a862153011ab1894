import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit import primitives as P
from lowbit.errors import UnsupportedError
from lowbit.packing import pack_int4_nibbles, unpack_int4_nibbles
from lowbit.tensors import Int4PlainTensor, Int4TinygemmCpuTensor
from lowbit.tensors.base import UnsupportedOpError
from lowbit.tensors.int4_common import quantize_int4
from lowbit.testing import FormatConformance, assert_same_tensor, make_weight


class _PlainSuite(FormatConformance):
    """Int4PlainTensor is storage only: the linear-based checks become 'linear raises'."""

    tensor_cls = Int4PlainTensor
    devices = ["cpu"]
    has_linear = False
    zero_point_kind = "float"

    def make(self, w):
        return Int4PlainTensor.from_float(w, group_size=64, zero_point_kind=self.zero_point_kind)

    def test_linear_matches_reference(self, shape, act_dtype, device):
        _, t = self.build(shape, device, act_dtype)
        with pytest.raises(UnsupportedOpError, match="from_checkpoint"):
            F.linear(torch.randn(2, shape[1]).to(act_dtype), t)

    def test_linear_3d_and_bias(self, shape, device):
        _, t = self.build(shape, device)
        with pytest.raises(UnsupportedOpError, match="checkpoint form"):
            F.linear(torch.randn(2, 3, shape[1]).to(self.weight_dtype), t, torch.zeros(shape[0]))

    def test_safetensors_round_trip(self, shape, device):
        # Loading repacks for the device; the repacked weight dequantizes to the same values.
        _, t = self.build(shape, device)
        m = nn.Linear(shape[1], shape[0], bias=False)
        m.weight = nn.Parameter(t, requires_grad=False)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.safetensors")
            lowbit.save_file(m, path)
            loaded = lowbit.load_file(path, device)["weight"]
        assert isinstance(loaded, Int4TinygemmCpuTensor)
        tol = 0 if self.zero_point_kind == "float" else _int_zero_tolerance(t)
        assert (loaded.dequantize(torch.float32) - t.dequantize(torch.float32)).abs().max() <= tol

    def test_compile_matches_eager(self, shape, device):
        pytest.skip("Int4PlainTensor has no linear to compile (storage format)")


def _int_zero_tolerance(t):
    # int -> float zero point conversion rounds (8 - z) * s to the scale dtype: half an ulp.
    return float(((8 - t.zero_point).abs() * t.scale.float()).max()) * 2.0**-8


class TestInt4PlainFloatZero(_PlainSuite):
    zero_point_kind = "float"


class TestInt4PlainIntZero(_PlainSuite):
    zero_point_kind = "int"
    fresh_process_check = False  # TestInt4PlainFloatZero runs it


def test_nibble_order_is_low_first():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert pack_int4_nibbles(codes).tolist() == [[0x21, 0x0F]]


@pytest.mark.parametrize("n,k", [(1, 2), (7, 64), (33, 256)], ids=str)
def test_nibbles_round_trip(n, k):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    assert torch.equal(unpack_int4_nibbles(pack_int4_nibbles(codes)), codes)


@pytest.mark.parametrize("kind", ["float", "int"])
def test_dequantize_equals_quantized_values(kind):
    w = make_weight((48, 256), torch.float32, heavy_tail=True)
    codes, scale, zero = quantize_int4(w, 64, kind)
    t = Int4PlainTensor.from_codes(codes, scale, zero, group_size=64, shape=w.shape, dtype=w.dtype)
    assert t.zero_point_kind == kind
    c2, s2, z2 = t.to_codes()
    assert torch.equal(c2, codes) and torch.equal(s2, scale) and torch.equal(z2, zero)
    want = P.dequantize_affine(codes, (1, 64), scale, zero, 0, 15, kind, torch.float32)
    assert torch.equal(t.dequantize(torch.float32), want)


def test_float_checkpoint_repacks_bit_exact_on_cpu():
    t = Int4TinygemmCpuTensor.from_float(make_weight((80, 256)), group_size=128)
    plain = t.to_checkpoint()
    assert plain.zero_point_kind == "float"
    assert_same_tensor(plain.from_checkpoint(torch.device("cpu")), t)


def test_int_zero_point_on_cpu_is_converted_within_bound():
    w = make_weight((64, 256), torch.bfloat16, heavy_tail=True)
    plain = Int4PlainTensor.from_float(w, group_size=64, zero_point_kind="int")
    t = plain.from_checkpoint(torch.device("cpu"))
    assert isinstance(t, Int4TinygemmCpuTensor)
    codes, _, _ = t.to_codes()
    assert torch.equal(codes, plain.to_codes()[0])  # the codes themselves never change
    err = (t.dequantize(torch.float32) - plain.dequantize(torch.float32)).abs().max()
    assert err <= _int_zero_tolerance(plain)


def test_from_codes_validates():
    codes = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    s = torch.rand(8, 2)
    with pytest.raises(ValueError, match="shape"):
        Int4PlainTensor.from_codes(codes, s[:, :1], s, group_size=32, shape=(8, 64), dtype=torch.float32)
    with pytest.raises(ValueError, match="integer zero_point"):
        Int4PlainTensor.from_codes(codes, s, s, group_size=32, shape=(8, 64), dtype=torch.float32, zero_point_kind="int")
    with pytest.raises(ValueError, match="codes in 0..15"):
        Int4PlainTensor.from_codes(codes + 16, s, s, group_size=32, shape=(8, 64), dtype=torch.float32)
    with pytest.raises(ValueError, match="uint8 codes"):
        Int4PlainTensor.from_codes(codes.int(), s, s, group_size=32, shape=(8, 64), dtype=torch.float32)


def test_plain_slices_on_group_boundaries():
    t = Int4PlainTensor.from_float(make_weight((32, 256), torch.float32), group_size=64, zero_point_kind="int")
    assert torch.equal(t[:, 64:192].dequantize(), t.dequantize()[:, 64:192])
    assert torch.equal(t[5:20].dequantize(), t.dequantize()[5:20])


def test_no_device_format_raises_unsupported():
    t = Int4PlainTensor.from_float(make_weight((32, 128)), group_size=32)
    with pytest.raises(UnsupportedError, match="no int4 format"):
        t.from_checkpoint(torch.device("meta"))
