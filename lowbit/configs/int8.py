"""Int8 configs: weight-only and dynamic int8 activation x int8 weight."""

from __future__ import annotations

import dataclasses

from ..config import BaseConfig, register_handler
from ..errors import UnsupportedError
from ..tensors.int8 import Int8DynActTensor, Int8Tensor

__all__ = ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"]


@dataclasses.dataclass(frozen=True)
class Int8WeightOnlyConfig(BaseConfig):
    """Symmetric per-output-channel int8 weights; activations stay float.

    Kernels: ``aten._weight_int8pack_mm`` for small batches (CPU, CUDA), a GEMM on the
    dequantized weight above ``lowbit.tensors.int8.CPU_INT8_GEMV_MAX_M`` rows.
    """


@dataclasses.dataclass(frozen=True)
class Int8DynamicActivationInt8WeightConfig(BaseConfig):
    """Per-token symmetric int8 activations (quantized at run time) x per-channel int8 weights."""


def _make(cls, weight, fqn):
    reason = cls.supports(weight, weight.device)
    if reason is not None:
        raise UnsupportedError(f"{cls.__name__} cannot serve {fqn or 'this layer'}: {reason}")
    return cls.from_float(weight)


@register_handler(Int8WeightOnlyConfig)
def _int8_weight_only(weight, config, fqn):
    return _make(Int8Tensor, weight, fqn)


@register_handler(Int8DynamicActivationInt8WeightConfig)
def _int8_dynamic(weight, config, fqn):
    return _make(Int8DynActTensor, weight, fqn)
