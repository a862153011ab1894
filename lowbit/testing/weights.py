"""Reproducible test weights (shared by the conformance suite and its mixins)."""

from __future__ import annotations

import torch

__all__ = ["make_weight"]


def make_weight(shape, dtype=torch.bfloat16, device="cpu", seed=0, heavy_tail=False) -> torch.Tensor:
    """A reproducible random weight (Student-t when ``heavy_tail``, like real LLM weights)."""
    g = torch.Generator().manual_seed(seed)
    if heavy_tail:
        w = torch.distributions.StudentT(torch.tensor(4.0)).sample(shape) * 0.02
    else:
        w = torch.randn(shape, generator=g) * 0.02
    return w.to(dtype=dtype, device=device)
