"""Groupwise int4 weights (float zero point) for ATen's CPU tinygemm kernel.

Kernel dispatch (``lowbit::int4_tinygemm_cpu_linear``, ops/cpu.py), same numerics on
every path: small batches run lowbit's GEMV (lowbit/csrc/int4_tinygemm_gemv.cpp: an
AVX2, AVX512F or AVX512-BF16 inner loop per CPU class, ops/cpu_paths.py INT4_GEMV_LOOP)
when lowbit's C++ extension is built; otherwise, and up to
``CPU_INT4_TINYGEMM_MAX_M`` rows, ``aten._weight_int4pack_mm_for_cpu`` (tinygemm);
above that the weight is dequantized into a GEMM, in fp32 on CPUs without native bf16
(``_gemm_dtype``), because tinygemm's unpacking per 4-row block stops paying once the
product is compute-bound.

Measurements behind the threshold are next to ``CPU_INT4_TINYGEMM_MAX_M`` in ops/cpu.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedError
from ..ops.library import kernel
from ..ops.reference import dequantize_int4_float_zp
from ..packing.int4 import TINYGEMM_CPU_N_ALIGN, tinygemm_cpu_layout, unpack_tinygemm_cpu
from .base import (
    LowbitTensor,
    UnsupportedOpError,
    check_linear_input,
    device_type_reason,
    linear_args,
    register_mm_as_linear,
    slice_args,
)
from .int4_common import (
    INT4_GROUP_SIZES,
    Int4Packing,
    PortableInt4Mixin,
    check_int4_codes,
    int4_weight_reason,
    quantize_int4,
    scale_dtype_for,
    slice_codes,
)

aten = torch.ops.aten

__all__ = ["Int4TinygemmCpuTensor"]


class Int4TinygemmCpuTensor(PortableInt4Mixin, LowbitTensor):
    """Groupwise asymmetric uint4 weight, float zero point, packed for CPU tinygemm.

    qdata           uint8 [Np, K // 2]             ATen ``_convert_weight_to_int4pack_for_cpu``
                                                   layout (lowbit/packing/int4.py), read by
                                                   ``aten._weight_int4pack_mm_for_cpu``
    scale_and_zero  bf16  [K // group_size, Np, 2]  [..., 0] scale, [..., 1] float zero:
                                                   ``x = (q - 8) * scale + zero`` (bf16: the
                                                   dtype ATen's vectorized kernel reads)

    ``Np`` is N rounded up to a multiple of 16 (ATen's packer needs it); padded rows have
    code 0 and scale = zero = 0 and are cut from the output.

    Meta: ``group_size`` (32/64/128/256), ``cpu_layout`` (the byte order ATen used:
    "avx512", "avx2" or "pairs32", which depends on the CPU capability; the kernel refuses
    a tensor packed for another one, and ``from_checkpoint(cpu)`` repacks it),
    ``transposed`` (True after ``.t()``; only ``mm(x, w.t())`` accepts that form).

    Requires: CPU; K % group_size == 0; float32/float16/bfloat16 activations. ATen's
    kernel is vectorized for bf16 only, so up to ``CPU_INT4_TINYGEMM_MAX_M`` rows fp16/fp32
    activations are rounded to bf16 for it (and the output cast back); above, the GEMM
    path computes in fp32.
    """

    data_fields = ("qdata", "scale_and_zero")
    meta_fields = ("group_size", "cpu_layout", "transposed")
    format_name = "int4_tinygemm_cpu"
    format_version = 1
    int4_packing = Int4Packing.TINYGEMM_CPU
    zero_point_kind = "float"
    kernel_device = "cpu"
    scale_dtypes = (torch.bfloat16,)  # what ATen's vectorized kernel reads
    int4_auto = True

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128):
        reason = device_type_reason(weight, device, "cpu", "CPU") or int4_weight_reason(
            weight, k_multiple=min(INT4_GROUP_SIZES)
        )
        if reason:
            return reason
        if tinygemm_cpu_layout() is None:
            return (
                f"this torch {torch.__version__} packs int4 CPU weights in a layout lowbit does not "
                "know, so they could not be unpacked exactly; use Int4Packing.PLAIN for storage"
            )
        return None

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 128, qparams: str = "minmax") -> Int4TinygemmCpuTensor:
        """Quantize a float [N, K] CPU weight (asymmetric uint4 per group, float zero point)."""
        codes, scale, zero = quantize_int4(w, group_size, "float", qparams, scale_dtype_for(cls, w.dtype))
        return cls.from_codes(codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype)

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype) -> Int4TinygemmCpuTensor:
        """Pack uint8 codes [N, K] (0..15) with float scale/zero [N, K // group_size].

        Scale and zero are stored in bf16 (exact if they are bf16 already, as
        ``from_float`` and ``quantize_int4(..., scale_dtype=torch.bfloat16)`` make them).
        """
        check_int4_codes(cls.__name__, codes, scale, zero_point, group_size, shape, "float")
        if codes.device.type != "cpu":
            raise UnsupportedError(f"{cls.__name__} packs CPU tensors, got codes on {codes.device}")
        layout = tinygemm_cpu_layout()
        if layout is None:
            raise UnsupportedError(cls.supports(torch.empty(0, 32), "cpu"))
        n, k = codes.shape
        n_pad = -(-n // TINYGEMM_CPU_N_ALIGN) * TINYGEMM_CPU_N_ALIGN
        sz = torch.stack((scale, zero_point), dim=-1).to(torch.bfloat16).transpose(0, 1)  # [K/g, N, 2]
        if n_pad != n:
            codes = F.pad(codes, (0, 0, 0, n_pad - n))
            sz = F.pad(sz, (0, 0, 0, n_pad - n))
        qdata = aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        return cls(qdata, sz.contiguous(), group_size=group_size, cpu_layout=layout, transposed=False,
                   shape=(n, k), dtype=dtype)

    def _logical(self) -> tuple[int, int]:
        n, k = self.shape
        return (k, n) if self.transposed else (n, k)

    def to_codes(self):
        """(codes uint8 [N, K], scale [N, K // g], zero [N, K // g]): exact inverse of from_codes."""
        if self.transposed:
            raise UnsupportedOpError(f"{type(self).__name__}.to_codes needs the untransposed tensor; call .t() first")
        n = self.shape[0]
        codes = unpack_tinygemm_cpu(self.qdata, self.cpu_layout)[:n]
        sz = self.scale_and_zero[:, :n]
        return codes, sz[..., 0].t().contiguous(), sz[..., 1].t().contiguous()

    def dequantize(self, dtype=None):
        w = self.t() if self.transposed else self
        codes, scale, zero = w.to_codes()
        d = dequantize_int4_float_zp(codes, scale, zero, self.group_size).to(dtype or self.dtype)
        return d.t() if self.transposed else d

    def from_checkpoint(self, device):
        device = torch.device(device)
        if device.type == "cpu" and self.device.type == "cpu" and self.cpu_layout == tinygemm_cpu_layout():
            return self
        return self.to_checkpoint().from_checkpoint(device)

    def _is_row_layout(self) -> bool:
        return not self.transposed

    def _to_device(self, device: torch.device) -> LowbitTensor:
        # The packed layout is CPU-specific: go through the portable codes and let the
        # device's int4 format repack them (or raise UnsupportedError naming why it cannot).
        return self.to_checkpoint().from_checkpoint(device)


@Int4TinygemmCpuTensor.implements(F.linear, aten.linear.default)
def _linear(func, types, args, kwargs):
    x, w, bias = linear_args(args, kwargs)
    if w.transposed:
        raise UnsupportedOpError("F.linear needs the untransposed Int4TinygemmCpuTensor; call .t() again")
    check_linear_input(x, w)
    if w._lb_device.type != "cpu":  # e.g. a pickled CPU blob loaded with map_location="cuda"
        raise UnsupportedError(
            f"Int4TinygemmCpuTensor holds a CPU-only packing but lives on {w.device}; repack it for that "
            f"device with w.from_checkpoint(torch.device({str(w.device)!r}))"
        )
    if w.cpu_layout != tinygemm_cpu_layout():
        raise UnsupportedError(
            f"this int4 weight was packed for the {w.cpu_layout!r} CPU layout but this process's ATen uses "
            f"{tinygemm_cpu_layout()!r} (another CPU or ATEN_CPU_CAPABILITY); repack it exactly with "
            "w.from_checkpoint(torch.device('cpu')), or save/load through lowbit.save_file/load_file"
        )
    n, k = w._lb_shape  # plain copy of w.shape (a subclass property read costs per call)
    x2 = x.reshape(-1, k)
    if x2.shape[0] == 0:  # an empty batch: the C++ GEMV refuses M = 0
        y = x.new_empty((*x.shape[:-1], n))
    else:
        mm = kernel(torch.ops.lowbit.int4_tinygemm_cpu_linear, x.device.type)
        y = mm(x2, w.qdata, w.scale_and_zero, w.group_size, n, w.cpu_layout).reshape(*x.shape[:-1], n)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


@Int4TinygemmCpuTensor.implements(aten.t.default)
def _t(func, types, args, kwargs):
    w = args[0]
    return w._replace(transposed=not w.transposed, shape=(w.shape[1], w.shape[0]))


@Int4TinygemmCpuTensor.implements(aten.slice.Tensor)
def _slice(func, types, args, kwargs):
    # Unpack, slice the codes, repack: exact, and independent of the packed block order.
    w, dim, start, end, step = slice_args(args, kwargs)
    base = w.t() if w.transposed else w
    if w.transposed:
        dim = 1 - dim % 2
    codes, scale, zero = slice_codes(*base.to_codes(), w.group_size, dim, start, end, step, w)
    out = type(w).from_codes(codes, scale, zero, group_size=w.group_size, shape=codes.shape, dtype=w.dtype)
    return out.t() if w.transposed else out


register_mm_as_linear(Int4TinygemmCpuTensor)
