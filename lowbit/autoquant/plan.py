"""``Plan``: autoquant's decisions as an ordinary ``FqnToConfig``, savable as JSON.

``quantize_(model, Plan.load(path))`` re-applies a saved plan with no benchmarking.
"""

from __future__ import annotations

import json
import logging
import os

from ..api import FqnToConfig
from ..config import BaseConfig
from .report import AutoquantReport

__all__ = ["Plan"]

log = logging.getLogger(__name__)

_FORMAT = "lowbit-autoquant-plan"
_VERSION = 1
# torch.compile wraps a model in an OptimizedModule whose submodule names start with this.
_COMPILED_PREFIX = "_orig_mod."


class Plan(FqnToConfig):
    """Per-layer configs chosen by autoquant (``None``: keep the float weight).

    An ``FqnToConfig``, so ``lowbit.quantize_(model, plan)`` applies it. Names also match
    on a ``torch.compile``-wrapped model (the ``_orig_mod.`` prefix is ignored).

    Attributes:
        report: the ``AutoquantReport`` of the run that made the plan (or None).
        device, torch_version, lowbit_version: where the timings were taken.
    """

    def __init__(
        self,
        fqn_to_config: dict[str, BaseConfig | None],
        report: AutoquantReport | None = None,
        device: str = "",
        torch_version: str = "",
        lowbit_version: str = "",
    ):
        super().__init__(fqn_to_config)
        self.report = report
        self.device = device
        self.torch_version = torch_version
        self.lowbit_version = lowbit_version

    def _canonical(self, fqn: str) -> str:
        if fqn.startswith(_COMPILED_PREFIX) and fqn not in self.exact:
            return fqn[len(_COMPILED_PREFIX):]
        return fqn

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan (and its report) to a JSON file."""
        data = {
            "format": _FORMAT,
            "version": _VERSION,
            "device": self.device,
            "torch": self.torch_version,
            "lowbit": self.lowbit_version,
            "plan": self.to_dict(),
            "report": None if self.report is None else self.report.to_dict(),
        }
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
        log.info("lowbit.autoquant: saved plan for %d layers to %s", len(self.exact), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan written by ``save``.

        A plan measured on another device or torch version still loads (its configs are
        valid anywhere they are supported); the difference is logged as a warning, since
        its choices were fastest *there*.
        """
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not a lowbit autoquant plan: invalid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a lowbit autoquant plan (expected format {_FORMAT!r})")
        if data.get("version", 0) > _VERSION:
            raise ValueError(
                f"plan {path} has version {data['version']}, this lowbit reads up to {_VERSION}; upgrade lowbit"
            )
        base = FqnToConfig.from_dict(data["plan"])
        configs = dict(base.exact)
        configs.update({k: v for k, _, v in base.patterns})
        if base.default is not None:
            configs["_default"] = base.default
        report = None if data.get("report") is None else AutoquantReport.from_dict(data["report"])
        plan = cls(configs, report, data.get("device", ""), data.get("torch", ""), data.get("lowbit", ""))
        _warn_if_elsewhere(plan, path)
        return plan

    def __repr__(self) -> str:
        n_q = sum(c is not None for c in self.exact.values())
        return f"Plan({len(self.exact)} layers, {n_q} quantized; measured on {self.device or 'unknown device'})"


def _warn_if_elsewhere(plan: Plan, path) -> None:
    import torch

    from .bench import device_name

    if plan.torch_version and plan.torch_version != torch.__version__:
        log.warning(
            "lowbit.autoquant: plan %s was measured with torch %s, this is torch %s; "
            "its choices may no longer be the fastest", path, plan.torch_version, torch.__version__,
        )
    here = device_name("cpu") if plan.device.startswith("cpu:") else None
    if plan.device.startswith("cuda:") and torch.cuda.is_available():
        here = device_name("cuda")
    if here is not None and here != plan.device:
        log.warning(
            "lowbit.autoquant: plan %s was measured on %s, this machine is %s; "
            "its choices may not be the fastest here", path, plan.device, here,
        )
