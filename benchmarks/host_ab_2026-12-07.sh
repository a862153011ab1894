#!/bin/bash
# One device call on the AMX GPU host (2026-12-07): the forced-path A/B checks behind the
# slow cells of that day's cpu_host_run.sh (int8 weight-only 4096x11008 at 16 threads M <= 16
# at 0.35x bf16; DA8W4 11008x4096 at 2 threads M >= 16 at 0.77-0.96x; int8 weight-only at
# M = 64 / 256, 2 threads), then the GPU kernel tests. Usage: OUT=dir bash this.
export PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
{
uptime
step "ext"; timeout 100 python3 -c "from lowbit.ops._ext import load_cpu_extension; print(load_cpu_extension())"
step "int8-wo 16t"
timeout 110 python3 benchmarks/cpu_paths_ab.py --threads 16 --ops int8_weight_only_linear --shapes 4096x11008,11008x4096 \
  --ms 1,4,16 --rounds 5 --cold-mb 256 --out "$OUT/ab_int8wo_16t.md" > /dev/null 2> "$OUT/ab_int8wo_16t.err"
step "da8w4 2t"
timeout 110 python3 benchmarks/cpu_paths_ab.py --threads 2 --ops da8w4_linear --group-size 128 --shapes 11008x4096,4096x4096 \
  --ms 16,64,256 --rounds 3 --cold-mb 256 --out "$OUT/ab_da8w4_2t.md" > /dev/null 2> "$OUT/ab_da8w4_2t.err"
step "int8-wo 2t"
timeout 90 python3 benchmarks/cpu_paths_ab.py --threads 2 --ops int8_weight_only_linear --shapes 4096x4096,4096x11008 \
  --ms 16,64,256 --rounds 3 --cold-mb 256 --out "$OUT/ab_int8wo_2t.md" > /dev/null 2> "$OUT/ab_int8wo_2t.err"
step "GPU kernel tests"
timeout 150 python3 -m pytest -p no:cacheprovider -n 14 -q -x tests/ops/test_triton_int4.py tests/ops/test_triton_int8.py \
  > "$OUT/gpu_ops_tests.txt" 2>&1; tail -3 "$OUT/gpu_ops_tests.txt"
step "done"
} 2>&1 | tee "$OUT/log"
