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
from ..granularity import per_row
from .base import LowbitTensor, check_float_weight, float_weight_reason, kernel_linear, register_rowwise_views

aten = torch.ops.aten

__all__ = ["Int8Tensor", "Int8DynActTensor"]

_QMIN, _QMAX = -128, 127  # codes stored; symmetric mapping uses [-127, 127] only


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
        return float_weight_reason(weight)

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Int8Tensor:
        """Quantize a float [N, K] weight per output channel, symmetric, to int8."""
        check_float_weight(w, f"{cls.__name__}.from_float")
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

Int8Tensor.implements(F.linear, aten.linear.default)(
    kernel_linear("int8_weight_only_linear", "qdata", "scale", untransposed_only=True)
)


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


Int8DynActTensor.implements(F.linear, aten.linear.default)(
    kernel_linear("int8_dynamic_linear", "qdata", "scale", untransposed_only=True)
)


# ---------------------------------------------------------------------- views


register_rowwise_views(Int8Tensor)
