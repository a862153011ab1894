"""Concrete configs, one module per format family; each registers its handler."""

from .da8w4 import Int8DynamicActivationInt4WeightConfig
from .float8 import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig
from .float_cast import FloatCastConfig
from .int4 import Int4Packing, Int4WeightOnlyConfig, int4_class_for
from .int8 import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

__all__ = [
    "Int8WeightOnlyConfig",
    "Int8DynamicActivationInt8WeightConfig",
    "Int4WeightOnlyConfig",
    "Int4Packing",
    "int4_class_for",
    "Int8DynamicActivationInt4WeightConfig",
    "FloatCastConfig",
    "Float8WeightOnlyConfig",
    "Float8DynamicActivationFloat8WeightConfig",
]
