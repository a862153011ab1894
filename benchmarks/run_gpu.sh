#!/usr/bin/env bash
# The GPU evidence for lowbit's CUDA paths, run on a lent H100/H200 (no internet there:
# pytest and hypothesis travel as wheels in .whl/). Usage: bash benchmarks/run_gpu.sh tests|bench|bench8
# Writes logs and tables under $OUT (default /tmp/lowbit-gpu).
set -uo pipefail
OUT=${OUT:-/tmp/lowbit-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
lscpu | grep -o -E 'avx512_vnni|amx_int8' | sort -u | tr '\n' ' '; echo
case "${1:-tests}" in
  tests)
    python3 -c "import lowbit; print(lowbit.env_report())"
    python3 -m pytest -q -p no:cacheprovider --maxfail=25 tests 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
    ;;
  bench)
    python3 -m pytest -q -p no:cacheprovider tests/tensors/test_int4_marlin.py tests/tensors/test_int4_tinygemm_cpu.py tests/tensors/test_int4_common.py tests/tensors/test_int4_tiled_cuda.py 2>&1 | tail -4
    python3 -m benchmarks.gpu_int4 --check 2>&1 | tee "$OUT/gpu_int4_check.txt" | tail -8
    python3 -m benchmarks.gpu_int4 --out "$OUT/gpu_int4.md" 2>&1 | tail -40
    python3 benchmarks/linear.py --device cuda --gpu-shapes --out "$OUT/linear_cuda.md" 2>&1 | tail -40
    ;;
  bench8)  # int8/float8: kernel tests, block/threshold sweep, then the formats with the swept tables
    python3 -m pytest -q -p no:cacheprovider tests/ops/test_triton_int8.py tests/tensors/test_float8.py tests/tensors/test_int8.py 2>&1 | tee "$OUT/pytest_8bit.log" | tail -3
    python3 -m benchmarks.gpu_8bit --sweep --budget-ms 5 --tables-out "$OUT/tables_8bit.json" --out "$OUT/gpu_8bit_sweep.md" 2>&1 | tail -3
    python3 -m benchmarks.gpu_8bit --tables "$OUT/tables_8bit.json" --eager --budget-ms 5 --out "$OUT/gpu_8bit.md" 2>&1 | tail -40
    python3 -m benchmarks.gpu_8bit --profile-eager 2>&1 | tail -40
    ;;
esac
