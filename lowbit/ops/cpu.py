"""CPU kernels of lowbit's ops (x86: AVX2 / AVX512 through ATen, oneDNN and MKL)."""

from __future__ import annotations

import torch

from ..device_caps import cpu_has_native_bf16
from .alignment import aligned_rows, int8pack_mm_unsafe_reason
from .library import register_device_kernel
from .reference import quantize_per_token_int8

aten = torch.ops.aten

# Batch rows up to which the int8 GEMV kernel (`aten._weight_int8pack_mm`) beats
# dequantize + fp32 GEMM on CPU. benchmarks/results/amd-epyc-2t.md (2-core AVX2 Zen3):
# 4096x4096 GEMV 24.6 ms vs 44 ms at M=64, 97 ms vs 82 ms at M=256; 11008x4096 71 vs
# 155 ms at M=64, 373 vs 235 ms at M=256. The crossover lies between 64 and 256.
CPU_INT8_GEMV_MAX_M = 128


def _register(name):
    return register_device_kernel(name, "cpu")


def _gemm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for large-M GEMMs: without native bf16/fp16 (AVX512-BF16/AMX), MKL emulates
    them several times slower than fp32 (7x at 256x4096x4096 on a Zen3)."""
    return dtype if (dtype == torch.float32 or cpu_has_native_bf16()) else torch.float32


@_register("int8_weight_only_linear")
def int8_weight_only_linear(x, qdata, scale):
    # The GEMV's layout needs (K % 16, aligned rows) are checked in ops/alignment.py; a
    # weight that misses them takes the GEMM below (same function, no ATen crash).
    if x.shape[0] <= CPU_INT8_GEMV_MAX_M and int8pack_mm_unsafe_reason(x, qdata) is None:
        # ATen's int8 GEMV is vectorized for bf16 inputs only (fp16/fp32 run 12-20x
        # slower on AVX2), so other activations are rounded to bf16 for it: 2^-9 relative
        # error per element, well under the int8 weight error (~43 dB vs ~55 dB).
        xb = aligned_rows(x.to(torch.bfloat16))
        y = aten._weight_int8pack_mm(xb, qdata, scale.reshape(-1).to(torch.bfloat16))
        return y.to(x.dtype)
    dt = _gemm_dtype(x.dtype)
    y = torch.mm(x.to(dt), qdata.to(dt).t())
    return (y * scale.reshape(1, -1).to(dt)).to(x.dtype)


@_register("int8_dynamic_linear")
def int8_dynamic_linear(x, qdata, scale):
    xq, xs = quantize_per_token_int8(x)
    if x.shape[0] <= CPU_INT8_GEMV_MAX_M and int8pack_mm_unsafe_reason(x, qdata) is None:
        # The codes are exact in bf16 and the GEMV accumulates in fp32, rounding only its
        # output to bf16 (~55 dB vs the exact integer sum). With fp32 inputs the same
        # kernel runs 13-18x slower on AVX2, so bf16 is the fast exact-input form.
        ones = torch.ones(qdata.shape[0], dtype=torch.bfloat16)
        acc = aten._weight_int8pack_mm(aligned_rows(xq.to(torch.bfloat16)), qdata, ones).to(torch.float32)
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
    # Checked here as well as in C++: an exception thrown inside the extension can crash
    # the process where its compiler's C++ runtime differs from torch's (seen on a GPU host
    # with /opt/gcc, torch 2.11), so bad input must never reach it.
    torch._check(x.dim() == 2, lambda: f"lowbit da8w4: x must be 2-D [M, K], got {x.dim()}-D")
    torch._check(x.is_contiguous(), lambda: "lowbit da8w4: x must be contiguous; call .contiguous()")
    torch._check(x.dtype in (torch.float32, torch.bfloat16),
                 lambda: f"lowbit da8w4: x must be float32 or bfloat16, got {x.dtype}")
    torch._check(x.shape[1] == qdata.shape[1] * 8,
                 lambda: f"lowbit da8w4: x has K={x.shape[1]} but qdata holds K={qdata.shape[1] * 8}")
    if load_cpu_extension():
        return torch.ops.lowbit_ext.da8w4_linear(
            x, qdata, scale, zero_point, qsum, group_size, act_mapping == "symmetric"
        )
    warn_fallback_once("da8w4_linear")
    return _reference.da8w4_linear(x, qdata, scale, zero_point, qsum, group_size, act_mapping)
# ---------------------------------------------------------------------- int4 tinygemm (CPU)

import functools  # noqa: E402

# Batch rows up to which `aten._weight_int4pack_mm_for_cpu` (tinygemm) runs; above it
# the weight is dequantized (in its packed block order) into an fp32 batched GEMM on
# CPUs without native bf16. Measured on the 2-core AVX2 Zen3 while shared with other
# jobs (4096x4096, g=128, bf16 activations; numbers noisy, +-50%): tinygemm costs about
# the same per 4-row block at any M (~1.5 ms / 4 rows at 2 threads, compute-bound), the
# dequantize + GEMM path costs ~60 ms of dequantization plus the fp32 GEMM. 1 thread:
# M=64 tinygemm 101-124 ms vs 195-244; M=128 249-254 vs 295-300; M=256 510 vs 444.
# The crossover is between 128 and 256; both paths beat emulated-bf16 F.linear 3-5x there.
CPU_INT4_TINYGEMM_MAX_M = 128


def _int4_tinygemm_cpu_gemm(x, qdata, scale_and_zero, group_size, layout, dtype):
    """x @ W^T [M, Np] in ``dtype`` via a dequantized weight: the large-M path.

    In the avx2/avx512 layouts a full block of B rows is a [K, B/2] byte matrix whose low
    nibbles are rows 0..B/2-1 and high nibbles rows B/2..B-1 (packing/int4.py), so
    cat(lo, hi) is already that block's W^T [K, B]: the weight is dequantized in its packed
    block order (contiguous, same-dtype ops only) and multiplied with one batched GEMM,
    [nb, M, B], instead of being transposed into [K, N] first (2x slower on a Zen3).
    Other layouts unpack to [Np, K] first.
    """
    from ..packing.int4 import TINYGEMM_CPU_LAYOUTS, unpack_tinygemm_cpu

    n_pad, half_k = qdata.shape
    k = 2 * half_k
    n_groups = k // group_size
    block, lo_rows, hi_rows = TINYGEMM_CPU_LAYOUTS[layout]
    # Dequantize in fp32 and cast the weight once: in bf16, q * s + (z - 8 s) cancels
    # (43.6 dB vs the reference on an AVX512-BF16 host, instead of > 50).
    sz = scale_and_zero.to(torch.float32)
    scale = sz[..., 0]
    # (q - 8) * s + z == q * s + (z - 8 s): one multiply-add per weight.
    shift = sz[..., 1] - 8 * scale
    x = x.to(dtype)
    if n_pad % block == 0 and lo_rows + hi_rows == list(range(block)):
        nb = n_pad // block
        byte = qdata.view(nb, k, block // 2)
        q = torch.cat((byte & 0x0F, byte >> 4), dim=-1).to(torch.float32).view(nb, n_groups, group_size, block)
        # [K/g, Np] -> [nb, K/g, 1, B]: per block, per group, per row; broadcast over the group.
        s = scale.view(n_groups, nb, block).transpose(0, 1).contiguous().view(nb, n_groups, 1, block)
        z = shift.view(n_groups, nb, block).transpose(0, 1).contiguous().view(nb, n_groups, 1, block)
        wt = q.mul_(s).add_(z).view(nb, k, block).to(dtype)
        return torch.matmul(x, wt).permute(1, 0, 2).reshape(x.shape[0], n_pad)
    q = unpack_tinygemm_cpu(qdata, layout).to(torch.float32).view(n_pad, n_groups, group_size)
    w = q.mul_(scale.t().unsqueeze(-1)).add_(shift.t().unsqueeze(-1)).view(n_pad, k).to(dtype)
    return torch.mm(x, w.t())


# Layouts lowbit/csrc/int4_tinygemm_gemv.cpp reads, with their row-block size.
_INT4_GEMV_BLOCK_N = {"avx2": 32, "avx512": 64}

# Batch rows up to which the C++ GEMV (shared weight conversion, 4-row tiles) runs instead
# of ATen's tinygemm. Measured on the 2-core Zen3 (otherwise idle), 4096x4096 g128 bf16,
# 2 threads, cold weights (40 copies rotated), median of 5, op alone: M=1 0.38 ms vs ATen
# 1.18; M=2 0.59 vs 1.21; M=4 0.88 vs 1.57; M=8 1.74 vs 3.14; M=16 3.4 vs 6.5; M=32 6.6
# vs 12.4; M=64 13.1 vs 25.0 (1 thread: M=1 0.70 ms, M=4 1.65 ms). Not measured above 64.
CPU_INT4_GEMV_MAX_M = 64


@functools.cache
def _int4_gemv_available() -> bool:
    """True once lowbit's C++ CPU extension is built with the M = 1 int4 GEMV in it.

    The GEMV (lowbit/csrc/int4_tinygemm_gemv.cpp) computes the same function as
    tinygemm, ~3x faster at M = 1 (ATen's kernel pays for 4 rows at M = 1). It ships with
    the extension that ops/_ext.py builds; without that extension, tinygemm runs.
    Measured at M = 1, 4096x4096 g128, 1 thread on the shared Zen3: GEMV 0.84-0.87 ms
    (~10 GB/s of packed weights), ATen tinygemm 2.3-2.4 ms, bf16 F.linear 3.3 ms. 2 threads
    did not help then because the extension was built without -fopenmp (at::parallel_for
    ran serially; fixed in ops/_ext.py). Now (byte/low-nibble accumulation, see the .cpp),
    cold, idle machine: 0.70 ms at 1 thread, 0.38 ms at 2 threads (22 GB/s).
    """
    try:
        from ._ext import load_cpu_extension  # the C++ extension's lazy builder
    except ImportError:
        return False
    return bool(load_cpu_extension()) and hasattr(torch.ops.lowbit_ext, "int4_tinygemm_gemv")


@_register("int4_tinygemm_cpu_linear")
def int4_tinygemm_cpu_linear(x, qdata, scale_and_zero, group_size, out_features, layout):
    from ..packing.int4 import tinygemm_cpu_layout

    native = tinygemm_cpu_layout()
    torch._check(
        layout == native,
        lambda: f"int4 weight packed for the {layout!r} CPU layout, this process's ATen packs {native!r}; "
        "repack it with .from_checkpoint(torch.device('cpu'))",
    )
    if x.shape[0] <= CPU_INT4_GEMV_MAX_M and layout in _INT4_GEMV_BLOCK_N and _int4_gemv_available():
        y = torch.ops.lowbit_ext.int4_tinygemm_gemv(
            x, qdata, scale_and_zero.to(torch.bfloat16), group_size, _INT4_GEMV_BLOCK_N[layout]
        )
    elif x.shape[0] <= CPU_INT4_TINYGEMM_MAX_M:
        # ATen vectorizes this kernel for bf16 only: its fp16/fp32 instantiations are scalar
        # loops, 40-200x slower (measured: M=1 fp32 65 ms vs bf16 1.5 ms). So fp16/fp32
        # activations are rounded to bf16 for the kernel, explicitly, and the output is cast
        # back (output SQNR vs an fp32 reference stays > 45 dB, see the tests).
        xb = x.to(torch.bfloat16).contiguous()
        y = aten._weight_int4pack_mm_for_cpu(xb, qdata, group_size, scale_and_zero.to(torch.bfloat16))
        y = y.to(x.dtype)
    else:
        y = _int4_tinygemm_cpu_gemm(x, qdata, scale_and_zero, group_size, layout, _gemm_dtype(x.dtype)).to(x.dtype)
    if y.shape[1] != out_features:
        y = y[:, :out_features].contiguous()
    return y
