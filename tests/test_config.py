"""Configs round-trip through JSON; bad dicts raise clear errors.

The round-trip tests iterate lowbit's config registry, so every config added later is
covered without editing this file.
"""

from __future__ import annotations

import dataclasses
import enum
import json

import pytest
import torch

import lowbit  # noqa: F401  (imports every config module, filling the registry)
from lowbit import FqnToConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, LowbitTensor
from lowbit.config import _CONFIG_CLASSES, BaseConfig, config_from_dict, register_handler

# lowbit's own configs only (tests register throw-away configs in the same registry).
_LOWBIT_CONFIGS = sorted(
    (c for c in _CONFIG_CLASSES.values() if c.__module__.startswith("lowbit.")), key=lambda c: c.__name__
)


def _json_round_trip(d):
    return json.loads(json.dumps(d))


def _variants(cls) -> list[BaseConfig]:
    """The default instance plus, per field, one instance with a different value where
    one can be derived from the default (other enum member, flipped bool, other dtype)."""
    out = [cls()]
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING:
            continue
        d = f.default
        if isinstance(d, enum.Enum):
            others = [m for m in type(d) if m is not d]
        elif isinstance(d, bool):
            others = [not d]
        elif isinstance(d, torch.dtype):
            others = [t for t in (torch.bfloat16, torch.float16, torch.float32) if t != d]
        elif isinstance(d, int):
            others = [d * 2 if d else 1]
        else:
            others = []
        for v in others:
            try:
                out.append(cls(**{f.name: v}))
            except ValueError:  # a value the config rejects in __post_init__
                continue
    return out


def test_registry_has_the_int8_configs():
    assert Int8WeightOnlyConfig in _LOWBIT_CONFIGS and Int8DynamicActivationInt8WeightConfig in _LOWBIT_CONFIGS


_VARIANTS = [cfg for cls in _LOWBIT_CONFIGS for cfg in _variants(cls)]


@pytest.mark.parametrize("cfg", _VARIANTS, ids=[c.short_name() for c in _VARIANTS])
def test_every_config_round_trips_through_json(cfg):
    cls = type(cfg)
    d = cfg.to_dict()
    assert d["type"] == cls.__name__ and d["version"] == cls.version
    back = BaseConfig.from_dict(_json_round_trip(d))
    assert type(back) is cls
    assert back == cfg
    for f in dataclasses.fields(cls):  # same types, not just equal values (str enums)
        assert type(getattr(back, f.name)) is type(getattr(cfg, f.name)), f.name
    assert back.to_dict() == d


@pytest.mark.parametrize("cls", _LOWBIT_CONFIGS, ids=lambda c: c.__name__)
def test_every_config_is_frozen_and_named(cls):
    cfg = cls()
    fields = dataclasses.fields(cls)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, fields[0].name, getattr(cfg, fields[0].name))
    assert cfg.short_name().startswith(cls.__name__.removesuffix("Config"))


# ----------------------------------------------------------------------------- field decoding


class _Kind(str, enum.Enum):
    PLAIN = "plain"
    INT8 = "int8"  # a value that is also a dtype name: must come back as the enum member


@dataclasses.dataclass(frozen=True)
class _RichConfig(BaseConfig):
    kind: _Kind = _Kind.PLAIN
    dtype: torch.dtype = torch.bfloat16
    maybe_dtype: torch.dtype | None = None
    label: str = "x"
    sizes: tuple = (1, 2)
    group_size: int = 128
    flag: bool = False


@pytest.mark.parametrize(
    "cfg",
    [
        _RichConfig(),
        _RichConfig(_Kind.INT8, torch.float16, torch.float32, "int8", (4,), 32, True),
        _RichConfig(label="bfloat16", sizes=()),
    ],
    ids=["defaults", "all-set", "dtype-like-str"],
)
def test_fields_decode_by_their_annotation(cfg):
    back = config_from_dict(_json_round_trip(cfg.to_dict()))
    assert back == cfg
    assert type(back.kind) is _Kind and isinstance(back.label, str) and type(back.sizes) is tuple
    assert back.maybe_dtype is cfg.maybe_dtype


@pytest.mark.parametrize(
    "d,match",
    [
        ({"version": 1}, r"needs a 'type' key naming the config class, got \{'version': 1\}"),
        ("Int8WeightOnlyConfig", r"needs a 'type' key"),
        ({"type": "Int3Config"}, r"unknown config type 'Int3Config'; known: \[.*'Int8WeightOnlyConfig'"),
        ({"type": "Int8WeightOnlyConfig", "group_size": 32}, r"Int8WeightOnlyConfig has no field 'group_size'; fields are \[\]"),
        ({"type": "Int8WeightOnlyConfig", "version": 99}, r"Int8WeightOnlyConfig dict has version 99, this lowbit reads up to 1; upgrade lowbit"),
        ({"type": "_RichConfig", "kind": "int4"}, r"_RichConfig.kind must be one of 'plain', 'int8', got 'int4'"),
        ({"type": "_RichConfig", "dtype": "float99"}, r"_RichConfig.dtype must name a torch dtype .* got 'float99'"),
    ],
    ids=["no-type", "not-a-dict", "unknown-type", "unknown-field", "newer-version", "bad-enum", "bad-dtype"],
)
def test_bad_dicts_raise_clear_errors(d, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(d)


# ----------------------------------------------------------------------------- FqnToConfig


def test_fqn_to_config_round_trips_through_json():
    plan = FqnToConfig({
        "head": Int8WeightOnlyConfig(),
        "layers.0.mlp": None,
        r"re:layers\.\d+\.attn\..*": Int8DynamicActivationInt8WeightConfig(),
        "_default": Int8WeightOnlyConfig(),
    })
    d = plan.to_dict()
    back = FqnToConfig.from_dict(_json_round_trip(d))
    assert back.to_dict() == d
    for fqn in ["head", "layers.0.mlp", "layers.12.attn.q_proj", "layers.1.mlp", "xlayers.1.attn.q"]:
        assert back.config_for(fqn) == plan.config_for(fqn), fqn
    assert back.config_for("layers.0.mlp") is None
    assert type(back.config_for("layers.3.attn.k")) is Int8DynamicActivationInt8WeightConfig


def test_fqn_to_config_from_dict_rejects_bad_entries():
    with pytest.raises(ValueError, match="unknown config type 'Nope'"):
        FqnToConfig.from_dict({"head": {"type": "Nope"}})


def test_registering_a_config_name_twice_raises():
    with pytest.raises(TypeError, match="already registered"):

        @dataclasses.dataclass(frozen=True)
        class Int8WeightOnlyConfig(BaseConfig):  # same name as lowbit's
            pass


def test_registering_a_second_handler_raises():
    with pytest.raises(TypeError, match="already has a handler"):
        register_handler(lowbit.Int8WeightOnlyConfig)(lambda w, c, fqn: w)


def test_registering_a_format_name_twice_raises():
    with pytest.raises(TypeError, match="format_name 'int8_weight_only' is used by both"):

        class _Clash(LowbitTensor):
            data_fields = ("qdata",)
            format_name = "int8_weight_only"
