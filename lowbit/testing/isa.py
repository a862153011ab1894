"""pytest parameters for a CPU kernel's inner loops (the ``isa`` argument of lowbit's C++ ops)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def isa_params(isas: dict[str, int], available: bool, best: Callable[[], int]) -> list:
    """One ``pytest.param`` per loop of ``isas`` (name -> value), skipped with the reason where
    this CPU cannot run it (or the extension is missing); evaluated at collection."""
    out = []
    for name, isa in isas.items():
        runs = available and isa <= best()
        marks = () if runs else pytest.mark.skip(reason=f"this CPU cannot run the {name} loop (best: {best()})")
        out.append(pytest.param(isa, id=name, marks=marks))
    return out
