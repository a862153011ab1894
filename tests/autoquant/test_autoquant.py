import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit import autoquant as aq
from lowbit.config import BaseConfig, register_handler
from lowbit.errors import UnsupportedError
from lowbit.tensors import FloatCastTensor, Int8DynActTensor, Int8Tensor

from aq_fake_timer import FakeTimer, assert_choices_follow_timing

K = 64


class Block(nn.Module):
    """Three linears; ``c`` runs only when ``use_c`` is set."""

    def __init__(self, dtype=torch.bfloat16, bias=True):
        super().__init__()
        self.a = nn.Linear(K, 128, bias=bias, dtype=dtype)
        self.b = nn.Linear(128, K, bias=bias, dtype=dtype)
        self.c = nn.Linear(K, K, bias=bias, dtype=dtype)
        self.use_c = False

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return self.c(y) if self.use_c else y


def _model(seed=0, dtype=torch.bfloat16):
    torch.manual_seed(seed)
    return Block(dtype)


def _x(m, dtype=torch.bfloat16, seed=1):
    return torch.randn(m, K, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---------------------------------------------------------------------- choices


@pytest.mark.parametrize(
    "fastest,cls",
    [("int8_weight_only", Int8Tensor), ("int8_dynamic", Int8DynActTensor), ("cast_float32", FloatCastTensor), ("keep", torch.Tensor)],
)
def test_choice_follows_timings(fastest, cls):
    m = _model()
    timer = FakeTimer({(fastest,): 0.1}, default=1.0)
    plan = lowbit.autoquant(m, (_x(8),), candidates="default", timer=timer)
    assert plan.report.choices == {"a": fastest, "b": fastest}
    assert type(m.a.weight.data if fastest == "keep" else m.a.weight) is cls or isinstance(m.a.weight, cls)
    expected = None if fastest == "keep" else aq.registered_candidates()[fastest].config
    assert plan.config_for("a") == expected


def test_keep_wins_ties_so_a_layer_never_gets_slower():
    m = _model()
    plan = lowbit.autoquant(m, (_x(8),), timer=FakeTimer(default=1.0))
    assert set(plan.report.choices.values()) == {"keep"}
    assert not isinstance(m.a.weight, lowbit.LowbitTensor)


def test_sqnr_bar_rejects_with_figure_recorded():
    timer = FakeTimer({("int8_weight_only",): 0.1, ("int8_dynamic",): 0.1, ("cast_float32",): 0.5})
    # First the figures with no bar, then a bar between int8's and the fp32 cast's.
    free = lowbit.autoquant(_model(), (_x(8),), timer=timer, min_sqnr=None).report.layers["a"]
    int8_best = max(free.result(n).sqnr for n in ("int8_weight_only", "int8_dynamic"))
    cast = free.result("cast_float32").sqnr
    assert 20 < int8_best < cast
    bar = (int8_best + cast) / 2
    timer = FakeTimer(timer.table)
    lr = lowbit.autoquant(_model(), (_x(8),), timer=timer, min_sqnr=bar).report.layers["a"]
    for name in ("int8_weight_only", "int8_dynamic"):
        res = lr.result(name)
        assert res.status == "rejected"
        assert res.sqnr == pytest.approx(free.result(name).sqnr)
        assert f"{res.sqnr:.1f} dB < min_sqnr {bar:g}" in res.message
    assert lr.choice == "cast_float32"
    assert not timer.calls("int8_weight_only")  # rejected candidates are not timed


def test_sqnr_figure_matches_independent_computation():
    m = _model()
    w, b = m.a.weight.detach().clone(), m.a.bias.detach().clone()
    x = _x(8)
    plan = lowbit.autoquant(m, (x,), timer=FakeTimer(), min_sqnr=None)
    q = Int8Tensor.from_float(w)
    ref = x.float() @ w.float().t() + b.float()
    expected = lowbit.sqnr(ref, F.linear(x, q, b).float())
    assert plan.report.layers["a"].result("int8_weight_only").sqnr == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("n_small,expected", [(1, "int8_dynamic"), (10, "int8_weight_only")])
def test_shape_weighting(n_small, expected):
    m = _model()
    # weight-only: 1 at M=1, 10 at M=32; dynamic: 2 and 3.
    # n_small=1: wo 1+10=11 vs dyn 2+3=5; n_small=10: wo 10+10=20 vs dyn 20+3=23.
    timer = FakeTimer(
        {("int8_weight_only", 1): 1.0, ("int8_weight_only", 32): 10.0, ("int8_dynamic", 1): 2.0, ("int8_dynamic", 32): 3.0},
        default=100.0,
    )
    session = lowbit.autoquant(m, candidates="int8", timer=timer, manual=True)
    for _ in range(n_small):
        m(_x(1))
    m(_x(32))
    plan = m.finalize_autoquant()
    lr = plan.report.layers["a"]
    assert lr.shapes == {"M=1 bfloat16": n_small, "M=32 bfloat16": 1}
    assert lr.choice == expected
    assert lr.result("int8_weight_only").weighted_time == pytest.approx(n_small * 1.0 + 10.0)
    assert session.finalized


def test_manual_mode_two_shapes_and_3d_inputs():
    m = _model()
    timer = FakeTimer()
    lowbit.autoquant(m, timer=timer, manual=True)
    with torch.no_grad():
        m(torch.randn(2, 5, K, dtype=torch.bfloat16))  # 3-D input: M = 2 * 5
        m(_x(3))
        m(_x(3))
    plan = aq.finalize(m)
    assert plan.report.layers["b"].shapes == {"M=3 bfloat16": 2, "M=10 bfloat16": 1}
    assert {r.act_shape for r in timer.requests} == {(3, K), (10, K), (3, 128), (10, 128)}
    assert "finalize_autoquant" not in m.__dict__


# ---------------------------------------------------------------------- refinement / interpolate


def test_second_measurement_only_for_close_candidates():
    m = _model()
    timer = FakeTimer(
        {
            ("keep",): 1.0,
            ("int8_weight_only", 8, "op", False): 0.50,
            ("int8_weight_only", 8, "op", True): 0.60,
            ("int8_dynamic", 8, "op", False): 0.52,  # within 10% of 0.50
            ("int8_dynamic", 8, "op", True): 0.55,
            ("cast_float32",): 2.0,
        }
    )
    plan = lowbit.autoquant(m, (_x(8),), candidates="default", timer=timer)
    assert plan.report.choices["a"] == "int8_dynamic"  # the long measurement decides
    assert {r.candidate for r in timer.calls(long=True)} == {"int8_weight_only", "int8_dynamic"}


@pytest.mark.parametrize("matmul,expect_op_timed", [(0.3, True), (0.9, False)])
def test_interpolate_mode(matmul, expect_op_timed):
    m = _model()
    timer = FakeTimer(
        {("keep",): 1.0, ("int8_weight_only",): 0.8, ("int8_dynamic", 8, "matmul"): matmul, ("int8_dynamic", 8, "op"): 0.7},
        default=5.0,
    )
    plan = lowbit.autoquant(m, (_x(8),), candidates="int8", mode="interpolate", timer=timer)
    res = plan.report.layers["a"].result("int8_dynamic")
    assert bool(timer.calls("int8_dynamic", phase="op")) == expect_op_timed
    if expect_op_timed:
        assert res.times["M=8 bfloat16"] == pytest.approx(0.85 * 0.3 + 0.15 * 0.7)
        assert plan.report.choices["a"] == "int8_dynamic"
    else:
        assert res.times["M=8 bfloat16"] == pytest.approx(0.9)
        assert plan.report.choices["a"] == "int8_weight_only"
        assert "op not timed" in plan.report.to_markdown()


def test_op_mode_ignores_matmul_only():
    m = _model()
    timer = FakeTimer()
    lowbit.autoquant(m, (_x(8),), candidates="int8", mode=aq.Mode.OP, timer=timer)
    assert not timer.calls(phase="matmul")


# ---------------------------------------------------------------------- caching


def test_identical_benchmarks_run_once_across_layers():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(K, K, dtype=torch.bfloat16) for _ in range(3)])
    timer = FakeTimer()
    plan = lowbit.autoquant(model, (_x(4),), candidates="int8", timer=timer)
    # 3 layers of one shape: keep + 2 int8 candidates timed once each; the default timer
    # answers 1.0 for all, so all are "close" and get _REFINE_ROUNDS interleaved re-runs each.
    rounds = aq.search._REFINE_ROUNDS
    assert len(timer.calls(long=False)) == 3
    assert len(timer.calls(long=True)) == 3 * rounds
    assert plan.report.cache_hits == 6
    assert plan.report.benchmarks_run == 3 + 3 * rounds


def test_on_disk_cache_skips_measurements(tmp_path):
    path = tmp_path / "cache.json"
    timer1 = FakeTimer({("int8_dynamic",): 0.1})
    lowbit.autoquant(_model(), (_x(8),), timer=timer1, cache=str(path))
    assert timer1.requests and path.exists()
    data = json.loads(path.read_text())
    key = json.loads(next(iter(data["entries"])))
    assert key[0] == aq.device_name("cpu") and key[1] == torch.__version__
    timer2 = FakeTimer()  # would pick keep if asked: a hit must not ask
    cache = aq.BenchmarkCache(path)
    plan = lowbit.autoquant(_model(seed=3), (_x(8),), timer=timer2, cache=cache)
    assert timer2.requests == []
    assert plan.report.benchmarks_run == 0 and plan.report.cache_hits > 0
    assert set(plan.report.choices.values()) == {"int8_dynamic"}


def test_cache_key_separates_shapes_dtypes_and_configs():
    dev = torch.device("cpu")
    base = dict(device=dev, weight_shape=(8, 8), weight_dtype=torch.bfloat16, has_bias=True, act_shape=(1, 8), act_dtype=torch.bfloat16, config_key="a", mode="op")
    k0 = aq.BenchmarkCache.key(**base)
    for field, value in [("weight_shape", (8, 16)), ("act_shape", (2, 8)), ("act_dtype", torch.float32), ("config_key", "b"), ("mode", "interpolate"), ("has_bias", False)]:
        assert aq.BenchmarkCache.key(**{**base, field: value}) != k0, field


def test_corrupt_cache_file_raises_clear_error(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        aq.BenchmarkCache(p)


# ---------------------------------------------------------------------- errors


@dataclasses.dataclass(frozen=True)
class _BrokenConfig(BaseConfig):
    kind: str = "unsupported"


@register_handler(_BrokenConfig)
def _broken(weight, config, fqn):
    if config.kind == "unsupported":
        raise UnsupportedError("needs a GPU with feature X, got none")
    if config.kind == "op_error":
        return Int8Tensor.from_float(weight).t()  # F.linear on a transposed weight: UnsupportedOpError
    raise RuntimeError("a bug in a format")


@pytest.fixture
def broken_candidates():
    names = []
    for kind in ("unsupported", "op_error", "bug"):
        aq.register_candidate(f"broken_{kind}", _BrokenConfig(kind), sets=(f"broken_{kind}",))
        names.append(f"broken_{kind}")
    yield names
    for n in names:
        aq.unregister_candidate(n)


def test_failing_candidates_recorded_and_excluded(broken_candidates):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K, K, dtype=torch.bfloat16))
    timer = FakeTimer({("broken_unsupported",): 0.01, ("broken_op_error",): 0.01})
    plan = lowbit.autoquant(model, (_x(4),), candidates=["int8", "broken_unsupported", "broken_op_error"], timer=timer)
    lr = plan.report.layers["0"]
    u, o = lr.result("broken_unsupported"), lr.result("broken_op_error")
    assert (u.status, u.error_type) == ("unsupported", "UnsupportedError")
    assert "feature X" in u.message
    assert (o.status, o.error_type) == ("error", "UnsupportedOpError")
    assert "untransposed" in o.message
    assert lr.choice not in ("broken_unsupported", "broken_op_error")
    assert list(plan.report.errors) == ["0"]
    md = plan.report.to_markdown()
    assert "UnsupportedOpError" in md and "feature X" in md


def test_other_errors_propagate_with_context_and_model_is_unchanged(broken_candidates):
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match="a bug in a format") as ei:
        lowbit.autoquant(m, (_x(4),), candidates=["broken_bug"], timer=FakeTimer())
    assert any("broken_bug" in n for n in ei.value.__notes__)
    for k, v in m.state_dict().items():
        assert type(v) is torch.Tensor and torch.equal(v, before[k])


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"mode": "fast"}, ValueError, "mode must be one of"),
        ({"candidates": "int3"}, ValueError, "unknown autoquant candidate"),
        ({"min_sqnr": "30"}, TypeError, "min_sqnr"),
        ({"unrun": "ignore"}, ValueError, "unrun"),
        ({"interpolation": 2.0}, ValueError, "interpolation"),
        ({"cache": 3}, TypeError, "cache"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    m = _model()
    with pytest.raises(exc, match=match):
        lowbit.autoquant(m, (_x(2),), timer=FakeTimer(), **kwargs)
    assert "_lowbit_autoquant" not in m.__dict__
    assert not m.a._forward_pre_hooks


def test_needs_inputs_or_manual_and_no_double_start():
    m = _model()
    with pytest.raises(ValueError, match="example_inputs"):
        lowbit.autoquant(m)
    lowbit.autoquant(m, manual=True, timer=FakeTimer())
    with pytest.raises(ValueError, match="already being autoquantized"):
        lowbit.autoquant(m, manual=True)
    with pytest.raises(ValueError, match="no autoquant in progress"):
        aq.finalize(_model())


def test_register_candidate_validation():
    with pytest.raises(ValueError, match="already registered"):
        aq.register_candidate("int8_dynamic", lowbit.Int8DynamicActivationInt8WeightConfig(), sets=("int8",))
    with pytest.raises(TypeError, match="tuple of set names"):
        aq.register_candidate("x", lowbit.Int8WeightOnlyConfig(), sets="int8")
    with pytest.raises(ValueError, match="other than 'keep'"):
        aq.register_candidate("keep", lowbit.Int8WeightOnlyConfig())


@pytest.mark.parametrize(
    "spec,names",
    [
        ("int8", ["keep", "int8_weight_only", "int8_dynamic"]),
        ("float", ["keep", "cast_float32", "cast_bfloat16", "cast_float16"]),
        (["int8_dynamic", "cast_float32"], ["keep", "int8_dynamic", "cast_float32"]),
    ],
)
def test_candidate_sets(spec, names):
    assert [c.name for c in aq.resolve_candidates(spec)] == names


# ---------------------------------------------------------------------- layers


def test_never_run_layer_kept_float_and_listed():
    m = _model()
    plan = lowbit.autoquant(m, (_x(4),), timer=FakeTimer({("int8_weight_only",): 0.1}))
    assert plan.report.never_run == ["c"]
    assert "c" not in plan.report.layers and plan.config_for("c") is None
    assert type(m.c.weight) is nn.Parameter and not isinstance(m.c.weight, lowbit.LowbitTensor)
    assert isinstance(m.a.weight, Int8Tensor)
    assert "never run during calibration" in plan.report.to_markdown()


def test_never_run_layer_raises_when_asked():
    m = _model()
    with pytest.raises(ValueError, match=r"never ran during calibration: \['c'\]"):
        lowbit.autoquant(m, (_x(4),), timer=FakeTimer(), unrun="raise")
    assert not isinstance(m.a.weight, lowbit.LowbitTensor)
    m.use_c = True  # the session stays open: run more, then finalize
    m(_x(4))
    plan = m.finalize_autoquant()
    assert plan.report.never_run == []


def test_ineligible_layers_listed():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(K, K, dtype=torch.bfloat16)
            self.f = nn.Linear(K, K, dtype=torch.bfloat16)
            self.conv = nn.Conv1d(K, K, 1, dtype=torch.bfloat16)
            self.emb = nn.Embedding(10, K, dtype=torch.bfloat16)

        def forward(self, x):
            return self.f(self.q(x)) + self.conv(x.unsqueeze(-1)).squeeze(-1)

    m = Mixed()
    lowbit.quantize_(m, lowbit.Int8WeightOnlyConfig(), filter_fn=lambda mod, fqn: fqn == "q")
    plan = lowbit.autoquant(
        m, (_x(4),), timer=FakeTimer(), filter_fn=lambda mod, fqn: isinstance(mod, (nn.Linear, nn.Conv1d))
    )
    assert "already quantized (Int8Tensor)" in plan.report.ineligible["q"]
    assert "2-D weight, got 3-D" in plan.report.ineligible["conv"]
    assert list(plan.report.layers) == ["f"]


def test_float32_model_float_candidates():
    m = _model(dtype=torch.float32)
    plan = lowbit.autoquant(m, (_x(4, torch.float32),), candidates="float", timer=FakeTimer({("cast_bfloat16",): 0.1}))
    lr = plan.report.layers["a"]
    assert lr.result("cast_float32").status == "unsupported"  # already float32
    assert lr.choice == "cast_bfloat16"
    assert isinstance(m.a.weight, FloatCastTensor) and m.a.weight.weight.dtype == torch.bfloat16
    assert m(_x(4, torch.float32)).dtype == torch.float32


# ---------------------------------------------------------------------- plan


def test_plan_save_load_apply_round_trip(tmp_path):
    m = _model()
    fresh = copy.deepcopy(m)
    # a (128x64) -> int8_dynamic, b (64x128) -> cast_float32, c never runs -> keep
    timer = FakeTimer({("int8_dynamic", (128, K)): 0.1, ("cast_float32", (K, 128)): 0.1})
    plan = lowbit.autoquant(m, (_x(8),), timer=timer)
    assert plan.report.choices == {"a": "int8_dynamic", "b": "cast_float32"}
    path = tmp_path / "plan.json"
    plan.save(path)
    saved = json.loads(path.read_text())
    assert saved["device"] == aq.device_name("cpu")
    assert saved["torch"] == torch.__version__ and saved["lowbit"] == lowbit.__version__
    loaded = aq.Plan.load(path)
    assert isinstance(loaded, lowbit.FqnToConfig)
    assert loaded.to_dict() == plan.to_dict()
    assert loaded.report.to_markdown() == plan.report.to_markdown()
    rep = lowbit.quantize_(fresh, loaded)
    assert set(rep.quantized) == {fqn for fqn, c in plan.exact.items() if c is not None}
    for name in ("a", "b", "c"):
        assert type(getattr(fresh, name).weight) is type(getattr(m, name).weight)
    x = _x(8)
    assert torch.equal(fresh(x), m(x))


def test_plan_applies_to_a_compiled_model(tmp_path):
    m = _model()
    fresh = copy.deepcopy(m)
    plan = lowbit.autoquant(m, (_x(8),), timer=FakeTimer({("int8_weight_only",): 0.1}))
    compiled = torch.compile(fresh, backend="eager")
    lowbit.quantize_(compiled, plan)
    assert isinstance(fresh.a.weight, Int8Tensor)


def test_plan_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "something"}))
    with pytest.raises(ValueError, match="not a lowbit autoquant plan"):
        aq.Plan.load(p)


# ---------------------------------------------------------------------- compile


@pytest.mark.parametrize("manual", [False, True], ids=["example_inputs", "manual"])
def test_compiled_model(manual):
    m = _model()
    torch._dynamo.reset()
    compiled = torch.compile(m)
    x1, x2 = _x(8), _x(2)
    with torch.no_grad():
        compiled(x1)  # compiled before autoquant
        timer = FakeTimer({("int8_weight_only",): 0.1})
        if manual:
            lowbit.autoquant(compiled, timer=timer, manual=True)
            compiled(x1)
            compiled(x2)
            plan = compiled.finalize_autoquant()
            assert plan.report.layers["a"].shapes == {"M=2 bfloat16": 1, "M=8 bfloat16": 1}
        else:
            plan = lowbit.autoquant(compiled, (x1,), timer=timer)
        assert isinstance(m.a.weight, Int8Tensor)
        eager = m(x1)
        out = compiled(x1)  # recompiles with the quantized weights
    assert set(plan.report.choices.values()) == {"int8_weight_only"}
    assert compiled.forward != m.__call__  # the compiled forward is back
    assert torch.allclose(out.float(), eager.float(), rtol=1e-2, atol=1e-2)
    assert lowbit.sqnr(eager.float(), out.float()) > 45  # float weights would give ~42 dB


# ---------------------------------------------------------------------- report


def test_report_markdown_lists_every_candidate_and_reason():
    m = _model()
    plan = lowbit.autoquant(m, (_x(8),), timer=FakeTimer({("int8_weight_only",): 0.25}))
    md = plan.report.to_markdown()
    assert md.count("\n## ") == 2
    for name in ("keep", "int8_weight_only", "int8_dynamic", "cast_float32", "cast_bfloat16"):
        assert f"| {name} |" in md
    assert "4.00x faster than keep" in md
    assert "M=8 bfloat16 (1)" in md


def test_progress_is_logged(caplog):
    m = _model()
    with caplog.at_level("INFO", logger="lowbit.autoquant"):
        lowbit.autoquant(m, (_x(8),), timer=FakeTimer())
    assert "[1/2] a -> keep" in caplog.text and "[2/2] b -> keep" in caplog.text


# ---------------------------------------------------------------------- real timing


def test_real_run_on_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512, dtype=torch.bfloat16), nn.GELU(), nn.Linear(512, 256, dtype=torch.bfloat16))
    x = torch.randn(16, 256, dtype=torch.bfloat16)
    ref = model(x).float()
    plan = lowbit.autoquant(model, (x,), candidates="default")
    rep = plan.report
    assert set(rep.layers) == {"0", "2"}
    for lr in rep.layers.values():
        timed = [c for c in lr.candidates if c.weighted_time is not None]
        assert lr.result("keep") in timed
        for c in timed:
            assert c.times["M=16 bfloat16"] > 0 and math.isfinite(c.times["M=16 bfloat16"])
    assert_choices_follow_timing(rep)
    with torch.no_grad():
        out = model(x).float()
    assert lowbit.sqnr(ref, out) > 25  # each layer passed the 30 dB bar; two stacked


def test_plan_from_another_device_loads_with_a_warning(tmp_path, caplog):
    plan = lowbit.autoquant(_model(), (_x(8),), timer=FakeTimer({("int8_weight_only",): 0.1}))
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    data["device"] = "cpu:Some Other CPU (64 threads)"
    path.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="lowbit.autoquant"):
        loaded = aq.Plan.load(path)
    assert "Some Other CPU" in caplog.text
    assert loaded.config_for("a") == lowbit.Int8WeightOnlyConfig()


def test_apply_false_leaves_model_unchanged():
    m = _model()
    plan = lowbit.autoquant(m, (_x(8),), timer=FakeTimer({("int8_weight_only",): 0.1}), apply=False)
    assert plan.config_for("a") == lowbit.Int8WeightOnlyConfig()
    assert not isinstance(m.a.weight, lowbit.LowbitTensor)
    assert not m.a._forward_pre_hooks and "finalize_autoquant" not in m.__dict__


@pytest.mark.parametrize("record", [True, False], ids=["recorded", "random"])
def test_sqnr_on_recorded_or_random_activations(record):
    m = _model()
    # Activations with a large offset: SQNR of int8 dynamic differs from random normal ones.
    x = _x(8) * 0.1 + 3.0
    plan = lowbit.autoquant(m, (x,), timer=FakeTimer(), record_activations=record, min_sqnr=None)
    w, b = _model().a.weight.detach(), _model().a.bias.detach()
    xs = x if record else aq.accuracy.make_activation((8, K), torch.bfloat16, "cpu")
    q = Int8DynActTensor.from_float(w)
    expected = lowbit.sqnr(xs.float() @ w.float().t() + b.float(), F.linear(xs, q, b).float())
    assert plan.report.layers["a"].result("int8_dynamic").sqnr == pytest.approx(expected, abs=1e-6)


def test_progress_bar_option():
    pytest.importorskip("tqdm")
    plan = lowbit.autoquant(_model(), (_x(8),), timer=FakeTimer(), progress=True)
    assert len(plan.report.layers) == 2


def test_finalize_twice_says_it_is_finalized():
    model = _model()
    session = lowbit.autoquant(model, manual=True, timer=FakeTimer({("int8_weight_only",): 0.1}))
    model(_x(8))
    model.finalize_autoquant()
    with pytest.raises(ValueError, match="already finalized"):
        model.finalize_autoquant()
    with pytest.raises(ValueError, match="already finalized"):
        session.finalize()
    assert not any(isinstance(v, aq.AutoquantSession) for v in vars(model).values())  # session not kept alive
