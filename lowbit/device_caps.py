"""What the current machine's kernels can do, probed lazily (never at import).

The probes are marked constant for torch.compile so that kernel choices made from
them inside a compiled ``linear`` cost no graph break.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["cpu_has_native_bf16", "cpu_has_vnni", "cpu_has_avx512", "cpu_has_avx2"]


@torch._dynamo.assume_constant_result
@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX).

    Without it, oneDNN/MKL emulate bf16 GEMMs and run them several times slower than
    fp32 (measured 7x at M=256 on an AVX2 Zen3), so large-M paths compute in fp32.
    """
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


@torch._dynamo.assume_constant_result
@functools.cache
def cpu_has_vnni() -> bool:
    """True where the CPU has AVX512-VNNI (``vpdpbusd``)."""
    return bool(torch.cpu._is_vnni_supported())


@torch._dynamo.assume_constant_result
@functools.cache
def cpu_has_avx512() -> bool:
    return bool(torch.cpu._is_avx512_supported())


@torch._dynamo.assume_constant_result
@functools.cache
def cpu_has_avx2() -> bool:
    return bool(torch.cpu._is_avx2_supported())
