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


__all__ += ["int4_float_zp_dequantize", "int4_tinygemm_cpu_linear"]


def int4_float_zp_dequantize(codes, scale, zero, group_size):
    """float32 [N, K] from uint8 codes [N, K] and [N, K // group_size] scale/zero: (q - 8) * s + z."""
    n, k = codes.shape
    q = codes.to(torch.float32).reshape(n, k // group_size, group_size)
    s = scale.to(torch.float32).reshape(n, -1, 1)
    z = zero.to(torch.float32).reshape(n, -1, 1)
    return ((q - 8) * s + z).reshape(n, k)


@_impl("int4_tinygemm_cpu_linear")
def int4_tinygemm_cpu_linear(x, qdata, scale_and_zero, group_size, out_features, layout):
    from ..packing.int4 import unpack_tinygemm_cpu

    codes = unpack_tinygemm_cpu(qdata, layout)[:out_features]
    sz = scale_and_zero[:, :out_features]
    w = int4_float_zp_dequantize(codes, sz[..., 0].t(), sz[..., 1].t(), group_size)
    return (x.to(torch.float32) @ w.t()).to(x.dtype)
