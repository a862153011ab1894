"""CUDA kernels of lowbit's ops (ATen kernels; Triton/CUDA kernels join here)."""

from __future__ import annotations

import torch

from .reference import quantize_per_token_int8

aten = torch.ops.aten

# torch._int_mm on CUDA needs M > 16 (and K, N multiples of 8).
CUDA_INT_MM_MIN_M = 17
# Batch rows up to which the int8 GEMV beats a dequantize + cuBLAS GEMM.
CUDA_INT8_GEMV_MAX_M = 16


def _register(name):
    def decorator(fn):
        torch.library.register_kernel(f"lowbit::{name}", "cuda")(fn)
        return fn

    return decorator


@_register("int8_weight_only_linear")
def int8_weight_only_linear(x, qdata, scale):
    if x.shape[0] <= CUDA_INT8_GEMV_MAX_M:
        return aten._weight_int8pack_mm(x.contiguous(), qdata, scale.reshape(-1).to(x.dtype))
    return torch.mm(x, qdata.to(x.dtype).t()) * scale.reshape(1, -1).to(x.dtype)


@_register("int8_dynamic_linear")
def int8_dynamic_linear(x, qdata, scale):
    xq, xs = quantize_per_token_int8(x)
    m, k = xq.shape
    n = qdata.shape[0]
    if m >= CUDA_INT_MM_MIN_M and k % 8 == 0 and n % 8 == 0:
        acc = torch._int_mm(xq, qdata.t()).to(torch.float32)
    else:
        # Small M: the int8 GEMV on the integer codes (products exact in fp32).
        acc = aten._weight_int8pack_mm(xq.to(torch.float32), qdata, torch.ones(n, device=x.device))
    return (acc * xs * scale.reshape(1, -1)).to(x.dtype)
