"""lowbit's own CUDA int4 layout, read by the Triton kernels of ``lowbit/ops/triton_int4.py``.

Design goal: every load the kernels issue is a row of consecutive int32 words along N
(coalesced 16-byte vectors per thread), and one ``>> 4 j & 0xF`` turns a ``[16, BLOCK_N]``
tile of words into a ``[16, BLOCK_N]`` tile of codes whose 16 K indices are *contiguous*,
so the matching activation slice is a plain ``[BLOCK_M, 16]`` load and the product a
``tl.dot`` with K = 16 (the k16 of the bf16 mma). This is the GPTQ idea of packing 8
codes along K per int32 (``qweight [K / 8, N]``), with the 8 codes of a word spread
16 apart instead of adjacent:

* K is cut in chunks of ``CHUNK_K = 128`` (K is padded with code 0 up to a multiple of
  128; the kernels mask the activation there, so the padding never contributes).
* Chunk ``c`` is stored as 16 word rows ``16 c + i`` (i = 0..15). Nibble ``j`` (bits
  ``4 j .. 4 j + 3``) of word ``(16 c + i, n)`` holds the code of
  ``k = 128 c + 16 j + i``, column ``n``.

So ``qdata`` is int32 ``[ceil(K / 128) * 16, N]``, N contiguous. All 16 codes of a
nibble plane ``j`` lie in one 16-wide span of K, hence in one quantization group for
every group size >= 16: the scale and zero point of a plane are one ``[BLOCK_N]`` row.
"""

from __future__ import annotations

import torch

__all__ = ["CHUNK_K", "pack_int4_triton", "padded_k", "unpack_int4_triton"]

CHUNK_K = 128  # K values per block of 16 word rows
_ROWS = 16  # word rows per chunk (the k16 of one nibble plane)
_NIBBLES = 8  # codes per int32


def padded_k(k: int) -> int:
    """K rounded up to a multiple of ``CHUNK_K`` (the packed K extent)."""
    return -(-k // CHUNK_K) * CHUNK_K


def pack_int4_triton(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned int4 codes ``[N, K]`` (uint8, 0..15) -> int32 ``[padded_k(K) / 8, N]``."""
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.dtype != torch.uint8:
        got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a 2-D uint8 tensor [N, K], got {got}")
    n, k = codes.shape
    kp = padded_k(k)
    v = torch.nn.functional.pad(codes.to(torch.int64), (0, kp - k))  # code 0 in the padding
    # k = 128 c + 16 j + i  ->  [N, c, j, i] -> [c, i, N, j]: word row 16 c + i, nibble j.
    v = v.reshape(n, kp // CHUNK_K, _NIBBLES, _ROWS).permute(1, 3, 0, 2)
    shifts = torch.arange(0, 4 * _NIBBLES, 4, device=codes.device, dtype=torch.int64)
    u = (v << shifts).sum(-1).reshape(kp // _NIBBLES, n)
    return torch.where(u >= 2**31, u - 2**32, u).to(torch.int32)  # same 32 bits, signed


def unpack_int4_triton(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of ``pack_int4_triton``: int32 ``[padded_k(K) / 8, N]`` -> uint8 codes ``[N, K]``."""
    if packed.ndim != 2 or packed.dtype != torch.int32 or packed.shape[0] != padded_k(k) // _NIBBLES:
        raise ValueError(
            f"packed must be int32 [{padded_k(k) // _NIBBLES}, N] for K={k}, got {packed.dtype} {tuple(packed.shape)}"
        )
    rows, n = packed.shape
    # int32 arithmetic shifts sign-extend, but the 0xF mask keeps exactly the nibble.
    shifts = torch.arange(0, 4 * _NIBBLES, 4, device=packed.device, dtype=torch.int32)
    v = (packed.unsqueeze(-1) >> shifts) & 0xF  # [c*16 + i, N, j]
    v = v.reshape(rows // _ROWS, _ROWS, n, _NIBBLES).permute(2, 0, 3, 1)  # [N, c, j, i]
    return v.reshape(n, rows * _NIBBLES)[:, :k].to(torch.uint8).contiguous()
