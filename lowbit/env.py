"""``env_report()``: which of lowbit's kernels can run on this machine, and why not."""

from __future__ import annotations

import platform
import shutil
from typing import Any

import torch

from .device_caps import cpuinfo_field

__all__ = ["env_report"]

_ISA_NAMES = {0: "scalar C++", 1: "AVX2 (vpmaddubsw/vpmaddwd)", 2: "AVX512-VNNI (vpdpbusd)"}
_CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def _cpu_flags() -> dict[str, bool]:
    have = set((cpuinfo_field("flags") or "").split())
    flags = {name: name in have for name in _CPU_FLAGS}
    if not have:  # no /proc/cpuinfo (macOS, Windows): ask torch's cpuinfo instead
        flags.update(
            avx2=bool(torch.cpu._is_avx2_supported()),
            avx512f=bool(torch.cpu._is_avx512_supported()),
            avx512_vnni=bool(torch.cpu._is_vnni_supported()),
            amx_tile=bool(torch.cpu._is_amx_tile_supported()),
        )
    return flags


def env_report(as_dict: bool = False, build: bool = True) -> str | dict[str, Any]:
    """Describe lowbit's kernels on this machine.

    Args:
        as_dict: return a dict instead of readable text.
        build: try to build/load the C++ CPU extension first (the first call in a fresh
            cache compiles it, about 15-60 s); with False only report what happened so far.

    Returns:
        Text (or a dict) listing torch, the CPU's relevant flags, the compiler, whether the
        CPU extension loaded (path, build time, or the reason and the build log), and
        which DA8W4 kernel runs: AVX512-VNNI, AVX2 or scalar. AVX512-VNNI is compiled but
        has not been tested on real hardware by lowbit's CI; AMX is not implemented.
    """
    from .ops import _ext

    if build:
        _ext.load_cpu_extension()
    st = _ext.cpu_extension_status()
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": _cpu_flags(),
        "cuda_available": torch.cuda.is_available(),
        "compiler": st.compiler or shutil.which("c++"),
        "ninja": shutil.which("ninja"),
        "cpu_extension": {
            "attempted": st.attempted,
            "loaded": st.loaded,
            "path": st.path,
            "seconds": None if st.seconds is None else round(st.seconds, 2),
            "reason_not_loaded": st.reason,
            "build_log": st.build_log,
        },
        "da8w4_kernel": None,
        "notes": [
            "AVX512-VNNI DA8W4 path: compiled, selected at run time by CPU detection, "
            "NOT tested on hardware by lowbit's CI (developed on an AVX2-only Zen3).",
            "AMX: not implemented.",
        ],
    }
    if st.loaded:
        info["da8w4_kernel"] = _ISA_NAMES.get(int(torch.ops.lowbit_ext.da8w4_best_isa()), "unknown")
    elif st.attempted:
        info["da8w4_kernel"] = f"pure-PyTorch reference (slow): {st.reason}"
    else:
        info["da8w4_kernel"] = "not decided yet (extension not built; call env_report(build=True))"
    if as_dict:
        return info
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["cpu_flags"].items())
    ext = info["cpu_extension"]
    lines = [
        f"torch {info['torch']} (python {info['python']}, {info['machine']}, "
        f"ATen CPU capability {info['torch_cpu_capability']}, CUDA {'yes' if info['cuda_available'] else 'no'})",
        f"CPU flags: {flags}",
        f"C++ compiler: {info['compiler'] or 'not found'}; ninja: {info['ninja'] or 'not found'}",
    ]
    if ext["loaded"]:
        lines.append(f"CPU extension: loaded from {ext['path']} ({ext['seconds']} s build/load)")
    else:
        lines.append(f"CPU extension: not loaded ({ext['reason_not_loaded'] or 'not attempted'})")
        if ext["build_log"]:
            lines.append("build log (tail):\n" + ext["build_log"][-2000:])
    lines.append(f"DA8W4 kernel: {info['da8w4_kernel']}")
    lines += [f"note: {n}" for n in info["notes"]]
    return "\n".join(lines)
