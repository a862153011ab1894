import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit import primitives as P
from lowbit.granularity import per_row
from lowbit.ops import reference
from lowbit.ops.cpu_paths import choose_path
from lowbit.tensors import Int8DynActTensor, Int8Tensor
from lowbit.tensors.base import UnsupportedOpError
from lowbit.testing import FormatConformance, make_weight


class TestInt8WeightOnly(FormatConformance):
    tensor_cls = Int8Tensor
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    batch_sizes = [1, 7, 16, 17, 128, 129]  # both sides of the CUDA (16) and CPU (128) GEMV/GEMM switches
    min_linear_sqnr = 40.0


class TestInt8DynamicActivation(FormatConformance):
    tensor_cls = Int8DynActTensor
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    batch_sizes = [1, 7, 16, 17, 128, 129]
    min_linear_sqnr = 40.0

    def reference_linear(self, x, t, bias=None):
        # The dynamic format's numerics include activation quantization.
        y = reference.int8_dynamic_linear(x.reshape(-1, x.shape[-1]), t.qdata, t.scale)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], t.shape[0])


def test_codes_match_primitives():
    w = make_weight((32, 128), torch.float32)
    t = Int8Tensor.from_float(w)
    s, _ = P.choose_qparams_affine(w, "symmetric", per_row(w.shape), torch.int8, zero_point_kind="none")
    q = P.quantize_affine(w, per_row(w.shape), s, None, torch.int8, zero_point_kind="none")
    assert torch.equal(t.qdata, q)
    assert t.qdata.min() >= -127  # the symmetric mapping never uses -128
    assert torch.equal(t.dequantize(torch.float32), P.dequantize_affine(q, per_row(w.shape), s, None, zero_point_kind="none"))


def test_requantizing_dequantized_weight_gives_same_codes():
    t = Int8Tensor.from_float(make_weight((48, 64), torch.float32))
    t2 = Int8Tensor.from_float(t.dequantize(torch.float32))
    assert torch.equal(t.qdata, t2.qdata)


@pytest.mark.parametrize("cls", [Int8Tensor, Int8DynActTensor], ids=lambda c: c.__name__)
def test_transpose_and_mm_decomposition(cls):
    t = cls.from_float(make_weight((64, 128)))
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    assert t.t().shape == (128, 64)
    assert torch.equal(t.t().t().qdata, t.qdata)
    assert torch.equal(torch.mm(x, t.t()), F.linear(x, t))
    b = torch.randn(64, dtype=torch.bfloat16)
    assert torch.equal(torch.addmm(b, x, t.t()), F.linear(x, t, b))
    with pytest.raises(UnsupportedOpError):
        F.linear(torch.randn(5, 64, dtype=torch.bfloat16), t.t())  # transposed weight


@pytest.mark.parametrize("dim,start,end", [(0, 0, 32), (0, 16, 64), (1, 0, 64), (1, 32, 128)])
def test_narrow_and_slice_match_dense(dim, start, end):
    w = make_weight((64, 128), torch.float32)
    t = Int8Tensor.from_float(w)
    part = t.narrow(dim, start, end - start)
    dense = t.dequantize(torch.float32).narrow(dim, start, end - start)
    assert part.shape == dense.shape
    assert torch.equal(part.dequantize(torch.float32), dense)
    sl = t[start:end] if dim == 0 else t[:, start:end]
    assert torch.equal(sl.dequantize(torch.float32), dense)


def test_bad_inputs_raise_clear_errors():
    t = Int8Tensor.from_float(make_weight((64, 128)))
    with pytest.raises(ValueError, match="expects 128"):
        F.linear(torch.randn(2, 100, dtype=torch.bfloat16), t)
    with pytest.raises(TypeError, match="float32/float16/bfloat16 input"):
        F.linear(torch.ones(2, 128, dtype=torch.int32), t)
    with pytest.raises(ValueError, match="2-D"):
        Int8Tensor.from_float(torch.randn(4, 4, 4))
    with pytest.raises(ValueError, match="NaN/Inf"):
        Int8Tensor.from_float(torch.full((4, 4), float("nan")))


def test_compiled_graph_calls_lowbit_kernel():
    from torch._inductor.utils import run_and_get_code

    m = torch.nn.Linear(128, 64, dtype=torch.bfloat16)
    lowbit.quantize_(m, lowbit.Int8WeightOnlyConfig())
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(m, fullgraph=True), x)
    assert "lowbit.int8_weight_only_linear" in "\n".join(code)


@pytest.mark.parametrize("op", ["int8_weight_only_linear", "int8_dynamic_linear"])
def test_opcheck(op):
    t = Int8Tensor.from_float(make_weight((32, 64), torch.float32))
    for m in (3, 20):
        x = torch.randn(m, 64, dtype=torch.bfloat16)
        torch.library.opcheck(getattr(torch.ops.lowbit, op), (x, t.qdata, t.scale))


@pytest.mark.parametrize("m", [1, 16, 128, 129, 200])
def test_cpu_kernel_matches_reference_exactly_enough(m):
    # Device kernel vs pure-PyTorch reference: same function on any input.
    t = Int8Tensor.from_float(make_weight((96, 256), torch.float32))
    x = torch.randn(m, 256, dtype=torch.float32)
    for op in ("int8_weight_only_linear", "int8_dynamic_linear"):
        y = getattr(torch.ops.lowbit, op)(x, t.qdata, t.scale)
        ref = getattr(reference, op)(x, t.qdata, t.scale)
        # The fp32 GEMM paths are fp32 arithmetic (> 100 dB), as is the exact integer brgemm
        # of int8 dynamic. The GEMV takes bf16: weight-only rounds fp32 activations to bf16
        # (so does its bf16 brgemm) and dynamic rounds its integer accumulators to bf16
        # (2^-9 relative each, so ~45-60 dB). Which path runs depends on the CPU class.
        path = choose_path(op, m)
        exact = path in ("dequant_gemm", "fp32_gemm") or (op == "int8_dynamic_linear" and path == "brgemm")
        bar = 100 if exact else 40
        assert lowbit.sqnr(ref, y) > bar, (op, lowbit.sqnr(ref, y))
