"""Groupwise int4 weight for Intel GPUs (XPU), float zero point (tinygemm-style kernel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..packing.int4_tiled import pack_tinygemm_scale_and_zero, unpack_tinygemm_scale_and_zero
from ..packing.int4_xpu import pack_int4_xpu, unpack_int4_xpu
from .base import LowbitTensor, kernel_linear
from .int4_common import Int4Packing, PortableInt4Mixin, XpuInt4Layout

aten = torch.ops.aten

__all__ = ["Int4XpuFloatZpTensor"]


class Int4XpuFloatZpTensor(XpuInt4Layout, PortableInt4Mixin, LowbitTensor):
    """Groupwise asymmetric int4 weight with a float zero point, for Intel GPUs.

    qdata           int32 [N, K / 8]   same plain layout as ``Int4XpuTensor``
    scale_and_zero  fp16/bf16 [K / group_size, N, 2]   (scale, zero) per group, tinygemm order

    Numerics: ``w = (q - 8) * scale + zero`` (``ZeroPointKind.FLOAT``, tinygemm/HQQ).
    Kernel: ``lowbit::int4_xpu_float_zp_mm`` -> XPU's ``aten._weight_int4pack_mm``
    (dequantize + GEMM for M > 1, a fused GEMV for M == 1); float32 activations are
    cast to the parameter dtype.

    UNTESTED ON HARDWARE (no Intel GPU was available). The ``[K / gs, N, 2]`` order is
    the one read by the current torch-xpu-ops ``Dequant_int4.cpp``; an older version of
    that file read ``[N, K / gs, 2]``, so check this on real hardware first. Packing,
    unpacking and the reference linear are tested on CPU; the tensor can live on XPU and
    CPU (where ``F.linear`` runs the reference).
    """

    int4_packing = Int4Packing.XPU_FLOAT_ZP
    zero_point_kind = "float"
    data_fields = ("qdata", "scale_and_zero")
    meta_fields = ("group_size",)
    format_name = "int4_xpu_float_zp"
    format_version = 1

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype):
        """Pack codes ``[N, K]`` with float ``scale``/``zero_point`` ``[N, K // group_size]``
        (stored in the scale's dtype; to_codes returns them bit-exactly)."""
        cls._check_codes(codes, scale, zero_point, group_size, shape)
        sz = pack_tinygemm_scale_and_zero(scale, zero_point.to(scale.dtype))
        return cls(pack_int4_xpu(codes), sz, group_size=group_size, shape=tuple(shape), dtype=dtype)

    def to_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scale [N, K // gs], zero_point [N, K // gs])."""
        s, z = unpack_tinygemm_scale_and_zero(self.scale_and_zero)
        return unpack_int4_xpu(self.qdata), s, z


Int4XpuFloatZpTensor.implements(F.linear, aten.linear.default)(
    kernel_linear("int4_xpu_float_zp_mm", "qdata", "scale_and_zero", "group_size")
)
