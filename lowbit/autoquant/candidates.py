"""The registry of autoquant candidates: named configs grouped into named sets.

A candidate is a config (or ``None``: keep the layer's float weight as it is) with a
stable name and the sets it belongs to. Each format registers its candidates next to its
config (``lowbit/configs/*.py``), so a new format needs one ``register_candidate`` call::

    register_candidate("int4_wo_g128", Int4WeightOnlyConfig(group_size=128), sets=("int4", "all"))

The "keep" candidate (the float weight as it is) is not in any set: autoquant always
adds it, so a layer never ends up slower than it started.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch

from ..config import BaseConfig

__all__ = [
    "Candidate",
    "KEEP",
    "register_candidate",
    "unregister_candidate",
    "registered_candidates",
    "candidate_sets",
    "resolve_candidates",
]

# (quantized weight, activation [M, K]) -> zero-argument function running the matmul alone
# (activation quantization excluded); used by the "interpolate" timing mode.
MatmulOnly = Callable[[torch.Tensor, torch.Tensor], Callable[[], torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One option autoquant may pick for a layer.

    Attributes:
        name: stable identifier (reports, caches and plans use it).
        config: the lowbit config ``quantize_`` applies, or ``None`` for "keep as is".
        sets: names of the candidate sets this candidate belongs to.
        dynamic_activation: True when the format quantizes activations at run time
            (the "interpolate" mode blends its matmul-only and full-op times).
        matmul_only: optional builder of the matmul-alone benchmark for "interpolate".
    """

    name: str
    config: BaseConfig | None
    sets: tuple[str, ...] = ()
    dynamic_activation: bool = False
    matmul_only: MatmulOnly | None = dataclasses.field(default=None, compare=False, repr=False)

    def config_key(self) -> str:
        """Stable text of the config, part of every benchmark cache key."""
        if self.config is None:
            return "keep"
        d = self.config.to_dict()
        return ",".join(f"{k}={d[k]}" for k in sorted(d))


KEEP = Candidate("keep", None, sets=())

_REGISTRY: dict[str, Candidate] = {}


def register_candidate(
    name: str,
    config: BaseConfig,
    sets: Iterable[str] = ("all",),
    *,
    dynamic_activation: bool = False,
    matmul_only: MatmulOnly | None = None,
    replace: bool = False,
) -> Candidate:
    """Add a candidate to the registry (and to the named ``sets``).

    Args:
        name: unique name, e.g. ``"int4_wo_g128"``.
        config: any lowbit config with a registered handler.
        sets: set names, e.g. ``("int4", "all")``; "all" is not implied, name it.
        dynamic_activation: the format quantizes activations at run time.
        matmul_only: builder used by ``mode="interpolate"`` (see ``MatmulOnly``).
        replace: allow overwriting an existing name.

    Returns:
        The registered ``Candidate``.
    """
    if not isinstance(name, str) or not name or name == KEEP.name:
        raise ValueError(f"candidate name must be a non-empty string other than 'keep', got {name!r}")
    if not isinstance(config, BaseConfig):
        raise TypeError(f"candidate {name!r} needs a lowbit config, got {type(config).__name__}")
    if isinstance(sets, str):
        raise TypeError(f"sets must be a tuple of set names, got the string {sets!r}; write ({sets!r},)")
    if name in _REGISTRY and not replace:
        raise ValueError(f"candidate {name!r} is already registered; pass replace=True to overwrite it")
    cand = Candidate(name, config, tuple(sets), dynamic_activation, matmul_only)
    _REGISTRY[name] = cand
    return cand


def unregister_candidate(name: str) -> None:
    """Remove a registered candidate (mostly for tests)."""
    if name not in _REGISTRY:
        raise KeyError(f"no candidate named {name!r}; registered: {sorted(_REGISTRY)}")
    del _REGISTRY[name]


def registered_candidates() -> dict[str, Candidate]:
    """A copy of the registry, in registration order."""
    return dict(_REGISTRY)


def candidate_sets() -> dict[str, list[str]]:
    """``{set name: [candidate names]}`` over the registry."""
    out: dict[str, list[str]] = {}
    for cand in _REGISTRY.values():
        for s in cand.sets:
            out.setdefault(s, []).append(cand.name)
    return out


def resolve_candidates(spec) -> list[Candidate]:
    """Turn a user's ``candidates=`` argument into a list of ``Candidate`` (keep first).

    ``spec`` may be a set name ("default", "int8", "float", "all", ...), a candidate
    name, a ``Candidate``, a config, or a list mixing these. Unknown names raise.
    """
    items = [spec] if isinstance(spec, (str, Candidate, BaseConfig)) else list(spec)
    out: dict[str, Candidate] = {KEEP.name: KEEP}
    sets = candidate_sets()
    for item in items:
        if isinstance(item, Candidate):
            out.setdefault(item.name, item)
        elif isinstance(item, BaseConfig):
            c = Candidate(item.short_name(), item)
            out.setdefault(c.name, c)
        elif isinstance(item, str) and item in sets:
            for n in sets[item]:
                out.setdefault(n, _REGISTRY[n])
        elif isinstance(item, str) and item in _REGISTRY:
            out.setdefault(item, _REGISTRY[item])
        elif item == KEEP.name:
            continue
        else:
            raise ValueError(
                f"unknown autoquant candidate or set {item!r}; sets: {sorted(sets)}, "
                f"candidates: {sorted(_REGISTRY)}; register new ones with "
                f"lowbit.autoquant.register_candidate(name, config, sets=...)"
            )
    return list(out.values())
