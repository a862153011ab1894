"""The int4 codec every int4 format shares: quantizer, codes validator, slicing, format table.

Every int4 format (CPU tinygemm, CUDA tiled, Marlin, XPU, the VNNI DA8W4 layout and the
portable ``Int4PlainTensor``) quantizes a weight with ``quantize_int4`` and differs only
in how it packs the codes (``from_codes``/``to_codes``). A format declares what it is:

    int4_packing      Int4Packing value (the config's ``packing=``), None: not a config packing
    kernel_device     device type whose kernel reads the layout (None: storage only)
    zero_point_kind   "float" or "int": the formula its kernel applies (None: stores either)
    scale_dtypes      dtypes its scales are stored in (the weight's if listed, else the last)
    int4_auto         True if ``packing="auto"`` may pick it for its device

and ``int4_class_for`` derives the device -> format table from those attributes over
``format_registry``: nothing restates them.
"""

from __future__ import annotations

import enum

import torch

from .. import primitives as P
from ..errors import UnsupportedError
from ..hqq import hqq_int4_qparams
from ..ops.reference import dequantize_int4_float_zp, dequantize_int4_int_zp
from .base import (
    LowbitTensor,
    UnsupportedOpError,
    check_float_weight,
    device_type_reason,
    float_weight_reason,
    format_registry,
    slice_bounds,
)

__all__ = [
    "INT4_QMIN",
    "INT4_QMAX",
    "INT4_GROUP_SIZES",
    "Int4Packing",
    "PortableInt4Mixin",
    "XpuInt4Layout",
    "check_int4_codes",
    "check_int4_weight",
    "int4_class_for",
    "int4_formats",
    "int4_from_codes",
    "int4_supports_reason",
    "int4_weight_reason",
    "int_to_float_zero_point",
    "quantize_int4",
    "quantize_for_layout",
    "scale_dtype_for",
    "slice_codes",
]

INT4_QMIN, INT4_QMAX = 0, 15  # uint4 codes; the FLOAT zero point is centred on code 8
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what every int4 kernel we target accepts
# Smallest scale: 2^-20 is a normal number in bf16 and fp32 and representable in fp16
# (subnormal), so a stored scale is never 0. Groups narrower than 15 * 2^-20 lose nothing.
_MIN_SCALE = 2.0**-20


class Int4Packing(str, enum.Enum):
    """Packed int4 layouts. Values are stable strings (configs and checkpoints store them)."""

    AUTO = "auto"  # the format of the weight's device (int4_class_for)
    TINYGEMM_CPU = "tinygemm_cpu"  # Int4TinygemmCpuTensor
    TILED_CUDA = "tiled_cuda"  # Int4TiledCudaTensor (tensor-core tiled, float zero point)
    MARLIN = "marlin"  # Int4MarlinTensor
    XPU = "xpu"  # Int4XpuTensor (int zero point)
    XPU_FLOAT_ZP = "xpu_float_zp"  # Int4XpuFloatZpTensor (float zero point)
    PLAIN = "plain"  # Int4PlainTensor: portable storage, no kernel
    TRITON_CUDA = "triton_cuda"  # Int4TritonCudaTensor (lowbit's Triton kernels, float zero point)


# ---------------------------------------------------------------------- weights and codes


def int4_weight_reason(weight, k_multiple: int = 1) -> str | None:
    """Why ``weight`` is not a 2-D float weight with K % ``k_multiple`` == 0 (None: it is)."""
    reason = float_weight_reason(weight)
    if reason is not None:
        return reason
    if weight.shape[1] % k_multiple:
        return f"needs in_features K % {k_multiple} == 0, got K={weight.shape[1]}"
    return None


def int4_supports_reason(cls, weight, device, group_size: int, where: str) -> str | None:
    """The shared ``supports`` of int4 layouts: a 2-D float weight, ``cls._layout_reason``
    (N, K, group) and ``cls.kernel_device`` (``where`` names the kernel in the message)."""
    reason = int4_weight_reason(weight) or cls._layout_reason(*weight.shape, group_size)
    if reason:
        return reason
    return device_type_reason(weight, device, cls.kernel_device, where)


def check_int4_weight(w, group_size: int, fn: str, group_sizes=INT4_GROUP_SIZES) -> None:
    """Raise ValueError unless ``w`` is a 2-D float weight and ``group_size`` (one of
    ``group_sizes``; None: any positive size) divides its K."""
    check_float_weight(w, fn)
    ok = group_size in group_sizes if group_sizes else isinstance(group_size, int) and group_size > 0
    if not ok:
        raise ValueError(f"{fn}: group_size must be one of {group_sizes or 'the positive ints'}, got {group_size!r}")
    if w.shape[1] % group_size:
        raise ValueError(
            f"{fn}: group_size={group_size} does not divide in_features K={w.shape[1]}; use a group "
            f"size that divides K (Int4WeightOnlyConfig picks one for you and logs it)"
        )


def scale_dtype_for(cls, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype ``cls`` stores scales in for a weight of ``weight_dtype`` (its ``scale_dtypes``)."""
    return weight_dtype if weight_dtype in cls.scale_dtypes else cls.scale_dtypes[-1]


def quantize_int4(
    w: torch.Tensor,
    group_size: int,
    zero_point_kind: P.ZeroPointKind | str,
    qparams: str = "minmax",
    scale_dtype: torch.dtype | None = None,
    group_sizes: tuple[int, ...] | None = INT4_GROUP_SIZES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric groupwise uint4 codes and qparams of a float [N, K] weight.

    Args:
        w: float weight [N, K]; K % group_size == 0.
        group_size: consecutive input features sharing one scale/zero (32/64/128/256 by default).
        zero_point_kind: ``"float"``: ``x = (q - 8) * scale + zero`` (tinygemm/HQQ);
            ``"int"``: ``x = (q - zero) * scale`` with integer zero in [0, 15] (GPTQ/AWQ).
        qparams: ``"minmax"`` (group min/max) or ``"hqq"`` (lowbit.hqq optimizer; runs on
            the weight's device).
        scale_dtype: dtype scales (and float zeros) are stored in; default ``w.dtype``.
        group_sizes: the group sizes the caller's format accepts (None: any that divides K).

    Returns:
        ``(codes, scale, zero_point)``: uint8 [N, K] in 0..15, scale [N, K // g] in
        ``scale_dtype``, zero point [N, K // g] (``scale_dtype`` for float, int32 for int).
        The codes are the nearest codes under the *stored* (rounded) qparams.
    """
    kind = P._enum(P.ZeroPointKind, zero_point_kind, "zero_point_kind")
    if kind is P.ZeroPointKind.NONE:
        raise ValueError("int4 weights are asymmetric: zero_point_kind must be 'float' or 'int', got 'none'")
    check_int4_weight(w, group_size, "quantize_int4", group_sizes)
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
        scale, zero = hqq_int4_qparams(w, group_size, kind)
    else:
        raise ValueError(f"qparams must be 'minmax' or 'hqq', got {qparams!r}")
    scale = scale.clamp(min=_MIN_SCALE).to(scale_dtype)
    zero = zero.to(torch.int32) if kind is P.ZeroPointKind.INT else zero.to(scale_dtype)
    codes = P._quantize_affine(w, block, scale, zero, torch.uint8, INT4_QMIN, INT4_QMAX, kind)
    return codes, scale, zero


def quantize_for_layout(cls, w, group_size: int, qparams: str, group_sizes) -> LowbitTensor:
    """``cls.from_float`` for a format whose ``_layout_reason(n, k, group_size)`` tells the
    shapes it packs: check ``w`` (``group_sizes`` as in ``check_int4_weight``) and the
    layout, quantize with the class's zero-point kind and scale dtype, ``from_codes``."""
    check_int4_weight(w, group_size, cls.__name__ + ".from_float", group_sizes)
    reason = cls._layout_reason(*w.shape, group_size)
    if reason:
        raise ValueError(f"{cls.__name__} {reason}, weight shape {tuple(w.shape)}")
    codes, scale, zero = quantize_int4(w, group_size, cls.zero_point_kind, qparams, scale_dtype_for(cls, w.dtype), None)
    return cls.from_codes(codes, scale, zero, group_size=group_size, shape=w.shape, dtype=w.dtype)


def int_to_float_zero_point(scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Float zero point equal to an int one: (q - z) s = (q - 8) s + (8 - z) s.

    Computed in float32 and rounded to ``scale.dtype``: exact in fp32; in bf16/fp16 the
    rounding moves a dequantized value by at most 8 * s * 2^-9 (bf16), 1/64 of a step.
    """
    mid = (INT4_QMIN + INT4_QMAX + 1) // 2
    return ((mid - zero_point.to(torch.float32)) * scale.to(torch.float32)).to(scale.dtype)


def check_int4_codes(name, codes, scale, zero_point, group_size, shape, zero_point_kind=None,
                     group_sizes=INT4_GROUP_SIZES) -> tuple[int, int]:
    """Validate ``from_codes`` arguments (the codes interface every int4 format shares).

    ``zero_point_kind`` ("float"/"int") is the kind the format applies; None accepts
    either. Returns ``(N, K)``; raises ValueError saying what is wrong.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"{name}.from_codes needs a 2-D shape (N, K), got {shape}")
    n, k = shape
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or tuple(codes.shape) != shape:
        got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"{name}.from_codes needs uint8 codes of shape {shape} (values 0..15), got {got}")
    ok = group_size in group_sizes if group_sizes else isinstance(group_size, int) and group_size > 0
    if not ok or k % group_size:
        raise ValueError(
            f"{name}.from_codes: group_size must be one of {group_sizes or INT4_GROUP_SIZES} and divide K={k}, "
            f"got {group_size!r}"
        )
    want = (n, k // group_size)
    for nm, t in (("scale", scale), ("zero_point", zero_point)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}.from_codes needs {nm} of shape {want} (N, K // group_size), got {got}")
    if not scale.dtype.is_floating_point:
        raise ValueError(f"{name}.from_codes needs a float scale, got {scale.dtype}")
    is_int = not zero_point.dtype.is_floating_point
    if zero_point_kind == "int" and (not is_int or zero_point.dtype == torch.bool):
        raise ValueError(
            f"{name} uses an integer zero point (x = (q - zero) * scale), got a {zero_point.dtype} "
            f"zero_point; float zero points (x = (q - 8) * scale + zero) belong to the float-zero-point formats"
        )
    if zero_point_kind == "float" and is_int:
        raise ValueError(
            f"{name} uses a float zero point (x = (q - 8) * scale + zero), got a {zero_point.dtype} "
            "zero_point; convert int zero points with lowbit.tensors.int4_common.int_to_float_zero_point"
        )
    if codes.device.type == "meta":  # shapes and dtypes only: a meta tensor has no values to check
        return n, k
    if codes.numel() and int(codes.max()) > INT4_QMAX:
        raise ValueError(f"{name}.from_codes needs codes in 0..15, got a maximum of {int(codes.max())}")
    if zero_point_kind == "int" and zero_point.numel() and (
        int(zero_point.min()) < INT4_QMIN or int(zero_point.max()) > INT4_QMAX
    ):
        raise ValueError(
            f"{name}.from_codes: integer zero points must be in 0..15, found "
            f"[{int(zero_point.min())}, {int(zero_point.max())}]"
        )
    return n, k


def slice_codes(codes, scale, zero, group_size, dim, start, end, step, w, row_multiple: int = 1):
    """Slice unpacked codes and their [N, K // group_size] qparams (``aten.slice`` semantics).

    Slices of K must start and end on group boundaries, slices of N on ``row_multiple``.
    Returns ``(codes, scale, zero)``.
    """
    name = type(w).__name__
    dim = dim % 2
    start, end = slice_bounds(codes.shape[dim], start, end, step, name)
    unit = row_multiple if dim == 0 else group_size
    if start % unit or end % unit:
        what = f"rows (out_features) at multiples of {unit}" if dim == 0 else (
            f"in_features only at multiples of group_size={group_size}")
        raise UnsupportedOpError(
            f"{name} can slice {what}, got [{start}, {end}); pick boundaries that are multiples of {unit}"
        )
    codes = codes.narrow(dim, start, end - start).contiguous()
    g0, g1 = (start, end) if dim == 0 else (start // group_size, end // group_size)
    return codes, scale.narrow(dim, g0, g1 - g0).contiguous(), zero.narrow(dim, g0, g1 - g0).contiguous()


# ---------------------------------------------------------------------- the format table


def int4_formats() -> dict[Int4Packing, type[LowbitTensor]]:
    """packing -> class, from the formats' own ``int4_packing`` declarations."""
    return {
        cls.int4_packing: cls for cls in format_registry.values() if getattr(cls, "int4_packing", None) is not None
    }


def _auto_class(device_type: str, kind: P.ZeroPointKind, formats) -> type[LowbitTensor] | None:
    # A kernel that applies this kind exactly, else one with float zero points: an int
    # zero point z is the float zero point (8 - z) * scale (int_to_float_zero_point).
    auto = [c for c in formats.values() if c.int4_auto and c.kernel_device == device_type]
    for want in (kind.value, P.ZeroPointKind.FLOAT.value):
        for c in auto:
            if c.zero_point_kind == want:
                return c
    return None


def int4_class_for(device_type: str, zero_point_kind, packing=Int4Packing.AUTO) -> type[LowbitTensor]:
    """The int4 tensor class that serves ``packing`` on ``device_type`` for ``zero_point_kind``.

    Raises:
        UnsupportedError: no int4 format runs there (message says what would).
        ValueError: ``packing`` or ``zero_point_kind`` is not a known value.
    """
    kind = P._enum(P.ZeroPointKind, zero_point_kind, "zero_point_kind")
    packing = P._enum(Int4Packing, packing, "packing")
    formats = int4_formats()
    if packing is Int4Packing.AUTO:
        cls = _auto_class(device_type, kind, formats)
        if cls is None:
            served = sorted({c.kernel_device for c in formats.values() if c.int4_auto})
            raise UnsupportedError(
                f"no int4 format with a {kind.value} zero point runs on {device_type!r} in this lowbit "
                f"(packing='auto' knows {served}); quantize on one of those devices, or use "
                "packing='plain' to store the weight without a kernel"
            )
        return cls
    cls = formats.get(packing)
    if cls is None:
        raise UnsupportedError(
            f"int4 packing {packing.value!r} is not available in this lowbit build; "
            f"available: {sorted(p.value for p in formats)}"
        )
    want = cls.kernel_device
    if want is not None and want != device_type:
        raise UnsupportedError(
            f"int4 packing {packing.value!r} runs on {want!r}, the weight is on {device_type!r}; "
            f"use packing='auto' or move the model to {want!r} before quantizing"
        )
    ckind = cls.zero_point_kind
    if ckind is not None and ckind != kind.value and not (ckind == "float" and kind is P.ZeroPointKind.INT):
        raise UnsupportedError(
            f"int4 packing {packing.value!r} applies {ckind} zero points and cannot represent "
            f"{kind.value} ones exactly; use zero_point={ckind!r} or another packing"
        )
    return cls


def int4_from_codes(cls, codes, scale, zero_point, zero_point_kind, *, group_size, shape, dtype) -> LowbitTensor:
    """``cls.from_codes`` after converting the zero point to the kind ``cls`` applies."""
    kind = P._enum(P.ZeroPointKind, zero_point_kind, "zero_point_kind")
    ckind = cls.zero_point_kind
    if ckind is None:
        return cls.from_codes(codes, scale, zero_point, group_size=group_size, shape=shape, dtype=dtype,
                              zero_point_kind=kind)
    if ckind == "float" and kind is P.ZeroPointKind.INT:
        zero_point = int_to_float_zero_point(scale, zero_point)
    elif ckind != kind.value:
        raise UnsupportedError(f"{cls.__name__} applies {ckind} zero points, got {kind.value} ones")
    return cls.from_codes(codes, scale, zero_point, group_size=group_size, shape=shape, dtype=dtype)


# ---------------------------------------------------------------------- the portable mixin


class PortableInt4Mixin:
    """Checkpoint, dequantize and device moves for the device-specific int4 layouts.

    A class using it declares ``zero_point_kind`` and ``kernel_device`` and has
    ``to_codes``. It saves as ``Int4PlainTensor`` (loads on any device) and moves by
    repacking for the target device's int4 format, so ``model.to(device)`` never carries
    a layout to a device whose kernel cannot read it.
    """

    zero_point_kind: str
    kernel_device: str

    def to_checkpoint(self) -> LowbitTensor:
        codes, scale, zero = self.to_codes()
        plain = int4_formats()[Int4Packing.PLAIN]
        return plain.from_codes(codes, scale, zero, group_size=self.group_size, shape=tuple(self.shape),
                                dtype=self.dtype, zero_point_kind=self.zero_point_kind)

    def dequantize(self, dtype=None):
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


# ---------------------------------------------------------------------- XPU layouts

_XPU_K_MULTIPLE = 8  # eight int4 per int32 along K


class XpuInt4Layout:
    """What both XPU int4 classes share: the plain [N, K / 8] int32 codes, the kernels'
    group sizes and scale dtypes, ``supports`` and min-max/HQQ ``from_float``."""

    kernel_device = "xpu"
    scale_dtypes = (torch.float16, torch.bfloat16)
    int4_auto = True
    GROUP_SIZES = (16, 32, 64, 128, 256)  # what the XPU int4 kernels are built for

    @classmethod
    def _layout_reason(cls, n: int, k: int, group_size: int) -> str | None:
        if group_size not in cls.GROUP_SIZES:
            return f"needs group_size in {cls.GROUP_SIZES}, got {group_size}"
        if k % group_size or k % _XPU_K_MULTIPLE:
            return f"needs in_features % {max(group_size, _XPU_K_MULTIPLE)} == 0, got {k}"
        return None

    @classmethod
    def _check_codes(cls, codes, scale, zero_point, group_size, shape) -> None:
        n, k = check_int4_codes(cls.__name__, codes, scale, zero_point, group_size, shape,
                                cls.zero_point_kind, cls.GROUP_SIZES)
        reason = cls._layout_reason(n, k, group_size)
        if reason:
            raise ValueError(f"{cls.__name__} {reason}")

    @classmethod
    def supports(cls, weight, device=None, *, group_size: int = 128) -> str | None:
        return int4_supports_reason(cls, weight, device, group_size, "Intel GPUs (xpu)")

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 128, qparams: str = "minmax"):
        """Asymmetric int4 quantization of a float ``[N, K]`` weight, with the zero-point
        kind the class applies."""
        return quantize_for_layout(cls, w, group_size, qparams, cls.GROUP_SIZES)
