"""DA8W4: per-token int8 dynamic activations x groupwise int4 weights (x86 CPU)."""

from __future__ import annotations

import dataclasses

from ..autoquant.candidates import register_candidate
from ..config import BaseConfig, register_handler
from ..errors import UnsupportedError
from ..tensors.int4_vnni_cpu import ACT_MAPPINGS, Int4VnniCpuTensor

__all__ = ["Int8DynamicActivationInt4WeightConfig"]


@dataclasses.dataclass(frozen=True)
class Int8DynamicActivationInt4WeightConfig(BaseConfig):
    """Int8 dynamic activations x int4 weights, for x86 CPUs (``Int4VnniCpuTensor``).

    Weights: groupwise asymmetric int4 (codes 0..15, integer zero point per group).
    Activations: quantized per token at run time, to uint8 with a zero point
    (``act_mapping="asymmetric"``) or to int8 in [-127, 127] (``"symmetric"``). The GEMM
    runs in integer arithmetic (AVX512-VNNI, AVX2 or scalar C++ kernels, picked by CPU
    detection; built on first use) and is dequantized to the activation dtype.

    Args:
        group_size: weights per scale/zero point along K; a multiple of 16 (32..256 typical).
        act_mapping: ``"asymmetric"`` or ``"symmetric"``.
    """

    group_size: int = 128
    act_mapping: str = "asymmetric"

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size <= 0 or self.group_size % 16:
            raise ValueError(
                f"group_size must be a positive multiple of 16 (e.g. 32, 64, 128, 256), got {self.group_size!r}"
            )
        if self.act_mapping not in ACT_MAPPINGS:
            raise ValueError(f"act_mapping must be one of {ACT_MAPPINGS}, got {self.act_mapping!r}")


@register_handler(Int8DynamicActivationInt4WeightConfig)
def _da8w4(weight, config, fqn):
    reason = Int4VnniCpuTensor.supports(weight, weight.device, config.group_size)
    if reason is not None:
        raise UnsupportedError(f"Int4VnniCpuTensor cannot serve {fqn or 'this layer'}: {reason}")
    return Int4VnniCpuTensor.from_float(weight, config.group_size, config.act_mapping)


# Not in "default" for the same reason as int4 (~18-25 dB per layer, under the 30 dB bar).
register_candidate(
    "da8w4_g128",
    Int8DynamicActivationInt4WeightConfig(group_size=128),
    sets=("da8w4", "all"),
    dynamic_activation=True,
)
