"""A float weight stored in another float dtype, used for the linear's compute.

``FloatCastTensor`` is the "change the compute dtype" format: the weight is kept in
``compute_dtype`` (say float32 for a bfloat16 model on a CPU with no native bf16, where
bf16 GEMMs are emulated and ~7x slower than fp32 at M=256 on an AVX2 Zen3) and
``linear`` casts the activation to that dtype, multiplies, and casts the result back to
the activation's dtype. The model keeps seeing its own dtype at every layer boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (
    FLOAT_DTYPES,
    LowbitTensor,
    UnsupportedOpError,
    check_float_weight,
    float_weight_reason,
    linear_args,
    register_transposed_views,
    slice_args,
)

aten = torch.ops.aten

__all__ = ["FloatCastTensor"]


class FloatCastTensor(LowbitTensor):
    """A float weight stored (and multiplied) in a compute dtype other than the model's.

    weight float32/float16/bfloat16 [N, K]  the weight in the compute dtype; read by
                                           ``aten.linear`` (MKL/oneDNN/cuBLAS GEMM)
    ``dtype`` (the tensor's dtype) is the float dtype the weight stands for: what
    ``dequantize()`` returns and what a ``.to(dtype)`` changes. The compute dtype is
    ``weight.dtype``.

    Requires: a 2-D float weight; any device (plain GEMMs). Float16 compute can overflow
    for weights or activations beyond +-65504; autoquant's SQNR check catches that.
    """

    data_fields = ("weight",)  # not "data": that name is torch.Tensor.data
    format_name = "float_cast"
    format_version = 1

    @classmethod
    def supports(cls, weight, device=None):
        return float_weight_reason(weight)

    @classmethod
    def from_float(cls, w: torch.Tensor, compute_dtype: torch.dtype = torch.float32) -> FloatCastTensor:
        """Store float weight ``w`` [N, K] in ``compute_dtype``; it keeps standing for ``w.dtype``."""
        check_float_weight(w, "FloatCastTensor.from_float")
        if compute_dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"FloatCastTensor compute_dtype must be float32, float16 or bfloat16, got {compute_dtype}"
            )
        return cls(w.detach().to(compute_dtype).contiguous(), shape=w.shape, dtype=w.dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.weight.dtype

    def dequantize(self, dtype=None):
        return self.weight.to(dtype or self.dtype)

    def _meta_key(self):
        # The compute dtype lives in the stored tensor; copy_ between two compute dtypes
        # would silently change precision, so it is part of the metadata compared.
        return super()._meta_key() + (self.weight.dtype,)

    def _is_row_layout(self) -> bool:
        return tuple(self.weight.shape) == tuple(self.shape)


@FloatCastTensor.implements(F.linear, aten.linear.default)
def _linear(func, types, args, kwargs):
    x, w, bias = linear_args(args, kwargs)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"FloatCastTensor linear needs float32/float16/bfloat16 input, got {x.dtype}")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear input has {x.shape[-1]} features but the weight expects {w.shape[1]} "
            f"(weight shape {tuple(w.shape)})"
        )
    if not w._is_row_layout():
        raise UnsupportedOpError("F.linear needs the untransposed FloatCastTensor; call .t() again")
    cd = w.weight.dtype
    b = None if bias is None else bias.to(cd)
    return aten.linear.default(x.to(cd), w.weight, b).to(x.dtype)


@FloatCastTensor.implements(aten.slice.Tensor)
def _slice(func, types, args, kwargs):
    w, dim, start, end, step = slice_args(args, kwargs)
    part = aten.slice.Tensor(w.weight, dim, start, end, step).contiguous()
    return w._replace(weight=part, shape=tuple(part.shape))


register_transposed_views(FloatCastTensor)
