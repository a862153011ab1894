"""Property tests of the affine and float8 primitives (hypothesis) and their argument checks.

The properties are checked against quantities computed here from the returned qparams
(the representable grid, the scale), never against hard-coded outputs.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit
from lowbit import granularity as G
from lowbit import primitives as P

# LOWBIT_HYPOTHESIS_EXAMPLES=5000 for a deeper search than CI's.
_SETTINGS = settings(max_examples=int(os.environ.get("LOWBIT_HYPOTHESIS_EXAMPLES", "120")), deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
_F32_EPS = 2.0**-24  # unit roundoff of float32, where the primitives compute


# ----------------------------------------------------------------------------- strategies


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def shapes_and_blocks(draw):
    """A shape of 1-3 dims and a block size: per tensor/row/group/token or any divisors."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16, 32])) for _ in range(ndim))
    kind = draw(st.sampled_from(["tensor", "row", "group", "token", "any"]))
    if kind == "tensor":
        block = G.per_tensor(shape)
    elif kind in ("row", "token"):
        block = G.per_row(shape) if kind == "row" else G.per_token(shape)
    elif kind == "group":
        block = G.per_group(shape, draw(st.sampled_from(_divisors(shape[-1]))))
    else:
        block = tuple(draw(st.sampled_from(_divisors(s))) for s in shape)
    return shape, block


@st.composite
def int_schemes(draw):
    """(bits, signed, container, mapping, zero_point_kind) that choose_qparams accepts."""
    bits = draw(st.integers(2, 8))
    mapping = draw(st.sampled_from(list(P.MappingType)))
    zpk = draw(st.sampled_from(list(P.ZeroPointKind)))
    if mapping is P.MappingType.ASYMMETRIC and zpk is P.ZeroPointKind.NONE:
        zpk = P.ZeroPointKind.INT  # rejected combination: covered by the error tests
    signed = True if zpk is P.ZeroPointKind.NONE else draw(st.booleans())
    if signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        containers = [torch.int8, torch.int16, torch.int32]
    else:
        qmin, qmax = 0, 2**bits - 1
        containers = [torch.uint8, torch.int16, torch.int32] + ([torch.int8] if bits < 8 else [])
    container = draw(st.sampled_from(containers))
    return bits, qmin, qmax, container, mapping, zpk


@st.composite
def inputs(draw, shape, dtype):
    """A float tensor of ``shape``: random values with a drawn magnitude and offset, some zeros."""
    seed = draw(st.integers(0, 2**31 - 1))
    mag = draw(st.sampled_from([1e-3, 0.02, 1.0, 30.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 0.5, -2.0, 10.0]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * mag + offset * mag
    if draw(st.booleans()):  # make some elements exactly zero
        x = torch.where(torch.rand(shape, generator=g) < 0.2, torch.zeros(()), x)
    return x.to(dtype)


def _grid_params(scale, zp, zpk, qmin, qmax, shape, block):
    """float32 per-element scale and the dequantized value of qmin / qmax (the grid ends)."""
    s = P._expand_to_blocks(scale.float(), shape, block)

    def deq(code):
        q = torch.full(shape, code, dtype=torch.int32)
        return P.dequantize_affine(q, block, scale, zp, qmin, qmax, zpk, torch.float32)

    return s, deq(qmin), deq(qmax)


# ----------------------------------------------------------------------------- affine properties


@_SETTINGS
@given(data=st.data(), sb=shapes_and_blocks(), scheme=int_schemes(),
       in_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       scale_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       preserve_zero=st.booleans())
def test_affine_round_trip_error_at_most_half_a_step(data, sb, scheme, in_dtype, scale_dtype, preserve_zero):
    shape, block = sb
    bits, qmin, qmax, container, mapping, zpk = scheme
    x = data.draw(inputs(shape, in_dtype))
    scale, zp = P.choose_qparams_affine(
        x, mapping, block, container, qmin, qmax, scale_dtype=scale_dtype,
        preserve_zero=preserve_zero, zero_point_kind=zpk,
    )
    assert scale.dtype == scale_dtype
    assert scale.shape == tuple(s // b for s, b in zip(shape, block))
    assert (zp is None) == (zpk is P.ZeroPointKind.NONE)
    q = P.quantize_affine(x, block, scale, zp, container, qmin, qmax, zpk)
    assert q.dtype == container and q.shape == x.shape
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    y = P.dequantize_affine(q, block, scale, zp, qmin, qmax, zpk, torch.float32)
    assert y.dtype == torch.float32 and y.shape == x.shape

    xf = x.float()
    s, lo, hi = _grid_params(scale, zp, zpk, qmin, qmax, shape, block)
    # Rounding slack of the float32 arithmetic inside quantize/dequantize.
    zmag = torch.zeros_like(s) if zp is None else P._expand_to_blocks(zp.float().abs(), shape, block)
    if zpk is P.ZeroPointKind.INT:
        zmag = zmag * s
    tol = 16 * _F32_EPS * (xf.abs() + s * max(abs(qmin), abs(qmax)) + zmag)
    # Values within half a step of the grid ends are representable: nearest code, error <= s/2.
    inside = (xf >= lo - s / 2 - tol) & (xf <= hi + s / 2 + tol)
    err = (y - xf).abs()
    bad = inside & (err > s / 2 + tol)
    assert not bool(bad.any()), (
        f"max excess {float((err - s / 2 - tol)[inside].max())}, x={xf[bad][:4]}, y={y[bad][:4]}"
    )
    # The chosen qparams must cover the data whenever the grid is not degraded by storing
    # the scale/zero point in a narrow float or by an int zero point clamped to the range.
    covers_all = scale_dtype == torch.float32 and (
        mapping is P.MappingType.SYMMETRIC or preserve_zero or zpk is P.ZeroPointKind.FLOAT
    )
    if covers_all:
        assert bool(inside.all()), f"{int((~inside).sum())} of {x.numel()} values outside the grid"


@_SETTINGS
@given(data=st.data(), sb=shapes_and_blocks(), scheme=int_schemes(),
       scale_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       preserve_zero=st.booleans())
def test_zero_is_exact(data, sb, scheme, scale_dtype, preserve_zero):
    """0.0 round-trips exactly for symmetric mappings and for asymmetric with preserve_zero."""
    shape, block = sb
    bits, qmin, qmax, container, mapping, zpk = scheme
    exact_zero_promised = mapping is P.MappingType.SYMMETRIC or (
        preserve_zero and zpk is P.ZeroPointKind.INT
    )
    if not exact_zero_promised:
        return
    x = data.draw(inputs(shape, torch.float32))
    scale, zp = P.choose_qparams_affine(
        x, mapping, block, container, qmin, qmax, scale_dtype=scale_dtype,
        preserve_zero=preserve_zero, zero_point_kind=zpk,
    )
    zeros = torch.zeros(shape)
    q = P.quantize_affine(zeros, block, scale, zp, container, qmin, qmax, zpk)
    y = P.dequantize_affine(q, block, scale, zp, qmin, qmax, zpk, torch.float32)
    assert torch.equal(y, zeros), y[y != 0][:4]


@_SETTINGS
@given(data=st.data(), sb=shapes_and_blocks(), scheme=int_schemes(),
       scale_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_symmetric_never_uses_the_odd_code(data, sb, scheme, scale_dtype):
    """Symmetric codes are centre +- half: -128 in int8, -8 in int4, 0 in uint4 (centre 8) unused."""
    shape, block = sb
    bits, qmin, qmax, container, _, zpk = scheme
    x = data.draw(inputs(shape, torch.float32))
    scale, zp = P.choose_qparams_affine(
        x, "symmetric", block, container, qmin, qmax, scale_dtype=scale_dtype, zero_point_kind=zpk,
    )
    q = P.quantize_affine(x, block, scale, zp, container, qmin, qmax, zpk).to(torch.int32)
    centre = 0 if zpk is P.ZeroPointKind.NONE else (qmin + qmax + 1) // 2
    half = min(qmax - centre, centre - qmin)  # number of codes on the shorter side
    assert half == 2 ** (bits - 1) - 1
    assert int(q.min()) >= centre - half and int(q.max()) <= centre + half
    assert int(q.min()) > qmin  # the odd code out (lowest of an even-sized range) is never used


@pytest.mark.parametrize("container", [torch.int8, torch.uint8, torch.int32], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("zpk", ["int", "float"])
def test_int4_in_containers_uses_the_full_range(container, zpk):
    """int4 asymmetric per-group: all 16 codes reachable, stored in the requested container."""
    qmin, qmax = (-8, 7) if container is torch.int8 else (0, 15)
    x = torch.linspace(-1.0, 3.0, 64).reshape(2, 32)
    block = G.per_group(x.shape, 32)
    scale, zp = P.choose_qparams_affine(x, "asymmetric", block, container, qmin, qmax, zero_point_kind=zpk)
    q = P.quantize_affine(x, block, scale, zp, container, qmin, qmax, zpk)
    assert q.dtype == container
    assert sorted(set(q[0].tolist())) == list(range(qmin, qmax + 1))


@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mapping,zpk,container", [("symmetric", "none", torch.int8), ("asymmetric", "int", torch.uint8)],
                         ids=["sym", "asym"])
def test_low_precision_scale_dtype_keeps_small_weights_accurate(scale_dtype, mapping, zpk, container):
    """The default smallest scale must not floor the scales of LLM-sized weights (|w| ~ 0.05)
    when scales are stored in bf16/fp16: the SQNR stays within 1 dB of float32 scales."""
    w = (torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    block = G.per_row(w.shape)

    def round_trip(sd):
        s, z = P.choose_qparams_affine(w, mapping, block, container, scale_dtype=sd, zero_point_kind=zpk)
        q = P.quantize_affine(w, block, s, z, container, zero_point_kind=zpk)
        return lowbit.sqnr(w.float(), P.dequantize_affine(q, block, s, z, zero_point_kind=zpk))

    assert round_trip(scale_dtype) > round_trip(torch.float32) - 1.0


def test_quantize_clamps_out_of_range_values():
    """Values beyond the grid clamp to the end codes (no wrap-around in the container)."""
    x = torch.tensor([[-1.0, 0.5, 1.0]])
    scale = torch.tensor([[1.0 / 127]])
    q = P.quantize_affine(x * 10, (1, 3), scale, None, torch.int8, -127, 127, "none")
    assert q.tolist() == [[-127, 127, 127]]


# ----------------------------------------------------------------------------- argument errors


def _x(shape=(4, 8)):
    return torch.randn(shape)


_S = torch.ones(4, 1)
_Z = torch.zeros(4, 1, dtype=torch.int32)
_Q = torch.zeros(4, 8, dtype=torch.int8)

# (id, function, args, kwargs, exception, regex the message must match: expected + given)
_BAD_CALLS = [
    ("block-not-dividing", P.choose_qparams_affine, (_x(), "symmetric", (1, 3)), {},
     ValueError, r"block_size\[1\]=3 does not divide input dim 1 of size 8"),
    ("block-wrong-ndim", P.choose_qparams_affine, (_x(), "symmetric", (8,)), {},
     ValueError, r"one entry per input dimension.*2 dims, got block_size=\(8,\)"),
    ("block-zero", P.quantize_affine, (_x(), (0, 8), _S, _Z), {},
     ValueError, r"positive ints, got 0"),
    ("qmin-ge-qmax", P.choose_qparams_affine, (_x(), "asymmetric", (1, 8)),
     {"quant_min": 5, "quant_max": 5}, ValueError, r"quant_min must be < quant_max, got quant_min=5, quant_max=5"),
    ("range-not-fitting-int8", P.choose_qparams_affine, (_x(), "asymmetric", (1, 8), torch.int8),
     {"quant_min": 0, "quant_max": 255}, ValueError, r"\[0, 255\] does not fit in int8 \(range \[-128, 127\]\)"),
    ("range-not-fitting-uint8-quantize", P.quantize_affine, (_x(), (1, 8), _S, _Z, torch.uint8),
     {"quant_min": -8, "quant_max": 7}, ValueError, r"\[-8, 7\] does not fit in uint8"),
    ("qmin-not-int", P.quantize_affine, (_x(), (1, 8), _S, _Z, torch.int8),
     {"quant_min": 0.5, "quant_max": 7}, ValueError, r"must be ints, got 0.5"),
    ("nan-input", P.choose_qparams_affine, (torch.tensor([[1.0, float("nan")]]), "symmetric", (1, 2)), {},
     ValueError, r"1 NaN/Inf values out of 2"),
    ("inf-input-quantize", P.quantize_affine, (torch.tensor([[1.0, float("inf")]]), (1, 2), torch.ones(1, 1),
                                               torch.zeros(1, 1)), {},
     ValueError, r"1 NaN/Inf values out of 2"),
    ("int-input-choose", P.choose_qparams_affine, (torch.ones(4, 8, dtype=torch.int32), "symmetric", (1, 8)), {},
     ValueError, r"must be a float tensor .* got int32"),
    ("int-input-quantize", P.quantize_affine, (_Q, (1, 8), _S, _Z), {},
     ValueError, r"must be a float tensor .* got int8"),
    ("list-input-choose", P.choose_qparams_affine, ([[1.0, 2.0]], "symmetric", (1, 2)), {},
     TypeError, r"must be a torch.Tensor, got list"),
    ("float-input-dequantize", P.dequantize_affine, (_x(), (1, 8), _S, _Z), {},
     ValueError, r"needs integer codes .* got float32"),
    ("list-input-dequantize", P.dequantize_affine, ([[1, 2]], (1, 2), torch.ones(1, 1), torch.zeros(1, 1)), {},
     TypeError, r"needs a tensor of integer codes, got list"),
    ("float8-target-dtype", P.choose_qparams_affine, (_x(), "symmetric", (1, 8), torch.float8_e4m3fn), {},
     ValueError, r"target_dtype must be an integer container .* got float8_e4m3fn"),
    ("float-output-dtype-quantize", P.quantize_affine, (_x(), (1, 8), _S, _Z, torch.float16), {},
     ValueError, r"output_dtype must be an integer container .* got float16; for float8 use quantize_float8"),
    ("int-output-dtype-dequantize", P.dequantize_affine, (_Q, (1, 8), _S, _Z), {"output_dtype": torch.int32},
     ValueError, r"output_dtype must be a float dtype, got int32"),
    ("int-scale-dtype", P.choose_qparams_affine, (_x(), "symmetric", (1, 8)), {"scale_dtype": torch.int32},
     ValueError, r"scale_dtype must be a float dtype, got int32"),
    ("bad-eps", P.choose_qparams_affine, (_x(), "symmetric", (1, 8)), {"eps": -1.0},
     ValueError, r"eps must be a positive finite float, got -1.0"),
    ("scale-wrong-size", P.quantize_affine, (_x(), (1, 8), torch.ones(3, 1), _Z), {},
     ValueError, r"scale must have one entry per block \(4 = \[4, 1\]\), got \(3, 1\)"),
    ("scale-not-tensor", P.dequantize_affine, (_Q, (1, 8), 1.0, _Z), {},
     TypeError, r"scale must be a tensor with one entry per block, got float"),
    ("zero-point-not-tensor", P.quantize_affine, (_x(), (1, 8), _S, 0), {},
     TypeError, r"zero_point must be a tensor or None, got int"),
    ("float8-dequantize-list", P.dequantize_float8, ([1.0], (1,), torch.ones(1)), {},
     TypeError, r"needs a float8 tensor, got list"),
    ("zero-point-wrong-size", P.dequantize_affine, (_Q, (1, 8), _S, torch.zeros(8)), {},
     ValueError, r"zero_point must have one entry per block \(4\) for zero_point_kind='int', got \(8,\)"),
    ("zero-point-missing", P.quantize_affine, (_x(), (1, 8), _S, None), {},
     ValueError, r"zero_point must have one entry per block \(4\) .* got None"),
    ("zero-point-with-kind-none", P.quantize_affine, (_x(), (1, 8), _S, _Z), {"zero_point_kind": "none"},
     ValueError, r"zero_point_kind=NONE takes zero_point=None, got a tensor"),
    ("none-with-asymmetric", P.choose_qparams_affine, (_x(), "asymmetric", (1, 8)), {"zero_point_kind": "none"},
     ValueError, r"asymmetric mapping needs a zero point: got zero_point_kind=NONE"),
    ("none-with-unsigned", P.choose_qparams_affine, (_x(), "symmetric", (1, 8), torch.uint8),
     {"zero_point_kind": "none"}, ValueError, r"needs signed codes .* got \[0, 255\]"),
    ("bad-mapping-string", P.choose_qparams_affine, (_x(), "symetric", (1, 8)), {},
     ValueError, r"mapping_type must be one of 'symmetric', 'asymmetric', got 'symetric'"),
    ("bad-zero-point-kind", P.dequantize_affine, (_Q, (1, 8), _S, _Z), {"zero_point_kind": "integer"},
     ValueError, r"zero_point_kind must be one of 'int', 'float', 'none', got 'integer'"),
    ("float8-bad-dtype", P.choose_qparams_float8, (_x(), (4, 8), torch.int8), {},
     ValueError, r"float8_e4m3fn or float8_e5m2, got int8"),
    ("float8-quantize-bad-dtype", P.quantize_float8, (_x(), (4, 8), torch.ones(1, 1), torch.float16), {},
     ValueError, r"float8_e4m3fn or float8_e5m2, got float16"),
    ("float8-dequantize-int-input", P.dequantize_float8, (_Q, (4, 8), torch.ones(1, 1)), {},
     ValueError, r"needs a float8 tensor, got int8"),
    ("float8-scale-wrong-size", P.quantize_float8, (_x(), (1, 8), torch.ones(1, 1)), {},
     ValueError, r"scale must have one entry per block \(4 = \[4, 1\]\), got \(1, 1\)"),
    ("float8-nan", P.choose_qparams_float8, (torch.tensor([[float("nan"), 1.0]]), (1, 2)), {},
     ValueError, r"NaN/Inf"),
    ("per-group-not-dividing", G.per_group, ((4, 8), 3), {},
     ValueError, r"group_size=3 must be positive and divide the last dim 8"),
]


@pytest.mark.parametrize("fn,args,kwargs,exc,match", [c[1:] for c in _BAD_CALLS], ids=[c[0] for c in _BAD_CALLS])
def test_bad_arguments_raise_clear_errors(fn, args, kwargs, exc, match):
    inputs_before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
    for a, b in zip(args, inputs_before):  # user data unchanged
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()))


# ----------------------------------------------------------------------------- float8

_FLOAT8 = {
    # dtype: (mantissa bits, exponent of the smallest subnormal)
    torch.float8_e4m3fn: (3, -9),
    torch.float8_e5m2: (2, -16),
}


@_SETTINGS
@given(data=st.data(), f8=st.sampled_from(list(_FLOAT8)), per_row=st.booleans(),
       in_dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_float8_round_trip_error_bound(data, f8, per_row, in_dtype):
    rows, cols = data.draw(st.sampled_from([1, 3, 8])), data.draw(st.sampled_from([1, 5, 16]))
    x = data.draw(inputs((rows, cols), in_dtype))
    block = G.per_row(x.shape) if per_row else G.per_tensor(x.shape)
    scale = P.choose_qparams_float8(x, block, f8)
    assert scale.dtype == torch.float32 and scale.shape == tuple(s // b for s, b in zip(x.shape, block))
    q = P.quantize_float8(x, block, scale, f8)
    assert q.dtype == f8 and q.shape == x.shape
    assert bool(torch.isfinite(q.float()).all())
    # amax / scale lands on the float8 max (up to float32 rounding): the range is used fully.
    fmax = torch.finfo(f8).max
    amax_codes = q.float().abs().amax()
    assert amax_codes <= fmax
    y = P.dequantize_float8(q, block, scale, torch.float32)
    mant, sub_exp = _FLOAT8[f8]
    s = P._expand_to_blocks(scale, x.shape, block)
    xf = x.float()
    # Round to nearest: relative error <= 2^-(mant+1) for normals, half the smallest
    # subnormal (times the scale) below the normal range.
    bound = torch.maximum(xf.abs() * 2.0 ** -(mant + 1), s * 2.0 ** (sub_exp - 1))
    bound = bound * (1 + 8 * _F32_EPS) + s * 1e-30
    err = (y - xf).abs()
    assert bool((err <= bound).all()), float((err - bound).max())


@pytest.mark.parametrize("f8", list(_FLOAT8), ids=lambda d: str(d)[6:])
def test_float8_saturates_at_max(f8):
    fmax = torch.finfo(f8).max
    x = torch.tensor([[-1e6, -1.0, 0.0, 1.0, 1e6]])
    q = P.quantize_float8(x, (1, 5), torch.ones(1, 1), f8)
    assert q.float().tolist() == [[-fmax, -1.0, 0.0, 1.0, fmax]]


@pytest.mark.parametrize("f8", list(_FLOAT8), ids=lambda d: str(d)[6:])
def test_float8_amax_maps_to_max(f8):
    x = torch.tensor([[0.5, -3.0], [2.0, 1.0]])
    scale = P.choose_qparams_float8(x, G.per_row(x.shape), f8)
    q = P.quantize_float8(x, G.per_row(x.shape), scale, f8)
    fmax = torch.finfo(f8).max
    assert q.float().abs().amax(dim=1).tolist() == [fmax, fmax]


# ----------------------------------------------------------------------------- sqnr


def test_sqnr_equal_is_inf():
    x = torch.randn(3, 5)
    assert lowbit.sqnr(x, x.clone()) == math.inf


@pytest.mark.parametrize("noise_ratio", [1e-1, 1e-2, 3e-4])
def test_sqnr_of_known_noise(noise_ratio):
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(64, 32, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 32, generator=g, dtype=torch.float64)
    noise = noise * (noise_ratio * ref.norm() / noise.norm())  # ||noise|| = ratio * ||ref||
    expected = -20 * math.log10(noise_ratio)
    assert lowbit.sqnr(ref, ref + noise) == pytest.approx(expected, abs=1e-9)


def test_sqnr_of_zero_reference_is_minus_inf():
    assert lowbit.sqnr(torch.zeros(4), torch.ones(4)) == -math.inf


def test_sqnr_shape_mismatch():
    with pytest.raises(ValueError, match=r"one shape, got \(3, 4\) and \(4, 3\)"):
        lowbit.sqnr(torch.zeros(3, 4), torch.zeros(4, 3))
