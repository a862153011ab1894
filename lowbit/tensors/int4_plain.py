"""Canonical (portable) groupwise int4: the checkpoint form of every int4 format."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.reference import dequantize_int4_float_zp, dequantize_int4_int_zp
from ..packing.int4 import pack_int4_nibbles, unpack_int4_nibbles
from ..primitives import ZeroPointKind, _enum
from .base import FLOAT_DTYPES, LowbitTensor, UnsupportedOpError, slice_args
from .int4_common import (
    INT4_GROUP_SIZES,
    Int4Packing,
    check_int4_codes,
    int4_class_for,
    int4_from_codes,
    int4_weight_reason,
    quantize_int4,
    slice_codes,
)

aten = torch.ops.aten

__all__ = ["Int4PlainTensor"]


class Int4PlainTensor(LowbitTensor):
    """Portable groupwise int4 weight: what every int4 format writes to a checkpoint.

    qdata       uint8 [N, K // 2]           two codes per byte; byte j of a row holds code
                                            2j in its low nibble, 2j + 1 in its high nibble
                                            (``lowbit.packing.pack_int4_nibbles``)
    scale       float [N, K // group_size]  the weight's float dtype (bf16/fp16/fp32)
    zero_point  [N, K // group_size]        float (``zero_point_kind="float"``:
                                            ``x = (q - 8) * scale + zero``) or int32
                                            (``"int"``: ``x = (q - zero) * scale``)

    Meta: ``group_size``, ``zero_point_kind`` (``"float"`` or ``"int"``, recorded so a
    loader knows which formula the codes follow).

    This is a storage format: it has no kernel and ``F.linear`` on it raises. Loading
    (``lowbit.load_file``/``load_into``) calls ``from_checkpoint(device)``, which repacks
    the codes for that device's int4 format (``lowbit.configs.int4.int4_class_for``) or
    raises ``UnsupportedError`` saying why none can run there. Any device can hold it.
    """

    data_fields = ("qdata", "scale", "zero_point")
    meta_fields = ("group_size", "zero_point_kind")
    format_name = "int4_plain"
    format_version = 1
    int4_packing = Int4Packing.PLAIN
    kernel_device = None  # storage only: any device holds it, none runs it
    scale_dtypes = FLOAT_DTYPES  # keeps the weight's dtype
    int4_auto = False
    # zero_point_kind is a meta field (stores either kind); the class-level None says so.
    zero_point_kind = None

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128):
        return int4_weight_reason(weight, k_multiple=min(INT4_GROUP_SIZES))

    @classmethod
    def from_float(cls, w, group_size: int = 128, zero_point_kind="float", qparams: str = "minmax"):
        """Quantize a float [N, K] weight (see ``quantize_int4``)."""
        codes, scale, zero = quantize_int4(w, group_size, zero_point_kind, qparams)
        return cls.from_codes(codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype,
                              zero_point_kind=zero_point_kind)

    @classmethod
    def from_codes(cls, codes, scale, zero_point, *, group_size, shape, dtype, zero_point_kind=None):
        """Pack unpacked codes; ``zero_point_kind`` defaults to "int" for integer zero points."""
        if zero_point_kind is None:
            zero_point_kind = "float" if zero_point.dtype.is_floating_point else "int"
        kind = _enum(ZeroPointKind, zero_point_kind, "zero_point_kind")
        check_int4_codes(cls.__name__, codes, scale, zero_point, group_size, shape)
        if zero_point.dtype.is_floating_point != (kind is ZeroPointKind.FLOAT):
            raise ValueError(
                f"{cls.__name__}: zero_point_kind={kind.value!r} needs a "
                f"{'float' if kind is ZeroPointKind.FLOAT else 'integer'} zero_point, got {zero_point.dtype}"
            )
        return cls(pack_int4_nibbles(codes), scale, zero_point, group_size=group_size,
                   zero_point_kind=kind.value, shape=shape, dtype=dtype)

    def to_codes(self):
        """(codes uint8 [N, K], scale, zero_point), exactly as stored."""
        return unpack_int4_nibbles(self.qdata), self.scale, self.zero_point

    def dequantize(self, dtype=None):
        fn = dequantize_int4_float_zp if self.zero_point_kind == "float" else dequantize_int4_int_zp
        return fn(unpack_int4_nibbles(self.qdata), self.scale, self.zero_point, self.group_size).to(dtype or self.dtype)

    def to_checkpoint(self):
        return self

    def from_checkpoint(self, device: torch.device) -> LowbitTensor:
        """Repack for ``device``'s int4 format (``int4_class_for(device.type, kind, "auto")``)."""
        device = torch.device(device)
        kind = ZeroPointKind(self.zero_point_kind)
        cls = int4_class_for(device.type, kind, Int4Packing.AUTO)
        if cls is Int4PlainTensor:
            return self if device == self.device else self._replace(lambda t: t.to(device))
        codes, scale, zero = self.to_codes()
        return int4_from_codes(cls, codes.to(device), scale.to(device), zero.to(device), kind,
                               group_size=self.group_size, shape=tuple(self.shape), dtype=self.dtype)


@Int4PlainTensor.implements(F.linear, aten.linear.default, aten.mm.default, aten.addmm.default)
def _no_linear(func, types, args, kwargs):
    raise UnsupportedOpError(
        "Int4PlainTensor is the portable checkpoint form of int4 weights and has no kernel; "
        "repack it for a device with t.from_checkpoint(torch.device('cpu')) (lowbit.load_file "
        "and load_into do this for you) or call .dequantize() for a float weight"
    )


@Int4PlainTensor.implements(aten.slice.Tensor)
def _slice(func, types, args, kwargs):
    w, dim, start, end, step = slice_args(args, kwargs)
    codes, scale, zero = slice_codes(*w.to_codes(), w.group_size, dim, start, end, step, w)
    return type(w).from_codes(codes, scale, zero, group_size=w.group_size, shape=codes.shape, dtype=w.dtype,
                              zero_point_kind=w.zero_point_kind)
