#!/bin/bash
# One call on the GPU host's CPU (an AMX Xeon): build the extension, run the CPU kernel
# tests, tune at 16 and 2 threads, then benchmarks/linear.py at 2 and 16 threads. Writes
# markdown under $OUT (used for benchmarks/results/*xeon*). Usage: OUT=dir bash this.
set -o pipefail
export PYTHONPATH=$PWD LOWBIT_CACHE_DIR=/tmp/lbc PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
MODE=${1:-tuned}   # tuned: lowbit tune first (the benchmark then uses the cache); default: class tables
{
lscpu; python -c "import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability())"
nproc; free -g | head -2; uptime
T0=$(date +%s)
timeout 150 python -c "
import time; t=time.time()
from lowbit.ops._ext import load_cpu_extension, cpu_extension_status
print('ext', load_cpu_extension(), round(time.time()-t,1), 's', cpu_extension_status().reason, (cpu_extension_status().build_log or '')[-2000:])
import torch; print('caps', torch.ops.lowbit_ext.brgemm_caps())"
timeout 80 python -m pytest -q -x -p no:cacheprovider tests/test_cpu_paths.py tests/tensors/test_int4_tinygemm_cpu.py 2>&1 | tail -4
echo "tests done at $(( $(date +%s) - T0 )) s"
if [ "$MODE" = tuned ]; then
  timeout 70 python -m lowbit.cli tune --threads 16 > $OUT/tune-16t.md 2>&1; tail -8 $OUT/tune-16t.md
  timeout 90 python -m lowbit.cli tune --threads 2 > $OUT/tune-2t.md 2>&1; tail -8 $OUT/tune-2t.md
fi
echo "tune done at $(( $(date +%s) - T0 )) s"
timeout 150 python benchmarks/linear.py --shapes 4096x4096,11008x4096,4096x11008 --threads 2 --budget-s 0.25 --min-calls 5 --cold-mb 256 --bw-mb 512 --out $OUT/bench-2t.md > /dev/null 2>$OUT/bench-2t.err
echo "bench 2t done at $(( $(date +%s) - T0 )) s"
timeout 100 python benchmarks/linear.py --shapes 4096x4096,11008x4096,4096x11008 --threads 16 --budget-s 0.15 --min-calls 5 --cold-mb 256 --bw-mb 512 --out $OUT/bench-16t.md > /dev/null 2>$OUT/bench-16t.err
echo "bench 16t done at $(( $(date +%s) - T0 )) s"
} 2>&1 | tee $OUT/log
