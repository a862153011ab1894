"""Building and loading lowbit's C++ CPU extension (``lowbit/csrc``), lazily.

Nothing happens at import. The first call to :func:`load_cpu_extension` (made by the
CPU kernel of an op that needs it) compiles ``lowbit/csrc/*.cpp`` with
``torch.utils.cpp_extension.load`` into a cache directory keyed by a hash of the
sources, the compile flags, the torch version, the compiler (path and version) and the
ISA targets, then loads the library, which
registers the ``torch.ops.lowbit_ext`` ops. Later processes find the build there and
only load it.

Cache directory: ``$LOWBIT_CACHE_DIR`` or ``~/.cache/lowbit`` (subfolder ``ext/``).
Set ``LOWBIT_DISABLE_EXT=1`` to skip the build (the ops then run their pure-PyTorch
reference, with a one-time warning). The outcome, including the compiler output of a
failed build, is kept for :func:`lowbit.env_report`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["load_cpu_extension", "cpu_extension_status", "ExtensionStatus", "warn_fallback_once"]

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_SOURCES = ("da8w4_cpu.cpp", "int4_tinygemm_gemv.cpp", "wo_gemm_cpu.cpp", "int8_vnni_cpu.cpp", "int8_wo_gemv.cpp",
            "int4_amx_cpu.cpp", "int8_amx_cpu.cpp", "da8w4_amx_cpu.cpp")
# No -march: the file compiles for the baseline x86-64 ISA and the AVX2 / AVX512-VNNI
# kernels carry their own `__attribute__((target(...)))`, picked at run time.
_OPENMP = ("-fopenmp",) if platform.system() == "Linux" else ()  # Apple clang has no -fopenmp
_CFLAGS = ("-O3", "-std=c++17", *_OPENMP)
# -fopenmp: ATen's at::parallel_for is a header template that only splits work when the
# including file is compiled with OpenMP (torch's Linux builds use the OpenMP backend);
# without it every at::parallel_for in lowbit/csrc ran on one thread (measured: the int4
# GEMV took the same time at 1 and 2 threads, and the .so had no GOMP symbols).
_LDFLAGS = _OPENMP
_X86 = ("x86_64", "amd64", "x64")


@dataclass
class ExtensionStatus:
    """What happened when lowbit tried to build/load its CPU extension."""

    attempted: bool = False
    loaded: bool = False
    reason: str | None = None  # why it did not load
    build_log: str | None = None  # compiler output of a failed build
    path: str | None = None
    seconds: float | None = None  # build (or cached load) time
    compiler: str | None = None
    warned: set[str] = field(default_factory=set)


_status = ExtensionStatus()
_lock = threading.Lock()


def cache_dir() -> Path:
    """Where built extensions are kept (``$LOWBIT_CACHE_DIR`` or ``~/.cache/lowbit``)."""
    root = os.environ.get("LOWBIT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lowbit")
    return Path(root) / "ext"


def _build_key() -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(_CSRC)):
        if name.endswith((".cpp", ".h")):
            h.update(name.encode())
            h.update((_CSRC / name).read_bytes())
    h.update(" ".join(_CFLAGS).encode())
    h.update(torch.__version__.encode())
    # The compiler's identity and version, and the ISA the objects are built for: the
    # baseline x86-64 plus the per-function targets the sources name (no -march), so a
    # build made by another compiler (or a C++ runtime that differs from torch's) is never
    # picked up from the cache.
    h.update(_compiler_identity().encode())
    h.update(f"{platform.machine()} baseline + target attributes: {_ISA_TARGETS}".encode())
    return h.hexdigest()[:16]


_ISA_TARGETS = ("avx2,fma | avx512f,avx512bw,avx512vnni | avx512f,avx512bw,avx512bf16 | avx512f,avx512bw,avx512vl"
                " | avx512f,avx512bw,amx-tile,amx-bf16 | avx512f,avx512bw,avx512bf16,amx-tile,amx-int8")


def _compiler_identity() -> str:
    """``<path>: <first line of --version>`` of the C++ compiler the build would use."""
    cxx = _find_compiler()
    if cxx is None:
        return "no compiler"
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"{cxx}: version unknown ({type(e).__name__})"
    return f"{os.path.realpath(cxx)}: {out.splitlines()[0] if out else '?'}"


def _find_compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx)


def cpu_extension_status() -> ExtensionStatus:
    """The outcome of the last :func:`load_cpu_extension` (nothing is attempted here)."""
    return _status


def load_cpu_extension() -> bool:
    """Build (first time) and load the CPU extension; True if ``torch.ops.lowbit_ext`` is usable.

    Never raises for a missing compiler or a failed build: the reason is recorded in
    :func:`cpu_extension_status` and the caller runs the reference implementation.
    """
    if _status.attempted:
        return _status.loaded
    with _lock:
        if not _status.attempted:
            _try_load()
            _status.attempted = True
    return _status.loaded


def _try_load() -> None:
    if os.environ.get("LOWBIT_DISABLE_EXT", "") not in ("", "0"):
        _status.reason = "disabled by the environment variable LOWBIT_DISABLE_EXT"
        return
    if platform.machine().lower() not in _X86:
        _status.reason = f"the CPU kernels are written for x86-64; this machine is {platform.machine()}"
        return
    _status.compiler = _find_compiler()
    if _status.compiler is None:
        _status.reason = (
            f"no C++ compiler found (looked for {os.environ.get('CXX', 'c++')!r} on PATH); "
            "install g++ or clang, or set CXX"
        )
        return
    key = _build_key()
    build_dir = cache_dir() / f"torch-{torch.__version__.replace('+', '_')}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    name = f"lowbit_cpu_{key}"
    t0 = time.perf_counter()
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(
            name=name,
            sources=[str(_CSRC / s) for s in _SOURCES],
            extra_cflags=list(_CFLAGS),
            extra_ldflags=list(_LDFLAGS),
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    # A build can fail in many ways (compiler errors, missing ninja, linker, OSError on
    # dlopen); all of them mean "no extension", which is reported, never swallowed.
    except Exception as e:  # noqa: BLE001
        _status.reason = f"building/loading the extension failed: {type(e).__name__}"
        _status.build_log = str(e)[-8000:]
        logger.warning("lowbit CPU extension not available: %s\n%s", _status.reason, _status.build_log)
        return
    _status.seconds = time.perf_counter() - t0
    _status.path = str(build_dir / f"{name}.so")
    _status.loaded = True
    logger.info("lowbit CPU extension loaded from %s in %.1f s", build_dir, _status.seconds)


def warn_fallback_once(op: str) -> None:
    """One warning per op when the reference runs because the extension is missing."""
    if op in _status.warned:
        return
    _status.warned.add(op)
    msg = (
        f"lowbit::{op} runs its pure-PyTorch reference on CPU (same numerics, much slower) "
        f"because the C++ extension is not available: {_status.reason}. "
        "See lowbit.env_report() for details."
    )
    logger.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
