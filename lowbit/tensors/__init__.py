"""Packed weight formats: one tensor subclass per format."""

from .base import LowbitTensor, UnsupportedOpError, format_registry
from .float_cast import FloatCastTensor
from .int4_marlin import Int4MarlinTensor
from .int4_plain import Int4PlainTensor
from .int4_tiled_cuda import Int4TiledCudaTensor
from .int4_triton_cuda import Int4TritonCudaTensor
from .int4_tinygemm_cpu import Int4TinygemmCpuTensor
from .int4_vnni_cpu import Int4VnniCpuTensor
from .int4_xpu import Int4XpuTensor
from .int4_xpu_float_zp import Int4XpuFloatZpTensor
from .int8 import Int8DynActTensor, Int8Tensor

__all__ = [
    "LowbitTensor",
    "UnsupportedOpError",
    "format_registry",
    "Int8Tensor",
    "Int8DynActTensor",
    "FloatCastTensor",
    "Int4PlainTensor",
    "Int4TinygemmCpuTensor",
    "Int4TiledCudaTensor",
    "Int4TritonCudaTensor",
    "Int4MarlinTensor",
    "Int4XpuTensor",
    "Int4XpuFloatZpTensor",
    "Int4VnniCpuTensor",
]
