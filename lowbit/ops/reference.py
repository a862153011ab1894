"""Pure-PyTorch implementations of every lowbit op: the numerics the kernels must match.

Registered as the default kernel (any device); device kernels in cpu.py/cuda.py/xpu.py
override them where they exist. Tests call these functions directly as the reference.
One section per op family; one dequantize per int4 zero-point kind.
"""

from __future__ import annotations

import torch

from ..packing.int4 import unpack_tinygemm_cpu
from ..packing.int4_marlin import unpack_marlin_int4, unpack_marlin_scales, unpack_marlin_zero_points
from ..packing.int4_tiled import unpack_int4_tiled, unpack_tinygemm_scale_and_zero
from ..packing.int4_vnni import unpack_vnni_int4
from ..packing.int4_xpu import unpack_int4_xpu

__all__ = [
    "int8_weight_only_linear",
    "int8_dynamic_linear",
    "quantize_per_token_int8",
    "dequantize_int4_float_zp",
    "dequantize_int4_int_zp",
    "int4_tinygemm_cpu_linear",
    "int4_tiled_cuda_mm",
    "int4_marlin_mm",
    "int4_xpu_mm",
    "int4_xpu_float_zp_mm",
    "da8w4_quantize_act",
    "da8w4_group_acc",
    "da8w4_linear",
]


def _impl(name):
    def decorator(fn):
        torch.library.impl(f"lowbit::{name}", "default")(fn)
        return fn

    return decorator


# ---------------------------------------------------------------------- int8


@_impl("int8_weight_only_linear")
def int8_weight_only_linear(x, qdata, scale):
    w = qdata.to(torch.float32) * scale.to(torch.float32)
    return (x.to(torch.float32) @ w.t()).to(x.dtype)


def quantize_per_token_int8(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes in [-127, 127] and float32 scales [M, 1].

    Codes round ``x * (1 / scale)`` (the float32 reciprocal, then a multiply): the kernels
    do the same, a multiply being several times cheaper than a divide per element.
    """
    xf = x2d.to(torch.float32)
    scale = (xf.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=torch.finfo(torch.float32).eps)
    q = torch.round(xf * (1.0 / scale)).clamp(-127, 127).to(torch.int8)
    return q, scale


@_impl("int8_dynamic_linear")
def int8_dynamic_linear(x, qdata, scale):
    xq, xs = quantize_per_token_int8(x)
    # Integer dot products, exact in float64 (|sum| < 2^53).
    acc = xq.to(torch.float64) @ qdata.to(torch.float64).t()
    return (acc * xs.to(torch.float64) * scale.reshape(1, -1).to(torch.float64)).to(x.dtype)


# ---------------------------------------------------------------------- int4 weight-only
# Reference numerics: unpack the codes, dequantize in float32, float32 matmul, cast.

_INT4_MID = 8  # float-zero-point formats read codes as q - 8 (tinygemm convention)


def dequantize_int4_float_zp(codes, scale, zero_point, group_size):
    """``(q - 8) * scale + zero`` per group, float32 ``[N, K]``; scale/zero ``[N, K // group_size]``."""
    s = scale.to(torch.float32).repeat_interleave(group_size, dim=1)
    z = zero_point.to(torch.float32).repeat_interleave(group_size, dim=1)
    return (codes.to(torch.float32) - _INT4_MID) * s + z


def dequantize_int4_int_zp(codes, scale, zero_point, group_size):
    """``(q - zero) * scale`` per group, float32 ``[N, K]``; scale/zero ``[N, K // group_size]``."""
    s = scale.to(torch.float32).repeat_interleave(group_size, dim=1)
    z = zero_point.to(torch.float32).repeat_interleave(group_size, dim=1)
    return (codes.to(torch.float32) - z) * s


def _linear_f32(x, w):
    return (x.to(torch.float32) @ w.t()).to(x.dtype)


@_impl("int4_tiled_cuda_mm")
def int4_tiled_cuda_mm(x, qdata, scale_and_zero, group_size):
    s, z = unpack_tinygemm_scale_and_zero(scale_and_zero)
    return _linear_f32(x, dequantize_int4_float_zp(unpack_int4_tiled(qdata), s, z, group_size))


@_impl("int4_marlin_mm")
def int4_marlin_mm(x, qdata, scale, zero_point, group_size):
    w = dequantize_int4_int_zp(
        unpack_marlin_int4(qdata), unpack_marlin_scales(scale), unpack_marlin_zero_points(zero_point), group_size
    )
    return _linear_f32(x, w)


@_impl("int4_xpu_mm")
def int4_xpu_mm(x, qdata, scale, zero_point, group_size):
    w = dequantize_int4_int_zp(unpack_int4_xpu(qdata), scale.t(), zero_point.t(), group_size)
    return _linear_f32(x, w)


@_impl("int4_xpu_float_zp_mm")
def int4_xpu_float_zp_mm(x, qdata, scale_and_zero, group_size):
    s, z = unpack_tinygemm_scale_and_zero(scale_and_zero)
    return _linear_f32(x, dequantize_int4_float_zp(unpack_int4_xpu(qdata), s, z, group_size))


@_impl("int4_tinygemm_cpu_linear")
def int4_tinygemm_cpu_linear(x, qdata, scale_and_zero, group_size, out_features, layout):
    codes = unpack_tinygemm_cpu(qdata, layout)[:out_features]
    sz = scale_and_zero[:, :out_features]
    w = dequantize_int4_float_zp(codes, sz[..., 0].t(), sz[..., 1].t(), group_size)
    return _linear_f32(x, w)


# ---------------------------------------------------------------------- DA8W4

_DA8W4_SYM_SHIFT = 128  # symmetric int8 codes are stored as uint8 code + 128 (zero point 128)


def da8w4_quantize_act(x2d: torch.Tensor, group_size: int, act_mapping: str):
    """Per-token 8-bit activation quantization of the DA8W4 kernels.

    Returns ``(codes uint8 [M, K], scale float32 [M], zero_point int32 [M], gsum int32
    [M, K // group_size])`` with ``x ~ (codes - zero_point) * scale``. Asymmetric: codes in
    [0, 255]; symmetric: int8 codes in [-127, 127] stored as ``code + 128`` with zero
    point 128. A row holding NaN/Inf gets scale NaN (its output row is NaN), codes 0.
    ``gsum`` is the sum of the stored codes per group (the kernel's compensation term).
    Codes round ``x * (1 / scale)`` (float32 reciprocal, then a multiply), as the kernels do.
    """
    xf = x2d.to(torch.float32)
    finite = torch.isfinite(xf).all(dim=1, keepdim=True)
    xf = torch.where(finite, xf, 0.0)
    eps = torch.finfo(torch.float32).eps
    if act_mapping == "symmetric":
        scale = (xf.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=eps)
        q = torch.round(xf * (1.0 / scale)).clamp(-127, 127) + _DA8W4_SYM_SHIFT
        zp = torch.full_like(scale, _DA8W4_SYM_SHIFT)
    else:
        mn = xf.amin(dim=1, keepdim=True).clamp(max=0)
        mx = xf.amax(dim=1, keepdim=True).clamp(min=0)
        scale = ((mx - mn) / 255.0).clamp(min=eps)
        zp = (0 - torch.round(mn / scale)).clamp(0, 255)
        q = (torch.round(xf * (1.0 / scale)) + zp).clamp(0, 255)
    q = torch.where(finite, q, 0.0).to(torch.uint8)
    zp = torch.where(finite, zp, 0.0).to(torch.int32).reshape(-1)
    scale = torch.where(finite, scale, float("nan")).reshape(-1)
    m, k = q.shape
    gsum = q.to(torch.int32).reshape(m, k // group_size, group_size).sum(-1, dtype=torch.int32)
    return q, scale, zp, gsum


def da8w4_group_acc(x, qdata, scale, zero_point, qsum, group_size, act_mapping):
    """int32 [M, N, G]: sum over each group of (a - za)(q - z), the kernel's integer accumulators."""
    a, _, za, _ = da8w4_quantize_act(x, group_size, act_mapping)
    q, _, z = unpack_vnni_int4(qdata, scale, zero_point)
    m, k = a.shape
    n, g = q.shape[0], k // group_size
    # |(a - za)(q - z)| <= 255 * 15 and a group sums <= 4096 of them: < 2^24, so float32
    # matmuls over these integers are exact.
    ac = (a.to(torch.float32) - za.to(torch.float32)[:, None]).reshape(m, g, group_size).permute(1, 0, 2)
    wc = (q.to(torch.float32).reshape(n, g, group_size) - z.to(torch.float32)[:, :, None]).permute(1, 2, 0)
    return torch.bmm(ac, wc).permute(1, 2, 0).to(torch.int32)


@_impl("da8w4_linear")
def da8w4_linear(x, qdata, scale, zero_point, qsum, group_size, act_mapping):
    acc = da8w4_group_acc(x, qdata, scale, zero_point, qsum, group_size, act_mapping)
    _, sa, _, _ = da8w4_quantize_act(x, group_size, act_mapping)
    _, s, _ = unpack_vnni_int4(qdata, scale, zero_point)
    y = (acc.to(torch.float32) * s[None]).sum(-1) * sa[:, None]
    return y.to(x.dtype)


# ---------------------------------------------------------------------- float8 (e4m3)

__all__ += [
    "quantize_per_token_float8",
    "quantize_per_tensor_float8",
    "float8_weight_only_linear",
    "float8_dynamic_linear",
    "float8_dynamic_per_tensor_linear",
]

FLOAT8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn magnitude


def _to_e4m3(xf: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # Clamp first: the cast saturates nothing, it would turn |x| > 448 into NaN.
    return (xf / scale).clamp(-FLOAT8_E4M3_MAX, FLOAT8_E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_per_token_float8(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row e4m3 codes and float32 scales [M, 1] (max |x| maps to 448)."""
    xf = x2d.to(torch.float32)
    scale = (xf.abs().amax(dim=1, keepdim=True) / FLOAT8_E4M3_MAX).clamp(min=torch.finfo(torch.float32).eps)
    return _to_e4m3(xf, scale), scale


def quantize_per_tensor_float8(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric e4m3 codes with one float32 scale [1, 1] for the whole tensor."""
    xf = x2d.to(torch.float32)
    scale = (xf.abs().amax().reshape(1, 1) / FLOAT8_E4M3_MAX).clamp(min=torch.finfo(torch.float32).eps)
    return _to_e4m3(xf, scale), scale


@_impl("float8_weight_only_linear")
def float8_weight_only_linear(x, qdata, scale):
    w = qdata.to(torch.float32) * scale.to(torch.float32)
    return (x.to(torch.float32) @ w.t()).to(x.dtype)


def _float8_scaled_product(xq, xs, x, qdata, scale):
    # e4m3 x e4m3 products and their sums are exact in float64 for any K lowbit meets.
    acc = xq.to(torch.float64) @ qdata.to(torch.float64).t()
    return (acc * xs.to(torch.float64) * scale.reshape(1, -1).to(torch.float64)).to(x.dtype)


@_impl("float8_dynamic_linear")
def float8_dynamic_linear(x, qdata, scale):
    xq, xs = quantize_per_token_float8(x)
    return _float8_scaled_product(xq, xs, x, qdata, scale)


@_impl("float8_dynamic_per_tensor_linear")
def float8_dynamic_per_tensor_linear(x, qdata, scale):
    xq, xs = quantize_per_tensor_float8(x)
    return _float8_scaled_product(xq, xs, x, qdata, scale)
