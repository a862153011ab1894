"""Timing for autoquant: what is measured, how, and the explicit cache of results.

A *timer* is any callable ``timer(fn, request) -> seconds`` where ``fn`` runs the thing
once and ``request`` (a ``TimingRequest``) says what it is. ``measure`` is the default:
warm-up then the median of repeated runs (CPU: wall clock; CUDA: a CUDA graph replayed
between CUDA events, or plain events). Tests inject a fake timer that reads a table.

``BenchmarkCache`` holds results keyed by device name, torch version, weight shape and
dtype, activation shape and dtype, config and timing mode; it can live in memory or in
a JSON file, so a second autoquant on the same machine measures nothing it has seen.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BenchmarkCache", "Measure", "Timer", "TimingRequest", "device_name", "measure"]

log = logging.getLogger(__name__)

# Default budgets: enough runs for a stable median on a noisy shared CPU without
# spending seconds on a GEMM that already takes a second per run.
_WARMUP_RUNS = 2
_MIN_RUNS = 3
_MAX_RUNS = 50
_SHORT_BUDGET_S = 0.05  # first measurement: stop once this much time was measured
_LONG_BUDGET_S = 0.25  # second measurement (candidates within 10% of the best)
# A first run this much slower than the best time seen at this shape cannot win:
# record it and stop (saves e.g. 1.6 s emulated-bf16 GEMMs on AVX2 CPUs).
_HOPELESS_FACTOR = 2.0


@dataclasses.dataclass(frozen=True)
class TimingRequest:
    """What a timer is asked to time (so a fake timer can answer by table).

    Attributes:
        candidate: candidate name, e.g. "int8_dynamic" or "keep".
        weight_shape: (N, K) of the layer's weight.
        act_shape: the activation's shape, as recorded.
        dtype: the activation dtype.
        device: where it runs.
        phase: "op" (the whole ``F.linear``) or "matmul" (matmul alone, interpolate mode).
        long: True for the second, longer measurement.
        best_so_far: best time (s) measured for this shape so far, or None; a timer may
            stop early when the first run is hopeless against it.
    """

    candidate: str
    weight_shape: tuple[int, ...]
    act_shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    phase: str = "op"
    long: bool = False
    best_so_far: float | None = None
    share: float = 1.0  # fraction of the budget (interleaved rounds split one budget)


Timer = Callable[[Callable[[], Any], TimingRequest], float]


class Measure:
    """The default timer (a ``Timer``): warm-up, then the median of repeated runs.

    CPU: wall clock around each call. With ``flush_cache`` (default) a buffer twice the
    size of the last-level cache is written before each timed call, so the weight comes
    from memory as it does in a model, where the other layers' weights pass through the
    cache between two calls of this one (a hot loop would favour weights that happen
    to fit in L3). CUDA: a CUDA graph of the call replayed between CUDA events.

    Args:
        flush_cache: evict the CPU caches before each timed run.
        budget_s / long_budget_s: measured time after which a first / second (longer)
            measurement stops (each takes at least 3 runs and at most 50).
        statistic: "median" (default) or "min" (closer to the uncontended time on a
            machine other programs are using; CPU only).
    """

    def __init__(
        self,
        flush_cache: bool = True,
        budget_s: float = _SHORT_BUDGET_S,
        long_budget_s: float = _LONG_BUDGET_S,
        statistic: str = "median",
    ):
        if statistic not in ("median", "min"):
            raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
        self.statistic = statistic
        self.flush_cache = flush_cache
        self.budget_s = budget_s
        self.long_budget_s = long_budget_s

    def __call__(self, fn: Callable[[], Any], request: TimingRequest) -> float:
        budget = (self.long_budget_s if request.long else self.budget_s) * request.share
        if request.device.type == "cuda":
            return _measure_cuda(fn, budget)
        return _measure_cpu(fn, budget, request.best_so_far, self.flush_cache, self.statistic)

    def __repr__(self) -> str:
        return (
            f"Measure(flush_cache={self.flush_cache}, budget_s={self.budget_s}, "
            f"long_budget_s={self.long_budget_s}, statistic={self.statistic!r})"
        )


measure = Measure()


@functools.cache
def _flush_buffer() -> torch.Tensor:
    size = 32 << 20  # bytes; AMD Zen3 CCD L3, used when sysfs does not say
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        size = int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text)
    except (OSError, ValueError):
        pass
    return torch.empty(2 * size, dtype=torch.uint8)


def _measure_cpu(fn, budget: float, best: float | None, flush: bool, statistic: str = "median") -> float:
    buf = _flush_buffer() if flush else None
    with torch.no_grad():
        t0 = time.perf_counter()
        fn()  # cold run: allocations, weight caches, kernel selection
        cold = time.perf_counter() - t0
        # A run longer than the whole budget is its own warm-up, and its runs are steady:
        # skip further warm-ups and take fewer runs (full-size GEMMs take seconds on CPU).
        slow = cold >= budget
        min_runs = _MIN_RUNS - 1 if slow else _MIN_RUNS
        for _ in range(0 if slow else _WARMUP_RUNS - 1):
            fn()
        times: list[float] = []
        spent = 0.0
        while len(times) < _MAX_RUNS and (len(times) < min_runs or spent < budget):
            if buf is not None:
                buf.fill_(len(times) & 0xFF)
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times.append(dt)
            spent += dt
            # The cold run and a warm one both far slower than the best seen: it cannot
            # win; stop (one run alone could be a scheduler hiccup on a busy machine).
            if best is not None and len(times) == 1 and min(cold, dt) > _HOPELESS_FACTOR * best:
                break
    return min(times) if statistic == "min" else statistics.median(times)


def _measure_cuda(fn, budget: float) -> float:
    with torch.no_grad():
        for _ in range(_WARMUP_RUNS):
            fn()
        torch.cuda.synchronize()
        # A CUDA graph removes Python and launch overhead, as a compiled model with
        # cudagraphs would see it. Capturing runs on a side stream (as PyTorch requires).
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        torch.cuda.synchronize()
        times: list[float] = []
        spent = 0.0
        while len(times) < _MAX_RUNS and (len(times) < _MIN_RUNS or spent < budget):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
            times.append(dt)
            spent += dt
    return statistics.median(times)


@functools.cache
def _cpu_model_name() -> str:
    from ..device_caps import cpuinfo_field

    return cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: torch.device | str) -> str:
    """Name that identifies timings: the GPU model, or the CPU model plus thread count."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    if dev.type == "cpu":
        # Timings scale with the threads the GEMMs get, so they are part of the name.
        return f"cpu:{_cpu_model_name()} ({torch.get_num_threads()} threads)"
    return dev.type


class BenchmarkCache:
    """Benchmark results, in memory and optionally in a JSON file.

    Keys are strings built by ``key`` from device name, torch version, weight shape and
    dtype, bias, activation shape and dtype, candidate config and timing mode.
    Values are small dicts (times in seconds). With ``path``, existing results are read
    at construction and ``save()`` writes them back (atomically).

    Args:
        path: JSON file to read from and write to, or None for memory only.
    """

    _FORMAT = "lowbit-autoquant-cache"
    _VERSION = 1

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.entries: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None and os.path.exists(self.path):
            self._read()

    @staticmethod
    def key(
        device: torch.device,
        weight_shape,
        weight_dtype: torch.dtype,
        has_bias: bool,
        act_shape,
        act_dtype: torch.dtype,
        config_key: str,
        mode: str,
    ) -> str:
        return json.dumps(
            [
                device_name(device),
                torch.__version__,
                list(weight_shape),
                str(weight_dtype),
                bool(has_bias),
                list(act_shape),
                str(act_dtype),
                config_key,
                mode,
            ]
        )

    def get(self, key: str) -> dict | None:
        hit = self.entries.get(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = dict(value)

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self) -> None:
        with open(self.path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"autoquant cache {self.path} is not valid JSON ({e}); delete it or pass another path"
                ) from None
        if not isinstance(data, dict) or data.get("format") != self._FORMAT:
            raise ValueError(f"{self.path} is not a lowbit autoquant cache (expected format {self._FORMAT!r})")
        if data.get("version", 0) > self._VERSION:
            raise ValueError(
                f"autoquant cache {self.path} has version {data.get('version')}, this lowbit reads up to "
                f"{self._VERSION}; upgrade lowbit or use another cache path"
            )
        self.entries.update(data.get("entries", {}))
        log.info("lowbit.autoquant: read %d cached benchmark results from %s", len(self.entries), self.path)

    def save(self) -> None:
        """Write the results to ``path`` (no-op for a memory-only cache)."""
        if self.path is None:
            return
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".autoquant-cache-")
        with os.fdopen(fd, "w") as f:
            json.dump({"format": self._FORMAT, "version": self._VERSION, "entries": self.entries}, f, indent=0)
        os.replace(tmp, self.path)
        log.info("lowbit.autoquant: wrote %d benchmark results to %s", len(self.entries), self.path)
