"""Groupwise int4 weight in lowbit's own CUDA layout, read by lowbit's Triton kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops  # noqa: F401  (registers torch.ops.lowbit)
from ..ops import triton_int4  # noqa: F401  (defines lowbit::int4_triton_cuda_mm)
from ..ops.library import kernel
from ..packing.int4_triton import pack_int4_triton, unpack_int4_triton
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

__all__ = ["Int4TritonCudaTensor"]

_SM80 = (8, 0)  # bf16 tensor-core dots (tl.dot on bf16) need Ampere or newer
_N_ALIGN = 8  # N % 8: 32-byte rows of int32 words, so every row starts 16-byte aligned


def _triton_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "needs the triton package (it ships with CUDA builds of torch; pip install triton)"
    return None


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
    ``torch.library.triton_op``: split-K GEMV for M <= 8, fused dequantize + tensor-core
    GEMM above, chosen by M from a table measured on sm90. bf16 and fp16 activations run
    as they are; float32 ones are computed in bf16 and cast back.

    Requires: CUDA with compute capability >= 8.0, triton, N % 8 == 0, group_size in
    {32, 64, 128, 256} dividing K. The tensor can also live on CPU (build, save, load);
    ``F.linear`` there runs the pure-PyTorch reference.
    """

    zero_point_kind = "float"
    kernel_device = "cuda"
    data_fields = ("qdata", "scale", "zero_point")
    meta_fields = ("group_size",)
    format_name = "int4_triton_cuda"
    format_version = 1

    GROUP_SIZES = (32, 64, 128, 256)
    _PARAM_DTYPES = (torch.bfloat16, torch.float16)

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128) -> str | None:
        reason = _weight_shape_reason(weight)
        if reason:
            return reason
        n, k = weight.shape
        if group_size not in cls.GROUP_SIZES:
            return f"needs group_size in {cls.GROUP_SIZES}, got {group_size}"
        if k % group_size:
            return f"needs in_features % group_size == 0, got in_features={k}, group_size={group_size}"
        if n % _N_ALIGN:
            return f"needs out_features % {_N_ALIGN} == 0, got {n}"
        dev = _device_of(weight, device)
        if dev.type != "cuda":
            return f"runs on CUDA only (Triton kernels), got device {dev}; on CPU use the CPU tinygemm format"
        if torch.cuda.is_available() and torch.cuda.get_device_capability(dev) < _SM80:
            return f"needs compute capability >= 8.0, got {torch.cuda.get_device_capability(dev)} on {dev}"
        return _triton_reason()

    scale_dtype = torch.bfloat16  # what from_codes stores by default; quantize with it

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype):
        """Pack unsigned int4 codes ``[N, K]`` with float ``scale``/``zero_point`` ``[N, K // group_size]``.

        scale and zero point keep float16, else are stored as bfloat16 (pass bfloat16 or
        float16 to get them back bit-exactly from ``to_codes``).
        """
        _check_group_size(cls.__name__, group_size, cls.GROUP_SIZES)
        n, _ = _check_codes(cls.__name__, codes, scale, zero_point, group_size, shape, int_zero_point=False)
        if n % _N_ALIGN:
            raise ValueError(f"{cls.__name__} needs N % {_N_ALIGN} == 0, got N={n}; use another int4 packing")
        pdt = scale.dtype if scale.dtype in cls._PARAM_DTYPES else torch.bfloat16
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
        _check_weight(w, cls.__name__)
        _check_group_size(cls.__name__, group_size, cls.GROUP_SIZES)
        n, k = w.shape
        if n % _N_ALIGN or k % group_size:
            raise ValueError(
                f"{cls.__name__} needs N % {_N_ALIGN} == 0 and K % group_size == 0 (group_size={group_size}), "
                f"got N={n}, K={k}"
            )
        pdt = w.dtype if w.dtype in cls._PARAM_DTYPES else torch.bfloat16
        codes, scale, zero = _quantize_to_codes(w, group_size, False, pdt)
        return cls.from_codes(codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype)


@Int4TritonCudaTensor.implements(F.linear, aten.linear.default)
def _linear(func, types, args, kwargs):
    x, w, bias = linear_args(args, kwargs)
    check_linear_input(x, w)
    y = kernel("int4_triton_cuda_mm", x.device.type)(
        x.reshape(-1, x.shape[-1]), w.qdata, w.scale, w.zero_point, w.group_size
    )
    return finish_linear(y, x, w, bias)
