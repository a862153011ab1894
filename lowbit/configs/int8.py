"""Int8 configs: weight-only and dynamic int8 activation x int8 weight."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..autoquant.candidates import register_candidate
from ..config import BaseConfig, from_float_if_supported, register_handler
from ..ops.reference import quantize_per_token_int8
from ..tensors.int8 import Int8DynActTensor, Int8Tensor

__all__ = ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"]


@dataclasses.dataclass(frozen=True)
class Int8WeightOnlyConfig(BaseConfig):
    """Symmetric per-output-channel int8 weights; activations stay float.

    Kernels: ``aten._weight_int8pack_mm`` for small batches (CPU, CUDA), a GEMM on the
    dequantized weight above ``lowbit.ops.cpu.CPU_INT8_GEMV_MAX_M`` rows (CPU).
    """


@dataclasses.dataclass(frozen=True)
class Int8DynamicActivationInt8WeightConfig(BaseConfig):
    """Per-token symmetric int8 activations (quantized at run time) x per-channel int8 weights."""


@register_handler(Int8WeightOnlyConfig)
def _int8_weight_only(weight, config, fqn):
    return from_float_if_supported(Int8Tensor, weight, fqn)


@register_handler(Int8DynamicActivationInt8WeightConfig)
def _int8_dynamic(weight, config, fqn):
    return from_float_if_supported(Int8DynActTensor, weight, fqn)


def _int8_dynamic_matmul_only(weight: torch.Tensor, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The int8 matmul on activations that are already int8 (their quantization excluded).

    Estimated with the weight-only int8 kernel on the integer-valued activation, which
    runs the same int8-weight product without the per-token quantization step.
    """
    xq, _ = quantize_per_token_int8(x.reshape(-1, x.shape[-1]))
    xq = xq.to(x.dtype)
    qdata, scale = weight.qdata, weight.scale
    op = torch.ops.lowbit.int8_weight_only_linear
    return lambda: op(xq, qdata, scale)


register_candidate("int8_weight_only", Int8WeightOnlyConfig(), sets=("default", "int8", "all"))
register_candidate(
    "int8_dynamic",
    Int8DynamicActivationInt8WeightConfig(),
    sets=("default", "int8", "all"),
    dynamic_activation=True,
    matmul_only=_int8_dynamic_matmul_only,
)
