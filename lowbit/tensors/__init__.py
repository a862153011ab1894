"""Packed weight formats: one tensor subclass per format."""

from .base import LowbitTensor, UnsupportedOpError, format_registry
from .int8 import Int8DynActTensor, Int8Tensor

__all__ = ["LowbitTensor", "UnsupportedOpError", "format_registry", "Int8Tensor", "Int8DynActTensor"]
from .int4_marlin import Int4MarlinTensor  # noqa: E402
from .int4_tiled_cuda import Int4TiledCudaTensor  # noqa: E402
from .int4_xpu import Int4XpuTensor  # noqa: E402
from .int4_xpu_float_zp import Int4XpuFloatZpTensor  # noqa: E402

__all__ += ["Int4TiledCudaTensor", "Int4MarlinTensor", "Int4XpuTensor", "Int4XpuFloatZpTensor"]
