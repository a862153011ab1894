#!/bin/bash
# One H200 device call (<= 10 min; the suite alone took 270 s on 2026-12-03) after a dispatch change: the GPU suite (its CPU tests run
# on the host's AMX Xeon), the int4 and 8-bit format tables at small M, and the llama-1b
# decode step with both int4 CUDA packings. Logs and tables under $OUT.
#   OUT=dir bash benchmarks/gpu_round_check.sh
set -o pipefail
export PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
{
nvidia-smi -L; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"
lscpu | grep -E "Model name|^CPU\(s\)"; lscpu | grep -o -E "avx512_bf16|avx512_vnni|amx_int8|amx_bf16" | sort -u | tr '\n' ' '; echo; uptime
step "GPU suite (tests/tensors tests/ops tests/test_primitives.py)"
timeout 420 python3 -m pytest -p no:cacheprovider -p no:benchmark -n 15 --timeout 280 -rfE --tb=short -q \
  tests/tensors tests/ops tests/test_primitives.py tests/test_cpu_paths.py > "$OUT/gpu_suite.log" 2>&1
tail -6 "$OUT/gpu_suite.log"
step "int4 formats, small M"
timeout 100 python3 -m benchmarks.gpu_int4 --budget-ms 3 --shapes 14336:4096,4096:4096 --batches 1,2,4,16 \
  --out "$OUT/gpu_int4.md" > "$OUT/gpu_int4.log" 2>&1
grep -E "^\| (14336|4096) " "$OUT/gpu_int4.md" | head -8
step "8-bit formats, M = 1, 16"
timeout 100 python3 -m benchmarks.gpu_8bit --budget-ms 4 --deadline-s 80 --batches 1,16 \
  --shapes 14336x4096,28672x8192,4096x4096 --out "$OUT/gpu_8bit.md" > "$OUT/gpu_8bit.log" 2>&1
grep -E "^\| [0-9]+x[0-9]+ \| (1|16) \|" "$OUT/gpu_8bit.md" | head -6
step "decode llama-1b"
timeout 120 python3 -m benchmarks.gpu_decode --model llama-1b --batches 1,32 --steps 32 \
  --rows bf16,int4-g128-fused,int4-g128-triton-fused --out "$OUT/gpu_decode.md" > "$OUT/gpu_decode.log" 2>&1
tail -5 "$OUT/gpu_decode.md"
step "done"
} 2>&1 | tee "$OUT/log"
