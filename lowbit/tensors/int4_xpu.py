"""Groupwise int4 weight for Intel GPUs (XPU), integer zero point (oneDNN kernel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..packing.int4_xpu import pack_int4_xpu, pack_xpu_scale_zero, unpack_int4_xpu, unpack_xpu_scale_zero
from .base import LowbitTensor, kernel_linear
from .int4_common import Int4Packing, PortableInt4Mixin, XpuInt4Layout

aten = torch.ops.aten

__all__ = ["Int4XpuTensor"]


class Int4XpuTensor(XpuInt4Layout, PortableInt4Mixin, LowbitTensor):
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

    int4_packing = Int4Packing.XPU
    zero_point_kind = "int"
    data_fields = ("qdata", "scale", "zero_point")
    meta_fields = ("group_size",)
    format_name = "int4_xpu"
    format_version = 1

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype):
        """Pack codes ``[N, K]`` with ``scale`` and integer ``zero_point`` (any integer
        dtype, 0..15), both ``[N, K // group_size]``. The zero point is stored as int8
        (the kernel's type) and the scale keeps its dtype."""
        cls._check_codes(codes, scale, zero_point, group_size, shape)
        s, z = pack_xpu_scale_zero(scale, zero_point)
        return cls(pack_int4_xpu(codes), s, z, group_size=group_size, shape=tuple(shape), dtype=dtype)

    def to_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scale [N, K // gs], zero_point int8 [N, K // gs])."""
        s, z = unpack_xpu_scale_zero(self.scale, self.zero_point)
        return unpack_int4_xpu(self.qdata), s, z


Int4XpuTensor.implements(F.linear, aten.linear.default)(
    kernel_linear("int4_xpu_mm", "qdata", "scale", "zero_point", "group_size")
)
