"""Granularities lower to block sizes; the scales they give have one entry per block."""

import pytest
import torch

from lowbit import granularity as G
from lowbit import primitives as P

# (id, function, args, expected block size, expected scale shape)
_CASES = [
    ("tensor-2d", G.per_tensor, ((6, 8),), (6, 8), (1, 1)),
    ("tensor-3d", G.per_tensor, ((2, 3, 4),), (2, 3, 4), (1, 1, 1)),
    ("row-2d", G.per_row, ((6, 8),), (1, 8), (6, 1)),
    ("token-3d", G.per_token, ((2, 3, 8),), (1, 1, 8), (2, 3, 1)),
    ("axis0", G.per_axis, ((6, 8), 0), (1, 8), (6, 1)),
    ("axis-1", G.per_axis, ((6, 8), -1), (6, 1), (1, 8)),
    ("group4", G.per_group, ((6, 8), 4), (1, 4), (6, 2)),
    ("group-whole-row", G.per_group, ((6, 8), 8), (1, 8), (6, 1)),
    ("group1-3d", G.per_group, ((2, 3, 8), 1), (1, 1, 1), (2, 3, 8)),
]


@pytest.mark.parametrize("fn,args,block,scale_shape", [c[1:] for c in _CASES], ids=[c[0] for c in _CASES])
def test_block_size_and_scale_shape(fn, args, block, scale_shape):
    assert fn(*args) == block
    x = torch.randn(args[0])
    scale, zp = P.choose_qparams_affine(x, "asymmetric", fn(*args), torch.uint8)
    assert tuple(scale.shape) == scale_shape and tuple(zp.shape) == scale_shape


def test_per_group_scale_matches_independent_group_amax():
    x = torch.randn(4, 12)
    scale, _ = P.choose_qparams_affine(x, "symmetric", G.per_group(x.shape, 3), torch.int8,
                                       zero_point_kind="none")
    expected = x.reshape(4, 4, 3).abs().amax(-1) / 127
    torch.testing.assert_close(scale, expected)


@pytest.mark.parametrize("group_size", [0, -4, 5], ids=lambda g: f"gs{g}")
def test_per_group_rejects_non_dividing_group(group_size):
    with pytest.raises(ValueError, match=rf"group_size={group_size} must be positive and divide the last dim 8 "
                                         r"\(shape \(4, 8\)\)"):
        G.per_group((4, 8), group_size)
