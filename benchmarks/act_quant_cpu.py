"""Per-token activation quantization on the CPU: the C++ quantizers of the int8-dynamic and
DA8W4 linears (lowbit/csrc/int8_vnni_cpu.cpp, lowbit/csrc/da8w4_cpu.cpp), per vector loop
this CPU runs, against the pure-PyTorch reference, and against bf16 ``F.linear`` of a square
layer of the same K (the GEMM the quantization precedes, so its share of a prefill call).

    python3 benchmarks/act_quant_cpu.py --threads 2
    python3 benchmarks/act_quant_cpu.py --shapes 512x576,512x4096 --threads 2
    python3 benchmarks/act_quant_cpu.py --quick        # smoke test (numbers meaningless)

Rows are timed interleaved (every round times each row once), a cell is the median over
rounds in us; the activations are bf16 and warm (they come from the previous layer).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_report, fmt_us, interleaved_times, machine_description, md_table  # noqa: E402

import lowbit  # noqa: E402,F401
from lowbit.ops import reference  # noqa: E402
from lowbit.ops._ext import load_cpu_extension  # noqa: E402


def _rows(m: int, k: int) -> dict[str, object]:
    x = torch.randn(m, k, dtype=torch.bfloat16)
    w = torch.randn(k, k, dtype=torch.bfloat16)
    ext = torch.ops.lowbit_ext
    vnni = int(ext.da8w4_best_isa())
    rows = {"bf16 F.linear KxK (for scale)": lambda: F.linear(x, w)}
    rows["reference int8 per-token"] = lambda: reference.quantize_per_token_int8(x)
    rows["lowbit int8 per-token (auto)"] = lambda: ext.quantize_per_token_int8(x, -1)
    rows["lowbit int8 per-token (avx2)"] = lambda: ext.quantize_per_token_int8(x, 1)
    rows["reference DA8W4 g64 asym"] = lambda: reference.da8w4_quantize_act(x, 64, "asymmetric")
    for isa, name in ((2, "avx512"), (1, "avx2")):
        if isa <= vnni:
            rows[f"lowbit DA8W4 g64 asym ({name})"] = lambda isa=isa: ext.da8w4_quantize_act(x, 64, False, isa)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="1x4096,16x4096,128x4096,512x576,512x1536,512x4096",
                   help="comma-separated MxK activation shapes")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if not load_cpu_extension():
        print("lowbit's CPU extension did not load: nothing to measure", file=sys.stderr)
        return 1
    rounds = 2 if a.quick else a.rounds
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    results: dict[str, dict[str, float]] = {}
    for m, k in shapes:
        rows = _rows(m, k)
        reps = max(1, int(2e6 // (m * k)))  # ~2M elements per timed sample
        for fn in rows.values():
            fn()
        samples = interleaved_times(
            {name: ((lambda fn=fn: [fn() for _ in range(reps)]), reps) for name, fn in rows.items()}, rounds)
        for name, s in samples.items():
            results.setdefault(name, {})[f"{m}x{k}"] = statistics.median(s)
    desc = machine_description(torch.device("cpu"))
    lines = ["# lowbit per-token activation quantization (CPU)", ""]
    lines += [f"- {key}: {val}" for key, val in desc.items()]
    lines += [f"- torch threads: {torch.get_num_threads()}", f"- command: `{' '.join(['python3'] + sys.argv)}`", ""]
    cols = [f"{m}x{k}" for m, k in shapes]
    table = [[name] + [fmt_us(t[c]) if c in t else "n/a" for c in cols] for name, t in results.items()]
    lines.append(md_table(["row (us, bf16 x)"] + [f"M x K = {c}" for c in cols], table))
    return emit_report("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
    raise SystemExit(main())
