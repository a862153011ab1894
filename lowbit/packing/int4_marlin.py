"""The Marlin int4 weight layout (IST-DASLab Marlin, vLLM GPTQ/AWQ-Marlin), in pure PyTorch.

Marlin (Frantar et al., "MARLIN: Mixed-Precision Auto-Regressive Parallel Inference on
Large Language Models", 2024; github.com/IST-DASLab/marlin) stores a ``[N, K]`` int4
weight so that each warp lane can feed its ``mma.m16n8k16`` B fragments with one
16-byte load and dequantize 8 nibbles with two ``lop3`` + ``fma`` tricks. The layout is
built in four steps; this file follows the packing description of Marlin's
``marlin/__init__.py`` (``Layer.pack`` / ``_get_perms``) and vLLM's
``vllm/model_executor/layers/quantization/utils/marlin_utils{,_test}.py``
(``marlin_permute_weights``, ``get_weight_perm``, ``marlin_permute_scales``,
``marlin_zero_points``), re-derived and written here:

1. Work on ``W^T``: ``[K, N]`` (Marlin's B operand is K-major).
2. Cut it into 16x16 tiles and lay each tile out as one row of 256 values:
   ``[K/16, 16, N/16, 16] -> [K/16, N/16, 16 (k), 16 (n)] -> [K/16, N * 16]``.
3. Inside every chunk of 1024 values (four 16x16 tiles, 64 output columns), reorder so
   that warp lane ``i`` (0..31) finds its fragment values contiguous: for lane ``i`` the
   B fragment of m16n8k16 holds rows ``k = 2 (i % 4) + {0, 1}`` and ``k + 8 + {0, 1}``
   of column ``n = i // 4`` (PTX ISA, mma.m16n8k16 B fragment), once for the left
   ``n``-half (``block`` 0) and once for the right half (+8 columns), for each of the
   four tiles (+256). Then within every group of 8 values apply the interleave
   ``0, 2, 4, 6, 1, 3, 5, 7`` so that one ``>> 4`` exposes the odd half of the nibbles
   while the even half is masked in place (Marlin's ``dequant`` with the
   ``0x000f000f`` mask, after FasterTransformer's ``interleaved_numeric_conversion``).
4. Pack 8 consecutive values into one int32, value ``j`` at bits ``4j``:
   ``[K/16, N * 16] -> [K/16, N * 2]``.

Scales ``[G, N]`` (G = K / group_size) are permuted per row in chunks of 64 columns so
that a thread's 8 columns sit together (``scale_perm``: column ``i + 8 j`` for i, j in
0..7), or, for one group per column (channelwise), with ``scale_perm_single`` (the
column pairs ``2i + {0, 1, 8, 9, 16, 17, 24, 25}`` a thread owns).

Integer zero points (GPTQ/AWQ-Marlin with zero points, ``x = (q - z) * s``) ``[G, N]``
get the grouped ``scale_perm`` (always, also channelwise: they are applied on every
mma), then the same 8-value interleave as the weights, then 8 per int32 along N:
``[G, N / 8]`` int32.

Constraints of the layout: ``K % 16 == 0``, ``N % 64 == 0`` (a permutation chunk is
four 16-column tiles).
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "MARLIN_TILE",
    "MARLIN_N_CHUNK",
    "pack_marlin_int4",
    "unpack_marlin_int4",
    "pack_marlin_scales",
    "unpack_marlin_scales",
    "pack_marlin_zero_points",
    "unpack_marlin_zero_points",
]

MARLIN_TILE = 16  # the 16x16 tile of step 2
MARLIN_N_CHUNK = 64  # columns covered by one 1024-value permutation chunk (4 tiles)
_CHUNK = 4 * MARLIN_TILE * MARLIN_TILE  # 1024 values permuted together in step 3
_PACK = 8  # nibbles per int32
# Step 3's in-register order: even nibbles first, then odd ones.
_INTERLEAVE = (0, 2, 4, 6, 1, 3, 5, 7)


@functools.cache
def _weight_perm() -> tuple[int, ...]:
    """Source index (within a 1024-value chunk) of every destination slot, step 3."""
    perm = []
    for lane in range(32):
        n_in_tile = lane // 4
        k_rows = (2 * (lane % 4), 2 * (lane % 4) + 1, 2 * (lane % 4) + 8, 2 * (lane % 4) + 9)
        lane_vals = [16 * k + n_in_tile + 8 * half for half in (0, 1) for k in k_rows]
        for tile in range(4):
            perm.extend(v + 256 * tile for v in lane_vals)
    # Reorder every 8 consecutive slots by the interleave.
    return tuple(perm[i - i % _PACK + _INTERLEAVE[i % _PACK]] for i in range(len(perm)))


@functools.cache
def _scale_perm() -> tuple[int, ...]:
    """Column order (in chunks of 64) for grouped scales and for zero points."""
    return tuple(i + 8 * j for i in range(8) for j in range(8))


@functools.cache
def _scale_perm_single() -> tuple[int, ...]:
    """Column order (in chunks of 32) for channelwise scales (one group per column)."""
    return tuple(2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25))


def _index(perm: tuple[int, ...], device) -> torch.Tensor:
    return torch.tensor(perm, dtype=torch.long, device=device)


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def _check_layout_shape(n: int, k: int) -> None:
    if k % MARLIN_TILE or n % MARLIN_N_CHUNK:
        raise ValueError(
            f"the Marlin layout needs K % {MARLIN_TILE} == 0 and N % {MARLIN_N_CHUNK} == 0, "
            f"got N={n}, K={k}; pad the layer or use another int4 packing"
        )


def _pack_cols(v: torch.Tensor) -> torch.Tensor:
    """[R, C] values 0..15 -> int32 [R, C / 8], value j of each 8 at bits 4j."""
    r, c = v.shape
    shifts = torch.arange(0, 4 * _PACK, 4, device=v.device, dtype=torch.int64)
    u = (v.to(torch.int64).reshape(r, c // _PACK, _PACK) << shifts).sum(-1)
    return torch.where(u >= 2**31, u - 2**32, u).to(torch.int32)


def _unpack_cols(p: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_pack_cols`` -> uint8 [R, C]."""
    # int32 arithmetic shifts sign-extend, but the 0xF mask keeps exactly the nibble.
    shifts = torch.arange(0, 4 * _PACK, 4, device=p.device, dtype=torch.int32)
    v = (p.unsqueeze(-1) >> shifts) & 0xF
    return v.reshape(p.shape[0], -1).to(torch.uint8)


def pack_marlin_int4(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned int4 codes ``[N, K]`` (uint8, 0..15) -> Marlin int32 ``[K / 16, N * 2]``."""
    if codes.ndim != 2 or codes.dtype != torch.uint8:
        raise ValueError(f"codes must be a 2-D uint8 tensor [N, K], got {codes.dtype} {tuple(codes.shape)}")
    n, k = codes.shape
    _check_layout_shape(n, k)
    t = MARLIN_TILE
    w = codes.t().reshape(k // t, t, n // t, t).permute(0, 2, 1, 3).reshape(k // t, n * t)  # steps 1-2
    w = w.reshape(-1, _CHUNK)[:, _index(_weight_perm(), codes.device)].reshape(k // t, n * t)  # step 3
    return _pack_cols(w)  # step 4


def unpack_marlin_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_marlin_int4``: int32 ``[K / 16, N * 2]`` -> uint8 codes ``[N, K]``."""
    if packed.ndim != 2 or packed.dtype != torch.int32 or packed.shape[1] % (2 * MARLIN_N_CHUNK):
        raise ValueError(
            f"packed must be int32 [K / 16, N * 2] with N % 64 == 0, got {packed.dtype} {tuple(packed.shape)}"
        )
    t = MARLIN_TILE
    k, n = packed.shape[0] * t, packed.shape[1] // 2
    w = _unpack_cols(packed)
    inv = _inverse(_index(_weight_perm(), packed.device))
    w = w.reshape(-1, _CHUNK)[:, inv].reshape(k // t, n // t, t, t)
    return w.permute(0, 2, 1, 3).reshape(k, n).t().contiguous()


def _scale_index(n_groups: int, device) -> torch.Tensor:
    """Grouped order for several groups per column, Marlin's single-group order for one."""
    return _index(_scale_perm() if n_groups > 1 else _scale_perm_single(), device)


def pack_marlin_scales(scale: torch.Tensor, k: int) -> torch.Tensor:
    """Scales ``[N, G]`` (G = K / group_size) -> Marlin order ``[G, N]``, same dtype.

    ``G == 1`` (one group spanning K, "channelwise") uses Marlin's single-group order.
    """
    if scale.ndim != 2:
        raise ValueError(f"scale must be [N, K // group_size], got {tuple(scale.shape)}")
    n, g = scale.shape
    _check_layout_shape(n, k)
    s = scale.t().contiguous()
    idx = _scale_index(g, scale.device)
    return s.reshape(-1, idx.numel())[:, idx].reshape(g, n).contiguous()


def unpack_marlin_scales(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_marlin_scales``: ``[G, N]`` Marlin order -> ``[N, G]``."""
    g, n = packed.shape
    idx = _scale_index(g, packed.device)
    return packed.reshape(-1, idx.numel())[:, _inverse(idx)].reshape(g, n).t().contiguous()


def pack_marlin_zero_points(zero_point: torch.Tensor) -> torch.Tensor:
    """Integer zero points ``[N, G]`` (values 0..15) -> Marlin int32 ``[G, N / 8]``."""
    if zero_point.ndim != 2:
        raise ValueError(f"zero_point must be [N, K // group_size], got {tuple(zero_point.shape)}")
    n, g = zero_point.shape
    if n % MARLIN_N_CHUNK:
        raise ValueError(f"Marlin zero points need N % {MARLIN_N_CHUNK} == 0, got N={n}")
    z = zero_point.t().to(torch.int64)
    z = z.reshape(-1, MARLIN_N_CHUNK)[:, _index(_scale_perm(), z.device)]
    z = z.reshape(-1, _PACK)[:, _index(_INTERLEAVE, z.device)]
    return _pack_cols(z.reshape(g, n))


def unpack_marlin_zero_points(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_marlin_zero_points``: int32 ``[G, N / 8]`` -> uint8 ``[N, G]``."""
    g = packed.shape[0]
    z = _unpack_cols(packed)  # [G, N]
    n = z.shape[1]
    z = z.reshape(-1, _PACK)[:, _inverse(_index(_INTERLEAVE, z.device))]
    z = z.reshape(-1, MARLIN_N_CHUNK)[:, _inverse(_index(_scale_perm(), z.device))]
    return z.reshape(g, n).t().contiguous()
