"""Int4 packing: two 4-bit codes per byte, in the portable order and in tinygemm-CPU order.

All functions take and return *codes*: uint8 tensors whose values are 0..15 (an int4
weight ``[N, K]`` with N output features and K input features). Every ``pack_*`` here
has an ``unpack_*`` that restores its input bit for bit; tests/tensors check both ways.

Two layouts live here:

* **Portable nibbles** (``pack_int4_nibbles``), the on-disk form of ``Int4PlainTensor``.
* **tinygemm CPU** (``pack_tinygemm_cpu``), what ``aten._weight_int4pack_mm_for_cpu``
  reads. ATen packs it with ``aten._convert_weight_to_int4pack_for_cpu``, and the byte
  order depends on the CPU capability ATen dispatched to (AVX512, AVX2, or none), so a
  packed blob records the layout it was built with (``tinygemm_cpu_layout()``).
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "TINYGEMM_CPU_LAYOUTS",
    "pack_int4_nibbles",
    "unpack_int4_nibbles",
    "pack_tinygemm_cpu",
    "unpack_tinygemm_cpu",
    "tinygemm_cpu_layout",
]

_LOW = 0x0F  # mask of the low nibble


def _check_codes(codes: torch.Tensor, fn: str) -> None:
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.ndim != 2:
        got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"{fn} needs uint8 codes of shape [N, K], got {got}")
    if codes.shape[1] % 2:
        raise ValueError(f"{fn} packs two codes per byte and needs an even K, got K={codes.shape[1]}")


# ----------------------------------------------------------------------------- portable


def pack_int4_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes [N, K] (values 0..15) into uint8 [N, K // 2].

    Nibble order: byte ``j`` of row ``n`` holds ``codes[n, 2j]`` in its LOW nibble and
    ``codes[n, 2j + 1]`` in its HIGH nibble, i.e. ``byte = c[2j] | c[2j+1] << 4``.
    This is the order of GGML/GPTQ-style "little-endian" nibbles along K; rows stay rows.
    Values above 15 are not checked here (callers build codes with a clamp).
    """
    _check_codes(codes, "pack_int4_nibbles")
    even = codes[:, 0::2]  # k = 0, 2, 4, ... -> low nibbles
    odd = codes[:, 1::2]  # k = 1, 3, 5, ... -> high nibbles
    return (even & _LOW) | ((odd & _LOW) << 4)


def unpack_int4_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Exact inverse of ``pack_int4_nibbles``: uint8 [N, K // 2] -> uint8 codes [N, K]."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim != 2:
        got = f"{packed.dtype} {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"unpack_int4_nibbles needs uint8 [N, K // 2], got {got}")
    # stack(..., dim=-1) interleaves: [lo0, hi0, lo1, hi1, ...] == [c0, c1, c2, c3, ...].
    return torch.stack((packed & _LOW, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


# ----------------------------------------------------------------------------- tinygemm CPU
#
# Layout written by ATen's ``weight_to_int4pack_kernel`` (aten/src/ATen/native/cpu/
# int4mm_kernel.cpp, read for torch 2.5 - 2.13). The N rows are cut into blocks of
# BLOCK_N = 4 * (floats per SIMD register): 64 with AVX512, 32 with AVX2 (and 32 on
# builds without x86 SIMD). Block i is stored contiguously at byte offset
# i * BLOCK_N * K / 2 as a [K, nb / 2] byte matrix (nb = rows in the block, the last
# block may be short): one row of bytes per k, holding the nb codes of column k.
# Inside a byte row, which two weight rows share a byte depends on the layout:
#
#   avx512 (full 64-row block): byte d      = row d      | row d + 32 << 4   (d < 16)
#                               byte 16 + d = row d + 16 | row d + 48 << 4
#           so one 256-bit load + shift yields rows 0..31 and 32..63 as two lanes.
#   avx2   (full 32-row block): byte d      = row d      | row d + 16 << 4   (d < 16)
#   pairs  (short tail blocks of every layout, and full blocks without SIMD):
#                               byte d      = row 2d     | row 2d + 1 << 4
#
# A layout is described by (BLOCK_N, lo_rows, hi_rows): for a full block, byte column c
# holds row lo_rows[c] in its low nibble and row hi_rows[c] in its high nibble.


def _pair_rows(nb: int) -> tuple[list[int], list[int]]:
    return list(range(0, nb, 2)), list(range(1, nb, 2))


def _layouts() -> dict[str, tuple[int, list[int], list[int]]]:
    r16 = list(range(16))
    return {
        "avx512": (64, r16 + [d + 16 for d in r16], [d + 32 for d in r16] + [d + 48 for d in r16]),
        "avx2": (32, r16, [d + 16 for d in r16]),
        "pairs32": (32, *_pair_rows(32)),
    }


# name -> (BLOCK_N, lo_rows, hi_rows) of a full block.
TINYGEMM_CPU_LAYOUTS: dict[str, tuple[int, list[int], list[int]]] = _layouts()

# N must be a multiple of this for ATen's packer (shortest supported tail block).
TINYGEMM_CPU_N_ALIGN = 16


def _layout(layout: str) -> tuple[int, list[int], list[int]]:
    if layout not in TINYGEMM_CPU_LAYOUTS:
        raise ValueError(f"unknown tinygemm CPU layout {layout!r}; known: {sorted(TINYGEMM_CPU_LAYOUTS)}")
    return TINYGEMM_CPU_LAYOUTS[layout]


def _check_tinygemm_n(n: int, fn: str) -> None:
    if n % TINYGEMM_CPU_N_ALIGN:
        raise ValueError(
            f"{fn} needs N % {TINYGEMM_CPU_N_ALIGN} == 0 (ATen's tail blocks are 16, 32 or 48 rows), "
            f"got N={n}; pad the rows with zero codes first"
        )


def pack_tinygemm_cpu(codes: torch.Tensor, layout: str) -> torch.Tensor:
    """Pure-PyTorch twin of ``aten._convert_weight_to_int4pack_for_cpu`` for ``layout``.

    uint8 codes [N, K] (N % 16 == 0) -> uint8 [N, K // 2] in the byte order described
    above. On a machine whose ATen uses ``layout`` this equals the ATen packer bit for bit
    (tested); it also lets tests pack layouts of CPUs this machine does not have.
    """
    _check_codes(codes, "pack_tinygemm_cpu")
    n, k = codes.shape
    _check_tinygemm_n(n, "pack_tinygemm_cpu")
    block, lo_rows, hi_rows = _layout(layout)
    parts = []
    for start in range(0, n, block):
        nb = min(block, n - start)
        blk = codes[start:start + nb]  # [nb, K]
        lo, hi = (lo_rows, hi_rows) if nb == block else _pair_rows(nb)
        # [K, nb/2] byte matrix: column c pairs rows lo[c] (low nibble) and hi[c] (high).
        byte = (blk[lo] & _LOW) | ((blk[hi] & _LOW) << 4)
        parts.append(byte.t().reshape(-1))
    return torch.cat(parts).reshape(n, k // 2)


def unpack_tinygemm_cpu(packed: torch.Tensor, layout: str) -> torch.Tensor:
    """Exact inverse of the tinygemm CPU packing: uint8 [N, K // 2] -> uint8 codes [N, K].

    Vectorized over all full blocks at once; only the (at most one) short tail block is
    handled separately.
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim != 2:
        got = f"{packed.dtype} {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"unpack_tinygemm_cpu needs uint8 [N, K // 2], got {got}")
    n, half_k = packed.shape
    k = 2 * half_k
    _check_tinygemm_n(n, "unpack_tinygemm_cpu")
    block, lo_rows, hi_rows = _layout(layout)
    flat = packed.reshape(-1)
    n_full = n // block
    out = torch.empty(n, k, dtype=torch.uint8, device=packed.device)
    if n_full:
        # [n_full, K, block/2] -> nibbles transposed to [n_full, block/2, K].
        byte = flat[: n_full * block * half_k].reshape(n_full, k, block // 2).transpose(1, 2)
        full = out[: n_full * block].view(n_full, block, k)
        full[:, lo_rows] = byte & _LOW
        full[:, hi_rows] = byte >> 4
    tail = n - n_full * block
    if tail:
        byte = flat[n_full * block * half_k:].reshape(k, tail // 2).t()
        lo, hi = _pair_rows(tail)
        rest = out[n_full * block:]
        rest[lo] = byte & _LOW
        rest[hi] = byte >> 4
    return out


@torch._dynamo.assume_constant_result
@functools.cache
def tinygemm_cpu_layout() -> str | None:
    """Name of the layout this process's ATen CPU int4 packer writes, or None if unknown.

    Probed once, lazily (never at import): pack a small code matrix with ATen and find the
    known layout that reproduces it. The answer depends on the CPU capability ATen chose
    (it can be forced with ``ATEN_CPU_CAPABILITY``), so it is recorded in every packed
    tensor and compared before the kernel reads one.
    """
    # 128 rows = two AVX512 blocks; K = 4 makes block ordering visible. Values cycle 0..15.
    n, k = 128, 4
    codes = ((torch.arange(n * k).reshape(n, k) * 7 + torch.arange(n).reshape(n, 1)) % 16).to(torch.int32)
    native = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    for name in TINYGEMM_CPU_LAYOUTS:
        if torch.equal(pack_tinygemm_cpu(codes.to(torch.uint8), name), native):
            return name
    return None
