"""Groupwise int4 weight in the Marlin layout (integer zero point), read in place by a Triton kernel."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..device_caps import cuda_capability_reason, triton_reason
from ..packing.int4_marlin import (
    MARLIN_N_CHUNK,
    pack_marlin_int4,
    pack_marlin_scales,
    pack_marlin_zero_points,
    unpack_marlin_int4,
    unpack_marlin_scales,
    unpack_marlin_zero_points,
)
from .base import LowbitTensor, kernel_linear, target_device
from .int4_common import (
    Int4Packing,
    PortableInt4Mixin,
    check_int4_codes,
    int4_supports_reason,
    quantize_for_layout,
)

aten = torch.ops.aten
logger = logging.getLogger(__name__)

__all__ = ["Int4MarlinTensor"]

_MARLIN_MIN_K = 128  # Marlin kernels' smallest K tile (vLLM GPTQ_MARLIN_MIN_THREAD_K)


class Int4MarlinTensor(PortableInt4Mixin, LowbitTensor):
    """Groupwise asymmetric int4 weight (integer zero point) in the Marlin layout.

    qdata       int32 [K / 16, N * 2]     Marlin tiles (lowbit/packing/int4_marlin.py)
    scale       fp16/bf16 [K / group_size, N]   Marlin column order
    zero_point  int32 [K / group_size, N / 8]   Marlin order, 8 nibbles per int32

    Numerics: ``w = (q - zero) * scale`` with codes and zero points in 0..15
    (``ZeroPointKind.INT``, the GPTQ/AWQ-Marlin convention).

    Kernel: ``F.linear`` runs ``lowbit::int4_marlin_mm``; on CUDA that is a Triton kernel
    (``marlin_mm_kernel``, lowbit/ops/triton_int4.py) that reads this layout as stored:
    each code's word and nibble are computed from the Marlin permutation, dequantized
    with the integer zero point and fed to ``tl.dot`` (split-K at small M). Elsewhere it
    is the pure-PyTorch reference (unpack, dequantize, float32 matmul). ``supports``
    checks the constraints of the Marlin kernels (CUDA sm80+, triton, N % 64, K % 128,
    group_size in {32, 64, 128} or one group spanning K), so the weights also stay valid
    for the original Marlin CUDA kernels.

    Devices: CUDA (its target) and CPU. Moving it elsewhere raises ``UnsupportedError``;
    ``to_codes()`` returns the plain codes to repack for another device's format.
    """

    int4_packing = Int4Packing.MARLIN
    zero_point_kind = "int"
    kernel_device = "cuda"
    scale_dtypes = (torch.float16, torch.bfloat16)  # scale dtypes Marlin kernels take
    int4_auto = False  # linear is the reference until the kernel lands: ask for packing="marlin"
    data_fields = ("qdata", "scale", "zero_point")
    meta_fields = ("group_size",)
    format_name = "int4_marlin"
    format_version = 1

    GROUP_SIZES = (32, 64, 128)  # grouped sizes of the Marlin kernels; group_size == K also works

    @classmethod
    def _layout_reason(cls, n: int, k: int, group_size: int) -> str | None:
        if group_size not in cls.GROUP_SIZES and group_size != k:
            return f"needs group_size in {cls.GROUP_SIZES} or group_size == K ({k}), got {group_size}"
        if n % MARLIN_N_CHUNK:
            return f"needs out_features % {MARLIN_N_CHUNK} == 0, got {n}"
        if k % _MARLIN_MIN_K or k % group_size:
            return f"needs in_features % {max(_MARLIN_MIN_K, group_size)} == 0, got {k}"
        return None

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128) -> str | None:
        reason = int4_supports_reason(cls, weight, device, group_size, "CUDA (the Marlin layout)")
        return reason or cuda_capability_reason(target_device(weight, device)) or triton_reason()

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype):
        """Pack unsigned int4 codes ``[N, K]`` with ``scale`` (float) and integer
        ``zero_point`` (any integer dtype, values 0..15), both ``[N, K // group_size]``.

        The scale keeps its dtype (float16/bfloat16 for the Marlin kernels); ``to_codes``
        returns it bit-exactly and the zero point as int8.
        """
        n, k = check_int4_codes(cls.__name__, codes, scale, zero_point, group_size, shape, "int", None)
        reason = cls._layout_reason(n, k, group_size)
        if reason:
            raise ValueError(f"{cls.__name__} {reason}; use another int4 packing for this layer")
        return cls(
            pack_marlin_int4(codes),
            pack_marlin_scales(scale, k),
            pack_marlin_zero_points(zero_point),
            group_size=group_size,
            shape=tuple(shape),
            dtype=dtype,
        )

    def to_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scale [N, K // gs], zero_point int8 [N, K // gs])."""
        return (
            unpack_marlin_int4(self.qdata),
            unpack_marlin_scales(self.scale),
            unpack_marlin_zero_points(self.zero_point).to(torch.int8),
        )

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 128, qparams: str = "minmax") -> Int4MarlinTensor:
        """Asymmetric int4 quantization (integer zero point) of a float ``[N, K]`` weight
        (any group size ``_layout_reason`` accepts, group_size == K included)."""
        return quantize_for_layout(cls, w, group_size, qparams, None)


Int4MarlinTensor.implements(F.linear, aten.linear.default)(
    kernel_linear("int4_marlin_mm", "qdata", "scale", "zero_point", "group_size")
)
