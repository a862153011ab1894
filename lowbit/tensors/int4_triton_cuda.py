"""Groupwise int4 weight in lowbit's own CUDA layout, read by lowbit's Triton kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops  # noqa: F401  (registers torch.ops.lowbit)
from ..device_caps import cuda_capability_reason, triton_reason
from ..ops import triton_int4  # noqa: F401  (defines lowbit::int4_triton_cuda_mm)
from ..packing.int4_triton import pack_int4_triton, unpack_int4_triton
from .base import LowbitTensor, kernel_linear, target_device
from .int4_common import (
    Int4Packing,
    PortableInt4Mixin,
    check_int4_codes,
    check_int4_weight,
    int4_supports_reason,
    quantize_int4,
    scale_dtype_for,
)

aten = torch.ops.aten

__all__ = ["Int4TritonCudaTensor"]

_N_ALIGN = 8  # N % 8: 32-byte rows of int32 words, so every row starts 16-byte aligned


class Int4TritonCudaTensor(PortableInt4Mixin, LowbitTensor):
    """Groupwise asymmetric int4 weight (float zero point) for lowbit's Triton kernels.

    qdata       int32 [ceil(K / 128) * 16, N]   8 codes per word along K, N contiguous
                (lowbit/packing/int4_triton.py: nibble j of word row 16 c + i is
                k = 128 c + 16 j + i; K padded with code 0 to a multiple of 128)
    scale       bf16/fp16 [K / group_size, N]
    zero_point  same dtype as scale, [K / group_size, N]

    Numerics: ``w = (q - 8) * scale + zero`` with codes ``q`` in 0..15 (the tinygemm /
    HQQ float-zero-point convention, ``ZeroPointKind.FLOAT``); integer zero points are
    converted exactly as for the other float-zero-point formats (configs/int4.py).

    Kernel: ``lowbit::int4_triton_cuda_mm`` (lowbit/ops/triton_int4.py), a
    ``torch.library.triton_op``: a one-launch CUDA-core GEMV at M = 1 (M = 2 on layers
    with N < 8192), a tensor-core kernel on the raw codes to M = 32, dequantize + cuBLAS
    above, chosen by M from a table measured on sm90. bf16 and fp16 activations run
    as they are; float32 ones are computed in bf16 and cast back.

    Requires: CUDA with compute capability >= 8.0, triton, N % 8 == 0, group_size in
    {32, 64, 128, 256} dividing K. The tensor can also live on CPU (build, save, load);
    ``F.linear`` there runs the pure-PyTorch reference.
    """

    int4_packing = Int4Packing.TRITON_CUDA
    int4_auto = False  # tinygemm (Int4TiledCudaTensor) is faster at M = 1 on sm90 (18.6 vs 22.3 us)
    zero_point_kind = "float"
    kernel_device = "cuda"
    scale_dtypes = (torch.float16, torch.bfloat16)  # kept fp16, else stored bf16
    data_fields = ("qdata", "scale", "zero_point")
    meta_fields = ("group_size",)
    format_name = "int4_triton_cuda"
    format_version = 1

    GROUP_SIZES = (32, 64, 128, 256)

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128) -> str | None:
        reason = int4_supports_reason(cls, weight, device, group_size, "CUDA (Triton kernels)")
        return reason or cuda_capability_reason(target_device(weight, device)) or triton_reason()

    @classmethod
    def _layout_reason(cls, n: int, k: int, group_size: int) -> str | None:
        if group_size not in cls.GROUP_SIZES:
            return f"needs group_size in {cls.GROUP_SIZES}, got {group_size}"
        if k % group_size:
            return f"needs in_features % group_size == 0, got in_features={k}, group_size={group_size}"
        if n % _N_ALIGN:
            return f"needs out_features % {_N_ALIGN} == 0, got {n}"
        return None

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype):
        """Pack unsigned int4 codes ``[N, K]`` with float ``scale``/``zero_point`` ``[N, K // group_size]``.

        scale and zero point keep float16, else are stored as bfloat16 (pass bfloat16 or
        float16 to get them back bit-exactly from ``to_codes``).
        """
        n, _ = check_int4_codes(cls.__name__, codes, scale, zero_point, group_size, shape, "float", cls.GROUP_SIZES)
        if n % _N_ALIGN:
            raise ValueError(f"{cls.__name__} needs N % {_N_ALIGN} == 0, got N={n}; use another int4 packing")
        pdt = scale.dtype if scale.dtype in cls.scale_dtypes else cls.scale_dtypes[-1]
        return cls(
            pack_int4_triton(codes),
            scale.to(pdt).t().contiguous(),
            zero_point.to(pdt).t().contiguous(),
            group_size=group_size,
            shape=tuple(shape),
            dtype=dtype,
        )

    def to_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scale [N, K // gs], zero_point [N, K // gs])."""
        k = self.shape[1]
        return unpack_int4_triton(self.qdata, k), self.scale.t().contiguous(), self.zero_point.t().contiguous()

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 128) -> Int4TritonCudaTensor:
        """Min-max asymmetric int4 quantization of a float ``[N, K]`` weight, then pack."""
        check_int4_weight(w, group_size, cls.__name__ + ".from_float", cls.GROUP_SIZES)
        n, k = w.shape
        if n % _N_ALIGN or k % group_size:
            raise ValueError(
                f"{cls.__name__} needs N % {_N_ALIGN} == 0 and K % group_size == 0 (group_size={group_size}), "
                f"got N={n}, K={k}"
            )
        codes, scale, zero = quantize_int4(w, group_size, "float", "minmax", scale_dtype_for(cls, w.dtype))
        return cls.from_codes(codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype)


Int4TritonCudaTensor.implements(F.linear, aten.linear.default)(
    kernel_linear("int4_triton_cuda_mm", "qdata", "scale", "zero_point", "group_size")
)
