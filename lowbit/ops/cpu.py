"""CPU kernels of lowbit's ops (x86: AVX2 / AVX512 through ATen, oneDNN and MKL)."""

from __future__ import annotations

import torch

from ..device_caps import cpu_has_native_bf16
from .reference import quantize_per_token_int8

aten = torch.ops.aten

# Batch rows up to which the int8 GEMV kernel (`aten._weight_int8pack_mm`) beats
# dequantize + GEMM on CPU. Chosen from benchmarks/linear.py on a 2-core AVX2 Zen3
# (benchmarks/results/): the GEMV streams int8 weights (2x fewer bytes than bf16) and
# stops paying once the product turns compute-bound.
CPU_INT8_GEMV_MAX_M = 16


def _register(name):
    def decorator(fn):
        torch.library.register_kernel(f"lowbit::{name}", "cpu")(fn)
        return fn

    return decorator


def _gemm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for large-M GEMMs: without native bf16/fp16 (AVX512-BF16/AMX), MKL emulates
    them several times slower than fp32 (7x at 256x4096x4096 on a Zen3)."""
    return dtype if (dtype == torch.float32 or cpu_has_native_bf16()) else torch.float32


@_register("int8_weight_only_linear")
def int8_weight_only_linear(x, qdata, scale):
    if x.shape[0] <= CPU_INT8_GEMV_MAX_M:
        return aten._weight_int8pack_mm(x.contiguous(), qdata, scale.reshape(-1).to(x.dtype))
    dt = _gemm_dtype(x.dtype)
    y = torch.mm(x.to(dt), qdata.to(dt).t())
    return (y * scale.reshape(1, -1).to(dt)).to(x.dtype)


@_register("int8_dynamic_linear")
def int8_dynamic_linear(x, qdata, scale):
    xq, xs = quantize_per_token_int8(x)
    if x.shape[0] <= CPU_INT8_GEMV_MAX_M:
        # The codes are exact in bf16 and the GEMV accumulates in fp32, rounding only its
        # output to bf16 (~55 dB vs the exact integer sum). With fp32 inputs the same
        # kernel runs 13-18x slower on AVX2, so bf16 is the fast exact-input form.
        ones = torch.ones(qdata.shape[0], dtype=torch.bfloat16)
        acc = aten._weight_int8pack_mm(xq.to(torch.bfloat16), qdata, ones).to(torch.float32)
    else:
        # torch._int_mm on CPU is a slow reference loop (1.4 s at 256x4096x4096 on a
        # 2-core Zen3). An fp32 GEMM over the integer values is exact while |sum| < 2^24.
        acc = torch.mm(xq.to(torch.float32), qdata.to(torch.float32).t())
    return (acc * xs * scale.reshape(1, -1)).to(x.dtype)


# ---------------------------------------------------------------------- DA8W4

from . import reference as _reference  # noqa: E402
from ._ext import load_cpu_extension, warn_fallback_once  # noqa: E402


@_register("da8w4_linear")
def da8w4_linear(x, qdata, scale, zero_point, qsum, group_size, act_mapping):
    # The C++ kernel (lowbit/csrc/da8w4_cpu.cpp: AVX512-VNNI / AVX2 / scalar, picked by
    # CPU detection) is built on first use; without it the reference runs, with a warning.
    if load_cpu_extension():
        return torch.ops.lowbit_ext.da8w4_linear(
            x, qdata, scale, zero_point, qsum, group_size, act_mapping == "symmetric"
        )
    warn_fallback_once("da8w4_linear")
    return _reference.da8w4_linear(x, qdata, scale, zero_point, qsum, group_size, act_mapping)
