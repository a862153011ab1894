"""lowbit's exact int8 x int8 -> int32 GEMM (lowbit/csrc/int8_vnni_cpu.cpp) at small / mid M,
against the other int8 kernels a CPU int8-dynamic linear could use, and bf16 ``F.linear``;
with ``--weight-only``, lowbit's int8 weight-only GEMV (lowbit/csrc/int8_wo_gemv.cpp, float
activations) against ATen's and lowbit's bf16 brgemm instead.

    python3 benchmarks/int8_vnni_cpu.py --threads 2                   # 4096x4096, M 1..64
    python3 benchmarks/int8_vnni_cpu.py --shape 11008x4096 --threads 2
    python3 benchmarks/int8_vnni_cpu.py --weight-only --shape 4096x4096,576x576 --ms 1,2,4,8
    python3 benchmarks/int8_vnni_cpu.py --quick                       # smoke test (numbers meaningless)

Weight-only rows (bf16 activations, one fp32 scale per channel; checked against float64):
  lowbit int8_wo_gemv <loop>     x [M, K] x q int8 [N, K], fp32 sums, weight read in place
  aten._weight_int8pack_mm       ATen's int8 weight-only GEMV (needs K % 16 == 0)
  lowbit int8 bf16 brgemm        lowbit/csrc/wo_gemm_cpu.cpp, where oneDNN's ukernel runs

Rows (same int8 codes everywhere; the integer rows are checked equal to torch._int_mm):
  lowbit int8_vnni_gemm <loop>   xq int8 [M, K] x q int8 [N, K] -> int32, weight read in place
  torch._int_mm                  oneDNN s8s8s32, the same codes (q.t() as the [K, N] operand)
  aten._weight_int8pack_mm       ATen's int8 weight-only GEMV, codes as bf16 activations, unit scales
  fbgemm linear_dynamic          torch.ops.quantized (deprecated), fp32 input quantized per tensor
                                 inside the call, per-channel int8 weight prepacked by fbgemm
  bf16 F.linear                  dense bf16 weight

Weights are cold: each row rotates over copies of its weight totalling more than --cold-mb
(default 320 MiB, over the L3). Rows are timed interleaved: every round times each row once
over all its copies, so load from other processes hits every row alike; a cell is the median
per-call time over rounds, [the fastest round].
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common as C  # noqa: E402

from lowbit.ops import cpu_int8_gemv as G  # noqa: E402
from lowbit.ops import cpu_int8_vnni as V  # noqa: E402

MS = [1, 2, 4, 8, 16, 32, 64]


def _rows(q: torch.Tensor, n_copies_int8: int, cold_bytes: int):
    """name -> (fn(x_codes, copy), copies, integer result?) for everything this machine runs."""
    n, k = q.shape
    qs = [q.clone() for _ in range(n_copies_int8)]
    rows = {}
    best = V.int8_vnni_best_isa()
    for name, isa in sorted(V.INT8_VNNI_ISAS.items(), key=lambda kv: -kv[1]):  # the best loop first
        if name != "scalar" and isa <= best:
            rows[f"lowbit int8_vnni_gemm {name}"] = ((lambda i: lambda x, w: V.int8_vnni_gemm(x, w, i))(isa), qs, True)
    rows["torch._int_mm (oneDNN)"] = (lambda x, w: torch._int_mm(x, w), [w.t() for w in qs], True)
    ones = torch.ones(n, dtype=torch.bfloat16)
    rows["aten._weight_int8pack_mm (bf16 codes)"] = (
        lambda x, w: torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), w, ones), qs, False)
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
        scale = torch.full((n,), 0.01, dtype=torch.double)
        wq = torch.quantize_per_channel(q.float() * 0.01, scale, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
        packed = [torch.ops.quantized.linear_prepack(wq, None) for _ in range(n_copies_int8)]
        rows["fbgemm quantized.linear_dynamic"] = (
            lambda x, w: torch.ops.quantized.linear_dynamic(x.float(), w, False), packed, False)
    wb = q.to(torch.bfloat16)
    bf = [wb.clone() for _ in range(C.copies_for(wb.numel() * 2, cold_bytes))]
    rows["bf16 F.linear"] = (lambda x, w: F.linear(x.to(torch.bfloat16), w), bf, False)
    return rows


def _rows_weight_only(q: torch.Tensor, n_copies_int8: int, cold_bytes: int):
    """The int8 weight-only kernels: name -> (fn(x_bf16, copy), copies, checked?)."""
    from lowbit.ops import cpu as cpu_ops
    from lowbit.ops.cpu_paths import path_available

    n, k = q.shape
    qs = [q.clone() for _ in range(n_copies_int8)]
    scale = torch.full((n,), 0.01)
    rows = {}
    best = G.int8_gemv_best_isa()
    for name, isa in sorted(G.INT8_GEMV_ISAS.items(), key=lambda kv: -kv[1]):
        if name != "scalar" and isa <= best:
            rows[f"lowbit int8_wo_gemv {name}"] = (
                (lambda i: lambda x, w: G.int8_wo_gemv(x, w, scale, i))(isa), qs, True)
    if k % 16 == 0:
        sb = scale.to(torch.bfloat16)
        rows["aten._weight_int8pack_mm"] = (lambda x, w: torch.ops.aten._weight_int8pack_mm(x, w, sb), qs, True)
    if path_available("int8_weight_only_linear", "brgemm"):
        rows["lowbit int8 bf16 brgemm"] = (lambda x, w: cpu_ops.int8_weight_only_brgemm(x, w, scale), qs, True)
    wb = (q.float() * 0.01).to(torch.bfloat16)
    bf = [wb.clone() for _ in range(C.copies_for(wb.numel() * 2, cold_bytes))]
    rows["bf16 F.linear"] = (lambda x, w: F.linear(x, w), bf, False)
    return rows, lambda x: (x.double() @ q.double().t() * 0.01)


def _matches(y: torch.Tensor, ref: torch.Tensor) -> bool:
    if ref.dtype == torch.int32:
        return torch.equal(y, ref)
    return bool(((y.double() - ref).abs() <= ref.abs() * 2.0**-7 + ref.abs().max() * 1e-3).all())


def run(n: int, k: int, ms: list[int], rounds: int, cold_bytes: int, weight_only: bool = False) -> str:
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    n_copies = C.copies_for(q.numel(), cold_bytes, 256)
    if weight_only:
        rows, reference = _rows_weight_only(q, n_copies, cold_bytes)
    else:
        rows, reference = _rows(q, n_copies, cold_bytes), lambda x: torch._int_mm(x, q.t())  # oneDNN
    times: dict[str, dict[int, list[float]]] = {r: {m: [] for m in ms} for r in rows}
    for m in ms:
        if weight_only:
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        else:
            x = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
        ref = reference(x)
        for name, (fn, copies, checked) in rows.items():  # warm-up (first-call work, page faults) + check
            for c in copies:
                y = fn(x, c)
            if checked and not _matches(y, ref):
                raise SystemExit(f"{name} differs from the reference at M={m}: not timing a wrong kernel")
        timed = C.interleaved_times(
            {name: ((lambda fn=fn, copies=copies: [fn(x, c) for c in copies]), len(copies))
             for name, (fn, copies, _) in rows.items()}, rounds)
        for name, t in timed.items():
            times[name][m] = t
    header = ["kernel"] + [f"M={m}" for m in ms]
    body = []
    for name in rows:
        body.append([name] + [f"{C.fmt_us(statistics.median(times[name][m]))} [{C.fmt_us(min(times[name][m]))}]"
                              for m in ms])
    lead = next(iter(rows))
    gbs = [f"{q.numel() / statistics.median(times[lead][m]) / C.GB:.1f}" for m in ms]
    body.append([f"{lead}: weight GB/s"] + gbs)
    return (f"### N={n}, K={k} (int8 weight {q.numel() / C.MiB:.1f} MiB, {n_copies} copies; "
            f"bf16 {len(rows['bf16 F.linear'][1])} copies)\n\n" + C.md_table(header, body))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="4096x4096", help="NxK (weight [N, K]); a comma list for several")
    p.add_argument("--ms", default=",".join(map(str, MS)), help="batch rows")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per cell (default 5)")
    p.add_argument("--cold-mb", type=int, default=320, help="MiB of weight copies to rotate over")
    p.add_argument("--weight-only", action="store_true", help="the int8 weight-only kernels (float activations)")
    p.add_argument("--quick", action="store_true", help="tiny shape: a smoke test, not a measurement")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not V.int8_vnni_available():
        print("lowbit's C++ extension (int8_vnni_gemm) is not available here: nothing to time", file=sys.stderr)
        return 1
    shapes = [(512, 256)] if args.quick else [tuple(int(v) for v in s.split("x")) for s in args.shape.split(",")]
    ms = [1, 4] if args.quick else [int(v) for v in args.ms.split(",")]
    rounds, cold = (2, 4 * C.MiB) if args.quick else (args.rounds, args.cold_mb * C.MiB)
    device = torch.device("cpu")
    bw = C.measure_bandwidth(device, (32 if args.quick else 512) * C.MiB, budget_s=0.2 if args.quick else 0.5)
    best = V.int8_vnni_best_isa()
    title = "int8 weight-only GEMV" if args.weight_only else "Exact int8 x int8 -> int32 GEMM"
    parts = [f"## {title} on CPU at small M\n"]
    parts += [f"- {key}: {val}" for key, val in C.machine_description(device).items()]
    parts += [
        f"- {bw.describe()}",
        f"- lowbit int8_vnni_gemm loop used by isa=-1: {[n for n, i in V.INT8_VNNI_ISAS.items() if i == best]}",
        f"- lowbit int8_wo_gemv loop used by isa=-1: "
        f"{[n for n, i in G.INT8_GEMV_ISAS.items() if i == G.int8_gemv_best_isa()]}",
        f"- command: `python3 benchmarks/int8_vnni_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "- cell: median per-call us over interleaved rounds [fastest round]; cold weights",
        "",
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.ops.quantized is deprecated
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        for n, k in shapes:
            parts += [run(n, k, ms, rounds, cold, args.weight_only), ""]
    return C.emit_report("\n".join(parts), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
