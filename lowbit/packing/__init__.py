"""Bit-packing helpers: every ``pack_*`` has an exact ``unpack_*`` inverse, one module per family."""

from . import int4, int4_vnni
from .int4 import *  # noqa: F403  (each family module's __all__ is its public API)
from .int4_vnni import *  # noqa: F403

__all__ = [*int4.__all__, *int4_vnni.__all__]
