"""autoquant: pick the fastest format per layer on this device, above an accuracy bar.

``lowbit.autoquant(model, example_inputs)`` is callable (this module forwards calls to
``search.autoquant``); the pieces are here too::

    plan = lowbit.autoquant(model, (x,))             # calibrate, measure, quantize
    print(plan.report.to_markdown())
    plan.save("plan.json")
    lowbit.quantize_(other_model, lowbit.autoquant.Plan.load("plan.json"))  # no benchmarking

    session = lowbit.autoquant(model, manual=True)   # several shapes, your own loop
    model(x1); model(x2)
    plan = model.finalize_autoquant()                # or lowbit.autoquant.finalize(model)

New formats add candidates with ``register_candidate(name, config, sets=(...))``.
"""

import sys as _sys
import types as _types

from . import candidates
from .accuracy import DEFAULT_MIN_SQNR
from .bench import BenchmarkCache, Measure, TimingRequest, device_name, measure
from .candidates import *  # noqa: F403  (the candidate registry's API, candidates.__all__)
from .plan import Plan
from .report import AutoquantReport, CandidateResult, LayerReport
from .search import DEFAULT_INTERPOLATION, AutoquantSession, Mode, autoquant, finalize

__all__ = [
    "autoquant",
    "finalize",
    "Mode",
    "Plan",
    "AutoquantSession",
    "AutoquantReport",
    "LayerReport",
    "CandidateResult",
    "BenchmarkCache",
    "TimingRequest",
    "measure",
    "Measure",
    "device_name",
    *candidates.__all__,
    "DEFAULT_MIN_SQNR",
    "DEFAULT_INTERPOLATION",
]


class _CallableModule(_types.ModuleType):
    """Lets ``lowbit.autoquant(model, ...)`` call the function while ``lowbit.autoquant.Plan``
    etc. stay module attributes."""

    def __call__(self, *args, **kwargs):
        return autoquant(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
