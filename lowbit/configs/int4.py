"""Int4 weight-only config: one request ("int4, group 128"), one packed format per device.

Format choice is a table, not a chain of conditions, and the table is derived from the
format classes' own declarations (``int4_packing``, ``kernel_device``,
``zero_point_kind``, ``scale_dtypes``, ``int4_auto``; see ``lowbit/tensors/int4_common.py``).
``int4_class_for`` reads it, and every path that builds an int4 weight (``quantize_``,
checkpoint loading, ``model.to(device)``) goes through it.

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
import logging

import torch

from ..autoquant.candidates import register_candidate
from ..config import BaseConfig, register_handler
from ..errors import UnsupportedError
from ..primitives import ZeroPointKind, _enum
from ..tensors.base import LowbitTensor
from ..tensors.int4_common import (
    INT4_GROUP_SIZES,
    Int4Packing,
    int4_class_for,
    int4_formats,
    int4_from_codes,
    quantize_int4,
    scale_dtype_for,
)

__all__ = ["Int4WeightOnlyConfig", "Int4Packing", "int4_class_for", "int4_from_codes", "int4_group_size_for"]

log = logging.getLogger(__name__)


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
            raise ValueError(
                f"Int4WeightOnlyConfig.group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}"
            )
        zp = self.zero_point.value if isinstance(self.zero_point, ZeroPointKind) else self.zero_point
        if zp not in ("float", "int"):
            raise ValueError(f"Int4WeightOnlyConfig.zero_point must be 'float' or 'int', got {self.zero_point!r}")
        object.__setattr__(self, "zero_point", zp)
        if self.qparams not in ("minmax", "hqq"):
            raise ValueError(f"Int4WeightOnlyConfig.qparams must be 'minmax' or 'hqq', got {self.qparams!r}")
        object.__setattr__(self, "packing", _enum(Int4Packing, self.packing, "Int4WeightOnlyConfig.packing"))
        if self.packing is not Int4Packing.AUTO:
            # The packing's class is known now: a zero-point kind its kernel cannot apply is
            # a config error, not a per-layer skip (int zero points run on float-zero-point
            # kernels exactly; float ones cannot become int ones).
            cls = int4_formats().get(self.packing)
            if cls is not None and cls.zero_point_kind == "int" and zp == "float":
                raise ValueError(
                    f"Int4WeightOnlyConfig(packing={self.packing.value!r}) applies integer zero points "
                    f"(x = (q - zero) * scale), got zero_point='float'; use zero_point='int' with this "
                    "packing, or a float-zero-point packing ('auto')"
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
    codes, scale, zero = quantize_int4(weight, group, kind, config.qparams, scale_dtype_for(cls, weight.dtype))
    return int4_from_codes(cls, codes, scale, zero, kind, group_size=group, shape=weight.shape, dtype=weight.dtype)


# One autoquant candidate per group size. Not in "default": groupwise int4 measures ~18-25
# dB output SQNR per layer, under the default 30 dB bar, so they would only cost build and
# SQNR time there; ask for them with candidates="int4" / "all" and a lower min_sqnr.
for _gs in INT4_GROUP_SIZES:
    register_candidate(f"int4_wo_g{_gs}", Int4WeightOnlyConfig(group_size=_gs), sets=("int4", "all"))
