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
        which DA8W4 kernel runs (AVX512-VNNI, AVX2 or scalar), the CPU's class (amx,
        avx512_bf16, avx512, avx2, other) and the path each CPU op runs at M = 1..256 with
        the table it comes from (a ``lowbit tune`` cache or the class's default).
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
            "Kernels are compiled for every x86 level and picked at run time by CPU detection; "
            "the test suite forces each loop this CPU runs (AVX2, AVX512-VNNI, AMX) against the "
            "pure-PyTorch reference. The dispatch lines list the path each op runs per batch size M.",
        ],
    }
    if build or st.loaded:
        from .ops import cpu_paths

        _, where = cpu_paths.active_table()
        info["cpu_class"] = cpu_paths.isa_class()
        info["cpu_dispatch"] = {
            "table": where,
            **{op: {m: cpu_paths.choose_path(op, m) for m in (1, 4, 16, 64, 256)} for op in cpu_paths.OPS},
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
    if "cpu_dispatch" in info:
        d = info["cpu_dispatch"]
        lines.append(f"CPU class: {info['cpu_class']}; dispatch: {d['table']}")
        lines += [f"  {op}: " + ", ".join(f"M={m}: {p}" for m, p in d[op].items()) for op in d if op != "table"]
    lines += [f"note: {n}" for n in info["notes"]]
    return "\n".join(lines)
