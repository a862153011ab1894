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
from collections.abc import Callable

import torch
from torch import nn

from .tensors.base import LowbitTensor, format_registry

__all__ = [
    "save_file",
    "load_file",
    "load_into",
    "flatten_state_dict",
    "unflatten_state_dict",
    "read_lowbit_metadata",
    "register_format_converter",
    "upgrade_file",
    "NewerFormatError",
    "CheckpointError",
]

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


def flatten_state_dict(model_or_state_dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Plain tensors and the ``"lowbit"`` metadata entry that ``save_file`` writes.

    Packed tensors become ``<name>.__<field>`` plain tensors (their ``to_checkpoint()``
    form); the metadata records lowbit's version and each one's format name and version.
    """
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
    return tensors, {_KEY: _metadata_json(formats)}


def _lowbit_version() -> str:
    from . import __version__

    return __version__


def _metadata_json(formats: dict[str, dict]) -> str:
    """The ``"lowbit"`` metadata entry: schema, the lowbit version writing it, per-tensor formats."""
    return json.dumps({"schema": _SCHEMA_VERSION, "lowbit_version": _lowbit_version(), "tensors": formats})


def save_file(model_or_state_dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """Save a (partly) quantized model's state dict to a safetensors file."""
    from safetensors.torch import save_file as st_save

    tensors, lowbit_md = flatten_state_dict(model_or_state_dict)
    md = dict(metadata or {})
    md.update(lowbit_md)
    st_save(tensors, path, metadata=md)


def load_file(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a file written by ``save_file`` into a state dict of plain and packed tensors.

    Packed tensors are rebuilt through the format registry and placed on ``device`` with
    the format's ``from_checkpoint`` (which may repack for that device, or raise
    ``UnsupportedError`` naming why the format cannot run there). A tensor saved by an
    older format version is converted on load (``register_format_converter``); one saved
    by a newer version raises ``NewerFormatError``.
    """
    raw, md = _read_safetensors(path)
    return unflatten_state_dict(raw, md, device, path=path)


def _read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a truncated or corrupt file is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            md = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path}: cannot read it as safetensors ({e}); the file is truncated or corrupt, save or download it again"
        ) from None
    return raw, md


def read_lowbit_metadata(md: dict[str, str], path="<checkpoint>") -> dict:
    """The parsed ``"lowbit"`` metadata entry of a file's metadata (empty if it has none)."""
    try:
        info = json.loads(md.get(_KEY, '{"schema": 1, "tensors": {}}'))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its 'lowbit' metadata entry is not valid JSON ({e}); save the file again") from None
    if not isinstance(info, dict) or not isinstance(info.get("tensors", {}), dict):
        raise CheckpointError(f"{path}: its 'lowbit' metadata entry is not a JSON object with 'tensors'; save it again")
    if info.get("schema", 1) > _SCHEMA_VERSION:
        raise NewerFormatError(
            f"{path} was written by a newer lowbit (schema {info['schema']}); upgrade lowbit to "
            f"{info.get('lowbit_version', 'a newer release')} or later (this is {_lowbit_version()}, "
            f"reading up to schema {_SCHEMA_VERSION})"
        )
    return info


def unflatten_state_dict(
    raw: dict[str, torch.Tensor], md: dict[str, str], device: str | torch.device = "cpu", path="<checkpoint>"
) -> dict[str, torch.Tensor]:
    """Inverse of ``flatten_state_dict``: plain tensors + metadata back to a state dict.

    ``raw`` is consumed (its packed fields are removed as they are used).
    """
    info = read_lowbit_metadata(md, path)
    out: dict[str, torch.Tensor] = {}
    for name, spec in info["tensors"].items():
        out[name] = rebuild_tensor(name, spec, raw, device, path=path, writer=info.get("lowbit_version"))
    for name, t in raw.items():
        out[name] = t if device is None else t.to(device)
    return out


def rebuild_tensor(name: str, spec: dict, raw: dict[str, torch.Tensor], device, path="<checkpoint>", writer=None):
    """One packed tensor from its metadata ``spec`` and the plain fields in ``raw`` (popped).

    ``device`` None returns the stored form itself (no ``from_checkpoint``: no repacking).
    """
    cls = format_class(name, spec, path)
    fields = spec.get("fields", [])
    missing = [f"{name}{_SEP}{fld}" for fld in fields if f"{name}{_SEP}{fld}" not in raw]
    if missing:
        raise CheckpointError(
            f"{path}: {name!r} ({spec['format']}) needs tensor {missing[0]!r}, which the file "
            f"lacks (missing: {missing}); the file is truncated or was edited, save it again"
        )
    # Copies: safetensors hands out views of the file at arbitrary byte offsets, and
    # ATen's int8 CPU GEMV (_weight_int8pack_mm) segfaults on a misaligned weight pointer.
    data = {fld: raw.pop(f"{name}{_SEP}{fld}").clone() for fld in fields}
    meta = {k: _decode_meta(v) for k, v in spec.get("meta", {}).items()}
    data, meta = upgrade_fields(name, spec, data, meta, path=path, writer=writer)
    # Optional fields added in later versions default to None when absent.
    for fld in cls.optional_data_fields:
        data.setdefault(fld, None)
    for m in cls.meta_fields:
        meta.setdefault(m, None)
    try:
        t = cls(**data, **meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {name!r} ({spec['format']}) cannot be rebuilt from the file: {e}") from None
    return t if device is None else t.from_checkpoint(torch.device(device))


# ---------------------------------------------------------------------- format versions


class CheckpointError(ValueError):
    """A checkpoint file cannot be read: truncated, corrupt, or naming what this lowbit lacks."""


class NewerFormatError(CheckpointError):
    """A checkpoint was written by a newer format (or metadata) version than this lowbit reads."""


# (format_name, from_version) -> fn(data, meta) -> (data, meta) at from_version + 1
_CONVERTERS: dict[tuple[str, int], Callable] = {}


def register_format_converter(format_name: str, from_version: int) -> Callable:
    """Register ``fn(data, meta) -> (data, meta)`` turning ``format_name`` v``from_version``
    fields into v``from_version + 1`` ones (so checkpoints keep loading after a bump).

    ``data`` maps field names to tensors, ``meta`` metadata names to values (including
    ``shape`` and ``dtype``). Chains are applied in order up to the class's version.
    """

    def decorator(fn):
        key = (format_name, int(from_version))
        if key in _CONVERTERS:
            raise RuntimeError(f"a converter from {format_name} v{from_version} is already registered")
        _CONVERTERS[key] = fn
        return fn

    return decorator


def format_class(name: str, spec: dict, path="<checkpoint>") -> type[LowbitTensor]:
    """The registered class of a tensor's metadata, or a CheckpointError naming the tensor."""
    fmt = spec.get("format") if isinstance(spec, dict) else None
    cls = format_registry.get(fmt)
    if cls is None:
        raise CheckpointError(
            f"{path}: tensor {name!r} has format {fmt!r}, unknown to this lowbit "
            f"(known: {sorted(format_registry)}); upgrade lowbit (this is {_lowbit_version()}), or re-quantize"
        )
    return cls


def upgrade_fields(name: str, spec: dict, data: dict, meta: dict, path="<checkpoint>", writer=None):
    """Bring one tensor's fields from its saved format version to the current one."""
    cls = format_class(name, spec, path)
    version = int(spec.get("version", 1))
    if version > cls.format_version:
        raise NewerFormatError(
            f"{path}: {name!r} is {spec['format']} v{version}, this lowbit reads up to "
            f"v{cls.format_version}; upgrade lowbit to {writer or 'a newer release'} or later (the version "
            f"that wrote the file; this is {_lowbit_version()})"
        )
    while version < cls.format_version:
        fn = _CONVERTERS.get((cls.format_name, version))
        if fn is None:
            raise CheckpointError(
                f"{path}: {name!r} is {spec['format']} v{version} and this lowbit has no converter to "
                f"v{version + 1}; load it with the lowbit that wrote it ({writer or 'unknown'}) and re-quantize"
            )
        data, meta = fn(dict(data), dict(meta))
        version += 1
    return data, meta


def needs_upgrade(md: dict[str, str], path="<checkpoint>") -> list[str]:
    """Names of the packed tensors in a file's metadata saved by an older format version."""
    info = read_lowbit_metadata(md, path)
    return [
        n for n, spec in info["tensors"].items() if int(spec.get("version", 1)) < format_class(n, spec, path).format_version
    ]


def upgrade_file(path, out_path=None) -> list[str]:
    """Rewrite a checkpoint with every packed tensor at its current format version.

    Converts on CPU without repacking (the stored form stays the stored form) and writes
    to a temporary file renamed over ``out_path`` (default: ``path``), so a failure leaves
    the original untouched. Returns the names of the tensors that were upgraded.
    """
    import os
    import tempfile

    from safetensors.torch import save_file as st_save

    raw, md = _read_safetensors(path)
    info = read_lowbit_metadata(md, path)
    writer = info.get("lowbit_version")
    upgraded = []
    for name, spec in info["tensors"].items():
        cls = format_class(name, spec, path)
        if int(spec.get("version", 1)) >= cls.format_version:
            upgrade_fields(name, spec, {}, {}, path=path, writer=writer)  # raises on a newer version
            continue
        fields = spec.get("fields", [])
        data = {f: raw.pop(f"{name}{_SEP}{f}") for f in fields}
        meta = {k: _decode_meta(v) for k, v in spec.get("meta", {}).items()}
        data, meta = upgrade_fields(name, spec, data, meta, path=path, writer=writer)
        for f, v in data.items():
            if v is not None:
                raw[f"{name}{_SEP}{f}"] = v.contiguous()
        info["tensors"][name] = {
            "format": cls.format_name,
            "version": cls.format_version,
            "fields": [f for f, v in data.items() if v is not None],
            "meta": {k: (list(v) if k == "shape" else _encode_meta(v)) for k, v in meta.items()},
        }
        upgraded.append(name)
    if upgraded:
        out_path = str(out_path or path)
        md = dict(md)
        md[_KEY] = json.dumps({"schema": _SCHEMA_VERSION, "lowbit_version": _lowbit_version(), "tensors": info["tensors"]})
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out_path)), suffix=".safetensors.tmp")
        os.close(fd)
        try:
            st_save(raw, tmp, metadata=md)
            os.replace(tmp, out_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return upgraded


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

