"""Triton kernels for int4 weight-only linears on CUDA (and in Triton's CPU interpreter).

Three kernels read lowbit's own layout (``lowbit/packing/int4_triton.py``: int32
``qdata [Kp / 8, N]``, nibble plane ``j`` of word row ``16 c + i`` is
``k = 128 c + 16 j + i``; ``scale``/``zero_point [K / group_size, N]``):

* ``gemv_kernel``   M = 1 (``GEMV_MAX_M``): CUDA-core FMAs, split-K. Each 128-K step
  loads its ``[16, BLOCK_N]`` word tile once; nibble plane ``j`` is dequantized and
  multiplied by a contiguous 16-value activation slice into a ``[16, BLOCK_N]`` fp32
  tile, reduced once at the end. Bandwidth-bound: the goal is HBM speed.
* ``gemv3_kernel``  the decode GEMV (M = 1, and M = 2 on narrow layers): gemv2's
  factored numerics on a ``[CH, 16, BLOCK_N]`` word tile (CH chunks per step, the next
  step's words loaded early), so that one launch covers a column strip with no split-K.
* ``mm_kernel``     M > 1: fused dequantize + ``tl.dot`` (tensor cores). Each BLOCK_K
  step gathers the ``[BLOCK_K, BLOCK_N]`` codes in natural k order (word row
  ``16 (k // 128) + k % 16``, nibble ``(k % 128) // 16``: loads stay coalesced along N,
  the 8 codes of a word after the first come from L1), one scale row per tile when the
  tile lies in one group. Split-K for small grids (fp32 atomics), direct stores otherwise.
* ``dequant_kernel`` writes the bf16 weight ``[K, N]`` (row-major, coalesced) for a
  cuBLAS GEMM at large M, where that measures faster than the fused kernel.

Two factored variants read the same layout, selectable through ``cfg["kind"]`` (tests and
the benchmark sweep; ``_pick``'s table does not use them until H200 runs say so):

* ``gemv2_kernel``  like ``gemv_kernel``, but each code becomes the fp32 ``1 + q / 16``
  by moving its bits into the mantissa of 1.0 (a shift and an and-or: no int -> float
  convert, which runs at a quarter of the FMA rate), one FMA per weight into the group's
  partial, and the affine map once per group: ``sum x ((q - 8) s + z) = 16 s P +
  (z - 24 s) sum x`` with ``P = sum x (1 + q / 16)`` (int zero points:
  ``16 s P - (z + 16) s sum x``). ``PREFETCH``: the next chunk's words are loaded before
  the current chunk is computed (Triton pipelines no loads that feed no dot).
* ``mm2_kernel``    the tensor-core version of the same: each 128-K chunk loads its word
  tile once, ``SUB`` nibble planes at a time become a ``[16 SUB, BLOCK_N]`` tile of
  ``1 + q / 16`` in the activation dtype (exact in bf16/fp16) for one ``tl.dot``
  (``SUB`` = 1: eight K = 16 dots per chunk; 2/4/8: planes stacked with ``tl.join``, or
  with one broadcast shift when ``JOIN`` is false), the group's scale and zero point
  applied to the ``[BLOCK_M, BLOCK_N]`` partial at the group's end. Split-K over chunks.
  ``XDOT``: the activation sums of a group from a second dot with ones (in the
  accumulator's layout) instead of a row reduction. ``PAIR`` (group size >= 128): planes
  ``h`` and ``h + 4`` from one shift and one and-or, their codes landing in the two 16-bit
  halves of each word. ``benchmarks/triton_int4_sass.py`` counts the SASS of each.

Both round differently from the dequantize-then-dot kernels (sums of exact products in
fp32, no rounding of the dequantized weight to bf16): tests/ops/test_triton_int4.py
states and checks the bound against the float64 product.

A fourth, ``marlin_mm_kernel``, reads the Marlin layout (``lowbit/packing/int4_marlin.py``)
in place: every ``[BLOCK_K, BLOCK_N]`` code tile is gathered with the Marlin address
arithmetic (word and nibble of each (k, n) computed from the layout's definition) and
dequantized with Marlin's integer zero points, then ``tl.dot``.

Which kernel and tile sizes run for a given (M, N, K) is a table measured on an H200
(sm90, ``benchmarks/gpu_int4.py --sweep``; ``benchmarks/results/gpu_int4_h200_triton.md``),
in ``_pick``. Numerics: codes are dequantized in fp32 (``(q - 8) * s + z`` for float
zero points, ``(q - z) * s`` for int ones), rounded to the activation dtype for the
tensor-core dot, accumulated in fp32.

The op ``lowbit::int4_triton_cuda_mm`` is a ``torch.library.triton_op`` so that
``torch.compile`` sees (and can fuse around) the Triton kernels; on devices other than
CUDA it runs the pure-PyTorch reference (``lowbit.ops.reference``).
"""

from __future__ import annotations

import functools

import torch
from torch.library import triton_op, wrap_triton

from .library import _DEVICE_KERNELS, register_device_kernel

__all__ = [
    "GEMV_MAX_M",
    "int4_marlin_dequantize",
    "int4_marlin_linear",
    "int4_triton_cuda_mm",
    "int4_triton_dequantize",
    "int4_triton_linear",
    "int4_triton_reference",
]

GEMV_MAX_M = 1  # batch rows up to which the CUDA-core GEMV beats the tensor-core kernel (H200)
_PLANE = 16  # K values per nibble plane (one tl.dot with K = 16)
_CHUNK = 128  # K values per word tile (8 planes)
# mm2_kernel's codes enter the dot as 1 + q / 16: (bit of the code's lowest bit, bits of 1.0) per dtype.
_MAGIC = {torch.bfloat16: (3, 0x3F80), torch.float16: (6, 0x3C00)}


@functools.cache
def _kernels():
    """The Triton kernels, imported on first use (never at import: triton may be absent)."""
    from . import triton_int4_kernels

    return _kernel_table(triton_int4_kernels)


def _kernel_table(k) -> dict:
    """Short names of the kernels in module ``k`` (tests pass an interpreted copy)."""
    return {"gemv": k.gemv_kernel, "mm": k.mm_kernel, "gemv2": k.gemv2_kernel, "gemv3": k.gemv3_kernel, "mm2": k.mm2_kernel,
            "dequant": k.dequant_kernel, "marlin": k.marlin_mm_kernel, "marlin_dequant": k.marlin_dequant_kernel}


# ---------------------------------------------------------------------- dispatch by M

# Tile choices per M range, measured on an H200 (sm90) with benchmarks/gpu_int4.py
# --sweep (benchmarks/results/gpu_int4_h200_sweep_mm2.md, gpu_int4_h200_gemv3_2026-12-03.md).
# Other CUDA archs (sm80/sm89) use the same table until measured there. kind: "gemv"/
# "gemv2"/"gemv3", "mm"/"mm2" or "deq" (dequantize + cuBLAS). Each row: (max M, kind,
# BLOCK_M, BLOCK_N, BLOCK_K (128: the chunk the split-K heuristic counts), num_warps,
# num_stages, extra cfg). H200 sweeps, cold weights, CUDA graphs, 14336x4096 (4096x4096), us:
#   M=1   gemv3 CH4 PREFETCH 22.3 (CH8 9.6), gemv2 PREFETCH 23.5 (12.2), bf16 32.1 (13.8);
#         28672x8192: gemv3 73.0, gemv2 71.7, bf16 121.2; 4096x14336: gemv3 25.2, gemv2 29.2
#   M=2   mm2 27.4 (gemv3 13.2), gemv3 37.0 (mm2 17.6), bf16 32.6 (13.7)
#   M=4   mm2 PAIR+XDOT 16x128 split 4: 27.3 (17.8), old mm 50.2 (19.8), bf16 31.7 (14.0)
#   M=16  mm2 30.0 (19.9), old mm 52.4 (20.3), bf16 32.5 (13.9)
#   M=64  mm2 32x128 70.7 (27.2), dequantize + cuBLAS 73.6 (21.2), bf16 37.5 (12.5)
#   M=256 dequantize + cuBLAS 87.0 (26.5), old mm 159.8 (80.2), mm2 208.3 (105.1)
# So gemv3 serves M = 1 (and M = 2 on narrow layers, N < _NARROW_N, where mm2's grid is
# small), mm2 M <= 32 and dequantize + cuBLAS the rest.
_SM90_TABLE = (
    (GEMV_MAX_M, "gemv3", 1, 64, 128, 4, 1, {"CH": 4, "PREFETCH": True}),
    (32, "mm2", 16, 128, 128, 4, 3, {"PAIR": True, "XDOT": True}),
    (1 << 62, "deq", 0, 128, 0, 4, 1, {}),
)
_NARROW_N = 8192
# Narrow layers, 2 < M <= _NARROW_MM2_MAX_M: mm2 on 64-column tiles with the next chunk's words
# prefetched (H200 sweep 2026-12-04, benchmarks/results/gpu_int4_h200_mm2_prefetch_2026-12-04.md:
# 4096x4096 M=4 / 16 14.8 / 15.9 us vs 17.3 / 19.1 for the 128-column row above; bf16 13.4 / 13.8.
# On 14336x4096 the prefetch lost: 30.6 / 35.9 vs 27.4 / 30.0 us.)
_NARROW_MM2_MAX_M = 16
_NARROW_MM2 = {"BLOCK_N": 64, "PREFETCH": True}
# Narrow layers (N < _NARROW_N): M -> (BLOCK_N, num_warps, CH) of gemv3 (sweep bests:
# 4096x4096 M=1 32 / 8 warps / CH8, M=2 64 / 8 / 8).
_SM90_NARROW_GEMV3 = {1: (32, 8, 8), 2: (64, 8, 8)}
_SPLIT_K_MAX_M = 256  # above this the fp32 partial sums would cost more than they save
# Programs per SM the split-K heuristic aims for, and the largest split (sweep best:
# gemv2 split 4 at 56 tiles, 8 at 32; mm2 split 4 at 32 and 112 tiles).
_WAVES = {"gemv": 4, "mm": 2, "gemv2": 2, "mm2": 4}
_MAX_SPLIT = {"mm2": 4}


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # Triton's CPU interpreter (tests): any small count exercises split-K
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _split_k(tiles: int, k_steps: int, device, waves: int = 2) -> int:
    """Split K so that ``tiles`` output tiles make about ``waves`` programs per SM."""
    want = waves * _sms(device)
    return max(1, min(want // tiles, k_steps // 2, 16)) if tiles < want else 1


def _pick(m: int, n: int, k: int, device: torch.device) -> dict:
    """Kernel and launch parameters for an [M, K] x [K, N] int4 linear (table above)."""
    for max_m, kind, bm, bn, bk, warps, stages, extra in _SM90_TABLE:
        if m <= max_m:
            break
    if n < _NARROW_N and m <= max(_SM90_NARROW_GEMV3):  # comparisons only: m may be a SymInt (tracing)
        kind, bm, bk, stages = "gemv3", 1, 128, 1
        bn, warps, ch = next(v for top, v in sorted(_SM90_NARROW_GEMV3.items()) if m <= top)
        extra = {"CH": ch, "PREFETCH": True}
    elif n < _NARROW_N and kind == "mm2" and m <= _NARROW_MM2_MAX_M:
        bn, extra = _NARROW_MM2["BLOCK_N"], {**extra, "PREFETCH": _NARROW_MM2["PREFETCH"]}
    cfg = {"kind": kind, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages,
           "SPLIT_K": 1, **extra}
    # gemv3 never splits K: one launch, no zeroed fp32 buffer, no atomics, no cast.
    if kind not in ("deq", "gemv3") and m <= _SPLIT_K_MAX_M:
        tiles = (m if kind in ("gemv", "gemv2", "gemv3") else -(-m // bm)) * -(-n // bn)
        split = _split_k(tiles, -(-k // bk), device, _WAVES[kind])
        cfg["SPLIT_K"] = min(split, _MAX_SPLIT.get(kind, split))
    return cfg


def _launch_gemv_or_mm(x, qdata, scale, zero_point, group_size, int_zp, cfg, wrap):
    m, k = x.shape
    n = qdata.shape[1]
    split = cfg["SPLIT_K"]
    if split > 1:
        out = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    else:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    ks = _kernels()
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    launch = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    n_chunks = qdata.shape[0] // 16
    gp = min(group_size // _PLANE, _CHUNK // _PLANE)  # planes per scale step (one group, at most a chunk)
    if cfg["kind"] == "gemv":
        grid = (-(-n // bn), split, m)
        wrap(ks["gemv"])[grid](x, qdata, scale, zero_point, out, m, n, k, n_chunks, x.stride(0),
                               out.stride(0), GS=group_size, INT_ZP=int_zp, BLOCK_N=bn, SPLIT_K=split, **launch)
    elif cfg["kind"] == "gemv2":
        grid = (-(-n // bn), split, m)
        wrap(ks["gemv2"])[grid](x, qdata, scale, zero_point, out, m, n, k, n_chunks, x.stride(0), out.stride(0),
                                GS=group_size, INT_ZP=int_zp, BLOCK_N=bn, GP=gp, PREFETCH=cfg.get("PREFETCH", False),
                                SPLIT_K=split, **launch)
    elif cfg["kind"] == "gemv3":
        ch = cfg.get("CH", 4)
        grid = (-(-n // bn), split, m)
        wrap(ks["gemv3"])[grid](x, qdata, scale, zero_point, out, m, n, k, n_chunks, x.stride(0), out.stride(0),
                                GS=group_size, INT_ZP=int_zp, BLOCK_N=bn, CH=ch, GP=gp,
                                PREFETCH=cfg.get("PREFETCH", False), SPLIT_K=split, **launch)
    elif cfg["kind"] == "mm2":
        pair = bool(cfg.get("PAIR", False)) and gp == _CHUNK // _PLANE  # pairs of planes need the chunk in one group
        sub = 1 if pair else min(cfg.get("SUB", 1), gp)  # planes per tl.dot: a dot never spans two groups
        grid = (-(-m // bm) * -(-n // bn), split)
        wrap(ks["mm2"])[grid](x, qdata, scale, zero_point, out, m, n, k, n_chunks, x.stride(0), out.stride(0),
                              GS=group_size, INT_ZP=int_zp, BLOCK_M=bm, BLOCK_N=bn, SUB=sub, GP=gp,
                              JOIN=cfg.get("JOIN", True), XDOT=cfg.get("XDOT", False), PAIR=pair, SPLIT_K=split, GROUP_M=8,
                              MAG_SH=_MAGIC[x.dtype][0], MAG_ONE=_MAGIC[x.dtype][1], PREFETCH=cfg.get("PREFETCH", False),
                              **launch)
    else:
        grid = (-(-m // bm) * -(-n // bn), split)
        wrap(ks["mm"])[grid](x, qdata, scale, zero_point, out, m, n, k, qdata.shape[0] * 8, x.stride(0), out.stride(0),
                             GS=group_size, INT_ZP=int_zp, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"],
                             SPLIT_K=split, GROUP_M=8, **launch)
    return out.to(x.dtype) if split > 1 else out


def _launch_dequant(qdata, scale, zero_point, k, group_size, int_zp, dtype, wrap, block_n=128):
    n = qdata.shape[1]
    w = torch.empty((k, n), dtype=dtype, device=qdata.device)
    grid = (qdata.shape[0] // 16, -(-n // block_n))
    wrap(_kernels()["dequant"])[grid](qdata, scale, zero_point, w, n, k, GS=group_size, INT_ZP=int_zp,
                                      BLOCK_N=block_n, num_warps=4)
    return w


def _no_wrap(kernel):
    return kernel


def _act(x):
    # Tensor cores take bf16/fp16; float32 activations are computed in bf16.
    return (x if x.dtype in (torch.bfloat16, torch.float16) else x.to(torch.bfloat16)).contiguous()


def int4_triton_linear(x, qdata, scale, zero_point, group_size: int, *, cfg: dict | None = None, wrap=_no_wrap):
    """``x [M, K] @ W^T`` for W in lowbit's Triton layout; ``cfg`` overrides ``_pick``
    (tests and the benchmark sweep). Float zero points unless ``zero_point`` is integer."""
    xa = _act(x)
    m, k = xa.shape
    int_zp = not zero_point.dtype.is_floating_point
    cfg = cfg or _pick(m, qdata.shape[1], k, x.device)
    if cfg["kind"] == "deq":
        w = _launch_dequant(qdata, scale, zero_point, k, group_size, int_zp, xa.dtype, wrap)
        y = torch.mm(xa, w)
    else:
        y = _launch_gemv_or_mm(xa, qdata, scale, zero_point, group_size, int_zp, cfg, wrap)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def int4_triton_dequantize(qdata, scale, zero_point, k: int, group_size: int, dtype=torch.bfloat16):
    """The weight as ``dtype [K, N]`` (one Triton pass)."""
    return _launch_dequant(qdata, scale, zero_point, k, group_size, not zero_point.dtype.is_floating_point,
                           dtype, _no_wrap)


def int4_triton_reference(x, qdata, scale, zero_point, group_size: int):
    """Pure-PyTorch numerics of ``int4_triton_linear``: dequantize in fp32, fp32 matmul."""
    from ..packing.int4_triton import unpack_int4_triton
    from .reference import dequantize_int4_float_zp, dequantize_int4_int_zp

    k = x.shape[1]
    codes = unpack_int4_triton(qdata, k)
    fn = dequantize_int4_int_zp if not zero_point.dtype.is_floating_point else dequantize_int4_float_zp
    w = fn(codes, scale.t(), zero_point.t(), group_size)
    return (x.to(torch.float32) @ w.t()).to(x.dtype)


@triton_op("lowbit::int4_triton_cuda_mm", mutates_args=())
def int4_triton_cuda_mm(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                        group_size: int) -> torch.Tensor:
    """x [M, K] float, qdata int32 [Kp / 8, N], scale/zero_point [K / group_size, N] -> [M, N] in x.dtype."""
    torch._check(x.dim() == 2 and qdata.dim() == 2, lambda: "x and qdata must be 2-D")
    torch._check(qdata.shape[0] * 8 >= x.shape[1], lambda: f"K mismatch: x {x.shape}, qdata {qdata.shape}")
    if x.device.type != "cuda":
        return int4_triton_reference(x, qdata, scale, zero_point, group_size)
    return int4_triton_linear(x, qdata, scale, zero_point, group_size, wrap=wrap_triton)


def _eager_int4_triton_cuda_mm(x, qdata, scale, zero_point, group_size):
    return int4_triton_linear(x, qdata, scale, zero_point, group_size)


# The eager fast path (ops.library.kernel) calls the launcher directly on CUDA.
_DEVICE_KERNELS[(torch.ops.lowbit.int4_triton_cuda_mm, "cuda")] = _eager_int4_triton_cuda_mm


# ---------------------------------------------------------------------- Marlin layout

# Marlin tiles per M range on sm90: (max M, BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages).
# H200 sweep (4096x4096): 16x64x128 split 4 best to M = 16 (158-164 us, gathers bound it;
# the fused kernel took 185-1476 us at M = 64..1024). Above M = 16: dequantize (the same
# gathers, once) + cuBLAS, as measured for lowbit's own layout (21-56 us there); the
# Marlin dequantize kernel itself is checked in the interpreter but not yet timed on a GPU.
_MARLIN_SM90_TABLE = (
    (16, 16, 64, 128, 4, 3),
)
_MARLIN_DEQUANT_TILE = (32, 128)  # (BLOCK_K, BLOCK_N) of marlin_dequant_kernel


def _pick_marlin(m: int, n: int, k: int, group_size: int, device: torch.device) -> dict | None:
    """Launch parameters of the fused Marlin kernel, or None: dequantize + cuBLAS."""
    for max_m, bm, bn, bk, warps, stages in _MARLIN_SM90_TABLE:
        if m <= max_m:
            break
    else:
        return None
    bk = min(bk, group_size)
    bn = bn if n % bn == 0 else 64  # the Marlin layout guarantees N % 64 == 0
    cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages, "SPLIT_K": 1}
    if m <= _SPLIT_K_MAX_M:
        cfg["SPLIT_K"] = _split_k(-(-m // bm) * (n // bn), k // bk // 2, device)
    return cfg


def int4_marlin_linear(x, qdata, scale, zero_point, group_size: int, *, cfg: dict | None = None):
    """``x [M, K] @ W^T`` reading the Marlin layout (int32 ``[K/16, 2N]``, scales
    ``[G, N]`` and int zero points ``[G, N/8]`` in Marlin order) in place."""
    xa = _act(x)
    m, k = xa.shape
    n = qdata.shape[1] // 2
    cfg = cfg or _pick_marlin(m, n, k, group_size, x.device)
    if cfg is None:
        y = torch.mm(xa, int4_marlin_dequantize(qdata, scale, zero_point, group_size, xa.dtype))
        return y if y.dtype == x.dtype else y.to(x.dtype)
    bm, bn, bk, split = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["SPLIT_K"]
    if group_size % bk or n % bn:
        raise ValueError(f"Marlin Triton tiles need group_size % BLOCK_K == 0 and N % BLOCK_N == 0, got "
                         f"group_size={group_size}, BLOCK_K={bk}, N={n}, BLOCK_N={bn}")
    out = torch.zeros((m, n), dtype=torch.float32, device=x.device) if split > 1 else \
        torch.empty((m, n), dtype=xa.dtype, device=x.device)
    grid = (-(-m // bm) * (n // bn), split)
    _kernels()["marlin"][grid](xa, qdata, scale, zero_point, out, m, n, k, xa.stride(0), out.stride(0),
                               GS=group_size, SINGLE_GROUP=scale.shape[0] == 1, BLOCK_M=bm, BLOCK_N=bn,
                               BLOCK_K=bk, SPLIT_K=split, GROUP_M=8, num_warps=cfg["num_warps"],
                               num_stages=cfg["num_stages"])
    return out.to(x.dtype)


def int4_marlin_dequantize(qdata, scale, zero_point, group_size: int, dtype=torch.bfloat16):
    """A Marlin-layout weight as ``dtype [K, N]`` (one Triton pass over the layout)."""
    k, n = qdata.shape[0] * 16, qdata.shape[1] // 2
    bk, bn = _MARLIN_DEQUANT_TILE
    bk = min(bk, group_size)
    bn = bn if n % bn == 0 else 64  # the layout guarantees N % 64 == 0
    w = torch.empty((k, n), dtype=dtype, device=qdata.device)
    _kernels()["marlin_dequant"][(k // bk, n // bn)](qdata, scale, zero_point, w, n, k, GS=group_size,
                                                     SINGLE_GROUP=scale.shape[0] == 1, BLOCK_K=bk, BLOCK_N=bn,
                                                     num_warps=4)
    return w


@register_device_kernel("int4_marlin_mm", "cuda")
def _int4_marlin_mm_cuda(x, qdata, scale, zero_point, group_size):
    return int4_marlin_linear(x, qdata, scale, zero_point, group_size)

