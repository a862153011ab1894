"""Groupwise int4 weight in the CUDA tensor-core tiled layout (PyTorch's tinygemm).

Also holds the private helpers the other int4 GPU formats share: validation of the
"codes" interface, min-max quantization to codes and the activation checks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops  # noqa: F401  (registers torch.ops.lowbit)
from ..ops.library import kernel
from .. import primitives as P
from ..packing.int4_tiled import (
    INNER_K_TILES,
    K_TILE,
    N_TILE,
    pack_int4_tiled,
    pack_tinygemm_scale_and_zero,
    unpack_int4_tiled,
    unpack_tinygemm_scale_and_zero,
)
from .base import LowbitTensor, check_linear_input, finish_linear, linear_args
from .int4_plain import PortableInt4Mixin

aten = torch.ops.aten

__all__ = ["Int4TiledCudaTensor"]

_QMIN, _QMAX = 0, 15  # unsigned int4 codes
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SM80 = (8, 0)  # tinygemm uses mma.m16n8k16 bf16: Ampere or newer


# ---------------------------------------------------------------------- shared helpers


def _check_weight(w, cls_name: str) -> None:
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{cls_name}.from_float needs a 2-D [out_features, in_features] weight, got {got}")
    if w.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{cls_name}.from_float needs a float32/float16/bfloat16 weight, got {w.dtype}")


def _check_codes(cls_name, codes, scale, zero_point, group_size, shape, int_zero_point: bool) -> tuple[int, int]:
    """Validate the codes interface; returns (N, K). Raises ValueError saying what is wrong."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.ndim != 2:
        got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"{cls_name}.from_codes needs uint8 codes [N, K] with values 0..15, got {got}")
    n, k = codes.shape
    if tuple(shape) != (n, k):
        raise ValueError(f"{cls_name}.from_codes: shape {tuple(shape)} does not match codes [N, K] = {(n, k)}")
    if not isinstance(group_size, int) or group_size <= 0 or k % group_size:
        raise ValueError(
            f"{cls_name}.from_codes: group_size must divide K={k}, got {group_size!r}; use 32, 64, 128 or 256"
        )
    groups = (n, k // group_size)
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != groups:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{cls_name}.from_codes: {name} must be [N, K // group_size] = {groups}, got {got}")
    if not scale.dtype.is_floating_point:
        raise ValueError(f"{cls_name}.from_codes: scale must be a float tensor, got {scale.dtype}")
    if int_zero_point and (zero_point.dtype.is_floating_point or zero_point.dtype == torch.bool):
        raise ValueError(
            f"{cls_name} uses an integer zero point (x = (q - zero) * scale), got a {zero_point.dtype} "
            f"zero_point; float zero points (x = (q - 8) * scale + zero) belong to the float-zero-point formats"
        )
    if not int_zero_point and not zero_point.dtype.is_floating_point:
        raise ValueError(
            f"{cls_name} uses a float zero point (x = (q - 8) * scale + zero), got a {zero_point.dtype} "
            f"zero_point; integer zero points belong to the int-zero-point formats"
        )
    if codes.numel() and int(codes.max()) > _QMAX:
        raise ValueError(f"{cls_name}.from_codes: codes must be in 0..15, found {int(codes.max())}")
    if int_zero_point and zero_point.numel() and (int(zero_point.min()) < _QMIN or int(zero_point.max()) > _QMAX):
        raise ValueError(
            f"{cls_name}.from_codes: integer zero points must be in 0..15, found "
            f"[{int(zero_point.min())}, {int(zero_point.max())}]"
        )
    return n, k


def _quantize_to_codes(w, group_size: int, int_zero_point: bool, param_dtype: torch.dtype):
    """Min-max asymmetric int4 codes of ``w`` per group along K: (codes uint8, scale, zero).

    The scale (and a float zero point) are rounded to ``param_dtype`` *before* the codes
    are computed, so the codes are consistent with the parameters actually stored.
    """
    block = (1, group_size)
    kind = P.ZeroPointKind.INT if int_zero_point else P.ZeroPointKind.FLOAT
    scale, zero = P.choose_qparams_affine(
        w, P.MappingType.ASYMMETRIC, block, torch.uint8, _QMIN, _QMAX,
        scale_dtype=torch.float32, preserve_zero=int_zero_point, zero_point_kind=kind,
    )
    scale = scale.to(param_dtype)
    zero = zero.to(torch.int32) if int_zero_point else zero.to(param_dtype)
    codes = P._quantize_affine(w, block, scale, zero, torch.uint8, _QMIN, _QMAX, kind)
    return codes, scale, zero


def _check_group_size(cls_name: str, group_size, allowed) -> None:
    if group_size not in allowed:
        raise ValueError(f"{cls_name} needs group_size in {allowed}, got {group_size!r}")


def _weight_shape_reason(weight) -> str | None:
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return f"needs a 2-D weight, got {getattr(weight, 'ndim', type(weight).__name__)}-D"
    if weight.dtype not in _FLOAT_DTYPES:
        return f"needs a float32/float16/bfloat16 weight, got {weight.dtype}"
    return None


def _device_of(weight, device) -> torch.device:
    return torch.device(device) if device is not None else weight.device






# ---------------------------------------------------------------------- the format


def pick_inner_k_tiles(k: int) -> int:
    """The widest per-lane load (inner_k_tiles 8, 4, 2) whose K tile divides ``k``, so
    layers like SmolLM2's (K = 576) pack too; 8 when none does (supports() says why)."""
    return next((t for t in sorted(INNER_K_TILES, reverse=True) if k % (t * K_TILE) == 0), 8)


class Int4TiledCudaTensor(PortableInt4Mixin, LowbitTensor):
    """Groupwise asymmetric int4 weight (float zero point) for CUDA tinygemm.

    qdata          int32 [N / 8, K / (inner_k_tiles * 16), 32, inner_k_tiles / 2]
                   the tensor-core tiled layout of ``aten._convert_weight_to_int4pack``
                   (lowbit/packing/int4_tiled.py), read by ``aten._weight_int4pack_mm``
    scale_and_zero bfloat16 [K / group_size, N, 2]   (scale, zero) per group

    Numerics: ``w = (q - 8) * scale + zero`` with codes ``q`` in 0..15 (the tinygemm /
    HQQ float-zero-point convention, ``ZeroPointKind.FLOAT``).

    Kernel (``lowbit::int4_tiled_cuda_mm``, ops/cuda.py): tinygemm up to
    ``CUDA_INT4_TILED_MAX_M`` batch rows, above that dequantize to bf16 + cuBLAS GEMM.
    Activations are computed in bfloat16 (the kernel's only input dtype); float16 and
    float32 inputs are cast in and the output cast back.

    Requires: CUDA, compute capability >= 8.0, N % 8 == 0, K % (inner_k_tiles * 16) == 0,
    group_size in {32, 64, 128, 256}. The tensor can also live on CPU (to build, save and
    load it); ``F.linear`` there runs the pure-PyTorch reference of the op, which is
    correct but slow, and ``supports`` reports CPU as unsupported.
    """

    zero_point_kind = "float"
    kernel_device = "cuda"
    data_fields = ("qdata", "scale_and_zero")
    meta_fields = ("group_size", "inner_k_tiles")
    format_name = "int4_tiled_cuda"
    format_version = 1

    GROUP_SIZES = (32, 64, 128, 256)  # what aten._weight_int4pack_mm (CUDA) accepts

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128, inner_k_tiles: int | None = None) -> str | None:
        reason = _weight_shape_reason(weight)
        if reason:
            return reason
        n, k = weight.shape
        inner_k_tiles = inner_k_tiles or pick_inner_k_tiles(k)
        if group_size not in cls.GROUP_SIZES:
            return f"needs group_size in {cls.GROUP_SIZES}, got {group_size}"
        if inner_k_tiles not in INNER_K_TILES:
            return f"needs inner_k_tiles in {INNER_K_TILES}, got {inner_k_tiles}"
        if n % N_TILE:
            return f"needs out_features % {N_TILE} == 0, got {n}"
        k_outer = inner_k_tiles * K_TILE
        if k % k_outer or k % group_size:
            return (
                f"needs in_features % {max(k_outer, group_size)} == 0 (inner_k_tiles={inner_k_tiles}, "
                f"group_size={group_size}), got {k}"
            )
        dev = _device_of(weight, device)
        if dev.type != "cuda":
            return f"runs on CUDA only (tinygemm), got device {dev}; on CPU use the CPU tinygemm format"
        if torch.cuda.is_available() and torch.cuda.get_device_capability(dev) < _SM80:
            return f"needs compute capability >= 8.0, got {torch.cuda.get_device_capability(dev)} on {dev}"
        return None

    scale_dtype = torch.bfloat16  # what from_codes stores; quantize with it for nearest codes

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype, inner_k_tiles: int | None = None):
        """Pack unsigned int4 codes ``[N, K]`` with float ``scale``/``zero_point`` ``[N, K // group_size]``.

        scale and zero point are stored as bfloat16 (the kernel's dtype); pass bfloat16 to
        get them back bit-exactly from ``to_codes``.
        """
        _check_group_size(cls.__name__, group_size, cls.GROUP_SIZES)
        _check_codes(cls.__name__, codes, scale, zero_point, group_size, shape, int_zero_point=False)
        inner_k_tiles = inner_k_tiles or pick_inner_k_tiles(shape[1])
        qdata = pack_int4_tiled(codes, inner_k_tiles)
        sz = pack_tinygemm_scale_and_zero(scale.to(torch.bfloat16), zero_point.to(torch.bfloat16))
        return cls(qdata, sz, group_size=group_size, inner_k_tiles=inner_k_tiles, shape=tuple(shape), dtype=dtype)

    def to_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scale bf16 [N, K // gs], zero_point bf16 [N, K // gs])."""
        scale, zero = unpack_tinygemm_scale_and_zero(self.scale_and_zero)
        return unpack_int4_tiled(self.qdata), scale, zero

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 128, inner_k_tiles: int = 8) -> Int4TiledCudaTensor:
        """Min-max asymmetric int4 quantization of a float ``[N, K]`` weight, then pack."""
        _check_weight(w, cls.__name__)
        _check_group_size(cls.__name__, group_size, cls.GROUP_SIZES)
        n, k = w.shape
        if n % N_TILE or k % (inner_k_tiles * K_TILE) or k % group_size:
            raise ValueError(
                f"{cls.__name__} needs N % {N_TILE} == 0 and K % {max(inner_k_tiles * K_TILE, group_size)} == 0 "
                f"(inner_k_tiles={inner_k_tiles}, group_size={group_size}), got N={n}, K={k}"
            )
        codes, scale, zero = _quantize_to_codes(w, group_size, False, torch.bfloat16)
        return cls.from_codes(
            codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype, inner_k_tiles=inner_k_tiles
        )



@Int4TiledCudaTensor.implements(F.linear, aten.linear.default)
def _linear(func, types, args, kwargs):
    x, w, bias = linear_args(args, kwargs)
    check_linear_input(x, w)
    y = kernel("int4_tiled_cuda_mm", x.device.type)(x.reshape(-1, x.shape[-1]), w.qdata, w.scale_and_zero, w.group_size)
    return finish_linear(y, x, w, bias)
