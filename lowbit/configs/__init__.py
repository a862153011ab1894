"""Concrete configs, one module per format family; each registers its handler and its
autoquant candidates. ``__all__`` is the union of the modules' own ``__all__``.
"""

# Import order = autoquant candidate registration order (reports and ties follow it).
# isort: off
from . import int8, float_cast, int4, da8w4, float8
from .int8 import *  # noqa: F403
from .float_cast import *  # noqa: F403
from .int4 import *  # noqa: F403
from .da8w4 import *  # noqa: F403
from .float8 import *  # noqa: F403
# isort: on

__all__ = [*int8.__all__, *float_cast.__all__, *int4.__all__, *da8w4.__all__, *float8.__all__]
