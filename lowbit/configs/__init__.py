"""Concrete configs, one module per format family; each registers its handler."""

from .int8 import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
from .float_cast import FloatCastConfig

__all__ = ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"]
__all__ += ["FloatCastConfig"]
from .da8w4 import Int8DynamicActivationInt4WeightConfig  # noqa: E402

__all__ += ["Int8DynamicActivationInt4WeightConfig"]
