"""Read-only views and upgrades of lowbit safetensors checkpoints (``lowbit inspect`` / ``upgrade``).

Works on one ``.safetensors`` file or a model directory (every ``*.safetensors`` in it).
Only headers are read for ``inspect``; nothing imports transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from .errors import UnsupportedError
from .serialization import (
    CheckpointError,
    format_class,
    read_lowbit_metadata,
    upgrade_file,
)

__all__ = ["DEVICES", "CheckpointInfo", "TensorInfo", "checkpoint_files", "inspect_checkpoint", "upgrade_checkpoint"]

DEVICES = ("cpu", "cuda", "xpu")
_SEP = ".__"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclasses.dataclass
class TensorInfo:
    """One tensor of a checkpoint: packed (``format`` set) or plain."""

    name: str
    file: str
    shape: tuple[int, ...]
    nbytes: int
    format: str | None = None
    format_version: int | None = None
    group_size: int | None = None
    dtype: str | None = None
    devices: tuple[str, ...] = ()


@dataclasses.dataclass
class CheckpointInfo:
    """What ``lowbit inspect`` shows: tensors, lowbit versions that wrote the files, totals."""

    path: str
    tensors: list[TensorInfo]
    lowbit_versions: dict[str, str | None]  # file -> lowbit version that wrote it
    quantization_config: dict | None = None

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def devices(self) -> tuple[str, ...]:
        """Devices every packed tensor can run on (all of DEVICES if none is packed)."""
        packed = [t for t in self.tensors if t.format]
        return tuple(d for d in DEVICES if all(d in t.devices for t in packed))

    def to_markdown(self) -> str:
        lines = [
            "| tensor | format | version | group | shape | bytes | runs on |",
            "|---|---|---:|---:|---|---:|---|",
        ]
        for t in self.tensors:
            lines.append(
                f"| {t.name} | {t.format or 'plain ' + (t.dtype or '')} | {t.format_version or ''} | "
                f"{t.group_size or ''} | {list(t.shape)} | {t.nbytes:,} | {', '.join(t.devices) if t.format else 'any'} |"
            )
        formats = sorted({f"{t.format} v{t.format_version}" for t in self.tensors if t.format})
        groups = sorted({t.group_size for t in self.tensors if t.group_size})
        writers = sorted({v or "unknown (no lowbit metadata)" for v in self.lowbit_versions.values()})
        lines += [
            "",
            (f"{self.path}: {len(self.tensors)} tensors, {self.total_bytes:,} bytes "
             f"({self.total_bytes / 2**20:.1f} MiB); {sum(1 for t in self.tensors if t.format)} packed"),
            f"formats: {', '.join(formats) or 'none (a float checkpoint)'}; group sizes: {groups or '-'}",
            f"written by lowbit: {', '.join(writers)}; runs on: {', '.join(self.devices()) or 'no single device'}",
        ]
        if self.quantization_config is not None:
            lines.append(f"config.json quantization_config: {json.dumps(self.quantization_config, sort_keys=True)}")
        return "\n".join(lines)


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of ``path`` (a file, or a directory's ``*.safetensors``)."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".safetensors":
            raise CheckpointError(f"{p} is not a .safetensors file; lowbit checkpoints are safetensors only")
        return [p]
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"{p} has no *.safetensors file; pass a model directory written by save_pretrained or "
                "`lowbit quantize`, or a .safetensors file"
            )
        return files
    raise CheckpointError(f"{p} does not exist; pass a model directory or a .safetensors file")


def _devices(spec: dict) -> tuple[str, ...]:
    """Device types the format of ``spec`` can run on after loading (repacking included)."""
    cls = format_class("?", spec)
    meta = spec.get("meta", {})
    if cls.format_name == "int4_plain":  # the portable int4 form: repacked for the device on load
        from .configs.int4 import int4_class_for

        out = []
        for d in DEVICES:
            try:
                int4_class_for(d, meta.get("zero_point_kind", "float"))
                out.append(d)
            except UnsupportedError:
                pass
        return tuple(out)
    dtype = getattr(torch, (meta.get("dtype") or {}).get("dtype", "bfloat16"), torch.bfloat16)
    w = torch.empty(tuple(meta.get("shape", (1, 1))), dtype=dtype, device="meta")
    kwargs = {"group_size": meta["group_size"]} if meta.get("group_size") else {}
    out = []
    for d in DEVICES:
        try:
            reason = cls.supports(w, d, **kwargs)
        except TypeError:
            reason = cls.supports(w, d)
        if reason is None:
            out.append(d)
    return tuple(out)


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Formats, versions, group sizes, bytes and devices of every tensor under ``path``."""
    from safetensors import SafetensorError, safe_open

    tensors: list[TensorInfo] = []
    versions: dict[str, str | None] = {}
    for f in checkpoint_files(path):
        try:
            with safe_open(str(f), framework="pt", device="cpu") as h:
                md = h.metadata() or {}
                shapes = {}
                for k in h.keys():
                    sl = h.get_slice(k)
                    shape = tuple(sl.get_shape())
                    n = 1
                    for s in shape:
                        n *= s
                    shapes[k] = (shape, n * _DTYPE_BYTES.get(sl.get_dtype(), 1), sl.get_dtype())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f}: cannot read it as safetensors ({e}); the file is truncated or corrupt") from None
        info = read_lowbit_metadata(md, f)
        versions[str(f)] = info.get("lowbit_version")
        for name, spec in info["tensors"].items():
            format_class(name, spec, f)
            fields = [k for k in shapes if k.startswith(name + _SEP)]
            meta = spec.get("meta", {})
            tensors.append(TensorInfo(
                name=name, file=str(f), shape=tuple(meta.get("shape", ())),
                nbytes=sum(shapes.pop(k)[1] for k in fields), format=spec["format"],
                format_version=int(spec.get("version", 1)), group_size=meta.get("group_size"),
                dtype=(meta.get("dtype") or {}).get("dtype"), devices=_devices(spec),
            ))
        for k, (shape, nbytes, dtype) in shapes.items():
            tensors.append(TensorInfo(name=k, file=str(f), shape=shape, nbytes=nbytes, dtype=dtype))
    tensors.sort(key=lambda t: t.name)
    qc = None
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        try:
            qc = json.loads(cfg.read_text()).get("quantization_config")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None
    return CheckpointInfo(path=str(path), tensors=tensors, lowbit_versions=versions, quantization_config=qc)


def upgrade_checkpoint(path: str | os.PathLike) -> dict[str, list[str]]:
    """Rewrite every file under ``path`` with its packed tensors at the current format versions.

    Returns ``{file: [upgraded tensor names]}``. Each file is rewritten through a temporary
    file and a rename, so a failure leaves it as it was.
    """
    return {str(f): upgrade_file(f) for f in checkpoint_files(path)}
