"""``quantize_``: replace the weights of a model's layers with packed formats, in place."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable

import torch
from torch import nn

from .config import BaseConfig, handler_for
from .errors import UnsupportedError
from .tensors.base import LowbitTensor

__all__ = ["quantize_", "FqnToConfig", "QuantizeReport", "default_filter"]

log = logging.getLogger(__name__)


class FqnToConfig:
    """Per-layer configs: ``{fully qualified name or "re:<regex>": config or None}``.

    Exact names win over regexes; regexes are tried in insertion order and must match the
    whole name; ``"_default"`` applies to layers nothing else matches. A ``None`` config
    keeps that layer as it is.
    """

    def __init__(self, fqn_to_config: dict[str, BaseConfig | None]):
        if not isinstance(fqn_to_config, dict):
            raise TypeError(f"FqnToConfig takes a dict of name -> config, got {type(fqn_to_config).__name__}")
        self.exact: dict[str, BaseConfig | None] = {}
        self.patterns: list[tuple[str, re.Pattern, BaseConfig | None]] = []
        self.default: BaseConfig | None = None
        for key, cfg in fqn_to_config.items():
            if cfg is not None and not isinstance(cfg, BaseConfig):
                raise TypeError(f"FqnToConfig[{key!r}] must be a lowbit config or None, got {type(cfg).__name__}")
            if key == "_default":
                self.default = cfg
            elif key.startswith("re:"):
                try:
                    self.patterns.append((key, re.compile(key[3:]), cfg))
                except re.error as e:
                    raise ValueError(f"FqnToConfig key {key!r} is not a valid regex: {e}") from None
            else:
                self.exact[key] = cfg

    def config_for(self, fqn: str) -> BaseConfig | None:
        if fqn in self.exact:
            return self.exact[fqn]
        for _, pat, cfg in self.patterns:
            if pat.fullmatch(fqn):
                return cfg
        return self.default

    def to_dict(self) -> dict:
        out = {k: (None if v is None else v.to_dict()) for k, v in self.exact.items()}
        out.update({k: (None if v is None else v.to_dict()) for k, _, v in self.patterns})
        if self.default is not None:
            out["_default"] = self.default.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> FqnToConfig:
        return cls({k: (None if v is None else BaseConfig.from_dict(v)) for k, v in d.items()})

    def __repr__(self) -> str:
        n = len(self.exact) + len(self.patterns) + (self.default is not None)
        return f"FqnToConfig({n} entries)"


@dataclasses.dataclass
class QuantizeReport:
    """What ``quantize_`` did: per layer, the new format or the reason it was skipped."""

    quantized: dict[str, str] = dataclasses.field(default_factory=dict)  # fqn -> repr of new weight
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # fqn -> reason
    params_quantized: int = 0
    params_total: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    def __str__(self) -> str:
        return (
            f"quantized {len(self.quantized)} layers ({self.params_quantized:,} of "
            f"{self.params_total:,} parameters), skipped {len(self.skipped)}; "
            f"weights {self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB"
        )


def default_filter(module: nn.Module, fqn: str) -> bool:
    """Layers ``quantize_`` targets by default: ``nn.Linear`` with a float weight."""
    return isinstance(module, nn.Linear) and not isinstance(module.weight, LowbitTensor)


def _tensor_bytes(t: torch.Tensor) -> int:
    if isinstance(t, LowbitTensor):
        return t.nbytes_packed()
    return t.numel() * t.element_size()


def quantize_(
    model: nn.Module,
    config: BaseConfig | FqnToConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    *,
    fuse_projections: bool = False,
) -> QuantizeReport:
    """Quantize the weights of ``model``'s layers in place.

    Args:
        model: the model; changed in place.
        config: one config for every targeted layer, or an ``FqnToConfig`` per layer.
        filter_fn: ``(module, fqn) -> bool`` choosing the layers; default ``nn.Linear``.
        fuse_projections: first fuse q/k/v and gate/up of a Llama-family model
            (``lowbit.fuse_projections``; same codes, fewer linear calls).

    Returns:
        A ``QuantizeReport``: layers quantized, layers skipped with their reasons,
        parameter counts and weight bytes before and after.

    A layer the format cannot serve is skipped with its reason logged (and recorded in
    the report). Every new weight is built before any is swapped in, so on an error the
    model is left exactly as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_ takes an nn.Module, got {type(model).__name__}")
    if not isinstance(config, (BaseConfig, FqnToConfig)):
        raise TypeError(
            f"quantize_ takes a lowbit config or FqnToConfig, got {type(config).__name__}; "
            "e.g. lowbit.Int8WeightOnlyConfig()"
        )
    if isinstance(config, BaseConfig):
        handler_for(config)  # fail before touching anything if no handler exists
    if fuse_projections:
        from .fuse import fuse_projections as _fuse

        _fuse(model)  # output-preserving; raises (model unchanged) on an unknown architecture
    filter_fn = filter_fn or default_filter
    report = QuantizeReport()
    report.params_total = sum(p.numel() for p in model.parameters())
    pending: list[tuple[nn.Module, str, torch.Tensor]] = []
    for fqn, module in model.named_modules():
        if not filter_fn(module, fqn):
            continue
        cfg = config.config_for(fqn) if isinstance(config, FqnToConfig) else config
        if cfg is None:
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            report.skipped[fqn] = "module has no weight tensor"
            continue
        if isinstance(weight, LowbitTensor):
            report.skipped[fqn] = f"already quantized ({type(weight).__name__})"
            log.info("lowbit: skipping %s: %s", fqn, report.skipped[fqn])
            continue
        try:
            with torch.no_grad():
                new = handler_for(cfg)(weight.detach(), cfg, fqn)
        except UnsupportedError as e:
            report.skipped[fqn] = str(e)
            log.info("lowbit: skipping %s: %s", fqn, e)
            continue
        pending.append((module, fqn, new))
    # Every new weight exists: swap them in (nothing above changed the model).
    for module, fqn, new in pending:
        old = module.weight
        report.bytes_before += _tensor_bytes(old)
        report.bytes_after += _tensor_bytes(new)
        report.params_quantized += old.numel()
        module.weight = nn.Parameter(new, requires_grad=False)
        report.quantized[fqn] = repr(new)
    log.info("lowbit: %s", report)
    return report
