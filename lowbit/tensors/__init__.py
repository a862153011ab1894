"""Packed weight formats: one tensor subclass per format, one module per format.

``__all__`` is derived: the base names plus every class the format modules registered in
``format_registry`` (a format is public by being defined).
"""

from . import (  # noqa: F401  (each module defines and registers its formats)
    float8,
    float_cast,
    int4_marlin,
    int4_plain,
    int4_tiled_cuda,
    int4_tinygemm_cpu,
    int4_triton_cuda,
    int4_vnni_cpu,
    int4_xpu,
    int4_xpu_float_zp,
    int8,
)
from .base import LowbitTensor, UnsupportedOpError, format_registry

globals().update({cls.__name__: cls for cls in format_registry.values()})

__all__ = ["LowbitTensor", "UnsupportedOpError", "format_registry", *(c.__name__ for c in format_registry.values())]
