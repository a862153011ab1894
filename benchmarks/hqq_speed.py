"""Time and error of int4 qparam choice: min-max vs HQQ before/after its speed-up.

    python benchmarks/hqq_speed.py [--shape 4096 11008] [--group 128] [--threads 2] [--no-old] [--repeat 3]
    python benchmarks/hqq_speed.py --chunk-log2 18 20 21 --no-old     # new HQQ at other chunk sizes
    python benchmarks/hqq_speed.py --ops                              # per-op throughput, one chunk

Prints a markdown table: seconds to choose the qparams of one layer and its codes, and
the weight SQNR (dB) of those codes. "HQQ (old)" is lowbit/hqq.py as of the `main` branch, read
with `git show` (skipped outside a git checkout). Weights: Student-t (heavy tails, like
LLM weights), bf16, fixed seed. With ``--repeat N`` the methods run interleaved N times
and each row shows the fastest and the slowest run (shared machines); the header gives
the load average before and after. ``--chunk-log2`` adds a row of the new HQQ per chunk
size (2^N weights per thread). ``--ops`` times, instead, the elementwise ops of one
evaluation on one chunk of [rows, group] (of ``--chunk-log2``'s first size if given).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import types

import torch

import lowbit
from lowbit import hqq as hqq_module
from lowbit.autoquant.bench import _cpu_model_name
from lowbit.hqq import hqq_int4_qparams
from lowbit.tensors.int4_common import quantize_int4


def _old_hqq():
    try:
        src = subprocess.run(["git", "show", "main:lowbit/hqq.py"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("lowbit._hqq_old")
    mod.__package__ = "lowbit"
    exec(compile(src, "main:lowbit/hqq.py", "exec"), mod.__dict__)
    return mod.hqq_int4_qparams


def _with_chunk(log2, fn):
    def run():
        old = hqq_module._CPU_CHUNK_ELEMS_PER_THREAD
        hqq_module._CPU_CHUNK_ELEMS_PER_THREAD = 1 << log2
        try:
            return fn()
        finally:
            hqq_module._CPU_CHUNK_ELEMS_PER_THREAD = old
    return run


def _ops(args):
    """Best-of-20 time of each elementwise op of one evaluation on one chunk."""
    per_thread = 1 << args.chunk_log2[0] if args.chunk_log2 else hqq_module._CPU_CHUNK_ELEMS_PER_THREAD
    rows = per_thread * torch.get_num_threads() // args.group
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(rows, args.group, generator=gen) * 0.02
    r = 1 / ((w.amax(1, keepdim=True) - w.amin(1, keepdim=True)) / 15)
    z = torch.rand(rows, 1, generator=gen) + 7
    t, q = torch.empty_like(w), torch.empty_like(w)
    ops = {
        "t = w * r (mul, out=)": lambda: torch.mul(w, r, out=t),
        "t += z (add_)": lambda: t.add_(z),
        "t = z + w * r (addcmul, two [rows, 1] operands)": lambda: torch.addcmul(z, w, r, out=t),
        "q = round(t) (out=)": lambda: torch.round(t, out=q),
        "q.clamp_(0, 15)": lambda: q.clamp_(0, 15),
        "t -= q (sub_)": lambda: t.sub_(q),
        "vector_norm(t, dim=1)": lambda: torch.linalg.vector_norm(t, dim=1, keepdim=True),
        "sum(t, dim=1)": lambda: t.sum(1, keepdim=True),
    }
    print(f"\nops of one HQQ evaluation on [{rows}, {args.group}] float32 (one chunk); {_cpu_model_name()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}\n")
    print("| op | us (best of 20) | Gelem/s |")
    print("|---|---:|---:|")
    for name, fn in ops.items():
        fn()
        best = float("inf")
        for _ in range(20):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        print(f"| {name} | {best * 1e6:.0f} | {w.numel() / best / 1e9:.2f} |")


def _sqnr(w, codes, scale, zero, group, kind):
    d = lowbit.primitives.dequantize_affine(codes, (1, group), scale, zero, 0, 15, kind, torch.float32)
    return lowbit.sqnr(w.float(), d)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=2, default=(4096, 11008), metavar=("N", "K"))
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--kind", default="float", choices=("float", "int"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-old", action="store_true", help="skip the (slow) pre-speed-up HQQ row")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs per method (min and max shown)")
    ap.add_argument("--chunk-log2", type=int, nargs="*", default=(), metavar="N",
                    help="also run the new HQQ with 2^N weights per chunk and thread")
    ap.add_argument("--ops", action="store_true", help="per-op throughput on one chunk instead")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ops:
        return _ops(args)
    torch.manual_seed(0)
    w = (torch.distributions.StudentT(torch.tensor(4.0)).sample(tuple(args.shape)) * 0.02).to(torch.bfloat16)
    kind = args.kind
    block = (1, args.group)
    load0 = os.getloadavg()[0]

    def minmax():
        return quantize_int4(w, args.group, kind, "minmax", torch.float32)

    def hqq(fn):
        def run():
            s, z = fn(w, args.group, kind)
            s = s.clamp(min=2.0**-20)
            zz = z.to(torch.int32) if kind == "int" else z
            return lowbit.primitives.quantize_affine(w, block, s, zz, torch.uint8, 0, 15, kind), s, zz
        return run

    methods = [("min-max", minmax)]
    old = None if args.no_old else _old_hqq()
    if old is not None:
        methods.append(("HQQ (old, main)", hqq(old)))
    methods.append(("HQQ (new, this checkout)", hqq(hqq_int4_qparams)))
    for lg in args.chunk_log2:
        methods.append((f"HQQ (new, 2^{lg} per thread)", _with_chunk(lg, hqq(hqq_int4_qparams))))
    times = {name: [] for name, _ in methods}
    quality = {}
    for _ in range(args.repeat):
        for name, fn in methods:
            t0 = time.perf_counter()
            codes, scale, zero = fn()
            times[name].append(time.perf_counter() - t0)
            quality[name] = _sqnr(w, codes, scale, zero, args.group, kind)

    cpu = _cpu_model_name()
    print(f"\nint4 qparams, {args.shape[0]}x{args.shape[1]} bf16 Student-t weight, group {args.group}, "
          f"{kind} zero point; {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.repeat} interleaved run(s), load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| method | seconds (fastest) | seconds (slowest) | weight SQNR dB |")
    print("|---|---:|---:|---:|")
    for name, _ in methods:
        print(f"| {name} | {min(times[name]):.2f} | {max(times[name]):.2f} | {quality[name]:.2f} |")


if __name__ == "__main__":
    main()
