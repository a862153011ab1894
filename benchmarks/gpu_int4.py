"""Benchmark and check lowbit's int4 GPU formats on one CUDA GPU.

    python3 -m benchmarks.gpu_int4 --out benchmarks/results/gpu_int4_h200_triton.md
    python3 -m benchmarks.gpu_int4 --sweep --out ...   # Triton tile sweep per (shape, M)
    python3 -m benchmarks.gpu_int4 --check             # pack equality vs the real CUDA ops

Timing: median over repeated CUDA-graph replays measured with CUDA events. "Cold"
weights: each format is quantized into enough copies of the layer to exceed the 50 MB
L2 (>= 256 MB together), one graph replays one call per copy and the time is divided by
the number of copies, so every call streams its weight from HBM as in a decode step.
Eager rows time the same calls without a graph (Python and dispatch included); the
"overhead" column is eager minus graph, per call. Columns, y = x @ W^T, x bf16 [M, K]:

* ``bf16``       F.linear on the bf16 weight (cuBLAS)
* ``tinygemm``   aten._weight_int4pack_mm on the tiled layout, at every M
* ``tiled``      F.linear on Int4TiledCudaTensor (packing="auto" on CUDA): tinygemm up to
                 CUDA_INT4_TILED_MAX_M, then its Triton dequantize + cuBLAS
* ``triton``     F.linear on Int4TritonCudaTensor (packing="triton_cuda"; lowbit's
                 Triton GEMV / fused GEMM / dequantize + cuBLAS, dispatch by M)
* ``marlin``     F.linear on Int4MarlinTensor (Triton kernels reading the Marlin layout)

Ratios are bf16 time / format time (> 1 means faster than bf16). ``%HBM`` at M=1 is the
bytes a call must read (packed weight, scales, zero points) over its time, as a
fraction of the device-to-device copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys

import torch
import torch.nn.functional as F

import lowbit
from lowbit.ops import cuda as lowbit_cuda
from lowbit.ops import reference, triton_int4
from lowbit.packing.int4_tiled import (
    codes_to_convert_input,
    pack_int4_tiled,
    unpack_int4_tiled,
)
from lowbit.tensors import Int4MarlinTensor, Int4TiledCudaTensor, Int4TritonCudaTensor

log = logging.getLogger("benchmarks.gpu_int4")

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]
BATCHES = [1, 4, 16, 64, 256, 1024, 4096]
_COLD_BYTES = 256 * 2**20  # weights streamed per graph replay: well above the 50 MB L2


def _nbytes(t) -> int:
    if isinstance(t, lowbit.LowbitTensor):
        return sum(getattr(t, f).numel() * getattr(t, f).element_size() for f in t.data_fields if getattr(t, f) is not None)
    return t.numel() * t.element_size()


def _median_ms(fn, budget_ms: float, max_reps: int = 100) -> float:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    torch.cuda.synchronize()
    reps = int(max(5, min(max_reps, budget_ms / max(s.elapsed_time(e), 1e-3))))
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def _time_calls(calls, budget_ms: float, graph: bool) -> float:
    """Median ms per call of running every function in ``calls`` once (cold weights)."""
    def run_all():
        for c in calls:
            c()

    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run_all()  # warm-up outside capture (compiles Triton kernels, cuBLAS init)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run_all()
        return _median_ms(g.replay, budget_ms) / len(calls)
    return _median_ms(run_all, budget_ms) / len(calls)


def _copies(make, one) -> list:
    n = max(1, math.ceil(_COLD_BYTES / max(_nbytes(one), 1)))
    return [one] + [make() for _ in range(n - 1)]


def hbm_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = _median_ms(lambda: b.copy_(a), 200.0)
    return 2 * a.numel() / (ms * 1e-3)


def _formats(n: int, k: int):
    g = torch.Generator(device="cuda").manual_seed(0)

    def weight():
        return (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)

    w = weight()
    tiled = _copies(lambda: Int4TiledCudaTensor.from_float(weight(), 128, 8), Int4TiledCudaTensor.from_float(w, 128, 8))
    return {
        "bf16": _copies(weight, w),
        "tinygemm": tiled,
        "tiled": tiled,
        "triton": _copies(lambda: Int4TritonCudaTensor.from_float(weight(), 128), Int4TritonCudaTensor.from_float(w, 128)),
        "marlin": _copies(lambda: Int4MarlinTensor.from_float(weight(), 128), Int4MarlinTensor.from_float(w, 128)),
    }


def _calls(name, ws, x):
    if name == "tinygemm":
        return [lambda t=t: torch.ops.aten._weight_int4pack_mm(x, t.qdata, 128, t.scale_and_zero) for t in ws]
    return [lambda t=t: F.linear(x, t) for t in ws]


_LAUNCH_ERRORS: tuple = ()  # set by run_sweep (needs triton)
_GRAPH_COLS = ["bf16", "tinygemm", "tiled", "triton", "marlin"]
_EAGER_COLS = ["bf16", "tiled", "triton", "marlin"]


def _bench_shape(n, k, batches, budget_ms, bw) -> list[dict]:
    fmts = _formats(n, k)
    rows = []
    for m in batches:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        r = {"N": n, "K": k, "M": m}
        with torch.no_grad():
            for c in _GRAPH_COLS:
                r[c] = _time_calls(_calls(c, fmts[c], x), budget_ms, graph=True)
            for c in _EAGER_COLS:
                r["eager " + c] = _time_calls(_calls(c, fmts[c], x), budget_ms, graph=False)
        if m == 1:
            r["%HBM"] = 100 * _nbytes(fmts["triton"][0]) / (r["triton"] * 1e-3) / bw
            r["%HBM tiled"] = 100 * _nbytes(fmts["tiled"][0]) / (r["tiled"] * 1e-3) / bw
        rows.append(r)
        log.info("N=%d K=%d M=%d: %s", n, k, m, {c: round(1000 * r[c], 1) for c in _GRAPH_COLS})
    del fmts
    torch.cuda.empty_cache()
    return rows


def _table(rows: list[dict]) -> str:
    ratio_cols = ["tinygemm", "tiled", "triton", "marlin"]
    head = ("| N | K | M | " + " | ".join(f"{c} (us)" for c in _GRAPH_COLS) + " | "
            + " | ".join(f"bf16/{c}" for c in ratio_cols) + " | marlin/triton time | tiled %HBM | triton %HBM |")
    lines = [head, "|" + "---|" * (3 + len(_GRAPH_COLS) + len(ratio_cols) + 3)]
    for r in rows:
        lines.append(
            f"| {r['N']} | {r['K']} | {r['M']} | " + " | ".join(f"{1000 * r[c]:.1f}" for c in _GRAPH_COLS) + " | "
            + " | ".join(f"{r['bf16'] / r[c]:.2f}" for c in ratio_cols)
            + f" | {r['marlin'] / r['triton']:.2f} | "
            + " | ".join(f"{r[c]:.0f}%" if c in r else "-" for c in ("%HBM tiled", "%HBM")) + " |"
        )
    return "\n".join(lines)


def _eager_table(rows: list[dict]) -> str:
    head = ("| N | K | M | " + " | ".join(f"eager {c} (us)" for c in _EAGER_COLS) + " | bf16/tiled eager | "
            + "bf16/triton eager | " + " | ".join(f"{c} overhead (us/call)" for c in _EAGER_COLS) + " |")
    lines = [head, "|" + "---|" * (3 + 2 * len(_EAGER_COLS) + 2)]
    for r in rows:
        lines.append(
            f"| {r['N']} | {r['K']} | {r['M']} | " + " | ".join(f"{1000 * r['eager ' + c]:.1f}" for c in _EAGER_COLS)
            + f" | {r['eager bf16'] / r['eager tiled']:.2f} | {r['eager bf16'] / r['eager triton']:.2f} | "
            + " | ".join(f"{1000 * (r['eager ' + c] - r[c]):.1f}" for c in _EAGER_COLS) + " |"
        )
    return "\n".join(lines)


SWEEP_KINDS = ("gemv", "gemv2", "gemv3", "mm", "mm2", "deq", "marlin")


def _sweep_configs(m: int) -> list[dict]:
    """Candidate Triton launch parameters for batch size ``m`` (see ops/triton_int4.py):
    the old kernels (gemv, mm, deq) around today's table rows, and the factored ones
    (gemv2, mm2) over their tile, planes-per-dot (SUB, JOIN) and split-K choices. Few per
    M, so that one sweep of two shapes x five batch sizes stays within a few GPU minutes."""
    out = []

    def add(kind, bm, bn, bk, split, warps=4, stages=4, **extra):
        out.append({"kind": kind, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split, "num_warps": warps,
                    "num_stages": stages, **extra})

    if m == 1:
        for split in (4, 8):
            add("gemv", 1, 64, 128, split, 4, 3)
        for bn in (64, 128, 256):
            for split in (1, 4):
                add("gemv2", 1, bn, 0, split, 4, 3)
        add("gemv2", 1, 128, 0, 8, 4, 3)
        add("gemv2", 1, 256, 0, 4, 8, 3)
        for bn, split in ((128, 1), (128, 4), (256, 4)):
            add("gemv2", 1, bn, 0, split, 4, 3, PREFETCH=True)
        # gemv3: CH chunks per step; tiles of at most 1024 words per warp (registers).
        for warps, tiles in ((4, ((2, 64), (4, 64), (2, 128), (8, 32), (4, 32))),
                             (8, ((4, 64), (8, 64), (4, 128), (8, 32), (2, 128)))):
            for ch, bn in tiles:
                for pf in (False, True):
                    add("gemv3", 1, bn, 0, 1, warps, 1, CH=ch, PREFETCH=pf)
        add("gemv3", 1, 64, 0, 2, 4, 1, CH=4, PREFETCH=True)
        add("gemv3", 1, 64, 0, 2, 8, 1, CH=8, PREFETCH=True)
        add("gemv3", 1, 32, 0, 2, 4, 1, CH=4, PREFETCH=True)
        add("mm2", 16, 128, 0, 4, 4, 3, SUB=8)
        for split in (4, 8):
            add("mm2", 16, 128, 0, split, 4, 3, SUB=8, XDOT=True)
            add("mm2", 16, 128, 0, split, 4, 3, PAIR=True, XDOT=True)
        add("mm2", 16, 256, 0, 4, 8, 3, PAIR=True, XDOT=True)
    elif m <= 16:
        if m <= 8:
            add("gemv", 1, 128, 128, 4, 4, 3)
            for bn in (128, 256):
                add("gemv2", 1, bn, 0, 4, 4, 3)
            add("gemv2", 1, 128, 0, 4, 4, 3, PREFETCH=True)
            for ch, bn, warps in ((4, 64, 4), (8, 64, 8), (4, 32, 4)):
                add("gemv3", 1, bn, 0, 1, warps, 1, CH=ch, PREFETCH=True)
        for bn in (64,) if m <= 8 else (64, 128):
            add("mm", 16, bn, 64, 4)
        add("mm2", 16, 128, 0, 4, 4, 3, SUB=1)
        for bn in (64, 128):
            add("mm2", 16, bn, 0, 4, 4, 3, SUB=8)
            add("mm2", 16, bn, 0, 4, 4, 3, SUB=8, XDOT=True)
        for split in (2, 8):
            add("mm2", 16, 128, 0, split, 4, 3, SUB=8, XDOT=True)
        for bn, split, warps in ((128, 2, 4), (128, 4, 4), (256, 2, 8)):
            add("mm2", 16, bn, 0, split, warps, 3, PAIR=True, XDOT=True)
        add("mm2", 16, 128, 0, 4, 4, 3, SUB=8, JOIN=False)
        for bn, split, warps, stages in ((128, 2, 4, 3), (128, 4, 4, 3), (128, 4, 4, 1), (64, 4, 4, 3), (256, 2, 8, 3)):
            add("mm2", 16, bn, 0, split, warps, stages, PAIR=True, XDOT=True, PREFETCH=True)
        add("mm2", 16, 128, 0, 4, 4, 3, SUB=8, XDOT=True, PREFETCH=True)
    elif m <= 64:
        add("mm", 32, 64, 64, 4)
        add("mm", 64, 128, 64, 1)
        add("deq", 0, 128, 0, 1, 4, 1)
        for bm, bn in ((32, 64), (32, 128), (64, 128)):
            for split in (1, 4):
                add("mm2", bm, bn, 0, split, 4, 3, SUB=8)
        add("mm2", 64, 128, 0, 1, 4, 3, SUB=2)
        add("mm2", 32, 128, 0, 4, 4, 3, SUB=8, XDOT=True)
        add("mm2", 64, 128, 0, 1, 4, 3, SUB=8, XDOT=True)
        add("mm2", 32, 128, 0, 4, 4, 3, PAIR=True, XDOT=True)
        add("mm2", 64, 128, 0, 1, 4, 3, PAIR=True, XDOT=True)
        for bm, split in ((32, 4), (32, 2), (64, 1), (64, 2)):
            add("mm2", bm, 128, 0, split, 4, 3, PAIR=True, XDOT=True, PREFETCH=True)
        add("mm2", 32, 128, 0, 4, 4, 3, SUB=8, XDOT=True, PREFETCH=True)
    else:
        add("mm", 64, 128, 64, 1)
        add("mm", 128, 128, 64, 1, 8, 3)
        add("deq", 0, 128, 0, 1, 4, 1)
        for bm, bn, warps in ((64, 128, 4), (64, 256, 8), (128, 128, 8), (128, 256, 8)):
            add("mm2", bm, bn, 0, 1, warps, 3, SUB=8)
        add("mm2", 128, 128, 0, 1, 8, 3, SUB=8, XDOT=True)
        add("mm2", 64, 256, 0, 1, 8, 3, PAIR=True, XDOT=True)
        add("mm2", 128, 128, 0, 1, 8, 3, PAIR=True)
    return out


def _marlin_sweep_configs(m: int) -> list[dict]:
    bm = 16 if m <= 16 else 64 if m <= 256 else 128
    return [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split, "num_warps": 8 if bm == 128 else 4,
             "num_stages": 3}
            for bn in (64, 128) for bk in (32, 64, 128) for split in ((1, 4) if m <= 64 else (1,))]


def _short(cfg: dict) -> str:
    """A sweep config in a few characters: kind BMxBNxBK sSPLIT wWARPS stSTAGES [SUB, JOIN]."""
    t = f"{cfg.get('kind', 'marlin')} {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} s{cfg['SPLIT_K']} " \
        f"w{cfg['num_warps']} st{cfg['num_stages']}"
    if cfg.get("PAIR"):
        t += " pair"
    if "SUB" in cfg:
        t += f" sub{cfg['SUB']}" + ("" if cfg.get("JOIN", True) else " bcast") + (" xdot" if cfg.get("XDOT") else "")
    if "CH" in cfg:
        t += f" ch{cfg['CH']}"
    if cfg.get("PREFETCH"):
        t += " prefetch"
    if cfg.get("XDOT") and "SUB" not in cfg:
        t += " xdot"
    return t


def _best_cell(res: dict, cfgs: dict, sq: dict, kind: str) -> str:
    mine = [c for c in res if cfgs[c].get("kind", "marlin") == kind]
    if not mine:
        return "- | -"
    b = min(mine, key=res.get)
    return f"{1000 * res[b]:.1f} | `{_short(cfgs[b])}` {sq.get(b, float('nan')):.0f} dB"


def run_sweep(shapes, batches, budget_ms, kinds=SWEEP_KINDS, device="cuda") -> str:
    """Per (shape, M): bf16, today's dispatch, and the best time of each kernel kind with
    its config and its SQNR against the pure-PyTorch reference (bf16 output rounding alone
    allows ~48 dB). ``device`` other than CUDA: a dry run in Triton's interpreter (with
    ``_time_calls`` replaced), to check that every config launches."""
    global _LAUNCH_ERRORS
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    _LAUNCH_ERRORS = (CompilationError, OutOfResources, RuntimeError, ValueError)
    head = "| N | K | M | bf16 (us) | table (us) | " + " | ".join(f"{k} (us) | {k} best config, SQNR" for k in kinds)
    lines = [head + " | bf16 / best |", "|" + "---|" * (6 + 2 * len(kinds))]
    for n, k in shapes:
        g = torch.Generator(device=device).manual_seed(0)

        def weight(n=n, k=k, g=g):
            return (torch.randn(n, k, device=device, generator=g) * 0.02).to(torch.bfloat16)

        bw = _copies(weight, weight())
        tw = _copies(lambda: Int4TritonCudaTensor.from_float(weight(), 128), Int4TritonCudaTensor.from_float(weight(), 128))
        mw = _copies(lambda: Int4MarlinTensor.from_float(weight(), 128), Int4MarlinTensor.from_float(weight(), 128)) \
            if "marlin" in kinds else []
        for m in batches:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            t0 = tw[0]
            ref = triton_int4.int4_triton_reference(x, t0.qdata, t0.scale, t0.zero_point, 128).float()
            res, cfgs, sq = {}, {}, {}
            for cfg in [c for c in _sweep_configs(m) if c["kind"] in kinds]:
                key = str(cfg)
                calls = [lambda t=t, c=cfg, x=x: triton_int4.int4_triton_linear(x, t.qdata, t.scale, t.zero_point, 128,
                                                                                 cfg=c)
                         for t in tw]
                try:
                    res[key] = _time_calls(calls, budget_ms, graph=True)
                    y = triton_int4.int4_triton_linear(x, t0.qdata, t0.scale, t0.zero_point, 128, cfg=cfg)
                    sq[key] = lowbit.sqnr(ref, y.float())
                    cfgs[key] = cfg
                    log.info("%dx%d M=%d %s: %.1f us, %.0f dB", n, k, m, _short(cfg), 1000 * res[key], sq[key])
                except _LAUNCH_ERRORS as e:  # a config the compiler rejects (e.g. out of shared memory)
                    res.pop(key, None)
                    log.info("config %s failed: %s: %s", cfg, type(e).__name__, str(e)[:200])
            if "marlin" in kinds:
                mref = reference.int4_marlin_mm(x, mw[0].qdata, mw[0].scale, mw[0].zero_point, 128).float()
                for cfg in _marlin_sweep_configs(m):
                    if 128 % cfg["BLOCK_K"] or n % cfg["BLOCK_N"]:
                        continue
                    key = "marlin " + str(cfg)
                    calls = [lambda t=t, c=cfg, x=x: triton_int4.int4_marlin_linear(x, t.qdata, t.scale, t.zero_point,
                                                                                     128, cfg=c)
                             for t in mw]
                    try:
                        res[key] = _time_calls(calls, budget_ms, graph=True)
                        sq[key] = lowbit.sqnr(mref, calls[0]().float())
                        cfgs[key] = cfg
                    except _LAUNCH_ERRORS as e:
                        res.pop(key, None)
                        log.info("marlin config %s failed: %s", cfg, type(e).__name__)
            bf16 = _time_calls([lambda w=w, x=x: F.linear(x, w) for w in bw], budget_ms, graph=True)
            table = _time_calls([lambda t=t, x=x: F.linear(x, t) for t in tw], budget_ms, graph=True)
            best = min(res.values()) if res else float("nan")
            lines.append(f"| {n} | {k} | {m} | {1000 * bf16:.1f} | {1000 * table:.1f} | "
                         + " | ".join(_best_cell(res, cfgs, sq, kd) for kd in kinds) + f" | {bf16 / best:.2f} |")
            log.info(lines[-1])
        del bw, tw, mw
        if device == "cuda":
            torch.cuda.empty_cache()
    return "\n".join(lines)


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
    p.add_argument("--sweep", action="store_true", help="time Triton tile configs per (shape, M) instead")
    p.add_argument("--shapes", default=None, help="N:K,N:K,... (default: the four LLM shapes)")
    p.add_argument("--batches", default=None, help="comma-separated M values")
    p.add_argument("--budget-ms", type=float, default=30.0, help="timing budget per cell")
    p.add_argument("--kinds", default=",".join(SWEEP_KINDS),
                   help=f"--sweep: comma-separated kernel kinds to time (of {','.join(SWEEP_KINDS)})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not torch.cuda.is_available():
        print("gpu_int4: CUDA is not available; this benchmark needs an NVIDIA GPU", file=sys.stderr)
        return 2
    if args.check:
        return 0 if run_checks() else 1
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    batches = BATCHES if not args.batches else [int(v) for v in args.batches.split(",")]
    gpu = torch.cuda.get_device_name()
    cap = torch.cuda.get_device_capability()
    head = (f"# int4 GPU linear, {gpu} (sm{cap[0]}{cap[1]})\n\ntorch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"triton {_triton_version()}; bf16 activations, group_size 128; cold weights (>= 256 MB per replay); "
            f"median of CUDA-event timings.\n\n")
    if args.sweep:
        kinds = tuple(v for v in args.kinds.split(",") if v)
        if not kinds or set(kinds) - set(SWEEP_KINDS):
            p.error(f"--kinds takes a comma-separated subset of {','.join(SWEEP_KINDS)}, got {args.kinds!r}")
        report = (head + "Triton tile sweep (CUDA graphs; config: kind BMxBNxBK split warps stages [pair: planes h, h+4 from one shift; sub: planes per dot; bcast: broadcast shift; xdot: sums by dot; prefetch: next chunk's words early]):"
                  "\n\n" + run_sweep(shapes, batches, args.budget_ms, kinds) + "\n")
    else:
        bw = hbm_bandwidth()
        rows = []
        for n, k in shapes:
            rows += _bench_shape(n, k, batches, args.budget_ms, bw)
        report = (head + f"Measured device-to-device copy bandwidth: {bw / 1e12:.2f} TB/s.\n\n"
                  f"CUDA-graph replays:\n\n{_table(rows)}\n\nEager calls (Python + dispatch included; overhead = "
                  f"eager - graph, per call):\n\n{_eager_table(rows)}\n")
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    print(report)
    return 0


def _triton_version() -> str:
    import triton

    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
