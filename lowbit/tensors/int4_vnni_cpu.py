"""Groupwise int4 weights packed for the x86 CPU int8-activation kernel (DA8W4).

Activations are quantized per token to 8 bits at run time (inside the op) and the
product is an integer dot product; see ``lowbit/csrc/da8w4_cpu.cpp`` for the numerics
and the instruction sets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops  # noqa: F401  (registers torch.ops.lowbit)
from ..ops.library import kernel
from .. import primitives as P
from ..errors import UnsupportedError
from ..granularity import per_group
from .base import LowbitTensor, UnsupportedOpError, linear_args, slice_args

aten = torch.ops.aten

__all__ = ["Int4VnniCpuTensor", "pack_vnni_int4", "unpack_vnni_int4", "ACT_MAPPINGS"]

ACT_MAPPINGS = ("asymmetric", "symmetric")

# Layout constants, shared with lowbit/csrc/da8w4_cpu.cpp (kBlockN, kOctet, kBlockBytes).
_BLOCK_N = 16  # output columns per block: the 16 int32 lanes of one vpdpbusd
_LANE_K = 4  # consecutive k per int32 lane (one u8 x s8 quad)
_OCTET = 2 * _LANE_K  # k per 64-byte row: low nibbles hold k 0-3, high nibbles k 4-7
_QMIN, _QMAX = 0, 15  # int4 codes, unsigned, with an integer zero point
_GROUP_MULTIPLE = 16  # the AVX2 loop consumes 16 k per step
# Largest group: a group's integer sum of (a - za)(q - z) stays below 2^24 (exact in the
# float32 reference) for 4096 * 255 * 15.
_MAX_GROUP = 4096
_ACT_DTYPES = (torch.float32, torch.bfloat16)
# float16 weights are refused: the kernel takes float32/bfloat16 activations only, so an
# fp16 model could be quantized but never run.
_WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


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
    q = codes.to(torch.uint8).reshape(n // _BLOCK_N, _BLOCK_N, k // _OCTET, 2, _LANE_K)
    # Byte (c, j) of octet o: low nibble k = 8o + j, high nibble k = 8o + 4 + j.
    byte = q[:, :, :, 0, :] | (q[:, :, :, 1, :] << 4)
    # [N/16, c, o, j] -> [N/16, o, c, j]: one octet's 64 bytes are 16 columns x 4 bytes.
    qdata = byte.permute(0, 2, 1, 3).reshape(n // _BLOCK_N, k // _OCTET, _BLOCK_N * _LANE_K).contiguous()

    def blocked(t, dtype):
        return t.to(dtype).reshape(n // _BLOCK_N, _BLOCK_N, g).permute(0, 2, 1).contiguous()

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
    byte = qdata.reshape(nb, octets, _BLOCK_N, _LANE_K).permute(0, 2, 1, 3)  # [N/16, c, o, j]
    codes = torch.stack((byte & 0x0F, byte >> 4), dim=3)  # [N/16, c, o, nibble, j]
    codes = codes.reshape(nb * _BLOCK_N, octets * _OCTET)

    def unblocked(t, dtype):
        return t.permute(0, 2, 1).reshape(nb * _BLOCK_N, g).to(dtype)

    return codes, unblocked(scale, torch.float32), unblocked(zero_point, torch.int32)


def _shape_reason(n: int, k: int, group_size: int) -> str | None:
    if group_size <= 0 or group_size % _GROUP_MULTIPLE or group_size > _MAX_GROUP:
        return f"needs group_size a multiple of {_GROUP_MULTIPLE} in [16, {_MAX_GROUP}], got {group_size}"
    if n == 0 or k == 0:
        return f"needs a non-empty weight, got [{n}, {k}]"
    if k % group_size:
        return f"needs in_features K % group_size == 0, got K={k}, group_size={group_size}"
    if n % _BLOCK_N:
        return f"needs out_features N % {_BLOCK_N} == 0, got N={n}"
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
        dev = torch.device(device) if device is not None else weight.device
        if dev.type != "cpu":
            return f"runs on CPU only (x86 integer kernels), got device {dev}"
        return _shape_reason(weight.shape[0], weight.shape[1], group_size)

    @classmethod
    def from_float(
        cls, w: torch.Tensor, group_size: int = 128, act_mapping: str = "asymmetric"
    ) -> Int4VnniCpuTensor:
        """Quantize a float [N, K] weight groupwise (asymmetric, int zero point) to int4 and pack it."""
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{cls.__name__}.from_float needs a 2-D [out_features, in_features] weight, got {got}")
        if act_mapping not in ACT_MAPPINGS:
            raise ValueError(f"act_mapping must be one of {ACT_MAPPINGS}, got {act_mapping!r}")
        reason = cls.supports(w, w.device, group_size)
        if reason is not None:
            raise UnsupportedError(f"{cls.__name__} {reason}")
        block = per_group(w.shape, group_size)
        scale, zp = P.choose_qparams_affine(
            w, P.MappingType.ASYMMETRIC, block, torch.uint8, _QMIN, _QMAX,
            scale_dtype=torch.float32, zero_point_kind=P.ZeroPointKind.INT,
        )
        codes = P._quantize_affine(w, block, scale, zp, torch.uint8, _QMIN, _QMAX, P.ZeroPointKind.INT)
        return cls.from_codes(codes, scale, zp, group_size, act_mapping, dtype=w.dtype)

    @classmethod
    def from_codes(cls, codes, scale, zero_point, group_size, act_mapping="asymmetric", dtype=torch.bfloat16):
        """Pack already-quantized codes [N, K] (0..15) with scale/zero point [N, K // group_size]."""
        n, k = codes.shape
        reason = _shape_reason(n, k, group_size)
        if reason is not None:
            raise UnsupportedError(f"{cls.__name__} {reason}")
        g = k // group_size
        if tuple(scale.shape) != (n, g) or tuple(zero_point.shape) != (n, g):
            raise ValueError(
                f"scale and zero_point must be [{n}, {g}], got {tuple(scale.shape)} and {tuple(zero_point.shape)}"
            )
        qdata, s, z, qsum = pack_vnni_int4(codes, scale, zero_point)
        return cls(qdata, s, z, qsum, group_size=group_size, act_mapping=act_mapping, shape=(n, k), dtype=dtype)

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes uint8 [N, K], scale float32 [N, G], zero_point int32 [N, G])``, exactly as packed."""
        return unpack_vnni_int4(self.qdata, self.scale, self.zero_point)

    def dequantize(self, dtype=None):
        codes, s, z = self.unpack()
        block = per_group(self.shape, self.group_size)
        return P._dequantize_affine(
            codes, block, s, z, _QMIN, _QMAX, P.ZeroPointKind.INT, dtype or self.dtype
        )

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
    n, k = qdata.shape[0] * _BLOCK_N, qdata.shape[1] * _OCTET
    if x.ndim == 0 or x.shape[-1] != k:
        raise ValueError(
            f"linear input has {x.shape[-1] if x.ndim else 0} features but the weight expects {k} "
            f"(weight shape {(n, k)})"
        )
    if x.device != qdata.device:
        raise ValueError(f"input is on {x.device} but the weight is on {qdata.device}; move one of them")
    x2 = x if x.ndim == 2 else x.reshape(-1, k)
    y = kernel("da8w4_linear", x.device.type)(
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
    if step != 1:
        raise UnsupportedOpError(f"{type(w).__name__} slicing needs step 1, got {step}")
    dim = dim % 2
    size = w.shape[dim]
    start = 0 if start is None else (start + size if start < 0 else start)
    end = size if end is None else (end + size if end < 0 else end)
    start, end = max(0, min(start, size)), max(0, min(end, size))
    end = max(start, end)
    unit = _BLOCK_N if dim == 0 else w.group_size
    if start % unit or end % unit:
        raise UnsupportedOpError(
            f"{type(w).__name__} can slice dim {dim} only at multiples of {unit} "
            f"({'16-row blocks' if dim == 0 else 'the group size'}), got [{start}, {end})"
        )
    if end == start:
        raise UnsupportedOpError(f"{type(w).__name__} cannot hold an empty slice [{start}, {end}) of dim {dim}")
    codes, s, z = w.unpack()
    pdim = dim  # scale/zero point are [N, G]: rows match, columns are groups
    codes = codes.narrow(dim, start, end - start)
    gstart, glen = (start, end - start) if dim == 0 else (start // unit, (end - start) // unit)
    s = s.narrow(pdim, gstart, glen)
    z = z.narrow(pdim, gstart, glen)
    return type(w).from_codes(codes, s, z, w.group_size, w.act_mapping, dtype=w.dtype)
