"""Quantized CPU linears on narrow (SmolLM2-sized) layers at prefill batch sizes, against bf16
``F.linear`` in the same run: every path each format can take (forced with
``cpu_paths.forced_path``) and the one dispatch picks, timed interleaved.

    python3 benchmarks/narrow_layers_cpu.py --threads 2                 # M=512, 576-3072 wide
    python3 benchmarks/narrow_layers_cpu.py --ms 64,512 --formats int4 --shapes 576x576
    python3 benchmarks/narrow_layers_cpu.py --quick                    # smoke test

Weights and activations are warm (a narrow layer fits in L2/L3, as in a prefill over 512
tokens); a cell is the median per-call time over interleaved rounds, ratio = bf16 / path.
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

import lowbit  # noqa: E402
from lowbit.ops import cpu_paths  # noqa: E402

FORMATS = {
    "int4": (lambda: lowbit.Int4WeightOnlyConfig(group_size=32), "int4_tinygemm_cpu_linear"),
    "int8-wo": (lambda: lowbit.Int8WeightOnlyConfig(), "int8_weight_only_linear"),
    "int8-dyn": (lambda: lowbit.Int8DynamicActivationInt8WeightConfig(), "int8_dynamic_linear"),
}
SLOW_PATHS = ("dequant_gemm", "fp32_gemm")  # dequantize-everything references, never dispatched above M=1


def _row_fn(lin, x, op, path, calls):
    def run():
        if path is None:
            for _ in range(calls):
                lin(x)
        else:
            with cpu_paths.forced_path(op, path):
                for _ in range(calls):
                    lin(x)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="576x576,960x576,3072x576,576x1536", help="NxK list (weight [N, K])")
    p.add_argument("--ms", default="512", help="batch rows, comma list")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {list(FORMATS)}")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=5, help="calls per row per round")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rounds, calls = (2, 1) if a.quick else (a.rounds, a.calls)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    ms = [int(m) for m in a.ms.split(",")]
    lines = ["# lowbit quantized linears on narrow layers vs bf16 F.linear (CPU)", ""]
    lines += [f"- {k}: {v}" for k, v in machine_description(torch.device("cpu")).items()]
    lines += [f"- command: `{' '.join(['python3'] + sys.argv)}`", ""]
    for fmt in a.formats.split(","):
        make_cfg, op = FORMATS[fmt]
        table = []
        for n, k in shapes:
            lin = torch.nn.Linear(k, n, bias=False).to(torch.bfloat16)
            w = lin.weight.detach().clone()
            lowbit.quantize_(lin, make_cfg())
            for m in ms:
                x = torch.randn(m, k, dtype=torch.bfloat16)
                paths = [q for q in cpu_paths.PATHS[op] if q not in SLOW_PATHS and cpu_paths.path_available(op, q)]
                rows = {"bf16": ((lambda x=x, w=w: [F.linear(x, w) for _ in range(calls)]), calls)}
                rows[f"dispatch ({cpu_paths.choose_path(op, m)})"] = (_row_fn(lin, x, op, None, calls), calls)
                rows.update({q: (_row_fn(lin, x, op, q, calls), calls) for q in paths})
                for fn, _ in rows.values():
                    fn()
                med = {name: statistics.median(t) for name, t in interleaved_times(rows, rounds).items()}
                b = med["bf16"]
                cells = [f"{fmt_us(t)} ({b / t:.2f}x)" for name, t in med.items() if name != "bf16"]
                table.append([f"{n}x{k}", str(m), fmt_us(b)] + cells)
                header = ["N x K", "M", "bf16 us"] + [name for name in med if name != "bf16"]
        lines += [f"## {fmt}", "", md_table(header, table), ""]
    return emit_report("\n".join(lines), a.out)


if __name__ == "__main__":
    raise SystemExit(main())
