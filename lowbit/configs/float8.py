"""Float8 (e4m3) configs: weight-only and dynamic float8 activation x float8 weight."""

from __future__ import annotations

import dataclasses

from ..autoquant.candidates import register_candidate
from ..config import BaseConfig, from_float_if_supported, register_handler
from ..tensors.float8 import (
    Float8DynActPerTensorTensor,
    Float8DynActTensor,
    Float8Tensor,
)

__all__ = ["FLOAT8_GRANULARITIES", "Float8DynamicActivationFloat8WeightConfig", "Float8WeightOnlyConfig"]

# granularity -> the tensor class that stores (and the kernel that reads) it.
_DYNAMIC_CLASSES = {"row": Float8DynActTensor, "tensor": Float8DynActPerTensorTensor}
FLOAT8_GRANULARITIES = tuple(_DYNAMIC_CLASSES)


@dataclasses.dataclass(frozen=True)
class Float8WeightOnlyConfig(BaseConfig):
    """Per-output-channel float8 e4m3 weights; activations stay float.

    Needs an NVIDIA GPU with compute capability >= 8.9 (Ada, Hopper); other devices are
    skipped with the reason (``Float8Tensor.supports``).
    """


@dataclasses.dataclass(frozen=True)
class Float8DynamicActivationFloat8WeightConfig(BaseConfig):
    """Float8 e4m3 activations (quantized at run time) x float8 e4m3 weights.

    Args:
        granularity: ``"row"`` (default): one scale per activation row (token) and per
            weight output channel, ``torch._scaled_mm`` row-wise; ``"tensor"``: one scale
            for the whole activation and one for the weight.

    Needs compute capability >= 8.9 and in/out features that are multiples of 16.
    """

    granularity: str = "row"

    def __post_init__(self):
        if self.granularity not in _DYNAMIC_CLASSES:
            raise ValueError(
                f"Float8DynamicActivationFloat8WeightConfig.granularity must be one of "
                f"{FLOAT8_GRANULARITIES}, got {self.granularity!r}"
            )


@register_handler(Float8WeightOnlyConfig)
def _float8_weight_only(weight, config, fqn):
    return from_float_if_supported(Float8Tensor, weight, fqn)


@register_handler(Float8DynamicActivationFloat8WeightConfig)
def _float8_dynamic(weight, config, fqn):
    return from_float_if_supported(_DYNAMIC_CLASSES[config.granularity], weight, fqn)


# Float8 (e4m3): CUDA sm89+ only (supports() skips them elsewhere with the reason, before
# any timing). Row-wise dynamic is the fastest 8-bit format at large M on H100/H200.
register_candidate("float8_weight_only", Float8WeightOnlyConfig(), sets=("default", "float8", "all"))
register_candidate(
    "float8_dynamic_row",
    Float8DynamicActivationFloat8WeightConfig(granularity="row"),
    sets=("default", "float8", "all"),
    dynamic_activation=True,
)
register_candidate(
    "float8_dynamic_tensor",
    Float8DynamicActivationFloat8WeightConfig(granularity="tensor"),
    sets=("float8", "all"),
    dynamic_activation=True,
)
