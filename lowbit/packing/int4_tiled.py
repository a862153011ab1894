"""Tensor-core tiled int4 layout of PyTorch's CUDA tinygemm kernel, in pure PyTorch.

``aten._convert_weight_to_int4pack`` (CUDA) turns a ``[N, K / 2]`` uint8 weight into an
int32 tensor ``[N / 8, K / (inner_k_tiles * 16), 32, inner_k_tiles / 2]`` that
``aten._weight_int4pack_mm`` streams straight into ``mma.m16n8k16`` B fragments. That
op only exists for CUDA, so to pack on any device and, above all, to *unpack* (no
inverse op exists) we reimplement the layout here with reshapes and permutes.

Layout, as read from PyTorch's ``aten/src/ATen/native/cuda/int4mm.cu``
(``matrix_to_m16n8k16_Bint4_layout`` and ``BLayout_TC_int4::load``):

* N is cut in n-tiles of 8 rows (the ``n8`` of m16n8k16), K in k-tiles of 16
  (the ``k16``); ``inner_k_tiles`` consecutive k-tiles form one "outer" k-tile, so that
  one warp lane loads 4, 8 or 16 bytes at once (inner_k_tiles 2, 4, 8).
* Warp lane ``t`` (0..31) holds row ``n = 8 * n_tile + t // 4`` of the tile, and in a
  k-tile the B-fragment elements ``k = 2 * (t % 4) + {0, 1}`` and ``+ 8`` of that
  (PTX ISA, "Matrix Fragments for mma.m16n8k16", B operand).
* One int32 covers two k-tiles (8 nibbles = 2 k-tiles x 4 values per lane). Nibble
  positions, lowest first, for the two k-tiles ``a`` in {0, 1}, the half ``b`` in {0, 1}
  (element offset ``8 * b``) and the pair element ``d`` in {0, 1}:
  ``position = 4 * d + 2 * a + b``. Even elements (``d = 0``) sit in the low 16 bits
  and odd ones in the high 16 bits, which is what the kernel's
  ``convert_i4x8_to_bf16x2x4`` (a shift-by-4 unpack that yields bf16 pairs) expects.
* Codes are unsigned 0..15; the kernel subtracts 8 (it reads them as ``q - 8``)
  and applies ``(q - 8) * scale + zero`` with one bf16 (scale, zero) pair per group:
  ``scale_and_zero`` is bf16 ``[K / group_size, N, 2]``.

The uint8 input of the CUDA op puts the *even* k in the high nibble of each byte
(``byte = q[2j] << 4 | q[2j + 1]``); ``codes_to_convert_input`` builds it for tests.
"""

from __future__ import annotations

import torch

__all__ = [
    "INNER_K_TILES",
    "N_TILE",
    "K_TILE",
    "pack_int4_tiled",
    "unpack_int4_tiled",
    "pack_tinygemm_scale_and_zero",
    "unpack_tinygemm_scale_and_zero",
    "codes_to_convert_input",
]

N_TILE = 8  # rows of B per mma.m16n8k16 tile (the n8)
K_TILE = 16  # reduction depth per mma.m16n8k16 tile (the k16)
LANES = 32  # threads in a warp; each holds one int32 per pair of k-tiles
INNER_K_TILES = (2, 4, 8)  # 4-, 8-, 16-byte loads per lane; what the kernel accepts
_NIBBLES = 8  # int4 values per int32


def _check_inner_k_tiles(inner_k_tiles: int) -> None:
    if inner_k_tiles not in INNER_K_TILES:
        raise ValueError(f"inner_k_tiles must be one of {INNER_K_TILES}, got {inner_k_tiles!r}")


def _to_int32_bits(u: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 with the same 32 bits (two's complement)."""
    return torch.where(u >= 2**31, u - 2**32, u).to(torch.int32)


def pack_int4_tiled(codes: torch.Tensor, inner_k_tiles: int = 8) -> torch.Tensor:
    """Pack unsigned int4 codes ``[N, K]`` (uint8, 0..15) into the tinygemm tiled layout.

    Returns int32 ``[N / 8, K / (inner_k_tiles * 16), 32, inner_k_tiles / 2]``, bit-identical
    to ``aten._convert_weight_to_int4pack(codes_to_convert_input(codes), inner_k_tiles)``
    on CUDA. Needs ``N % 8 == 0`` and ``K % (inner_k_tiles * 16) == 0``.
    """
    _check_inner_k_tiles(inner_k_tiles)
    if codes.ndim != 2 or codes.dtype != torch.uint8:
        raise ValueError(f"codes must be a 2-D uint8 tensor [N, K], got {codes.dtype} {tuple(codes.shape)}")
    n, k = codes.shape
    k_outer = inner_k_tiles * K_TILE
    if n % N_TILE or k % k_outer:
        raise ValueError(
            f"the tiled int4 layout needs N % {N_TILE} == 0 and K % {k_outer} == 0 "
            f"(inner_k_tiles={inner_k_tiles}), got N={n}, K={k}; pad the weight or use a "
            f"smaller inner_k_tiles"
        )
    # k = k_outer_idx * (ikt*16) + p * 32 + a * 16 + b * 8 + c * 2 + d, with
    #   p: pair of k-tiles (one int32), a: k-tile in the pair, b: +8 half of the k-tile,
    #   c: lane % 4, d: even/odd element.  n = n_tile * 8 + r with r = lane // 4.
    v = codes.to(torch.int64).reshape(n // N_TILE, N_TILE, k // k_outer, inner_k_tiles // 2, 2, 2, 4, 2)
    #                                  nt          r       ko            p                  a  b  c  d
    v = v.permute(0, 2, 1, 6, 3, 7, 4, 5)  # nt, ko, r, c, p, d, a, b
    v = v.reshape(n // N_TILE, k // k_outer, LANES, inner_k_tiles // 2, _NIBBLES)  # lane = 4r + c
    # nibble position = 4d + 2a + b, which is the flattened (d, a, b) index.
    shifts = torch.arange(0, 4 * _NIBBLES, 4, device=codes.device, dtype=torch.int64)
    return _to_int32_bits((v << shifts).sum(dim=-1))


def unpack_int4_tiled(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_int4_tiled``: int32 ``[N/8, K/(ikt*16), 32, ikt/2]`` -> uint8 ``[N, K]``."""
    if packed.ndim != 4 or packed.dtype != torch.int32 or packed.shape[2] != LANES:
        raise ValueError(
            f"packed must be int32 [N/8, K/(inner_k_tiles*16), 32, inner_k_tiles/2], "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    n_tiles, k_outer_tiles, _, half_ikt = packed.shape
    inner_k_tiles = 2 * half_ikt
    _check_inner_k_tiles(inner_k_tiles)
    # int32 arithmetic shifts sign-extend, but the 0xF mask keeps exactly the nibble.
    shifts = torch.arange(0, 4 * _NIBBLES, 4, device=packed.device, dtype=torch.int32)
    v = (packed.unsqueeze(-1) >> shifts) & 0xF  # nt, ko, lane, p, (d a b)
    v = v.reshape(n_tiles, k_outer_tiles, N_TILE, 4, half_ikt, 2, 2, 2)  # nt, ko, r, c, p, d, a, b
    v = v.permute(0, 2, 1, 4, 6, 7, 3, 5)  # nt, r, ko, p, a, b, c, d
    return v.reshape(n_tiles * N_TILE, k_outer_tiles * inner_k_tiles * K_TILE).to(torch.uint8)


def pack_tinygemm_scale_and_zero(scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``scale``/``zero_point`` ``[N, G]`` -> ``[G, N, 2]`` (scale then zero), the tinygemm order.

    The dtype is kept; the CUDA kernel needs bfloat16 (callers cast before packing).
    """
    if scale.shape != zero_point.shape or scale.ndim != 2:
        raise ValueError(
            f"scale and zero_point must both be [N, K // group_size], got {tuple(scale.shape)} "
            f"and {tuple(zero_point.shape)}"
        )
    if scale.dtype != zero_point.dtype:
        raise ValueError(f"scale and zero_point must share a dtype, got {scale.dtype} and {zero_point.dtype}")
    return torch.stack([scale, zero_point], dim=-1).transpose(0, 1).contiguous()


def unpack_tinygemm_scale_and_zero(scale_and_zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``pack_tinygemm_scale_and_zero``: ``[G, N, 2]`` -> (scale, zero) ``[N, G]``."""
    if scale_and_zero.ndim != 3 or scale_and_zero.shape[2] != 2:
        raise ValueError(f"scale_and_zero must be [K // group_size, N, 2], got {tuple(scale_and_zero.shape)}")
    t = scale_and_zero.transpose(0, 1)
    return t[..., 0].contiguous(), t[..., 1].contiguous()


def codes_to_convert_input(codes: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K / 2]`` with the even k in the high nibble: what the CUDA
    ``aten._convert_weight_to_int4pack`` takes (torch >= 2.5)."""
    c = codes.to(torch.uint8)
    return ((c[:, ::2] << 4) | c[:, 1::2]).contiguous()
