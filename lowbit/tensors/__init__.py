"""Packed weight formats: one tensor subclass per format."""

from .base import LowbitTensor, UnsupportedOpError, format_registry
from .int8 import Int8DynActTensor, Int8Tensor

__all__ = ["LowbitTensor", "UnsupportedOpError", "format_registry", "Int8Tensor", "Int8DynActTensor"]
from .int4_plain import Int4PlainTensor  # noqa: E402
from .int4_tinygemm_cpu import Int4TinygemmCpuTensor  # noqa: E402

__all__ += ["Int4PlainTensor", "Int4TinygemmCpuTensor"]
