import time

import pytest
import torch
from torch import nn

import lowbit
from lowbit import autoquant as aq

from aq_fake_timer import assert_choices_follow_timing


class _Sleeper:
    def __init__(self, seconds):
        self.seconds = seconds
        self.calls = 0

    def __call__(self):
        self.calls += 1
        time.sleep(self.seconds)


def _req(best=None, long=False, device="cpu"):
    return aq.TimingRequest("x", (8, 8), (1, 8), torch.float32, torch.device(device), best_so_far=best, long=long)


def test_measure_returns_median_of_runs():
    fn = _Sleeper(0.004)
    t = aq.measure(fn, _req())
    assert 0.004 <= t < 0.1
    # cold + warm-up + at least 3 timed runs, and about the 0.05 s budget of runs
    assert fn.calls >= 5


def test_measure_stops_early_when_hopeless():
    fn = _Sleeper(0.01)
    t = aq.measure(fn, _req(best=0.001))
    assert t >= 0.01
    assert fn.calls == 3  # cold, one warm-up, one timed run


def test_slow_op_skips_warmups():
    fn = _Sleeper(0.06)  # longer than the 0.05 s budget
    aq.measure(fn, _req())
    assert fn.calls == 3  # cold (its own warm-up), two timed runs


def test_long_measurement_runs_longer():
    short, long = _Sleeper(0.002), _Sleeper(0.002)
    aq.measure(short, _req())
    aq.measure(long, _req(long=True))
    assert long.calls > short.calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_measure_cuda_graph():
    w = torch.randn(1024, 1024, device="cuda")
    x = torch.randn(64, 1024, device="cuda")
    t = aq.measure(lambda: x @ w, _req(device="cuda"))
    assert 0 < t < 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_real_run_on_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 512)).to("cuda", torch.bfloat16)
    x = torch.randn(32, 512, device="cuda", dtype=torch.bfloat16)
    plan = lowbit.autoquant(model, (x,), candidates="all")
    assert plan.device.startswith("cuda:")
    rep = plan.report
    assert "plan" in rep.validation and "float" in rep.validation  # the end-to-end check ran
    assert_choices_follow_timing(rep)


def test_device_name_cpu_includes_threads():
    assert aq.device_name("cpu").endswith(f"({torch.get_num_threads()} threads)")


def test_measure_min_statistic_and_validation():
    fn = _Sleeper(0.002)
    t_min = aq.Measure(statistic="min", flush_cache=False)(fn, _req())
    assert 0.002 <= t_min < 0.1
    with pytest.raises(ValueError, match="statistic"):
        aq.Measure(statistic="mean")
