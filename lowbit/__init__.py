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

from . import autoquant, configs, granularity, primitives, tensors  # noqa: E402  (autoquant is callable)
from .api import FqnToConfig, QuantizeReport, quantize_  # noqa: E402
from .config import BaseConfig  # noqa: E402
from .configs import *  # noqa: E402,F403
from .env import env_report  # noqa: E402
from .errors import UnsupportedError  # noqa: E402
from .fuse import fuse_projections  # noqa: E402
from .primitives import sqnr  # noqa: E402
from .serialization import load_file, load_into, save_file  # noqa: E402
from .tensors import *  # noqa: E402,F403
from .tune import tune  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "quantize_",
    "fuse_projections",
    "FqnToConfig",
    "QuantizeReport",
    "BaseConfig",
    *configs.__all__,
    *tensors.__all__,
    "UnsupportedError",
    "sqnr",
    "env_report",
    "tune",
    "autoquant",
    "save_file",
    "load_file",
    "load_into",
    "primitives",
    "granularity",
]


def __getattr__(name):
    # ``lowbit.hf`` (the transformers integration) imports transformers, so it loads on
    # first use rather than with ``import lowbit``.
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
