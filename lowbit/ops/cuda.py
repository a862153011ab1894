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


# ---------------------------------------------------------------------- int4 tensor-core tiled

# Batch rows up to which PyTorch's tinygemm (`aten._weight_int4pack_mm`) is used; above
# it the weight is dequantized to bf16 and multiplied by cuBLAS. tinygemm is a GEMV-style
# kernel (one 16-row m-tile per block, no smem reuse across m), so it loses to cuBLAS once
# the product turns compute-bound. Provisional value: set from benchmarks/gpu_int4.py on
# an H100 (see that script's output; the lead re-measures and updates this constant).
CUDA_INT4_TILED_MAX_M = 64


def _dequantize_int4_tiled_bf16(qdata, scale_and_zero, group_size):
    """bf16 [N, K] weight from the tiled layout, with the kernel's bf16 arithmetic."""
    from ..packing.int4_tiled import unpack_int4_tiled

    codes = unpack_int4_tiled(qdata)
    sz = scale_and_zero.transpose(0, 1).repeat_interleave(group_size, dim=1)  # [N, K, 2]
    return (codes.to(torch.bfloat16) - 8) * sz[..., 0] + sz[..., 1]


@_register("int4_tiled_cuda_mm")
def int4_tiled_cuda_mm(x, qdata, scale_and_zero, group_size):
    # The kernel takes bf16 activations only; other float dtypes are cast in and out.
    xb = x.to(torch.bfloat16).contiguous()
    if x.shape[0] <= CUDA_INT4_TILED_MAX_M:
        y = aten._weight_int4pack_mm(xb, qdata, group_size, scale_and_zero)
    else:
        y = torch.mm(xb, _dequantize_int4_tiled_bf16(qdata, scale_and_zero, group_size).t())
    return y.to(x.dtype)
