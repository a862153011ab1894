"""Concrete configs, one module per format family; each registers its handler."""

from .int8 import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

__all__ = ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"]
from .int4 import Int4Packing, Int4WeightOnlyConfig, int4_class_for  # noqa: E402

__all__ += ["Int4WeightOnlyConfig", "Int4Packing", "int4_class_for"]
