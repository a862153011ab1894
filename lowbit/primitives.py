"""Affine quantization primitives: choose qparams, quantize, dequantize.

Everything is expressed through ``block_size``: a tuple with one entry per input
dimension; each entry divides that dimension, and all elements of one block share a
scale (and zero point). ``granularity.py`` turns per-tensor / per-row / per-group /
per-token into block sizes. Scales and zero points keep every dimension of the input,
with size ``shape[d] // block_size[d]``, so they broadcast back over the blocks.

Zero-point kinds (``ZeroPointKind``):

* ``INT``   ``x ~ (q - zero_point) * scale``; the zero point lives in the quantized
  domain (GPTQ/AWQ, int8 asymmetric).
* ``FLOAT`` ``x ~ (q - mid) * scale + zero_point`` with ``mid = (qmin + qmax + 1) // 2``;
  the zero point is a float offset in the float domain (the tinygemm / HQQ convention).
* ``NONE``  ``x ~ q * scale`` (symmetric, signed codes).

Public functions validate their arguments and raise ``ValueError`` saying what was
expected, what was given and how to fix it. The ``_``-prefixed twins skip validation
(no ``.item()`` syncs) and are what packed formats call on hot paths.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch

__all__ = [
    "MappingType",
    "ZeroPointKind",
    "choose_qparams_affine",
    "quantize_affine",
    "dequantize_affine",
    "choose_qparams_float8",
    "quantize_float8",
    "dequantize_float8",
    "sqnr",
    "dtype_range",
]


class MappingType(str, enum.Enum):
    """How the float range maps onto the integer range."""

    SYMMETRIC = "symmetric"
    ASYMMETRIC = "asymmetric"


class ZeroPointKind(str, enum.Enum):
    """Where the zero point is applied (see module docstring)."""

    INT = "int"
    FLOAT = "float"
    NONE = "none"


_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32)
_FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_DEFAULT_EPS = torch.finfo(torch.float32).eps  # smallest scale choose_qparams_affine returns


def dtype_range(dtype: torch.dtype) -> tuple[int, int]:
    """(min, max) code of an integer container dtype."""
    info = torch.iinfo(dtype)
    return info.min, info.max


def _fmt_dtype(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_block_size(shape: Sequence[int], block_size: Sequence[int]) -> None:
    if len(block_size) != len(shape):
        raise ValueError(
            f"block_size needs one entry per input dimension: input shape {tuple(shape)} "
            f"has {len(shape)} dims, got block_size={tuple(block_size)}; "
            "use lowbit.granularity helpers (per_tensor/per_row/per_group/per_token) to build it"
        )
    for d, (s, b) in enumerate(zip(shape, block_size)):
        if not isinstance(b, int) or b <= 0:
            raise ValueError(f"block_size entries must be positive ints, got {b!r} at dim {d}")
        if s % b != 0:
            raise ValueError(
                f"block_size[{d}]={b} does not divide input dim {d} of size {s} "
                f"(input shape {tuple(shape)}); pick a block size that divides {s}"
            )


def _check_range(quant_min: int, quant_max: int, container: torch.dtype | None) -> None:
    if not (isinstance(quant_min, int) and isinstance(quant_max, int)):
        raise ValueError(f"quant_min/quant_max must be ints, got {quant_min!r}, {quant_max!r}")
    if quant_min >= quant_max:
        raise ValueError(
            f"quant_min must be < quant_max, got quant_min={quant_min}, quant_max={quant_max}"
        )
    if container is not None:
        lo, hi = dtype_range(container)
        if quant_min < lo or quant_max > hi:
            raise ValueError(
                f"[{quant_min}, {quant_max}] does not fit in {_fmt_dtype(container)} "
                f"(range [{lo}, {hi}]); use a wider container dtype or a narrower range"
            )


def _check_float_input(x: torch.Tensor, name: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be a float tensor (float32/float16/bfloat16/float64), "
            f"got {_fmt_dtype(x.dtype)}"
        )
    if x.numel() and x.device.type != "meta" and not bool(torch.isfinite(x).all()):  # meta: no values
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} has {n_bad} NaN/Inf values out of {x.numel()}; quantization needs "
            "finite values (check the model weights or activations upstream)"
        )


def _blocked(x: torch.Tensor, block_size: Sequence[int]) -> torch.Tensor:
    """View ``x`` as [n0, b0, n1, b1, ...] so block reductions run over odd dims."""
    shape = []
    for s, b in zip(x.shape, block_size):
        shape += [s // b, b]
    return x.reshape(shape)


def _block_reduce_dims(ndim: int) -> tuple[int, ...]:
    return tuple(range(1, 2 * ndim, 2))


def _expand_to_blocks(p: torch.Tensor, shape: Sequence[int], block_size: Sequence[int]) -> torch.Tensor:
    """Broadcast a per-block parameter (reduced shape) back over ``shape``."""
    view = []
    for s, b in zip(shape, block_size):
        view += [s // b, 1]
    expand = []
    for s, b in zip(shape, block_size):
        expand += [s // b, b]
    return p.reshape(view).expand(expand).reshape(shape)


def _reduced_shape(shape: Sequence[int], block_size: Sequence[int]) -> list[int]:
    return [s // b for s, b in zip(shape, block_size)]


def _mid(quant_min: int, quant_max: int) -> int:
    return (quant_min + quant_max + 1) // 2


def _symmetric_half_range(quant_min: int, quant_max: int, zero_point_kind: ZeroPointKind) -> tuple[int, int]:
    """(center, half): symmetric codes are center +- half, so the odd code out is never used."""
    center = 0 if zero_point_kind is ZeroPointKind.NONE else _mid(quant_min, quant_max)
    half = min(quant_max - center, center - quant_min)
    return center, half


# ----------------------------------------------------------------------------- choose


def _round_scale_up(scale: torch.Tensor, exact: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    """``scale`` in ``scale_dtype``, moved up one ulp where rounding made it smaller than
    ``exact``: a stored symmetric scale below amax / half would map amax past the
    symmetric range onto the odd code (seen with fp16 subnormal scales)."""
    s = scale.to(scale_dtype)
    up = torch.nextafter(s, torch.full_like(s, float("inf")))
    return torch.where(s.to(torch.float32) < exact, up, s).to(torch.float32)


def _choose_qparams_affine(
    x: torch.Tensor,
    mapping_type: MappingType,
    block_size: Sequence[int],
    quant_min: int,
    quant_max: int,
    eps: float | None,
    scale_dtype: torch.dtype,
    zero_point_dtype: torch.dtype | None,
    preserve_zero: bool,
    zero_point_kind: ZeroPointKind,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    xb = _blocked(x.to(torch.float32), block_size)
    dims = _block_reduce_dims(x.ndim)
    rshape = _reduced_shape(x.shape, block_size)
    if eps is None:
        # float32's epsilon whatever the scale dtype: bfloat16's (7.8e-3) would floor the
        # scales of typical LLM weights (|w| ~ 0.05, scale ~ 4e-4) and cost ~25 dB of SQNR.
        # 1.2e-7 stays nonzero in float16 (as a subnormal) and bfloat16.
        eps = _DEFAULT_EPS
    if mapping_type is MappingType.SYMMETRIC:
        center, half = _symmetric_half_range(quant_min, quant_max, zero_point_kind)
        amax = xb.abs().amax(dim=dims)
        scale = _round_scale_up((amax / half).clamp(min=eps), amax / half, scale_dtype)
        if zero_point_kind is ZeroPointKind.NONE:
            zp = None
        elif zero_point_kind is ZeroPointKind.INT:
            zp = torch.full_like(scale, center)
        else:  # FLOAT: centred on the mid code, so the float offset is 0
            zp = torch.zeros_like(scale)
    else:
        min_val = xb.amin(dim=dims)
        max_val = xb.amax(dim=dims)
        if preserve_zero:
            min_val = min_val.clamp(max=0)
            max_val = max_val.clamp(min=0)
        scale = ((max_val - min_val) / float(quant_max - quant_min)).clamp(min=eps)
        if zero_point_kind is ZeroPointKind.INT:
            if preserve_zero:
                zp = quant_min - torch.round(min_val / scale)
            else:
                zp = quant_min - min_val / scale
                zp = torch.round(zp)
            zp = zp.clamp(quant_min, quant_max)
        elif zero_point_kind is ZeroPointKind.FLOAT:
            # x = (q - mid) * s + z with q = qmin at min_val  =>  z = min_val + (mid - qmin) * s
            zp = min_val + (_mid(quant_min, quant_max) - quant_min) * scale
        else:
            raise ValueError(
                "asymmetric mapping needs a zero point: got zero_point_kind=NONE; "
                "use MappingType.SYMMETRIC or zero_point_kind INT/FLOAT"
            )
    scale = scale.reshape(rshape).to(scale_dtype)
    if zp is not None:
        zp = zp.reshape(rshape)
        if zero_point_dtype is not None:
            zp = zp.to(zero_point_dtype)
        elif zero_point_kind is ZeroPointKind.INT:
            zp = zp.to(torch.int32)
        else:
            zp = zp.to(scale_dtype)
    return scale, zp


def choose_qparams_affine(
    input: torch.Tensor,
    mapping_type: MappingType | str,
    block_size: Sequence[int],
    target_dtype: torch.dtype = torch.int8,
    quant_min: int | None = None,
    quant_max: int | None = None,
    eps: float | None = None,
    scale_dtype: torch.dtype | None = None,
    zero_point_dtype: torch.dtype | None = None,
    preserve_zero: bool = True,
    zero_point_kind: ZeroPointKind | str = ZeroPointKind.INT,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose scale and zero point per block of ``input``.

    Args:
        input: float tensor to quantize.
        mapping_type: ``"symmetric"`` or ``"asymmetric"``.
        block_size: one entry per dim of ``input``; each divides its dim.
        target_dtype: integer container of the codes (int8/uint8/int16/int32).
        quant_min, quant_max: code range; default the container's full range. Any
            width up to 8 bits fits in int8/uint8 (int4: ``0, 15`` or ``-8, 7``).
        eps: smallest scale (default: float32's machine epsilon, for every ``scale_dtype``).
        scale_dtype: dtype of the returned scale (default: ``input.dtype``).
        zero_point_dtype: dtype of the zero point (default int32 for INT, else scale_dtype).
        preserve_zero: widen each block's range to include 0.0 (asymmetric only). With
            ``ZeroPointKind.INT`` 0.0 is then exactly representable, as it always is for
            symmetric mappings; a ``FLOAT`` zero point is a float offset, so 0.0 lies in
            range but need not fall on a code.
        zero_point_kind: ``"int"``, ``"float"`` or ``"none"`` (see module docstring).

    Returns:
        ``(scale, zero_point)``; ``zero_point`` is None for ``ZeroPointKind.NONE``.
    """
    mapping_type = _enum(MappingType, mapping_type, "mapping_type")
    zero_point_kind = _enum(ZeroPointKind, zero_point_kind, "zero_point_kind")
    qmin, qmax = _check_quantize_args(
        input, block_size, target_dtype, quant_min, quant_max, "target_dtype", "choose_qparams_float8"
    )
    if zero_point_kind is ZeroPointKind.NONE and qmin >= 0:
        raise ValueError(
            f"zero_point_kind=NONE needs signed codes (quant_min < 0), got [{qmin}, {qmax}]; "
            "use zero_point_kind='int' for unsigned codes"
        )
    if scale_dtype is None:
        scale_dtype = input.dtype
    if scale_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"scale_dtype must be a float dtype, got {_fmt_dtype(scale_dtype)}")
    if eps is not None and not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    return _choose_qparams_affine(
        input, mapping_type, block_size, qmin, qmax, eps, scale_dtype, zero_point_dtype,
        preserve_zero, zero_point_kind,
    )


# ----------------------------------------------------------------------------- quantize


def _quantize_affine(
    x: torch.Tensor,
    block_size: Sequence[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    output_dtype: torch.dtype,
    quant_min: int,
    quant_max: int,
    zero_point_kind: ZeroPointKind,
) -> torch.Tensor:
    s = _expand_to_blocks(scale.to(torch.float32), x.shape, block_size)
    xf = x.to(torch.float32)
    if zero_point_kind is ZeroPointKind.INT:
        z = _expand_to_blocks(zero_point.to(torch.float32), x.shape, block_size)
        q = torch.round(xf / s) + z
    elif zero_point_kind is ZeroPointKind.FLOAT:
        z = _expand_to_blocks(zero_point.to(torch.float32), x.shape, block_size)
        min_val = z - s * _mid(quant_min, quant_max)
        q = torch.round((xf - min_val) / s)
    else:
        q = torch.round(xf / s)
    return q.clamp(quant_min, quant_max).to(output_dtype)


def quantize_affine(
    input: torch.Tensor,
    block_size: Sequence[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    output_dtype: torch.dtype = torch.int8,
    quant_min: int | None = None,
    quant_max: int | None = None,
    zero_point_kind: ZeroPointKind | str = ZeroPointKind.INT,
) -> torch.Tensor:
    """Quantize ``input`` to integer codes with per-block ``scale``/``zero_point``.

    ``scale`` and ``zero_point`` have the reduced shape ``shape[d] // block_size[d]`` (or
    any shape with that many elements). Codes are clamped to ``[quant_min, quant_max]``
    and stored in ``output_dtype``.
    """
    zero_point_kind = _enum(ZeroPointKind, zero_point_kind, "zero_point_kind")
    qmin, qmax = _check_quantize_args(
        input, block_size, output_dtype, quant_min, quant_max, "output_dtype", "quantize_float8"
    )
    _check_qparams(input.shape, block_size, scale, zero_point, zero_point_kind)
    return _quantize_affine(input, block_size, scale, zero_point, output_dtype, qmin, qmax, zero_point_kind)


# ----------------------------------------------------------------------------- dequantize


def _dequantize_affine(
    q: torch.Tensor,
    block_size: Sequence[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    quant_min: int,
    quant_max: int,
    zero_point_kind: ZeroPointKind,
    output_dtype: torch.dtype,
) -> torch.Tensor:
    s = _expand_to_blocks(scale.to(torch.float32), q.shape, block_size)
    qf = q.to(torch.float32)
    if zero_point_kind is ZeroPointKind.INT:
        z = _expand_to_blocks(zero_point.to(torch.float32), q.shape, block_size)
        x = (qf - z) * s
    elif zero_point_kind is ZeroPointKind.FLOAT:
        z = _expand_to_blocks(zero_point.to(torch.float32), q.shape, block_size)
        x = (qf - _mid(quant_min, quant_max)) * s + z
    else:
        x = qf * s
    return x.to(output_dtype)


def dequantize_affine(
    input: torch.Tensor,
    block_size: Sequence[int],
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    quant_min: int | None = None,
    quant_max: int | None = None,
    zero_point_kind: ZeroPointKind | str = ZeroPointKind.INT,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Map integer codes back to floats (inverse of ``quantize_affine`` up to rounding).

    The arithmetic runs in float32 and is cast to ``output_dtype`` at the end.
    """
    zero_point_kind = _enum(ZeroPointKind, zero_point_kind, "zero_point_kind")
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"dequantize_affine needs a tensor of integer codes, got {type(input).__name__}")
    if input.dtype not in _INT_DTYPES:
        raise ValueError(
            f"dequantize_affine needs integer codes (int8/uint8/int16/int32), got {_fmt_dtype(input.dtype)}"
        )
    _check_block_size(input.shape, block_size)
    qmin, qmax = _default_range(input.dtype, quant_min, quant_max)
    _check_range(qmin, qmax, None)
    if output_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"output_dtype must be a float dtype, got {_fmt_dtype(output_dtype)}")
    _check_qparams(input.shape, block_size, scale, zero_point, zero_point_kind)
    return _dequantize_affine(input, block_size, scale, zero_point, qmin, qmax, zero_point_kind, output_dtype)


# ----------------------------------------------------------------------------- float8


def _choose_qparams_float8(x: torch.Tensor, block_size: Sequence[int], float8_dtype: torch.dtype,
                           eps: float = 1e-12) -> torch.Tensor:
    amax = _blocked(x.to(torch.float32), block_size).abs().amax(dim=_block_reduce_dims(x.ndim))
    return (amax / torch.finfo(float8_dtype).max).clamp(min=eps).reshape(_reduced_shape(x.shape, block_size))


def _quantize_float8(x: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                     float8_dtype: torch.dtype) -> torch.Tensor:
    s = _expand_to_blocks(scale.to(torch.float32), x.shape, block_size)
    fmax = torch.finfo(float8_dtype).max
    return (x.to(torch.float32) / s).clamp(-fmax, fmax).to(float8_dtype)


def _check_float8_dtype(float8_dtype) -> None:
    if float8_dtype not in _FLOAT8_DTYPES:
        raise ValueError(
            f"float8_dtype must be float8_e4m3fn or float8_e5m2, got {_fmt_dtype(float8_dtype)}"
        )


def choose_qparams_float8(input: torch.Tensor, block_size: Sequence[int],
                          float8_dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Per-block float32 scale so that ``amax / scale`` lands on the float8 max.

    Per tensor: ``block_size = input.shape``; per row of a [N, K] weight: ``(1, K)``.
    """
    _check_float_input(input)
    _check_block_size(input.shape, block_size)
    _check_float8_dtype(float8_dtype)
    return _choose_qparams_float8(input, block_size, float8_dtype)


def quantize_float8(input: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                    float8_dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Scale ``input`` per block and cast to float8 (saturating at the dtype's max)."""
    _check_float_input(input)
    _check_block_size(input.shape, block_size)
    _check_float8_dtype(float8_dtype)
    _check_qparams(input.shape, block_size, scale, None, ZeroPointKind.NONE)
    return _quantize_float8(input, block_size, scale, float8_dtype)


def dequantize_float8(input: torch.Tensor, block_size: Sequence[int], scale: torch.Tensor,
                      output_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``quantize_float8``: ``input.float() * scale`` per block."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"dequantize_float8 needs a float8 tensor, got {type(input).__name__}")
    if input.dtype not in _FLOAT8_DTYPES:
        raise ValueError(f"dequantize_float8 needs a float8 tensor, got {_fmt_dtype(input.dtype)}")
    _check_block_size(input.shape, block_size)
    _check_qparams(input.shape, block_size, scale, None, ZeroPointKind.NONE)
    s = _expand_to_blocks(scale.to(torch.float32), input.shape, block_size)
    return (input.to(torch.float32) * s).to(output_dtype)


# ----------------------------------------------------------------------------- metrics


def sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``20 log10(||ref|| / ||ref - approx||)``.

    Returns ``inf`` when the two are equal. Computed in float64.
    """
    if reference.shape != approx.shape:
        raise ValueError(
            f"sqnr needs tensors of one shape, got {tuple(reference.shape)} and {tuple(approx.shape)}"
        )
    ref = reference.detach().to(torch.float64)
    err = torch.linalg.vector_norm(ref - approx.detach().to(torch.float64))
    sig = torch.linalg.vector_norm(ref)
    if err == 0:
        return math.inf
    if sig == 0:
        return -math.inf
    return float(20 * torch.log10(sig / err))


# ----------------------------------------------------------------------------- helpers


def _enum(cls, value, name):
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None


def _default_range(dtype: torch.dtype, quant_min: int | None, quant_max: int | None) -> tuple[int, int]:
    lo, hi = dtype_range(dtype)
    return (lo if quant_min is None else quant_min), (hi if quant_max is None else quant_max)


def _check_quantize_args(input, block_size, code_dtype, quant_min, quant_max, name: str, float8_fn: str):
    """The checks shared by the ops that map floats to integer codes; returns the code
    range ``(qmin, qmax)``. ``name`` is the code dtype's argument, ``float8_fn`` the float8 twin."""
    _check_float_input(input)
    _check_block_size(input.shape, block_size)
    if code_dtype not in _INT_DTYPES:
        raise ValueError(
            f"{name} must be an integer container {[_fmt_dtype(d) for d in _INT_DTYPES]}, "
            f"got {_fmt_dtype(code_dtype)}; for float8 use {float8_fn}"
        )
    qmin, qmax = _default_range(code_dtype, quant_min, quant_max)
    _check_range(qmin, qmax, code_dtype)
    return qmin, qmax


def _check_qparams(shape, block_size, scale, zero_point, zero_point_kind: ZeroPointKind) -> None:
    n_blocks = math.prod(_reduced_shape(shape, block_size))
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale must be a tensor with one entry per block, got {type(scale).__name__}")
    if zero_point is not None and not isinstance(zero_point, torch.Tensor):
        raise TypeError(f"zero_point must be a tensor or None, got {type(zero_point).__name__}")
    if scale.numel() != n_blocks:
        got = tuple(scale.shape)
        raise ValueError(
            f"scale must have one entry per block ({n_blocks} = {_reduced_shape(shape, block_size)}), "
            f"got {got}"
        )
    if zero_point_kind is ZeroPointKind.NONE:
        if zero_point is not None:
            raise ValueError("zero_point_kind=NONE takes zero_point=None, got a tensor")
        return
    if not isinstance(zero_point, torch.Tensor) or zero_point.numel() != n_blocks:
        got = tuple(zero_point.shape) if isinstance(zero_point, torch.Tensor) else zero_point
        raise ValueError(
            f"zero_point must have one entry per block ({n_blocks}) for zero_point_kind="
            f"{zero_point_kind.value!r}, got {got}"
        )
