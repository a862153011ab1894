"""autoquant's interleaved re-measure of close calls and its end-to-end check of the plan."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit import autoquant as aq
from lowbit.tensors import Int8Tensor

from aq_fake_timer import FakeTimer

K = 64


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(K, 128, dtype=torch.bfloat16), nn.ReLU(), nn.Linear(128, K, dtype=torch.bfloat16))


def _x(m=4):
    return torch.randn(m, K, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)


class ModelTimer(FakeTimer):
    """FakeTimer that also answers the end-to-end check: seconds per variant name."""

    def __init__(self, table=None, default=1.0, model_times=None):
        super().__init__(table, default)
        self.model_times = dict(model_times or {})
        self.model_calls = []

    def time_model(self, name, fn):
        self.model_calls.append(name)
        return self.model_times.get(name, 1.0)


def test_close_candidates_are_remeasured_interleaved():
    timer = FakeTimer()  # 1.0 s for everything: all candidates are close
    lowbit.autoquant(_model(), (_x(),), candidates="int8", timer=timer)
    long_calls = [r.candidate for r in timer.calls(long=True) if tuple(r.weight_shape) == (128, K)]
    n = len(set(long_calls))
    assert n == 3 and len(long_calls) == 3 * aq.search._REFINE_ROUNDS
    first_round = long_calls[:n]
    assert long_calls == first_round * aq.search._REFINE_ROUNDS  # A, B, C, A, B, C, ...
    assert all(r.share == pytest.approx(1 / aq.search._REFINE_ROUNDS) for r in timer.calls(long=True))


def test_plan_faster_than_float_and_singles_is_kept():
    timer = ModelTimer({("int8_weight_only",): 0.1}, model_times={"float": 2.0, "plan": 1.0, "all int8_weight_only": 1.0})
    plan = lowbit.autoquant(m := _model(), (_x(),), candidates="int8", timer=timer)
    assert {"float", "plan"} <= set(plan.report.validation)
    assert "all int8_weight_only" not in plan.report.validation  # that one is the plan itself
    assert "kept" in plan.report.validation_note and "instead" not in plan.report.validation_note
    assert isinstance(m[0].weight, Int8Tensor)
    # Interleaved: every variant once per round.
    names = list(dict.fromkeys(timer.model_calls))
    assert timer.model_calls[: 2 * len(names)] == names * 2


def test_plan_slower_than_float_end_to_end_keeps_float():
    timer = ModelTimer({("int8_weight_only",): 0.1}, model_times={"float": 1.0, "plan": 1.5})
    m = _model()
    plan = lowbit.autoquant(m, (_x(),), candidates="int8", timer=timer)
    assert "kept float instead" in plan.report.validation_note
    assert all(cfg is None for cfg in plan.exact.values())
    assert not any(isinstance(p, lowbit.LowbitTensor) for p in m.parameters())
    assert set(plan.report.choices.values()) == {"keep"}
    assert "end-to-end check" in plan.report.to_markdown()


def test_plan_more_than_the_tolerance_behind_a_single_config_takes_it():
    # Per layer int8_dynamic looks fastest, but the whole model is faster with all int8_weight_only.
    timer = ModelTimer(
        {("int8_dynamic",): 0.1, ("int8_weight_only",): 0.2},
        model_times={"float": 3.0, "plan": 1.2, "all int8_weight_only": 1.0, "all int8_dynamic": 1.2},
    )
    m = _model()
    plan = lowbit.autoquant(m, (_x(),), candidates="int8", timer=timer, min_sqnr=None)
    assert "all int8_weight_only" in plan.report.validation_note
    assert set(plan.report.choices.values()) == {"int8_weight_only"}
    assert all(type(m[i].weight) is Int8Tensor for i in (0, 2))  # weight-only (Int8DynActTensor is the other)


def test_within_tolerance_of_a_single_config_is_kept():
    timer = ModelTimer(
        {("int8_dynamic",): 0.1, ("int8_weight_only",): 0.2},
        model_times={"float": 3.0, "plan": 1.015, "all int8_weight_only": 1.0},
    )
    plan = lowbit.autoquant(_model(), (_x(),), candidates="int8", timer=timer, min_sqnr=None)
    assert "instead" not in plan.report.validation_note and "within 2%" in plan.report.validation_note
    assert "int8_dynamic" in set(plan.report.choices.values())


def test_plan_3_percent_behind_a_single_config_takes_it():
    # The 2% tolerance (5% until 2026-12-04): 3% behind is no longer kept.
    timer = ModelTimer(
        {("int8_dynamic",): 0.1, ("int8_weight_only",): 0.2},
        model_times={"float": 3.0, "plan": 1.03, "all int8_weight_only": 1.0},
    )
    plan = lowbit.autoquant(_model(), (_x(),), candidates="int8", timer=timer, min_sqnr=None)
    assert "kept all int8_weight_only instead" in plan.report.validation_note


def test_validate_false_and_plain_injected_timers_skip_the_check():
    plan = lowbit.autoquant(_model(), (_x(),), candidates="int8", timer=ModelTimer(), validate=False)
    assert plan.report.validation == {}
    plan = lowbit.autoquant(_model(), (_x(),), candidates="int8", timer=FakeTimer())
    assert plan.report.validation == {}


def test_wall_clock_check_runs_on_a_real_model():
    plan = lowbit.autoquant(_model(), (_x(),), candidates="int8")
    assert {"float", "plan"} <= set(plan.report.validation)
    assert all(v > 0 for v in plan.report.validation.values())
    assert plan.report.validation_note


def test_single_configs_include_the_one_that_passed_on_most_layers():
    # a, b, c passed on 1 layer each (float elsewhere) and sum fastest; d passed on all 30.
    totals = {"a": 10.0, "b": 10.1, "c": 10.2, "d": 11.0}
    coverage = {"a": 1, "b": 1, "c": 2, "d": 30}
    assert aq.search.rank_single_configs(totals, coverage, 3) == ["a", "b", "c", "d"]
    assert aq.search.rank_single_configs(totals, coverage, 4) == ["a", "b", "c", "d"]
    assert aq.search.rank_single_configs({"a": 1.0}, {"a": 5}, 3) == ["a"]
    assert aq.search.rank_single_configs({}, {}, 3) == []


def test_single_configs_include_the_nearly_widest_ones():
    # d passed everywhere (31 layers), e on all but the head (30) but sums slower than a-c,
    # f on 10 (< half of 31): e is replayed, f is not.
    totals = {"a": 10.0, "b": 10.1, "c": 10.2, "d": 11.0, "e": 10.5, "f": 10.3}
    coverage = {"a": 1, "b": 1, "c": 2, "d": 31, "e": 30, "f": 10}
    assert aq.search.rank_single_configs(totals, coverage, 3) == ["a", "b", "c", "d", "e"]
    many = {f"w{i}": 20.0 + i for i in range(6)}
    ranked = aq.search.rank_single_configs({**totals, **many}, {**coverage, **{k: 31 for k in many}}, 3)
    assert ranked[:3] == ["a", "b", "c"] and len(ranked) == 3 + 1 + aq.search._VALIDATE_WIDE_EXTRA


def test_single_config_alternative_keeps_the_plan_where_the_config_failed():
    # int4 passes on "a" only; the plan has int8 on "b". The alternative replayed for int4 is
    # int4 on "a" and the plan's int8 on "b" (not float there), labelled "<name> + plan".
    import types

    from lowbit.autoquant.plan import Plan
    from lowbit.autoquant.report import REJECTED, AutoquantReport, CandidateResult, LayerReport
    from lowbit.autoquant.search import _single_config_plans

    i4, i8 = lowbit.Int4WeightOnlyConfig(group_size=32), lowbit.Int8WeightOnlyConfig()

    def layer(fqn, i4_ok, choice):
        cands = [CandidateResult("keep", None, weighted_time=3.0), CandidateResult("i8", {}, weighted_time=2.0),
                 CandidateResult("i4", {}, weighted_time=1.0 if i4_ok else None, status="ok" if i4_ok else REJECTED)]
        return LayerReport(fqn, (8, 8), "bfloat16", {"M=1 bfloat16": 1}, cands, choice=choice)

    rep = AutoquantReport(layers={"a": layer("a", True, "i8"), "b": layer("b", False, "i8")})
    plan = Plan({"a": i8, "b": i8}, rep)
    session = types.SimpleNamespace(candidates=[types.SimpleNamespace(name="i8", config=i8),
                                                types.SimpleNamespace(name="i4", config=i4)])
    alts = _single_config_plans(session, plan)
    assert set(alts) == {"i4 + plan"}  # "all i8" is the plan itself
    assert alts["i4 + plan"].exact == {"a": i4, "b": i8}
