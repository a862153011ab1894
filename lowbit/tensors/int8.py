"""Int8 weights with one symmetric scale per output channel.

Two classes share the stored tensors and the view ops but are read by different
kernels, so they are separate classes (STYLE §3):

* ``Int8Tensor``: weight-only; activations stay float.
* ``Int8DynActTensor``: activations are quantized per token to int8 at run time and
  the product is an integer dot product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import primitives as P
from .. import ops  # noqa: F401  (registers torch.ops.lowbit)
from ..ops.library import kernel
from ..granularity import per_row
from .base import (
    register_rowwise_views,
    LowbitTensor,
    UnsupportedOpError,
    check_linear_input,
    finish_linear,
    linear_args,
)

aten = torch.ops.aten

__all__ = ["Int8Tensor", "Int8DynActTensor"]

_QMIN, _QMAX = -128, 127  # codes stored; symmetric mapping uses [-127, 127] only

_FLOAT_ACTS = (torch.float32, torch.float16, torch.bfloat16)


def _check_weight(w: torch.Tensor, cls_name: str) -> None:
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{cls_name}.from_float needs a 2-D [out_features, in_features] weight, got {got}")
    if w.dtype not in _FLOAT_ACTS:
        raise ValueError(f"{cls_name}.from_float needs a float32/float16/bfloat16 weight, got {w.dtype}")


class Int8Tensor(LowbitTensor):
    """Symmetric per-output-channel int8 weight (weight-only).

    qdata  int8    [N, K]  codes in [-127, 127]         lowbit::int8_weight_only_linear
    scale  float32 [N, 1]  one scale per output channel

    Kernels (ops/cpu.py, ops/cuda.py): ``aten._weight_int8pack_mm`` up to ``CPU_INT8_GEMV_MAX_M`` rows (on
    CPU fed bf16 activations, the only dtype it vectorizes), a GEMM on the dequantized
    weight above (fp32 on CPUs without native bf16).

    After ``t()`` the two fields are transposed ([K, N] and [1, N]); ``mm``/``addmm``
    accept that form, which is what ``F.linear`` decomposes into.
    Requires: float32/float16/bfloat16 activations; any device (CPU and CUDA kernels).
    """

    data_fields = ("qdata", "scale")
    format_name = "int8_weight_only"
    format_version = 1

    @classmethod
    def supports(cls, weight, device=None):
        if weight.ndim != 2:
            return f"needs a 2-D weight, got {weight.ndim}-D"
        if weight.dtype not in _FLOAT_ACTS:
            return f"needs a float32/float16/bfloat16 weight, got {weight.dtype}"
        return None

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Int8Tensor:
        """Quantize a float [N, K] weight per output channel, symmetric, to int8."""
        _check_weight(w, cls.__name__)
        block = per_row(w.shape)
        scale, _ = P.choose_qparams_affine(
            w, P.MappingType.SYMMETRIC, block, torch.int8, _QMIN, _QMAX,
            scale_dtype=torch.float32, zero_point_kind=P.ZeroPointKind.NONE,
        )
        qdata = P._quantize_affine(w, block, scale, None, torch.int8, _QMIN, _QMAX, P.ZeroPointKind.NONE)
        return cls(qdata, scale, shape=w.shape, dtype=w.dtype)

    def dequantize(self, dtype=None):
        return (self.qdata.to(torch.float32) * self.scale).to(dtype or self.dtype)

    def _is_row_layout(self) -> bool:
        """True when rows are output channels (not the ``t()`` view)."""
        return self.scale.shape[0] == self.qdata.shape[0] and self.scale.shape[1] == 1






@Int8Tensor.implements(F.linear, aten.linear.default)
def _linear_weight_only(func, types, args, kwargs):
    x, w, bias = linear_args(args, kwargs)
    check_linear_input(x, w)
    if not w._is_row_layout():
        raise UnsupportedOpError("F.linear needs the untransposed Int8Tensor; call .t() again")
    y = kernel("int8_weight_only_linear", x.device.type)(x.reshape(-1, x.shape[-1]), w.qdata, w.scale)
    return finish_linear(y, x, w, bias)


# ---------------------------------------------------------------------- dynamic activation


class Int8DynActTensor(Int8Tensor):
    """Int8 weight for int8 dynamic activation x int8 weight linears.

    Stored like ``Int8Tensor``; ``lowbit::int8_dynamic_linear`` quantizes activations
    per token (symmetric int8) at run time and multiplies integers: ``torch._int_mm`` on
    CUDA (M > 16), the int8 GEMV for small M, an fp32 GEMM over the integer values on
    CPU (exact while |sum| < 2^24).
    """

    format_name = "int8_dynamic_act_int8_weight"
    format_version = 1


@Int8DynActTensor.implements(F.linear, aten.linear.default)
def _linear_dynamic(func, types, args, kwargs):
    x, w, bias = linear_args(args, kwargs)
    check_linear_input(x, w)
    if not w._is_row_layout():
        raise UnsupportedOpError("F.linear needs the untransposed Int8DynActTensor; call .t() again")
    y = kernel("int8_dynamic_linear", x.device.type)(x.reshape(-1, x.shape[-1]), w.qdata, w.scale)
    return finish_linear(y, x, w, bias)


# ---------------------------------------------------------------------- views


register_rowwise_views(Int8Tensor)
