"""Benchmark and check lowbit's int4 GPU formats on one CUDA GPU.

    python3 -m benchmarks.gpu_int4 --out benchmarks/results/gpu_int4_h100.md
    python3 -m benchmarks.gpu_int4 --check          # pack equality vs the real CUDA ops

Timing: median over repeated runs measured with CUDA events after warm-up (the number
of repeats adapts so that each cell takes about ``--budget-ms``); calls are captured in
CUDA graphs (``--no-cuda-graph`` times eager calls, Python overhead included; the
Marlin reference always runs eager); the weight for each (N, K) is quantized once. Columns, all for y = x @ W^T with x bf16 [M, K], W [N, K]:

* ``bf16``       F.linear on the bf16 weight (cuBLAS)
* ``tinygemm``   aten._weight_int4pack_mm on the tiled layout, at every M
* ``deq+mm``     lowbit's large-M path: unpack + dequantize to bf16, then cuBLAS
* ``lowbit``     lowbit::int4_tiled_cuda_mm (tinygemm up to CUDA_INT4_TILED_MAX_M, else deq+mm)
* ``marlin-ref`` lowbit::int4_marlin_mm, the pure-PyTorch Marlin reference (not a kernel)

Ratios are bf16 time / format time (> 1 means faster than bf16). Nothing here needs
anything beyond torch; triton is not required.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys

import torch
import torch.nn.functional as F

import lowbit
from lowbit.ops import cuda as lowbit_cuda
from lowbit.ops import reference
from lowbit.packing.int4_tiled import codes_to_convert_input, pack_int4_tiled, unpack_int4_tiled
from lowbit.tensors import Int4MarlinTensor, Int4TiledCudaTensor

log = logging.getLogger("benchmarks.gpu_int4")

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def _graphed(fn):
    """``fn`` captured in a CUDA graph (removes Python/dispatch overhead from the timing)."""
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


def _time_ms(fn, budget_ms: float, max_reps: int = 200, cuda_graph: bool = False) -> float:
    """Median milliseconds of ``fn()`` over enough repeats to fill ``budget_ms``."""
    if cuda_graph:
        fn = _graphed(fn)
    for _ in range(3):  # warm-up (allocations, cuBLAS heuristics)
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    reps = int(max(5, min(max_reps, budget_ms / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def _bench_shape(n: int, k: int, batches, budget_ms: float, marlin_max_m: int, graph: bool) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    tiled = Int4TiledCudaTensor.from_float(w, group_size=128, inner_k_tiles=8)
    marlin = Int4MarlinTensor.from_float(w, group_size=128)
    rows = []
    for m in batches:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
        r = {"N": n, "K": k, "M": m}
        with torch.no_grad():
            r["bf16"] = _time_ms(lambda: F.linear(x, w), budget_ms, cuda_graph=graph)
            r["tinygemm"] = _time_ms(
                lambda: torch.ops.aten._weight_int4pack_mm(x, tiled.qdata, 128, tiled.scale_and_zero),
                budget_ms, cuda_graph=graph,
            )
            r["deq+mm"] = _time_ms(
                lambda: torch.mm(x, lowbit_cuda._dequantize_int4_tiled_bf16(tiled.qdata, tiled.scale_and_zero, 128).t()),
                budget_ms, cuda_graph=graph,
            )
            r["lowbit"] = _time_ms(lambda: F.linear(x, tiled), budget_ms, cuda_graph=graph)
            if m <= marlin_max_m:  # eager: the reference builds index tensors (not capturable)
                r["marlin-ref"] = _time_ms(lambda: F.linear(x, marlin), budget_ms, max_reps=20)
        rows.append(r)
        log.info("N=%d K=%d M=%d done", n, k, m)
    return rows  # the weights go out of scope here; the caller empties the CUDA cache


def _table(rows: list[dict]) -> str:
    cols = ["bf16", "tinygemm", "deq+mm", "lowbit", "marlin-ref"]
    head = "| N | K | M | " + " | ".join(f"{c} (us)" for c in cols) + " | bf16/tinygemm | bf16/deq+mm | bf16/lowbit | bf16/marlin-ref |"
    sep = "|" + "---|" * (3 + len(cols) + 4)
    lines = [head, sep]
    for r in rows:
        def us(c):
            return f"{1000 * r[c]:.1f}" if c in r else "-"

        def ratio(c):
            return f"{r['bf16'] / r[c]:.2f}" if c in r else "-"

        lines.append(
            f"| {r['N']} | {r['K']} | {r['M']} | " + " | ".join(us(c) for c in cols)
            + f" | {ratio('tinygemm')} | {ratio('deq+mm')} | {ratio('lowbit')} | {ratio('marlin-ref')} |"
        )
    return "\n".join(lines)


def _crossover(rows: list[dict]) -> str:
    """Per shape, the largest M at which tinygemm still beats dequantize + cuBLAS."""
    out = []
    for n, k in sorted({(r["N"], r["K"]) for r in rows}):
        ms = [r["M"] for r in rows if (r["N"], r["K"]) == (n, k) and r["tinygemm"] <= r["deq+mm"]]
        out.append(f"- N={n}, K={k}: tinygemm faster up to M={max(ms) if ms else 'never'}")
    return "\n".join(out)


def run_checks() -> bool:
    """Pack equality with aten._convert_weight_to_int4pack and kernel-vs-reference SQNR."""
    ok = True
    for n, k in [(8, 128), (96, 512), (4096, 4096), (512, 14336)]:
        for ikt in (2, 4, 8):
            codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
            ours = pack_int4_tiled(codes, ikt)
            theirs = torch.ops.aten._convert_weight_to_int4pack(codes_to_convert_input(codes), ikt)
            same = theirs.shape == ours.shape and torch.equal(theirs, ours)
            back = torch.equal(unpack_int4_tiled(theirs), codes)
            ok &= same and back
            print(f"pack  N={n:5d} K={k:5d} ikt={ikt}: bit-equal={same} unpack-exact={back}")
    for gs in (32, 128):
        t = Int4TiledCudaTensor.from_float((torch.randn(1024, 4096, device="cuda") * 0.02).to(torch.bfloat16), group_size=gs)
        fast = lowbit_cuda._dequantize_int4_tiled_bf16(t.qdata, t.scale_and_zero, gs)
        slow = lowbit_cuda._dequantize_int4_tiled_torch(t.qdata, t.scale_and_zero, gs)
        same = torch.equal(fast, slow)
        ok &= same
        print(f"dequant gs={gs:3d}: Triton == PyTorch bit-exact: {same}")
    for gs in (32, 64, 128, 256):
        for m in (1, 17, 32, 33, 600):
            w = (torch.randn(512, 2048, device="cuda") * 0.02).to(torch.bfloat16)
            t = Int4TiledCudaTensor.from_float(w, group_size=gs)
            x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
            y = torch.ops.lowbit.int4_tiled_cuda_mm(x, t.qdata, t.scale_and_zero, gs)
            ref = reference.int4_tiled_cuda_mm(x, t.qdata, t.scale_and_zero, gs)
            s = lowbit.sqnr(ref.float(), y.float())
            ok &= s >= 45.0
            print(f"kernel gs={gs:3d} M={m:3d}: SQNR vs reference {s:.1f} dB ({'ok' if s >= 45 else 'FAIL'})")
    print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the markdown table (with GPU name) to this file")
    p.add_argument("--check", action="store_true", help="run the pack/kernel checks instead of timing")
    p.add_argument("--shapes", default=None, help="N:K,N:K,... (default: the four LLM shapes)")
    p.add_argument("--batches", default=None, help="comma-separated M values")
    p.add_argument("--budget-ms", type=float, default=100.0, help="timing budget per cell")
    p.add_argument("--no-cuda-graph", action="store_true", help="time eager calls (includes Python overhead)")
    p.add_argument("--marlin-max-m", type=int, default=4096, help="skip the (slow) Marlin reference above this M")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not torch.cuda.is_available():
        print("gpu_int4: CUDA is not available; this benchmark needs an NVIDIA GPU", file=sys.stderr)
        return 2
    if args.check:
        return 0 if run_checks() else 1
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    batches = BATCHES if not args.batches else [int(v) for v in args.batches.split(",")]
    rows = []
    for n, k in shapes:
        rows += _bench_shape(n, k, batches, args.budget_ms, args.marlin_max_m, not args.no_cuda_graph)
        torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name()
    report = (
        f"# int4 GPU linear, {gpu}\n\ntorch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"bf16 activations, group_size 128, inner_k_tiles 8; median of CUDA-event timings "
        f"({'eager calls' if args.no_cuda_graph else 'CUDA-graph replays, marlin-ref eager'}); "
        f"lowbit CUDA_INT4_TILED_MAX_M = {lowbit_cuda.CUDA_INT4_TILED_MAX_M}.\n\n"
        f"{_table(rows)}\n\nCrossover (tinygemm vs dequantize + cuBLAS):\n{_crossover(rows)}\n"
    )
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
