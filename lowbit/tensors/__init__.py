"""Packed weight formats: one tensor subclass per format."""

from .base import LowbitTensor, UnsupportedOpError, format_registry
from .int8 import Int8DynActTensor, Int8Tensor
from .float_cast import FloatCastTensor

__all__ = ["LowbitTensor", "UnsupportedOpError", "format_registry", "Int8Tensor", "Int8DynActTensor"]
__all__ += ["FloatCastTensor"]
