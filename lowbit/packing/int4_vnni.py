"""VNNI int4 layout of the DA8W4 CPU kernel (lowbit/csrc/da8w4_cpu.cpp): pack and its exact inverse.

Per 16-column block and k-octet, 64 bytes: byte 4c + j holds column c's code for k = j in
its low nibble and for k = 4 + j in its high nibble, so one 32-bit lane of ``vpdpbusd``
sees four consecutive k of one column (the u8 x s8 quad the instruction multiplies).
"""

from __future__ import annotations

import torch

__all__ = ["VNNI_BLOCK_N", "VNNI_OCTET", "pack_vnni_int4", "unpack_vnni_int4"]

# Layout constants, shared with lowbit/csrc/da8w4_cpu.cpp (kBlockN, kOctet, kBlockBytes).
VNNI_BLOCK_N = 16  # output columns per block: the 16 int32 lanes of one vpdpbusd
_LANE_K = 4  # consecutive k per int32 lane (one u8 x s8 quad)
VNNI_OCTET = 2 * _LANE_K  # k per 64-byte row: low nibbles hold k 0-3, high nibbles k 4-7


def pack_vnni_int4(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack int4 codes [N, K] (uint8, 0..15) with per-group scale/zero point [N, G].

    Returns ``(qdata uint8 [N/16, K/8, 64], scale float32 [N/16, G, 16],
    zero_point uint8 [N/16, G, 16], qsum int32 [N/16, G, 16])`` where
    ``qsum = sum_k codes - group_size * zero_point`` per group, the compensation term the
    kernel subtracts once per group (times the activation zero point).
    """
    n, k = codes.shape
    g = scale.shape[1]
    gs = k // g
    # [N, K] -> [N/16, 16 (column c), K/8 (octet o), 2 (nibble), 4 (j)]
    q = codes.to(torch.uint8).reshape(n // VNNI_BLOCK_N, VNNI_BLOCK_N, k // VNNI_OCTET, 2, _LANE_K)
    # Byte (c, j) of octet o: low nibble k = 8o + j, high nibble k = 8o + 4 + j.
    byte = q[:, :, :, 0, :] | (q[:, :, :, 1, :] << 4)
    # [N/16, c, o, j] -> [N/16, o, c, j]: one octet's 64 bytes are 16 columns x 4 bytes.
    qdata = byte.permute(0, 2, 1, 3).reshape(n // VNNI_BLOCK_N, k // VNNI_OCTET, VNNI_BLOCK_N * _LANE_K).contiguous()

    def blocked(t, dtype):
        return t.to(dtype).reshape(n // VNNI_BLOCK_N, VNNI_BLOCK_N, g).permute(0, 2, 1).contiguous()

    zp = zero_point.to(torch.int32)
    qsum = codes.to(torch.int32).reshape(n, g, gs).sum(-1, dtype=torch.int32) - gs * zp
    return qdata, blocked(scale, torch.float32), blocked(zp, torch.uint8), blocked(qsum, torch.int32)


def unpack_vnni_int4(
    qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact inverse of :func:`pack_vnni_int4`: ``(codes uint8 [N, K], scale float32 [N, G],
    zero_point int32 [N, G])``."""
    nb, octets, _ = qdata.shape
    g = scale.shape[1]
    byte = qdata.reshape(nb, octets, VNNI_BLOCK_N, _LANE_K).permute(0, 2, 1, 3)  # [N/16, c, o, j]
    codes = torch.stack((byte & 0x0F, byte >> 4), dim=3)  # [N/16, c, o, nibble, j]
    codes = codes.reshape(nb * VNNI_BLOCK_N, octets * VNNI_OCTET)

    def unblocked(t, dtype):
        return t.permute(0, 2, 1).reshape(nb * VNNI_BLOCK_N, g).to(dtype)

    return codes, unblocked(scale, torch.float32), unblocked(zero_point, torch.int32)
