import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.configs import FloatCastConfig
from lowbit.tensors import FloatCastTensor
from lowbit.testing import FormatConformance, make_weight


class TestFloatCastToFloat32(FormatConformance):
    tensor_cls = FloatCastTensor
    uses_lowbit_op = False  # F.linear in the compute dtype: plain ATen
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    min_linear_sqnr = 40.0

    def make(self, w):
        return FloatCastTensor.from_float(w, torch.float32)


class TestFloatCastToBfloat16(FormatConformance):
    tensor_cls = FloatCastTensor
    fresh_process_check = False  # TestFloatCastToFloat32 runs it
    uses_lowbit_op = False  # F.linear in the compute dtype: plain ATen
    act_dtypes = [torch.bfloat16, torch.float32]
    weight_dtype = torch.float32
    min_linear_sqnr = 40.0

    def make(self, w):
        return FloatCastTensor.from_float(w, torch.bfloat16)


def test_linear_computes_in_compute_dtype_and_returns_input_dtype():
    w = make_weight((48, 64), torch.bfloat16)
    t = FloatCastTensor.from_float(w, torch.float32)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    b = torch.randn(48, dtype=torch.bfloat16)
    y = F.linear(x, t, b)
    # Independent reference: the same product written out in float32.
    ref = (x.float() @ w.float().t() + b.float()).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, ref)
    assert t.weight.dtype == torch.float32 and t.dtype == torch.bfloat16
    assert t.compute_dtype == torch.float32


def test_config_round_trip_and_quantize():
    cfg = FloatCastConfig(torch.float32)
    assert lowbit.BaseConfig.from_dict(cfg.to_dict()) == cfg
    m = torch.nn.Linear(64, 32, dtype=torch.bfloat16)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    ref = (x.float() @ m.weight.float().t() + m.bias.float()).to(torch.bfloat16)
    rep = lowbit.quantize_(m, cfg)
    assert list(rep.quantized) == [""]
    assert isinstance(m.weight, FloatCastTensor)
    assert torch.equal(m(x), ref)


def test_same_dtype_is_skipped_with_reason():
    # The config serves none of the layers it was pointed at: quantize_ raises with the reason.
    m = torch.nn.Linear(64, 32, dtype=torch.float32)
    with pytest.raises(lowbit.UnsupportedError, match="already torch.float32"):
        lowbit.quantize_(m, FloatCastConfig(torch.float32))
    assert type(m.weight) is torch.nn.Parameter
    # Among layers it does serve, the same-dtype layer is skipped with the reason.
    net = torch.nn.Sequential(torch.nn.Linear(64, 32, dtype=torch.float32), torch.nn.Linear(32, 16, dtype=torch.bfloat16))
    rep = lowbit.quantize_(net, FloatCastConfig(torch.float32))
    assert "already torch.float32" in rep.skipped["0"] and "1" in rep.quantized


def test_bad_dtype_raises():
    with pytest.raises(ValueError, match="torch.float16 or torch.bfloat16"):
        FloatCastConfig(torch.int8)
    with pytest.raises(ValueError, match="compute_dtype"):
        FloatCastTensor.from_float(make_weight((4, 4)), torch.int8)


def test_copy_between_compute_dtypes_refused():
    w = make_weight((16, 32), torch.bfloat16)
    a = FloatCastTensor.from_float(w, torch.float32)
    b = FloatCastTensor.from_float(w.float(), torch.bfloat16).to(torch.bfloat16)
    with pytest.raises(lowbit.UnsupportedOpError):
        a.copy_(b)
