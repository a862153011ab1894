#!/bin/bash
# One call on the GPU host's CPU (an AMX Xeon): build the extension, run the CPU path
# tests, then per thread count (2, 16): `lowbit tune` (cached, so the benchmark's dispatch
# uses it) and benchmarks/linear.py. Writes markdown under $OUT. Usage: OUT=dir bash this.
# Needs ~10 min of device time: the first run (100 s / 60 s benchmark timeouts) lost both tables.
set -o pipefail
export PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
SHAPES=4096x4096,11008x4096,4096x11008
{
lscpu; python -c "import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability())"
uptime
T0=$(date +%s)
timeout 120 python -c "
import time; t=time.time()
from lowbit.ops._ext import load_cpu_extension, cpu_extension_status
print('ext', load_cpu_extension(), round(time.time()-t,1), 's', cpu_extension_status().reason, (cpu_extension_status().build_log or '')[-2000:])
import torch; print('caps', torch.ops.lowbit_ext.brgemm_caps())"
timeout 150 python -m pytest -q -x -p no:cacheprovider tests/test_cpu_paths.py tests/ops/test_int8_vnni_cpu.py 2>&1 | tail -4
echo "tests done at $(( $(date +%s) - T0 )) s"
timeout 75 python -m lowbit.cli tune --threads 2 --reps 1 --cold-mib 128 > $OUT/tune-2t.md 2>&1; tail -6 $OUT/tune-2t.md
echo "tune 2t done at $(( $(date +%s) - T0 )) s"
timeout 240 python benchmarks/linear.py --shapes $SHAPES --threads 2 --budget-s 0.2 --min-calls 5 --cold-mb 256 --bw-mb 512 --out $OUT/bench-2t.md > /dev/null 2>$OUT/bench-2t.err
echo "bench 2t done at $(( $(date +%s) - T0 )) s"
timeout 50 python -m lowbit.cli tune --threads 16 --reps 1 --cold-mib 128 > $OUT/tune-16t.md 2>&1; tail -6 $OUT/tune-16t.md
echo "tune 16t done at $(( $(date +%s) - T0 )) s"
timeout 150 python benchmarks/linear.py --shapes $SHAPES --threads 16 --budget-s 0.12 --min-calls 5 --cold-mb 256 --bw-mb 512 --out $OUT/bench-16t.md > /dev/null 2>$OUT/bench-16t.err
echo "bench 16t done at $(( $(date +%s) - T0 )) s"
} 2>&1 | tee $OUT/log
