"""``static_compiled_decode``: transformers' static-cache + ``torch.compile`` recipe, set up
so that ``generate`` compiles the decode step once and never recompiles.

transformers compiles the single-token decode step when the KV cache is static
(``cache_implementation="static"``; on CPU only when asked). Its cache is sized per call
(prompt + ``max_new_tokens``), and a new size is a new tensor shape for every layer's
keys and values: the first ``generate`` with other lengths recompiles, and with
``fullgraph=True`` a few such calls reach dynamo's recompile limit. Fixing the cache
length (``generation_config.max_cache_len``, transformers >= 5; older versions keep the
largest length seen, ``_previous_max_cache_length``) makes every decode step the same
graph: batch 1, one token, the same cache shapes. lowbit's packed linears are custom ops
with fake implementations, so they are captured inside that graph.

    lowbit.quantize_(model, lowbit.Int4WeightOnlyConfig(group_size=32), fuse_projections=True)
    static_compiled_decode(model, max_cache_len=1024)
    model.generate(**inputs, max_new_tokens=64)   # compiles once (first call), then reuses
"""

from __future__ import annotations

import itertools
import logging
import types
import weakref

import torch
from torch import nn

__all__ = ["DECODE_ATTENTION", "count_compiles", "static_compiled_decode"]

log = logging.getLogger(__name__)

# The attention implementation static_compiled_decode(decode_attention="math") installs: one
# query token (a decode step) takes a plain matmul-softmax-matmul that inductor compiles into
# the step; every other call (prefill, perplexity, batches of prompts) runs transformers' SDPA
# function unchanged, with the same boolean masks.
DECODE_ATTENTION = "lowbit_sdpa_math_decode"


def _math_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                           **kwargs):
    """transformers attention function: SDPA, except a single query token with a boolean mask
    (static-cache decode) is computed as softmax(q k^T * scale) v with fp32 softmax.

    SmolLM2 int4, compiled decode on a 2-core Zen4: ATen's CPU flash-attention kernel took
    ~96 us per layer per token for one query against a ~100-slot cache (2.6 ms of a 12 ms
    token); with this form the model alone decoded 87-94 tokens/s instead of 69-75.
    Anything else (several query tokens, a float or per-head mask, dropout) goes to SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    hk = key.shape[1]
    mask = attention_mask
    if (q != 1 or mask is None or mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1
            or mask.shape[2] != 1 or mask.shape[0] not in (1, b) or dropout != 0.0 or h % hk
            or key.shape[-1] != d or value.shape[1] != hk):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = d ** -0.5 if scaling is None else scaling
    # Query heads of one key/value group side by side (head i reads kv head i // (h // hk),
    # as transformers' repeat_kv lays them out), so no copy of the cache per head.
    qg = query.reshape(b, hk, h // hk, d)
    scores = torch.matmul(qg, key.transpose(-1, -2)).float() * scale          # [b, hk, g, kv]
    scores = scores.masked_fill(~mask.reshape(mask.shape[0], 1, 1, mask.shape[-1]), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)                                            # [b, hk, g, d]
    return out.reshape(b, 1, h, value.shape[-1]), None


def _use_math_decode_attention(model: nn.Module) -> bool:
    """Register and select DECODE_ATTENTION where the model runs SDPA; False if it cannot."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", DECODE_ATTENTION):
        return False
    AttentionInterface.register(DECODE_ATTENTION, _math_decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and getattr(c, "_attn_implementation", None) == "sdpa":
            c._attn_implementation = DECODE_ATTENTION
    return True


def static_compiled_decode(
    model: nn.Module,
    max_cache_len: int,
    *,
    mode: str | None = None,
    backend: str = "inductor",
    fullgraph: bool = True,
    skip_module_guards: bool = True,
    cpp_wrapper: bool = False,
    decode_attention: str = "auto",
) -> None:
    """Make ``model.generate`` use a static KV cache of ``max_cache_len`` and a compiled decode step.

    Args:
        model: a transformers generative model (``generation_config`` and ``generate``).
        max_cache_len: tokens the cache holds (prompt + new tokens of the longest call).
            A call that needs more gets a larger cache, and that one recompiles.
        mode: ``torch.compile`` mode; default ``"reduce-overhead"`` (CUDA graphs) on CUDA
            and ``"default"`` elsewhere (CUDA graphs do not exist on CPU).
        backend: ``torch.compile`` backend (``"eager"``/``"aot_eager"`` for tests).
        fullgraph: compile the decode step as one graph (a graph break raises).
        skip_module_guards: drop dynamo's guards on the model's modules and parameters
            (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``), keeping those on the
            step's inputs and the cache (default on). Checking them took ~2-3 ms per decode
            step for SmolLM2 with packed weights (121 quantized linears, ~3,500 of the 4,018
            guards), 15-25% of a token: 2-core Zen5, the int4 model alone, 71.9 tokens/s with
            them, 91.0 without (benchmarks/results/amd-zen5-2c-decode-guards-2026-12-07.md).
            Made safe by giving each model its own compiled step (a function with its own
            code object, so dynamo never shares it between instances of a class) and by
            noticing what the skipped guards would have caught in practice: a parameter,
            buffer or submodule of the model assigned (torch's global registration hooks)
            and the model's ``training`` flag (a changed model compiles a new step). A change to other module attributes after
            the first compiled call is not seen: call ``static_compiled_decode`` again.
            ``False``: transformers' own compiled call, with every guard.
        cpp_wrapper: inductor's C++ wrapper for the compiled step (``backend="inductor"``
            only): the graph's kernels are called from C++ instead of generated Python.
            SmolLM2 int4 on a 2-core Sapphire Rapids VM (loaded): 65-88 tokens/s instead
            of 44-57, but the first call compiled for 200 s instead of 27 s.

        decode_attention: ``"math"`` computes a decode step's attention (one query token) as
            matmul-softmax-matmul inside the compiled step instead of SDPA (prefill and every
            other call keep SDPA; see DECODE_ATTENTION); ``"sdpa"`` leaves the model's
            attention alone; ``"auto"`` (default): ``"math"`` on CPU for models running SDPA,
            ``"sdpa"`` elsewhere. Measured on CPU only (SmolLM2 int4 alone in the process, 2-core
            Zen4: 87-94 tokens/s instead of 69-75). The model keeps the setting afterwards: a
            decode step run outside the compiled graph also takes it (slower there than SDPA).

    Prefill (the prompt) runs eagerly, as transformers does it: its length changes per call.
    """
    gen = getattr(model, "generation_config", None)
    if gen is None or not hasattr(model, "generate"):
        raise TypeError(
            f"static_compiled_decode needs a transformers generative model (with generation_config "
            f"and generate), got {type(model).__name__}"
        )
    if isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int) or max_cache_len < 2:
        raise ValueError(f"max_cache_len must be an integer >= 2 (prompt + new tokens), got {max_cache_len!r}")
    try:
        from transformers.generation import CompileConfig
    except ImportError:
        raise ValueError(
            "static_compiled_decode needs transformers with generation.CompileConfig (>= 4.48); "
            "upgrade transformers"
        ) from None
    if decode_attention not in ("auto", "math", "sdpa"):
        raise ValueError(f"decode_attention must be 'auto', 'math' or 'sdpa', got {decode_attention!r}")
    device = next(model.parameters()).device
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    math_attention = decode_attention == "math" or (decode_attention == "auto" and device.type == "cpu")
    if math_attention and attn not in ("sdpa", DECODE_ATTENTION):
        if decode_attention == "math":
            raise ValueError(
                "decode_attention='math' needs a model running transformers' SDPA attention "
                f"(config._attn_implementation 'sdpa', got {attn!r})"
            )
        math_attention = False  # auto: leave eager / flash / other implementations alone
    if mode is None:
        mode = "reduce-overhead" if device.type == "cuda" else "default"
    options = {}
    guard_filter = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None) if skip_module_guards else None
    if guard_filter is not None:
        options["guard_filter_fn"] = guard_filter
    if cpp_wrapper:
        if backend != "inductor":
            raise ValueError(f"cpp_wrapper=True needs backend='inductor', got backend={backend!r}")
        options["cpp_wrapper"] = True
    if not options:
        cc = CompileConfig(fullgraph=fullgraph, mode=mode, backend=backend)
    else:
        # torch.compile takes a mode or options, not both: the mode's options go in by hand.
        if mode == "reduce-overhead":
            options["triton.cudagraphs"] = True
        elif mode not in ("default", None):
            raise ValueError(f"mode {mode!r} with skip_module_guards or cpp_wrapper: pass mode None/'default'/"
                             "'reduce-overhead', or skip_module_guards=False")
        cc = CompileConfig(fullgraph=fullgraph, mode=None, backend=backend, options=options)
    cc._compile_all_devices = True  # transformers compiles on CUDA only unless asked
    if math_attention and not _use_math_decode_attention(model) and decode_attention == "math":
        raise ValueError("decode_attention='math' needs transformers' AttentionInterface (transformers >= 4.48)")
    gen.cache_implementation = "static"
    gen.compile_config = cc
    _STEPS.pop(model, None)
    if guard_filter is not None:
        model.get_compiled_call = _OwnCompiledCall(model)
    elif "get_compiled_call" in vars(model):
        del model.get_compiled_call  # back to transformers' own
    gen.max_cache_len = max_cache_len  # read by transformers >= 5 (ignored by older versions)
    # Older versions size the cache from the largest length seen so far; start there.
    model._previous_max_cache_length = max(max_cache_len, getattr(model, "_previous_max_cache_length", -1))
    log.info("lowbit: static cache of %d tokens, decode step compiled (%s, mode %s)", max_cache_len, backend, mode)


class _Step:
    """A model's compiled decode step with the module guards skipped (static_compiled_decode):
    the CompileConfig it was made for, torch.compile's arguments, the compiled function and
    the model's version (bumped when a parameter, buffer or submodule of it is assigned)."""

    __slots__ = ("config", "kwargs", "fn", "version", "compiled_at", "training", "__weakref__")

    def __init__(self, config):
        self.config, self.kwargs, self.fn = config, config.to_dict(), None
        self.version, self.compiled_at, self.training = 0, -1, None


_STEPS: weakref.WeakKeyDictionary[nn.Module, _Step] = weakref.WeakKeyDictionary()
# module -> the steps of the models it belongs to (filled when a step compiles).
_OWNERS: weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet] = weakref.WeakKeyDictionary()
_STEP_NUMBERS = itertools.count()
_HOOKS: list = []


def _assigned(module, name, value):
    """torch's global registration hook: a parameter, buffer or submodule was assigned."""
    if torch.compiler.is_compiling():  # inside a traced forward: part of its graph (and no
        return None  # guards on _OWNERS, ~460 of them for SmolLM2)
    for step in _OWNERS.get(module, ()):
        step.version += 1
    return None


def _track(model: nn.Module, step: _Step) -> None:
    """Bump step.version whenever a parameter, buffer or submodule of model is assigned:
    what dynamo's skipped module guards would have caught in practice. torch's global
    registration hooks cost one dict lookup per assignment anywhere; walking the model per
    step instead (ids of its 272 tensors) took 1.2 ms for SmolLM2, a third of the guards."""
    if not _HOOKS:
        from torch.nn.modules import module as _m

        _HOOKS.extend(
            register(_assigned)
            for register in (_m.register_module_parameter_registration_hook,
                             _m.register_module_buffer_registration_hook,
                             _m.register_module_module_registration_hook)
        )
    for mod in model.modules():
        _OWNERS.setdefault(mod, weakref.WeakSet()).add(step)


def _own_step(model: nn.Module):
    """``model.__call__`` with a code object of its own: dynamo keeps compiled code per code
    object, so this model's step is never shared with another one (transformers compiles
    ``model.__call__``, whose code, nn.Module's, every module shares)."""
    call = type(model).__call__
    name = f"lowbit_decode_step_{next(_STEP_NUMBERS)}"
    names = {"co_name": name, **({"co_qualname": name} if hasattr(call.__code__, "co_qualname") else {})}  # 3.11+
    code = call.__code__.replace(**names)
    fn = types.FunctionType(code, call.__globals__, name, call.__defaults__, call.__closure__)
    return types.MethodType(fn, model)


class _OwnCompiledCall:
    """``model.get_compiled_call`` under ``static_compiled_decode(skip_module_guards=True)``:
    a callable that pickles and deep-copies as "this for the new model" (a bound method of
    a module function unpickled as ``getattr(model, name)`` and failed after ``torch.save``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, compile_config=None):
        return _own_compiled_call(self.model, compile_config)

    def __reduce__(self):
        return type(self), (self.model,)


def _own_compiled_call(model: nn.Module, compile_config=None):
    """The model's ``get_compiled_call`` (transformers' generate asks it for the compiled
    decode step) under ``static_compiled_decode(skip_module_guards=True)``."""
    cc = compile_config if compile_config is not None else getattr(model.generation_config, "compile_config", None)
    step = _STEPS.get(model)
    if step is None or cc != step.config:  # generate passes a deep copy of the config
        # A copy of the model (deepcopy and pickle rebind _OwnCompiledCall to it) or another config.
        if cc is None or "guard_filter_fn" not in (getattr(cc, "options", None) or {}):
            return type(model).get_compiled_call(model, compile_config)  # transformers' own, every guard
        step = _STEPS[model] = _Step(cc)
    if step.fn is None or step.version != step.compiled_at or model.training != step.training:
        if step.fn is not None:
            log.info("lowbit: the model changed after its decode step was compiled; compiling a new one")
        _track(model, step)
        step.compiled_at, step.training = step.version, model.training
        step.fn = torch.compile(_own_step(model), **step.kwargs)
    return step.fn


def count_compiles() -> int:
    """Graphs dynamo compiled so far in this process (a test helper for recompiles)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
