"""Memory-layout preconditions of the ATen CPU kernels lowbit calls, in one place.

``aten._weight_int8pack_mm`` (aten/src/ATen/native/cpu/int8mm_kernel.cpp) checks shapes
and dtypes but not layout. Its AVX512 tile reads 16 K-elements per step with *aligned*
loads: ``_mm_load_si128`` on every weight row (``qdata + n * K``, needs 16-byte alignment)
and ``_mm256_load_si256`` on every bf16 activation row (``x + m * K``, needs 32 bytes);
the AVX2 tile reads 8 per step (``_mm_load_si128`` on the activation row, 16 bytes). There
is no tail loop, so K not a multiple of 16 reads past the row (garbage), and a row that
is not aligned faults (segfault). Measured on torch 2.13: K=100 gives NaN at M=1 and
segfaults at M=3 (AVX512) / M=8 (``ATEN_CPU_CAPABILITY=avx2``); a weight loaded from
safetensors (8-byte alignment) with ``data_ptr() % 16 == 8`` segfaults at M=2..128.

Callers ask :func:`int8pack_mm_unsafe_reason` first and take another path when it gives a
reason, and pass activations through :func:`aligned_rows`.
"""

from __future__ import annotations

import torch

__all__ = [
    "INT8PACK_ACT_ALIGN",
    "INT8PACK_K_MULTIPLE",
    "INT8PACK_WEIGHT_ALIGN",
    "aligned_copy",
    "aligned_rows",
    "int8pack_mm_unsafe_reason",
    "is_aligned",
]

# The AVX512 tile's K step (16 int8 / 16 bf16 elements per load); AVX2's 8 divides it.
INT8PACK_K_MULTIPLE = 16
# Bytes: _mm_load_si128 on weight rows, _mm256_load_si256 on bf16 activation rows.
INT8PACK_WEIGHT_ALIGN = 16
INT8PACK_ACT_ALIGN = 32
# What PyTorch's CPU allocator gives every fresh tensor (c10::gAlignment); copies made to
# fix alignment land on this boundary.
ALLOCATOR_ALIGN = 64


def is_aligned(t: torch.Tensor, alignment: int) -> bool:
    """True when ``t``'s first element sits on an ``alignment``-byte boundary."""
    return t.data_ptr() % alignment == 0


def aligned_copy(t: torch.Tensor, alignment: int = ALLOCATOR_ALIGN) -> torch.Tensor:
    """``t`` itself if contiguous and aligned, else a contiguous copy in fresh memory."""
    if t.is_contiguous() and (t.numel() == 0 or is_aligned(t, alignment)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def int8pack_mm_unsafe_reason(x: torch.Tensor, qdata: torch.Tensor) -> str | None:
    """None if ``aten._weight_int8pack_mm(x, qdata, ...)`` is safe for this weight, else why not.

    ``x`` is the [M, K] activation (any layout: :func:`aligned_rows` fixes it); ``qdata``
    the [N, K] int8 weight, which is checked as it is, since copying it per call would cost
    what the kernel saves.
    """
    k = qdata.shape[-1]
    if k % INT8PACK_K_MULTIPLE:
        return f"K={k} is not a multiple of {INT8PACK_K_MULTIPLE}"
    if x.shape[0] == 0 or qdata.shape[0] == 0:
        return "empty input or weight"
    if not qdata.is_contiguous():
        return "the int8 weight is not contiguous"
    if not is_aligned(qdata, INT8PACK_WEIGHT_ALIGN):
        return (
            f"the int8 weight's data pointer is {qdata.data_ptr() % INT8PACK_WEIGHT_ALIGN} bytes "
            f"off a {INT8PACK_WEIGHT_ALIGN}-byte boundary"
        )
    return None


def aligned_rows(x_bf16: torch.Tensor) -> torch.Tensor:
    """A contiguous [M, K] activation whose rows meet the kernel's load alignment
    (given K % 16 == 0, a 32-byte-aligned start aligns every bf16 row)."""
    return aligned_copy(x_bf16, INT8PACK_ACT_ALIGN)
