"""Float8 (e4m3) weights with symmetric scales, for NVIDIA GPUs with float8 (sm89+).

Three classes, one per kernel (STYLE §3); all store ``qdata`` as ``float8_e4m3fn``:

* ``Float8Tensor``: weight-only; activations stay float (Triton GEMV / tile kernel that
  turns e4m3 into the activation dtype in registers; dequantize + cuBLAS at large M).
* ``Float8DynActTensor``: per-token e4m3 activations x per-row e4m3 weights
  (``torch._scaled_mm`` row-wise at large M, a Triton e4m3 GEMM at small M).
* ``Float8DynActPerTensorTensor``: one scale for the whole activation and one for the
  weight (``torch._scaled_mm`` tensor-wise).

Where they run: CUDA with compute capability >= 8.9 (Ada, Hopper); ``supports`` says why
not elsewhere, so ``quantize_`` and autoquant skip such layers with that reason, and
the CUDA kernels raise ``UnsupportedError`` on an older GPU. A tensor built explicitly
on the CPU (tests, checkpoint conversion) computes ``F.linear`` with the pure-PyTorch
reference op (``lowbit/ops/reference.py``): correct, slow, never chosen by ``quantize_``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops  # noqa: F401  (registers torch.ops.lowbit)
from ..device_caps import SM89, float8_device_reason  # noqa: F401  (SM89 for callers)
from ..ops.reference import FLOAT8_E4M3_MAX
from .base import LowbitTensor, float_weight_reason, kernel_linear, register_rowwise_views

aten = torch.ops.aten

__all__ = ["Float8DynActPerTensorTensor", "Float8DynActTensor", "Float8Tensor"]

# torch._scaled_mm needs K and N to be multiples of 16.
_SCALED_MM_MULTIPLE = 16


def _check_weight(w, cls_name: str) -> None:
    reason = float_weight_reason(w)
    if reason is not None:
        raise ValueError(f"{cls_name}.from_float {reason} ([out_features, in_features])")
    if not torch.isfinite(w).all():
        raise ValueError(f"{cls_name}.from_float needs a finite weight; it holds NaN/Inf values")


def _quantize_e4m3(w: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 codes [N, K] and float32 scales ([N, 1] per row, [1, 1] per tensor): max |w| -> 448."""
    wf = w.to(torch.float32)
    amax = wf.abs().amax(dim=1, keepdim=True) if per_row else wf.abs().amax().reshape(1, 1)
    scale = (amax / FLOAT8_E4M3_MAX).clamp(min=torch.finfo(torch.float32).eps)
    qdata = (wf / scale).clamp(-FLOAT8_E4M3_MAX, FLOAT8_E4M3_MAX).to(torch.float8_e4m3fn)
    return qdata, scale


class Float8Tensor(LowbitTensor):
    """Symmetric per-output-channel float8 e4m3 weight (weight-only).

    qdata  float8_e4m3fn [N, K]  codes, max |w| of a row -> 448   lowbit::float8_weight_only_linear
    scale  float32       [N, 1]  one scale per output channel

    Kernels (ops/cuda.py): a Triton GEMV (few rows) or tensor-core tile kernel that turns
    the codes into the activation dtype in registers (lowbit/ops/triton_int8.py), and
    dequantize + cuBLAS at large M; the M thresholds (sm90) are in ops/cuda.py.
    After ``t()`` both fields are transposed; ``mm``/``addmm`` accept that form.
    Requires: CUDA compute capability >= 8.9 and triton; float32/float16/bfloat16
    activations; any N, K.
    """

    data_fields = ("qdata", "scale")
    format_name = "float8_weight_only"
    format_version = 1
    _per_row_scale = True

    @classmethod
    def supports(cls, weight, device=None):
        reason = float_weight_reason(weight)
        if reason is not None:
            return reason
        return float8_device_reason(device if device is not None else weight.device)

    @classmethod
    def from_float(cls, w: torch.Tensor) -> Float8Tensor:
        """Quantize a float [N, K] weight to e4m3 with symmetric float32 scales."""
        _check_weight(w, cls.__name__)
        qdata, scale = _quantize_e4m3(w, cls._per_row_scale)
        return cls(qdata, scale, shape=w.shape, dtype=w.dtype)

    def dequantize(self, dtype=None):
        return (self.qdata.to(torch.float32) * self.scale).to(dtype or self.dtype)

    def _is_row_layout(self) -> bool:
        """True when rows are output channels (not the ``t()`` view, whose codes are strided)."""
        return self.qdata.stride(-1) == 1 or self.qdata.shape[-1] == 1


def _linear(op_name: str):
    return kernel_linear(op_name, "qdata", "scale", untransposed_only=True)


Float8Tensor.implements(F.linear, aten.linear.default)(_linear("float8_weight_only_linear"))


class Float8DynActTensor(Float8Tensor):
    """Float8 weight for row-wise dynamic float8 activation x float8 weight linears.

    qdata  float8_e4m3fn [N, K]  lowbit::float8_dynamic_linear
    scale  float32       [N, 1]  one scale per output channel

    The op quantizes activations per token (symmetric e4m3, max |x| of a row -> 448) at
    run time: a Triton kernel writes codes and scales, then ``torch._scaled_mm`` with
    row-wise scales (large M) or lowbit's Triton e4m3 GEMM (small M) multiplies.
    Requires: CUDA compute capability >= 8.9 and triton; K and N multiples of 16.
    """

    format_name = "float8_dynamic_act_float8_weight"
    format_version = 1

    @classmethod
    def supports(cls, weight, device=None):
        reason = super().supports(weight, device)
        if reason is None and (weight.shape[0] % _SCALED_MM_MULTIPLE or weight.shape[1] % _SCALED_MM_MULTIPLE):
            reason = (
                f"needs in/out features that are multiples of {_SCALED_MM_MULTIPLE} (torch._scaled_mm), "
                f"got {tuple(weight.shape)}; use Float8WeightOnlyConfig for this layer"
            )
        return reason


Float8DynActTensor.implements(F.linear, aten.linear.default)(_linear("float8_dynamic_linear"))


class Float8DynActPerTensorTensor(Float8DynActTensor):
    """Float8 weight with one scale, for tensor-wise dynamic float8 linears.

    qdata  float8_e4m3fn [N, K]  lowbit::float8_dynamic_per_tensor_linear
    scale  float32       [1, 1]  one scale for the whole weight

    Activations get one scale per call (max |x| of the whole input -> 448);
    ``torch._scaled_mm`` tensor-wise multiplies. Requires as ``Float8DynActTensor``.
    """

    format_name = "float8_dynamic_act_float8_weight_per_tensor"
    format_version = 1
    _per_row_scale = False


Float8DynActPerTensorTensor.implements(F.linear, aten.linear.default)(_linear("float8_dynamic_per_tensor_linear"))


# ---------------------------------------------------------------------- views


register_rowwise_views(Float8Tensor)
