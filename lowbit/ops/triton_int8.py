"""Triton kernels of lowbit's 8-bit CUDA formats (int8 and float8 e4m3 weights).

Three kernels, each also registered as a ``torch.library.triton_op`` (``lowbit::triton_*``,
so ``torch.compile(fullgraph=True)`` can capture them) and each with a pure-PyTorch twin
in ``ops/reference.py`` that the tests compare against:

* ``w8a16``: ``y = (x @ codes^T) * scale`` with float activations and 8-bit weight codes
  (int8 or e4m3) turned into the activation dtype in registers (never a dequantized
  weight in memory). Two variants: a CUDA-core GEMV (one activation row per program, the
  weight tile multiplied elementwise and summed; for M of a few rows) and a tensor-core
  tile kernel. The tile kernel computes ``y^T = W x^T``: the weight is the left operand,
  so its (converted) tile feeds the MMA from registers and the batch rows are the short
  N side of the instruction; at small M that is what keeps the tensor cores busy and
  the grid wide (one program per BLOCK_N weight rows).
* ``a8w8``: ``y = (xq @ codes^T) * xs * ws`` with both operands 8-bit: int8 x int8 into
  int32 on the int8 tensor cores, or e4m3 x e4m3 into float32 on the float8 tensor cores. The per-token and per-channel scales are applied in the epilogue, so no
  int32/float32 [M, N] intermediate ever reaches memory.
* ``quant_rows``: symmetric per-row (per-token) quantization of activations to int8
  codes in [-127, 127] (round half to even, like ``torch.round``) or to e4m3 in
  [-448, 448], with one float32 scale per row: the activation half of the dynamic formats.

This module imports triton, so ops/cuda.py imports it on first use, never at lowbit's
import. On CPU tensors the kernels run only in Triton's interpreter (``TRITON_INTERPRET=1``
set before triton is imported; tests/conftest.py does that on machines without CUDA);
lowbit's CPU ops never call these launchers.

Block sizes come from the ``pick_*`` tables (sm90, from ``benchmarks/gpu_8bit.py --sweep``
on an H200; results in ``benchmarks/results/gpu_8bit_h200*.md``).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

__all__ = [
    "BlockConfig",
    "a8w8_linear",
    "dequantize_rows",
    "pick_a8w8",
    "pick_w8a16",
    "quantize_rows",
    "w8a16_linear",
]

# e4m3 ("fn": finite, no infinities) holds magnitudes up to 448.
FP8_E4M3_MAX = 448.0
INT8_QMAX = 127.0  # symmetric int8 codes use [-127, 127]


# ---------------------------------------------------------------------- kernels


@triton.jit
def _load_w_rows(w_ptr, rn, k, n_mask, k_mask, K, W_FP8: tl.constexpr):
    # The [len(rn), len(k)] tile of weight codes (row stride K), bitcast to e4m3 if W_FP8.
    # Masked lanes read byte 0: integer 0 and e4m3 +0.0 alike.
    w = tl.load(w_ptr + rn[:, None] * K + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
    if W_FP8:
        w = w.to(tl.float8e4nv, bitcast=True)
    return w


@triton.jit
def _load_xt(x_ptr, rm, k, m_mask, k_mask, stride_xm):
    # The [len(k), len(rm)] transposed tile of activation rows rm (row stride stride_xm);
    # masked lanes read 0.
    return tl.load(x_ptr + rm[None, :] * stride_xm + k[:, None], mask=m_mask[None, :] & k_mask[:, None], other=0)


@triton.jit
def _k_step_tiles(w_ptr, x_ptr, rn, rm, k, n_mask, m_mask, K, stride_xm, W_FP8: tl.constexpr):
    # One K step of the y^T = W x^T kernels: the weight tile [len(rn), len(k)] and the
    # transposed activation tile [len(k), len(rm)].
    k_mask = k < K
    return _load_w_rows(w_ptr, rn, k, n_mask, k_mask, K, W_FP8), _load_xt(x_ptr, rm, k, m_mask, k_mask, stride_xm)


@triton.jit
def _store_yt(y_ptr, yt, rn, rm, n_mask, m_mask, stride_ym):
    # The y^T tile [len(rn), len(rm)] into y [M, N] (row stride stride_ym), in y's dtype.
    tl.store(y_ptr + rm[None, :] * stride_ym + rn[:, None], yt.to(y_ptr.dtype.element_ty),
             mask=n_mask[:, None] & m_mask[None, :])


@triton.jit(do_not_specialize=["M"])
def _w8a16_gemv(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_ym,
               W_FP8: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Programs are ordered m fastest, so the M programs reading one weight tile run
    # together and all but the first hit L2.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        k_mask = k < K
        w = _load_w_rows(w_ptr, rn, k, n_mask, k_mask, K, W_FP8)
        x = tl.load(x_ptr + pid_m * stride_xm + k, mask=k_mask, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    s = tl.load(s_ptr + rn, mask=n_mask, other=0.0)
    y = tl.sum(acc, axis=1) * s
    tl.store(y_ptr + pid_m * stride_ym + rn, y.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr):
    # This program's tile: weight rows rn, batch rows rm, the K offsets rk of one step and
    # the masks of rn and rm. Grouped ordering: GROUP_N weight-row blocks sweep all batch
    # blocks before moving on, so each weight tile is read from HBM about once.
    pid = tl.program_id(0)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_N * tl.cdiv(M, BLOCK_M)
    first_n = (pid // width) * GROUP_N
    size_n = min(grid_n - first_n, GROUP_N)
    rn = (first_n + (pid % width) % size_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = ((pid % width) // size_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    return rn, rm, tl.arange(0, BLOCK_K), rn < N, rm < M


@triton.jit(do_not_specialize=["M"])  # one compiled kernel for every batch size
def _w8a16_mm(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_ym,
             W_FP8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             GROUP_N: tl.constexpr, W_IS_A: tl.constexpr, F32_DOT: tl.constexpr):
    # W_IS_A: y^T tile [BLOCK_N, BLOCK_M] = W tile [BLOCK_N, K] @ x^T tile [K, BLOCK_M] (the
    # converted weight is the MMA's register operand; batch rows are its short side).
    # Else y tile [BLOCK_M, BLOCK_N] = x tile @ W^T tile (the weight is the second operand).
    # F32_DOT (the interpreter only, whose bf16/fp16 dot is wrong in triton 3.9)
    # multiplies in float32.
    rn, rm, rk, n_mask, m_mask = _tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_N)
    s = tl.load(s_ptr + rn, mask=n_mask, other=0.0)
    if W_IS_A:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w, xt = _k_step_tiles(w_ptr, x_ptr, rn, rm, k0 + rk, n_mask, m_mask, K, stride_xm, W_FP8)
            if F32_DOT:
                acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc)
            else:
                # Codes -> float32 -> activation dtype (exact for int8 and e4m3).
                acc = tl.dot(w.to(tl.float32).to(xt.dtype), xt, acc)
        y = acc * s[:, None]
        _store_yt(y_ptr, y, rn, rm, n_mask, m_mask, stride_ym)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + rk
            k_mask = k < K
            xb = tl.load(x_ptr + rm[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                         other=0.0)
            wt = tl.load(w_ptr + rn[None, :] * K + k[:, None], mask=n_mask[None, :] & k_mask[:, None], other=0)
            if W_FP8:
                wt = wt.to(tl.float8e4nv, bitcast=True)
            if F32_DOT:
                acc = tl.dot(xb.to(tl.float32), wt.to(tl.float32), acc)
            else:
                acc = tl.dot(xb, wt.to(tl.float32).to(xb.dtype), acc)
        y = acc * s[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])


@triton.jit(do_not_specialize=["M"])
def _a8w8_mm(xq_ptr, xs_ptr, w_ptr, ws_ptr, y_ptr, M, N, K, stride_ym, stride_xs, stride_ws,
            FP8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            GROUP_N: tl.constexpr, F32_DOT: tl.constexpr):
    # Same tiling as w8a16_mm; xq [M, K] codes (row stride K), scales xs [M] and ws [N]
    # (stride 0: one scale for all rows, the tensor-wise format).
    rn, rm, rk, n_mask, m_mask = _tile(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_N)
    if FP8:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        w, xt = _k_step_tiles(w_ptr, xq_ptr, rn, rm, k0 + rk, n_mask, m_mask, K, K, FP8)
        if FP8:
            # e4m3 values are exact in bf16 and their products exact in float32.
            xt = xt.to(tl.float8e4nv, bitcast=True)
            if F32_DOT:
                # e4m3 values and their products are exact in float32.
                acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc)
            else:
                acc = tl.dot(w, xt, acc)  # e4m3 tensor cores (sm89+), float32 accumulation
        else:
            acc = tl.dot(w, xt, acc, out_dtype=tl.int32)
    ws = tl.load(ws_ptr + rn * stride_ws, mask=n_mask, other=0.0)
    xs = tl.load(xs_ptr + rm * stride_xs, mask=m_mask, other=0.0)
    y = acc.to(tl.float32) * ws[:, None] * xs[None, :]
    _store_yt(y_ptr, y, rn, rm, n_mask, m_mask, stride_ym)


@triton.jit
def _round_half_even(v):
    # torch.round's rounding, written out: the interpreter has no libdevice rint.
    r = tl.floor(v + 0.5)
    return tl.where((r - v == 0.5) & (tl.floor(r * 0.5) * 2.0 != r), r - 1.0, r)


@triton.jit
def _round_to_e4m3(v):
    # v rounded (to nearest even) onto the e4m3 grid, in float32: 3 mantissa bits, so the
    # step is 2^(exponent - 3), and 2^-9 below 2^-6 (subnormals). Only the interpreter
    # uses this: its float32 -> e4m3 cast rounds wrongly where rounding carries into the
    # exponent (7.9 -> 4.0 in triton 3.9); GPUs convert with cvt.rn.satfinite.
    a = tl.abs(v)
    step = tl.exp2(tl.floor(tl.log2(tl.maximum(a, 0.015625))) - 3.0)
    r = _round_half_even(a / step) * step
    return tl.where(v < 0, -r, r)


@triton.jit
def _quant_rows(x_ptr, q_ptr, s_ptr, K, stride_xm, FP8: tl.constexpr, BLOCK_K: tl.constexpr,
                EMULATE_E4M3: tl.constexpr):
    # One program per row: pass 1 finds max |x|, pass 2 writes the codes.
    row = tl.program_id(0)
    rk = tl.arange(0, BLOCK_K)
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        x = tl.load(x_ptr + row * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    if FP8:
        qmax = 448.0  # FP8_E4M3_MAX (module globals are not constexprs inside a kernel)
    else:
        qmax = 127.0  # INT8_QMAX
    # Same scale as the reference: amax / qmax, at least float32 eps (all-zero rows).
    scale = tl.maximum(tl.max(amax, axis=0) / qmax, 1.1920928955078125e-07)
    tl.store(s_ptr + row, scale)
    # int8: x * (1 / scale) as the reference (lowbit/ops/reference.py); float8: x / scale.
    inv = tl.math.div_rn(1.0, scale)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        x = tl.load(x_ptr + row * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
        if FP8:
            v = tl.math.div_rn(x, scale)
        else:
            v = x * inv
        v = tl.minimum(tl.maximum(v, -qmax), qmax)
        if FP8:
            if EMULATE_E4M3:
                v = _round_to_e4m3(v)
            q = v.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        else:
            q = _round_half_even(v).to(tl.int8)
        tl.store(q_ptr + row * K + k, q, mask=k < K)

@triton.jit
def _dequant_rows(w_ptr, s_ptr, out_ptr, total, K, W_FP8: tl.constexpr, BLOCK: tl.constexpr):
    # out[n, k] = codes[n, k] * scale[n] in out's dtype: the large-M weight-only path
    # dequantizes once per call into a scratch weight that cuBLAS then multiplies.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    w = tl.load(w_ptr + offs, mask=mask, other=0)
    if W_FP8:
        w = w.to(tl.float8e4nv, bitcast=True)
    s = tl.load(s_ptr + offs // K, mask=mask, other=0.0)
    tl.store(out_ptr + offs, (w.to(tl.float32) * s).to(out_ptr.dtype.element_ty), mask=mask)


_KERNELS = {"dequant_rows": _dequant_rows, "w8a16_gemv": _w8a16_gemv, "w8a16_mm": _w8a16_mm, "a8w8_mm": _a8w8_mm, "quant_rows": _quant_rows}


def _interpreting() -> bool:
    return isinstance(_w8a16_gemv, InterpretedFunction)  # TRITON_INTERPRET=1 at triton's import


def _launch(name: str, device: torch.device, grid, *args, **meta):
    kernel = _KERNELS[name]
    if _interpreting():
        return kernel[grid](*args, **meta)
    if device.type != "cuda":
        raise RuntimeError(
            f"lowbit's Triton kernels run on CUDA tensors, got {device} tensors; on CPU they run only in "
            "Triton's interpreter (set TRITON_INTERPRET=1 before triton is imported)"
        )
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        # Traced (torch.compile, or a triton_op under fake/functional modes): go through
        # wrap_triton so the launch becomes a graph node.
        return torch.library.wrap_triton(kernel)[grid](*args, **meta)
    return kernel[grid](*args, **meta)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Block sizes and launch settings of one kernel call.

    Weight-only (``w8a16_linear``): ``block_m == 0`` selects the GEMV; ``w_is_a`` picks the
    tile kernel's operand order (see ``_w8a16_mm``). The 8-bit x 8-bit kernel ignores ``w_is_a``.
    """

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    w_is_a: bool = True
    group_n: int = 8


# Block sizes per batch size M on sm90, per weight class: "wide" (N >= _WIDE_N) holds the
# fastest configs of the H200 sweep on 14336x4096 (benchmarks/results/gpu_8bit_h200_sweep.md;
# at M = 1 the x-first tile kernel, best over 14336x4096 and 28672x8192 in
# gpu_8bit_h200_m1_sweep_2026-12-03.md: 68.2 us at 28672x8192, 1.62x bf16);
# "narrow" (N < _WIDE_N, few weight-row blocks) takes the same family with half the block
# of weight rows where that doubles the programs to about one per SM (not swept yet:
# ``benchmarks/gpu_8bit.py --sweep --tables-out`` measures both classes and writes tables
# that ``_set_tables`` installs).
# Entry (largest M, (block_m, block_n, block_k, num_warps, num_stages[, w_is_a])); block_m 0
# selects the GEMV.
_WIDE_N = 8192
_BIG = 1 << 62
_TABLES: dict[str, dict[str, list]] = {
    "w8a16": {
        "narrow": [(1, (0, 8, 512, 4, 3)), (16, (16, 16, 256, 4, 4)), (64, (32, 64, 128, 4, 4)),
                   (_BIG, (256, 128, 64, 8, 3))],
        "wide": [(1, (16, 64, 128, 4, 4, False)), (16, (16, 32, 256, 4, 4)), (64, (64, 64, 128, 4, 4)),
                 (_BIG, (256, 128, 64, 8, 3))],
    },
    "a8w8_int8": {
        "narrow": [(16, (16, 32, 256, 4, 4)), (64, (64, 64, 128, 4, 4)), (256, (64, 128, 128, 4, 4)),
                   (_BIG, (128, 128, 128, 8, 3))],
        "wide": [(16, (16, 64, 128, 4, 5)), (64, (64, 128, 128, 4, 4)), (_BIG, (128, 128, 128, 8, 3))],
    },
    "a8w8_fp8": {
        "narrow": [(16, (16, 32, 256, 4, 4)), (64, (64, 64, 128, 4, 4)), (256, (64, 128, 128, 4, 4)),
                   (_BIG, (128, 256, 128, 8, 3))],
        "wide": [(16, (16, 64, 256, 4, 4)), (64, (64, 128, 128, 4, 4)), (_BIG, (128, 256, 128, 8, 3))],
    },
}


def _pick(kind: str, m: int, n: int) -> tuple:
    table = _TABLES[kind]["wide" if n >= _WIDE_N else "narrow"]
    return next(cfg for top, cfg in table if m <= top)


def pick_w8a16(m: int, n: int, k: int) -> BlockConfig:
    """The weight-only kernel config for an [m, k] x [n, k]^T product."""
    return BlockConfig(*_pick("w8a16", m, n))


def pick_a8w8(m: int, n: int, k: int, fp8: bool = False) -> BlockConfig:
    """The 8-bit x 8-bit kernel config for an [m, k] x [n, k]^T product."""
    return BlockConfig(*_pick("a8w8_fp8" if fp8 else "a8w8_int8", m, n))


def _set_tables(tables: dict) -> None:
    """Replace block-size tables (same layout as ``_TABLES``); benchmarks/gpu_8bit.py --tables."""
    for kind, classes in tables.items():
        for cls_name, rows in classes.items():
            _TABLES[kind][cls_name] = [(int(top), tuple(int(v) for v in cfg[:5]) + tuple(bool(v) for v in cfg[5:]))
                                       for top, cfg in rows]


# ---------------------------------------------------------------------- launchers


def _check_2d(x, codes, scale):
    torch._check(x.dim() == 2 and codes.dim() == 2, lambda: "x and the weight codes must be 2-D")
    torch._check(x.shape[1] == codes.shape[1], lambda: f"K mismatch: x {tuple(x.shape)}, weight {tuple(codes.shape)}")
    torch._check(scale.numel() == codes.shape[0], lambda: f"need one scale per output row, got {tuple(scale.shape)}")


def _scales(scale: torch.Tensor) -> torch.Tensor:
    """float32 contiguous scales, flattened (no copy when they already are)."""
    if scale.dtype != torch.float32 or not scale.is_contiguous():
        scale = scale.to(torch.float32).contiguous()
    return scale.reshape(-1)


def _codes_view(codes: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(codes as int8/uint8 bytes, is e4m3): e4m3 travels as uint8 and is bitcast in-kernel."""
    if codes.dtype == torch.float8_e4m3fn:
        return codes.view(torch.uint8), True
    torch._check(codes.dtype == torch.int8, lambda: f"weight codes must be int8 or float8_e4m3fn, got {codes.dtype}")
    return codes, False


def w8a16_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, config: BlockConfig | None = None) -> torch.Tensor:
    """``x @ (codes * scale)^T`` in x's dtype; codes int8 or e4m3 [N, K], scale float32 [N] or [N, 1]."""
    _check_2d(x, codes, scale)
    x = x.contiguous()
    w, fp8 = _codes_view(codes)
    m, k = x.shape
    n = w.shape[0]
    cfg = config or pick_w8a16(m, n, k)
    s = _scales(scale)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    if cfg.block_m == 0:
        _launch("w8a16_gemv", x.device, (m, _cdiv(n, cfg.block_n)), x, w, s, y, m, n, k, x.stride(0), y.stride(0),
                W_FP8=fp8, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    else:
        grid = (_cdiv(n, cfg.block_n) * _cdiv(m, cfg.block_m),)
        _launch("w8a16_mm", x.device, grid, x, w, s, y, m, n, k, x.stride(0), y.stride(0),
                W_FP8=fp8, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_N=cfg.group_n, W_IS_A=cfg.w_is_a,
                F32_DOT=_interpreting(), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y


def a8w8_linear(xq: torch.Tensor, x_scale: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor,
                out_dtype: torch.dtype, config: BlockConfig | None = None) -> torch.Tensor:
    """``(xq @ codes^T) * x_scale * w_scale`` in ``out_dtype``: int8 x int8 or e4m3 x e4m3.

    ``x_scale`` is [M] / [M, 1], or one element for all rows; ``w_scale`` likewise [N] or one.
    """
    torch._check(xq.dim() == 2 and codes.dim() == 2, lambda: "activation and weight codes must be 2-D")
    torch._check(xq.shape[1] == codes.shape[1], lambda: f"K mismatch: x {tuple(xq.shape)}, weight {tuple(codes.shape)}")
    torch._check(xq.dtype == codes.dtype, lambda: f"activation codes {xq.dtype} and weight codes {codes.dtype} differ")
    a, _ = _codes_view(xq.contiguous())
    w, fp8 = _codes_view(codes)
    m, k = a.shape
    n = w.shape[0]
    cfg = config or pick_a8w8(m, n, k, fp8)
    xs = _scales(x_scale)
    ws = _scales(w_scale)
    torch._check(xs.numel() in (1, m), lambda: f"need one activation scale per row (or one), got {tuple(x_scale.shape)}")
    torch._check(ws.numel() in (1, n), lambda: f"need one weight scale per row (or one), got {tuple(w_scale.shape)}")
    y = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return y
    grid = (_cdiv(n, cfg.block_n) * _cdiv(m, cfg.block_m),)
    _launch("a8w8_mm", xq.device, grid, a, xs, w, ws, y, m, n, k, y.stride(0), int(xs.numel() > 1), int(ws.numel() > 1),
            FP8=fp8, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_N=cfg.group_n, F32_DOT=_interpreting(),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y


_DEQUANT_BLOCK = 2048  # weight elements per program


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes * scale`` as a dense [N, K] weight in ``dtype`` (one pass over the codes)."""
    w, fp8 = _codes_view(codes.contiguous())
    n, k = w.shape
    s = _scales(scale)
    torch._check(s.numel() == n, lambda: f"need one scale per row, got {tuple(scale.shape)}")
    out = torch.empty((n, k), dtype=dtype, device=w.device)
    if out.numel():
        _launch("dequant_rows", w.device, (_cdiv(out.numel(), _DEQUANT_BLOCK),), w, s, out, out.numel(), k,
                W_FP8=fp8, BLOCK=_DEQUANT_BLOCK, num_warps=4)
    return out


_QUANT_BLOCK_K = 1024  # elements per step of a row; the row is read twice (amax, codes)


def quantize_rows(x: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row codes (int8 in [-127, 127], or e4m3) and float32 scales [M, 1]."""
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.uint8 if fp8 else torch.int8, device=x.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m:
        block = min(_QUANT_BLOCK_K, max(16, 1 << (k - 1).bit_length()))
        _launch("quant_rows", x.device, (m,), x, q, s, k, x.stride(0), FP8=fp8, BLOCK_K=block, EMULATE_E4M3=_interpreting(),
                num_warps=4 if block >= 512 else 1)
    return (q.view(torch.float8_e4m3fn) if fp8 else q), s


# ---------------------------------------------------------------------- torch.library ops


@functools.cache
def register_triton_ops() -> None:
    """Define ``lowbit::triton_w8a16_linear``, ``triton_a8w8_linear``, ``triton_quantize_rows``.

    Called by ops/cuda.py on import when triton is installed; the ops are what
    torch.compile sees when user code calls the kernels directly (lowbit's formats call
    them through their own ``lowbit::*_linear`` ops).
    """
    from torch.library import triton_op

    @triton_op("lowbit::triton_w8a16_linear", mutates_args=())
    def _w8a16(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return w8a16_linear(x, codes, scale)

    @triton_op("lowbit::triton_a8w8_linear", mutates_args=())
    def _a8w8(xq: torch.Tensor, x_scale: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor,
              out_dtype: torch.dtype) -> torch.Tensor:
        return a8w8_linear(xq, x_scale, codes, w_scale, out_dtype)

    @triton_op("lowbit::triton_quantize_rows", mutates_args=())
    def _quant(x: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return quantize_rows(x, fp8)
