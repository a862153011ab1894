"""Helpers of the C++ kernel tests: pytest parameters per inner loop (the ``isa`` argument of
lowbit's C++ ops) and inputs at a chosen misalignment."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def isa_params(isas: dict[str, int], available: bool, best: Callable[[], int]) -> list:
    """One ``pytest.param`` per loop of ``isas`` (name -> value), skipped with the reason where
    this CPU cannot run it (or the extension is missing); evaluated at collection."""
    out = []
    for name, isa in isas.items():
        runs = available and isa <= best()
        marks = () if runs else pytest.mark.skip(reason=f"this CPU cannot run the {name} loop (best: {best()})")
        out.append(pytest.param(isa, id=name, marks=marks))
    return out


def at_offset(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data starts ``offset`` bytes past a 64-byte boundary
    (``offset`` a multiple of the element size)."""
    nbytes = t.numel() * t.element_size()
    buf = torch.empty(nbytes + 128, dtype=torch.uint8)
    start = (-buf.data_ptr()) % 64 + offset
    out = buf[start:start + nbytes].view(t.dtype).view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 64 == offset
    return out
