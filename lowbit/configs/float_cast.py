"""Float cast config: keep a float weight, but compute the linear in another float dtype."""

from __future__ import annotations

import dataclasses

import torch

from ..autoquant.candidates import register_candidate
from ..config import BaseConfig, register_handler
from ..errors import UnsupportedError
from ..tensors.float_cast import FloatCastTensor

__all__ = ["FloatCastConfig"]

_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class FloatCastConfig(BaseConfig):
    """Store the weight in ``dtype`` and run the linear in it (input cast in, output cast back).

    Useful where the model's dtype has no fast kernel: e.g. bfloat16 models on CPUs
    without AVX512-BF16/AMX compute faster with ``dtype=torch.float32``.
    A layer whose weight already has ``dtype`` is skipped (nothing to change).
    """

    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if self.dtype not in _COMPUTE_DTYPES:
            raise ValueError(
                f"FloatCastConfig.dtype must be torch.float32, torch.float16 or torch.bfloat16, got {self.dtype!r}"
            )


@register_handler(FloatCastConfig)
def _float_cast(weight, config, fqn):
    reason = FloatCastTensor.supports(weight, weight.device)
    if reason is None and weight.dtype == config.dtype:
        reason = f"the weight is already {weight.dtype}; there is nothing to cast (keep the layer as it is)"
    if reason is not None:
        raise UnsupportedError(f"FloatCastTensor cannot serve {fqn or 'this layer'}: {reason}")
    return FloatCastTensor.from_float(weight, config.dtype)


register_candidate("cast_float32", FloatCastConfig(torch.float32), sets=("default", "float", "all"))
register_candidate("cast_bfloat16", FloatCastConfig(torch.bfloat16), sets=("default", "float", "all"))
register_candidate("cast_float16", FloatCastConfig(torch.float16), sets=("float", "all"))
