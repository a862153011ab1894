"""Static look at lowbit's Triton int4 kernels: compile for a CUDA GPU without one, count SASS.

    python3 -m benchmarks.triton_int4_sass [--arch 90] [--batches 1,16,64] [--out FILE]

Every config of ``benchmarks.gpu_int4``'s sweep for the given batch sizes goes through the
real launcher (``int4_triton_linear`` with a ``wrap`` that records the launch instead of
running it), is compiled by ``triton.compile`` for ``sm<arch>`` (ptxas and nvdisasm ship
with triton's wheel; no GPU or driver needed), and the table shows per config: registers,
shared memory, and the instructions of the K loop (the largest backward-branch loop of
the SASS) per weight it reads (loop instructions x threads / weights per iteration), with
the int -> float converts, tensor-core MMAs, global loads and shuffles among them.

These are issue slots, not times: they show where each kernel spends instructions before
a GPU run (an H200 issues about 132 x 4 x 1.98e9 warp instructions a second, so 1 per
weight of a 14336 x 4096 weight is about 1.8 us). bf16 activations, group size 128,
N and K multiples of 16 (the divisibility Triton specializes on for the LLM shapes).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import cpu_model
from benchmarks.gpu_int4 import _short, _sweep_configs
from lowbit.ops import triton_int4
from lowbit.packing.int4_triton import pack_int4_triton

_N, _K, _GS = 256, 512, 128  # operands for the recording launch (only their dtypes and divisibility matter)
_COUNTED = {"I2F": ("I2F", "I2FP"), "MMA": ("HMMA", "HGMMA"), "LDG": ("LDG", "LDGSTS"), "SHFL": ("SHFL",)}


class _Recorder:
    """``wrap`` for int4_triton_linear: keeps (kernel, grid, args, kwargs) instead of launching."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel):
        rec = self

        class _Grid:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: rec.launches.append((kernel, grid, args, kwargs))

        return _Grid()


def _ty(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32"}[v.dtype]
    return "i32"


def _compile(kernel, args, kwargs, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    sig, consts, attrs = {}, {}, {}
    for i, name in enumerate(names):
        if kernel.params[i].is_constexpr:
            sig[name] = "constexpr"
            consts[name] = kwargs[name]
        else:
            v = args[i]
            sig[name] = _ty(v)
            if name != "M":  # pointers 16-byte aligned; N, K, strides multiples of 16 for the LLM shapes
                attrs[(i,)] = [["tt.divisibility", 16]]
    opts = {"num_warps": kwargs["num_warps"], "num_stages": kwargs["num_stages"]}
    return triton.compile(ASTSource(kernel, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                          options=opts)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _sass_stats(cubin: bytes) -> tuple[int, int, collections.Counter]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = int(m.group(1)) if (m := re.search(r"REG:(\d+)", res)) else -1
    lines = sass.splitlines()
    labels = {ln.split(":")[0]: i for i, ln in enumerate(lines) if re.match(r"^\.L_x_\d+:", ln)}
    body: list[str] = []
    for i, ln in enumerate(lines):  # the largest loop closed by a backward branch
        m = re.search(r"\bBRA\s+`?\(?(\.L_x_\d+)", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            cand = [x for x in lines[labels[m.group(1)]:i + 1] if re.match(r"^\s+/\*[0-9a-f]+\*/", x)]
            body = cand if len(cand) > len(body) else body
    ops = collections.Counter(re.findall(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", "\n".join(body)))
    return regs, len(body), ops


def _weights_per_iter(cfg: dict) -> int:
    return cfg["BLOCK_N"] * (cfg["BLOCK_K"] if cfg["kind"] == "mm" else 128)


def run(batches, arch: int) -> str:
    gen = torch.Generator().manual_seed(0)
    q = pack_int4_triton(torch.randint(0, 16, (_N, _K), dtype=torch.uint8, generator=gen))
    s = torch.ones(_K // _GS, _N, dtype=torch.bfloat16)
    z = torch.zeros(_K // _GS, _N, dtype=torch.bfloat16)
    lines = ["| M | config | regs | shared (B) | loop instrs / weight | I2F | MMA | LDG | SHFL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in batches:
        x = torch.zeros(m, _K, dtype=torch.bfloat16)
        for cfg in _sweep_configs(m):
            if cfg["kind"] == "deq":
                continue  # no K loop
            rec = _Recorder()
            triton_int4.int4_triton_linear(x, q, s, z, _GS, cfg=cfg, wrap=rec)
            kernel, _, args, kwargs = rec.launches[-1]
            try:
                k = _compile(kernel, args, kwargs, arch)
            except Exception as e:  # noqa: BLE001 - report the config the compiler rejects and go on
                lines.append(f"| {m} | `{_short(cfg)}` | compile error: {type(e).__name__} | | | | | | |")
                continue
            regs, n_loop, ops = _sass_stats(k.asm["cubin"])
            per = n_loop * 32 * cfg["num_warps"] / _weights_per_iter(cfg)
            cnt = {c: sum(ops[o] for o in names) for c, names in _COUNTED.items()}
            lines.append(f"| {m} | `{_short(cfg)}` | {regs} | {k.metadata.shared} | {per:.2f} | "
                         + " | ".join(str(cnt[c]) for c in _COUNTED) + " |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: H100/H200)")
    p.add_argument("--batches", default="1,16,64", help="comma-separated M values (configs of the gpu_int4 sweep)")
    p.add_argument("--out", help="also write the markdown table to this file")
    args = p.parse_args(argv)
    import triton

    head = (f"# SASS of lowbit's Triton int4 kernels, sm{args.arch} (compiled without a GPU)\n\n"
            f"Compiled on {cpu_model()} (the CPU does not affect the SASS); torch {torch.__version__}, "
            f"triton {triton.__version__}, bf16 activations, group size 128; per config of "
            f"`benchmarks.gpu_int4 --sweep`. Columns I2F .. SHFL: count in one K-loop iteration of one warp.\n\n")
    report = head + run([int(v) for v in args.batches.split(",")], args.arch) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
