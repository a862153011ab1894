"""Test helpers shared by lowbit's tests and by formats outside lowbit."""

from .conformance import FormatConformance, assert_same_tensor, make_weight, skip_unless_supported

__all__ = ["FormatConformance", "assert_same_tensor", "make_weight", "skip_unless_supported"]
