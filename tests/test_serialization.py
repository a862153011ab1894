"""Safetensors checkpoints of partly quantized models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file as st_save
from torch import nn

import lowbit
from lowbit import FqnToConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
from lowbit.tensors import Int8DynActTensor, Int8Tensor, LowbitTensor
from lowbit.testing import assert_same_tensor


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Embedding(20, 32),
        nn.Linear(32, 64),
        nn.GELU(),
        nn.LayerNorm(64),
        nn.Linear(64, 48, bias=False),
        nn.Linear(48, 16),
    ).to(dtype)


# Layer 1 weight-only, layer 4 dynamic, layer 5 left float: a mixed state dict.
_PLAN = FqnToConfig({"1": Int8WeightOnlyConfig(), "4": Int8DynamicActivationInt8WeightConfig()})


@pytest.fixture
def saved(tmp_path):
    model = _model()
    quantize_(model, _PLAN)
    path = str(tmp_path / "m.safetensors")
    lowbit.save_file(model, path, metadata={"note": "hello"})
    return model, path


def _read(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _rewrite(path, edit):
    """Rewrite the lowbit metadata of ``path`` through ``edit(info)``."""
    tensors, md = _read(path)
    info = json.loads(md["lowbit"])
    edit(info)
    md["lowbit"] = json.dumps(info)
    st_save(tensors, path, metadata=md)


def test_metadata_names_format_and_version(saved):
    model, path = saved
    tensors, md = _read(path)
    assert md["note"] == "hello"  # user metadata kept
    info = json.loads(md["lowbit"])
    assert set(info["tensors"]) == {"1.weight", "4.weight"}
    for name, cls in [("1.weight", Int8Tensor), ("4.weight", Int8DynActTensor)]:
        spec = info["tensors"][name]
        assert spec["format"] == cls.format_name and spec["version"] == cls.format_version
        assert spec["meta"]["shape"] == list(model.get_submodule(name[0]).weight.shape)
        for field in cls.data_fields:
            assert f"{name}.__{field}" in tensors
    # Plain tensors are stored under their own names, untouched.
    assert torch.equal(tensors["5.weight"], model[5].weight.detach())
    assert "5.weight" not in info["tensors"]


def test_load_into_fresh_float_model_is_bit_exact(saved):
    model, path = saved
    x = torch.randint(0, 20, (3, 7))
    expected = model(x)
    fresh = _model(seed=123)  # different float values everywhere
    assert not torch.equal(fresh(x), expected)
    lowbit.load_into(fresh, path)
    assert type(fresh[1].weight) is Int8Tensor and type(fresh[4].weight) is Int8DynActTensor
    assert not fresh[1].weight.requires_grad
    assert torch.equal(fresh(x), expected)


def test_load_file_mixed_state_dict(saved):
    model, path = saved
    sd = lowbit.load_file(path)
    ref = model.state_dict()
    assert sorted(sd) == sorted(ref)
    for name, t in ref.items():
        if isinstance(t, LowbitTensor):
            assert_same_tensor(sd[name], t)
        else:
            assert not isinstance(sd[name], LowbitTensor)
            assert sd[name].dtype == t.dtype and torch.equal(sd[name], t), name


def test_save_plain_state_dict_dict(tmp_path):
    model = _model(dtype=torch.bfloat16)
    quantize_(model, Int8WeightOnlyConfig())
    path = str(tmp_path / "sd.safetensors")
    lowbit.save_file(dict(model.state_dict()), path)
    sd = lowbit.load_file(path)
    assert_same_tensor(sd["5.weight"], model[5].weight)
    assert sd["5.weight"].dtype == torch.bfloat16  # the float dtype the weight stands for


def test_unknown_format_is_a_clear_error(saved):
    _, path = saved

    def edit(info):
        info["tensors"]["1.weight"]["format"] = "int3_magic"

    _rewrite(path, edit)
    with pytest.raises(ValueError, match=r"'1.weight' has format 'int3_magic', unknown to this lowbit "
                                         r"\(known: \[.*'int8_weight_only'.*\]\); upgrade lowbit"):
        lowbit.load_file(path)


def test_newer_format_version_is_a_clear_error(saved):
    _, path = saved
    newer = Int8DynActTensor.format_version + 1

    def edit(info):
        info["tensors"]["4.weight"]["version"] = newer

    _rewrite(path, edit)
    with pytest.raises(ValueError, match=rf"'4.weight' is int8_dynamic_act_int8_weight v{newer}, this lowbit reads "
                                         rf"up to v{newer - 1}; upgrade lowbit"):
        lowbit.load_file(path)


def test_newer_schema_is_a_clear_error(saved):
    _, path = saved

    def edit(info):
        info["schema"] = 99

    _rewrite(path, edit)
    with pytest.raises(ValueError, match=r"written by a newer lowbit \(schema 99\); upgrade lowbit"):
        lowbit.load_file(path)


def test_missing_packed_field_is_a_clear_error(saved):
    _, path = saved
    tensors, md = _read(path)
    del tensors["1.weight.__scale"]
    st_save(tensors, path, metadata=md)
    with pytest.raises(ValueError, match=r"'1.weight' \(int8_weight_only\) needs tensor '1.weight.__scale'"):
        lowbit.load_file(path)


def test_file_without_lowbit_metadata_loads_as_plain(tmp_path):
    path = str(tmp_path / "plain.safetensors")
    sd = {"w": torch.randn(3, 4)}
    st_save(sd, path)
    out = lowbit.load_file(path)
    assert list(out) == ["w"] and torch.equal(out["w"], sd["w"])


def test_save_rejects_non_state_dict(tmp_path):
    with pytest.raises(TypeError, match="save_file takes a module or a state dict, got list"):
        lowbit.save_file([torch.ones(2)], str(tmp_path / "x.safetensors"))
