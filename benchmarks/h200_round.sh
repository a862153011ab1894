#!/bin/bash
# One device call on the H200 machine (<= 10 min): GPU tests of the Triton int4 dispatch and
# the int4 per-layer benchmark, then the CPU benchmarks on its AMX Xeon host at 2 and 16
# threads (the extension is built first). Logs and tables under $OUT.
#   OUT=dir bash benchmarks/h200_round.sh
set -o pipefail
export PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
{
nvidia-smi -L; lscpu | grep -E "Model name|^CPU\(s\)"; lscpu | grep -o -E "avx512_bf16|avx512_vnni|amx_int8|amx_bf16" | sort -u | tr '\n' ' '; echo; uptime
step "GPU tests"
timeout 150 python3 -m pytest -p no:cacheprovider -p no:benchmark -n 8 --timeout 140 -rfE --tb=short \
  tests/ops/test_triton_int4.py tests/tensors/test_int4_triton_cuda.py -k "cuda or Cuda" > "$OUT/gpu_tests.log" 2>&1
tail -3 "$OUT/gpu_tests.log"
step "gpu_int4"
timeout 150 python3 -m benchmarks.gpu_int4 --budget-ms 3 --shapes 14336:4096,4096:4096 \
  --batches 1,4,16,32,64,256,1024,4096 --out "$OUT/gpu_int4.md" > "$OUT/gpu_int4.log" 2>&1
step "CPU extension"
timeout 150 python3 -c "
from lowbit.ops._ext import load_cpu_extension, cpu_extension_status
print('ext', load_cpu_extension(), cpu_extension_status().reason)"
for T in 2 16; do
  step "int4 GEMV, $T threads"
  timeout 60 python3 benchmarks/int4_gemv_cpu.py --threads $T --rounds 5 --out "$OUT/int4_gemv_${T}t.md" > /dev/null 2>&1
done
step "linear.py 2 threads"
timeout 150 python3 benchmarks/linear.py --shapes 4096x4096 --threads 2 --budget-s 0.15 --min-calls 5 \
  --cold-mb 256 --bw-mb 512 --out "$OUT/linear_2t.md" > /dev/null 2> "$OUT/linear_2t.err"
step "linear.py 16 threads"
timeout 70 python3 benchmarks/linear.py --shapes 4096x4096 --threads 16 --budget-s 0.12 --min-calls 5 \
  --cold-mb 256 --bw-mb 512 --out "$OUT/linear_16t.md" > /dev/null 2> "$OUT/linear_16t.err"
step "done"
} 2>&1 | tee "$OUT/log"
