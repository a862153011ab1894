"""CPU kernels of lowbit's ops (x86: AVX2 / AVX512 through ATen, oneDNN and MKL)."""

from __future__ import annotations

import functools

import torch

from ..device_caps import cpu_has_native_bf16
from ..packing.int4 import TINYGEMM_CPU_LAYOUTS, tinygemm_cpu_layout, unpack_tinygemm_cpu
from . import reference as _reference
from ._ext import load_cpu_extension, warn_fallback_once
from .alignment import aligned_rows, int8pack_mm_unsafe_reason
from .cpu_int8_gemv import int8_gemv_serves
from .cpu_int8_vnni import (
    VNNI_LINEAR_DTYPES,
    int8_vnni_gemm,
    int8_vnni_linear,
    int8_vnni_linear_serves,
    quantize_per_token_int8,
)
from .cpu_paths import (  # noqa: F401  (the thresholds stay importable from here)
    CPU_INT4_GEMV_MAX_M,
    CPU_INT4_TINYGEMM_MAX_M,
    CPU_INT8_GEMV_MAX_M,
    INT4_GEMV_ISAS,
    INT8_AMX_SMALL_LAYER,
    choose_path,
    da8w4_amx_available,
    int4_amx_available,
    int4_gemv_best_isa,
    int4_gemv_isa,
    int8_amx_available,
)
from .cpu_paths import int4_gemv_available as _int4_gemv_available  # noqa: F401
from .library import register_device_kernel, register_traced_kernel

aten = torch.ops.aten


def _register(name):
    return register_device_kernel(name, "cpu")


def _gemm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for large-M GEMMs: without native bf16/fp16 (AVX512-BF16/AMX), MKL emulates
    them several times slower than fp32 (7x at 256x4096x4096 on a Zen3)."""
    return dtype if (dtype == torch.float32 or cpu_has_native_bf16()) else torch.float32


@_register("int8_weight_only_linear")
def int8_weight_only_linear(x, qdata, scale):
    path = choose_path("int8_weight_only_linear", x.shape[0])
    if path == "brgemm":
        return int8_weight_only_brgemm(x, qdata, scale)
    if path == "cpp_gemv":
        # A strided x (a transposed view, say) is copied (a few KiB at these M), so it gets
        # the same kernel and the same bits as a contiguous one, not the fallback below.
        xc = x if x.is_contiguous() else x.contiguous()
        if int8_gemv_serves(xc, qdata, scale):
            # lowbit/csrc/int8_wo_gemv.cpp (fp32 sums, x kept in its dtype's precision). Called
            # directly: the cheap checks above are the ones an Int8Tensor's linear can fail.
            return torch.ops.lowbit_ext.int8_wo_gemv(xc, qdata, scale, -1)
    # The GEMV's layout needs (K % 16, aligned rows) are checked in ops/alignment.py; a
    # weight that misses them takes the GEMM below (same function, no ATen crash).
    if path == "gemv" and int8pack_mm_unsafe_reason(x, qdata) is None:
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
    path = choose_path("int8_dynamic_linear", x.shape[0])
    if path == "vnni" and x.dtype in VNNI_LINEAR_DTYPES and x.shape[0] > 0:
        # lowbit/csrc/int8_vnni_cpu.cpp: quantization, exact int32 sums (the weight read once
        # per call in its storage order; 4096x4096, 2-core Zen5: M=1..8 ~0.5 ms, M=16 0.60,
        # M=64 1.7) and the scales in one call, bit-identical to the composition below.
        # Called directly after the cheap checks (as the int8 GEMV above); anything they
        # reject goes through the validating wrapper, which copies or raises.
        xc = x if x.is_contiguous() else x.contiguous()
        if int8_vnni_linear_serves(xc, qdata, scale):
            return torch.ops.lowbit_ext.int8_vnni_linear(xc, qdata, scale, -1)
        return int8_vnni_linear(x, qdata, scale)
    xq, xs = quantize_per_token_int8(x)
    if path == "brgemm" and qdata.numel() <= INT8_AMX_SMALL_LAYER and choose_path("int8_dynamic_linear", 64) == "amx":
        path = "amx"  # small layers stay on the AMX kernel past the table's M (cpu_paths.INT8_AMX_SMALL_LAYER)
    if path == "amx" and not int8_amx_serves(qdata):
        path = "brgemm"  # K not a multiple of 64 or N of 16: the tiles through oneDNN's ukernel
    if path == "amx":
        return int8_dynamic_amx(x, xq, xs, qdata, scale)
    if path == "brgemm":
        return int8_dynamic_brgemm(x, xq, xs, qdata, scale)
    if path == "vnni":
        acc = int8_vnni_gemm(xq, qdata).to(torch.float32)  # other activation dtypes
    elif path == "int_mm":
        # oneDNN's s8 x s8 -> s32 GEMM on VNNI/AVX512 CPUs (exact). Measured on the 2-core
        # Emerald Rapids VM with AMX hidden (avx512_bf16 class), 4096x4096, cold, 2 threads:
        # M=64 3.4 ms, M=256 10.9 ms vs this op's GEMV 21.6 / 80 ms and bf16 F.linear
        # 19.3 / 73 ms. On the AVX2 Zen3 the same call was a slow loop (1.4 s at M=256),
        # so only tables measured on a class choose it.
        acc = torch._int_mm(xq, qdata.t()).to(torch.float32)
    elif path == "gemv" and int8pack_mm_unsafe_reason(x, qdata) is None:
        # The codes are exact in bf16 and the GEMV accumulates in fp32, rounding only its
        # output to bf16 (~55 dB vs the exact integer sum). With fp32 inputs the same
        # kernel runs 13-18x slower on AVX2, so bf16 is the fast exact-input form.
        ones = torch.ones(qdata.shape[0], dtype=torch.bfloat16)
        acc = aten._weight_int8pack_mm(aligned_rows(xq.to(torch.bfloat16)), qdata, ones).to(torch.float32)
    else:
        # An fp32 GEMM over the integer values: exact while |sum| < 2^24.
        acc = torch.mm(xq.to(torch.float32), qdata.to(torch.float32).t())
    return (acc * xs * scale.reshape(1, -1)).to(x.dtype)


# ---------------------------------------------------------------------- DA8W4


@_register("da8w4_linear")
def da8w4_linear(x, qdata, scale, zero_point, qsum, group_size, act_mapping):
    # The C++ kernel (lowbit/csrc/da8w4_cpu.cpp: AVX512-VNNI / AVX2 / scalar, picked by
    # CPU detection) is built on first use; without it the reference runs, with a warning.
    # Checked here as well as in C++: an exception thrown inside the extension can crash
    # the process where its compiler's C++ runtime differs from torch's (seen on a GPU host
    # with /opt/gcc, torch 2.11), so bad input must never reach it.
    # Plain ifs, not torch._check (~3 us each per call on a 2-core guest): this runs eagerly
    # (under torch.compile the op's fake impl is traced instead).
    if x.dim() != 2:
        raise RuntimeError(f"lowbit da8w4: x must be 2-D [M, K], got {x.dim()}-D")
    if not x.is_contiguous():
        raise RuntimeError("lowbit da8w4: x must be contiguous; call .contiguous()")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise RuntimeError(f"lowbit da8w4: x must be float32 or bfloat16, got {x.dtype}")
    if x.shape[1] != qdata.shape[1] * 8:
        raise RuntimeError(f"lowbit da8w4: x has K={x.shape[1]} but qdata holds K={qdata.shape[1] * 8}")
    if load_cpu_extension():
        symmetric = act_mapping == "symmetric"
        path = choose_path("da8w4_linear", x.shape[0]) if x.shape[0] > 0 else "vnni"
        if path == "amx" and (group_size % 32 or group_size > 2048 or not da8w4_amx_available()):
            # The tile's k step is 32 and |Qc| must fit 16 bits (da8w4_amx_cpu.cpp); checked
            # here so that no bad shape reaches the C++ check (see above).
            path = "vnni"
        if path == "amx":
            # AMX-INT8 tiles on the same codes: the VNNI kernel's output bit for bit.
            codes, ascale, azp, _ = torch.ops.lowbit_ext.da8w4_quantize_act(x, group_size, symmetric)
            return torch.ops.lowbit_ext.da8w4_amx_gemm(codes, ascale, azp, qdata, scale, zero_point, qsum, group_size,
                                                       x.dtype == torch.bfloat16)
        if path == "bf16_brgemm" and x.dtype != torch.bfloat16:
            # Its bf16 weight rounding stays below the output's only for bf16 outputs;
            # float32 callers keep the exact integer sums of the VNNI kernel.
            path = "vnni"
        if path == "brgemm":
            # AMX int8 tiles: the same integer sums per group, then the same compensation.
            codes, ascale, azp, gsum = torch.ops.lowbit_ext.da8w4_quantize_act(x, group_size, symmetric)
            y = torch.ops.lowbit_ext.da8w4_brgemm(codes, ascale, azp, gsum, qdata, scale, zero_point, qsum, group_size)
            return y.to(x.dtype)
        if path == "bf16_brgemm":
            # bf16 tiles on the same activation codes, the group scales folded into a
            # bf16 copy of each weight block (wo_gemm_cpu.cpp, da8w4_brgemm_bf16).
            codes, ascale, azp, _ = torch.ops.lowbit_ext.da8w4_quantize_act(x, group_size, symmetric)
            return torch.ops.lowbit_ext.da8w4_brgemm_bf16(codes, ascale, azp, qdata, scale, zero_point, group_size,
                                                          x.dtype == torch.bfloat16).to(x.dtype)
        return torch.ops.lowbit_ext.da8w4_linear(x, qdata, scale, zero_point, qsum, group_size, symmetric)
    warn_fallback_once("da8w4_linear")
    return _reference.da8w4_linear(x, qdata, scale, zero_point, qsum, group_size, act_mapping)
# ---------------------------------------------------------------------- int4 tinygemm (CPU)



def _int4_tinygemm_cpu_gemm(x, qdata, scale_and_zero, group_size, layout, dtype):
    """x @ W^T [M, Np] in ``dtype`` via a dequantized weight: the large-M path.

    In the avx2/avx512 layouts a full block of B rows is a [K, B/2] byte matrix whose low
    nibbles are rows 0..B/2-1 and high nibbles rows B/2..B-1 (packing/int4.py), so
    cat(lo, hi) is already that block's W^T [K, B]: the weight is dequantized in its packed
    block order (contiguous, same-dtype ops only) and multiplied with one batched GEMM,
    [nb, M, B], instead of being transposed into [K, N] first (2x slower on a Zen3).
    Other layouts unpack to [Np, K] first.
    """
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


def _check_int4_tinygemm_args(x, qdata, scale_and_zero, group_size, layout, fn) -> int:
    """Everything the C++ int4 kernels assume about their arguments; returns Np."""
    if layout not in _INT4_GEMV_BLOCK_N:
        raise ValueError(f"lowbit {fn}: layout must be one of {sorted(_INT4_GEMV_BLOCK_N)}, got {layout!r}")
    if qdata.dtype != torch.uint8 or qdata.dim() != 2:
        raise TypeError(f"lowbit {fn}: qdata must be uint8 [Np, K/2], got {qdata.dtype} {tuple(qdata.shape)}")
    n_pad, k = qdata.shape[0], 2 * qdata.shape[1]
    _check_x(x, k, fn)
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"lowbit {fn}: K={k} must be a multiple of an even group_size, got {group_size}")
    if n_pad % 16:
        raise ValueError(f"lowbit {fn}: the packed weight has {n_pad} rows, expected a multiple of 16")
    if tuple(scale_and_zero.shape) != (k // group_size, n_pad, 2):
        raise ValueError(
            f"lowbit {fn}: scale_and_zero must be [{k // group_size}, {n_pad}, 2], got {tuple(scale_and_zero.shape)}"
        )
    return n_pad


def int4_tinygemm_gemv(x, qdata, scale_and_zero, group_size, layout, isa=-1):
    """[M, Np] in x's dtype: lowbit's small-M int4 GEMV (lowbit/csrc/int4_tinygemm_gemv.cpp).

    Every argument the C++ code relies on is checked here first (an exception thrown inside
    the extension can crash a process whose compiler runtime differs from torch's). The
    AVX512-BF16 loop rounds fp16/fp32 activations to bf16 (2^-9 relative per element, well
    under the int4 weight error), as ATen's tinygemm path does; the AVX2 and AVX512F loops
    read fp32. ``isa``: -1 (the widest loop this CPU runs) or a value of INT4_GEMV_ISAS.
    """
    fn = "int4_tinygemm_gemv"
    n_pad = _check_int4_tinygemm_args(x, qdata, scale_and_zero, group_size, layout, fn)
    if isa != -1:
        if isa not in INT4_GEMV_ISAS.values():
            raise ValueError(f"lowbit {fn}: isa must be -1 (auto) or one of {INT4_GEMV_ISAS}, got {isa}")
        if isa > int4_gemv_best_isa():
            raise ValueError(
                f"lowbit {fn}: isa {isa} cannot run on this CPU (best: {int4_gemv_best_isa()}); pass isa=-1"
            )
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"lowbit {fn}: x must be float32, bfloat16 or float16, got {x.dtype}; cast it")
    if x.shape[0] == 0:
        return x.new_zeros((0, n_pad))
    if scale_and_zero.dtype != torch.bfloat16:  # a no-op .to() still costs ~1 us per call
        scale_and_zero = scale_and_zero.to(torch.bfloat16)
    return torch.ops.lowbit_ext.int4_tinygemm_gemv(
        x.contiguous(),
        qdata.contiguous(),
        scale_and_zero.contiguous(),
        group_size,
        _INT4_GEMV_BLOCK_N[layout],
        isa,
    )


def int4_amx_serves(layout: str, group_size: int) -> bool:
    """True where lowbit's AMX int4 kernel runs this weight: the 64-row packing, groups of a
    multiple of 32 (the tile's k step), a CPU and kernel with AMX tiles."""
    return layout == "avx512" and group_size % 32 == 0 and int4_amx_available()


def int4_tinygemm_amx(x, qdata, scale_and_zero, group_size, layout):
    """[M, Np] in x's dtype: the int4 weight on AMX tiles (lowbit/csrc/int4_amx_cpu.cpp), the
    raw codes multiplied as exact bf16 (128 + q) and each group's scale and zero point applied
    to the tile sums; x is rounded to bf16 (as the brgemm and tinygemm paths do)."""
    fn = "int4_tinygemm_amx"
    n_pad = _check_int4_tinygemm_args(x, qdata, scale_and_zero, group_size, layout, fn)
    if layout != "avx512" or group_size % 32:
        raise ValueError(f"lowbit {fn}: needs the 64-row 'avx512' packing and a group size that is a multiple "
                         f"of 32, got layout {layout!r}, group_size {group_size}; use int4_tinygemm_gemv")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"lowbit {fn}: x must be float32, bfloat16 or float16, got {x.dtype}; cast it")
    if not int4_amx_available():
        raise RuntimeError(f"lowbit {fn}: this CPU or kernel has no usable AMX tiles (or the extension is "
                           "missing); check int4_amx_available() first")
    if x.shape[0] == 0:
        return x.new_zeros((0, n_pad))
    if scale_and_zero.dtype != torch.bfloat16:
        scale_and_zero = scale_and_zero.to(torch.bfloat16)
    return torch.ops.lowbit_ext.int4_tinygemm_amx(x.contiguous(), qdata.contiguous(), scale_and_zero.contiguous(),
                                                  group_size)


def _tinygemm(x, qdata, scale_and_zero, group_size):
    # ATen vectorizes this kernel for bf16 only: its fp16/fp32 instantiations are scalar
    # loops, 40-200x slower (measured: M=1 fp32 65 ms vs bf16 1.5 ms). So fp16/fp32
    # activations are rounded to bf16 for the kernel, explicitly, and the output is cast
    # back (output SQNR vs an fp32 reference stays > 45 dB, see the tests).
    xb = x.to(torch.bfloat16).contiguous()
    return aten._weight_int4pack_mm_for_cpu(xb, qdata, group_size, scale_and_zero.to(torch.bfloat16)).to(x.dtype)


@register_traced_kernel("int4_tinygemm_cpu_linear", "cpu")
def _int4_tinygemm_cpu_linear_traced(x, qdata, scale_and_zero, group_size, out_features, layout):
    """In torch.compile graphs: where the batch size is static and the table says tinygemm,
    the graph calls ATen's kernel itself (the ATen op checks its operands), so a compiled
    decode step pays no Python per linear (the custom op's body cost ~20-40 us per call,
    121 calls per SmolLM2 token). Anything else records the custom op."""
    m = x.shape[0]
    static = type(m) is int and m > 0 and x.dim() == 2 and layout == tinygemm_cpu_layout()
    path = choose_path("int4_tinygemm_cpu_linear", m) if static else None
    y = None
    if path == "tinygemm":
        y = _tinygemm(x, qdata, scale_and_zero, group_size)
    elif path == "gemv" and layout in _INT4_GEMV_BLOCK_N and _gemv_traceable():
        # The same checks as in eager (on the static shapes, at trace time), then the
        # extension op itself, which has a fake implementation (_gemv_traceable).
        y = int4_tinygemm_gemv(x, qdata, scale_and_zero, group_size, layout, int4_gemv_isa())
    elif path == "amx" and int4_amx_serves(layout, group_size):
        y = int4_tinygemm_amx(x, qdata, scale_and_zero, group_size, layout)
    if y is not None:
        return y if y.shape[1] == out_features else y[:, :out_features].contiguous()
    return torch.ops.lowbit.int4_tinygemm_cpu_linear(x, qdata, scale_and_zero, group_size, out_features, layout)


@functools.cache
def _gemv_traceable() -> bool:
    """Give ``lowbit_ext::int4_tinygemm_gemv`` a fake implementation (once the extension is
    loaded) so torch.compile graphs can call it directly; False without the extension."""
    if not _int4_gemv_available():
        return False

    @torch.library.register_fake("lowbit_ext::int4_tinygemm_gemv")
    def _fake(x, qdata, scale_and_zero, group_size, block_n, isa=-1):
        return x.new_empty((x.shape[0], qdata.shape[0]))

    return True


@_register("int4_tinygemm_cpu_linear")
def int4_tinygemm_cpu_linear(x, qdata, scale_and_zero, group_size, out_features, layout):
    native = tinygemm_cpu_layout()
    if layout != native:  # a plain if: torch._check costs ~3 us per call (runs eagerly only)
        raise RuntimeError(f"int4 weight packed for the {layout!r} CPU layout, this process's ATen packs "
                           f"{native!r}; repack it with .from_checkpoint(torch.device('cpu'))")
    path = choose_path("int4_tinygemm_cpu_linear", x.shape[0])
    if path == "amx" and not int4_amx_serves(layout, group_size):
        # groups of 16 (or a layout the AMX kernel does not read): the brgemm path multiplies
        # on the tiles too
        path = "brgemm"
    if path in ("gemv", "brgemm") and layout not in _INT4_GEMV_BLOCK_N:
        path = "tinygemm" if x.shape[0] <= CPU_INT4_TINYGEMM_MAX_M else "dequant_gemm"
    if x.shape[0] == 0:
        y = x.new_zeros((0, qdata.shape[0]))
    elif path == "amx":
        y = int4_tinygemm_amx(x, qdata, scale_and_zero, group_size, layout)
    elif path == "brgemm":
        y = int4_tinygemm_brgemm(x, qdata, scale_and_zero, group_size, layout)
    elif path == "gemv":
        y = int4_tinygemm_gemv(x, qdata, scale_and_zero, group_size, layout, int4_gemv_isa())
    elif path == "tinygemm":
        y = _tinygemm(x, qdata, scale_and_zero, group_size)
    else:
        y = _int4_tinygemm_cpu_gemm(x, qdata, scale_and_zero, group_size, layout, _gemm_dtype(x.dtype)).to(x.dtype)
    if y.shape[1] != out_features:
        y = y[:, :out_features].contiguous()
    return y


# ---------------------------------------------------------------------- brgemm paths
#
# lowbit/csrc/wo_gemm_cpu.cpp: weights dequantized block by block into oneDNN's brgemm
# ukernel (AMX tiles, or AVX512-BF16 / VNNI without AMX). Everything the C++ code assumes
# is checked here first: an exception thrown inside the extension can crash a process
# whose compiler runtime differs from torch's.


def _check_x(x: torch.Tensor, k: int, fn: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"lowbit {fn}: x must be 2-D [M, K], got shape {tuple(x.shape)}; reshape it")
    if x.shape[1] != k:
        raise ValueError(f"lowbit {fn}: x has K={x.shape[1]} but the weight has K={k}; pass matching shapes")
    if not x.dtype.is_floating_point:
        raise TypeError(f"lowbit {fn}: x must be a float tensor, got {x.dtype}")


def int4_tinygemm_brgemm(x, qdata, scale_and_zero, group_size, layout, isa=-1):
    """[M, Np] in x's dtype: the int4 tinygemm-layout weight through the bf16 brgemm kernel."""
    fn = "int4_tinygemm_brgemm"
    n_pad = _check_int4_tinygemm_args(x, qdata, scale_and_zero, group_size, layout, fn)
    if x.shape[0] == 0:
        return x.new_zeros((0, n_pad))
    y = torch.ops.lowbit_ext.int4_tinygemm_brgemm(
        x.to(torch.bfloat16).contiguous(),
        qdata.contiguous(),
        scale_and_zero.to(torch.bfloat16).contiguous(),
        group_size,
        _INT4_GEMV_BLOCK_N[layout],
        x.dtype == torch.bfloat16,  # the kernel writes bf16 itself (one rounding, as .to())
        isa,
    )
    return y.to(x.dtype)


def _check_int8_weight(x, qdata, scale, fn):
    if qdata.dtype != torch.int8 or qdata.dim() != 2:
        raise TypeError(f"lowbit {fn}: qdata must be int8 [N, K], got {qdata.dtype} {tuple(qdata.shape)}")
    _check_x(x, qdata.shape[1], fn)
    if scale.numel() != qdata.shape[0]:
        raise ValueError(f"lowbit {fn}: scale must hold one value per output channel ({qdata.shape[0]}), "
                         f"got shape {tuple(scale.shape)}")


def _check_int8_dynamic_args(x, xq, xs, qdata, scale, fn):
    _check_int8_weight(x, qdata, scale, fn)
    if xq.dtype != torch.int8 or tuple(xq.shape) != tuple(x.shape):
        raise TypeError(f"lowbit {fn}: xq must be int8 {tuple(x.shape)} (x's shape), got {xq.dtype} {tuple(xq.shape)}")
    if xs.numel() != x.shape[0]:
        raise ValueError(f"lowbit {fn}: xs must hold one scale per row of x ({x.shape[0]}), got shape {tuple(xs.shape)}")


def int8_weight_only_brgemm(x, qdata, scale, isa=-1):
    """x @ (qdata * scale)^T: int8 rows converted to bf16 (exact), multiplied by bf16 brgemm."""
    _check_int8_weight(x, qdata, scale, "int8_weight_only_brgemm")
    if x.shape[0] == 0:
        return x.new_zeros((0, qdata.shape[0]))
    # The per-channel scale and the cast to bf16 happen in the kernel's epilogue, on each
    # block's accumulators while they are in cache (the same fp32 products as
    # (acc * scale).to(x.dtype)).
    y = torch.ops.lowbit_ext.int8_brgemm_bf16(x.to(torch.bfloat16).contiguous(), qdata.contiguous(),
                                              scale.reshape(-1).to(torch.float32).contiguous(),
                                              x.dtype == torch.bfloat16, isa)
    return y.to(x.dtype)


def int8_amx_serves(qdata) -> bool:
    """True where lowbit's AMX-INT8 kernel takes this weight: K % 64 == 0 (the tile's k step),
    N % 16 == 0 (its height), and AMX-INT8 tiles usable here."""
    return qdata.shape[1] % 64 == 0 and qdata.shape[0] % 16 == 0 and int8_amx_available()


def int8_dynamic_amx(x, xq, xs, qdata, scale):
    """Exact int32 xq @ qdata^T on AMX-INT8 tiles (lowbit/csrc/int8_amx_cpu.cpp), then both scales."""
    fn = "int8_dynamic_amx"
    _check_int8_dynamic_args(x, xq, xs, qdata, scale, fn)
    if qdata.shape[1] % 64 or qdata.shape[0] % 16:
        raise ValueError(f"lowbit {fn}: needs K % 64 == 0 and N % 16 == 0, got [N, K] = {tuple(qdata.shape)}; "
                         "use int8_dynamic_brgemm")
    if not int8_amx_available():
        raise RuntimeError(f"lowbit {fn}: no usable AMX-INT8 tiles here (or no extension); check int8_amx_available()")
    if x.shape[0] == 0:
        return x.new_zeros((0, qdata.shape[0]))
    y = torch.ops.lowbit_ext.int8_amx_gemm(xq.contiguous(), qdata.contiguous(),
                                           xs.reshape(-1).to(torch.float32).contiguous(),
                                           scale.reshape(-1).to(torch.float32).contiguous(),
                                           x.dtype == torch.bfloat16)
    return y.to(x.dtype)


def int8_dynamic_brgemm(x, xq, xs, qdata, scale, isa=-1):
    """Exact int32 xq @ qdata^T by u8s8 brgemm (AMX int8 tiles or AVX512-VNNI), then both scales."""
    _check_int8_dynamic_args(x, xq, xs, qdata, scale, "int8_dynamic_brgemm")
    if x.shape[0] == 0:
        return x.new_zeros((0, qdata.shape[0]))
    # float(acc) * xs[m] * scale[n], then the cast, in the kernel's epilogue.
    y = torch.ops.lowbit_ext.int8_brgemm_u8s8(xq.contiguous(), qdata.contiguous(),
                                              xs.reshape(-1).to(torch.float32).contiguous(),
                                              scale.reshape(-1).to(torch.float32).contiguous(),
                                              x.dtype == torch.bfloat16, isa)
    return y.to(x.dtype)
