"""Float8 (e4m3) formats: conformance on CUDA (sm89+), stored-on-CPU behaviour (reference
numerics), config validation and the clear errors where float8 cannot run."""

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.errors import UnsupportedError
from lowbit.ops import reference
from lowbit.tensors import Float8DynActPerTensorTensor, Float8DynActTensor, Float8Tensor
from lowbit.tensors.base import UnsupportedOpError
from lowbit.testing import FormatConformance, make_weight

_CUDA_BATCHES = [1, 2, 7, 16, 17, 64, 65, 300]  # both sides of every M threshold in ops/cuda.py


def _dynamic_reference(op):
    def reference_linear(self, x, t, bias=None):
        y = getattr(reference, op)(x.reshape(-1, x.shape[-1]), t.qdata, t.scale)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], t.shape[0])

    return reference_linear


_F8_OPCHECK = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")


class TestFloat8WeightOnly(FormatConformance):
    tensor_cls = Float8Tensor
    opcheck_test_utils = _F8_OPCHECK
    devices = ["cuda"]
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    batch_sizes = _CUDA_BATCHES
    min_linear_sqnr = 40.0


class TestFloat8DynAct(FormatConformance):
    tensor_cls = Float8DynActTensor
    opcheck_test_utils = _F8_OPCHECK
    devices = ["cuda"]
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    batch_sizes = _CUDA_BATCHES
    # Kernel vs reference differ by float32 accumulation order (fast-accum on Hopper)
    # and by the bf16 output of row-wise _scaled_mm; a wrong kernel lands under 10 dB.
    min_linear_sqnr = 35.0
    reference_linear = _dynamic_reference("float8_dynamic_linear")


class TestFloat8DynActPerTensor(FormatConformance):
    tensor_cls = Float8DynActPerTensorTensor
    opcheck_test_utils = _F8_OPCHECK
    per_tensor_activation_scale = True
    devices = ["cuda"]
    act_dtypes = [torch.bfloat16, torch.float32]
    batch_sizes = _CUDA_BATCHES
    min_linear_sqnr = 35.0
    reference_linear = _dynamic_reference("float8_dynamic_per_tensor_linear")


class _StoredOnCpu:
    """Built explicitly on the CPU (``supports`` refuses it): F.linear runs the reference op."""

    opcheck_test_utils = _F8_OPCHECK
    devices = ["cpu"]
    kernel_devices = ("cuda",)
    batch_sizes = [1, 7]


class TestFloat8WeightOnlyStoredOnCpu(_StoredOnCpu, FormatConformance):
    tensor_cls = Float8Tensor


class TestFloat8DynActStoredOnCpu(_StoredOnCpu, FormatConformance):
    tensor_cls = Float8DynActTensor
    min_linear_sqnr = 20.0  # vs the dequantized-weight float linear: includes e4m3 activations


class TestFloat8DynActPerTensorStoredOnCpu(_StoredOnCpu, FormatConformance):
    tensor_cls = Float8DynActPerTensorTensor
    per_tensor_activation_scale = True
    min_linear_sqnr = 20.0


# ---------------------------------------------------------------------- codes and numerics


@pytest.mark.parametrize("cls", [Float8Tensor, Float8DynActPerTensorTensor], ids=lambda c: c.__name__)
def test_codes_scales_and_dequantize(cls):
    w = make_weight((32, 64), torch.float32, heavy_tail=True)
    t = cls.from_float(w)
    assert t.qdata.dtype == torch.float8_e4m3fn
    per_row = cls is Float8Tensor
    assert t.scale.shape == ((32, 1) if per_row else (1, 1)) and t.scale.dtype == torch.float32
    amax = t.qdata.float().abs().amax(dim=1) if per_row else t.qdata.float().abs().amax()
    assert torch.all(amax == 448.0)  # each row's (or the tensor's) largest value maps to e4m3's max
    assert torch.equal(t.dequantize(torch.float32), t.qdata.float() * t.scale)
    assert lowbit.sqnr(w, t.dequantize(torch.float32)) > 25  # e4m3 keeps 3 mantissa bits: ~30 dB


def test_requantizing_dequantized_weight_gives_same_codes():
    t = Float8Tensor.from_float(make_weight((48, 64), torch.float32))
    t2 = Float8Tensor.from_float(t.dequantize(torch.float32))
    assert torch.equal(t.qdata.view(torch.uint8), t2.qdata.view(torch.uint8))


@pytest.mark.parametrize("quant", ["quantize_per_token_float8", "quantize_per_tensor_float8"])
def test_activation_quantization_reference(quant):
    x = torch.randn(5, 64) * torch.tensor([1.0, 10.0, 1e-3, 300.0, 0.0])[:, None]
    q, s = getattr(reference, quant)(x)
    assert q.dtype == torch.float8_e4m3fn and torch.isfinite(q.float()).all()
    assert lowbit.sqnr(x[:4], (q.float() * s)[:4]) > 25
    assert torch.all(q.float()[4] == 0)  # an all-zero row stays zero (eps scale, no NaN)


def test_cpu_linear_is_the_reference_op():
    t = Float8DynActTensor.from_float(make_weight((64, 128)))
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert torch.equal(F.linear(x, t), reference.float8_dynamic_linear(x, t.qdata, t.scale))


@pytest.mark.parametrize("cls", [Float8Tensor, Float8DynActTensor], ids=lambda c: c.__name__)
def test_transpose_and_mm_decomposition(cls):
    t = cls.from_float(make_weight((64, 128)))
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    assert t.t().shape == (128, 64)
    assert torch.equal(torch.mm(x, t.t()), F.linear(x, t))
    b = torch.randn(64, dtype=torch.bfloat16)
    assert torch.equal(torch.addmm(b, x, t.t()), F.linear(x, t, b))
    with pytest.raises(UnsupportedOpError):
        F.linear(torch.randn(5, 64, dtype=torch.bfloat16), t.t())


@pytest.mark.parametrize("dim,start,end", [(0, 0, 32), (1, 32, 128)])
def test_slice_matches_dense(dim, start, end):
    t = Float8Tensor.from_float(make_weight((64, 128), torch.float32))
    part = t[start:end] if dim == 0 else t[:, start:end]
    assert torch.equal(part.dequantize(torch.float32), t.dequantize(torch.float32).narrow(dim, start, end - start))


@pytest.mark.parametrize("op", ["float8_weight_only_linear", "float8_dynamic_linear", "float8_dynamic_per_tensor_linear"])
def test_opcheck(op):
    cls = Float8DynActPerTensorTensor if "per_tensor" in op else Float8Tensor
    t = cls.from_float(make_weight((32, 64), torch.float32))
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    # test_schema is left out: it multiplies the inputs, which CPU float8 does not implement.
    torch.library.opcheck(getattr(torch.ops.lowbit, op), (x, t.qdata, t.scale),
                          test_utils=("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"))


# ---------------------------------------------------------------------- configs and errors


def test_config_round_trip_and_validation():
    c = lowbit.Float8DynamicActivationFloat8WeightConfig(granularity="tensor")
    assert lowbit.BaseConfig.from_dict(c.to_dict()) == c
    assert lowbit.BaseConfig.from_dict(lowbit.Float8WeightOnlyConfig().to_dict()) == lowbit.Float8WeightOnlyConfig()
    with pytest.raises(ValueError, match="granularity must be one of"):
        lowbit.Float8DynamicActivationFloat8WeightConfig(granularity="group")


@pytest.mark.parametrize("config", [lowbit.Float8WeightOnlyConfig(), lowbit.Float8DynamicActivationFloat8WeightConfig()],
                         ids=["weight_only", "dynamic"])
def test_quantize_on_cpu_skips_with_reason(config):
    m = torch.nn.Sequential(torch.nn.Linear(64, 32, dtype=torch.bfloat16))
    before = m[0].weight.detach().clone()
    # A config that serves none of its layers raises with each layer's reason (issue 8).
    with pytest.raises(lowbit.UnsupportedError, match=r"compute capability >= 8.9"):
        lowbit.quantize_(m, config)
    assert type(m[0].weight) is torch.nn.Parameter and torch.equal(m[0].weight, before)


def test_supports_reasons():
    w = make_weight((64, 128))
    assert "compute capability >= 8.9" in Float8Tensor.supports(w, "cpu")
    assert "2-D" in Float8Tensor.supports(torch.randn(2, 3, 4), "cpu")
    assert "int8" in Float8DynActTensor.supports(torch.ones(4, 4, dtype=torch.int8), "cpu")


def test_bad_weights_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        Float8Tensor.from_float(torch.randn(4, 4, 4))
    with pytest.raises(ValueError, match="NaN/Inf"):
        Float8Tensor.from_float(torch.full((4, 4), float("inf")))
    t = Float8Tensor.from_float(make_weight((64, 128)))
    with pytest.raises(ValueError, match="expects 128"):
        F.linear(torch.randn(2, 100, dtype=torch.bfloat16), t)


def test_compiled_graph_calls_lowbit_op():
    from torch._inductor.utils import run_and_get_code

    m = torch.nn.Linear(128, 64, dtype=torch.bfloat16)
    m.weight = torch.nn.Parameter(Float8DynActTensor.from_float(m.weight.detach()), requires_grad=False)
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(m, fullgraph=True), x)
    assert "lowbit.float8_dynamic_linear" in "\n".join(code)


# ---------------------------------------------------------------------- CUDA only


def _cuda_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")


def test_old_gpu_error_is_clear(monkeypatch):
    _cuda_or_skip()
    from lowbit.ops import cuda as lowbit_cuda
    from lowbit.tensors import float8 as f8

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    assert "compute capability >= 8.9" in Float8Tensor.supports(make_weight((64, 128), device="cuda"))
    lowbit_cuda._check_float8_device.cache_clear()
    try:
        t = Float8Tensor.from_float(make_weight((64, 128), device="cuda"))
        with pytest.raises(UnsupportedError, match="compute capability >= 8.9"):
            F.linear(torch.randn(2, 128, dtype=torch.bfloat16, device="cuda"), t)
    finally:
        lowbit_cuda._check_float8_device.cache_clear()
    assert f8.SM89 == (8, 9)


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_quantize_on_cuda_uses_float8(granularity):
    _cuda_or_skip()
    if Float8Tensor.supports(make_weight((64, 128), device="cuda")) is not None:
        pytest.skip(Float8Tensor.supports(make_weight((64, 128), device="cuda")))
    m = torch.nn.Linear(128, 64, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(9, 128, dtype=torch.bfloat16, device="cuda")
    ref = m(x)
    lowbit.quantize_(m, lowbit.Float8DynamicActivationFloat8WeightConfig(granularity=granularity))
    assert type(m.weight) is (Float8DynActTensor if granularity == "row" else Float8DynActPerTensorTensor)
    assert lowbit.sqnr(ref, m(x)) > 20
