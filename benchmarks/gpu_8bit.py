"""Benchmark lowbit's 8-bit CUDA formats (int8, float8 e4m3) against bf16 F.linear.

    python3 -m benchmarks.gpu_8bit --out benchmarks/results/gpu_8bit_h200.md
    python3 -m benchmarks.gpu_8bit --sweep --out sweep.md   # time every kernel config

Rows are y = F.linear(x, W) with x bf16 [M, K] and W [N, K] quantized by lowbit
(``lowbit.quantize_``'s tensor classes), plus the kernels lowbit dispatches between, so
the M thresholds in lowbit/ops/cuda.py can be read off the same table:

* ``bf16``          F.linear on the bf16 weight (cuBLAS), in the same run
* ``int8-wo``       Int8Tensor (weight-only), lowbit's dispatch
* ``int8-dyn``      Int8DynActTensor (per-token int8 activations), lowbit's dispatch
* ``fp8-wo``        Float8Tensor (weight-only e4m3), lowbit's dispatch
* ``fp8-dyn-row``   Float8DynActTensor (row-wise e4m3 x e4m3), lowbit's dispatch
* ``fp8-dyn-tensor`` Float8DynActPerTensorTensor (tensor-wise), lowbit's dispatch
* components: ``w8a16-triton`` (the Triton weight-only kernels), ``w8a16-deq+mm``
  (dequantize to bf16 + cuBLAS), ``a8w8-triton`` / ``int_mm`` (int8 dynamic, activation
  quantization included), ``fp8-triton`` / ``scaled_mm`` (row-wise float8 dynamic).

Timing: CUDA-event median after warm-up. With CUDA graphs (default) the call is captured
and replayed, which removes Python and launch overhead; ``--eager`` rows time plain
calls back to back and also report the per-call overhead (eager - graph, in us).
Ratios are bf16 time / format time (> 1: faster than bf16).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

log = logging.getLogger("benchmarks.gpu_8bit")

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]
BATCHES = [1, 4, 16, 64, 256, 1024, 4096]
FORMATS = ["int8-wo", "int8-dyn", "fp8-wo", "fp8-dyn-row", "fp8-dyn-tensor"]
COMPONENTS = ["w8a16-triton", "w8a16-deq+mm", "a8w8-triton", "int_mm", "fp8-triton", "scaled_mm"]


def _graphed(fn):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside capture (allocator, cuBLAS/Triton init)
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _sample_ms(fn, inner: int) -> float:
    """Milliseconds of ``inner`` back-to-back calls of ``fn``, timed by CUDA events."""
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(inner):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e)


def time_us(fn, budget_ms: float, graph: bool, inner: int = 1) -> float:
    """Median microseconds per call of ``fn``; ``inner`` calls per timed sample (eager)."""
    if graph:
        fn = _graphed(fn)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    one = max(_sample_ms(fn, inner), 1e-3)
    reps = int(max(5, min(200, budget_ms / one)))
    return statistics.median(_sample_ms(fn, inner) * 1000.0 / inner for _ in range(reps))


def _weights(n, k):
    from lowbit.tensors import (
        Float8DynActPerTensorTensor,
        Float8DynActTensor,
        Float8Tensor,
        Int8DynActTensor,
        Int8Tensor,
    )

    g = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    return w, {
        "int8-wo": Int8Tensor.from_float(w),
        "int8-dyn": Int8DynActTensor.from_float(w),
        "fp8-wo": Float8Tensor.from_float(w),
        "fp8-dyn-row": Float8DynActTensor.from_float(w),
        "fp8-dyn-tensor": Float8DynActPerTensorTensor.from_float(w),
    }


def _components(x, q):
    """name -> zero-argument function for the kernels lowbit dispatches between."""
    from lowbit.ops import triton_int8 as T

    i8, f8 = q["int8-wo"], q["fp8-dyn-row"]
    out = {
        "w8a16-triton": lambda: T.w8a16_linear(x, i8.qdata, i8.scale),
        "w8a16-deq+mm": lambda: torch.mm(x, T.dequantize_rows(i8.qdata, i8.scale, x.dtype).t()),
    }

    def a8w8():
        xq, xs = T.quantize_rows(x, fp8=False)
        return T.a8w8_linear(xq, xs, i8.qdata, i8.scale, x.dtype)

    def int_mm():
        xq, xs = T.quantize_rows(x, fp8=False)
        acc = torch._int_mm(xq, i8.qdata.t())
        return (acc.to(torch.float32) * xs * i8.scale.reshape(1, -1)).to(x.dtype)

    def fp8_triton():
        xq, xs = T.quantize_rows(x, fp8=True)
        return T.a8w8_linear(xq, xs, f8.qdata, f8.scale, x.dtype)

    def scaled_mm():
        xq, xs = T.quantize_rows(x, fp8=True)
        return torch._scaled_mm(xq, f8.qdata.t(), scale_a=xs, scale_b=f8.scale.reshape(1, -1),
                                out_dtype=torch.bfloat16, use_fast_accum=True)

    out["a8w8-triton"] = a8w8
    if x.shape[0] > 16:  # torch._int_mm needs M > 16
        out["int_mm"] = int_mm
    out["fp8-triton"] = fp8_triton
    out["scaled_mm"] = scaled_mm
    return out


def bench(shapes, batches, budget_ms, eager: bool, deadline: float) -> list[dict]:
    rows = []
    for n, k in shapes:
        w, q = _weights(n, k)
        for m in batches:
            if time.monotonic() > deadline:
                log.warning("deadline reached; stopping before N=%d K=%d M=%d", n, k, m)
                return rows
            g = torch.Generator(device="cuda").manual_seed(m)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
            r = {"N": n, "K": k, "M": m}
            fns = {"bf16": lambda: F.linear(x, w)}
            fns.update({f: (lambda t=q[f]: F.linear(x, t)) for f in FORMATS})
            fns.update(_components(x, q))
            with torch.no_grad():
                for name, fn in fns.items():
                    r[name] = time_us(fn, budget_ms, graph=True)
                    if eager and (name == "bf16" or name in FORMATS):
                        r[name + "@eager"] = time_us(fn, budget_ms, graph=False, inner=10)
            rows.append(r)
            log.info("N=%d K=%d M=%d: bf16 %.1f us, %s", n, k, m, r["bf16"],
                     ", ".join(f"{f} {r['bf16'] / r[f]:.2f}x" for f in FORMATS))
        torch.cuda.empty_cache()
    return rows


def _ratio_table(rows, cols, suffix="") -> str:
    head = "| N x K | M | bf16 (us) | " + " | ".join(f"{c}" for c in cols) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols))]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c + suffix)
            cells.append("-" if v is None else f"{v:.1f} ({r['bf16' + suffix] / v:.2f}x)")
        lines.append(f"| {r['N']}x{r['K']} | {r['M']} | {r['bf16' + suffix]:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _overhead_table(rows) -> str:
    cols = ["bf16"] + FORMATS
    lines = ["| N x K | M | " + " | ".join(f"{c} eager us (+overhead)" for c in cols) + " |",
             "|" + "---|" * (2 + len(cols))]
    for r in rows:
        if "bf16@eager" not in r:
            continue
        cells = [f"{r[c + '@eager']:.1f} (+{r[c + '@eager'] - r[c]:.1f})" for c in cols]
        lines.append(f"| {r['N']}x{r['K']} | {r['M']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- config sweep


def _sweep_configs():
    from lowbit.ops.triton_int8 import BlockConfig as A
    from lowbit.ops.triton_int8 import BlockConfig as W  # same class; W for weight-only rows

    gemv = [W(0, 4, 512), W(0, 8, 512), W(0, 16, 256), W(0, 4, 1024), W(0, 8, 1024, num_warps=8),
            W(0, 2, 2048), W(0, 2, 4096, num_warps=8), W(0, 1, 4096)]
    w_small = [W(16, 16, 256, 4, 4), W(16, 32, 256, 4, 4), W(16, 64, 128, 4, 5), W(16, 32, 128, 4, 5),
               W(16, 64, 256, 4, 4), W(16, 128, 128, 4, 4), W(16, 64, 128, 4, 4, False), W(16, 32, 256, 4, 4, False)]
    w_mid = [W(64, 64, 128, 4, 4), W(32, 64, 128, 4, 4), W(32, 128, 128, 4, 4), W(64, 32, 128, 4, 4),
             W(64, 64, 128, 4, 4, False), W(64, 128, 64, 4, 4, False)]
    w_large = [W(256, 128, 64, 8, 3), W(128, 128, 64, 8, 4), W(128, 64, 64, 4, 4), W(128, 128, 64, 8, 3, False),
               W(128, 256, 64, 8, 3, False), W(64, 128, 64, 4, 4, False), W(128, 128, 64, 4, 4, False)]
    a_small = [A(16, 32, 256, 4, 4), A(16, 64, 256, 4, 4), A(16, 64, 128, 4, 5), A(16, 32, 128, 4, 5),
               A(16, 16, 256, 4, 4), A(16, 128, 128, 4, 4)]
    a_mid = [A(64, 64, 128, 4, 4), A(64, 128, 128, 4, 4), A(32, 64, 128, 4, 4), A(32, 128, 128, 4, 4),
             A(64, 32, 128, 4, 4)]
    a_large = [A(128, 128, 128, 8, 3), A(64, 128, 128, 4, 4), A(128, 256, 128, 8, 3), A(256, 128, 128, 8, 3),
               A(128, 64, 128, 4, 4)]

    def w_for(m):
        return (gemv if m <= 4 else []) + (w_small if m <= 32 else w_mid if m <= 128 else w_large)

    def a_for(m):
        return a_small if m <= 32 else a_mid if m <= 128 else a_large

    return w_for, a_for


def sweep(shapes, batches, budget_ms, deadline: float) -> list[dict]:
    from lowbit.ops import triton_int8 as T
    from lowbit.ops.reference import quantize_per_token_float8, quantize_per_token_int8

    w_for, a_for = _sweep_configs()
    weights = {(n, k): _weights(n, k) for n, k in shapes}
    out = []
    for m in batches:  # M outer: a deadline leaves every shape measured for the Ms done
        for n, k in shapes:
            w, q = weights[(n, k)]
            i8, f8 = q["int8-wo"], q["fp8-dyn-row"]
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            xq, xs = quantize_per_token_int8(x)
            fq, fs = quantize_per_token_float8(x)
            bf16 = time_us(lambda: F.linear(x, w), budget_ms, graph=True)
            cases = [("w8a16", c, lambda c=c: T.w8a16_linear(x, i8.qdata, i8.scale, c)) for c in w_for(m)]
            cases += [("a8w8_int8", c, lambda c=c: T.a8w8_linear(xq, xs, i8.qdata, i8.scale, x.dtype, c)) for c in a_for(m)]
            cases += [("a8w8_fp8", c, lambda c=c: T.a8w8_linear(fq, fs, f8.qdata, f8.scale, x.dtype, c)) for c in a_for(m)]
            # The non-Triton paths lowbit switches to (their M thresholds come from these).
            cases += [("w8a16", _DEQ_MM, lambda: torch.mm(x, T.dequantize_rows(i8.qdata, i8.scale, x.dtype).t()))]
            cases += [("a8w8_fp8", _SCALED_MM, lambda: torch._scaled_mm(
                fq, f8.qdata.t(), scale_a=fs, scale_b=f8.scale.reshape(1, -1), out_dtype=torch.bfloat16,
                use_fast_accum=True))]
            for kind, cfg, fn in cases:
                if time.monotonic() > deadline:
                    log.warning("sweep deadline reached at N=%d K=%d M=%d", n, k, m)
                    return out
                try:
                    t = time_us(fn, budget_ms, graph=True)
                except Exception as e:  # noqa: BLE001 - a config that does not compile is recorded, not fatal
                    log.warning("%s %s failed: %s", kind, cfg, str(e).splitlines()[0][:200])
                    t = float("inf")
                out.append({"N": n, "K": k, "M": m, "kind": kind, "cfg": cfg, "us": t, "bf16": bf16})
            log.info("sweep N=%d K=%d M=%d done", n, k, m)
    return out


_DEQ_MM = "deq+mm"  # sweep entries that are not Triton configs
_SCALED_MM = "scaled_mm"
_THRESHOLDS = {"w8a16": (_DEQ_MM, "CUDA_W8A16_TRITON_MAX_M"), "a8w8_fp8": (_SCALED_MM, "CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M")}


def _geomean(ts):
    return math.exp(sum(math.log(t) for t in ts) / len(ts))


def thresholds_from_sweep(res) -> dict:
    """Largest swept M up to which lowbit's best Triton config beats the other path
    (geometric mean over all swept shapes), for each M threshold in lowbit/ops/cuda.py."""
    out = {}
    for kind, (other, name) in _THRESHOLDS.items():
        rows = [r for r in res if r["kind"] == kind]
        if not rows:
            continue
        top = 0
        for m in sorted({r["M"] for r in rows}):
            at_m = [r for r in rows if r["M"] == m]
            shapes = {(r["N"], r["K"]) for r in at_m}
            alt = [r["us"] for r in at_m if r["cfg"] == other]
            if len(alt) != len(shapes):
                if not alt:
                    top = m  # nothing else measured here (e.g. small M): Triton
                    continue
                break
            best = min((_geomean([r["us"] for r in at_m if r["cfg"] == c]) for c in {r["cfg"] for r in at_m}
                        if c != other and len([r for r in at_m if r["cfg"] == c]) == len(shapes)), default=math.inf)
            if best <= _geomean(alt):
                top = m
            else:
                break
        out[name] = top
    return out


def tables_from_sweep(res) -> dict:
    """Block tables in lowbit.ops.triton_int8._TABLES's layout: per kind and weight class,
    for each swept M the config with the best geometric-mean time over that class's shapes."""
    from lowbit.ops.triton_int8 import _WIDE_N

    tables: dict = {}
    res = [r for r in res if not isinstance(r["cfg"], str)]
    for kind in sorted({r["kind"] for r in res}):
        for cls_name in ("narrow", "wide"):
            rows = [r for r in res if r["kind"] == kind and (r["N"] >= _WIDE_N) == (cls_name == "wide")]
            ms = sorted({r["M"] for r in rows})
            entries = []
            for m in ms:
                shapes = {(r["N"], r["K"]) for r in rows if r["M"] == m}
                best = None
                for cfg in {r["cfg"] for r in rows if r["M"] == m}:
                    ts = [r["us"] for r in rows if r["M"] == m and r["cfg"] == cfg]
                    if len(ts) != len(shapes) or not all(math.isfinite(t) for t in ts):
                        continue
                    score = math.exp(sum(math.log(t) for t in ts) / len(ts))
                    if best is None or score < best[0]:
                        best = (score, cfg)
                if best is not None:
                    c = best[1]
                    entries.append([m, [c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages, int(c.w_is_a)]])
            if entries:
                entries[-1][0] = 1 << 62  # the largest M measured serves every larger M
                tables.setdefault(kind, {})[cls_name] = entries
    return tables


def _sweep_table(res) -> str:
    lines = ["| N x K | M | kernel | best config | us | bf16 us | x bf16 | runner-up |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["N"], r["K"], r["M"], r["kind"]) for r in res})
    for n, k, m, kind in keys:
        rs = sorted((r for r in res if (r["N"], r["K"], r["M"], r["kind"]) == (n, k, m, kind)), key=lambda r: r["us"])
        b = rs[0]
        desc = _cfg_desc(b["cfg"])
        ru = rs[1] if len(rs) > 1 else None
        rdesc = "-" if ru is None else f"{_cfg_desc(ru['cfg'])}: {ru['us']:.1f}"
        lines.append(f"| {n}x{k} | {m} | {kind} | {desc} | {b['us']:.1f} | {b['bf16']:.1f} | {b['bf16'] / b['us']:.2f} | {rdesc} |")
    return "\n".join(lines)


def _cfg_desc(c) -> str:
    if isinstance(c, str):
        return c
    return (f"m{c.block_m} n{c.block_n} k{c.block_k} w{c.num_warps} s{c.num_stages}"
            + ("" if c.w_is_a else " x-first"))


def _profile_eager() -> int:
    """Where the eager per-call time goes (Python side), for one small layer at M=1."""
    import cProfile
    import pstats

    _, q = _weights(4096, 4096)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    for name in ("int8-wo", "fp8-dyn-row"):
        t = q[name]
        with torch.no_grad():
            for _ in range(20):
                F.linear(x, t)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                F.linear(x, t)
            torch.cuda.synchronize()
            per_call = (time.perf_counter() - t0) / 200 * 1e6
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(200):
                F.linear(x, t)
            prof.disable()
        print(f"\n### {name}: {per_call:.1f} us per eager call (M=1, 4096x4096), cProfile top 14 by tottime")
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the markdown report (with the GPU name) to this file")
    p.add_argument("--shapes", default=None, help="NxK,NxK,... (default: the four LLM shapes)")
    p.add_argument("--batches", default=None, help="comma-separated M values")
    p.add_argument("--budget-ms", type=float, default=20.0, help="GPU time per timed cell")
    p.add_argument("--eager", action="store_true", help="also time eager calls (per-call overhead)")
    p.add_argument("--sweep", action="store_true", help="time every Triton config instead of the formats")
    p.add_argument("--deadline-s", type=float, default=1e9, help="stop (and report what ran) after this long")
    p.add_argument("--tables-out", help="with --sweep: write the measured block tables (JSON) here")
    p.add_argument("--tables", help="install block tables (JSON from --tables-out) before timing")
    p.add_argument("--profile-eager", action="store_true", help="cProfile 200 eager int8/float8 calls (M=1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not torch.cuda.is_available():
        print("gpu_8bit: CUDA is not available; this benchmark needs an NVIDIA GPU", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.deadline_s
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    batches = BATCHES if not args.batches else [int(v) for v in args.batches.split(",")]

    import lowbit
    from lowbit.ops import cuda as lowbit_cuda

    if args.tables:
        from lowbit.ops import triton_int8 as T

        with open(args.tables) as f:
            tuned = json.load(f)
        T._set_tables(tuned["tables"])
        for name, top in tuned["thresholds"].items():
            getattr(lowbit_cuda, name)["sm90"] = top
    if args.profile_eager:
        return _profile_eager()
    gpu = torch.cuda.get_device_name()
    head = (f"# lowbit 8-bit GPU linear, {gpu}\n\ntorch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"triton {__import__('triton').__version__}, lowbit {lowbit.__version__}; bf16 activations; "
            f"CUDA-event medians, {args.budget_ms:.0f} ms per cell.\n")
    if args.sweep:
        res = sweep(shapes, batches, args.budget_ms, deadline)
        tables = tables_from_sweep(res)
        thresholds = thresholds_from_sweep(res)
        if args.tables_out:
            with open(args.tables_out, "w") as f:
                json.dump({"tables": tables, "thresholds": thresholds}, f)
        report = (head + f"\nBlock tables chosen (geometric mean per weight class): `{json.dumps(tables)}`\n"
                  + f"\nM thresholds (Triton vs the other path, geometric mean over shapes): `{json.dumps(thresholds)}`\n"
                  + "\nTriton config sweep (CUDA-graph replays; activation quantization not included):\n\n" + _sweep_table(res) + "\n")
    else:
        rows = bench(shapes, batches, args.budget_ms, args.eager, deadline)
        from lowbit.ops import triton_int8 as T

        thresholds = (f"lowbit thresholds: CUDA_W8A16_TRITON_MAX_M={lowbit_cuda.CUDA_W8A16_TRITON_MAX_M}, "
                      f"CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M={lowbit_cuda.CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M}; "
                      f"int8 dynamic: Triton at every M. Triton block tables: `{json.dumps(T._TABLES)}`")
        report = (head + "\n" + thresholds + "\n\n## lowbit formats, CUDA graphs (us, x bf16)\n\n" + _ratio_table(rows, FORMATS)
                  + "\n\n## kernels lowbit dispatches between, CUDA graphs (us, x bf16)\n\n" + _ratio_table(rows, COMPONENTS))
        if args.eager:
            report += ("\n\n## eager calls (us, x bf16 eager)\n\n" + _ratio_table(rows, FORMATS, "@eager")
                       + "\n\n## eager per-call time and Python/launch overhead (eager - graph, us)\n\n" + _overhead_table(rows))
        report += "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
