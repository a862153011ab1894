"""``quantize_``: replace the weights of a model's layers with packed formats, in place."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import warnings
from collections.abc import Callable

import torch
from torch import nn

from .config import BaseConfig, handler_for
from .errors import UnsupportedError
from .progress import Progress
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
        fqn = self._canonical(fqn)
        if fqn in self.exact:
            return self.exact[fqn]
        for _, pat, cfg in self.patterns:
            if pat.fullmatch(fqn):
                return cfg
        return self.default

    def _canonical(self, fqn: str) -> str:
        """The name keys are matched against (``Plan`` strips torch.compile's prefix)."""
        return fqn

    def unmatched_keys(self, fqns) -> list[str]:
        """Keys (exact names and ``re:`` patterns) that match none of ``fqns``."""
        names = {self._canonical(f) for f in fqns}
        out = [k for k in self.exact if k not in names]
        out += [k for k, pat, _ in self.patterns if not any(pat.fullmatch(n) for n in names)]
        return out

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


def _names_hint(key: str, names: list[str]) -> str:
    probe = key.removeprefix("re:")
    close = difflib.get_close_matches(probe, names, n=3, cutoff=0.4)
    if close:
        return f"closest: {', '.join(repr(c) for c in close)}"
    return f"layer names look like {', '.join(repr(n) for n in names[:4])}" if names else "the model has no such layers"


def _check_keys_match(config: FqnToConfig, names: list[str]) -> None:
    """Raise naming every key or regex of ``config`` that matches no targeted layer."""
    bad = config.unmatched_keys(names)
    if bad:
        detail = "; ".join(f"{k!r} ({_names_hint(k, names)})" for k in bad[:8])
        raise ValueError(
            f"{type(config).__name__} names layers the model does not have (or filter_fn does not "
            f"select): {detail}{' ...' if len(bad) > 8 else ''}. Fix the names (regexes start with "
            f"'re:' and must match the whole name), or drop those entries"
        )


def _check_served(model, config, modules, selected, config_of, pending, report, packed) -> None:
    """Raise when a config served none of the layers it was pointed at (reasons included),
    when the model is already quantized, or when nothing was targeted at all."""
    served = {fqn for _, fqn, _ in pending}
    pointed: dict[str, list[str]] = {}
    names: dict[str, BaseConfig] = {}
    for fqn, _ in modules:
        cfg = config_of(fqn)
        if selected[fqn] and cfg is not None:
            pointed.setdefault(repr(cfg), []).append(fqn)
            names[repr(cfg)] = cfg
    for key, fqns in pointed.items():
        if any(f in served for f in fqns):
            continue
        reasons = [f"{f}: {report.skipped.get(f, 'not quantized')}" for f in fqns]
        if all(report.skipped.get(f, "").startswith("already quantized") for f in fqns):
            raise ValueError(
                f"the model is already quantized: {len(fqns)} targeted layers hold packed weights "
                f"({reasons[0]}); quantize_ a fresh float model, or load a checkpoint with lowbit.load_into"
            )
        raise UnsupportedError(
            f"{names[key].short_name()} served none of the {len(fqns)} layers it was pointed at: "
            + "; ".join(reasons[:6]) + (" ..." if len(reasons) > 6 else "")
            + ". Nothing was changed; choose a format these layers support (lowbit.autoquant "
            "picks one per layer), or point the config at other layers"
        )
    if pointed:
        return
    if packed:
        first = next(iter(packed))
        raise ValueError(
            f"the model is already quantized: {len(packed)} layers hold packed weights (e.g. {first}: "
            f"{packed[first]}) and no float layer is left to quantize; quantize_ a fresh float model"
        )
    if isinstance(config, FqnToConfig) and any(selected.values()):
        return  # every selected layer was mapped to None: nothing asked, nothing done
    if not any(selected.values()):
        if not any(isinstance(m, nn.Linear) for _, m in modules):
            warnings.warn(
                f"lowbit.quantize_: {type(model).__name__} has no nn.Linear layers; nothing to quantize",
                UserWarning,
                stacklevel=3,
            )
            return
        raise ValueError(
            f"filter_fn selected none of the {len(modules)} modules of {type(model).__name__} with a "
            f"float weight; nothing to quantize. Check the filter (it gets (module, fqn))"
        )


def _parameter_holders(modules) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """id(parameter) -> every (module fqn, module, attribute) that holds it (ties show up here)."""
    out: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for fqn, module in modules:
        for attr, p in module._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((fqn, module, attr))
    return out


def _tie_conflict(fqn, module, cfg, holders, selected, config_of) -> str | None:
    """Why quantizing ``module.weight`` would untie it from another holder, or None.

    A shared weight is quantized once, and every holder gets the same new Parameter, only
    when each holder is a layer quantize_ targets with an equal config; otherwise the
    layer is skipped (quantizing it alone would leave the others on a float copy).
    """
    for other_fqn, other, attr in holders:
        if other is module and attr == "weight":
            continue
        where = other_fqn or "the root module"
        kind = f"nn.{type(other).__name__}" if type(other).__module__.startswith("torch.nn") else type(other).__name__
        if attr != "weight":
            return f"weight tied to {where}.{attr} of {kind}, which quantize_ does not replace; kept float so the tie holds"
        if not selected[other_fqn]:
            return f"weight tied to {where}, an {kind} that filter_fn does not select; kept float so the tie holds"
        other_cfg = config_of(other_fqn)
        if other_cfg is None:
            return f"weight tied to {where}, which the config keeps float; kept float so the tie holds"
        if other_cfg != cfg:
            return (
                f"weight tied to {where}, which gets a different config ({other_cfg.short_name()} vs "
                f"{cfg.short_name()}); give both the same config, or None"
            )
    return None


# Weights whose largest magnitude is below this may underflow the formats' minimum scale
# (float32 eps, ~1.2e-7 per code step): they get the dequantize check below.
_TINY_WEIGHT_ABSMAX = 1e-3
# Weight SQNR (dB) under which a layer is reported as flushed: int8/int4 give ~40/~20 dB.
_FLUSH_SQNR_DB = 10.0


def _warn_if_flushed(fqn: str, weight: torch.Tensor, new: torch.Tensor) -> None:
    """Warn when quantization wiped out a tiny-magnitude weight (output ~0 dB SQNR)."""
    if weight.device.type == "meta" or not isinstance(new, LowbitTensor) or weight.numel() == 0:
        return
    amax = float(weight.detach().abs().amax())
    if amax == 0.0 or amax >= _TINY_WEIGHT_ABSMAX:
        return
    from .primitives import sqnr

    s = float(sqnr(weight.detach().float(), new.dequantize(torch.float32)))
    if s < _FLUSH_SQNR_DB:
        warnings.warn(
            f"lowbit.quantize_: layer {fqn!r} has tiny weights (max |w| = {amax:.2g}); "
            f"{type(new).__name__} keeps only {s:.1f} dB of them (most codes flush to zero). "
            f"Rescale the layer, or keep it float with FqnToConfig({{{fqn!r}: None}})",
            UserWarning,
            stacklevel=3,
        )


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
    # model.parameters() yields a shared Parameter once, so tied weights count once.
    report.params_total = sum(p.numel() for p in model.parameters())
    modules = list(model.named_modules())
    selected = {fqn: bool(filter_fn(module, fqn)) for fqn, module in modules}
    holders = _parameter_holders(modules)

    def config_of(fqn: str) -> BaseConfig | None:
        return config.config_for(fqn) if isinstance(config, FqnToConfig) else config

    # Layers already holding packed weights (the default filter does not offer them).
    packed = {fqn: type(m.weight).__name__ for fqn, m in modules
              if isinstance(getattr(m, "weight", None), LowbitTensor) and config_of(fqn) is not None}
    if isinstance(config, FqnToConfig):
        _check_keys_match(config, [f for f, _ in modules if selected[f]] + list(packed))

    # id(old weight) -> the one new Parameter every module sharing that weight gets.
    built: dict[int, nn.Parameter] = {}
    pending: list[tuple[nn.Module, str, int]] = []
    progress = Progress("quantize_", sum(selected.values()))
    for fqn, module in modules:
        if not selected[fqn]:
            continue
        progress.step(fqn)
        cfg = config_of(fqn)
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
        pid = id(weight)
        tie = _tie_conflict(fqn, module, cfg, holders.get(pid, ()), selected, config_of)
        if tie is not None:
            report.skipped[fqn] = tie
            log.info("lowbit: skipping %s: %s", fqn, tie)
            continue
        if pid not in built:
            try:
                with torch.no_grad():
                    new = handler_for(cfg)(weight.detach(), cfg, fqn)
            except UnsupportedError as e:
                report.skipped[fqn] = str(e)
                log.info("lowbit: skipping %s: %s", fqn, e)
                continue
            except (ValueError, TypeError) as e:
                raise type(e)(
                    f"quantizing layer {fqn!r} ({type(module).__name__}, weight {tuple(weight.shape)} "
                    f"{weight.dtype}) with {cfg.short_name()} failed: {e}"
                ) from e
            _warn_if_flushed(fqn, weight, new)
            built[pid] = nn.Parameter(new, requires_grad=False)
        pending.append((module, fqn, pid))
    _check_served(model, config, modules, selected, config_of, pending, report, packed)
    # Every new weight exists: swap them in (nothing above changed the model).
    counted: set[int] = set()
    for module, fqn, pid in pending:
        old, new = module.weight, built[pid]
        if pid not in counted:  # a tied weight is one tensor: count it once
            counted.add(pid)
            report.bytes_before += _tensor_bytes(old)
            report.bytes_after += _tensor_bytes(new)
            report.params_quantized += old.numel()
        module.weight = new
        report.quantized[fqn] = repr(new.data)
    log.info("lowbit: %s", report)
    return report
