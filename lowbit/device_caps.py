"""What the current machine's kernels can do, probed lazily (never at import).

The probes are marked constant for torch.compile so that kernel choices made from
them inside a compiled ``linear`` cost no graph break.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

__all__ = [
    "SM80",
    "SM89",
    "cuda_capability_reason",
    "cpu_has_avx2",
    "cpu_has_avx512",
    "cpu_has_native_bf16",
    "cpu_has_vnni",
    "cpuinfo_field",
    "float8_device_reason",
    "triton_reason",
]


@functools.cache
def cpuinfo_field(key: str) -> str | None:
    """The first value of ``key`` in /proc/cpuinfo ("model name", "vendor_id", "flags", ...);
    None where there is no such file (macOS, Windows) or no such field."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


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


SM80 = (8, 0)  # bf16 tensor cores (mma.m16n8k16, tl.dot on bf16): Ampere or newer
SM89 = (8, 9)  # first compute capability with float8 tensor cores (Ada, Hopper)


def cuda_capability_reason(device, minimum: tuple[int, int] = SM80) -> str | None:
    """Why CUDA ``device`` is older than compute capability ``minimum`` (None: it is not,
    or CUDA is not available to ask)."""
    if not torch.cuda.is_available():
        return None
    cap = torch.cuda.get_device_capability(device)
    if cap < minimum:
        return f"needs compute capability >= {minimum[0]}.{minimum[1]} (bf16 tensor cores), got {cap} on {device}"
    return None


def float8_device_reason(device) -> str | None:
    """None if ``device`` runs lowbit's float8 kernels, else why not (probes only that GPU)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return (
            f"float8 kernels need an NVIDIA GPU with compute capability >= 8.9 (Ada/Hopper), got a "
            f"{dev.type} device; use Int8WeightOnlyConfig / Int8DynamicActivationInt8WeightConfig there"
        )
    if not torch.cuda.is_available():
        return "float8 kernels need CUDA, and torch.cuda.is_available() is False"
    cap = torch.cuda.get_device_capability(dev)
    if cap < SM89:
        return (
            f"float8 kernels need compute capability >= 8.9 (Ada/Hopper), {torch.cuda.get_device_name(dev)} "
            f"has {cap[0]}.{cap[1]}; use the int8 configs on this GPU"
        )
    if importlib.util.find_spec("triton") is None:
        return "float8 kernels need triton (it ships with CUDA builds of torch); pip install triton"
    return None


def triton_reason() -> str | None:
    """None if the triton package is importable (lowbit's CUDA kernels), else why not."""
    if importlib.util.find_spec("triton") is None:
        return "needs the triton package (it ships with CUDA builds of torch; pip install triton)"
    return None
