"""Accuracy bar for autoquant: output SQNR of a candidate layer against the float layer.

The reference is the float layer computed in float32 (its own weight and bias, upcast),
so the figure measures what the candidate loses, not the model dtype's own rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..primitives import sqnr

__all__ = ["DEFAULT_MIN_SQNR", "reference_output", "output_sqnr", "make_activation"]

# Default accuracy bar, in dB of output SQNR per layer (20 log10 ||y|| / ||y - y_q||).
# 30 dB = output error energy 0.1% of the signal. Per-channel int8 weights measure about
# 38-42 dB on LLM-like layers, int8 dynamic activations about 33-38 dB, so int8 passes;
# group-wise int4 (about 18-24 dB) fails unless the user lowers the bar on purpose
# (min_sqnr=None or e.g. 18). Errors of stacked layers add up, so a per-layer bar well
# above the 20 dB of int4 keeps whole-model drift small by default.
DEFAULT_MIN_SQNR = 30.0


def make_activation(shape, dtype: torch.dtype, device, seed: int = 0) -> torch.Tensor:
    """A reproducible random activation of ``shape`` (standard normal)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g).to(dtype=dtype, device=device)


def reference_output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The float layer's output on ``x``, computed in float32."""
    with torch.no_grad():
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


def output_sqnr(
    x: torch.Tensor, ref: torch.Tensor, qweight: torch.Tensor, bias: torch.Tensor | None
) -> float:
    """SQNR (dB) of ``F.linear(x, qweight, bias)`` against the float32 reference ``ref``."""
    with torch.no_grad():
        y = F.linear(x, qweight, bias)
    return sqnr(ref, y.float())
