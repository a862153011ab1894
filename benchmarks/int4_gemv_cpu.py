"""The int4 weight-only CPU kernels alone, at small M: each inner loop of lowbit's GEMV vs
ATen's tinygemm, lowbit's brgemm (AMX) and bf16 ``F.linear``.

    python3 benchmarks/int4_gemv_cpu.py --threads 2                       # 3 LLM shapes, M 1..16
    python3 benchmarks/int4_gemv_cpu.py --shapes 576x576,1536x576,576x1536 --threads 2
    python3 benchmarks/int4_gemv_cpu.py --quick                            # smoke test

Weights are cold (each call uses the next of several copies, together over the cache size).
Rows are timed *interleaved*: every round times each row once over all its copies, so load
from other processes hits every row alike; a cell is the median per-call time over rounds
(and the fastest round in brackets). Ratios: bf16 F.linear time / row time (> 1 is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common as C  # noqa: E402

from lowbit.ops import cpu as cpu_ops  # noqa: E402
from lowbit.ops import cpu_paths  # noqa: E402
from lowbit.packing.int4 import tinygemm_cpu_layout  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]


def _group(k: int) -> int:
    """g128 where K allows it (the issue's targets), else the largest of 64 / 32 dividing K."""
    return next(g for g in (128, 64, 32) if k % g == 0)


def _rows(layout: str, group: int) -> dict[str, object]:
    """name -> fn(x, qdata, scale_and_zero) for every kernel this machine runs."""
    rows = {"tinygemm (ATen)": lambda x, q, sz: torch.ops.aten._weight_int4pack_mm_for_cpu(x, q, group, sz)}
    if cpu_paths.path_available("int4_tinygemm_cpu_linear", "brgemm"):
        rows["lowbit brgemm (AMX)"] = lambda x, q, sz: cpu_ops.int4_tinygemm_brgemm(x, q, sz, group, layout)
    best = cpu_ops.int4_gemv_best_isa()
    for name, isa in cpu_ops.INT4_GEMV_ISAS.items():
        if name != "scalar" and 0 <= isa <= best:
            rows[f"lowbit GEMV {name}"] = (
                lambda i: (lambda x, q, sz: cpu_ops.int4_tinygemm_gemv(x, q, sz, group, layout, i))
            )(isa)
    return rows


def run_shape(n: int, k: int, ms: list[int], rounds: int, cold_bytes: int, layout: str) -> tuple[str, dict]:
    gen = torch.Generator().manual_seed(0)
    group = _group(k)
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    qdata = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    sz = (torch.rand(k // group, qdata.shape[0], 2, generator=gen) * 0.01).to(torch.bfloat16)
    q_bytes = qdata.numel() + sz.numel() * sz.element_size()
    q_copies = [(qdata.clone(), sz.clone()) for _ in range(C.copies_for(q_bytes, cold_bytes, 256))]
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    w_copies = [w.clone() for _ in range(C.copies_for(w.numel() * 2, cold_bytes))]
    rows = {"bf16 F.linear": None, **_rows(layout, group)}
    times: dict[str, dict[int, list[float]]] = {r: {m: [] for m in ms} for r in rows}
    for m in ms:
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        for fn in rows.values():  # warm-up: first-call work, page faults
            for c in (w_copies if fn is None else q_copies):
                F.linear(x, c) if fn is None else fn(x, *c)
        for _ in range(rounds):
            for name, fn in rows.items():
                copies = w_copies if fn is None else q_copies
                t0 = time.perf_counter()
                for c in copies:
                    F.linear(x, c) if fn is None else fn(x, *c)
                times[name][m].append((time.perf_counter() - t0) / len(copies))
    med = {r: {m: statistics.median(v) for m, v in d.items()} for r, d in times.items()}
    header = ["kernel"] + [f"M={m}: us (x bf16)" for m in ms]
    body = []
    for name in rows:
        cells = []
        for m in ms:
            t, fastest = med[name][m], min(times[name][m])
            cells.append(f"{C.fmt_us(t)} [{C.fmt_us(fastest)}] ({med['bf16 F.linear'][m] / t:.2f}x)")
        body.append([name] + cells)
    table = f"### N={n}, K={k} (int4 g{group}: {q_bytes / C.MiB:.1f} MiB, {len(q_copies)} copies)\n\n"
    return table + C.md_table(header, body), {"q_bytes": q_bytes, "m1": {r: med[r][ms[0]] for r in rows}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="NxK list")
    p.add_argument("--ms", default="1,2,4,8,16", help="batch rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per cell (default 7)")
    p.add_argument("--cold-mb", type=int, default=384, help="MiB of weight copies to rotate over")
    p.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test, not a measurement")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [(512, 256)] if args.quick else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [1, 4] if args.quick else [int(v) for v in args.ms.split(",")]
    rounds, cold = (2, 4 * C.MiB) if args.quick else (args.rounds, args.cold_mb * C.MiB)
    device = torch.device("cpu")
    if not cpu_paths.int4_gemv_available():
        print("lowbit's C++ extension is not available here: nothing to time", file=sys.stderr)
        return 1
    layout = tinygemm_cpu_layout()
    bw = C.measure_bandwidth(device, (32 if args.quick else 1024) * C.MiB, budget_s=0.2 if args.quick else 1.0)
    info = C.machine_description(device)
    parts = ["## int4 weight-only CPU kernels at small M\n"]
    parts += [f"- {key}: {val}" for key, val in info.items()]
    parts += [
        f"- {bw.describe()}",
        f"- packed layout: {layout}; ISA class: {cpu_paths.isa_class()}; the GEMV loop dispatch uses here: "
        f"{[n for n, i in cpu_ops.INT4_GEMV_ISAS.items() if i == cpu_paths.int4_gemv_isa()]}",
        f"- command: `python3 benchmarks/int4_gemv_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "- cell: median per-call us over interleaved rounds [fastest round] (bf16 F.linear time / this)",
        "",
    ]
    bw_rows = []
    for n, k in shapes:
        table, s = run_shape(n, k, ms, rounds, cold, layout)
        parts += [table, ""]
        if ms[0] == 1:
            for name, t in s["m1"].items():
                if name != "bf16 F.linear":
                    gbs = s["q_bytes"] / t / C.GB
                    bw_rows.append([f"{n}x{k}", name, f"{gbs:.1f}", f"{100 * gbs / bw.read_gbs:.0f}%"])
    if bw_rows:
        parts += ["### M=1: packed bytes (codes + scales) per call / median time\n",
                  C.md_table(["shape", "kernel", "GB/s", "% of read BW"], bw_rows), ""]
    return C.emit_report("\n".join(parts), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
