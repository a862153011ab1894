"""Pure-PyTorch implementations of every lowbit op: the numerics the kernels must match.

Registered as the default kernel (any device); device kernels in cpu.py/cuda.py override
them where they exist. Tests call these functions directly as the reference.
"""

from __future__ import annotations

import torch

__all__ = ["int8_weight_only_linear", "int8_dynamic_linear", "quantize_per_token_int8"]


def _impl(name):
    def decorator(fn):
        torch.library.impl(f"lowbit::{name}", "default")(fn)
        return fn

    return decorator


@_impl("int8_weight_only_linear")
def int8_weight_only_linear(x, qdata, scale):
    w = qdata.to(torch.float32) * scale.to(torch.float32)
    return (x.to(torch.float32) @ w.t()).to(x.dtype)


def quantize_per_token_int8(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes in [-127, 127] and float32 scales [M, 1]."""
    xf = x2d.to(torch.float32)
    scale = (xf.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=torch.finfo(torch.float32).eps)
    q = torch.round(xf / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


@_impl("int8_dynamic_linear")
def int8_dynamic_linear(x, qdata, scale):
    xq, xs = quantize_per_token_int8(x)
    # Integer dot products, exact in float64 (|sum| < 2^53).
    acc = xq.to(torch.float64) @ qdata.to(torch.float64).t()
    return (acc * xs.to(torch.float64) * scale.reshape(1, -1).to(torch.float64)).to(x.dtype)


# ---------------------------------------------------------------------- int4 GPU formats
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
    from ..packing.int4_tiled import unpack_int4_tiled, unpack_tinygemm_scale_and_zero

    s, z = unpack_tinygemm_scale_and_zero(scale_and_zero)
    return _linear_f32(x, dequantize_int4_float_zp(unpack_int4_tiled(qdata), s, z, group_size))


@_impl("int4_marlin_mm")
def int4_marlin_mm(x, qdata, scale, zero_point, group_size):
    from ..packing.int4_marlin import unpack_marlin_int4, unpack_marlin_scales, unpack_marlin_zero_points

    w = dequantize_int4_int_zp(
        unpack_marlin_int4(qdata), unpack_marlin_scales(scale), unpack_marlin_zero_points(zero_point), group_size
    )
    return _linear_f32(x, w)


@_impl("int4_xpu_mm")
def int4_xpu_mm(x, qdata, scale, zero_point, group_size):
    from ..packing.int4_xpu import unpack_int4_xpu

    w = dequantize_int4_int_zp(unpack_int4_xpu(qdata), scale.t(), zero_point.t(), group_size)
    return _linear_f32(x, w)


@_impl("int4_xpu_float_zp_mm")
def int4_xpu_float_zp_mm(x, qdata, scale_and_zero, group_size):
    from ..packing.int4_tiled import unpack_tinygemm_scale_and_zero
    from ..packing.int4_xpu import unpack_int4_xpu

    s, z = unpack_tinygemm_scale_and_zero(scale_and_zero)
    return _linear_f32(x, dequantize_int4_float_zp(unpack_int4_xpu(qdata), s, z, group_size))
