"""Groupwise int4 weights packed for the x86 CPU int8-activation kernel (DA8W4).

Activations are quantized per token to 8 bits at run time (inside the op) and the
product is an integer dot product; see ``lowbit/csrc/da8w4_cpu.cpp`` for the numerics
and the instruction sets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedError
from ..ops.library import kernel
from ..ops.reference import dequantize_int4_int_zp
from ..packing.int4_vnni import VNNI_BLOCK_N, VNNI_OCTET, pack_vnni_int4, unpack_vnni_int4
from .base import LowbitTensor, UnsupportedOpError, device_type_reason, linear_args, slice_args
from .int4_common import check_int4_codes, check_int4_weight, quantize_int4, slice_codes

aten = torch.ops.aten

__all__ = ["Int4VnniCpuTensor", "ACT_MAPPINGS"]

ACT_MAPPINGS = ("asymmetric", "symmetric")

_GROUP_MULTIPLE = 16  # the AVX2 loop consumes 16 k per step
# Largest group: a group's integer sum of (a - za)(q - z) stays below 2^24 (exact in the
# float32 reference) for 4096 * 255 * 15.
_MAX_GROUP = 4096
_ACT_DTYPES = (torch.float32, torch.bfloat16)
# float16 weights are refused: the kernel takes float32/bfloat16 activations only, so an
# fp16 model could be quantized but never run.
_WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


def _shape_reason(n: int, k: int, group_size: int) -> str | None:
    if group_size <= 0 or group_size % _GROUP_MULTIPLE or group_size > _MAX_GROUP:
        return f"needs group_size a multiple of {_GROUP_MULTIPLE} in [16, {_MAX_GROUP}], got {group_size}"
    if n == 0 or k == 0:
        return f"needs a non-empty weight, got [{n}, {k}]"
    if k % group_size:
        return f"needs in_features K % group_size == 0, got K={k}, group_size={group_size}"
    if n % VNNI_BLOCK_N:
        return f"needs out_features N % {VNNI_BLOCK_N} == 0, got N={n}"
    return None


class Int4VnniCpuTensor(LowbitTensor):
    """Groupwise asymmetric int4 weight for int8 dynamic activation x int4 weight on x86 CPUs.

    Stored tensors (layout arithmetic: ``pack_vnni_int4`` and lowbit/csrc/da8w4_cpu.cpp):

    qdata       uint8   [N/16, K/8, 64]           int4 codes 0..15, two per byte: per 16-column
                                                  block and k-octet, byte 4c + j holds column c,
                                                  k = j (low nibble) and k = 4 + j (high nibble)
    scale       float32 [N/16, K/group_size, 16]  per-group scale, 16 columns contiguous
    zero_point  uint8   [N/16, K/group_size, 16]  per-group integer zero point 0..15
    qsum        int32   [N/16, K/group_size, 16]  sum_k codes - group_size * zero_point
                                                  (compensation for the activation zero point)

    All four are read by ``lowbit::da8w4_linear``, whose CPU kernel is the C++ extension
    (built on first use): AVX512-VNNI ``vpdpbusd`` where the CPU has it (untested in CI:
    no AVX512 machine), else AVX2 ``vpmaddubsw``/``vpmaddwd``, else scalar C++; AMX is not
    implemented. Without a compiler the pure-PyTorch reference runs, with a warning.
    ``w ~ (code - zero_point) * scale``; ``act_mapping`` says how activations are quantized
    per token at run time: ``"asymmetric"`` (uint8 with a zero point) or ``"symmetric"``
    (int8 in [-127, 127]).

    Requires: CPU (x86-64 for the fast kernels), float32 or bfloat16 activations,
    N % 16 == 0, K % group_size == 0, group_size a multiple of 16.
    Activations holding NaN/Inf give NaN for their output rows; an empty batch (M = 0)
    gives an empty output; float16 activations raise TypeError.
    """

    data_fields = ("qdata", "scale", "zero_point", "qsum")
    meta_fields = ("group_size", "act_mapping")
    format_name = "int4_vnni_cpu"
    format_version = 1

    @classmethod
    def supports(cls, weight, device=None, group_size: int = 128):
        if weight.ndim != 2:
            return f"needs a 2-D weight, got {weight.ndim}-D"
        if weight.dtype not in _WEIGHT_DTYPES:
            return (
                f"needs a float32 or bfloat16 weight (its kernel takes float32/bfloat16 activations), "
                f"got {weight.dtype}; convert the model with model.to(torch.bfloat16) first"
            )
        reason = device_type_reason(weight, device, "cpu", "CPU (x86 integer kernels)")
        return reason or _shape_reason(weight.shape[0], weight.shape[1], group_size)

    @classmethod
    def from_float(
        cls, w: torch.Tensor, group_size: int = 128, act_mapping: str = "asymmetric"
    ) -> Int4VnniCpuTensor:
        """Quantize a float [N, K] weight groupwise (asymmetric, int zero point) to int4 and pack it."""
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            check_int4_weight(w, group_size, cls.__name__ + ".from_float", None)
        if act_mapping not in ACT_MAPPINGS:
            raise ValueError(f"act_mapping must be one of {ACT_MAPPINGS}, got {act_mapping!r}")
        reason = cls.supports(w, w.device, group_size)
        if reason is not None:
            raise UnsupportedError(f"{cls.__name__} {reason}")
        codes, scale, zp = quantize_int4(w, group_size, "int", "minmax", torch.float32, None)
        return cls.from_codes(codes, scale, zp, group_size, act_mapping, dtype=w.dtype)

    @classmethod
    def from_codes(cls, codes, scale, zero_point, group_size, act_mapping="asymmetric", dtype=torch.bfloat16):
        """Pack already-quantized codes [N, K] (0..15) with scale/zero point [N, K // group_size]."""
        n, k = codes.shape
        reason = _shape_reason(n, k, group_size)
        if reason is not None:
            raise UnsupportedError(f"{cls.__name__} {reason}")
        check_int4_codes(cls.__name__, codes, scale, zero_point, group_size, (n, k), "int", None)
        qdata, s, z, qsum = pack_vnni_int4(codes, scale, zero_point)
        return cls(qdata, s, z, qsum, group_size=group_size, act_mapping=act_mapping, shape=(n, k), dtype=dtype)

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes uint8 [N, K], scale float32 [N, G], zero_point int32 [N, G])``, exactly as packed."""
        return unpack_vnni_int4(self.qdata, self.scale, self.zero_point)

    def dequantize(self, dtype=None):
        codes, s, z = self.unpack()
        return dequantize_int4_int_zp(codes, s, z, self.group_size).to(dtype or self.dtype)

    def _to_device(self, device: torch.device) -> Int4VnniCpuTensor:
        if device.type != "cpu":
            raise UnsupportedError(
                f"{type(self).__name__} is a CPU-only layout (x86 integer kernels); it cannot move to "
                f"{device}. Quantize the float weight for that device instead (e.g. an int4 CUDA format)."
            )
        return self._replace(lambda t: t.to(device))


@Int4VnniCpuTensor.implements(torch.Tensor.to, torch.Tensor.cuda)
def _to(func, types, args, kwargs):
    # Checked before dispatch: torch initializes CUDA while parsing `.to("cuda")`, which
    # would fail with a generic error on CPU-only builds instead of our named one.
    self = args[0]
    if func is torch.Tensor.cuda:
        device = torch.device("cuda")
    else:
        device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
    if device is not None and torch.device(device).type != "cpu":
        self._to_device(torch.device(device))  # raises UnsupportedError
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


@Int4VnniCpuTensor.implements(F.linear, aten.linear.default)
def _linear(func, types, args, kwargs):
    x, w, bias = linear_args(args, kwargs)
    if x.dtype not in _ACT_DTYPES:
        raise TypeError(
            f"{type(w).__name__} linear needs float32 or bfloat16 activations, got {x.dtype}; "
            "cast the input (and model) to bfloat16 or float32"
        )
    # Sizes and device from the plain stored tensors: each attribute read on the wrapper
    # itself goes through __torch_function__ (~3 us each, visible at M = 1).
    qdata = w.qdata
    n, k = qdata.shape[0] * VNNI_BLOCK_N, qdata.shape[1] * VNNI_OCTET
    if x.ndim == 0 or x.shape[-1] != k:
        raise ValueError(
            f"linear input has {x.shape[-1] if x.ndim else 0} features but the weight expects {k} "
            f"(weight shape {(n, k)})"
        )
    if x.device != qdata.device:
        raise ValueError(f"input is on {x.device} but the weight is on {qdata.device}; move one of them")
    x2 = x if x.ndim == 2 else x.reshape(-1, k)
    y = kernel(torch.ops.lowbit.da8w4_linear, x.device.type)(
        x2.contiguous(), qdata, w.scale, w.zero_point, w.qsum, w.group_size, w.act_mapping
    )
    if x.ndim != 2:
        y = y.reshape(*x.shape[:-1], n)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


@Int4VnniCpuTensor.implements(aten.slice.Tensor)
def _slice(func, types, args, kwargs):
    # Unpack, cut, repack: rows at multiples of 16 (a block), columns at group boundaries.
    w, dim, start, end, step = slice_args(args, kwargs)
    codes, s, z = slice_codes(*w.unpack(), w.group_size, dim, start, end, step, w, row_multiple=VNNI_BLOCK_N)
    if codes.numel() == 0:
        raise UnsupportedOpError(f"{type(w).__name__} cannot hold an empty slice of dim {dim % 2}")
    return type(w).from_codes(codes, s, z, w.group_size, w.act_mapping, dtype=w.dtype)
