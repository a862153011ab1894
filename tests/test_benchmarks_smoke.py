"""benchmarks/linear.py, int4_gemv_cpu.py and int8_vnni_cpu.py --quick still run (smoke tests; benchmarks are never unit tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "linear.py"


@pytest.mark.slow  # a subprocess that imports torch: ~10 s on a busy 2-core machine
@pytest.mark.parametrize("extra", [[], ["--sweep-int8-threshold"]], ids=["linear", "int8-sweep"])
def test_linear_benchmark_quick_runs(tmp_path, extra):
    out = tmp_path / "result.md"
    proc = subprocess.run(
        [sys.executable, str(_SCRIPT), "--quick", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text == proc.stdout
    assert "torch:" in text and "CPU:" in text  # the machine is named
    if extra:
        assert "CPU_INT8_GEMV_MAX_M" in text
    else:
        assert "lowbit int8-weight-only" in text and "lowbit int8-dynamic" in text
        assert "% of read BW" in text


@pytest.mark.slow
def test_int4_gemv_benchmark_quick_runs(tmp_path):
    from lowbit.ops.cpu_paths import int4_gemv_available

    if not int4_gemv_available():
        pytest.skip("benchmarks/int4_gemv_cpu.py times lowbit's C++ GEMV: the extension is not built here")
    out = tmp_path / "result.md"
    proc = subprocess.run(
        [sys.executable, str(_SCRIPT.parent / "int4_gemv_cpu.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.strip() == proc.stdout.strip()
    assert "CPU:" in text and "lowbit GEMV" in text and "tinygemm (ATen)" in text


@pytest.mark.slow
def test_int8_vnni_benchmark_quick_runs(tmp_path):
    from lowbit.ops.cpu_int8_vnni import int8_vnni_available

    if not int8_vnni_available():
        pytest.skip("benchmarks/int8_vnni_cpu.py times lowbit's C++ int8 GEMM: the extension is not built here")
    out = tmp_path / "result.md"
    proc = subprocess.run(
        [sys.executable, str(_SCRIPT.parent / "int8_vnni_cpu.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.strip() == proc.stdout.strip()
    assert "lowbit int8_vnni_gemm" in text and "torch._int_mm" in text
