"""lowbit/ops/cpu_int8_gemv.py (lowbit/csrc/int8_wo_gemv.cpp): int8 weight-only GEMV.

Every inner loop this CPU runs is compared with a float64 reference, ``x @ q.T * scale``,
within the fp32-accumulation bound (plus the output dtype's rounding): shapes that cross
every tile and tail of the kernel (M tiles of 1-4 rows, 4-row weight blocks, 16/8-wide k
vectors, the prefetch switch at K = 2048), every activation dtype, extreme codes,
unaligned and non-contiguous inputs. Then the Python argument checks (bad input must never
reach the C++ code), M = 0 and torch.compile.
"""

import random

import pytest
import torch

from lowbit.ops import cpu_int8_gemv as G
from lowbit.testing.kernels import at_offset, isa_params

pytestmark = pytest.mark.skipif(
    not G.int8_gemv_available(), reason="lowbit's C++ CPU extension (with int8_wo_gemv) is not built here"
)


ISAS = isa_params(G.INT8_GEMV_ISAS, G.int8_gemv_available(), G.int8_gemv_best_isa)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative rounding of the output dtype (half an ulp).
_OUT_EPS = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _check(x, q, scale, isa):
    y = G.int8_wo_gemv(x, q, scale, isa)
    xd, qd, sd = x.double(), q.double(), scale.reshape(-1).double()
    ref = xd @ qd.t() * sd
    # fp32 sums: each partial sum rounds by <= 2^-24 of its size, at most K of them in a row
    mag = xd.abs() @ qd.abs().t() * sd.abs()
    k = max(x.shape[1], 1)
    bound = mag * (k * 2.0**-24) + ref.abs() * _OUT_EPS[x.dtype] * 1.01 + 1e-30
    assert y.dtype == x.dtype and tuple(y.shape) == tuple(ref.shape)
    err = (y.double() - ref).abs()
    if not bool((err <= bound).all()):
        i = int((err - bound).argmax())
        raise AssertionError(f"isa={isa} {x.dtype} M,N,K={x.shape[0]},{q.shape[0]},{q.shape[1]}: "
                             f"error {err.flatten()[i]:.3g} > bound {bound.flatten()[i]:.3g}")
    return y


def _inputs(m, n, k, gen, dtype=torch.float32):
    x = torch.randn(m, k, generator=gen).to(dtype)
    q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    scale = torch.rand(n, 1, generator=gen) * 0.02 + 1e-4
    return x, q, scale


# (M, N, K): M tiles and remainders (1..9), N tails (N % 4), K tails (K % 16, K % 8, K < 8),
# short rows (prefetched into L1) and long ones (K > 2048: into L2), one decode-size layer.
SHAPES = [
    (1, 64, 64), (3, 33, 7), (5, 13, 33), (2, 1, 1), (4, 4, 17), (7, 9, 15), (8, 64, 4096),
    (9, 7, 130), (1, 576, 576), (6, 6, 2049), (1, 5, 4100), (3, 130, 100), (16, 12, 48),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
def test_matches_reference(isa, dtype, shape):
    m, n, k = shape
    gen = torch.Generator().manual_seed(m * 1_000_003 + n * 1009 + k)
    _check(*_inputs(m, n, k, gen, dtype), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_matches_reference_fuzzed_shapes(isa):
    rnd = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    for _ in range(40):
        m, n, k = rnd.randint(1, 12), rnd.randint(1, 40), rnd.randint(1, 300)
        _check(*_inputs(m, n, k, gen, rnd.choice(DTYPES)), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_vector_loops_agree_with_the_scalar_loop(isa):
    gen = torch.Generator().manual_seed(8)
    x, q, scale = _inputs(5, 37, 301, gen)
    y, y0 = G.int8_wo_gemv(x, q, scale, isa), G.int8_wo_gemv(x, q, scale, 0)
    # both within the fp32 bound of the exact sum, so within twice that of each other
    mag = x.double().abs() @ q.double().abs().t() * scale.reshape(-1).double()
    assert bool(((y.double() - y0.double()).abs() <= mag * (2 * x.shape[1] * 2.0**-24)).all())
    assert not torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize("isa", ISAS)
def test_extreme_codes_and_large_activations(isa):
    k = 4096
    q = torch.stack([torch.full((k,), -128, dtype=torch.int8), torch.full((k,), 127, dtype=torch.int8),
                     torch.randint(-128, 128, (k,), dtype=torch.int8, generator=torch.Generator().manual_seed(9))])
    x = torch.stack([torch.full((k,), 3e4), torch.full((k,), -1e-3), torch.randn(k) * 100])
    _check(x, q, torch.tensor([1.0, 0.5, 2.0]), isa)
    _check(x.half(), q, torch.tensor([1e-6, 1e-6, 1e-6]), isa)  # outputs stay inside fp16's range




@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("offset", [1, 8, 36])
def test_unaligned_storage(isa, offset):
    gen = torch.Generator().manual_seed(10)
    for m, n, k in [(5, 9, 200), (1, 4, 64), (3, 33, 1000)]:
        x, q, scale = _inputs(m, n, k, gen)
        off_x = offset - offset % 4  # fp32 elements start on 4-byte boundaries
        _check(at_offset(x, off_x), at_offset(q, offset), scale, isa)


@pytest.mark.parametrize("isa", ISAS)
def test_non_contiguous_inputs(isa):
    gen = torch.Generator().manual_seed(11)
    big = torch.randn(6, 300, generator=gen)
    x = big[:, ::2]
    q = torch.randint(-128, 128, (150, 11), dtype=torch.int8, generator=gen).t()
    scale = torch.rand(22, generator=gen)[::2]
    assert not x.is_contiguous() and not q.is_contiguous() and not scale.is_contiguous()
    _check(x, q, scale, isa)


def test_auto_isa_is_the_best_and_runs():
    assert G.int8_gemv_best_isa() in G.INT8_GEMV_ISAS.values()
    x, q, scale = _inputs(3, 10, 100, torch.Generator().manual_seed(12))
    assert torch.equal(G.int8_wo_gemv(x, q, scale), G.int8_wo_gemv(x, q, scale, G.int8_gemv_best_isa()))


def test_m0_n0_k0():
    y = G.int8_wo_gemv(torch.zeros(0, 64), torch.zeros(7, 64, dtype=torch.int8), torch.ones(7))
    assert y.dtype == torch.float32 and tuple(y.shape) == (0, 7)
    y = G.int8_wo_gemv(torch.ones(3, 8).bfloat16(), torch.zeros(0, 8, dtype=torch.int8), torch.ones(0))
    assert y.dtype == torch.bfloat16 and tuple(y.shape) == (3, 0)
    y = G.int8_wo_gemv(torch.ones(3, 0), torch.zeros(5, 0, dtype=torch.int8), torch.ones(5))
    assert torch.equal(y, torch.zeros(3, 5))


def test_serves_only_what_the_kernel_takes_without_copies():
    x, q, s = torch.randn(2, 16), torch.zeros(3, 16, dtype=torch.int8), torch.ones(3, 1)
    assert G.int8_gemv_serves(x, q, s)
    assert not G.int8_gemv_serves(x.double(), q, s)
    assert not G.int8_gemv_serves(x[:, ::2], q[:, ::2], s)
    assert not G.int8_gemv_serves(x, q.to(torch.uint8), s)
    assert not G.int8_gemv_serves(x, q, s.bfloat16())
    assert not G.int8_gemv_serves(x, q, torch.ones(4))
    assert not G.int8_gemv_serves(x, torch.zeros(3, 15, dtype=torch.int8), s)


# ---------------------------------------------------------------------- argument checks

_X = torch.zeros(2, 16)
_Q = torch.zeros(3, 16, dtype=torch.int8)
_S = torch.ones(3, 1)


@pytest.mark.parametrize(
    "x, q, s, isa, exc, match",
    [
        (_X.double(), _Q, _S, -1, TypeError, r"x must be a 2-D float32/bfloat16/float16 \[M, K\] tensor, got torch.float64"),
        (_X.to(torch.int8), _Q, _S, -1, TypeError, r"x must be a 2-D float32/bfloat16/float16"),
        (_X[0], _Q, _S, -1, TypeError, r"got torch.float32 \(16,\)"),
        (_X, _Q.int(), _S, -1, TypeError, r"q must be the int8 \[N, K\] weight codes, got torch.int32"),
        (_X, _Q.reshape(3, 4, 4), _S, -1, TypeError, r"q must be the int8 \[N, K\] weight codes"),
        (_X, torch.zeros(3, 15, dtype=torch.int8), _S, -1, ValueError, r"K differs"),
        (_X, _Q, torch.ones(4), -1, ValueError, r"one float per output channel \(3\)"),
        (_X, _Q, torch.ones(3, dtype=torch.int32), -1, ValueError, r"one float per output channel"),
        (_X, _Q, _S, 3, ValueError, r"isa must be -1 \(auto\) or one of"),
        (_X, _Q, _S, 1.0, TypeError, r"isa must be an int"),
        (_X, _Q, _S, True, TypeError, r"isa must be an int"),
        (_X.numpy(), _Q, _S, -1, TypeError, r"x must be a torch.Tensor"),
        (_X, _Q, _S.tolist(), -1, TypeError, r"scale must be a torch.Tensor"),
    ],
    ids=["x-f64", "x-int8", "x-1d", "q-int32", "q-3d", "k-mismatch", "scale-count", "scale-int", "isa-3",
         "isa-float", "isa-bool", "x-numpy", "scale-list"],
)
def test_bad_arguments_raise_clear_errors(x, q, s, isa, exc, match):
    with pytest.raises(exc, match=match):
        G.int8_wo_gemv(x, q, s, isa)


def test_isa_this_cpu_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(G, "int8_gemv_best_isa", lambda: 0)  # as on a CPU without AVX2
    with pytest.raises(ValueError, match=r"isa 1 cannot run on this CPU \(the best it runs is 0\); pass isa=-1"):
        G.int8_wo_gemv(_X, _Q, _S, 1)


# ---------------------------------------------------------------------- torch.compile


def test_compile_fullgraph_matches_eager():
    x, q, scale = _inputs(3, 20, 64, torch.Generator().manual_seed(13))

    def f(x, q, scale):
        return G.int8_wo_gemv(x, q, scale) * 2

    torch._dynamo.reset()
    y = torch.compile(f, fullgraph=True, backend="aot_eager")(x, q, scale)
    torch.testing.assert_close(y, f(x, q, scale))
