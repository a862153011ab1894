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

import difflib
import json
from collections.abc import Callable

import torch
from torch import nn

from .errors import UnsupportedError
from .ops.alignment import aligned_copy
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


def _identity(t: torch.Tensor) -> tuple | None:
    """What makes two state-dict entries the same tensor (state_dict() detaches, so not id())."""
    if isinstance(t, LowbitTensor):
        parts = [type(t), t._meta_key()]
        for n in t.data_fields:
            v = getattr(t, n)
            parts.append(None if v is None else _identity(v))
        return tuple(parts)
    if t.device.type == "meta" or t.numel() == 0:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def flatten_state_dict(model_or_state_dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Plain tensors and the ``"lowbit"`` metadata entry that ``save_file`` writes.

    Packed tensors become ``<name>.__<field>`` plain tensors (their ``to_checkpoint()``
    form); the metadata records lowbit's version and each one's format name and version.
    A tied weight (one tensor under several names) is written once; the other names are
    recorded as aliases and load as the same tensor (safetensors refuses shared storage).
    """
    tensors: dict[str, torch.Tensor] = {}
    formats: dict[str, dict] = {}
    first_name: dict[tuple, str] = {}
    tied: dict[str, str] = {}
    for name, t in _state_dict(model_or_state_dict).items():
        ident = _identity(t)
        if ident is not None and ident in first_name:
            tied[name] = first_name[ident]
            continue
        if ident is not None:
            first_name[ident] = name
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
    return tensors, {_KEY: _metadata_json(formats, tied)}


def _lowbit_version() -> str:
    from . import __version__

    return __version__


def _metadata_json(formats: dict[str, dict], tied: dict[str, str] | None = None) -> str:
    """The ``"lowbit"`` metadata entry: schema, the lowbit version writing it, per-tensor formats, ties."""
    info = {"schema": _SCHEMA_VERSION, "lowbit_version": _lowbit_version(), "tensors": formats}
    if tied:
        info["tied"] = tied
    return json.dumps(info)


def save_file(model_or_state_dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """Save a (partly) quantized model's state dict to a safetensors file."""
    from safetensors.torch import save_file as st_save

    tensors, lowbit_md = flatten_state_dict(model_or_state_dict)
    md = dict(metadata or {})
    md.update(lowbit_md)
    st_save(tensors, path, metadata=md)


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: corrupt, edited, truncated, or not what the model holds."""


def _read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a truncated or corrupt file is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            md = f.metadata() or {}
            # safetensors aligns tensor data to 8 bytes only (it depends on the header length);
            # kernels with aligned vector loads (ops/alignment.py) need more, so any tensor off
            # the allocator's 64-byte boundary is copied once here, not on every call.
            raw = {k: aligned_copy(f.get_tensor(k)) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); it may be "
            f"truncated or corrupt: save it again"
        ) from None
    return raw, md


def read_lowbit_metadata(md: dict[str, str], path="<checkpoint>") -> dict:
    """The parsed ``"lowbit"`` metadata entry of a file's metadata, checked for the structure
    ``save_file`` writes (empty if the file has none)."""
    try:
        info = json.loads(md.get(_KEY, '{"schema": 1, "tensors": {}}'))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the {_KEY!r} metadata is not valid JSON ({e}); the file was edited, save it again") from None
    if not isinstance(info, dict) or not isinstance(info.get("tensors", {}), dict) or not isinstance(info.get("tied", {}), dict):
        raise CheckpointError(
            f"{path}: the {_KEY!r} metadata must be an object with a 'tensors' object, got {str(info)[:200]!r}; "
            f"the file was edited, save it again"
        )
    schema = info.get("schema", 1)
    if not isinstance(schema, int):
        raise CheckpointError(f"{path}: metadata schema must be an integer, got {schema!r}")
    if schema > _SCHEMA_VERSION:
        raise NewerFormatError(
            f"{path} was written by a newer lowbit (schema {schema}); upgrade lowbit to "
            f"{info.get('lowbit_version', 'a newer release')} or later (this is {_lowbit_version()}, "
            f"reading up to schema {_SCHEMA_VERSION})"
        )
    return info


def _spec_error(path, name, what) -> CheckpointError:
    return CheckpointError(
        f"{path}: the metadata of packed tensor {name!r} {what}; expected "
        f"{{'format': str, 'version': int, 'fields': [str], 'meta': {{...}}}} as save_file writes it. "
        f"The file was edited or is corrupt: save it again"
    )


def _check_fields_against_meta(path, name, t: LowbitTensor) -> None:
    """The stored tensors must agree with the metadata (shape, group size...): rebuilt on
    the meta device and dequantized there, no data touched."""
    f = t._fields()
    for n in t.data_fields:
        if f[n] is not None:
            f[n] = f[n].to("meta")
    try:
        d = type(t)(**f).dequantize()
        ok = tuple(d.shape) == tuple(t.shape)
    except Exception as e:  # noqa: BLE001 - any failure here means the fields do not fit the metadata
        raise CheckpointError(
            f"{path}: packed tensor {name!r} ({t.format_name}) has stored tensors that do not fit its "
            f"metadata ({type(e).__name__}: {str(e)[:200]}); fields "
            f"{ {n: tuple(getattr(t, n).shape) for n in t.data_fields if getattr(t, n) is not None} }, "
            f"shape {tuple(t.shape)}; the file was edited or is corrupt"
        ) from None
    if not ok:
        raise CheckpointError(f"{path}: packed tensor {name!r} dequantizes to {tuple(d.shape)}, its metadata says {tuple(t.shape)}")
    for n in t.data_fields:
        v = getattr(t, n)
        # float8 has no isfinite kernel: check those codes widened.
        if v is not None and v.is_floating_point() and not bool(torch.isfinite(v if v.element_size() > 1 else v.float()).all()):
            raise CheckpointError(f"{path}: packed tensor {name!r} holds NaN/Inf in {n!r}; the file is corrupt")


def rebuild_tensor(name: str, spec: dict, raw: dict[str, torch.Tensor], device, path="<checkpoint>", writer=None):
    """One packed tensor from its metadata ``spec`` and the plain fields in ``raw`` (popped).

    ``device`` None returns the stored form itself (no ``from_checkpoint``: no repacking).
    """
    if not isinstance(spec, dict):
        raise _spec_error(path, name, f"is a {type(spec).__name__}, not an object")
    for key, typ in (("format", str), ("version", int), ("fields", list), ("meta", dict)):
        if not isinstance(spec.get(key), typ):
            raise _spec_error(path, name, f"has {key!r} = {spec.get(key)!r}")
    cls = format_class(name, spec, path)
    _check_not_newer(name, spec, cls, path, writer)  # before the fields: a newer version may have others
    bad = [fld for fld in spec["fields"] if fld not in cls.data_fields]
    if bad:
        raise _spec_error(path, name, f"lists fields {bad} that {cls.__name__} does not have (it has {list(cls.data_fields)})")
    missing = [f"{name}{_SEP}{fld}" for fld in spec["fields"] if f"{name}{_SEP}{fld}" not in raw]
    if missing:
        raise CheckpointError(
            f"{path}: {name!r} ({spec['format']}) needs tensor {missing[0]!r}, which the file "
            f"lacks (missing: {missing}); the file is truncated or was edited, save it again"
        )
    allowed = set(cls.meta_fields) | {"shape", "dtype"}
    unknown = sorted(set(spec["meta"]) - allowed)
    if unknown or "shape" not in spec["meta"] or "dtype" not in spec["meta"]:
        raise _spec_error(path, name, f"has meta keys {sorted(spec['meta'])}; {cls.__name__} takes {sorted(allowed)}")
    # Tensors straight from a file sit at its offsets (safetensors aligns to 8 bytes only);
    # kernels with aligned loads (ops/alignment.py) need more, and the int8 GEMV's fallback
    # for a misaligned weight rounds differently, so a reloaded model would not give the
    # saved one's bits. One copy here, only of a misaligned field, never per call.
    data = {fld: aligned_copy(raw.pop(f"{name}{_SEP}{fld}")) for fld in spec["fields"]}
    try:
        meta = {k: _decode_meta(v) for k, v in spec["meta"].items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise _spec_error(path, name, f"has an undecodable meta value ({e})") from None
    data, meta = upgrade_fields(name, spec, data, meta, path=path, writer=writer)
    if not isinstance(meta["dtype"], torch.dtype) or not meta["dtype"].is_floating_point:
        raise _spec_error(path, name, f"has dtype {spec['meta']['dtype']!r}, not a float dtype")
    # Optional fields added in later versions default to None when absent.
    for fld in cls.optional_data_fields:
        data.setdefault(fld, None)
    for m in cls.meta_fields:
        meta.setdefault(m, None)
    try:
        t = cls(**data, **meta)
    except (TypeError, ValueError, RuntimeError, StopIteration) as e:
        raise _spec_error(path, name, f"does not build a {cls.__name__} ({type(e).__name__}: {e})") from None
    _check_fields_against_meta(path, name, t)
    if device is None:
        return t
    try:
        return t.from_checkpoint(torch.device(device))
    except UnsupportedError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(
            f"{path}: packed tensor {name!r} ({spec['format']}) could not be prepared for {device} "
            f"({type(e).__name__}: {str(e)[:300]}); the file was edited or is corrupt"
        ) from None


def load_file(path: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a file written by ``save_file`` into a state dict of plain and packed tensors.

    Packed tensors are rebuilt through the format registry and placed on ``device`` with
    the format's ``from_checkpoint`` (which may repack for that device, or raise
    ``UnsupportedError`` naming why the format cannot run there). A tensor saved by an
    older format version is converted on load (``register_format_converter``); one saved
    by a newer version raises ``NewerFormatError``. A file that is truncated, corrupt or
    has edited metadata raises ``CheckpointError`` (a ValueError) naming the tensor and
    what is wrong.
    """
    raw, md = _read_safetensors(path)
    return unflatten_state_dict(raw, md, device, path=path)


def unflatten_state_dict(
    raw: dict[str, torch.Tensor], md: dict[str, str], device: str | torch.device | None = "cpu", path="<checkpoint>"
) -> dict[str, torch.Tensor]:
    """Inverse of ``flatten_state_dict``: plain tensors + metadata back to a state dict.

    ``raw`` is consumed (its packed fields are removed as they are used).
    """
    info = read_lowbit_metadata(md, path)
    writer = info.get("lowbit_version")
    out: dict[str, torch.Tensor] = {}
    for name, spec in info.get("tensors", {}).items():
        out[name] = rebuild_tensor(name, spec, raw, device, path=path, writer=writer)
    for name, t in raw.items():
        out[name] = t if device is None else t.to(device)
    for alias, src in info.get("tied", {}).items():
        if not isinstance(alias, str) or not isinstance(src, str) or src not in out or alias in out:
            raise CheckpointError(
                f"{path}: tied entry {alias!r} -> {src!r} must name a tensor in the file and a name "
                f"that is not one; the file was edited, save it again"
            )
        out[alias] = out[src]
    return out


def _closest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def _check_state_dict_fits(model: nn.Module, sd: dict[str, torch.Tensor], path: str) -> None:
    """Every key, shape and dtype of ``sd`` must fit ``model``; raise naming each mismatch."""
    expected = model.state_dict(keep_vars=True)
    problems = []
    for k in expected:
        if k not in sd:
            problems.append(f"missing {k!r}{_closest(k, sd)}")
    for k in sd:
        if k not in expected:
            problems.append(f"unexpected {k!r}{_closest(k, expected)}")
    for k, got in sd.items():
        want = expected.get(k)
        if want is None:
            continue
        if tuple(got.shape) != tuple(want.shape):
            problems.append(f"{k!r}: shape {tuple(got.shape)} in the file, {tuple(want.shape)} in the model")
        elif want.is_floating_point() != got.is_floating_point() or (
            not want.is_floating_point() and want.dtype != got.dtype
        ):
            problems.append(f"{k!r}: dtype {got.dtype} in the file, {want.dtype} in the model")
    # A weight the model ties (one Parameter under several names) must be one tensor in the file.
    by_param: dict[int, list[str]] = {}
    for k, t in expected.items():
        by_param.setdefault(id(t), []).append(k)
    for keys in by_param.values():
        if len(keys) > 1 and all(k in sd for k in keys) and any(sd[k] is not sd[keys[0]] for k in keys):
            problems.append(f"{keys} are tied in the model but separate tensors in the file")
    if problems:
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: " + "; ".join(problems[:10])
            + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Nothing was loaded; build the model the checkpoint was saved from"
        )


# ---------------------------------------------------------------------- format versions


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


def _check_not_newer(name: str, spec: dict, cls, path, writer) -> None:
    version = spec.get("version", 1)
    if isinstance(version, int) and version > cls.format_version:
        raise NewerFormatError(
            f"{path}: {name!r} is {spec['format']} v{version}, this lowbit reads up to "
            f"v{cls.format_version}; upgrade lowbit to {writer or 'a newer release'} or later (the version "
            f"that wrote the file; this is {_lowbit_version()})"
        )


def upgrade_fields(name: str, spec: dict, data: dict, meta: dict, path="<checkpoint>", writer=None):
    """Bring one tensor's fields from its saved format version to the current one."""
    cls = format_class(name, spec, path)
    _check_not_newer(name, spec, cls, path, writer)
    version = int(spec.get("version", 1))
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
    """Load ``path`` into ``model``, all or nothing.

    Packed tensors take the place of float ones (the file decides each layer's format).
    Everything is read and checked first (file structure, keys, shapes, dtypes, ties); on
    any error the model is exactly as it was. Packed weights load frozen
    (``requires_grad=False``); tied weights stay tied (one Parameter).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_into takes an nn.Module, got {type(model).__name__}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else "cpu"
    sd = load_file(path, device)
    _check_state_dict_fits(model, sd, path)
    # One Parameter per distinct tensor, so modules that shared a weight share the new one.
    expected = model.state_dict(keep_vars=True)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    wrapped: dict[int, torch.Tensor] = {}
    final = {}
    for k, t in sd.items():
        if k in params:
            if id(t) not in wrapped:
                wrapped[id(t)] = nn.Parameter(t, requires_grad=expected[k].requires_grad)
            final[k] = wrapped[id(t)]
        else:
            final[k] = t
    model.load_state_dict(final, assign=True)
    # assign=True copies the old parameter's requires_grad onto the new one: packed weights are frozen.
    for p in model.parameters():
        if isinstance(p, LowbitTensor) and p.requires_grad:
            p.requires_grad_(False)
    return model
