"""Int4 weight-only config: one request ("int4, group 128"), one packed format per device.

Format choice is a table, not a chain of conditions: ``_PACKING_CLASSES`` says which
tensor class implements a packing, ``_AUTO_PACKING`` which packing ``"auto"`` means on a
device type for a zero-point kind. ``int4_class_for`` reads both, and every path that
builds an int4 weight (``quantize_``, checkpoint loading, ``model.to(device)``) goes
through it.

Policies (decided here, documented for users):

* **Int zero points on CPU.** The CPU kernel (tinygemm) applies a float zero point. An
  int zero point z becomes the float zero point (8 - z) * scale, computed in fp32 and
  stored in the scale dtype: exact in fp32, off by at most 1/64 of a quantization step
  in bf16 (see ``int_to_float_zero_point``). The packed tensor then reports float zero
  points (``to_codes``/``to_checkpoint``). Nothing converts the other way: a float zero
  point on a device whose formats all need int ones raises ``UnsupportedError``.
* **K not divisible by the group.** ``group_size`` is an upper bound on the group: if it
  does not divide a layer's in_features K, that layer uses the largest supported group
  size (32, 64, 128, 256) below it that divides K (smaller groups are at least as
  accurate; SmolLM2's K = 576 gets 64 for group_size=128). The choice is logged at INFO
  and visible as the tensor's ``group_size`` (and in ``QuantizeReport.quantized``). If no
  supported group divides K (K % 32 != 0), the layer is skipped with UnsupportedError.
* **Errors.** Invalid configs (unknown group size/packing/qparams) raise ``ValueError``
  when the config is built. A valid config that a layer or device cannot serve raises
  ``lowbit.UnsupportedError`` naming the layer, the constraint and the fix, so
  ``quantize_`` skips that layer, logs why and records it in the report.
"""

from __future__ import annotations

import dataclasses
import enum
import logging

import torch

from ..config import BaseConfig, register_handler
from ..errors import UnsupportedError
from ..primitives import ZeroPointKind, _enum
from ..tensors.base import LowbitTensor
from ..tensors.int4_plain import INT4_GROUP_SIZES, Int4PlainTensor, int_to_float_zero_point, quantize_int4
from ..tensors.int4_marlin import Int4MarlinTensor
from ..tensors.int4_tiled_cuda import Int4TiledCudaTensor
from ..tensors.int4_tinygemm_cpu import Int4TinygemmCpuTensor
from ..tensors.int4_triton_cuda import Int4TritonCudaTensor
from ..tensors.int4_xpu import Int4XpuTensor
from ..tensors.int4_xpu_float_zp import Int4XpuFloatZpTensor

__all__ = ["Int4WeightOnlyConfig", "Int4Packing", "int4_class_for", "int4_from_codes", "int4_group_size_for"]

log = logging.getLogger(__name__)


class Int4Packing(str, enum.Enum):
    """Packed int4 layouts. Values are stable strings (configs and checkpoints store them)."""

    AUTO = "auto"  # the format of the weight's device (table below)
    TINYGEMM_CPU = "tinygemm_cpu"  # Int4TinygemmCpuTensor
    TILED_CUDA = "tiled_cuda"  # Int4TiledCudaTensor (tensor-core tiled, float zero point)
    MARLIN = "marlin"  # Int4MarlinTensor
    XPU = "xpu"  # Int4XpuTensor (int zero point)
    XPU_FLOAT_ZP = "xpu_float_zp"  # Int4XpuFloatZpTensor (float zero point)
    PLAIN = "plain"  # Int4PlainTensor: portable storage, no kernel
    TRITON_CUDA = "triton_cuda"  # Int4TritonCudaTensor (lowbit's Triton kernels, float zero point)


# packing -> tensor class. Each class has ``from_codes``/``to_codes`` (the int4 "codes"
# interface, see int4_plain.py) and ``supports``.
_PACKING_CLASSES: dict[Int4Packing, type[LowbitTensor]] = {
    Int4Packing.TINYGEMM_CPU: Int4TinygemmCpuTensor,
    Int4Packing.TILED_CUDA: Int4TiledCudaTensor,
    Int4Packing.MARLIN: Int4MarlinTensor,
    Int4Packing.TRITON_CUDA: Int4TritonCudaTensor,
    Int4Packing.XPU: Int4XpuTensor,
    Int4Packing.XPU_FLOAT_ZP: Int4XpuFloatZpTensor,
    Int4Packing.PLAIN: Int4PlainTensor,
}

# Device type each kernel format runs on (PLAIN: any).
_PACKING_DEVICE: dict[Int4Packing, str] = {
    Int4Packing.TINYGEMM_CPU: "cpu",
    Int4Packing.TILED_CUDA: "cuda",
    Int4Packing.MARLIN: "cuda",
    Int4Packing.TRITON_CUDA: "cuda",
    Int4Packing.XPU: "xpu",
    Int4Packing.XPU_FLOAT_ZP: "xpu",
}

# Zero-point kind each kernel format applies (PLAIN stores either and records which).
_PACKING_KIND: dict[Int4Packing, ZeroPointKind] = {
    Int4Packing.TINYGEMM_CPU: ZeroPointKind.FLOAT,
    Int4Packing.TILED_CUDA: ZeroPointKind.FLOAT,
    Int4Packing.MARLIN: ZeroPointKind.INT,
    Int4Packing.TRITON_CUDA: ZeroPointKind.FLOAT,
    Int4Packing.XPU: ZeroPointKind.INT,
    Int4Packing.XPU_FLOAT_ZP: ZeroPointKind.FLOAT,
}

# (device type, zero-point kind) -> what packing="auto" picks. Only formats with a real
# kernel: Marlin's linear is a pure-PyTorch reference until its kernel lands, so "auto"
# serves int zero points on CUDA with the tiled tinygemm kernel (zero point converted
# exactly as on CPU, see module doc); ask for packing="marlin" to get the Marlin layout.
_AUTO_PACKING: dict[tuple[str, ZeroPointKind], Int4Packing] = {
    ("cpu", ZeroPointKind.FLOAT): Int4Packing.TINYGEMM_CPU,
    ("cpu", ZeroPointKind.INT): Int4Packing.TINYGEMM_CPU,  # int zero point converted, see module doc
    ("cuda", ZeroPointKind.FLOAT): Int4Packing.TILED_CUDA,
    ("cuda", ZeroPointKind.INT): Int4Packing.TILED_CUDA,  # int zero point converted, see module doc
    ("xpu", ZeroPointKind.INT): Int4Packing.XPU,
    ("xpu", ZeroPointKind.FLOAT): Int4Packing.XPU_FLOAT_ZP,
}




def _kind_of(cls) -> ZeroPointKind | None:
    """The zero-point kind a class's kernel applies (None: stores either, e.g. PLAIN)."""
    for packing, klass in _PACKING_CLASSES.items():
        if klass is cls:
            return _PACKING_KIND.get(packing)
    raise ValueError(f"{cls.__name__} is not an int4 format known to lowbit.configs.int4")


def int4_class_for(device_type: str, zero_point_kind, packing=Int4Packing.AUTO) -> type[LowbitTensor]:
    """The int4 tensor class that serves ``packing`` on ``device_type`` for ``zero_point_kind``.

    Raises:
        UnsupportedError: no int4 format runs there (message says what would).
        ValueError: ``packing`` or ``zero_point_kind`` is not a known value.
    """
    kind = _enum(ZeroPointKind, zero_point_kind, "zero_point_kind")
    packing = _enum(Int4Packing, packing, "packing")
    if packing is Int4Packing.AUTO:
        packing = _AUTO_PACKING.get((device_type, kind))
        if packing is None:
            served = sorted({d for d, _ in _AUTO_PACKING})
            raise UnsupportedError(
                f"no int4 format with a {kind.value} zero point runs on {device_type!r} in this lowbit "
                f"(packing='auto' knows {served}); quantize on one of those devices, or use "
                "packing='plain' to store the weight without a kernel"
            )
    cls = _PACKING_CLASSES.get(packing)
    if cls is None:
        raise UnsupportedError(
            f"int4 packing {packing.value!r} is not available in this lowbit build; "
            f"available: {sorted(p.value for p in _PACKING_CLASSES)}"
        )
    want = _PACKING_DEVICE.get(packing)
    if want is not None and want != device_type:
        raise UnsupportedError(
            f"int4 packing {packing.value!r} runs on {want!r}, the weight is on {device_type!r}; "
            f"use packing='auto' or move the model to {want!r} before quantizing"
        )
    ckind = _kind_of(cls)
    if ckind is not None and ckind is not kind and not (ckind is ZeroPointKind.FLOAT and kind is ZeroPointKind.INT):
        raise UnsupportedError(
            f"int4 packing {packing.value!r} applies {ckind.value} zero points and cannot represent "
            f"{kind.value} ones exactly; use zero_point={ckind.value!r} or another packing"
        )
    return cls


def int4_from_codes(cls, codes, scale, zero_point, zero_point_kind, *, group_size, shape, dtype) -> LowbitTensor:
    """``cls.from_codes`` after converting the zero point to the kind ``cls`` applies."""
    kind = _enum(ZeroPointKind, zero_point_kind, "zero_point_kind")
    if cls is Int4PlainTensor:
        return cls.from_codes(codes, scale, zero_point, group_size=group_size, shape=shape, dtype=dtype,
                              zero_point_kind=kind)
    ckind = _kind_of(cls)
    if ckind is ZeroPointKind.FLOAT and kind is ZeroPointKind.INT:
        zero_point = int_to_float_zero_point(scale, zero_point)
    elif ckind is not kind:
        raise UnsupportedError(f"{cls.__name__} applies {ckind.value} zero points, got {kind.value} ones")
    return cls.from_codes(codes, scale, zero_point, group_size=group_size, shape=shape, dtype=dtype)


def int4_group_size_for(in_features: int, group_size: int, fqn: str = "") -> int:
    """The group size a layer with ``in_features`` uses (K policy in the module docstring)."""
    if in_features % group_size == 0:
        return group_size
    for g in sorted(INT4_GROUP_SIZES, reverse=True):
        if g < group_size and in_features % g == 0:
            log.info(
                "lowbit: int4 group_size=%d does not divide in_features=%d of %s; using group_size=%d",
                group_size, in_features, fqn or "a layer", g,
            )
            return g
    raise UnsupportedError(
        f"int4 cannot serve {fqn or 'this layer'}: in_features={in_features} is not a multiple of any "
        f"supported group size <= {group_size} ({', '.join(str(g) for g in INT4_GROUP_SIZES)}); keep this "
        f"layer in float (FqnToConfig({{{fqn!r}: None}})) or pad in_features to a multiple of 32"
    )


@dataclasses.dataclass(frozen=True)
class Int4WeightOnlyConfig(BaseConfig):
    """Asymmetric groupwise uint4 weights; activations stay float.

    Args:
        group_size: input features per scale/zero: 32, 64, 128 or 256. An upper bound: a
            layer whose in_features it does not divide uses the largest smaller one that
            does (logged; see module docstring).
        zero_point: ``"float"`` (``x = (q - 8) * scale + zero``, tinygemm/HQQ) or
            ``"int"`` (``x = (q - zero) * scale``, GPTQ/AWQ).
        qparams: ``"minmax"`` or ``"hqq"`` (optimized scales/zeros, lowbit.hqq; slower
            to quantize, lower error).
        packing: an ``Int4Packing`` (or its string); ``"auto"`` picks the format of the
            weight's device (CPU: tinygemm).
    """

    group_size: int = 128
    zero_point: str = "float"
    qparams: str = "minmax"
    packing: Int4Packing = Int4Packing.AUTO

    def __post_init__(self):
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"Int4WeightOnlyConfig.group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}")
        zp = self.zero_point.value if isinstance(self.zero_point, ZeroPointKind) else self.zero_point
        if zp not in ("float", "int"):
            raise ValueError(f"Int4WeightOnlyConfig.zero_point must be 'float' or 'int', got {self.zero_point!r}")
        object.__setattr__(self, "zero_point", zp)
        if self.qparams not in ("minmax", "hqq"):
            raise ValueError(f"Int4WeightOnlyConfig.qparams must be 'minmax' or 'hqq', got {self.qparams!r}")
        object.__setattr__(self, "packing", _enum(Int4Packing, self.packing, "Int4WeightOnlyConfig.packing"))
        if self.packing is Int4Packing.MARLIN and zp == "float":
            raise ValueError(
                "Int4WeightOnlyConfig(packing='marlin') needs zero_point='int': Marlin applies integer zero "
                "points (x = (q - zero) * scale), got zero_point='float'; pass zero_point='int', or "
                "packing='auto' for a float zero point"
            )


@register_handler(Int4WeightOnlyConfig)
def _int4_weight_only(weight: torch.Tensor, config: Int4WeightOnlyConfig, fqn: str) -> LowbitTensor:
    where = fqn or "this layer"
    kind = ZeroPointKind(config.zero_point)
    try:
        cls = int4_class_for(weight.device.type, kind, config.packing)
    except UnsupportedError as e:
        raise UnsupportedError(f"int4 cannot serve {where}: {e}") from None
    if weight.ndim != 2:
        raise UnsupportedError(f"int4 cannot serve {where}: needs a 2-D weight, got {tuple(weight.shape)}")
    group = int4_group_size_for(weight.shape[1], config.group_size, fqn)
    reason = cls.supports(weight, weight.device, group_size=group)
    if reason is not None:
        raise UnsupportedError(f"{cls.__name__} cannot serve {where}: {reason}")
    # Quantize against the qparams as the format stores them (e.g. bf16), so the codes are
    # the nearest ones for the stored values.
    codes, scale, zero = quantize_int4(weight, group, kind, config.qparams, getattr(cls, "scale_dtype", None))
    return int4_from_codes(cls, codes, scale, zero, kind, group_size=group, shape=weight.shape, dtype=weight.dtype)
