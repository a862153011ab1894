"""Schemas and fake (meta) implementations of lowbit's custom ops, in one place."""

from __future__ import annotations

import torch

__all__ = ["define"]

_LIB = torch.library.Library("lowbit", "DEF")  # noqa: TOR901 - lowbit owns this namespace


def define(schema: str):
    """Define ``lowbit::<schema>`` and register the decorated function as its fake impl."""
    name = schema.split("(", 1)[0]
    _LIB.define(schema)

    def decorator(fake):
        torch.library.register_fake(f"lowbit::{name}", lib=_LIB)(fake)
        return fake

    return decorator


def _linear_out(x, n):
    return x.new_empty((x.shape[0], n))


# x [M, K] float, qdata [N, K] int8, scale [N, 1] float32 -> [M, N] in x.dtype
@define("int8_weight_only_linear(Tensor x, Tensor qdata, Tensor scale) -> Tensor")
def _int8_weight_only_linear_fake(x, qdata, scale):
    torch._check(x.dim() == 2 and qdata.dim() == 2, lambda: "x and qdata must be 2-D")
    torch._check(x.shape[1] == qdata.shape[1], lambda: f"K mismatch: x {x.shape}, qdata {qdata.shape}")
    return _linear_out(x, qdata.shape[0])


# Same operands; x is quantized per token to int8 inside the op.
@define("int8_dynamic_linear(Tensor x, Tensor qdata, Tensor scale) -> Tensor")
def _int8_dynamic_linear_fake(x, qdata, scale):
    torch._check(x.dim() == 2 and qdata.dim() == 2, lambda: "x and qdata must be 2-D")
    torch._check(x.shape[1] == qdata.shape[1], lambda: f"K mismatch: x {x.shape}, qdata {qdata.shape}")
    return _linear_out(x, qdata.shape[0])
