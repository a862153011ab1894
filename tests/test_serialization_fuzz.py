"""load_into is all or nothing: a corrupt, truncated or edited checkpoint gives a clear
ValueError and leaves the model exactly as it was, or loads a model that runs."""

import json
import os
import random
import struct

import pytest
import torch
from torch import nn

import lowbit
from lowbit.serialization import CheckpointError
from lowbit.tensors import LowbitTensor


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32), nn.Linear(32, 16)).bfloat16()


def _quantized():
    m = _model()
    lowbit.quantize_(m, lowbit.FqnToConfig({
        "0": lowbit.Int8WeightOnlyConfig(),
        "2": lowbit.Int4WeightOnlyConfig(group_size=32),
        "3": lowbit.Int8DynamicActivationInt8WeightConfig(),
    }))
    return m


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "m.safetensors")
    lowbit.save_file(_quantized(), path)
    with open(path, "rb") as f:
        return f.read()


def _split(blob: bytes):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _join(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def _snapshot(model):
    return {n: (t, t.detach().clone() if not isinstance(t, LowbitTensor) else t.dequantize())
            for n, t in model.state_dict(keep_vars=True).items()}


def _attempt(tmp_path, blob: bytes):
    """load_into a fresh float model: it loads and runs, or raises ValueError leaving it untouched."""
    path = os.path.join(tmp_path, "fuzzed.safetensors")
    with open(path, "wb") as f:
        f.write(blob)
    model = _model()
    snap = _snapshot(model)
    try:
        lowbit.load_into(model, path)
    except ValueError as e:
        assert str(e)  # a message, naming the problem
        now = model.state_dict(keep_vars=True)
        assert list(now) == list(snap)
        for n, (obj, values) in snap.items():
            assert now[n] is obj, f"{n} was replaced although loading failed: {e}"
            assert torch.equal(now[n].detach(), values), n
        return e
    with torch.no_grad():
        y = model(torch.randn(3, 128, dtype=torch.bfloat16))
    assert y.shape == (3, 16)
    return None


@pytest.mark.parametrize("seed", range(12))
def test_flipped_bytes(tmp_path, saved, seed):
    rng = random.Random(seed)
    blob = bytearray(saved)
    for _ in range(1 + seed % 4):
        i = rng.randrange(len(blob)) if seed % 2 else rng.randrange(min(len(blob), 8 + 400))  # data / header
        blob[i] ^= 1 << rng.randrange(8)
    _attempt(tmp_path, bytes(blob))


@pytest.mark.parametrize("keep", [0, 4, 8, 100, 0.5, 0.9, -1], ids=lambda v: f"keep-{v}")
def test_truncated_file(tmp_path, saved, keep):
    n = int(len(saved) * keep) if isinstance(keep, float) else (len(saved) + keep if keep < 0 else keep)
    err = _attempt(tmp_path, saved[:n])
    assert isinstance(err, ValueError) and "safetensors" in str(err)


def _edit(key, fn):
    """Mutator of the lowbit metadata entry (parsed JSON) or of one tensor's spec."""
    def mutate(info):
        if key is None:
            return fn(info)
        fn(info["tensors"][key])
        return info
    return mutate


_EDITS = {
    "drop-tensors-table": _edit(None, lambda i: {"schema": 1}),
    "tensors-is-list": _edit(None, lambda i: {**i, "tensors": []}),
    "schema-string": _edit(None, lambda i: {**i, "schema": "one"}),
    "unknown-format": _edit("0.weight", lambda s: s.update(format="int3_magic")),
    "no-format": _edit("0.weight", lambda s: s.pop("format")),
    "version-string": _edit("0.weight", lambda s: s.update(version="1")),
    "fields-renamed": _edit("0.weight", lambda s: s.update(fields=["codes", "scale"])),
    "fields-not-list": _edit("0.weight", lambda s: s.update(fields=None)),
    "meta-missing": _edit("0.weight", lambda s: s.pop("meta")),
    "meta-shape-edited": _edit("0.weight", lambda s: s["meta"].update(shape=[64, 100])),
    "meta-shape-garbage": _edit("0.weight", lambda s: s["meta"].update(shape="64x128")),
    "meta-dtype-int": _edit("0.weight", lambda s: s["meta"].update(dtype={"dtype": "int8"})),
    "meta-dtype-nonsense": _edit("0.weight", lambda s: s["meta"].update(dtype={"dtype": "bogus"})),
    "meta-extra-key": _edit("0.weight", lambda s: s["meta"].update(colour="red")),
    "int4-group-edited": _edit("2.weight", lambda s: s["meta"].update(group_size=64)),
    "int4-group-string": _edit("2.weight", lambda s: s["meta"].update(group_size="32")),
    "spec-is-string": _edit(None, lambda i: {**i, "tensors": {**i["tensors"], "0.weight": "int8"}}),
    "tied-bogus": _edit(None, lambda i: {**i, "tied": {"9.weight": "nope"}}),
}


@pytest.mark.parametrize("edit", list(_EDITS), ids=list(_EDITS))
def test_edited_metadata(tmp_path, saved, edit):
    header, data = _split(saved)
    info = json.loads(header["__metadata__"]["lowbit"])
    header["__metadata__"]["lowbit"] = json.dumps(_EDITS[edit](info))
    err = _attempt(tmp_path, _join(header, data))
    assert isinstance(err, ValueError), f"{edit}: loaded although the metadata is wrong"
    assert not isinstance(err, (KeyError, TypeError))


def test_metadata_not_json(tmp_path, saved):
    header, data = _split(saved)
    header["__metadata__"]["lowbit"] = "{not json"
    err = _attempt(tmp_path, _join(header, data))
    assert isinstance(err, CheckpointError) and "not valid JSON" in str(err)


def test_wrong_model_is_named_and_untouched(tmp_path, saved):
    path = os.path.join(tmp_path, "m.safetensors")
    with open(path, "wb") as f:
        f.write(saved)
    other = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 48), nn.Linear(48, 16)).bfloat16()
    snap = _snapshot(other)
    with pytest.raises(CheckpointError, match=r"'2.weight': shape \(32, 64\) in the file, \(48, 64\) in the model"):
        lowbit.load_into(other, path)
    assert all(other.state_dict(keep_vars=True)[n] is obj for n, (obj, _) in snap.items())
    renamed = nn.Sequential()
    for i, mod in enumerate(_model()):
        renamed.add_module(f"layer{i}", mod)
    with pytest.raises(CheckpointError, match=r"missing 'layer0.weight'.*unexpected '0.weight'"):
        lowbit.load_into(renamed, path)


def test_untouched_file_loads_exactly(tmp_path, saved):
    assert _attempt(tmp_path, saved) is None
