"""lowbit tune --device cuda: crossovers cached per GPU model and read by lowbit/ops/cuda.py."""

import json
import logging

import pytest
import torch

from lowbit import cli
from lowbit.errors import UnsupportedError
from lowbit.ops import cuda as cuda_ops
from lowbit.tune_cuda import THRESHOLDS, cuda_tune_cache_path, load_cuda_tuned, tune_cuda


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A pretend H200 for the cache-file logic (no CUDA needed); tables restored after."""
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LOWBIT_NO_TUNE_CACHE", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    saved = {name: dict(getattr(cuda_ops, name)) for name in THRESHOLDS}
    cuda_ops._arch.cache_clear()
    yield
    for name, table in saved.items():
        getattr(cuda_ops, name).clear()
        getattr(cuda_ops, name).update(table)
    cuda_ops._arch.cache_clear()
    cuda_ops._TUNED_APPLIED.clear()


def test_cache_path_names_gpu_arch_and_torch(fake_gpu, tmp_path):
    p = cuda_tune_cache_path(0)
    assert p.parent == tmp_path / "tune" and "NVIDIA_H200" in p.name and "sm90" in p.name
    assert torch.__version__.replace("+", "_") in p.name


def test_tuned_thresholds_replace_the_table(fake_gpu):
    p = cuda_tune_cache_path(0)
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"thresholds": {"CUDA_INT4_TILED_MAX_M": 8, "CUDA_W8A16_TRITON_MAX_M": 64, "BOGUS": 3}}))
    assert load_cuda_tuned(0) == {"CUDA_INT4_TILED_MAX_M": 8, "CUDA_W8A16_TRITON_MAX_M": 64}
    before = cuda_ops.CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M["sm90"]
    cuda_ops.apply_tuned_thresholds(0, reload=True)
    dev = torch.device("cuda", 0)
    assert cuda_ops._threshold(cuda_ops.CUDA_INT4_TILED_MAX_M, dev) == 8
    assert cuda_ops._threshold(cuda_ops.CUDA_W8A16_TRITON_MAX_M, dev) == 64
    assert cuda_ops._threshold(cuda_ops.CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M, dev) == before  # not tuned: the table


def test_no_tune_cache_env_keeps_the_table(fake_gpu, monkeypatch):
    p = cuda_tune_cache_path(0)
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"thresholds": {"CUDA_INT4_TILED_MAX_M": 8}}))
    monkeypatch.setenv("LOWBIT_NO_TUNE_CACHE", "1")
    before = cuda_ops.CUDA_INT4_TILED_MAX_M["sm90"]
    cuda_ops.apply_tuned_thresholds(0, reload=True)
    assert cuda_ops.CUDA_INT4_TILED_MAX_M["sm90"] == before


@pytest.mark.parametrize("text", ["not json", '{"thresholds": 5}', '{"other": {}}', '{"thresholds": {"CUDA_INT4_TILED_MAX_M": "x"}}'])
def test_unreadable_cache_is_ignored_with_a_warning(fake_gpu, caplog, text):
    p = cuda_tune_cache_path(0)
    p.parent.mkdir(parents=True)
    p.write_text(text)
    with caplog.at_level(logging.WARNING, logger="lowbit.ops.cuda"):
        assert load_cuda_tuned(0) == {}
    assert "unreadable CUDA tune cache" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_without_cuda_a_clear_error(capsys):
    with pytest.raises(UnsupportedError, match="needs a CUDA GPU"):
        tune_cuda()
    assert cli.main(["tune", "--device", "cuda", "--no-save"]) != 0
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(100, 4096), (4096, 100), (0, 128)])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="shape must be"):  # checked before anything touches CUDA
        tune_cuda(shape, save=False)


@pytest.mark.parametrize("ms", [(), (0, 4), (-1,)])
def test_bad_batch_sizes(ms):
    with pytest.raises(ValueError, match="ms must be positive"):
        tune_cuda((1024, 1024), ms=ms, save=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="times CUDA kernels")
def test_tune_on_this_gpu_saves_and_applies(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    saved = {name: dict(getattr(cuda_ops, name)) for name in THRESHOLDS}
    try:
        r = tune_cuda((1024, 1024), ms=(1, 64, 512), cold_mib=64, reps=3)
        assert set(r.thresholds) <= set(THRESHOLDS) and "CUDA_INT4_TILED_MAX_M" in r.thresholds
        assert all(m in (0, 1, 64, 512) for m in r.thresholds.values())
        assert load_cuda_tuned() == r.thresholds
        arch = cuda_ops._arch(torch.cuda.current_device())
        for name, m in r.thresholds.items():
            assert getattr(cuda_ops, name)[arch] == m
        assert all(t > 0 for row in r.times_us.values() for ts in row.values() for t in ts)
    finally:
        for name, table in saved.items():
            getattr(cuda_ops, name).clear()
            getattr(cuda_ops, name).update(table)


def test_format_names_paths_ratios_and_crossovers():
    from lowbit.tune_cuda import CudaTuneResult, format_cuda_tune_result

    r = CudaTuneResult("NVIDIA H200", "sm90", "2.11", (4096, 4096), [1, 64], [10.0, 12.0],
                       {"CUDA_INT4_TILED_MAX_M": {"first": [5.0, 40.0], "second": [20.0, 30.0]}},
                       {"CUDA_INT4_TILED_MAX_M": 1}, {"CUDA_INT4_TILED_MAX_M": [64]})
    text = format_cuda_tune_result(r)
    assert "| CUDA_INT4_TILED_MAX_M | first | 5.0 (2.00x) | 40.0 (0.30x) |" in text
    assert "- CUDA_INT4_TILED_MAX_M = 1" in text and "int4_tiled_cuda_mm at M = [64]" in text


def test_every_tuned_threshold_is_a_table_of_ops_cuda():
    assert tuple(THRESHOLDS) == cuda_ops.TUNABLE_THRESHOLDS
    for name in THRESHOLDS:
        assert isinstance(getattr(cuda_ops, name), dict) and cuda_ops._MEASURED_ARCH in getattr(cuda_ops, name)
