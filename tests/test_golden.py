"""Golden checkpoints (tests/golden/, written by make_golden.py): every format in the registry
keeps loading to the same bits; version bumps keep old files loading (converter + upgrade)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file as st_load

import lowbit
from lowbit import cli, serialization
from lowbit.serialization import NewerFormatError
from lowbit.tensors.base import format_registry

GOLDEN = Path(__file__).parent / "golden"
_spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)


def _load_stored(path) -> dict:
    """A golden file's tensors as stored (packed ones rebuilt without repacking for a device)."""
    raw, md = serialization._read_safetensors(path)
    return serialization.unflatten_state_dict(raw, md, device=None, path=path)


def _load(name, version=None):
    cls = format_registry[name]
    stem = f"{cls.format_name}_v{version or cls.format_version}"
    ckpt, exp = GOLDEN / f"{stem}.safetensors", GOLDEN / f"{stem}.expected.safetensors"
    if not ckpt.is_file() or not exp.is_file():
        pytest.fail(f"no golden checkpoint for {name} v{cls.format_version}: run python tests/golden/make_golden.py {name}")
    sd = _load_stored(ckpt)
    rebuild = make_golden.BUILDERS[name][1]
    w = rebuild(sd["w"]) if rebuild is not None else sd["w"]
    if name == "int4_plain":  # the portable form loads as the device's layout; check that path too
        assert type(lowbit.load_file(str(ckpt), "cpu")["w"]).__name__ == "Int4TinygemmCpuTensor"
    with safe_open(str(exp), "pt") as f:
        md = f.metadata()
    return w, sd["x"], st_load(str(exp)), md


@pytest.mark.parametrize("name", sorted(format_registry))
def test_golden_checkpoint_loads_bit_for_bit(name):
    w, x, expected, md = _load(name)
    assert type(w) is format_registry[name]
    got = make_golden.expected_of(name, w, x)
    stored = {k: v for k, v in got.items() if k != "y"}
    assert stored.keys() == {k for k in expected if k != "y"}
    for k, v in stored.items():
        assert v.dtype == expected[k].dtype and torch.equal(v, expected[k]), f"{name}: {k} changed"
    assert make_golden.digest(w.dequantize()) == md["dequantized_sha256"], f"{name}: dequantized weight changed"
    # The output: CPU kernels accumulate in a CPU-dependent order (AVX2 vs AVX512), so
    # the output check allows rounding; the stored codes and the dequantized weight above are exact.
    torch.testing.assert_close(got["y"].float(), expected["y"].float(), rtol=2e-2, atol=2e-2 * expected["y"].abs().max().item())


@pytest.mark.parametrize("name", ["int4_tiled_cuda", "int4_marlin", "int4_xpu", "int4_xpu_float_zp"])
def test_device_only_formats_reference_output_matches_golden(name):
    # These kernels run on CUDA/XPU only; on CPU their unpacked codes must give the
    # reference output that the golden file recorded.
    w, x, expected, _ = _load(name)
    y = F.linear(x.float(), w.dequantize().float()).to(x.dtype)
    torch.testing.assert_close(y, expected["y"], rtol=0, atol=1e-2 * expected["y"].abs().max().item())


def test_every_golden_file_records_lowbit_and_format_versions():
    for cls in format_registry.values():
        with safe_open(str(GOLDEN / f"{make_golden.file_stem(cls)}.safetensors"), "pt") as f:
            info = json.loads(f.metadata()["lowbit"])
        assert info["lowbit_version"]
        spec = info["tensors"]["w"]
        assert spec["format"] and spec["version"] >= 1


# ---------------------------------------------------------------------- a synthetic version bump


@pytest.fixture()
def int8_bumped_to_v2(monkeypatch):
    """Pretend Int8Tensor's format became v2 (scale stored as [N] instead of [N, 1])."""
    cls = format_registry["int8_weight_only"]
    monkeypatch.setattr(cls, "format_version", 2)
    monkeypatch.setattr(serialization, "_CONVERTERS", dict(serialization._CONVERTERS))
    calls = []

    @serialization.register_format_converter("int8_weight_only", 1)
    def _v1_to_v2(data, meta):
        calls.append(1)
        return data, meta  # the v2 layout of this synthetic bump stores the same tensors

    return calls


def test_old_version_loads_through_the_converter(int8_bumped_to_v2):
    w, _, expected, _ = _load("int8_weight_only", version=1)
    assert int8_bumped_to_v2 == [1]
    assert torch.equal(w.qdata, expected["field.qdata"])


def test_lowbit_upgrade_rewrites_old_versions(int8_bumped_to_v2, tmp_path, capsys):
    path = tmp_path / "old.safetensors"
    shutil.copy(GOLDEN / "int8_weight_only_v1.safetensors", path)
    assert cli.main(["upgrade", str(path)]) == 0
    assert "upgraded 1 tensors (w)" in capsys.readouterr().out
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["lowbit"])["tensors"]["w"]["version"] == 2
    int8_bumped_to_v2.clear()
    sd = lowbit.load_file(str(path))
    assert int8_bumped_to_v2 == []  # already v2: no conversion on load
    assert torch.equal(sd["w"].qdata, st_load(str(GOLDEN / "int8_weight_only_v1.expected.safetensors"))["field.qdata"])
    assert cli.main(["upgrade", str(path)]) == 0
    assert "already current" in capsys.readouterr().out


def test_missing_converter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(format_registry["int8_weight_only"], "format_version", 2)
    with pytest.raises(serialization.CheckpointError, match=r"'w' is int8_weight_only v1 and this lowbit has no converter to v2"):
        lowbit.load_file(str(GOLDEN / "int8_weight_only_v1.safetensors"))


def test_newer_version_than_this_lowbit_is_a_named_error(tmp_path):
    from safetensors.torch import save_file

    src = GOLDEN / "int8_weight_only_v1.safetensors"
    with safe_open(str(src), "pt") as f:
        md = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(md["lowbit"])
    info["tensors"]["w"]["version"] = 3
    info["lowbit_version"] = "0.9.0"
    md["lowbit"] = json.dumps(info)
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata=md)
    with pytest.raises(NewerFormatError, match=r"'w' is int8_weight_only v3, this lowbit reads up to v1; upgrade lowbit to 0.9.0"):
        lowbit.load_file(str(tmp_path / "new.safetensors"))
    assert cli.main(["upgrade", str(tmp_path / "new.safetensors")]) == 1  # upgrade refuses too


@pytest.mark.parametrize("offset", [1, 4, 8], ids=lambda o: f"offset{o * 2}B")
@pytest.mark.parametrize("name", ["int8_weight_only", "int8_dynamic_act_int8_weight"])
def test_int8_cpu_linear_takes_misaligned_activations(name, offset):
    # ATen's int8 GEMV crashed on activations not 32-byte aligned (as read from a file).
    w, _, _, _ = _load(name)
    buf = make_golden.golden_input().reshape(-1)
    x = torch.cat([buf[:offset], buf])[offset:].view(3, -1)
    assert x.data_ptr() % 32 != 0
    assert torch.equal(F.linear(x, w), F.linear(x.clone(), w))
