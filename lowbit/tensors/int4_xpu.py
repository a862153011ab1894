"""Groupwise int4 weight for Intel GPUs (XPU), integer zero point (oneDNN kernel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops  # noqa: F401  (registers torch.ops.lowbit)
from ..ops.library import kernel
from ..packing.int4_xpu import pack_int4_xpu, pack_xpu_scale_zero, unpack_int4_xpu, unpack_xpu_scale_zero
from .base import LowbitTensor, check_linear_input, finish_linear, linear_args
from .int4_plain import PortableInt4Mixin
from .int4_tiled_cuda import (
    _check_codes,
    _check_group_size,
    _check_weight,
    _device_of,
    _quantize_to_codes,
    _weight_shape_reason,
)

aten = torch.ops.aten

__all__ = ["Int4XpuTensor"]

_PARAM_DTYPES = (torch.float16, torch.bfloat16)
_GROUP_SIZES = (16, 32, 64, 128, 256)  # what the XPU int4 kernels are built for
_K_MULTIPLE = 8  # eight int4 per int32 along K


def _layout_reason(n: int, k: int, group_size: int) -> str | None:
    if group_size not in _GROUP_SIZES:
        return f"needs group_size in {_GROUP_SIZES}, got {group_size}"
    if k % group_size or k % _K_MULTIPLE:
        return f"needs in_features % {max(group_size, _K_MULTIPLE)} == 0, got {k}"
    return None


class Int4XpuTensor(PortableInt4Mixin, LowbitTensor):
    """Groupwise asymmetric int4 weight with an integer zero point, for Intel GPUs.

    qdata       int32 [N, K / 8]         codes k = 8m..8m+7 at bits 4(k - 8m) of [n, m]
                                          (what XPU's ``aten._convert_weight_to_int4pack`` returns)
    scale       fp16/bf16 [K / group_size, N]
    zero_point  int8 [K / group_size, N]  values 0..15

    Numerics: ``w = (q - zero) * scale`` (``ZeroPointKind.INT``).
    Kernel: ``lowbit::int4_xpu_mm`` -> ``aten._weight_int4pack_mm_with_scales_and_zeros``
    (oneDNN) on ``xpu``; float32 activations are cast to the scale dtype.

    UNTESTED ON HARDWARE (no Intel GPU was available): the layout is read from the
    PyTorch / torch-xpu-ops sources cited in ``lowbit/packing/int4_xpu.py``; packing,
    unpacking and the reference linear are tested on CPU. The tensor can live on XPU
    and on CPU (where ``F.linear`` runs the pure-PyTorch reference).
    """

    zero_point_kind = "int"
    kernel_device = "xpu"
    data_fields = ("qdata", "scale", "zero_point")
    meta_fields = ("group_size",)
    format_name = "int4_xpu"
    format_version = 1

    GROUP_SIZES = _GROUP_SIZES

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128) -> str | None:
        reason = _weight_shape_reason(weight) or _layout_reason(*weight.shape, group_size)
        if reason:
            return reason
        dev = _device_of(weight, device)
        if dev.type != "xpu":
            return f"runs on Intel GPUs (xpu) only, got device {dev}"
        return None

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype):
        """Pack codes ``[N, K]`` with ``scale`` and integer ``zero_point`` (any integer
        dtype, 0..15), both ``[N, K // group_size]``. The zero point is stored as int8
        (the kernel's type) and the scale keeps its dtype."""
        _check_group_size(cls.__name__, group_size, cls.GROUP_SIZES)
        n, k = _check_codes(cls.__name__, codes, scale, zero_point, group_size, shape, int_zero_point=True)
        reason = _layout_reason(n, k, group_size)
        if reason:
            raise ValueError(f"{cls.__name__} {reason}")
        s, z = pack_xpu_scale_zero(scale, zero_point)
        return cls(pack_int4_xpu(codes), s, z, group_size=group_size, shape=tuple(shape), dtype=dtype)

    def to_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scale [N, K // gs], zero_point int8 [N, K // gs])."""
        s, z = unpack_xpu_scale_zero(self.scale, self.zero_point)
        return unpack_int4_xpu(self.qdata), s, z

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 128) -> Int4XpuTensor:
        """Min-max asymmetric int4 quantization (integer zero point) of a float ``[N, K]`` weight."""
        return xpu_from_float(cls, w, group_size)


def xpu_from_float(cls, w: torch.Tensor, group_size: int):
    """Min-max int4 codes for either XPU class, with the zero-point kind ``cls`` applies."""
    _check_weight(w, cls.__name__)
    _check_group_size(cls.__name__, group_size, cls.GROUP_SIZES)
    reason = _layout_reason(*w.shape, group_size)
    if reason:
        raise ValueError(f"{cls.__name__} {reason}, weight shape {tuple(w.shape)}")
    param_dtype = w.dtype if w.dtype in _PARAM_DTYPES else torch.bfloat16
    codes, scale, zero = _quantize_to_codes(w, group_size, cls.zero_point_kind == "int", param_dtype)
    return cls.from_codes(codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype)


@Int4XpuTensor.implements(F.linear, aten.linear.default)
def _linear(func, types, args, kwargs):
    x, w, bias = linear_args(args, kwargs)
    check_linear_input(x, w)
    y = kernel("int4_xpu_mm", x.device.type)(x.reshape(-1, x.shape[-1]), w.qdata, w.scale, w.zero_point, w.group_size)
    return finish_linear(y, x, w, bias)
