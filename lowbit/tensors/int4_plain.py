"""Canonical (portable) groupwise int4: the checkpoint form of every int4 format.

Also home of ``quantize_int4``, the one place int4 codes and qparams are chosen, so every
int4 format (CPU tinygemm, CUDA tiled, Marlin, XPU) quantizes a weight identically and
differs only in how it packs the codes (``from_codes``/``to_codes``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import primitives as P
from ..packing.int4 import pack_int4_nibbles, unpack_int4_nibbles
from .base import LowbitTensor, UnsupportedOpError, slice_args

aten = torch.ops.aten

__all__ = [
    "Int4PlainTensor",
    "quantize_int4",
    "int_to_float_zero_point",
    "slice_codes",
    "check_int4_codes",
    "INT4_GROUP_SIZES",
    "INT4_QMIN",
    "INT4_QMAX",
]

INT4_QMIN, INT4_QMAX = 0, 15  # uint4 codes; the FLOAT zero point is centred on code 8
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what every int4 kernel we target accepts

# Smallest scale: 2^-20 is a normal number in bf16 and fp32 and representable in fp16
# (subnormal), so a stored scale is never 0. Groups narrower than 15 * 2^-20 lose nothing.
_MIN_SCALE = 2.0**-20

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_weight(w, group_size: int, fn: str) -> None:
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{fn} needs a 2-D [out_features, in_features] weight, got {got}")
    if w.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{fn} needs a float32/float16/bfloat16 weight, got {w.dtype}")
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"{fn}: group_size must be one of {INT4_GROUP_SIZES}, got {group_size!r}")
    if w.shape[1] % group_size:
        raise ValueError(
            f"{fn}: group_size={group_size} does not divide in_features K={w.shape[1]}; use a group "
            f"size that divides K (Int4WeightOnlyConfig picks one for you and logs it)"
        )


def quantize_int4(
    w: torch.Tensor,
    group_size: int,
    zero_point_kind: P.ZeroPointKind | str,
    qparams: str = "minmax",
    scale_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric groupwise uint4 codes and qparams of a float [N, K] weight.

    Args:
        w: float weight [N, K]; K % group_size == 0.
        group_size: 32, 64, 128 or 256 consecutive input features share one scale/zero.
        zero_point_kind: ``"float"``: ``x = (q - 8) * scale + zero`` (tinygemm/HQQ);
            ``"int"``: ``x = (q - zero) * scale`` with integer zero in [0, 15] (GPTQ/AWQ).
        qparams: ``"minmax"`` (group min/max) or ``"hqq"`` (lowbit.hqq optimizer).
        scale_dtype: dtype scales (and float zeros) are stored in; default ``w.dtype``.

    Returns:
        ``(codes, scale, zero_point)``: uint8 [N, K] in 0..15, scale [N, K // g] in
        ``scale_dtype``, zero point [N, K // g] (``scale_dtype`` for float, int32 for int).
        The codes are the nearest codes under the *stored* (rounded) qparams.
    """
    kind = P._enum(P.ZeroPointKind, zero_point_kind, "zero_point_kind")
    if kind is P.ZeroPointKind.NONE:
        raise ValueError("int4 weights are asymmetric: zero_point_kind must be 'float' or 'int', got 'none'")
    _check_weight(w, group_size, "quantize_int4")
    P._check_float_input(w, "weight")
    scale_dtype = scale_dtype or w.dtype
    block = (1, group_size)
    if qparams == "minmax":
        # Int zero points keep 0.0 exact (GPTQ/AWQ convention: range includes 0, zero in
        # [0, 15]); float zero points use the group's own [min, max].
        scale, zero = P._choose_qparams_affine(
            w, P.MappingType.ASYMMETRIC, block, INT4_QMIN, INT4_QMAX, _MIN_SCALE, torch.float32,
            None, kind is P.ZeroPointKind.INT, kind,
        )
    elif qparams == "hqq":
        from ..hqq import hqq_int4_qparams

        scale, zero = hqq_int4_qparams(w, group_size, kind)
    else:
        raise ValueError(f"qparams must be 'minmax' or 'hqq', got {qparams!r}")
    scale = scale.clamp(min=_MIN_SCALE).to(scale_dtype)
    zero = zero.to(torch.int32) if kind is P.ZeroPointKind.INT else zero.to(scale_dtype)
    codes = P._quantize_affine(w, block, scale, zero, torch.uint8, INT4_QMIN, INT4_QMAX, kind)
    return codes, scale, zero


def int_to_float_zero_point(scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Float zero point equal to an int one: (q - z) s = (q - 8) s + (8 - z) s.

    Computed in float32 and rounded to ``scale.dtype``: exact in fp32; in bf16/fp16 the
    rounding moves a dequantized value by at most 8 * s * 2^-9 (bf16), 1/64 of a step.
    """
    mid = (INT4_QMIN + INT4_QMAX + 1) // 2
    return ((mid - zero_point.to(torch.float32)) * scale.to(torch.float32)).to(scale.dtype)


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

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128):
        if weight.ndim != 2:
            return f"needs a 2-D weight, got {weight.ndim}-D"
        if weight.dtype not in _FLOAT_DTYPES:
            return f"needs a float32/float16/bfloat16 weight, got {weight.dtype}"
        if weight.shape[1] % min(INT4_GROUP_SIZES):
            return f"needs in_features K % {min(INT4_GROUP_SIZES)} == 0, got K={weight.shape[1]}"
        return None

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
        kind = P._enum(P.ZeroPointKind, zero_point_kind, "zero_point_kind")
        check_int4_codes(codes, scale, zero_point, group_size, shape, cls.__name__)
        if zero_point.dtype.is_floating_point != (kind is P.ZeroPointKind.FLOAT):
            raise ValueError(
                f"{cls.__name__}: zero_point_kind={kind.value!r} needs a "
                f"{'float' if kind is P.ZeroPointKind.FLOAT else 'integer'} zero_point, got {zero_point.dtype}"
            )
        return cls(pack_int4_nibbles(codes), scale, zero_point, group_size=group_size,
                   zero_point_kind=kind.value, shape=shape, dtype=dtype)

    def to_codes(self):
        """(codes uint8 [N, K], scale, zero_point), exactly as stored."""
        return unpack_int4_nibbles(self.qdata), self.scale, self.zero_point

    def dequantize(self, dtype=None):
        codes = unpack_int4_nibbles(self.qdata)
        kind = P.ZeroPointKind(self.zero_point_kind)
        return P._dequantize_affine(codes, (1, self.group_size), self.scale, self.zero_point,
                                    INT4_QMIN, INT4_QMAX, kind, dtype or self.dtype)

    def to_checkpoint(self):
        return self

    def from_checkpoint(self, device: torch.device) -> LowbitTensor:
        """Repack for ``device``'s int4 format (``int4_class_for(device.type, kind, "auto")``)."""
        from ..configs.int4 import Int4Packing, int4_class_for, int4_from_codes

        device = torch.device(device)
        kind = P.ZeroPointKind(self.zero_point_kind)
        cls = int4_class_for(device.type, kind, Int4Packing.AUTO)
        if cls is Int4PlainTensor:
            return self if device == self.device else self._replace(lambda t: t.to(device))
        codes, scale, zero = self.to_codes()
        return int4_from_codes(cls, codes.to(device), scale.to(device), zero.to(device), kind,
                               group_size=self.group_size, shape=tuple(self.shape), dtype=self.dtype)


def check_int4_codes(codes, scale, zero_point, group_size, shape, name) -> None:
    """Validate ``from_codes`` arguments (the codes interface every int4 format shares)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"{name}.from_codes needs a 2-D shape (N, K), got {shape}")
    n, k = shape
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or tuple(codes.shape) != shape:
        got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"{name}.from_codes needs uint8 codes of shape {shape} (values 0..15), got {got}")
    if group_size not in INT4_GROUP_SIZES or k % group_size:
        raise ValueError(
            f"{name}.from_codes: group_size must be one of {INT4_GROUP_SIZES} and divide K={k}, got {group_size}"
        )
    want = (n, k // group_size)
    for nm, t in (("scale", scale), ("zero_point", zero_point)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}.from_codes needs {nm} of shape {want} (N, K // group_size), got {got}")
    if not scale.dtype.is_floating_point:
        raise ValueError(f"{name}.from_codes needs a float scale, got {scale.dtype}")
    if codes.numel() and int(codes.max()) > INT4_QMAX:
        raise ValueError(f"{name}.from_codes needs codes in 0..15, got a maximum of {int(codes.max())}")


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


def slice_codes(codes, scale, zero, group_size, dim, start, end, step, w):
    """Slice unpacked codes and their qparams (``aten.slice`` semantics); slices of K
    must start and end on group boundaries. Returns ``(codes, scale, zero)``."""
    if step != 1:
        raise UnsupportedOpError(f"{type(w).__name__} slicing needs step 1, got {step}")
    dim = dim % 2
    size = codes.shape[dim]
    start = 0 if start is None else (start + size if start < 0 else start)
    end = size if end is None else min(end + size if end < 0 else end, size)
    start = max(0, min(start, size))
    end = max(start, end)
    if dim == 1 and (start % group_size or end % group_size):
        raise UnsupportedOpError(
            f"{type(w).__name__} can slice in_features only at multiples of group_size={group_size}, "
            f"got [{start}, {end}); pick boundaries that are multiples of {group_size}"
        )
    codes = codes.narrow(dim, start, end - start).contiguous()
    if dim == 0:
        scale, zero = scale[start:end].contiguous(), zero[start:end].contiguous()
    else:
        g0, g1 = start // group_size, end // group_size
        scale, zero = scale[:, g0:g1].contiguous(), zero[:, g0:g1].contiguous()
    return codes, scale, zero


class PortableInt4Mixin:
    """Checkpoint and device moves for the device-specific int4 layouts.

    A class using it declares ``zero_point_kind`` ("float" or "int", what its kernel
    applies) and has ``to_codes``. It saves as ``Int4PlainTensor`` (loads on any device)
    and moves by repacking for the target device's int4 format, so ``model.to(device)``
    never carries a layout to a device whose kernel cannot read it.
    """

    zero_point_kind: str
    kernel_device: str  # device type whose kernel reads this layout ("cuda", "xpu")

    def to_checkpoint(self) -> Int4PlainTensor:
        codes, scale, zero = self.to_codes()
        return Int4PlainTensor.from_codes(codes, scale, zero, group_size=self.group_size, shape=tuple(self.shape),
                                          dtype=self.dtype, zero_point_kind=self.zero_point_kind)

    def dequantize(self, dtype=None):
        from ..ops.reference import dequantize_int4_float_zp, dequantize_int4_int_zp

        fn = dequantize_int4_float_zp if self.zero_point_kind == "float" else dequantize_int4_int_zp
        codes, scale, zero = self.to_codes()
        return fn(codes, scale, zero, self.group_size).to(dtype or self.dtype)

    def _to_device(self, device: torch.device) -> LowbitTensor:
        # The packed bytes are device-independent: onto its kernel's device the layout the
        # user chose stays as it is; anywhere else (e.g. Marlin off CUDA) the codes are
        # repacked for that device's own int4 format, so no layout runs without its kernel.
        if device.type == self.kernel_device:
            return self._replace(lambda t: t.to(device))
        return self.to_checkpoint().from_checkpoint(device)
