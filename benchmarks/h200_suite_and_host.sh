#!/bin/bash
# One device call (<= 10 min): the full GPU suite, then benchmarks/linear.py on the AMX Xeon
# host at 2 and 16 threads (4096x4096, every format), and the activation quantizers at 2
# threads. Logs and tables under $OUT.
#   OUT=dir bash benchmarks/h200_suite_and_host.sh
set -o pipefail
export PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
{
nvidia-smi -L; lscpu | grep -E "Model name|^CPU\(s\)|Model:"; uptime
step "GPU suite"
timeout 290 python3 -m pytest -p no:cacheprovider -p no:benchmark -n 15 --timeout 280 -rfE --tb=short -q \
  tests/tensors tests/ops tests/test_primitives.py tests/test_cpu_paths.py > "$OUT/gpu_suite.txt" 2>&1
tail -3 "$OUT/gpu_suite.txt"
step "linear.py 2 threads"
timeout 140 python3 benchmarks/linear.py --shapes 4096x4096 --threads 2 --budget-s 0.15 --min-calls 5 \
  --cold-mb 256 --bw-mb 512 --out "$OUT/linear_2t.md" > /dev/null 2> "$OUT/linear_2t.err"
step "linear.py 16 threads"
timeout 80 python3 benchmarks/linear.py --shapes 4096x4096 --threads 16 --budget-s 0.12 --min-calls 5 \
  --cold-mb 256 --bw-mb 512 --out "$OUT/linear_16t.md" > /dev/null 2> "$OUT/linear_16t.err"
step "act_quant_cpu.py 2 threads"
timeout 60 python3 benchmarks/act_quant_cpu.py --threads 2 --rounds 9 --out "$OUT/act_quant_2t.md" > /dev/null 2> "$OUT/act_quant_2t.err"
step "done"
} 2>&1 | tee "$OUT/log"
