"""Shared pieces of lowbit's benchmarks: machine description, timers, memory bandwidth.

Timing rules (see benchmarks/README.md):
* Medians of per-call times, after a warm-up pass.
* "Cold" weights: the timed function rotates over several copies of the layer, totalling
  more than the last-level cache, so each call streams its weight from memory as in a real
  decode step. One 8-32 MB weight would otherwise sit in a 32 MB L3 (or a 50 MB GPU L2)
  and flatter every memory-bound kernel.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

MiB = 2**20
GB = 1e9  # bandwidths are reported in decimal GB/s, as vendors quote them


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """CPU model name (/proc/cpuinfo; platform.processor() elsewhere): lowbit's own probe."""
    from lowbit.autoquant.bench import _cpu_model_name

    return _cpu_model_name()


_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_isa() -> str:
    """Family/model and the vector flags kernels care about, from /proc/cpuinfo ('' elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    field = {}
    for line in text.splitlines():
        if ":" in line:
            key, _, val = line.partition(":")
            field.setdefault(key.strip(), val.strip())
        if not line.strip() and field:
            break
    flags = set(field.get("flags", "").split())
    have = [f for f in _ISA_FLAGS if f in flags]
    return f"family {field.get('cpu family', '?')} model {field.get('model', '?')}; flags: {' '.join(have) or 'none of ' + ', '.join(_ISA_FLAGS)}"


def cpu_cores() -> tuple[int | None, int]:
    """(physical cores, logical CPUs) of the processors this process may run on."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                elif not line.strip() and core is not None:
                    cores.add((phys, core))
                    phys = core = None
    except OSError:
        pass
    return (len(cores) or None), logical


def machine_description(device: torch.device) -> dict[str, str]:
    """What a results file must say about where it was measured."""
    cores, logical = cpu_cores()
    info = {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "CPU": cpu_model(),
        "CPU family / model, vector flags": cpu_isa() or "?",
        "CPU cores / logical CPUs": f"{cores if cores is not None else '?'} / {logical}",
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "CPU capability (ATen)": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        busy = " (BUSY: other work was running; timings are unreliable)" if load > 0.5 * logical else ""
        info["load average (1 min) at start"] = f"{load:.2f}{busy}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["GPU"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        info["CUDA"] = str(torch.version.cuda)
    return info


def machine_slug(device: torch.device) -> str:
    """A file-name-friendly machine name, e.g. ``amd-epyc-7b13-2t`` or ``nvidia-h100-80gb-hbm3``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}-{torch.get_num_threads()}t"
    keep = "".join(c.lower() if c.isalnum() else "-" for c in name)
    return "-".join(p for p in keep.split("-") if p and p not in ("processor", "core", "r", "tm"))


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median_s: float
    n_calls: int


def time_rotating(fn: Callable[[int], object], n_copies: int, device: torch.device,
                  min_calls: int = 10, max_calls: int = 200, budget_s: float = 1.0) -> Timing:
    """Median time of ``fn(i)`` over calls that rotate ``i`` through ``range(n_copies)``.

    A warm-up pass touches every copy once (first-call allocations, kernel selection,
    page faults). Then calls continue round-robin until ``budget_s`` of measured time has
    passed or ``max_calls`` were made, and at least ``min_calls`` (rounded up to whole
    rotations, so every copy is measured equally often).
    """
    for i in range(n_copies):
        fn(i)
    sync(device)
    calls = max(min_calls, n_copies)
    calls = -(-calls // n_copies) * n_copies
    times: list[float] = []
    if device.type == "cuda":
        # Events recorded around each call, read after one sync: no host sync between calls,
        # so launch latency overlaps as in a model's forward.
        spent = 0.0
        while True:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
            for j in range(calls):
                starts[j].record()
                fn(j % n_copies)
                ends[j].record()
            torch.cuda.synchronize(device)
            batch = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
            times += batch
            spent += sum(batch)
            if spent >= budget_s or len(times) >= max_calls:
                break
    else:
        spent = 0.0
        j = 0
        while len(times) < calls or (spent < budget_s and len(times) < max_calls) or j % n_copies:
            t0 = time.perf_counter()
            fn(j % n_copies)
            dt = time.perf_counter() - t0
            times.append(dt)
            spent += dt
            j += 1
    return Timing(statistics.median(times), len(times))


def interleaved_times(rows: dict[str, tuple[Callable[[], object], int]], rounds: int) -> dict[str, list[float]]:
    """Per-call seconds of each row in each of ``rounds`` rounds, the rows timed one after the
    other inside a round, so load from other processes hits every row alike.

    ``rows``: name -> (fn, calls): one ``fn()`` makes ``calls`` calls (e.g. one per rotated
    weight copy). CPU timing (no device sync); warm the rows up first.
    """
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, (fn, calls) in rows.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def copies_for(bytes_per_copy: int, cold_bytes: int, max_copies: int = 64) -> int:
    """How many copies of a weight make ``cold_bytes`` of rotation (at least 2)."""
    return max(2, min(max_copies, -(-cold_bytes // max(bytes_per_copy, 1))))


# ----------------------------------------------------------------------------- bandwidth


@dataclass
class Bandwidth:
    read_gbs: float  # large-tensor sum: bytes read / time
    copy_gbs: float  # large-tensor copy: (bytes read + bytes written) / time
    nbytes: int

    def describe(self) -> str:
        return (
            f"memory read bandwidth {self.read_gbs:.1f} GB/s (median of `x.sum()` over a "
            f"{self.nbytes / MiB:.0f} MiB float32 tensor, bytes read / time); copy "
            f"{self.copy_gbs:.1f} GB/s (`y.copy_(x)`, read + written bytes / time, "
            "not counting write-allocate reads)"
        )


def measure_bandwidth(device: torch.device, nbytes: int = 1024 * MiB, budget_s: float = 1.0) -> Bandwidth:
    """Read bandwidth from a large float32 sum (reads ``nbytes``, writes nothing) and copy
    bandwidth from ``y.copy_(x)`` (reads and writes ``nbytes`` each, counted as 2x)."""
    n = nbytes // 4
    x = torch.ones(n, dtype=torch.float32, device=device)
    read = time_rotating(lambda i: x.sum(), 1, device, min_calls=5, max_calls=50, budget_s=budget_s)
    y = torch.empty_like(x)
    copy = time_rotating(lambda i: y.copy_(x), 1, device, min_calls=5, max_calls=50, budget_s=budget_s)
    del x, y
    return Bandwidth(read_gbs=nbytes / read.median_s / GB, copy_gbs=2 * nbytes / copy.median_s / GB, nbytes=nbytes)


# ----------------------------------------------------------------------------- markdown


def md_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def emit_report(text: str, out: str | None) -> int:
    """Print a benchmark's markdown report and, with ``out``, write it there; the exit code 0."""
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0
