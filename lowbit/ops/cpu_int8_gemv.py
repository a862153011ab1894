"""Small-batch int8 weight-only GEMV on CPU (lowbit/csrc/int8_wo_gemv.cpp).

``int8_wo_gemv(x, q, scale)`` = ``(x.float() @ q.float().T * scale).to(x.dtype)`` for float
activations ``x`` [M, K] (fp32, bf16 or fp16) and lowbit's Int8Tensor codes ``q`` [N, K]
(row-major, read in place) with one scale per output channel. It is path ``"cpp_gemv"`` of
the int8 weight-only linear (ops/cpu.py, the cpu_paths tables) at small M, where the layer
is bound by reading its weight: x stays fp32 (no rounding to bf16, unlike ATen's
``_weight_int8pack_mm``), any K works (no multiple-of-16 or alignment preconditions), and
each weight is converted once per 4 activation rows.

Every argument is checked here, in Python, before the extension sees it (an exception
thrown inside the extension has crashed a host whose compiler runtime differed from
torch's). The checks use shapes and dtypes only, so they also run at torch.compile trace
time; the op has a fake implementation for tracing.
"""

from __future__ import annotations

import torch

from ._ext import cpu_extension_status, load_cpu_extension

__all__ = ["INT8_GEMV_ISAS", "int8_gemv_available", "int8_gemv_best_isa", "int8_gemv_serves", "int8_wo_gemv"]

# Inner loops of the kernel (its ``isa`` argument); -1 picks the best this CPU runs.
INT8_GEMV_ISAS: dict[str, int] = {"scalar": 0, "avx2": 1, "avx512": 2}
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_OP = "int8_wo_gemv"

# Probes run eagerly at torch.compile trace time (assume_constant_result); kept here rather
# than in functools.cache, whose wrapper dynamo looks through.
_probed: dict[str, object] = {}


@torch._dynamo.assume_constant_result
def int8_gemv_available() -> bool:
    """True once lowbit's C++ CPU extension is built with ``lowbit_ext::int8_wo_gemv`` in it
    (its fake implementation for torch.compile is registered then too)."""
    if "available" not in _probed:
        ok = bool(load_cpu_extension()) and hasattr(torch.ops.lowbit_ext, _OP)
        if ok:
            torch.library.register_fake(f"lowbit_ext::{_OP}", _fake)
        _probed["available"] = ok
    return _probed["available"]


@torch._dynamo.assume_constant_result
def int8_gemv_best_isa() -> int:
    """The widest inner loop this CPU runs (an ``INT8_GEMV_ISAS`` value); -1 without the extension."""
    if "best_isa" not in _probed:
        _probed["best_isa"] = int(torch.ops.lowbit_ext.int8_wo_gemv_best_isa()) if int8_gemv_available() else -1
    return _probed["best_isa"]


def _fake(x, q, scale, isa=-1):
    return x.new_empty((x.shape[0], q.shape[0]))


def _check(x, q, scale, isa) -> None:
    fn = f"lowbit {_OP}"
    for name, t in (("x", x), ("q", q), ("scale", scale)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{fn}: {name} must be on the CPU, got {t.device}; move it with .cpu()")
    if x.dim() != 2 or x.dtype not in _FLOATS:
        raise TypeError(f"{fn}: x must be a 2-D float32/bfloat16/float16 [M, K] tensor, got {x.dtype} "
                        f"{tuple(x.shape)}; reshape or cast it")
    if q.dim() != 2 or q.dtype != torch.int8:
        raise TypeError(f"{fn}: q must be the int8 [N, K] weight codes, got {q.dtype} {tuple(q.shape)}")
    if x.shape[1] != q.shape[1]:
        raise ValueError(f"{fn}: x is [M, K] = {tuple(x.shape)} and q is [N, K] = {tuple(q.shape)}: K differs; "
                         "pass the weight as stored ([out_features, in_features])")
    if not scale.dtype.is_floating_point or scale.numel() != q.shape[0]:
        raise ValueError(f"{fn}: scale must hold one float per output channel ({q.shape[0]}), got "
                         f"{scale.dtype} {tuple(scale.shape)}")
    if isinstance(isa, bool) or not isinstance(isa, int):
        raise TypeError(f"{fn}: isa must be an int (-1 or one of {INT8_GEMV_ISAS}), got {isa!r}")
    if isa != -1 and isa not in INT8_GEMV_ISAS.values():
        raise ValueError(f"{fn}: isa must be -1 (auto) or one of {INT8_GEMV_ISAS}, got {isa}")
    if isa > int8_gemv_best_isa():
        raise ValueError(f"{fn}: isa {isa} cannot run on this CPU (the best it runs is {int8_gemv_best_isa()}); "
                         "pass isa=-1")


def int8_gemv_serves(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> bool:
    """The cheap subset of the checks that an Int8Tensor's own linear call can fail (the op
    kernel asks this per call, then calls the extension directly; anything else takes
    another path): 2-D float activations on the CPU, 2-D int8 codes with the same K, one
    float32 scale per output channel, all contiguous."""
    return (
        x.dim() == 2 and x.dtype in _FLOATS and x.device.type == "cpu" and x.is_contiguous()
        and q.dtype == torch.int8 and q.dim() == 2 and q.shape[1] == x.shape[1] and q.is_contiguous()
        and scale.dtype == torch.float32 and scale.numel() == q.shape[0] and scale.is_contiguous()
    )


def int8_wo_gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, isa: int = -1) -> torch.Tensor:
    """[M, N] in x's dtype: ``scale[n] * sum_k x[m, k] q[n, k]`` with fp32 sums.

    ``x``: [M, K] fp32/bf16/fp16; ``q``: int8 [N, K]; ``scale``: N floats (any shape).
    Non-contiguous inputs are copied; M = 0 gives an empty [0, N]. ``isa``: -1 (the best loop
    this CPU runs) or a value of ``INT8_GEMV_ISAS`` (0, the scalar loop, is the tests'
    reference). Raises RuntimeError without the C++ extension (check :func:`int8_gemv_available`).
    """
    if not int8_gemv_available():
        raise RuntimeError(f"lowbit {_OP}: lowbit's C++ CPU extension is not available "
                           f"({cpu_extension_status().reason}); check int8_gemv_available() first, "
                           "or see lowbit.env_report()")
    _check(x, q, scale, isa)
    return torch.ops.lowbit_ext.int8_wo_gemv(x.contiguous(), q.contiguous(),
                                             scale.reshape(-1).to(torch.float32).contiguous(), isa)
