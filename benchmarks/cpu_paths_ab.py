"""Every CPU path of every lowbit CPU op, forced one by one, against bf16 ``F.linear`` in
the same interleaved rounds: which kernel the dispatch table should name at a shape and M.

    python3 benchmarks/cpu_paths_ab.py --threads 2                              # 4096x4096, M 16,64,256
    python3 benchmarks/cpu_paths_ab.py --shapes 960x576,576x576,3072x576,576x1536 --ms 256,512
    python3 benchmarks/cpu_paths_ab.py --ops int8_dynamic_linear --paths brgemm,bf16_brgemm
    python3 benchmarks/cpu_paths_ab.py --quick                                  # smoke test

`lowbit tune` times the same paths at one shape to build the dispatch table; this script is
the paired check behind a table change: weights cold (each row rotates over copies totalling
more than --cold-mb), rows interleaved (every round times each row once over all its copies,
so load from other processes hits every row alike), cell = median per-call us over rounds
and the ratio to bf16 F.linear from the same rounds. Paths this machine cannot run are left
out; the GEMV paths only up to M=16 (they are compute-bound beyond). bf16 activations,
group size --group-size for the int4 formats.
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
from lowbit.tensors import Int4TinygemmCpuTensor, Int4VnniCpuTensor, Int8Tensor  # noqa: E402

SKIP = {"dequant_gemm", "fp32_gemm", "tinygemm"}  # the slow fallbacks: 10-20x bf16 on AVX512/AMX


def _formats(ws: list[torch.Tensor], ops: list[str], gs: int) -> dict[str, tuple[list, object]]:
    """op -> (packed copies, fields(t) -> the op's arguments after x)."""
    n = ws[0].shape[0]
    out = {}
    if "int4_tinygemm_cpu_linear" in ops:
        ts = [Int4TinygemmCpuTensor.from_float(w.float(), group_size=gs) for w in ws]
        out["int4_tinygemm_cpu_linear"] = (ts, lambda t: (t.qdata, t.scale_and_zero, gs, n, t.cpu_layout))
    if {"int8_weight_only_linear", "int8_dynamic_linear"} & set(ops):
        ts = [Int8Tensor.from_float(w.float()) for w in ws]
        for op in ("int8_weight_only_linear", "int8_dynamic_linear"):
            if op in ops:
                out[op] = (ts, lambda t: (t.qdata, t.scale))
    if "da8w4_linear" in ops:
        ts = [Int4VnniCpuTensor.from_float(w.float(), group_size=gs) for w in ws]
        out["da8w4_linear"] = (ts, lambda t: (t.qdata, t.scale, t.zero_point, t.qsum, gs, "asymmetric"))
    return out


def run(n: int, k: int, ms: list[int], ops: list[str], paths: set[str] | None, gs: int, rounds: int,
        cold_bytes: int) -> str:
    gen = torch.Generator().manual_seed(0)
    copies = C.copies_for(n * k * 2, cold_bytes, 16)
    ws = [(torch.randn(n, k, generator=gen) * 0.02).to(torch.bfloat16) for _ in range(copies)]
    formats = _formats(ws, ops, gs)
    body = []
    for m in ms:
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        rows = {"bf16 F.linear": lambda i: F.linear(x, ws[i])}
        for op, (ts, fields) in formats.items():
            for path in cpu_paths.PATHS[op]:
                if path in SKIP or not cpu_paths.path_available(op, path) or (path == "gemv" and m > 16):
                    continue
                if paths is not None and path not in paths:
                    continue

                def fn(i, op=op, path=path, ts=ts, fields=fields):
                    with cpu_paths.forced_path(op, path):
                        return getattr(cpu_ops, op)(x, *fields(ts[i]))

                rows[f"{op.removesuffix('_linear')} / {path}"] = fn
        for f in rows.values():  # warm-up: first-call work, page faults
            for i in range(copies):
                f(i)
        times = {name: [] for name in rows}
        for _ in range(rounds):
            for name, f in rows.items():
                t0 = time.perf_counter()
                for i in range(copies):
                    f(i)
                times[name].append((time.perf_counter() - t0) / copies)
        bf16 = statistics.median(times["bf16 F.linear"])
        for name in rows:
            med = statistics.median(times[name])
            body.append([str(m), name, C.fmt_us(med), f"{bf16 / med:.2f}x"])
    return (f"### N={n}, K={k} ({copies} copies of each weight)\n\n"
            + C.md_table(["M", "op / path", "us", "x bf16"], body))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="4096x4096", help="comma list of NxK (weight [N, K])")
    p.add_argument("--ms", default="16,64,256", help="batch rows")
    p.add_argument("--ops", default=",".join(cpu_paths.OPS), help=f"comma list of {cpu_paths.OPS}")
    p.add_argument("--paths", default=None, help="only these paths (comma list), e.g. brgemm,bf16_brgemm")
    p.add_argument("--group-size", type=int, default=64, help="int4 group size (default 64: divides 576)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell (default 5)")
    p.add_argument("--cold-mb", type=int, default=512, help="MiB of bf16 weight copies to rotate over")
    p.add_argument("--quick", action="store_true", help="tiny shape: a smoke test, not a measurement")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ops = [o for o in args.ops.split(",") if o]
    unknown = sorted(set(ops) - set(cpu_paths.OPS))
    if unknown:
        p.error(f"unknown ops {unknown}; choose from {list(cpu_paths.OPS)}")
    paths = None if args.paths is None else set(args.paths.split(","))
    shapes = [(128, 256)] if args.quick else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [1, 33] if args.quick else [int(v) for v in args.ms.split(",")]
    rounds, cold = (2, 1 * C.MiB) if args.quick else (args.rounds, args.cold_mb * C.MiB)
    device = torch.device("cpu")
    parts = ["## lowbit CPU paths, forced one by one, vs bf16 F.linear (paired rounds)\n"]
    parts += [f"- {key}: {val}" for key, val in C.machine_description(device).items()]
    parts += [
        f"- lowbit CPU class: {cpu_paths.isa_class()}, vendor {cpu_paths.cpu_vendor()}",
        f"- command: `python3 benchmarks/cpu_paths_ab.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "- cell: median per-call us over interleaved rounds, cold weights, bf16 activations",
        "",
    ]
    for n, k in shapes:
        parts += [run(n, k, ms, ops, paths, args.group_size, rounds, cold), ""]
    return C.emit_report("\n".join(parts), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
