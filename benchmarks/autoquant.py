"""autoquant on a Llama-7B-shaped decoder block (random weights), CPU or CUDA.

Compares, at M=1 and M=256 tokens: the model in its own dtype (bf16), every single
config from the candidate set applied to the whole block, and the autoquant plan.
Also reports autoquant's finalize time for the whole block and the time to re-apply a
saved plan (no benchmarking), and writes a markdown table.

    python3 -m benchmarks.autoquant --scale 4 --out benchmarks/results/autoquant_cpu_scale4.md
    python3 -m benchmarks.autoquant            # full size: q/k/v/o 4096x4096,
                                               # gate/up 11008x4096, down 4096x11008

Timings on a shared machine are noisy: each figure is the median of repeated passes,\ntaken round-robin over all the models so that load changes hit them alike.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit import autoquant as aq

log = logging.getLogger("benchmarks.autoquant")

HIDDEN, INTER, HEADS = 4096, 11008, 32  # Llama-2-7B


class RMSNorm(nn.Module):
    def __init__(self, dim, dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.weight


class DecoderBlock(nn.Module):
    """Pre-norm attention + SwiGLU MLP, Llama layout (no rotary: shapes are what matter)."""

    def __init__(self, hidden, inter, heads, dtype):
        super().__init__()
        self.heads = heads
        self.attn_norm = RMSNorm(hidden, dtype)
        self.q_proj = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
        self.v_proj = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(hidden, hidden, bias=False, dtype=dtype)
        self.mlp_norm = RMSNorm(hidden, dtype)
        self.gate_proj = nn.Linear(hidden, inter, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(hidden, inter, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(inter, hidden, bias=False, dtype=dtype)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(lin.weight, std=0.02)

    def forward(self, x):
        b, s, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=s > 1).transpose(1, 2).reshape(b, s, d)
        x = x + self.o_proj(a)
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_round_robin(models: dict[str, nn.Module], xs: dict[int, torch.Tensor], reps: int, warmup: int = 2):
    """Median seconds of one forward pass, per model and M.

    The models take turns (one pass each per round), so a change in the machine's load
    during the run hits all of them alike instead of whichever ran at that moment.
    """
    out: dict[str, dict[int, float]] = {}
    with torch.no_grad():
        for m, x in xs.items():
            samples: dict[str, list[float]] = {name: [] for name in models}
            for r in range(warmup + reps):
                for name, model in models.items():
                    _sync(x.device)
                    t0 = time.perf_counter()
                    model(x)
                    _sync(x.device)
                    if r >= warmup:
                        samples[name].append(time.perf_counter() - t0)
            for name, ts in samples.items():
                out.setdefault(name, {})[m] = statistics.median(ts)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=1, help="divide hidden/intermediate sizes and heads by this (1 = 7B)")
    p.add_argument("--ms", type=int, nargs="+", default=[1, 256], help="token counts M to measure")
    p.add_argument("--candidates", default="default", help="autoquant candidate set (default, int8, int4, float, all)")
    p.add_argument("--min-sqnr", type=float, default=aq.DEFAULT_MIN_SQNR)
    p.add_argument("--mode", default="op", choices=[m.value for m in aq.Mode])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=5, help="timed forward passes per figure (round-robin over the models)")
    p.add_argument("--out", default=None, help="write the markdown here (e.g. benchmarks/results/autoquant_cpu.md)")
    p.add_argument("--report", action="store_true", help="append autoquant's per-layer report")
    p.add_argument("--finalize-only", action="store_true", help="only time finalize and re-applying the plan")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.scale < 1 or HIDDEN % args.scale or INTER % args.scale or HEADS % args.scale:
        p.error(f"--scale must divide {HIDDEN}, {INTER} and {HEADS}, got {args.scale}")
    device = torch.device(args.device)
    hidden, inter, heads = HIDDEN // args.scale, INTER // args.scale, HEADS // args.scale
    torch.manual_seed(0)
    base = DecoderBlock(hidden, inter, heads, torch.bfloat16).to(device)
    xs = {m: torch.randn(1, m, hidden, dtype=torch.bfloat16, device=device) for m in args.ms}

    models: dict[str, nn.Module] = {"bf16 (as is)": base}
    # Every single config of the set, applied to the whole block.
    singles = [] if args.finalize_only else [c for c in aq.resolve_candidates(args.candidates) if c.config is not None]
    for cand in singles:
        model = copy.deepcopy(base)
        rep = lowbit.quantize_(model, cand.config)
        if not rep.quantized:
            log.info("%s: skipped (%s)", cand.name, next(iter(rep.skipped.values()), "no layer"))
            continue
        models[cand.name] = model

    # autoquant, calibrated on all Ms at once (manual mode), then one plan per M from the cache.
    with tempfile.TemporaryDirectory() as tmp:
        cache = aq.BenchmarkCache(os.path.join(tmp, "cache.json"))
        model = copy.deepcopy(base)
        aq.autoquant(model, candidates=args.candidates, min_sqnr=args.min_sqnr, mode=args.mode, manual=True, cache=cache)
        with torch.no_grad():
            for m in args.ms:
                model(xs[m])
        t0 = time.perf_counter()
        plan = model.finalize_autoquant()
        finalize_s = time.perf_counter() - t0
        models["autoquant (all Ms)"] = model
        plan_path = os.path.join(tmp, "plan.json")
        plan.save(plan_path)
        fresh = copy.deepcopy(base)
        t0 = time.perf_counter()
        lowbit.quantize_(fresh, aq.Plan.load(plan_path))
        reapply_s = time.perf_counter() - t0
        del fresh
        per_m_plans = {}
        per_m_finalize = {}
        for m in [] if args.finalize_only else args.ms:
            mm = copy.deepcopy(base)
            t0 = time.perf_counter()
            per_m_plans[m] = aq.autoquant(mm, (xs[m],), candidates=args.candidates, min_sqnr=args.min_sqnr, mode=args.mode, cache=cache)
            per_m_finalize[m] = time.perf_counter() - t0
            models[f"autoquant (M={m} only)"] = mm

    if args.finalize_only:
        text = (
            f"finalize (scale 1/{args.scale}, M={args.ms}, {aq.device_name(device)}): {finalize_s:.1f} s, "
            f"{plan.report.benchmarks_run} benchmarks; re-apply saved plan: {reapply_s:.2f} s\n"
        )
        if args.report:
            text += "\n" + plan.report.to_markdown()
        sys.stdout.write(text)
        return 0
    log.info("timing %d models round-robin at M=%s", len(models), args.ms)
    rows = time_round_robin(models, xs, args.reps)
    for m in args.ms:  # a plan made for one M is reported at that M only
        for other in args.ms:
            if other != m:
                rows[f"autoquant (M={m} only)"].pop(other, None)

    dev = aq.device_name(device)
    lines = [
        f"# autoquant on a Llama-7B-shaped decoder block (scale 1/{args.scale}: hidden {hidden}, intermediate {inter})",
        "",
        f"device: {dev}; torch {torch.__version__}; lowbit {lowbit.__version__}; candidates: {args.candidates}; "
        f"min SQNR {args.min_sqnr:g} dB; mode {args.mode}; median of {args.reps} forward passes "
        "taken round-robin over the models (shared machine: timings are noisy)",
        "",
        "| config | " + " | ".join(f"M={m} ms" for m in args.ms) + " |",
        "|---|" + "---|" * len(args.ms),
    ]
    for name, t in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{t[m] * 1e3:.2f}" if m in t else "" for m in args.ms) + " |")
    single_names = [n for n in rows if n != "bf16 (as is)" and not n.startswith("autoquant")]
    lines += ["", "| M | bf16 ms | best single config | its ms | autoquant (M only) ms | vs best single | vs bf16 |", "|---|---|---|---|---|---|---|"]
    for m in args.ms:
        best = min(single_names + ["bf16 (as is)"], key=lambda n: rows[n][m])
        aqt = rows[f"autoquant (M={m} only)"][m]
        lines.append(
            f"| {m} | {rows['bf16 (as is)'][m] * 1e3:.2f} | {best} | {rows[best][m] * 1e3:.2f} | {aqt * 1e3:.2f} | "
            f"{rows[best][m] / aqt:.2f}x | {rows['bf16 (as is)'][m] / aqt:.2f}x |"
        )
    lines += [
        "",
        f"- finalize, whole block, all Ms ({', '.join(map(str, args.ms))}) with an empty cache: **{finalize_s:.1f} s** "
        f"({plan.report.benchmarks_run} benchmarks)",
        "- autoquant per M with the cache filled by that run: "
        + ", ".join(f"M={m}: {per_m_finalize[m]:.1f} s ({per_m_plans[m].report.benchmarks_run} new benchmarks)" for m in args.ms),
        f"- re-applying the saved plan (Plan.load + quantize_, no benchmarking): **{reapply_s:.2f} s**",
        "- choices (all Ms): " + ", ".join(f"{k}: {v}" for k, v in plan.report.choices.items()),
    ]
    for m in args.ms:
        lines.append(f"- choices (M={m}): " + ", ".join(f"{k}: {v}" for k, v in per_m_plans[m].report.choices.items()))
    text = "\n".join(lines) + "\n"
    if args.report:
        text += "\n" + plan.report.to_markdown()
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        log.info("wrote %s", args.out)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
