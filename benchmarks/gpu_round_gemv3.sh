#!/bin/bash
# One H200 device call (<= 10 min): GPU tests of the Triton int4/int8 kernels, the int4
# GEMV sweep (gemv2 vs gemv3 vs mm2 at M = 1, 2, 4 on four shapes), the 8-bit GEMV sweep
# at M = 1 (prefetch variants), and the llama-1b decode step with both int4 CUDA packings.
#   OUT=dir bash benchmarks/gpu_round_gemv3.sh
set -o pipefail
export PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
{
nvidia-smi -L; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)"; uptime
step "GPU tests (triton int4 + int8)"
timeout 170 python3 -m pytest -p no:cacheprovider -p no:benchmark -n 8 --timeout 160 -rfE --tb=short -q \
  tests/ops/test_triton_int4.py tests/ops/test_triton_int8.py > "$OUT/gpu_tests.log" 2>&1
tail -4 "$OUT/gpu_tests.log"
step "int4 sweep M=1,2,4"
timeout 200 python3 -m benchmarks.gpu_int4 --sweep --budget-ms 3 --kinds gemv2,gemv3,mm2 \
  --shapes 14336:4096,4096:4096,28672:8192,4096:14336 --batches 1,2,4 --out "$OUT/gpu_int4_sweep.md" > "$OUT/gpu_int4_sweep.log" 2>&1
tail -16 "$OUT/gpu_int4_sweep.md"
step "8-bit sweep M=1"
timeout 90 python3 -m benchmarks.gpu_8bit --sweep --budget-ms 3 --deadline-s 70 --batches 1 \
  --shapes 14336x4096,28672x8192 --out "$OUT/gpu_8bit_sweep.md" > "$OUT/gpu_8bit_sweep.log" 2>&1
grep -E "w8a16|a8w8_int8" "$OUT/gpu_8bit_sweep.md" | head -8
step "decode llama-1b"
timeout 120 python3 -m benchmarks.gpu_decode --model llama-1b --batches 1,32 --steps 32 \
  --rows bf16,int4-g128-fused,int4-g128-triton-fused --out "$OUT/gpu_decode.md" > "$OUT/gpu_decode.log" 2>&1
tail -8 "$OUT/gpu_decode.md"
step "done"
} 2>&1 | tee "$OUT/log"
