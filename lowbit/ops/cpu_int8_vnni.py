"""Exact int8 x int8 -> int32 GEMM for small / mid batch on CPU (lowbit/csrc/int8_vnni_cpu.cpp).

``int8_vnni_gemm(xq, q)`` = ``xq @ q.T`` in int32 for int8 activation codes ``xq`` [M, K]
and int8 weight codes ``q`` [N, K] as lowbit's Int8Tensor stores them (row-major, read in
place: nothing is repacked per call). It is meant as the integer core of the "int8
dynamic" linear at small / mid M (path "vnni" in ops/cpu.py and the cpu_paths tables),
where it streams the weight once per call: on a 2-core AVX512-VNNI Zen5, 4096x4096 takes about as long as reading the 16 MiB weight up to M ~ 8 (0.5-0.57 ms),
0.69 ms at M = 16 and 1.65 ms at M = 64, while oneDNN's ``torch._int_mm`` spends 1.4-1.9 ms
at M = 2..16 and 2.5 ms at M = 64 (benchmarks/int8_vnni_cpu.py).

Every argument is checked here, in Python, before the extension sees it: an exception
thrown inside the extension has crashed a host whose compiler runtime differed from
torch's, so bad input must never reach the C++ code (its TORCH_CHECKs are a second line).
The checks use shapes and dtypes only, so they also run at torch.compile trace time; the
op has a fake implementation for tracing (registered once the extension is loaded).
"""

from __future__ import annotations

import torch

from ._ext import cpu_extension_status, load_cpu_extension
from .reference import quantize_per_token_int8 as _reference_quantize

__all__ = [
    "INT8_VNNI_ISAS",
    "VNNI_LINEAR_DTYPES",
    "int8_vnni_available",
    "int8_vnni_best_isa",
    "int8_vnni_gemm",
    "int8_vnni_linear",
    "int8_vnni_linear_serves",
    "quantize_per_token_int8",
]

# Inner loops of the kernel (its ``isa`` argument); -1 picks the best this CPU runs.
INT8_VNNI_ISAS: dict[str, int] = {"scalar": 0, "avx2": 1, "avx512_vnni": 2}

_OP = "int8_vnni_gemm"


# The probes below run eagerly at torch.compile trace time (assume_constant_result): they
# build/load the extension and register the fake, which dynamo must not trace. Their
# results are kept in _probed rather than by functools.cache, whose wrapper dynamo looks
# through (with a warning per call site).
_probed: dict[str, object] = {}


@torch._dynamo.assume_constant_result
def int8_vnni_available() -> bool:
    """True once lowbit's C++ CPU extension is built and has ``lowbit_ext::int8_vnni_gemm``."""
    if "available" not in _probed:
        _probed["available"] = bool(load_cpu_extension()) and hasattr(torch.ops.lowbit_ext, _OP)
    return _probed["available"]


@torch._dynamo.assume_constant_result
def int8_vnni_best_isa() -> int:
    """The widest inner loop this CPU runs (an ``INT8_VNNI_ISAS`` value); -1 without the extension."""
    if "best_isa" not in _probed:
        _probed["best_isa"] = int(torch.ops.lowbit_ext.int8_vnni_best_isa()) if int8_vnni_available() else -1
    return _probed["best_isa"]


@torch._dynamo.assume_constant_result
def _traceable() -> bool:
    """Give ``lowbit_ext::int8_vnni_gemm`` a fake implementation (once the extension is
    loaded) so torch.compile graphs can call it; False without the extension."""
    if "traceable" not in _probed:
        _probed["traceable"] = int8_vnni_available()
        if _probed["traceable"]:
            torch.library.register_fake(f"lowbit_ext::{_OP}", _fake)
    return _probed["traceable"]


def _fake(xq, q, isa=-1):
    return xq.new_empty((xq.shape[0], q.shape[0]), dtype=torch.int32)


def _check(xq: torch.Tensor | None, q: torch.Tensor, isa: int, fn: str = f"lowbit {_OP}", k: int | None = None) -> None:
    """Argument checks of int8_vnni_gemm (``xq``) and int8_vnni_linear (``xq=None``, ``k``:
    the activations' K, whose own checks the caller made)."""
    for name, t, dims in (("xq", xq, "[M, K]"), ("q", q, "[N, K]")):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor (int8 {dims}), got {type(t).__name__}")
        if t.dtype != torch.int8:
            raise TypeError(f"{fn}: {name} must be int8 {dims}, got {t.dtype}; pass the int8 codes (.to(torch.int8))")
        if t.dim() != 2:
            raise ValueError(f"{fn}: {name} must be 2-D {dims}, got shape {tuple(t.shape)}; reshape it")
        if t.device.type != "cpu":
            raise ValueError(f"{fn}: {name} must be on the CPU, got {t.device}; move it with .cpu()")
    kx, xname = (xq.shape[1], f"xq is [M, K] = {tuple(xq.shape)}") if xq is not None else (k, f"x has K = {k}")
    if kx != q.shape[1]:
        raise ValueError(
            f"{fn}: {xname} and q is [N, K] = {tuple(q.shape)}: K differs "
            f"({kx} vs {q.shape[1]}); pass the weight as stored ([out_features, in_features])"
        )
    if isinstance(isa, bool) or not isinstance(isa, int):
        raise TypeError(f"{fn}: isa must be an int (-1 or one of {INT8_VNNI_ISAS}), got {isa!r}")
    if isa != -1 and isa not in INT8_VNNI_ISAS.values():
        raise ValueError(f"{fn}: isa must be -1 (auto) or one of {INT8_VNNI_ISAS}, got {isa}")
    if isa > int8_vnni_best_isa():
        raise ValueError(
            f"{fn}: isa {isa} cannot run on this CPU (the best it runs is {int8_vnni_best_isa()}); pass isa=-1"
        )


def int8_vnni_gemm(xq: torch.Tensor, q: torch.Tensor, isa: int = -1) -> torch.Tensor:
    """int32 [M, N] = ``xq @ q.T``, exact (int32 wraparound only if a result exceeds int32,
    which needs K > 132104).

    ``xq``: int8 [M, K] activation codes; ``q``: int8 [N, K] weight codes (any int8 values on
    both sides). Non-contiguous inputs are copied to contiguous ones; M = 0 gives an empty
    [0, N] result without calling the kernel. ``isa``: -1 (the best loop this CPU runs) or a
    value of ``INT8_VNNI_ISAS`` (0, the scalar loop, is the tests' reference). Raises
    RuntimeError if the C++ extension is not available (check :func:`int8_vnni_available`).
    """
    if not int8_vnni_available():
        raise RuntimeError(
            f"lowbit {_OP}: lowbit's C++ CPU extension is not available ({cpu_extension_status().reason}); "
            "check int8_vnni_available() first, or see lowbit.env_report()"
        )
    _check(xq, q, isa)
    if xq.shape[0] == 0:
        return torch.zeros((0, q.shape[0]), dtype=torch.int32)
    _traceable()  # before the op is first traced
    return torch.ops.lowbit_ext.int8_vnni_gemm(xq.contiguous(), q.contiguous(), isa)


_QUANT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def quantize_per_token_int8(x: torch.Tensor, isa: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 codes [M, K] and float32 scales [M, 1] of a 2-D CPU tensor.

    The same bits as ``lowbit.ops.reference.quantize_per_token_int8`` for finite inputs, in
    one C++ pass per row (the PyTorch composition took 3.8 ms at 256 x 4096 on a 2-core
    Zen5, more than the int8 GEMM after it). Falls back to the reference without the
    extension and for other dtypes or devices. Rows with NaN/inf give codes as undefined as
    the reference's. ``isa``: -1 (AVX512 where present, else AVX2), 1 (AVX2 where present,
    else scalar) or 0 (scalar); the tests force each.
    """
    if isa not in (-1, 0, 1):
        raise ValueError(f"lowbit quantize_per_token_int8: isa must be -1 (auto), 0 (scalar) or 1 (avx2), got {isa}")
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() != 2
        or x.dtype not in _QUANT_DTYPES
        or x.device.type != "cpu"
        or not _quant_traceable()
    ):
        return _reference_quantize(x)
    return torch.ops.lowbit_ext.quantize_per_token_int8(x.contiguous(), isa)


@torch._dynamo.assume_constant_result
def _quant_traceable() -> bool:
    """The extension's quantizer, with a fake implementation for torch.compile; False without it."""
    if "quant" not in _probed:
        _probed["quant"] = bool(load_cpu_extension()) and hasattr(torch.ops.lowbit_ext, "quantize_per_token_int8")
        if _probed["quant"]:
            torch.library.register_fake("lowbit_ext::quantize_per_token_int8", _quant_fake)
    return _probed["quant"]


def _quant_fake(x, isa=-1):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0], 1), dtype=torch.float32)


# Activation dtypes of the fused int8-dynamic linear (int8_vnni_linear).
VNNI_LINEAR_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def int8_vnni_linear(x: torch.Tensor, q: torch.Tensor, ws: torch.Tensor, isa: int = -1) -> torch.Tensor:
    """The int8-dynamic linear in one C++ call: ``x`` [M, K] float32/bfloat16/float16, ``q``
    int8 [N, K] weight codes, ``ws`` float32 [N] (or [N, 1]) per-channel scales -> x.dtype [M, N].

    Bit-identical to quantize_per_token_int8 + int8_vnni_gemm + ``(acc.float() * xs *
    ws).to(x.dtype)`` (tests/ops/test_int8_vnni_cpu.py), without the five ATen calls of that
    epilogue (~25-40 us a call at M = 1, more than the GEMM of a 576x576 layer). M = 0 gives
    an empty [0, N] result. Raises like :func:`int8_vnni_gemm`; ``x`` must be one of the three
    float dtypes.
    """
    fn = "lowbit int8_vnni_linear"
    if not int8_vnni_available() or not hasattr(torch.ops.lowbit_ext, "int8_vnni_linear"):
        raise RuntimeError(
            f"{fn}: lowbit's C++ CPU extension is not available ({cpu_extension_status().reason}); "
            "check int8_vnni_available() first, or see lowbit.env_report()"
        )
    if not isinstance(x, torch.Tensor) or x.dtype not in VNNI_LINEAR_DTYPES or x.dim() != 2 or x.device.type != "cpu":
        got = f"{x.dtype} {tuple(x.shape)} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{fn}: x must be a 2-D float32/bfloat16/float16 CPU tensor [M, K], got {got}")
    _check(None, q, isa, fn, k=x.shape[1])
    if not isinstance(ws, torch.Tensor) or ws.numel() != q.shape[0] or ws.device.type != "cpu":
        got = f"{tuple(ws.shape)} on {ws.device}" if isinstance(ws, torch.Tensor) else type(ws).__name__
        raise ValueError(f"{fn}: ws must be the {q.shape[0]} per-channel scales of q (a CPU tensor), got {got}")
    if x.shape[0] == 0:
        return x.new_empty((0, q.shape[0]))
    _linear_traceable()
    return torch.ops.lowbit_ext.int8_vnni_linear(
        x.contiguous(), q.contiguous(), ws.reshape(-1).to(torch.float32).contiguous(), isa
    )


def int8_vnni_linear_serves(x: torch.Tensor, q: torch.Tensor, ws: torch.Tensor) -> bool:
    """True if the extension's fused linear can take these tensors as they are: the cheap
    checks an Int8DynActTensor's own linear call can fail (2-D float activations with M >= 1
    on the CPU, 2-D int8 codes with the same K, one float32 scale per output channel, all
    contiguous) and the op present. lowbit/ops/cpu.py asks this per call and then calls
    ``torch.ops.lowbit_ext.int8_vnni_linear`` directly: :func:`int8_vnni_linear`'s full
    argument checks cost ~8 us a call (576x576 at M = 1: 19.9 vs 11.5 us on a 2-core Zen4).
    """
    return (
        x.dim() == 2 and x.dtype in VNNI_LINEAR_DTYPES and x.device.type == "cpu" and x.shape[0] > 0 and x.is_contiguous()
        and q.dtype == torch.int8 and q.dim() == 2 and q.shape[1] == x.shape[1] and q.is_contiguous()
        and ws.dtype == torch.float32 and ws.numel() == q.shape[0] and ws.is_contiguous()
        and _linear_traceable()
    )


@torch._dynamo.assume_constant_result
def _linear_traceable() -> bool:
    if "linear" not in _probed:
        _probed["linear"] = int8_vnni_available() and hasattr(torch.ops.lowbit_ext, "int8_vnni_linear")
        if _probed["linear"]:
            torch.library.register_fake("lowbit_ext::int8_vnni_linear", _linear_fake)
    return _probed["linear"]


def _linear_fake(x, q, ws, isa=-1):
    return x.new_empty((x.shape[0], q.shape[0]))
