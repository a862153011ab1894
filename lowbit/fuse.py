"""``fuse_projections``: q/k/v into one linear and gate/up into one, for Llama-family models.

A Llama decoder layer calls 7 linears: q, k, v and o in attention, gate, up and down in
the MLP. q/k/v read the same input, and so do gate/up, so their weights can be
concatenated along the output features and computed by one linear each: 7 calls per
layer become 4. At batch-1 decode every call is a small GEMV whose fixed cost (dispatch,
thread start, output allocation) is a large part of its time, so fewer, larger calls are
faster, and a packed format reads the same bytes either way.

How it works (the Hugging Face attention/MLP code is not replaced):

- the fused ``nn.Linear`` is registered on the attention (``qkv_proj``) and on the MLP
  (``gate_up_proj``); its weight is ``cat([q, k, v])`` / ``cat([gate, up])`` along dim 0
  (the output features), its bias likewise;
- ``q_proj``/``k_proj``/``v_proj`` (``gate_proj``/``up_proj``) become ``FusedSlice``
  modules with no parameters. The first one called on an input runs the fused linear and
  keeps its output; each returns its own columns of it; the last one drops the kept output.
  So the model's own ``forward`` (whatever its transformers version) runs unchanged.

Which layers: modules whose class forward calls ``self.q_proj(X)``, ``self.k_proj(X)`` and
``self.v_proj(X)`` on the same argument ``X`` (read from the source: a future forward that
feeds them different inputs fails with a clear error instead of computing something else),
and MLPs calling ``self.gate_proj(X)`` and ``self.up_proj(X)``; in a model whose
``config.model_type`` is one of ``FUSABLE_MODEL_TYPES``.

Quantization: call ``fuse_projections`` before ``quantize_`` (or pass
``quantize_(model, config, fuse_projections=True)``). Every lowbit format quantizes per
output row (int8, float casts) or per row and group along the input features (int4,
DA8W4), so the fused weight gets exactly the codes the parts would get one by one and the
fused model computes what the unfused quantized model computes. An ``FqnToConfig`` names
the fused layers ``...self_attn.qkv_proj`` and ``...mlp.gate_up_proj``.

Checkpoints: a fused, quantized model saves as usual (``lowbit.save_file``); its state
dict has ``qkv_proj``/``gate_up_proj`` keys and no ``q_proj``... keys. To load it, build
the float model, fuse it the same way, then load::

    model = AutoModelForCausalLM.from_config(config)   # or from_pretrained
    lowbit.fuse_projections(model)
    lowbit.load_into(model, "model.safetensors")
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re

import torch
from torch import nn

from .tensors.base import LowbitTensor

__all__ = ["FUSABLE_MODEL_TYPES", "FuseReport", "FusedSlice", "fuse_projections", "is_fused"]

log = logging.getLogger(__name__)

# transformers model_type values whose attention calls q/k/v on one input and whose MLP
# calls gate/up on one input (checked again per layer from the forward's source).
FUSABLE_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "smollm3", "granite", "olmo", "olmo2", "cohere", "helium"}
)

# (parts in call order, name of the fused linear)
_GROUPS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("q_proj", "k_proj", "v_proj"), "qkv_proj"),
    (("gate_proj", "up_proj"), "gate_up_proj"),
)


class _SharedOutput:
    """The fused linear's last input and output, shared by the slices of one group."""

    __slots__ = ("out", "remaining", "x")

    def __init__(self):
        self.x = None
        self.out = None
        self.remaining = 0


class FusedSlice(nn.Module):
    """Stands in for one projection that ``fuse_projections`` merged into a fused linear.

    Calling it with ``x`` returns columns ``[start, stop)`` of ``fused(x)``. The slices of
    one group share that output: the first call on an input computes it, the others reuse
    it (same tensor object), the last one of the group releases it. Called in any order
    or alone it still returns the right columns (an input not seen before is recomputed).
    Holds no parameters: the weight lives in the fused linear (``fused_name`` on the
    parent module), which ``quantize_`` and ``load_into`` see as an ordinary ``nn.Linear``.
    """

    def __init__(self, fused: nn.Linear, shared: _SharedOutput, start: int, stop: int, n_parts: int,
                 fused_name: str, part_name: str):
        super().__init__()
        # Not registered as a submodule: the parent owns the fused linear (one state-dict key).
        object.__setattr__(self, "_fused", fused)
        object.__setattr__(self, "_shared", shared)
        self.start, self.stop, self.n_parts = start, stop, n_parts
        self.fused_name, self.part_name = fused_name, part_name
        self.in_features, self.out_features = fused.in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._shared
        if s.out is None or s.x is not x:
            s.x, s.out, s.remaining = x, self._fused(x), self.n_parts
        out = s.out[..., self.start : self.stop]
        s.remaining -= 1
        if s.remaining <= 0:
            s.x = s.out = None
        return out

    def extra_repr(self) -> str:
        return f"{self.part_name} = {self.fused_name}[..., {self.start}:{self.stop}]"


@dataclasses.dataclass
class FuseReport:
    """What ``fuse_projections`` did: fused module names -> the parts they replace."""

    fused: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def linear_calls_saved(self) -> int:
        return sum(len(parts) - 1 for parts in self.fused.values())

    def __str__(self) -> str:
        return f"fused {len(self.fused)} projection groups ({self.linear_calls_saved} fewer linear calls per forward)"


def is_fused(model: nn.Module) -> bool:
    """True if ``model`` contains projections fused by ``fuse_projections``."""
    return any(isinstance(m, FusedSlice) for m in model.modules())


def _forward_source(cls: type) -> str | None:
    try:
        return inspect.getsource(inspect.unwrap(cls.forward))
    except (OSError, TypeError):
        return None


def _call_argument(source: str, parts: tuple[str, ...]) -> str | None:
    """The one argument name every part is called with in ``source``, else None."""
    args = set()
    for part in parts:
        calls = re.findall(rf"self\.{part}\(\s*(\w+)\s*\)", source)
        if len(calls) != 1:
            return None
        args.add(calls[0])
    return args.pop() if len(args) == 1 else None


def _check_group(module: nn.Module, fqn: str, parts: tuple[str, ...], fused_name: str) -> str | None:
    """Why this group cannot be fused (None: it can)."""
    linears = [getattr(module, p) for p in parts]
    if not all(type(m) is nn.Linear for m in linears):
        kinds = [type(m).__name__ for m in linears]
        return f"{parts} must all be torch.nn.Linear, got {kinds}"
    if hasattr(module, fused_name):
        return f"it already has an attribute {fused_name!r}"
    for p, m in zip(parts, linears):
        if isinstance(m.weight, LowbitTensor):
            return f"{p} is already quantized ({type(m.weight).__name__}); fuse the float model, then quantize"
    first = linears[0]
    for p, m in zip(parts[1:], linears[1:]):
        if m.in_features != first.in_features:
            return f"{p} has in_features {m.in_features}, {parts[0]} has {first.in_features}"
        if (m.bias is None) != (first.bias is None):
            return f"{p} and {parts[0]} differ in having a bias"
        if m.weight.dtype != first.weight.dtype or m.weight.device != first.weight.device:
            return f"{p} is {m.weight.dtype} on {m.weight.device}, {parts[0]} is {first.weight.dtype} on {first.weight.device}"
        if (m.bias is not None) and m.bias.dtype != first.bias.dtype:
            return f"{p} and {parts[0]} have biases of different dtypes"
    source = _forward_source(type(module))
    if source is None:
        return f"the source of {type(module).__qualname__}.forward is not available to check how it calls {parts}"
    if _call_argument(source, parts) is None:
        return (
            f"{type(module).__qualname__}.forward does not call {', '.join(f'self.{p}(x)' for p in parts)} "
            "once each on the same input"
        )
    return None


def _fused_linear(linears: list[nn.Linear]) -> nn.Linear:
    first = linears[0]
    w = torch.cat([m.weight.detach() for m in linears], dim=0)
    fused = nn.Linear(first.in_features, w.shape[0], bias=first.bias is not None, device="meta")
    fused.weight = nn.Parameter(w, requires_grad=first.weight.requires_grad)
    if first.bias is not None:
        fused.bias = nn.Parameter(torch.cat([m.bias.detach() for m in linears]), requires_grad=first.bias.requires_grad)
    return fused


def fuse_projections(model: nn.Module) -> FuseReport:
    """Fuse q/k/v and gate/up projections of a Llama-family model, in place.

    Args:
        model: a transformers model (or one of its submodules) whose ``config.model_type``
            is in ``FUSABLE_MODEL_TYPES``, with float (not yet quantized) projections.

    Returns:
        A ``FuseReport`` naming each fused linear and the projections it replaces.

    Raises:
        ValueError: the architecture is not a known Llama-family one, a group cannot be
            fused (mixed dtypes, already quantized, a forward that feeds the parts
            different inputs...), or there is nothing to fuse (already fused). The model
            is unchanged then: every group is checked and built before any is swapped in.

    Outputs are unchanged (up to float rounding of the concatenated GEMM); fused modules
    are ``<attn>.qkv_proj`` and ``<mlp>.gate_up_proj``. See the module docstring for
    quantizing and for loading checkpoints into a fused model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_projections takes an nn.Module, got {type(model).__name__}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FUSABLE_MODEL_TYPES:
        raise ValueError(
            f"fuse_projections supports Llama-family transformers models (config.model_type in "
            f"{sorted(FUSABLE_MODEL_TYPES)}), got {type(model).__name__} with model_type {model_type!r}; "
            "quantize it unfused (quantize_ without fuse_projections)"
        )
    if is_fused(model):
        raise ValueError(f"{type(model).__name__} is already fused (it has FusedSlice modules); fuse a model once")
    pending = []
    problems = []
    for fqn, module in model.named_modules():
        for parts, fused_name in _GROUPS:
            if not all(hasattr(module, p) for p in parts):
                continue
            why = _check_group(module, fqn, parts, fused_name)
            if why is not None:
                problems.append(f"{fqn or type(model).__name__}: {why}")
                continue
            pending.append((module, fqn, parts, fused_name))
    if problems:
        raise ValueError(
            f"fuse_projections cannot fuse {len(problems)} projection group(s) of {type(model).__name__}: "
            + "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else "")
            + "; the model is unchanged (quantize it unfused)"
        )
    if not pending:
        raise ValueError(
            f"fuse_projections found no q_proj/k_proj/v_proj or gate_proj/up_proj group in "
            f"{type(model).__name__}; nothing to fuse"
        )
    built = []
    with torch.no_grad():
        for module, fqn, parts, fused_name in pending:
            linears = [getattr(module, p) for p in parts]
            built.append((module, fqn, parts, fused_name, linears, _fused_linear(linears)))
    report = FuseReport()
    for module, fqn, parts, fused_name, linears, fused in built:
        setattr(module, fused_name, fused)
        shared = _SharedOutput()
        start = 0
        for p, lin in zip(parts, linears):
            stop = start + lin.out_features
            setattr(module, p, FusedSlice(fused, shared, start, stop, len(parts), fused_name, p))
            start = stop
        report.fused[f"{fqn}.{fused_name}" if fqn else fused_name] = parts
    log.info("lowbit: %s", report)
    return report
