"""Parametrizes conformance suites from their class attributes; device fixtures."""

import os

import pytest
import torch

# Without CUDA, Triton kernels can only run in Triton's interpreter; the flag must be set
# before triton is first imported (tests/ops/test_triton_int8.py checks the kernels there).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _dtype_id(d):
    return str(d).replace("torch.", "")


def pytest_generate_tests(metafunc):
    cls = metafunc.cls
    if cls is None:
        return
    if "shape" in metafunc.fixturenames and hasattr(cls, "shapes"):
        metafunc.parametrize("shape", cls.shapes, ids=[f"{n}x{k}" for n, k in cls.shapes])
    if "act_dtype" in metafunc.fixturenames and hasattr(cls, "act_dtypes"):
        metafunc.parametrize("act_dtype", cls.act_dtypes, ids=[_dtype_id(d) for d in cls.act_dtypes])
    if "device" in metafunc.fixturenames and hasattr(cls, "devices"):
        metafunc.parametrize("device", cls.devices)


def pytest_report_header(config):
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CUDA tests skip)"
    return [f"torch {torch.__version__}; CUDA: {cuda}; CPU capability {torch.backends.cpu.get_cpu_capability()}"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_cpu_paths():
    # Paths chosen by lowbit.ops.cpu_paths are memoized per process; tests patch its tables
    # (dicts and functions), so each test starts from an empty memo.
    from lowbit.ops import cpu_paths

    cpu_paths._chosen.clear()
    yield
    cpu_paths._chosen.clear()
