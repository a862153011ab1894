"""Linear-layer benchmark: bf16 / fp32 F.linear vs lowbit formats vs the best existing kernels.

Weights are cold: every timed call uses the next of several copies of the layer that
together exceed the last-level cache, so weights stream from memory as in a decode step.

    python3 benchmarks/linear.py --quick                       # smoke test, seconds
    python3 benchmarks/linear.py --out benchmarks/results/$(hostname).md
    python3 benchmarks/linear.py --device cuda --gpu-shapes --out benchmarks/results/h100.md
    python3 benchmarks/linear.py --sweep-int8-threshold        # picks CPU_INT8_GEMV_MAX_M

See benchmarks/README.md for how to read the tables.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_HERE = Path(__file__).resolve().parent
# Benchmark the lowbit next to this script (not an installed copy), and find common.py.
sys.path[:0] = [str(_HERE.parent), str(_HERE)]

import common as C  # noqa: E402

import lowbit  # noqa: E402
from lowbit.primitives import sqnr  # noqa: E402

log = logging.getLogger("benchmarks.linear")
aten = torch.ops.aten

# ----------------------------------------------------------------------------- what is measured

# lowbit formats: name -> config. Add a row by adding an entry (e.g. int4 / DA8W4 configs).
FORMATS: dict[str, lowbit.BaseConfig] = {
    "int8-weight-only": lowbit.Int8WeightOnlyConfig(),
    "int8-dynamic": lowbit.Int8DynamicActivationInt8WeightConfig(),
    "int4-weight-only-g128": lowbit.Int4WeightOnlyConfig(group_size=128),
    "int8-dyn-int4-g128 (DA8W4)": lowbit.Int8DynamicActivationInt4WeightConfig(group_size=128),
}

CPU_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (N, K): Llama-2-7B attn, MLP up, MLP down
GPU_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]  # Llama-3-8B / 70B MLP
CPU_MS = [1, 4, 16, 64, 256]
GPU_MS = [1, 4, 16, 64, 256, 1024, 4096]
QUICK_SHAPES = [(512, 256)]


@dataclass
class Impl:
    """One row of the tables.

    ``build(w)`` turns the bf16 master weight [N, K] into ``(fn, weight_bytes)``: ``fn(x)``
    computes the layer for a bf16 input ``x`` [M, K] (casting it as the kernel needs, with
    that cast inside the timed call) and ``weight_bytes`` is what one call reads of the
    weight in its stored format. ``why_not(device, m)`` returns a reason the row cannot run.
    """

    name: str
    build: Callable[[torch.Tensor], tuple[Callable[[torch.Tensor], torch.Tensor], int]]
    why_not: Callable[[torch.device, int], str | None] = lambda device, m: None
    note: str = ""
    check_sqnr: bool = True  # False where the output is not the layer's (bare integer GEMMs)


def _dense(dtype: torch.dtype) -> Callable:
    def build(w):
        wc = w.to(dtype, copy=True)
        return (lambda x: F.linear(x.to(dtype), wc)), wc.numel() * wc.element_size()

    return build


def _lowbit(config: lowbit.BaseConfig) -> Callable:
    def build(w):
        layer = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        layer.weight = nn.Parameter(w.clone(), requires_grad=False)
        report = lowbit.quantize_(layer, config)
        if "" in report.skipped:
            raise lowbit.UnsupportedError(report.skipped[""])
        return layer, layer.weight.nbytes_packed()

    return build


def _int8_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes [N, K] and float32 scales [N] (the baselines' weights)."""
    wf = w.float()
    scale = (wf.abs().amax(dim=1) / 127).clamp(min=1e-12)
    return torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def _weight_int8pack_mm(w):
    q, s = _int8_codes(w)
    s = s.to(torch.bfloat16)
    return (lambda x: aten._weight_int8pack_mm(x, q, s)), q.numel() + s.numel() * 2


def _fbgemm_linear_dynamic(w):
    q, s = _int8_codes(w)
    wq = torch.quantize_per_channel(q.float() * s[:, None], s.double(), torch.zeros(len(s), dtype=torch.long),
                                    0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(wq, None)
    # fbgemm keeps the int8 codes plus per-channel scale, zero point and column offsets.
    return (lambda x: torch.ops.quantized.linear_dynamic(x.float(), packed, False)), q.numel() + 12 * len(s)


def _int_mm(w):
    q, _ = _int8_codes(w)
    qt = q.t()  # [K, N] column-major: the layout cuBLAS wants for the second operand
    # The activation codes are made outside the timed call: this row is the bare integer
    # GEMM (no activation quantization, no rescale), an upper bound for int8 dynamic.
    cache: dict[tuple, torch.Tensor] = {}

    def fn(x):
        key = tuple(x.shape)
        if key not in cache:
            cache[key] = torch.randint(-127, 128, x.shape, dtype=torch.int8, device=x.device)
        return torch._int_mm(cache[key], qt)

    return fn, q.numel()


def _only(dev_type: str, extra: Callable[[torch.device, int], str | None] | None = None):
    def why_not(device, m):
        if device.type != dev_type:
            return f"{dev_type} only"
        return extra(device, m) if extra else None

    return why_not


def _fbgemm_missing(device, m):
    engines = torch.backends.quantized.supported_engines
    return None if ("fbgemm" in engines or "x86" in engines) else f"no fbgemm/x86 quantized engine ({engines})"


def impls(format_names: list[str], baselines: bool) -> list[Impl]:
    rows = [Impl("bf16 F.linear", _dense(torch.bfloat16)), Impl("fp32 F.linear", _dense(torch.float32))]
    rows += [Impl(f"lowbit {n}", _lowbit(FORMATS[n])) for n in format_names]
    if baselines:
        rows += [
            Impl("aten._weight_int8pack_mm (raw)", _weight_int8pack_mm,
                 note="int8 weight-only GEMV kernel alone: bf16 act, bf16 per-row scale"),
            Impl("fbgemm quantized.linear_dynamic", _fbgemm_linear_dynamic, _only("cpu", _fbgemm_missing),
                 note="deprecated qint8 API: fp32 act quantized per tensor inside, int8 x int8 (fbgemm)"),
            Impl("torch._int_mm (raw)", _int_mm,
                 _only("cuda", lambda d, m: None if m > 16 else "torch._int_mm needs M > 16"),
                 note="bare int8 x int8 -> int32 GEMM, activation codes prepared outside the timing",
                 check_sqnr=False),
        ]
    return rows


# ----------------------------------------------------------------------------- running


@dataclass
class Cell:
    seconds: float | None = None
    reason: str = ""


@dataclass
class Row:
    impl: Impl
    weight_bytes: int = 0
    n_copies: int = 0
    sqnr_db: float | None = None
    cells: dict[int, Cell] | None = None


def run_shape(n: int, k: int, ms: list[int], rows: list[Impl], device: torch.device, cold_bytes: int,
              budget_s: float, min_calls: int) -> list[Row]:
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16).to(device)
    xs = {m: torch.randn(m, k, generator=g).to(torch.bfloat16).to(device) for m in ms}
    ref = F.linear(xs[ms[0]].float(), w.float())
    out = []
    for impl in rows:
        row = Row(impl, cells={})
        out.append(row)
        runnable = [m for m in ms if impl.why_not(device, m) is None]
        if not runnable:
            row.cells = {m: Cell(reason=impl.why_not(device, m)) for m in ms}
            continue
        try:
            first, row.weight_bytes = impl.build(w)
            first(xs[runnable[0]])  # a kernel missing on this device/build fails here, not mid-table
        except lowbit.UnsupportedError as e:
            row.cells = {m: Cell(reason=str(e)) for m in ms}
            continue
        except (RuntimeError, NotImplementedError) as e:
            # Recorded in the "Not run" list with its type and message; the table goes on.
            log.warning("%s failed on %dx%d: %s: %s", impl.name, n, k, type(e).__name__, e)
            row.cells = {m: Cell(reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") for m in ms}
            continue
        row.n_copies = C.copies_for(row.weight_bytes, cold_bytes)
        fns = [first] + [impl.build(w)[0] for _ in range(row.n_copies - 1)]
        for m in ms:
            reason = impl.why_not(device, m)
            if reason:
                row.cells[m] = Cell(reason=reason)
                continue
            x = xs[m]
            if row.sqnr_db is None and impl.check_sqnr:
                row.sqnr_db = sqnr(ref, fns[0](x).float())
            t = C.time_rotating(lambda i: fns[i](x), row.n_copies, device,
                                min_calls=min_calls, budget_s=budget_s)
            row.cells[m] = Cell(seconds=t.median_s)
            log.info("%dx%d M=%d %s: %.1f us (%d calls)", n, k, m, impl.name, t.median_s * 1e6, t.n_calls)
        del fns, first
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def render_shape(n: int, k: int, ms: list[int], rows: list[Row]) -> str:
    base = next((r for r in rows if r.impl.name == "bf16 F.linear"), None)
    header = ["impl", "weight MiB", "copies"] + [f"M={m}: us (x bf16)" for m in ms]
    body = []
    for r in rows:
        cells = []
        for m in ms:
            c = r.cells[m]
            if c.seconds is None:
                cells.append("n/a")
                continue
            ref = base.cells[m].seconds if base else None
            ratio = f" ({ref / c.seconds:.2f}x)" if ref else ""
            cells.append(C.fmt_us(c.seconds) + ratio)
        mib = f"{r.weight_bytes / C.MiB:.1f}" if r.weight_bytes else "-"
        body.append([r.impl.name, mib, str(r.n_copies or "-")] + cells)
    return f"### N={n}, K={k}\n\n" + C.md_table(header, body)


def render_bandwidth(results: dict[tuple[int, int], list[Row]], bw: C.Bandwidth) -> str:
    header = ["shape (N, K)", "impl", "weight MiB", "M=1 us", "GB/s", "% of read BW", "SQNR vs fp32 (dB)"]
    body = []
    for (n, k), rows in results.items():
        for r in rows:
            c = r.cells.get(1)
            if c is None or c.seconds is None:
                continue
            gbs = r.weight_bytes / c.seconds / C.GB
            sq = "-" if r.sqnr_db is None else "inf" if r.sqnr_db == float("inf") else f"{r.sqnr_db:.1f}"
            body.append([f"{n}x{k}", r.impl.name, f"{r.weight_bytes / C.MiB:.1f}", C.fmt_us(c.seconds),
                         f"{gbs:.1f}", f"{100 * gbs / bw.read_gbs:.0f}%", sq])
    return C.md_table(header, body)


def render_reasons(results) -> str:
    seen = {}
    for rows in results.values():
        for r in rows:
            for m, c in r.cells.items():
                if c.seconds is None:
                    seen.setdefault((r.impl.name, c.reason), []).append(m)
    if not seen:
        return ""
    lines = [f"- {name}: n/a at M in {sorted(set(ms))}: {reason}" for (name, reason), ms in seen.items()]
    return "Not run:\n\n" + "\n".join(lines)


def machine_header(info: dict[str, str], bw: C.Bandwidth | None, args) -> str:
    lines = [f"- {k}: {v}" for k, v in info.items()]
    lines.append(f"- quantized engine: {torch.backends.quantized.engine}")
    if bw is not None:
        lines.append(f"- {bw.describe()}")
    if getattr(args, "device", "cpu") == "cpu":
        from lowbit.ops import cpu_paths

        _, where = cpu_paths.active_table()
        lines.append(f"- lowbit CPU class: {cpu_paths.isa_class()}; dispatch: {where}")
        for op in cpu_paths.OPS:
            chosen = ", ".join(f"M={m}: {cpu_paths.choose_path(op, m)}" for m in args.ms)
            lines.append(f"  - {op}: {chosen}")
    lines.append(f"- cold rotation: copies of each layer totalling >= {args.cold_mb} MiB; median per-call time")
    lines.append(f"- command: `python3 {' '.join(sys.argv)}`")
    return "\n".join(lines)


def run_linear(args, device) -> str:
    info = C.machine_description(device)  # before any work of ours raises the load average
    shapes = args.shapes
    ms = args.ms
    rows = impls(args.formats, not args.no_baselines)
    bw = C.measure_bandwidth(device, args.bw_mb * C.MiB, budget_s=args.budget_s)
    results = {}
    for n, k in shapes:
        results[(n, k)] = run_shape(n, k, ms, rows, device, args.cold_mb * C.MiB, args.budget_s, args.min_calls)
    parts = [f"# lowbit linear benchmark: {C.machine_slug(device)}", machine_header(info, bw, args)]
    parts += [render_shape(n, k, ms, r) for (n, k), r in results.items()]
    if 1 in ms:
        parts.append("### M=1: weight bytes streamed per call / time\n\n" + render_bandwidth(results, bw))
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    if notes:
        parts.append("Rows:\n\n" + "\n".join(notes))
    reasons = render_reasons(results)
    if reasons:
        parts.append(reasons)
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- int8 threshold sweep


def run_sweep(args, device) -> str:
    """The two paths of each int8 op in lowbit/ops/cpu.py, per M: ``aten._weight_int8pack_mm``
    (GEMV) vs dequantize + GEMM (weight-only) and vs an fp32 GEMM over the codes (dynamic)."""
    from lowbit.ops import cpu as lowbit_cpu

    ms = args.ms if args.ms_given else ([1, 4, 8] if args.quick else [1, 2, 4, 8, 12, 16, 20, 24, 32, 48, 64])
    parts = [f"# int8 GEMV vs dequantize+GEMM sweep: {C.machine_slug(device)}", machine_header(C.machine_description(device), None, args)]
    for n, k in args.shapes:
        g = torch.Generator().manual_seed(0)
        w = (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16).to(device)
        q, s = _int8_codes(w)
        dt = lowbit_cpu._gemm_dtype(torch.bfloat16) if device.type == "cpu" else torch.bfloat16
        n_copies = C.copies_for(q.numel(), args.cold_mb * C.MiB)
        qs = [q.clone() for _ in range(n_copies)]
        s_bf16, s_dt = s.to(torch.bfloat16), s.to(dt)[None, :]
        body = []
        best_prefix = best_dyn = 0
        for m in ms:
            x = torch.randn(m, k, generator=g).to(torch.bfloat16).to(device)
            gemv = C.time_rotating(lambda i: aten._weight_int8pack_mm(x, qs[i], s_bf16), n_copies, device,
                                   min_calls=args.min_calls, budget_s=args.budget_s).median_s
            deq = C.time_rotating(lambda i: (torch.mm(x.to(dt), qs[i].to(dt).t()) * s_dt).to(x.dtype), n_copies,
                                  device, min_calls=args.min_calls, budget_s=args.budget_s).median_s
            # The int8-dynamic op's two paths, on integer-valued fp32 activations.
            xq = torch.randint(-127, 128, (m, k), generator=g).to(torch.float32).to(device)
            ones = torch.ones(n, device=device)
            dyn_gemv = C.time_rotating(lambda i: aten._weight_int8pack_mm(xq, qs[i], ones), n_copies, device,
                                       min_calls=args.min_calls, budget_s=args.budget_s).median_s
            dyn_mm = C.time_rotating(lambda i: torch.mm(xq, qs[i].to(torch.float32).t()), n_copies, device,
                                     min_calls=args.min_calls, budget_s=args.budget_s).median_s
            if gemv < deq and best_prefix == m_prev(ms, m):
                best_prefix = m
            if dyn_gemv < dyn_mm and best_dyn == m_prev(ms, m):
                best_dyn = m
            body.append([str(m), C.fmt_us(gemv), C.fmt_us(deq), f"{deq / gemv:.2f}x",
                         C.fmt_us(dyn_gemv), C.fmt_us(dyn_mm), f"{dyn_mm / dyn_gemv:.2f}x"])
        parts.append(f"### N={n}, K={k} ({n_copies} weight copies)\n\n" + C.md_table(
            ["M", "weight-only: GEMV us", f"dequant+GEMM ({dt}) us".replace("torch.", ""), "GEMV speedup",
             "dynamic: GEMV us", "fp32 GEMM us", "GEMV speedup"], body))
        parts.append(f"GEMV wins for every M up to {best_prefix} (weight-only) and {best_dyn} (dynamic); "
                     f"current CPU_INT8_GEMV_MAX_M = {lowbit_cpu.CPU_INT8_GEMV_MAX_M}.")
        del qs
        gc.collect()
    return "\n\n".join(parts) + "\n"


def m_prev(ms: list[int], m: int) -> int:
    """The M before ``m`` in ``ms`` (0 for the first): tracks the winning prefix."""
    i = ms.index(m)
    return ms[i - 1] if i else 0


# ----------------------------------------------------------------------------- CLI


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        n, _, k = part.lower().partition("x")
        if not (n.strip().isdigit() and k.strip().isdigit()):
            raise argparse.ArgumentTypeError(f"shapes are NxK separated by commas, e.g. 4096x4096,11008x4096; got {part!r}")
        out.append((int(n), int(k)))
    return out


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,4,16; got {text!r}") from None
    if any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"values must be positive, got {text!r}")
    return vals


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--shapes", type=_shapes, help="NxK list, default the CPU shapes (or --gpu-shapes)")
    p.add_argument("--gpu-shapes", action="store_true", help=f"use {GPU_SHAPES}")
    p.add_argument("--ms", type=_ints, help=f"batch rows; default {CPU_MS} on CPU, {GPU_MS} on CUDA")
    p.add_argument("--formats", help=f"comma-separated lowbit formats from {list(FORMATS)} (default all)")
    p.add_argument("--no-baselines", action="store_true", help="skip the existing-kernel baseline rows")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--cold-mb", type=int, default=512, help="MiB of weight copies to rotate over (default 512)")
    p.add_argument("--bw-mb", type=int, default=1024, help="MiB of the bandwidth-test tensor (default 1024)")
    p.add_argument("--budget-s", type=float, default=1.0, help="measured seconds per cell (default 1)")
    p.add_argument("--min-calls", type=int, default=10, help="fewest timed calls per cell (default 10)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and budgets: a smoke test, not a measurement")
    p.add_argument("--sweep-int8-threshold", action="store_true",
                   help="time aten._weight_int8pack_mm vs dequantize+GEMM for M in 1..64 (CPU_INT8_GEMV_MAX_M)")
    p.add_argument("--out", help="also write the markdown to this file; 'auto': benchmarks/results/<machine>.md")
    p.add_argument("-v", "--verbose", action="store_true", help="log every cell as it is measured")
    args = p.parse_args(argv)

    args.ms_given = args.ms is not None
    cuda = args.device.startswith("cuda")
    if args.formats:
        names = [f.strip() for f in args.formats.split(",") if f.strip()]
        unknown = [f for f in names if f not in FORMATS]
        if unknown:
            p.error(f"unknown --formats {unknown}; known: {list(FORMATS)}")
        args.formats = names
    else:
        args.formats = list(FORMATS)
    if args.quick:
        args.shapes = args.shapes or QUICK_SHAPES
        args.ms = args.ms or ([1, 32] if cuda else [1, 4])
        args.cold_mb, args.bw_mb, args.budget_s, args.min_calls = 4, 32, 0.02, 3
        # One thread: a smoke test on a busy machine must not wait on a spinning thread pool.
        args.threads = args.threads or 1
    args.shapes = args.shapes or (GPU_SHAPES if args.gpu_shapes else CPU_SHAPES)
    args.ms = args.ms or (GPU_MS if cuda else CPU_MS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch has no CUDA device (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        # torch.ops.quantized.* (the fbgemm baseline) is deprecated; the row says so.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        text = run_sweep(args, device) if args.sweep_int8_threshold else run_linear(args, device)
    sys.stdout.write(text)
    if args.out:
        out = Path(args.out)
        if args.out == "auto":
            suffix = "-int8-sweep" if args.sweep_int8_threshold else ""
            out = _HERE / "results" / f"{C.machine_slug(device)}{suffix}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        sys.stderr.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
