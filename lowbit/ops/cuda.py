"""CUDA kernels of lowbit's ops (ATen kernels; Triton/CUDA kernels join here)."""

from __future__ import annotations

import warnings

import torch

from .library import register_device_kernel
from .reference import quantize_per_token_int8

aten = torch.ops.aten

# torch._int_mm on CUDA needs M > 16 (and K, N multiples of 8); smaller batches are
# padded with zero rows up to this (the padded rows are dropped from the output).
CUDA_INT_MM_MIN_M = 17

# Measured on an H100 (benchmarks/results/linear_cuda_h100.md, eager, cold weights):
# ATen's CUDA int8 GEMV (`_weight_int8pack_mm`) runs at ~3% of memory bandwidth (165 us
# at 4096x4096, M=1, vs 33 us for bf16), slower than dequantize + cuBLAS at every M, so
# lowbit does not use it on CUDA. Int8 on CUDA then still trails bf16 in eager mode
# (0.2-0.75x); the user is told once. A fused int8 GEMV is future work.
_warned_slow_int8 = False


def _warn_slow_int8() -> None:
    global _warned_slow_int8
    if not _warned_slow_int8:
        _warned_slow_int8 = True
        warnings.warn(
            "lowbit: int8 linears on CUDA save memory but run slower than bf16 F.linear (H100, "
            "eager: 0.2-0.75x; lowbit has no fused CUDA int8 GEMV yet). Use lowbit.autoquant to "
            "keep layers in bf16 where int8 loses, or keep float weights if speed matters.",
            RuntimeWarning,
            stacklevel=2,
        )


def _register(name):
    return register_device_kernel(name, "cuda")


@_register("int8_weight_only_linear")
def int8_weight_only_linear(x, qdata, scale):
    _warn_slow_int8()
    return torch.mm(x, qdata.to(x.dtype).t()) * scale.reshape(1, -1).to(x.dtype)


@_register("int8_dynamic_linear")
def int8_dynamic_linear(x, qdata, scale):
    _warn_slow_int8()
    xq, xs = quantize_per_token_int8(x)
    m, k = xq.shape
    n = qdata.shape[0]
    if k % 8 or n % 8:
        # torch._int_mm's shape rule; an fp32 GEMM over the integer values is exact here.
        acc = torch.mm(xq.to(torch.float32), qdata.to(torch.float32).t())
    else:
        xp = xq if m >= CUDA_INT_MM_MIN_M else torch.nn.functional.pad(xq, (0, 0, 0, CUDA_INT_MM_MIN_M - m))
        acc = torch._int_mm(xp, qdata.t())[:m].to(torch.float32)
    return (acc * xs * scale.reshape(1, -1)).to(x.dtype)


# ---------------------------------------------------------------------- int4 tensor-core tiled

# Batch rows up to which PyTorch's tinygemm (`aten._weight_int4pack_mm`) is used; above
# it the weight is dequantized to bf16 (one Triton pass) and multiplied by cuBLAS.
# tinygemm is a GEMV-style kernel (a 16-row m-tile per block, no reuse of B across
# m-tiles), so its time grows linearly with M. Measured with benchmarks/gpu_int4.py on
# an H200 (benchmarks/results/gpu_int4_h200.md, CUDA-graph timings): tinygemm beats
# dequantize + cuBLAS up to M = 32 on all four LLM shapes (4096x4096 .. 28672x8192) and
# loses from M = 64. Re-measure on the target GPU (H100) and update. Note that int4 only
# beats the bf16 GEMM itself for M <= 2..4; at large M it costs the dequantize on top.
CUDA_INT4_TILED_MAX_M = 32
# Above this many rows int4 on CUDA is slower than the bf16 GEMM it replaces (H200:
# tinygemm 0.83-0.93x at M=8, dequantize+cuBLAS 0.3-0.75x at M>=512). No faster int4
# kernel exists in lowbit yet (Marlin's is future work), so the user is told once.
CUDA_INT4_SLOWER_THAN_BF16_M = 4
_warned_slow_int4 = False


def _warn_slow_int4(m: int) -> None:
    global _warned_slow_int4
    if not _warned_slow_int4:
        _warned_slow_int4 = True
        warnings.warn(
            f"lowbit: int4 weight-only on CUDA ran a {m}-row batch; above "
            f"{CUDA_INT4_SLOWER_THAN_BF16_M} rows it is slower than bf16 F.linear on H100/H200 "
            "(it saves memory, not time, for prefill/large batches). Use lowbit.autoquant to keep "
            "such layers in bf16, or keep the float weights if speed at large batch matters.",
            RuntimeWarning,
            stacklevel=2,
        )


def _dequantize_int4_tiled_torch(qdata, scale_and_zero, group_size):
    """bf16 [N, K] weight from the tiled layout with PyTorch ops (several passes)."""
    from ..packing.int4_tiled import unpack_int4_tiled

    codes = unpack_int4_tiled(qdata)
    sz = scale_and_zero.to(torch.float32).transpose(0, 1).repeat_interleave(group_size, dim=1)  # [N, K, 2]
    return ((codes.to(torch.float32) - 8) * sz[..., 0] + sz[..., 1]).to(torch.bfloat16)


_TRITON_DEQUANT = None  # the compiled Triton kernel, built on first use (never at import)


def _triton_tiled_dequant_kernel():
    """Triton kernel: one program per BLOCK int32 words of the tiled layout, 8 nibbles each.

    Word (nt, ko, lane, p) holds, at nibble j = 4 d + 2 a + b, the element
    n = 8 nt + lane // 4, k = ko * 16 ikt + 32 p + 16 a + 8 b + 2 (lane % 4) + d
    (lowbit/packing/int4_tiled.py). All 8 lie in one 32-wide k span, so in one group.
    """
    global _TRITON_DEQUANT
    if _TRITON_DEQUANT is None:
        import triton
        import triton.language as tl

        @triton.jit
        def kernel(q_ptr, sz_ptr, out_ptr, total, N, K, KO,
                   P: tl.constexpr, K_OUTER: tl.constexpr, GS: tl.constexpr, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < total
            w = tl.load(q_ptr + offs, mask=mask, other=0)
            p = offs % P
            lane = (offs // P) % 32
            ko = (offs // (P * 32)) % KO
            n = (offs // (P * 32 * KO)) * 8 + lane // 4
            k0 = ko * K_OUTER + p * 32
            g = k0 // GS
            s = tl.load(sz_ptr + (g * N + n) * 2, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(sz_ptr + (g * N + n) * 2 + 1, mask=mask, other=0.0).to(tl.float32)
            kb = k0 + (lane % 4) * 2
            for j in tl.static_range(8):
                k = kb + ((j // 2) % 2) * 16 + (j % 2) * 8 + j // 4
                nib = ((w >> (4 * j)) & 0xF).to(tl.float32)
                tl.store(out_ptr + n * K + k, ((nib - 8.0) * s + z).to(tl.bfloat16), mask=mask)

        _TRITON_DEQUANT = kernel
    return _TRITON_DEQUANT


_DEQUANT_BLOCK = 1024  # int32 words per Triton program


def _dequantize_int4_tiled_bf16(qdata, scale_and_zero, group_size):
    """bf16 [N, K] weight from the tiled layout: ``(q - 8) * scale + zero`` in float32,
    rounded to bf16. One Triton pass where Triton is installed, else PyTorch ops (same
    values, several passes)."""
    try:
        kernel = _triton_tiled_dequant_kernel()
    except ImportError:
        return _dequantize_int4_tiled_torch(qdata, scale_and_zero, group_size)
    n_tiles, ko, _, p = qdata.shape
    n, k = n_tiles * 8, ko * p * 32
    out = torch.empty((n, k), dtype=torch.bfloat16, device=qdata.device)
    total = qdata.numel()
    grid = ((total + _DEQUANT_BLOCK - 1) // _DEQUANT_BLOCK,)
    kernel[grid](qdata, scale_and_zero, out, total, n, k, ko, P=p, K_OUTER=p * 32, GS=group_size, BLOCK=_DEQUANT_BLOCK)
    return out


@_register("int4_tiled_cuda_mm")
def int4_tiled_cuda_mm(x, qdata, scale_and_zero, group_size):
    # The kernel takes bf16 activations only; other float dtypes are cast in and out.
    xb = x.to(torch.bfloat16).contiguous()
    if x.shape[0] > CUDA_INT4_SLOWER_THAN_BF16_M:
        _warn_slow_int4(x.shape[0])
    if x.shape[0] <= CUDA_INT4_TILED_MAX_M:
        y = aten._weight_int4pack_mm(xb, qdata, group_size, scale_and_zero)
    else:
        y = torch.mm(xb, _dequantize_int4_tiled_bf16(qdata, scale_and_zero, group_size).t())
    return y.to(x.dtype)
