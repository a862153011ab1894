#!/bin/bash
# One device call on the GPU host's CPU (an AMX Xeon) for the DA8W4 paths: build the
# extension, run the DA8W4 tests, time every DA8W4 path with lowbit.tune (no cache written)
# at 2 and 16 threads, then benchmarks/linear.py's DA8W4 rows at 2 and 16 threads.
# Writes under $OUT. Usage: OUT=dir bash benchmarks/da8w4_host_run.sh
set -o pipefail
export PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
{
lscpu | grep -E "Model name|^CPU\(s\)|Model:"; lscpu | grep -o -E "avx512_bf16|avx512_vnni|amx_int8|amx_bf16" | sort -u | tr '\n' ' '; echo
python3 -c "import torch; print(torch.__version__)"; uptime
step "extension"
timeout 200 python3 -c "
from lowbit.ops._ext import load_cpu_extension, cpu_extension_status
print('ext', load_cpu_extension(), cpu_extension_status().reason, (cpu_extension_status().build_log or '')[-1500:])"
step "tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:benchmark -n 8 tests/ops/test_da8w4_amx_cpu.py \
  tests/tensors/test_da8w4.py tests/test_cpu_paths.py 2>&1 | tail -4
for T in 2 16; do
  step "tune da8w4, $T threads"
  timeout 120 python3 -c "
from lowbit.tune import tune
for S in [(4096, 4096), (11008, 4096), (4096, 11008), (960, 576)]:
    r = tune(shape=S, ms=(1, 4, 8, 16, 64, 256, 512), threads=$T, ops=('da8w4_linear',), save=False, reps=3)
    print(S, 'bf16', [round(v) for v in r.bf16_us], ' '.join(f'{p} {[round(v) for v in t]}' for p, t in r.times_us['da8w4_linear'].items()), flush=True)
" 2>&1 | grep -v Warn | tee "$OUT/tune_da8w4_${T}t.txt"
done
for T in 2 16; do
  step "linear.py DA8W4, $T threads"
  timeout 150 python3 benchmarks/linear.py --shapes 4096x4096,11008x4096,4096x11008 --threads $T --formats "int8-dyn-int4-g128 (DA8W4)" \
    --budget-s 0.15 --min-calls 5 --cold-mb 256 --bw-mb 512 --out "$OUT/linear_da8w4_${T}t.md" > /dev/null 2> "$OUT/linear_da8w4_${T}t.err"
done
step "done"
} 2>&1 | tee "$OUT/log"
