"""benchmarks/linear.py, int4_gemv_cpu.py, int8_vnni_cpu.py and cpu_paths_ab.py --quick still run (smoke tests; benchmarks are never unit tests)."""

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


def _extension_kernel(name: str) -> bool:
    from lowbit.ops.cpu_int8_vnni import int8_vnni_available
    from lowbit.ops.cpu_paths import int4_gemv_available

    return {"int4_gemv_cpu.py": int4_gemv_available, "int8_vnni_cpu.py": int8_vnni_available}[name]()


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,expected",
    [
        ("int4_gemv_cpu.py", ("CPU:", "lowbit GEMV", "tinygemm (ATen)")),
        ("int8_vnni_cpu.py", ("lowbit int8_vnni_gemm", "torch._int_mm")),
    ],
    ids=["int4-gemv", "int8-vnni"],
)
def test_cpu_kernel_benchmark_quick_runs(tmp_path, script, expected):
    if not _extension_kernel(script):
        pytest.skip(f"benchmarks/{script} times a kernel of lowbit's C++ extension, which is not built here")
    out = tmp_path / "result.md"
    proc = subprocess.run(
        [sys.executable, str(_SCRIPT.parent / script), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.strip() == proc.stdout.strip()
    assert all(e in text for e in expected), text[:2000]


@pytest.mark.slow
def test_cpu_paths_ab_quick_runs(tmp_path):
    from lowbit.ops import cpu_paths

    out = tmp_path / "result.md"
    proc = subprocess.run(
        [sys.executable, str(_SCRIPT.parent / "cpu_paths_ab.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.strip() == proc.stdout.strip()
    assert "CPU:" in text and "bf16 F.linear" in text
    # Every path this machine can run has a row (GEMVs at M=1 only in the quick run).
    for op, paths in cpu_paths.PATHS.items():
        for path in paths:
            if path not in ("dequant_gemm", "fp32_gemm", "tinygemm") and cpu_paths.path_available(op, path):
                assert f"{op.removesuffix('_linear')} / {path}" in text, (op, path)
