"""Plain int32-packed int4 layout of PyTorch's Intel GPU (XPU) int4 kernels, in pure PyTorch.

On XPU, ``aten._convert_weight_to_int4pack(w_uint8 [N, K/2], inner_k_tiles)`` ignores
``inner_k_tiles`` and returns int32 ``[N, K / 8]`` holding the same bytes: each int32 is
four consecutive input bytes, the first byte lowest (torch-xpu-ops
``src/ATen/native/xpu/sycl/WeightInt4PackKernel.cpp``, ``WeightToInt4PackKernelFunctor``).
The kernels read element ``k`` of row ``n`` from byte ``(n K + k) / 2``, even ``k`` in the
*low* nibble (``Dequant_int4.cpp``: ``high4 = k % 2 != 0``; oneDNN's ``u4`` weights in
PyTorch's ``aten/src/ATen/native/mkldnn/xpu/detail/WoQMatmul.cpp`` have the same order).
So the int32 at ``[n, m]`` holds codes ``k = 8m .. 8m + 7`` at bits ``4 (k - 8m)``.

Two kernels read this weight, with different quantization parameters:

* ``aten._weight_int4pack_mm_with_scales_and_zeros(x, w, group_size, scale, zero)``
  (oneDNN, integer zero point): ``x = (q - zero) * scale`` with ``scale [K/gs, N]`` in the
  activation dtype and ``zero [K/gs, N]`` int8.
* ``aten._weight_int4pack_mm(x, w, group_size, scale_and_zero)`` (SYCL, float zero
  point): ``x = (q - 8) * scale + zero`` with the tinygemm ``scale_and_zero [K/gs, N, 2]``
  (``lowbit.packing.int4_tiled.pack_tinygemm_scale_and_zero``).

Neither kernel has been run by lowbit's authors (no Intel GPU was available); the layout
above is read from the sources named and the round trip is tested on CPU.
"""

from __future__ import annotations

import torch

__all__ = [
    "pack_int4_xpu",
    "unpack_int4_xpu",
    "codes_to_xpu_convert_input",
    "pack_xpu_scale_zero",
    "unpack_xpu_scale_zero",
]

_PACK = 8  # int4 values per int32


def pack_int4_xpu(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned int4 codes ``[N, K]`` (uint8, 0..15) -> int32 ``[N, K / 8]``, code ``8m + i`` at bits ``4i``.

    Equals ``aten._convert_weight_to_int4pack(codes_to_xpu_convert_input(codes), 8)`` on XPU.
    """
    if codes.ndim != 2 or codes.dtype != torch.uint8:
        raise ValueError(f"codes must be a 2-D uint8 tensor [N, K], got {codes.dtype} {tuple(codes.shape)}")
    n, k = codes.shape
    if k % _PACK:
        raise ValueError(f"the XPU int4 layout needs K % {_PACK} == 0, got K={k}")
    shifts = torch.arange(0, 4 * _PACK, 4, device=codes.device, dtype=torch.int64)
    u = (codes.to(torch.int64).reshape(n, k // _PACK, _PACK) << shifts).sum(-1)
    return torch.where(u >= 2**31, u - 2**32, u).to(torch.int32)


def unpack_int4_xpu(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_int4_xpu``: int32 ``[N, K / 8]`` -> uint8 ``[N, K]``."""
    if packed.ndim != 2 or packed.dtype != torch.int32:
        raise ValueError(f"packed must be int32 [N, K / 8], got {packed.dtype} {tuple(packed.shape)}")
    # int32 arithmetic shifts sign-extend, but the 0xF mask keeps exactly the nibble.
    shifts = torch.arange(0, 4 * _PACK, 4, device=packed.device, dtype=torch.int32)
    v = (packed.unsqueeze(-1) >> shifts) & 0xF
    return v.reshape(packed.shape[0], -1).to(torch.uint8)


def codes_to_xpu_convert_input(codes: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K / 2]`` with the even k in the low nibble: what XPU's
    ``aten._convert_weight_to_int4pack`` takes."""
    c = codes.to(torch.uint8)
    return (c[:, ::2] | (c[:, 1::2] << 4)).contiguous()


def pack_xpu_scale_zero(scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, G]`` scale and integer zero point -> ``[G, N]`` scale and int8 ``[G, N]`` zero point."""
    if scale.ndim != 2 or scale.shape != zero_point.shape:
        raise ValueError(
            f"scale and zero_point must both be [N, K // group_size], got {tuple(scale.shape)} "
            f"and {tuple(zero_point.shape)}"
        )
    return scale.t().contiguous(), zero_point.t().to(torch.int8).contiguous()


def unpack_xpu_scale_zero(scale: torch.Tensor, zero_point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``pack_xpu_scale_zero``: ``[G, N]`` -> ``[N, G]`` (zero point stays int8)."""
    return scale.t().contiguous(), zero_point.t().contiguous()
