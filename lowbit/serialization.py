"""Safetensors checkpoints of quantized models.

A packed tensor is saved as its plain data fields (``<name>.__<field>``) plus one JSON
metadata entry (``"lowbit"``) recording, per tensor, the format name and version and its
metadata fields. Loading looks formats up in the registry that ``LowbitTensor`` fills;
there is no hand-kept allowlist.

Formats can choose what goes on disk: ``to_checkpoint()`` (default: the tensor itself)
and ``from_checkpoint(device)`` (default: move to the device). The int4 formats use this
to save one portable layout and repack on load for the device at hand.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from .ops.alignment import aligned_copy
from .tensors.base import LowbitTensor, format_registry

__all__ = ["save_file", "load_file", "load_into"]

_KEY = "lowbit"
_SCHEMA_VERSION = 1
_SEP = ".__"


def _encode_meta(v):
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).replace("torch.", "")}
    if isinstance(v, tuple):
        return {"tuple": [_encode_meta(x) for x in v]}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot save metadata value {v!r} of type {type(v).__name__}")


def _decode_meta(v):
    if isinstance(v, dict):
        if "dtype" in v:
            return getattr(torch, v["dtype"])
        if "tuple" in v:
            return tuple(_decode_meta(x) for x in v["tuple"])
    return v


def _state_dict(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        return obj
    raise TypeError(f"save_file takes a module or a state dict, got {type(obj).__name__}")


def save_file(model_or_state_dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """Save a (partly) quantized model's state dict to a safetensors file."""
    from safetensors.torch import save_file as st_save

    tensors: dict[str, torch.Tensor] = {}
    formats: dict[str, dict] = {}
    for name, t in _state_dict(model_or_state_dict).items():
        if isinstance(t, LowbitTensor):
            t = t.to_checkpoint()
            fields = {}
            for f in t.data_fields:
                v = getattr(t, f)
                if v is not None:
                    tensors[f"{name}{_SEP}{f}"] = v.detach().contiguous()
                    fields[f] = True
            meta = {n: _encode_meta(getattr(t, n)) for n in t.meta_fields}
            meta["shape"] = list(t.shape)
            meta["dtype"] = _encode_meta(t.dtype)
            formats[name] = {
                "format": t.format_name,
                "version": t.format_version,
                "fields": list(fields),
                "meta": meta,
            }
        else:
            tensors[name] = t.detach().contiguous()
    md = dict(metadata or {})
    md[_KEY] = json.dumps({"schema": _SCHEMA_VERSION, "tensors": formats})
    st_save(tensors, path, metadata=md)


def load_file(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a file written by ``save_file`` into a state dict of plain and packed tensors.

    Packed tensors are rebuilt through the format registry and placed on ``device`` with
    the format's ``from_checkpoint`` (which may repack for that device, or raise
    ``UnsupportedError`` naming why the format cannot run there).
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        md = f.metadata() or {}
        # safetensors aligns tensor data to 8 bytes only (it depends on the header length);
        # kernels with aligned vector loads (ops/alignment.py) need more, so any tensor off
        # the allocator's 64-byte boundary is copied once here, not on every call.
        raw = {k: aligned_copy(f.get_tensor(k)) for k in f.keys()}
    info = json.loads(md.get(_KEY, '{"schema": 1, "tensors": {}}'))
    if info.get("schema", 1) > _SCHEMA_VERSION:
        raise ValueError(f"{path} was written by a newer lowbit (schema {info['schema']}); upgrade lowbit")
    out: dict[str, torch.Tensor] = {}
    for name, spec in info["tensors"].items():
        cls = format_registry.get(spec["format"])
        if cls is None:
            raise ValueError(
                f"{path}: tensor {name!r} has format {spec['format']!r}, unknown to this lowbit "
                f"(known: {sorted(format_registry)}); upgrade lowbit"
            )
        if spec["version"] > cls.format_version:
            raise ValueError(
                f"{path}: {name!r} is {spec['format']} v{spec['version']}, this lowbit reads up "
                f"to v{cls.format_version}; upgrade lowbit"
            )
        missing = [f"{name}{_SEP}{fld}" for fld in spec["fields"] if f"{name}{_SEP}{fld}" not in raw]
        if missing:
            raise ValueError(
                f"{path}: {name!r} ({spec['format']}) needs tensor {missing[0]!r}, which the file "
                f"lacks (missing: {missing}); the file is truncated or was edited, save it again"
            )
        data = {fld: raw.pop(f"{name}{_SEP}{fld}") for fld in spec["fields"]}
        meta = {k: _decode_meta(v) for k, v in spec["meta"].items()}
        # Optional fields added in later versions default to None when absent.
        for fld in cls.optional_data_fields:
            data.setdefault(fld, None)
        for m in cls.meta_fields:
            meta.setdefault(m, None)
        out[name] = cls(**data, **meta).from_checkpoint(torch.device(device))
    for name, t in raw.items():
        out[name] = t.to(device)
    return out


def load_into(model: nn.Module, path: str, device: str | torch.device | None = None) -> nn.Module:
    """Load ``path`` into ``model`` (assigning packed tensors in place of float ones)."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else "cpu"
    sd = load_file(path, device)
    model.load_state_dict(sd, assign=True)
    for name, p in model.named_parameters():
        if isinstance(p, LowbitTensor) and p.requires_grad:
            p.requires_grad_(False)
    return model

