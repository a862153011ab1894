"""``lowbit.tune()``: measure this machine's CPU kernel crossovers and cache them.

For each CPU op with several paths (lowbit/ops/cpu_paths.py: GEMV, tinygemm, brgemm,
dequantize + GEMM), every path this process can run is timed at each batch size M on a
layer of the given shape (cold weights: copies of the layer are rotated so they do not
stay in cache), next to bf16 ``F.linear``. The fastest path per M becomes this machine's
table, saved as JSON under the cache directory (one file per CPU model, torch version,
ISA class and thread count) and used by the dispatch from then on, in this and later processes.

The table only chooses between quantized kernels. Where even the fastest one is slower
than bf16 ``F.linear`` at some M, the result says so (``slower_than_bf16``) and a warning
is logged: lowbit never answers a quantized layer with a dequantized bf16 copy.

    lowbit tune --shape 4096x4096 --threads 16     # or: python -m lowbit.cli tune
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .ops import cpu_paths

__all__ = ["TuneResult", "format_tune_result", "tune"]

logger = logging.getLogger(__name__)

DEFAULT_MS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class TuneResult:
    cpu: str
    torch_version: str
    isa_class: str
    threads: int
    shape: tuple[int, int]  # (N, K)
    ms: list[int]
    bf16_us: list[float]
    times_us: dict[str, dict[str, list[float]]]  # op -> path -> per M
    table: dict[str, list[tuple[int | None, str]]]
    slower_than_bf16: dict[str, list[int]] = field(default_factory=dict)  # op -> Ms
    path: str | None = None  # where the table was saved


def _make_args(op: str, n: int, k: int, gen: torch.Generator):
    """Random weights in the op's packed format (the values do not change the timing)."""
    if op == "int4_tinygemm_cpu_linear":
        from .packing.int4 import tinygemm_cpu_layout

        group = 128 if k % 128 == 0 else 32
        codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        qdata = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        sz = (torch.rand(k // group, qdata.shape[0], 2, generator=gen) * 0.01).to(torch.bfloat16)
        return (qdata, sz, group, n, tinygemm_cpu_layout())
    if op == "da8w4_linear":
        from .tensors import Int4VnniCpuTensor

        group = 128 if k % 128 == 0 else 32
        t = Int4VnniCpuTensor.from_float(torch.randn(n, k, generator=gen), group_size=group)
        return (t.qdata, t.scale, t.zero_point, t.qsum, group, "asymmetric")
    qdata = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    scale = torch.rand(n, 1, generator=gen) * 0.01
    return (qdata, scale)


def _call_copy(kernel, argsets, x, c):
    return kernel(x, *argsets[c])


def _time_us(fn, xs: list[torch.Tensor], copies: int, reps: int) -> float:
    fn(xs[0], 0)  # warm-up (builds/JITs kernels)
    times = []
    for _ in range(reps):
        for c in range(copies):
            t0 = time.perf_counter()
            fn(xs[0], c)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def tune(
    shape: tuple[int, int] = (4096, 4096),
    ms: tuple[int, ...] = DEFAULT_MS,
    threads: int | None = None,
    ops: tuple[str, ...] | None = None,
    cold_mib: int = 256,
    reps: int = 3,
    save: bool = True,
) -> TuneResult:
    """Time every available CPU path of every op at each M; save and return the table.

    ``shape`` (N, K) of the layer timed; ``threads`` torch threads while timing (default:
    torch's current); ``cold_mib`` total size of the rotated weight copies; ``save``
    writes the table where the dispatch finds it (:func:`lowbit.ops.cpu_paths.tune_cache_path`).
    """
    n, k = shape
    if n < 1 or k < 1 or k % 32:
        raise ValueError(f"lowbit.tune: shape must be (N >= 1, K a multiple of 32), got {shape}")
    if not ms or any(m < 1 for m in ms):
        raise ValueError(f"lowbit.tune: ms must be positive batch sizes, got {ms}")
    ops = tuple(ops or cpu_paths.OPS)
    unknown = [op for op in ops if op not in cpu_paths.PATHS]
    if unknown:
        raise ValueError(f"lowbit.tune: unknown ops {unknown}; known: {list(cpu_paths.OPS)}")
    from .ops import cpu

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    ms = sorted(set(ms))
    try:
        w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
        copies_bf16 = max(1, min(64, (cold_mib << 20) // w.nbytes))
        wb = [w.clone() for _ in range(copies_bf16)]
        bf16_us, times = [], {op: {} for op in ops}
        for m in ms:
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            bf16_us.append(_time_us(lambda x, c, wb=wb: F.linear(x, wb[c]), [x], copies_bf16, reps))
        wb.clear()
        for op in ops:
            args0 = _make_args(op, n, k, gen)
            nbytes = sum(a.nbytes for a in args0 if isinstance(a, torch.Tensor))
            copies = max(1, min(64, (cold_mib << 20) // max(nbytes, 1)))
            argsets = [args0] + [tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args0)
                                 for _ in range(copies - 1)]
            kernel = getattr(cpu, op)
            for path in cpu_paths.PATHS[op]:
                if not cpu_paths.path_available(op, path):
                    continue
                if path == "int_mm" and cpu_paths.isa_class() in ("avx2", "other"):
                    # torch._int_mm is a scalar loop there (1.4 s at 256x4096x4096 on an AVX2
                    # Zen3): never the fastest, and timing it would take minutes.
                    continue
                with cpu_paths.forced_path(op, path):
                    row = []
                    for m in ms:
                        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
                        run = functools.partial(_call_copy, kernel, argsets)
                        row.append(_time_us(run, [x], copies, reps))
                times[op][path] = row
            argsets.clear()
    finally:
        torch.set_num_threads(old_threads)
    table, slower = {}, {}
    for op in ops:
        best = [min(times[op], key=lambda p: times[op][p][i]) for i in range(len(ms))]
        entries: list[tuple[int | None, str]] = []
        for i, p in enumerate(best):
            if entries and entries[-1][1] == p:
                entries[-1] = (ms[i], p)
            else:
                entries.append((ms[i], p))
        entries[-1] = (None, entries[-1][1])
        table[op] = entries
        slow = [ms[i] for i in range(len(ms)) if times[op][best[i]][i] > bf16_us[i]]
        if slow:
            slower[op] = slow
            logger.warning("lowbit.tune: %s is slower than bf16 F.linear at M=%s on this machine (%s)",
                           op, slow, cpu_paths.isa_class())
    result = TuneResult(
        cpu=cpu_paths._cpu_model(),
        torch_version=torch.__version__,
        isa_class=cpu_paths.isa_class(),
        threads=threads or old_threads,
        shape=(n, k),
        ms=ms,
        bf16_us=bf16_us,
        times_us=times,
        table=table,
        slower_than_bf16=slower,
    )
    if save:
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            path = cpu_paths.tune_cache_path()
        finally:
            torch.set_num_threads(old_threads)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result), indent=1))
        tmp.replace(path)
        result.path = str(path)
        cpu_paths.clear_tuned_cache()
        logger.info("lowbit.tune: table saved to %s", path)
    return result


def path_time_table(first: str, ms, bf16_us, times_us, fmt: str = ",.0f") -> list[str]:
    """Markdown rows: bf16 F.linear, then each (key, path)'s time per M and its ratio to bf16."""
    lines = [
        f"| {first} | path | " + " | ".join(f"M={m}: us (x bf16)" for m in ms) + " |",
        "|---|---|" + "---|" * len(ms),
        "| bf16 F.linear | - | " + " | ".join(f"{t:{fmt}}" for t in bf16_us) + " |",
    ]
    for key, paths in times_us.items():
        for path, row in paths.items():
            cells = " | ".join(f"{t:{fmt}} ({b / t:.2f}x)" for t, b in zip(row, bf16_us))
            lines.append(f"| {key} | {path} | {cells} |")
    return lines


def format_tune_result(r: TuneResult) -> str:
    """Markdown: per op, each path's time per M and its ratio to bf16 F.linear; the table."""
    lines = [
        (f"# lowbit tune: {r.cpu} (class {r.isa_class}), torch {r.torch_version}, {r.threads} threads, "
         f"N x K = {r.shape[0]} x {r.shape[1]}"),
        "",
        *path_time_table("op", r.ms, r.bf16_us, r.times_us),
    ]
    lines += ["", "Table (path up to max M):", ""]
    for op, entries in r.table.items():
        lines.append(f"- {op}: " + ", ".join(f"{p} (M <= {m})" if m is not None else f"{p} (rest)"
                                             for m, p in entries))
    for op, slow in r.slower_than_bf16.items():
        lines.append(f"- SLOWER than bf16 F.linear: {op} at M = {slow}")
    if r.path:
        lines.append(f"\nSaved to {r.path}")
    return "\n".join(lines)
