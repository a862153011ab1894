"""CUDA kernels of lowbit's ops (ATen kernels; Triton/CUDA kernels join here)."""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from ..device_caps import float8_device_reason
from ..errors import UnsupportedError
from .alignment import aligned_copy
from .library import register_device_kernel
from .reference import quantize_per_tensor_float8

logger = logging.getLogger(__name__)

aten = torch.ops.aten

# ---------------------------------------------------------------------- 8-bit: int8 and float8
# Kernels: lowbit/ops/triton_int8.py (Triton, imported on first use) plus cuBLAS paths.
# Dispatch by batch rows M. Thresholds measured on an H200 (sm90) with
# benchmarks/gpu_8bit.py (benchmarks/results/gpu_8bit_h200.md); other architectures
# (sm80, sm89) use the sm90 values until measured there.
#
# Weight-only (int8 and e4m3): Triton (GEMV, then the tile kernel) up to this M; above it
# the codes are dequantized into a scratch weight (one Triton pass) and cuBLAS multiplies.
# H200, 4 LLM shapes: dequantize + cuBLAS 0.50-0.61x bf16 at M=256, 0.76-0.93x at
# M=1024..4096; the tile kernel 0.66x at M=256 with its tuned blocks (sweep, 14336x4096).
CUDA_W8A16_TRITON_MAX_M = {"sm90": 256}
# Above this M weight-only 8-bit is slower than the bf16 GEMM on some shapes (H200 int8:
# 0.57-0.95x at M=64, 0.42-0.93x above): no mixed-input tensor-core kernel reaches cuBLAS
# yet, so the user is told once.
CUDA_W8A16_SLOWER_THAN_BF16_M = {"sm90": 16}
# int8 dynamic always runs lowbit's Triton int8 GEMM (scales in its epilogue): at the 16
# measured (shape, M >= 64) cells it beat torch._int_mm + a scale pass in 15 (H200: Triton
# 0.44-1.34x bf16 with the first block tables, _int_mm 0.46-1.02x), and _int_mm cannot take
# M <= 16 without padding.
# float8 row-wise dynamic: lowbit's Triton e4m3 GEMM up to this M, torch._scaled_mm above
# (H200: Triton ahead at M <= 16 on 3 of 4 shapes, _scaled_mm on all 4 from M = 64).
CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M = {"sm90": 16}
_MEASURED_ARCH = "sm90"


@functools.cache
def _arch(index: int) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm{major}{minor}"


# The thresholds `lowbit tune --device cuda` (lowbit/tune_cuda.py) measures and caches.
TUNABLE_THRESHOLDS = ("CUDA_W8A16_TRITON_MAX_M", "CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M", "CUDA_INT4_TILED_MAX_M")
_TUNED_APPLIED: set[int] = set()  # device indices whose tune cache was read


def cuda_tune_cache_path(device: torch.device | int | None = None) -> Path:
    """Where ``lowbit.tune_cuda`` keeps the crossovers of this GPU model + torch version."""
    from ._ext import cache_dir

    index = _index(device)
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    raw = f"cuda-{name}-sm{major}{minor}-torch{torch.__version__}"
    return cache_dir().parent / "tune" / ("".join(c if c.isalnum() or c in "-._" else "_" for c in raw) + ".json")


def load_cuda_tuned(device: torch.device | int | None = None) -> dict[str, int]:
    """The cached crossovers of this GPU ({} when none, or when the file does not parse)."""
    path = cuda_tune_cache_path(device)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())["thresholds"]
        return {k: int(v) for k, v in data.items() if k in TUNABLE_THRESHOLDS and int(v) >= 0}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning("lowbit: ignoring the unreadable CUDA tune cache %s (%s); rerun lowbit tune --device cuda",
                       path, e)
        return {}


def _index(device) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()




def apply_tuned_thresholds(index: int, reload: bool = False) -> None:
    """Write this GPU's ``lowbit tune --device cuda`` crossovers (lowbit/tune_cuda.py) into
    the tables above, under its arch; once per device unless ``reload``. Ignored with
    ``LOWBIT_NO_TUNE_CACHE=1``."""
    if index in _TUNED_APPLIED and not reload:
        return
    _TUNED_APPLIED.add(index)
    if os.environ.get("LOWBIT_NO_TUNE_CACHE", "") not in ("", "0"):
        return
    arch = _arch(index)
    for name, m in load_cuda_tuned(index).items():
        globals()[name][arch] = m


def _threshold(table: dict, device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _TUNED_APPLIED:
        apply_tuned_thresholds(index)
    return table.get(_arch(index), table[_MEASURED_ARCH])


@functools.cache
def _triton_int8():
    """lowbit/ops/triton_int8.py, or a clear error where triton is not installed."""
    try:
        from . import triton_int8
    except ImportError as e:
        raise UnsupportedError(
            f"lowbit's CUDA int8/float8 kernels are written in Triton, which is not importable here ({e}); "
            "install it (pip install triton; it ships with CUDA builds of torch on Linux)"
        ) from e
    triton_int8.register_triton_ops()
    return triton_int8


@functools.cache
def _check_float8_device(index: int) -> None:
    reason = float8_device_reason(torch.device("cuda", index))
    if reason is not None:
        raise UnsupportedError(f"lowbit float8 linear on cuda:{index}: {reason}")


def _float8_kernels(x):
    _check_float8_device(x.device.index if x.device.index is not None else torch.cuda.current_device())
    return _triton_int8()


# cuBLAS (torch._scaled_mm) and tinygemm (aten._weight_int4pack_mm) load 16 bytes at a
# time and fault on a pointer off a 16-byte boundary ("CUDA error: misaligned address",
# which poisons the whole CUDA context); a tensor viewed out of a safetensors buffer or
# sliced at an odd offset can be. Such an operand is copied once per call (the caching
# allocator's blocks are aligned); aligned contiguous tensors pass through untouched.
_CUDA_LOAD_ALIGN = 16


def _aligned(t: torch.Tensor) -> torch.Tensor:
    return aligned_copy(t, _CUDA_LOAD_ALIGN)


def _register(name):
    return register_device_kernel(name, "cuda")


_warned: set[str] = set()  # the one-time "slower than bf16" warnings already given


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _warn_slow_weight_only(m: int) -> None:
    _warn_once("weight_only", (
        f"lowbit: int8/float8 weight-only linear on CUDA ran a {m}-row batch; above "
        f"{CUDA_W8A16_SLOWER_THAN_BF16_M[_MEASURED_ARCH]} rows weight-only 8-bit is slower than bf16 "
        "F.linear on some shapes on H200 (0.4-0.95x; it saves memory, not time). For prefill or large batches use "
        "Int8DynamicActivationInt8WeightConfig or Float8DynamicActivationFloat8WeightConfig (faster than "
        "bf16 there), or lowbit.autoquant to choose per layer."
    ))


def _weight_only(x, qdata, scale):
    t8 = _triton_int8()
    m = x.shape[0]
    if m > _threshold(CUDA_W8A16_SLOWER_THAN_BF16_M, x.device):
        _warn_slow_weight_only(m)
    if m <= _threshold(CUDA_W8A16_TRITON_MAX_M, x.device):
        return t8.w8a16_linear(x, qdata, scale)
    return torch.mm(x, t8.dequantize_rows(qdata, scale, x.dtype).t())


@_register("int8_weight_only_linear")
def int8_weight_only_linear(x, qdata, scale):
    return _weight_only(x, qdata, scale)


@_register("float8_weight_only_linear")
def float8_weight_only_linear(x, qdata, scale):
    _float8_kernels(x)
    return _weight_only(x, qdata, scale)


@_register("int8_dynamic_linear")
def int8_dynamic_linear(x, qdata, scale):
    t8 = _triton_int8()
    xq, xs = t8.quantize_rows(x, fp8=False)
    return t8.a8w8_linear(xq, xs, qdata, scale, x.dtype)


@_register("float8_dynamic_linear")
def float8_dynamic_linear(x, qdata, scale):
    t8 = _float8_kernels(x)
    xq, xs = t8.quantize_rows(x, fp8=True)
    if x.shape[0] <= _threshold(CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M, x.device):
        return t8.a8w8_linear(xq, xs, qdata, scale, x.dtype)
    # Row-wise scaling: scale_a [M, 1], scale_b [1, N] float32, bf16 output (the only
    # output dtype torch 2.11 allows with row-wise scales); the weight goes in as
    # qdata.t(), the column-major [K, N] operand _scaled_mm wants.
    y = torch._scaled_mm(xq, _aligned(qdata).t(), scale_a=xs, scale_b=_aligned(scale).reshape(1, -1),
                         out_dtype=torch.bfloat16, use_fast_accum=True)
    return y.to(x.dtype)


@_register("float8_dynamic_per_tensor_linear")
def float8_dynamic_per_tensor_linear(x, qdata, scale):
    t8 = _float8_kernels(x)
    xq, xs = quantize_per_tensor_float8(x)
    if x.shape[0] <= _threshold(CUDA_FLOAT8_DYNAMIC_TRITON_MAX_M, x.device):
        return t8.a8w8_linear(xq, xs, qdata, scale, x.dtype)
    # cuBLASLt also wants the scale pointers aligned (a misaligned stored scale gave
    # CUBLAS_STATUS_NOT_SUPPORTED on an H200).
    return torch._scaled_mm(xq, _aligned(qdata).t(), scale_a=xs.reshape(()), scale_b=_aligned(scale).reshape(()),
                            out_dtype=x.dtype, use_fast_accum=True)


# ---------------------------------------------------------------------- int4 tensor-core tiled

# Batch rows up to which PyTorch's tinygemm (`aten._weight_int4pack_mm`) is used; above
# it the weight is dequantized to bf16 (one Triton pass) and multiplied by cuBLAS.
# tinygemm is a GEMV-style kernel (a 16-row m-tile per block, no reuse of B across
# m-tiles), so its time grows linearly with M. Measured with benchmarks/gpu_int4.py on
# an H200 (benchmarks/results/gpu_int4_h200.md, CUDA-graph timings): tinygemm beats
# dequantize + cuBLAS up to M = 32 on all four LLM shapes (4096x4096 .. 28672x8192) and
# loses from M = 64. With the output-major dequantize (benchmarks/results/
# gpu_int4_h200_2026-12-02.md, 14336x4096) the two are about even at M = 32 (tinygemm
# 135 us; dequantize + cuBLAS 131 us at M = 64), so the threshold stays. int4 only beats
# the bf16 GEMM itself for M <= 2..8; at large M it costs the dequantize on top.
CUDA_INT4_TILED_MAX_M = {"sm90": 32}
# Above this many rows int4 on CUDA is slower than the bf16 GEMM it replaces (H200:
# tinygemm 0.76-1.02x at M=8, dequantize + cuBLAS 0.27-0.86x at M >= 64). No lowbit int4
# kernel beats bf16 there yet (its Triton GEMM and Marlin kernels included), so the user
# is told once.
CUDA_INT4_SLOWER_THAN_BF16_M = 4


def _warn_slow_int4(m: int) -> None:
    _warn_once("int4", (
        f"lowbit: int4 weight-only on CUDA ran a {m}-row batch; above "
        f"{CUDA_INT4_SLOWER_THAN_BF16_M} rows it is slower than bf16 F.linear on H100/H200 "
        "(it saves memory, not time, for prefill/large batches). Use lowbit.autoquant to keep "
        "such layers in bf16, or keep the float weights if speed at large batch matters."
    ))


def _dequantize_int4_tiled_torch(qdata, scale_and_zero, group_size):
    """bf16 [N, K] weight from the tiled layout with PyTorch ops (several passes)."""
    from ..packing.int4_tiled import unpack_int4_tiled

    codes = unpack_int4_tiled(qdata)
    sz = scale_and_zero.to(torch.float32).transpose(0, 1).repeat_interleave(group_size, dim=1)  # [N, K, 2]
    return ((codes.to(torch.float32) - 8) * sz[..., 0] + sz[..., 1]).to(torch.bfloat16)


_TRITON_DEQUANT = None  # the compiled Triton kernel, built on first use (never at import)


def _triton_tiled_dequant_kernel():
    """Triton kernel: one program per [BLOCK_N, BLOCK_K] tile of the bf16 output.

    Word (nt, ko, lane, p) of the tiled layout holds, at nibble j = 4 d + 2 a + b, the
    element n = 8 nt + lane // 4, k = ko * K_OUTER + 32 p + 16 a + 8 b + 2 (lane % 4) + d
    (lowbit/packing/int4_tiled.py). The kernel inverts that map per output element, so
    its stores are contiguous along k (the gathered words are re-read from L1/L2); a
    word-major kernel writes 8 scattered values per word and ran 3x slower on an H200.
    """
    global _TRITON_DEQUANT
    if _TRITON_DEQUANT is None:
        import triton
        import triton.language as tl

        @triton.jit
        def kernel(q_ptr, sz_ptr, out_ptr, N, K, KO,
                   P: tl.constexpr, K_OUTER: tl.constexpr, GS: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
            n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
            k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
            mask = (n < N) & (k < K)
            r = k % 32
            lane = (n % 8) * 4 + (r % 8) // 2
            word = (((n // 8) * KO + k // K_OUTER) * 32 + lane) * P + (k % K_OUTER) // 32
            j = (r % 2) * 4 + (r // 16) * 2 + (r // 8) % 2
            w = tl.load(q_ptr + word, mask=mask, other=0)
            nib = ((w >> (4 * j)) & 0xF).to(tl.float32)
            sz = sz_ptr + ((k // GS) * N + n) * 2
            s = tl.load(sz, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(sz + 1, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + n * K + k, ((nib - 8.0) * s + z).to(tl.bfloat16), mask=mask)

        _TRITON_DEQUANT = kernel
    return _TRITON_DEQUANT


_DEQUANT_BLOCK_N, _DEQUANT_BLOCK_K = 16, 256  # output tile per Triton program


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
    grid = (-(-n // _DEQUANT_BLOCK_N), -(-k // _DEQUANT_BLOCK_K))
    kernel[grid](qdata, scale_and_zero, out, n, k, ko, P=p, K_OUTER=p * 32, GS=group_size,
                 BLOCK_N=_DEQUANT_BLOCK_N, BLOCK_K=_DEQUANT_BLOCK_K)
    return out


@_register("int4_tiled_cuda_mm")
def int4_tiled_cuda_mm(x, qdata, scale_and_zero, group_size):
    # The kernel takes bf16 activations only; other float dtypes are cast in and out.
    xb = _aligned(x.to(torch.bfloat16))
    qdata, scale_and_zero = _aligned(qdata), _aligned(scale_and_zero)
    if x.shape[0] > CUDA_INT4_SLOWER_THAN_BF16_M:
        _warn_slow_int4(x.shape[0])
    if x.shape[0] <= _threshold(CUDA_INT4_TILED_MAX_M, x.device):
        y = aten._weight_int4pack_mm(xb, qdata, group_size, scale_and_zero)
    else:
        y = torch.mm(xb, _dequantize_int4_tiled_bf16(qdata, scale_and_zero, group_size).t())
    return y.to(x.dtype)
