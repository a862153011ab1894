"""quantize_, FqnToConfig and QuantizeReport on small models."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import torch
from torch import nn

import lowbit
from lowbit import FqnToConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
from lowbit.config import BaseConfig, register_handler
from lowbit.tensors import Int8DynActTensor, Int8Tensor, LowbitTensor

# ----------------------------------------------------------------------------- test-only configs


@dataclasses.dataclass(frozen=True)
class _PickyConfig(BaseConfig):
    """Test config: int8 weight-only, except layers whose name is in ``unsupported`` (the
    format "cannot serve" them) and in ``broken`` (the handler hits a bug)."""

    unsupported: tuple = ()
    broken: tuple = ()


@register_handler(_PickyConfig)
def _picky_handler(weight, config, fqn):
    if fqn in config.unsupported:
        raise lowbit.UnsupportedError(f"test format cannot serve {fqn}: K={weight.shape[1]} is odd")
    if fqn in config.broken:
        raise RuntimeError(f"handler bug on {fqn}")
    return Int8Tensor.from_float(weight)


@dataclasses.dataclass(frozen=True)
class _ConfigWithoutHandler(BaseConfig):
    pass


# ----------------------------------------------------------------------------- models


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = nn.Linear(d, d)
        self.proj = nn.Linear(d, 2 * d, bias=False)
        self.norm = nn.LayerNorm(2 * d)


class _Net(nn.Module):
    """Nested: embed, blocks.{0,1}.{attn,proj,norm}, head (all names known to the tests)."""

    def __init__(self, d=16):
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.blocks = nn.ModuleList([_Block(d) for _ in range(2)])
        self.head = nn.Linear(2 * d, 8)


_ALL_LINEARS = ["blocks.0.attn", "blocks.0.proj", "blocks.1.attn", "blocks.1.proj", "head"]


def _linears(model) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _quantized_names(model) -> list[str]:
    return sorted(n for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), LowbitTensor))


def _snapshot(model) -> dict[str, tuple]:
    """Every parameter and buffer: the object, its class and a copy of its values."""
    out = {}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        out[n] = (t, type(t), t.detach().clone())
    return out


def _assert_unchanged(model, snap) -> None:
    now = dict(list(model.named_parameters()) + list(model.named_buffers()))
    assert sorted(now) == sorted(snap)
    for n, (obj, cls, values) in snap.items():
        assert now[n] is obj, f"{n} was replaced"
        assert type(now[n]) is cls, n
        assert torch.equal(now[n].detach(), values), f"{n} changed"


@pytest.fixture
def net():
    torch.manual_seed(0)
    return _Net()


# ----------------------------------------------------------------------------- targeting


def test_default_filter_targets_linear_only(net):
    quantize_(net, Int8WeightOnlyConfig())
    assert _quantized_names(net) == sorted(_ALL_LINEARS)
    assert type(net.embed.weight) is nn.Parameter and not isinstance(net.embed.weight, LowbitTensor)
    assert not isinstance(net.blocks[0].norm.weight, LowbitTensor)
    assert isinstance(net.head.weight, Int8Tensor) and not net.head.weight.requires_grad
    # Biases stay float.
    assert net.head.bias.dtype == torch.float32 and not isinstance(net.head.bias, LowbitTensor)


def test_quantized_model_still_runs_close_to_float(net):
    x = torch.randn(3, 32)
    ref = net.head(x)
    quantize_(net, Int8WeightOnlyConfig())
    assert lowbit.sqnr(ref, net.head(x)) > 30


def test_custom_filter_fn_sees_module_and_fqn(net):
    seen = []

    def only_attn(module, fqn):
        seen.append((type(module).__name__, fqn))
        return isinstance(module, nn.Linear) and fqn.endswith("attn")

    quantize_(net, Int8WeightOnlyConfig(), filter_fn=only_attn)
    assert _quantized_names(net) == ["blocks.0.attn", "blocks.1.attn"]
    assert ("_Net", "") in seen and ("LayerNorm", "blocks.1.norm") in seen  # every module is offered


def test_fqn_exact_names(net):
    quantize_(net, FqnToConfig({"head": Int8WeightOnlyConfig(),
                                "blocks.1.proj": Int8DynamicActivationInt8WeightConfig()}))
    assert _quantized_names(net) == ["blocks.1.proj", "head"]
    assert type(net.head.weight) is Int8Tensor
    assert type(net.blocks[1].proj.weight) is Int8DynActTensor


def test_fqn_regex_must_match_the_whole_name(net):
    # "re:proj" would match inside "blocks.0.proj" with re.search, but not as a full match.
    with pytest.raises(ValueError, match=r"'re:proj' \(closest: 'blocks.1.proj', 'blocks.0.proj'\)"):
        quantize_(net, FqnToConfig({"re:proj": Int8WeightOnlyConfig(), r"re:blocks\.\d\.attn": Int8WeightOnlyConfig()}))
    assert _quantized_names(net) == []
    quantize_(net, FqnToConfig({r"re:blocks\.\d\.attn": Int8WeightOnlyConfig()}))
    assert _quantized_names(net) == ["blocks.0.attn", "blocks.1.attn"]


def test_fqn_default_applies_to_unmatched_layers(net):
    quantize_(net, FqnToConfig({"head": Int8DynamicActivationInt8WeightConfig(),
                                "_default": Int8WeightOnlyConfig()}))
    assert _quantized_names(net) == sorted(_ALL_LINEARS)
    assert type(net.head.weight) is Int8DynActTensor
    assert type(net.blocks[0].attn.weight) is Int8Tensor


def test_fqn_without_default_leaves_unmatched_layers(net):
    quantize_(net, FqnToConfig({"head": Int8WeightOnlyConfig()}))
    assert _quantized_names(net) == ["head"]


def test_fqn_none_skips_and_exact_beats_regex(net):
    # The regex comes first in the dict and matches everything; the exact entry still wins.
    quantize_(net, FqnToConfig({"re:.*": Int8WeightOnlyConfig(), "blocks.0.proj": None, "head": None}))
    assert _quantized_names(net) == ["blocks.0.attn", "blocks.1.attn", "blocks.1.proj"]


def test_fqn_regexes_tried_in_insertion_order(net):
    quantize_(net, FqnToConfig({r"re:blocks\.0\..*": Int8DynamicActivationInt8WeightConfig(),
                                r"re:blocks\..*": Int8WeightOnlyConfig()}))
    assert type(net.blocks[0].attn.weight) is Int8DynActTensor
    assert type(net.blocks[1].attn.weight) is Int8Tensor
    assert not isinstance(net.head.weight, LowbitTensor)


def test_fqn_none_default_skips_everything_else(net):
    quantize_(net, FqnToConfig({"head": Int8WeightOnlyConfig(), "_default": None}))
    assert _quantized_names(net) == ["head"]


# ----------------------------------------------------------------------------- report


def test_report_counts(net):
    lin = _linears(net)
    total = sum(p.numel() for p in net.parameters())
    weight_elems = sum(m.weight.numel() for m in lin.values())
    out_rows = sum(m.weight.shape[0] for m in lin.values())
    report = quantize_(net, Int8WeightOnlyConfig())
    assert report.params_total == total
    assert report.params_quantized == weight_elems
    assert report.bytes_before == 4 * weight_elems  # float32 weights
    assert report.bytes_after == weight_elems + 4 * out_rows  # int8 codes + one fp32 scale per row
    assert sorted(report.quantized) == sorted(_ALL_LINEARS)
    assert "Int8Tensor" in report.quantized["head"]
    assert report.skipped == {}
    text = str(report)
    assert f"quantized {len(_ALL_LINEARS)} layers" in text and f"{weight_elems:,} of {total:,}" in text


def test_report_bf16_weights_count_two_bytes(net):
    net.to(torch.bfloat16)
    weight_elems = sum(m.weight.numel() for m in _linears(net).values())
    report = quantize_(net, Int8WeightOnlyConfig())
    assert report.bytes_before == 2 * weight_elems


def test_unsupported_layer_is_skipped_with_reason(net, caplog):
    cfg = _PickyConfig(unsupported=("blocks.1.proj",))
    with caplog.at_level(logging.INFO, logger="lowbit"):
        report = quantize_(net, cfg)
    assert _quantized_names(net) == sorted(set(_ALL_LINEARS) - {"blocks.1.proj"})
    assert list(report.skipped) == ["blocks.1.proj"]
    assert "test format cannot serve blocks.1.proj" in report.skipped["blocks.1.proj"]
    assert type(net.blocks[1].proj.weight) is nn.Parameter
    assert report.params_quantized == sum(m.weight.numel() for n, m in _linears(net).items() if n != "blocks.1.proj")
    assert any("blocks.1.proj" in r.getMessage() and "cannot serve" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("broken", ["blocks.0.attn", "blocks.1.attn", "head"])
def test_handler_error_leaves_model_unchanged(net, broken):
    """Layers processed before the failing one must not have been swapped either."""
    snap = _snapshot(net)
    x = torch.randint(0, 10, (4,))
    with pytest.raises(RuntimeError, match=f"handler bug on {re.escape(broken)}"):
        quantize_(net, _PickyConfig(broken=(broken,)))
    _assert_unchanged(net, snap)
    assert _quantized_names(net) == []
    assert net.embed(x).shape == (4, 16)


def test_handler_error_with_fqn_config_leaves_model_unchanged(net):
    snap = _snapshot(net)
    cfg = FqnToConfig({"head": _PickyConfig(broken=("head",)), "_default": Int8WeightOnlyConfig()})
    with pytest.raises(RuntimeError, match="handler bug on head"):
        quantize_(net, cfg)
    _assert_unchanged(net, snap)


def test_already_quantized_layers_are_left_alone(net):
    quantize_(net, FqnToConfig({"head": Int8WeightOnlyConfig()}))
    head_weight = net.head.weight
    # Default filter: quantized layers are not targeted again.
    report = quantize_(net, Int8DynamicActivationInt8WeightConfig())
    assert net.head.weight is head_weight and "head" not in report.quantized
    # Nothing float is left: quantizing again is refused, whatever the filter offers.
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(net, FqnToConfig({"head": Int8WeightOnlyConfig()}))
    with pytest.raises(ValueError, match=r"already quantized: 5 targeted layers .*head: already quantized \(Int8Tensor\)|already quantized"):
        quantize_(net, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    assert net.head.weight is head_weight


def test_already_quantized_layer_among_float_ones_is_skipped_with_reason(net):
    quantize_(net, FqnToConfig({"head": Int8WeightOnlyConfig()}))
    report = quantize_(net, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    assert report.skipped["head"] == "already quantized (Int8Tensor)"
    assert len(report.quantized) == len(_ALL_LINEARS) - 1


def test_module_without_weight_is_skipped_with_reason(net):
    with pytest.raises(lowbit.UnsupportedError, match="served none of the 1 layers.*blocks: module has no weight tensor"):
        quantize_(net, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "blocks")
    report = quantize_(net, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in ("blocks", "head"))
    assert report.skipped == {"blocks": "module has no weight tensor"}
    assert _quantized_names(net) == ["head"]


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "model,config,match",
    [
        ("not a model", Int8WeightOnlyConfig(), r"quantize_ takes an nn.Module, got str"),
        (None, Int8WeightOnlyConfig(), r"quantize_ takes an nn.Module, got NoneType"),
        ("NET", "int8", r"quantize_ takes a lowbit config or FqnToConfig, got str; e.g. lowbit.Int8WeightOnlyConfig\(\)"),
        ("NET", {"head": Int8WeightOnlyConfig()}, r"lowbit config or FqnToConfig, got dict"),
        ("NET", Int8WeightOnlyConfig, r"lowbit config or FqnToConfig, got type"),
        ("NET", _ConfigWithoutHandler(), r"no handler is registered for _ConfigWithoutHandler"),
    ],
    ids=["str-model", "none-model", "str-config", "dict-config", "config-class", "no-handler"],
)
def test_bad_arguments_raise_type_error(net, model, config, match):
    snap = _snapshot(net)
    with pytest.raises(TypeError, match=match):
        quantize_(net if model == "NET" else model, config)
    _assert_unchanged(net, snap)


@pytest.mark.parametrize(
    "arg,exc,match",
    [
        ([("head", None)], TypeError, r"FqnToConfig takes a dict of name -> config, got list"),
        ({"head": "int8"}, TypeError, r"FqnToConfig\['head'\] must be a lowbit config or None, got str"),
        ({"re:blocks.(": Int8WeightOnlyConfig()}, ValueError, r"FqnToConfig key 're:blocks.\(' is not a valid regex"),
    ],
    ids=["list", "str-config", "bad-regex"],
)
def test_fqn_to_config_bad_arguments(arg, exc, match):
    with pytest.raises(exc, match=match):
        FqnToConfig(arg)
