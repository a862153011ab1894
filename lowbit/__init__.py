"""lowbit: quantize PyTorch model weights (and activations) to int4/int8/float8.

Public API: ``quantize_``, the configs, ``FqnToConfig``, the packed tensor classes,
``sqnr``, and the safetensors helpers in ``lowbit.serialization``.
"""

import torch as _torch

_min_torch = (2, 11)
if tuple(int(p) for p in _torch.__version__.split("+")[0].split(".")[:2]) < _min_torch:
    raise ImportError(
        f"lowbit needs torch >= {'.'.join(map(str, _min_torch))}, found {_torch.__version__}; "
        "upgrade torch (CPU: pip install torch==2.13.0)"
    )

from . import autoquant, granularity, primitives  # noqa: E402  (autoquant is callable)
from .api import FqnToConfig, QuantizeReport, quantize_  # noqa: E402
from .config import BaseConfig  # noqa: E402
from .configs import (  # noqa: E402
    FloatCastConfig,
    Int4Packing,
    Int4WeightOnlyConfig,
    Int8DynamicActivationInt4WeightConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8WeightOnlyConfig,
)
from .env import env_report  # noqa: E402
from .errors import UnsupportedError  # noqa: E402
from .fuse import fuse_projections  # noqa: E402
from .primitives import sqnr  # noqa: E402
from .serialization import load_file, load_into, save_file  # noqa: E402
from .tensors import (  # noqa: E402
    FloatCastTensor,
    Int4MarlinTensor,
    Int4PlainTensor,
    Int4TiledCudaTensor,
    Int4TinygemmCpuTensor,
    Int4VnniCpuTensor,
    Int4XpuFloatZpTensor,
    Int4XpuTensor,
    Int8DynActTensor,
    Int8Tensor,
    LowbitTensor,
    UnsupportedOpError,
)

__version__ = "0.1.0"

__all__ = [
    "quantize_",
    "fuse_projections",
    "FqnToConfig",
    "QuantizeReport",
    "BaseConfig",
    "Int8WeightOnlyConfig",
    "Int8DynamicActivationInt8WeightConfig",
    "Int4WeightOnlyConfig",
    "Int4Packing",
    "Int8DynamicActivationInt4WeightConfig",
    "FloatCastConfig",
    "LowbitTensor",
    "Int8Tensor",
    "Int8DynActTensor",
    "Int4PlainTensor",
    "Int4TinygemmCpuTensor",
    "Int4TiledCudaTensor",
    "Int4MarlinTensor",
    "Int4XpuTensor",
    "Int4XpuFloatZpTensor",
    "Int4VnniCpuTensor",
    "FloatCastTensor",
    "UnsupportedError",
    "UnsupportedOpError",
    "sqnr",
    "env_report",
    "autoquant",
    "save_file",
    "load_file",
    "load_into",
    "primitives",
    "granularity",
]
