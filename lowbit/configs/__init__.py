"""Concrete configs, one module per format family; each registers its handler."""

from .int8 import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
from .float_cast import FloatCastConfig

__all__ = ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"]
__all__ += ["FloatCastConfig"]
