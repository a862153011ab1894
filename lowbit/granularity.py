"""Granularities lowered to ``block_size`` tuples (see ``primitives``)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["per_tensor", "per_row", "per_axis", "per_group", "per_token"]


def per_tensor(shape: Sequence[int]) -> tuple[int, ...]:
    """One scale for the whole tensor."""
    return tuple(shape)


def per_axis(shape: Sequence[int], axis: int) -> tuple[int, ...]:
    """One scale per index of ``axis`` (each block spans every other dim)."""
    axis = axis % len(shape)
    return tuple(1 if d == axis else s for d, s in enumerate(shape))


def per_row(shape: Sequence[int]) -> tuple[int, ...]:
    """One scale per row: per output channel of an [N, K] weight."""
    return tuple([1] * (len(shape) - 1) + [shape[-1]])


def per_token(shape: Sequence[int]) -> tuple[int, ...]:
    """One scale per token of an activation [..., K] (same blocks as ``per_row``)."""
    return per_row(shape)


def per_group(shape: Sequence[int], group_size: int) -> tuple[int, ...]:
    """Groups of ``group_size`` consecutive elements along the last dim."""
    if group_size <= 0 or shape[-1] % group_size:
        raise ValueError(
            f"group_size={group_size} must be positive and divide the last dim {shape[-1]} "
            f"(shape {tuple(shape)}); pick a group size that divides {shape[-1]}"
        )
    return tuple([1] * (len(shape) - 1) + [group_size])
