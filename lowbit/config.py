"""Configs: frozen dataclasses that say what to do to a weight, and their handlers.

Each config class registers one handler, ``handler(weight, config, fqn) -> LowbitTensor``.
The handler raises ``UnsupportedError`` (with the reason) when the format cannot serve
the layer; ``quantize_`` then skips the layer and logs the reason.
Configs round-trip through ``to_dict``/``from_dict`` (JSON-safe) by class name.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from .errors import UnsupportedError

__all__ = ["BaseConfig", "register_handler", "config_from_dict", "handler_for", "from_float_if_supported"]

_CONFIG_CLASSES: dict[str, type[BaseConfig]] = {}
_HANDLERS: dict[type, Callable] = {}


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Base of all configs. Subclasses are ``@dataclass(frozen=True)``.

    ``version`` is the config schema version written by ``to_dict``; ``from_dict``
    refuses a dict written by a newer schema than this lowbit knows.
    """

    version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        other = _CONFIG_CLASSES.get(cls.__name__)
        if other is not None:
            raise TypeError(
                f"config name {cls.__name__!r} is already registered by {other.__module__}.{other.__qualname__}; "
                f"to_dict/from_dict find configs by class name, so give {cls.__module__}.{cls.__qualname__} "
                "another name"
            )
        _CONFIG_CLASSES[cls.__name__] = cls

    def to_dict(self) -> dict[str, Any]:
        d = {"type": type(self).__name__, "version": self.version}
        for f in dataclasses.fields(self):
            d[f.name] = _to_json(getattr(self, f.name))
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> BaseConfig:
        return config_from_dict(d)

    def short_name(self) -> str:
        """Compact human-readable name, e.g. ``Int4WeightOnly(group_size=128)``."""
        args = ", ".join(
            f"{f.name}={_to_json(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        )
        return f"{type(self).__name__.removesuffix('Config')}({args})"


def _to_json(v):
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    if isinstance(v, tuple):
        return list(v)
    return v


def config_from_dict(d: dict[str, Any]) -> BaseConfig:
    """Rebuild a config written by ``to_dict``."""
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"a config dict needs a 'type' key naming the config class, got {d!r}")
    name = d["type"]
    cls = _CONFIG_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown config type {name!r}; known: {sorted(_CONFIG_CLASSES)}")
    version = d.get("version", 1)
    if version > cls.version:
        raise ValueError(
            f"{name} dict has version {version}, this lowbit reads up to {cls.version}; upgrade lowbit"
        )
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError, AttributeError):  # annotations that do not resolve: decode by value
        hints = {}
    for k, v in d.items():
        if k in ("type", "version"):
            continue
        if k not in fields:
            raise ValueError(f"{name} has no field {k!r}; fields are {sorted(fields)}")
        kwargs[k] = _from_json(hints.get(k), v, f"{name}.{k}")
    return cls(**kwargs)


def _from_json(hint, v, where: str):
    """Undo ``_to_json`` using the field's annotation (enum members, dtypes, tuples)."""
    if v is None:
        return None
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for h in typing.get_args(hint) if union else (hint,):
        if isinstance(h, type) and issubclass(h, enum.Enum):
            try:
                return h(v)
            except ValueError:
                choices = ", ".join(repr(m.value) for m in h)
                raise ValueError(f"{where} must be one of {choices}, got {v!r}") from None
        if h is torch.dtype and isinstance(v, str):
            dtype = getattr(torch, v, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"{where} must name a torch dtype (e.g. 'bfloat16'), got {v!r}")
            return dtype
    if hint is None and isinstance(v, str) and v in _DTYPE_NAMES:
        return getattr(torch, v)
    if isinstance(v, list):
        return tuple(v)
    return v


_DTYPE_NAMES = {"float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8", "uint8"}


def register_handler(config_cls: type[BaseConfig]) -> Callable:
    """Register ``fn(weight, config, fqn) -> new weight`` for ``config_cls``."""

    def decorator(fn):
        if config_cls in _HANDLERS:
            raise TypeError(
                f"{config_cls.__name__} already has a handler ({_HANDLERS[config_cls].__qualname__}); "
                "a config registers exactly one"
            )
        _HANDLERS[config_cls] = fn
        return fn

    return decorator


def handler_for(config: BaseConfig) -> Callable:
    for klass in type(config).__mro__:
        if klass in _HANDLERS:
            return _HANDLERS[klass]
    raise TypeError(f"no handler is registered for {type(config).__name__}")


def from_float_if_supported(cls, weight: torch.Tensor, fqn: str | None):
    """``cls.from_float(weight)``, or ``UnsupportedError`` with ``cls.supports``'s reason
    (what a handler of a config without format options does)."""
    reason = cls.supports(weight, weight.device)
    if reason is not None:
        raise UnsupportedError(f"{cls.__name__} cannot serve {fqn or 'this layer'}: {reason}")
    return cls.from_float(weight)
