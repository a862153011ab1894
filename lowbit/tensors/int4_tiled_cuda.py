"""Groupwise int4 weight in the CUDA tensor-core tiled layout (PyTorch's tinygemm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..device_caps import cuda_capability_reason
from ..packing.int4_tiled import (
    INNER_K_TILES,
    K_TILE,
    N_TILE,
    pack_int4_tiled,
    pack_tinygemm_scale_and_zero,
    unpack_int4_tiled,
    unpack_tinygemm_scale_and_zero,
)
from .base import LowbitTensor, device_type_reason, kernel_linear, target_device
from .int4_common import (
    INT4_GROUP_SIZES,
    Int4Packing,
    PortableInt4Mixin,
    check_int4_codes,
    check_int4_weight,
    int4_weight_reason,
    quantize_int4,
    scale_dtype_for,
)

aten = torch.ops.aten

__all__ = ["Int4TiledCudaTensor", "pick_inner_k_tiles"]


def pick_inner_k_tiles(k: int) -> int:
    """The widest per-lane load (inner_k_tiles 8, 4, 2) whose K tile divides ``k``, so
    layers like SmolLM2's (K = 576) pack too; 8 when none does (supports() says why)."""
    return next((t for t in sorted(INNER_K_TILES, reverse=True) if k % (t * K_TILE) == 0), 8)


class Int4TiledCudaTensor(PortableInt4Mixin, LowbitTensor):
    """Groupwise asymmetric int4 weight (float zero point) for CUDA tinygemm.

    qdata          int32 [N / 8, K / (inner_k_tiles * 16), 32, inner_k_tiles / 2]
                   the tensor-core tiled layout of ``aten._convert_weight_to_int4pack``
                   (lowbit/packing/int4_tiled.py), read by ``aten._weight_int4pack_mm``
    scale_and_zero bfloat16 [K / group_size, N, 2]   (scale, zero) per group

    Numerics: ``w = (q - 8) * scale + zero`` with codes ``q`` in 0..15 (the tinygemm /
    HQQ float-zero-point convention, ``ZeroPointKind.FLOAT``).

    Kernel (``lowbit::int4_tiled_cuda_mm``, ops/cuda.py): tinygemm up to
    ``CUDA_INT4_TILED_MAX_M`` batch rows, above that dequantize to bf16 + cuBLAS GEMM.
    Activations are computed in bfloat16 (the kernel's only input dtype); float16 and
    float32 inputs are cast in and the output cast back.

    Requires: CUDA, compute capability >= 8.0, N % 8 == 0, K % (inner_k_tiles * 16) == 0,
    group_size in {32, 64, 128, 256}. The tensor can also live on CPU (to build, save and
    load it); ``F.linear`` there runs the pure-PyTorch reference of the op, which is
    correct but slow, and ``supports`` reports CPU as unsupported.
    """

    int4_packing = Int4Packing.TILED_CUDA
    zero_point_kind = "float"
    kernel_device = "cuda"
    scale_dtypes = (torch.bfloat16,)  # the kernel's dtype
    int4_auto = True
    data_fields = ("qdata", "scale_and_zero")
    meta_fields = ("group_size", "inner_k_tiles")
    format_name = "int4_tiled_cuda"
    format_version = 1

    GROUP_SIZES = INT4_GROUP_SIZES  # what aten._weight_int4pack_mm (CUDA) accepts

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128, inner_k_tiles: int | None = None) -> str | None:
        reason = int4_weight_reason(weight)
        if reason:
            return reason
        n, k = weight.shape
        inner_k_tiles = inner_k_tiles or pick_inner_k_tiles(k)
        if group_size not in cls.GROUP_SIZES:
            return f"needs group_size in {cls.GROUP_SIZES}, got {group_size}"
        if inner_k_tiles not in INNER_K_TILES:
            return f"needs inner_k_tiles in {INNER_K_TILES}, got {inner_k_tiles}"
        if n % N_TILE:
            return f"needs out_features % {N_TILE} == 0, got {n}"
        k_outer = inner_k_tiles * K_TILE
        if k % k_outer or k % group_size:
            return (
                f"needs in_features % {max(k_outer, group_size)} == 0 (inner_k_tiles={inner_k_tiles}, "
                f"group_size={group_size}), got {k}"
            )
        reason = device_type_reason(weight, device, "cuda", "CUDA (tinygemm)", "; on CPU use the CPU tinygemm format")
        return reason or cuda_capability_reason(target_device(weight, device))

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype, inner_k_tiles: int | None = None):
        """Pack unsigned int4 codes ``[N, K]`` with float ``scale``/``zero_point`` ``[N, K // group_size]``.

        scale and zero point are stored as bfloat16 (the kernel's dtype); pass bfloat16 to
        get them back bit-exactly from ``to_codes``.
        """
        check_int4_codes(cls.__name__, codes, scale, zero_point, group_size, shape, "float", cls.GROUP_SIZES)
        inner_k_tiles = inner_k_tiles or pick_inner_k_tiles(shape[1])
        qdata = pack_int4_tiled(codes, inner_k_tiles)
        sz = pack_tinygemm_scale_and_zero(scale.to(torch.bfloat16), zero_point.to(torch.bfloat16))
        return cls(qdata, sz, group_size=group_size, inner_k_tiles=inner_k_tiles, shape=tuple(shape), dtype=dtype)

    def to_codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scale bf16 [N, K // gs], zero_point bf16 [N, K // gs])."""
        scale, zero = unpack_tinygemm_scale_and_zero(self.scale_and_zero)
        return unpack_int4_tiled(self.qdata), scale, zero

    @classmethod
    def from_float(
        cls, w: torch.Tensor, group_size: int = 128, inner_k_tiles: int | None = None, qparams: str = "minmax"
    ) -> Int4TiledCudaTensor:
        """Asymmetric int4 quantization (float zero point) of a float ``[N, K]`` weight, then pack.

        ``inner_k_tiles`` defaults to ``pick_inner_k_tiles(K)``, as on the config path.
        """
        check_int4_weight(w, group_size, cls.__name__ + ".from_float", cls.GROUP_SIZES)
        n, k = w.shape
        inner_k_tiles = inner_k_tiles or pick_inner_k_tiles(k)
        if n % N_TILE or k % (inner_k_tiles * K_TILE):
            raise ValueError(
                f"{cls.__name__} needs N % {N_TILE} == 0 and K % {max(inner_k_tiles * K_TILE, group_size)} == 0 "
                f"(inner_k_tiles={inner_k_tiles}, group_size={group_size}), got N={n}, K={k}"
            )
        codes, scale, zero = quantize_int4(w, group_size, "float", qparams, scale_dtype_for(cls, w.dtype))
        return cls.from_codes(
            codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype, inner_k_tiles=inner_k_tiles
        )


Int4TiledCudaTensor.implements(F.linear, aten.linear.default)(
    kernel_linear("int4_tiled_cuda_mm", "qdata", "scale_and_zero", "group_size")
)
