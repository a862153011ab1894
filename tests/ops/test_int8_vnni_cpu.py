"""lowbit/ops/cpu_int8_vnni.py (lowbit/csrc/int8_vnni_cpu.cpp): exact int8 x int8 -> int32 GEMM.

Every inner loop this CPU runs is compared bit for bit with ``xq.long() @ q.long().T``:
shapes that cross every block and tail of the kernel (M tiles, the 4-row weight blocks,
the 64-byte k vectors), extreme codes, unaligned and non-contiguous inputs. Then the
Python argument checks (bad input must never reach the C++ code), M = 0 and torch.compile.
"""

import random

import pytest
import torch

from lowbit.ops import cpu_int8_vnni as V
from lowbit.testing.kernels import at_offset, isa_params

pytestmark = pytest.mark.skipif(
    not V.int8_vnni_available(), reason="lowbit's C++ CPU extension (with int8_vnni_gemm) is not built here"
)


ISAS = isa_params(V.INT8_VNNI_ISAS, V.int8_vnni_available(), V.int8_vnni_best_isa)


def _ref(xq, q):
    # int64 products and sums: exact; every case here fits int32.
    return (xq.long() @ q.long().t()).to(torch.int32)


def _codes(shape, gen, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, dtype=torch.int8, generator=gen)


def _assert_exact(xq, q, isa):
    y = V.int8_vnni_gemm(xq, q, isa)
    ref = _ref(xq, q)
    assert y.dtype == torch.int32 and tuple(y.shape) == tuple(ref.shape)
    if not torch.equal(y, ref):
        bad = (y != ref).nonzero()
        raise AssertionError(
            f"isa={isa} M,N,K={tuple(xq.shape)[0]},{q.shape[0]},{q.shape[1]}: {len(bad)} wrong outputs, "
            f"first at {tuple(bad[0].tolist())}: {y[tuple(bad[0])]} vs {ref[tuple(bad[0])]}"
        )


# (M, N, K): the brief's shapes, M tiles (1..4 rows and their remainders), N tails (N % 4),
# K tails (K % 64, K < 64, K = 1), a 4096x4096-like block structure at a smaller size.
SHAPES = [
    (1, 64, 64), (3, 33, 7), (17, 100, 130), (40, 16, 2051), (70, 37, 200),
    (16, 512, 1024), (64, 68, 4096), (1, 1, 1), (2, 3, 63), (5, 7, 65), (4, 4, 128),
    (7, 9, 129), (9, 5, 1000), (65, 6, 64), (33, 130, 192), (8, 2, 4097),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
def test_exact(isa, shape):
    m, n, k = shape
    gen = torch.Generator().manual_seed(m * 1_000_003 + n * 1009 + k)
    _assert_exact(_codes((m, k), gen), _codes((n, k), gen, -128, 127), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_exact_fuzzed_shapes(isa):
    rnd = random.Random(1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        m, n, k = rnd.randint(1, 70), rnd.randint(1, 40), rnd.randint(1, 300)
        _assert_exact(_codes((m, k), gen), _codes((n, k), gen, -128, 127), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_extreme_codes(isa):
    # All-extreme K = 4096 rows: the largest |dot products| a per-token int8 activation
    # meets (127 * 128 * 4096 = 2^31 - 2^19), every sign combination, and -128 activations
    # (outside the per-token codes' range, still exact).
    k = 4096
    gen = torch.Generator().manual_seed(2)
    x_vals = torch.tensor([-127, 127], dtype=torch.int8)
    q_vals = torch.tensor([-128, 127], dtype=torch.int8)
    rows = [torch.full((k,), v, dtype=torch.int8) for v in (-127, 127, -128)]
    rows += [x_vals[torch.randint(0, 2, (k,), generator=gen)] for _ in range(3)]
    xq = torch.stack(rows)
    wrows = [torch.full((k,), v, dtype=torch.int8) for v in (-128, 127)]
    wrows += [q_vals[torch.randint(0, 2, (k,), generator=gen)] for _ in range(5)]
    q = torch.stack(wrows)
    _assert_exact(xq, q, isa)
    # the extremes with K tails and single rows
    for kk in (1, 7, 64, 4095):
        _assert_exact(xq[:, :kk].contiguous(), q[:, :kk].contiguous(), isa)
        _assert_exact(xq[:1, :kk].contiguous(), q[:1, :kk].contiguous(), isa)




@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("offset", [1, 3, 32])
def test_unaligned_storage(isa, offset):
    gen = torch.Generator().manual_seed(3)
    for m, n, k in [(5, 9, 200), (1, 4, 64), (16, 33, 1000)]:
        xq, q = _codes((m, k), gen), _codes((n, k), gen, -128, 127)
        _assert_exact(at_offset(xq, offset), at_offset(q, offset), isa)
        _assert_exact(at_offset(xq, 0), at_offset(q, offset), isa)


@pytest.mark.parametrize("isa", ISAS)
def test_non_contiguous_inputs(isa):
    gen = torch.Generator().manual_seed(4)
    big = _codes((6, 300), gen)
    xq = big[:, ::2]  # strided columns
    q = _codes((150, 11), gen, -128, 127).t()  # a transposed [K, N] buffer seen as [N, K]
    assert not xq.is_contiguous() and not q.is_contiguous()
    _assert_exact(xq, q, isa)
    _assert_exact(big[1::2, 7:157], q, isa)  # row slices with a column offset


def test_auto_isa_is_the_best_and_runs():
    assert V.int8_vnni_best_isa() in V.INT8_VNNI_ISAS.values()
    gen = torch.Generator().manual_seed(5)
    xq, q = _codes((3, 100), gen), _codes((10, 100), gen, -128, 127)
    assert torch.equal(V.int8_vnni_gemm(xq, q), V.int8_vnni_gemm(xq, q, V.int8_vnni_best_isa()))


def test_m0_returns_empty_int32():
    q = torch.zeros(7, 64, dtype=torch.int8)
    y = V.int8_vnni_gemm(torch.zeros(0, 64, dtype=torch.int8), q)
    assert y.dtype == torch.int32 and tuple(y.shape) == (0, 7)


def test_k0_and_n0():
    y = V.int8_vnni_gemm(torch.zeros(3, 0, dtype=torch.int8), torch.zeros(5, 0, dtype=torch.int8))
    assert torch.equal(y, torch.zeros(3, 5, dtype=torch.int32))
    y = V.int8_vnni_gemm(torch.zeros(3, 8, dtype=torch.int8), torch.zeros(0, 8, dtype=torch.int8))
    assert y.dtype == torch.int32 and tuple(y.shape) == (3, 0)


# ---------------------------------------------------------------------- argument checks

_X = torch.zeros(2, 16, dtype=torch.int8)
_Q = torch.zeros(3, 16, dtype=torch.int8)


@pytest.mark.parametrize(
    "xq, q, isa, exc, match",
    [
        (_X.to(torch.uint8), _Q, -1, TypeError, r"xq must be int8 \[M, K\], got torch.uint8"),
        (_X.float(), _Q, -1, TypeError, r"xq must be int8 \[M, K\], got torch.float32"),
        (_X, _Q.int(), -1, TypeError, r"q must be int8 \[N, K\], got torch.int32"),
        (_X[0], _Q, -1, ValueError, r"xq must be 2-D \[M, K\], got shape \(16,\)"),
        (_X, _Q.reshape(3, 4, 4), -1, ValueError, r"q must be 2-D \[N, K\], got shape \(3, 4, 4\)"),
        (_X, torch.zeros(3, 15, dtype=torch.int8), -1, ValueError, r"K differs \(16 vs 15\)"),
        (_X, _Q.t().contiguous(), -1, ValueError, r"K differs \(16 vs 3\)"),
        (_X, _Q, 3, ValueError, r"isa must be -1 \(auto\) or one of"),
        (_X, _Q, -2, ValueError, r"isa must be -1 \(auto\) or one of"),
        (_X, _Q, 1.0, TypeError, r"isa must be an int"),
        (_X, _Q, True, TypeError, r"isa must be an int"),
        (_X.numpy(), _Q, -1, TypeError, r"xq must be a torch.Tensor"),
    ],
    ids=["xq-uint8", "xq-float", "q-int32", "xq-1d", "q-3d", "k-mismatch", "q-transposed", "isa-3",
         "isa-neg2", "isa-float", "isa-bool", "xq-numpy"],
)
def test_bad_arguments_raise_clear_errors(xq, q, isa, exc, match):
    with pytest.raises(exc, match=match):
        V.int8_vnni_gemm(xq, q, isa)


def test_isa_this_cpu_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(V, "int8_vnni_best_isa", lambda: 0)  # as on a CPU without AVX2
    with pytest.raises(ValueError, match=r"isa 1 cannot run on this CPU \(the best it runs is 0\); pass isa=-1"):
        V.int8_vnni_gemm(_X, _Q, 1)


def test_m0_is_checked_too():
    with pytest.raises(ValueError, match="K differs"):
        V.int8_vnni_gemm(torch.zeros(0, 8, dtype=torch.int8), _Q)


# ---------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(6)
    xq, q = _codes((5, 130), gen), _codes((12, 130), gen, -128, 127)

    def f(xq, q):
        return V.int8_vnni_gemm(xq, q) * 2 + 1

    compiled = torch.compile(f, fullgraph=True, backend=backend)
    assert torch.equal(compiled(xq, q), f(xq, q))
    assert torch.equal(compiled(xq, q), _ref(xq, q) * 2 + 1)


# ------------------------------------------------------------------ per-token quantizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("isa", [-1, 1, 0], ids=["auto", "avx2", "scalar"])
@pytest.mark.parametrize("m,k", [(1, 1), (2, 15), (3, 17), (5, 64), (33, 130), (7, 4096)], ids=str)
def test_quantize_per_token_is_bit_identical_to_the_reference(dtype, isa, m, k):
    from lowbit.ops.cpu_int8_vnni import quantize_per_token_int8
    from lowbit.ops.reference import quantize_per_token_int8 as reference

    g = torch.Generator().manual_seed(m * 1000 + k)
    for scale in (1e-4, 1.0, 300.0):
        x = (torch.randn(m, k, generator=g) * scale).to(dtype)
        if m > 2:
            x[1] = 0  # scale clamps to FLT_EPSILON
            if k >= 4:  # exact ties of x / scale: round half to even
                x[2, :4] = torch.tensor([127.0, 63.5, -2.5, 1.5]).to(dtype)
        q, s = quantize_per_token_int8(x, isa)
        rq, rs = reference(x)
        assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (m, 1)
        assert torch.equal(q, rq) and torch.equal(s, rs)


def test_quantize_per_token_falls_back_for_what_the_kernel_does_not_take():
    from lowbit.ops.cpu_int8_vnni import quantize_per_token_int8
    from lowbit.ops.reference import quantize_per_token_int8 as reference

    x = torch.randn(4, 8, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(quantize_per_token_int8(x), reference(x)))
    with pytest.raises(ValueError, match="isa must be"):
        quantize_per_token_int8(torch.randn(2, 8), isa=3)


# ------------------------------------------------------------------ fused linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("isa", [-1, 1, 0], ids=["auto", "avx2", "scalar"])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 576, 576), (3, 37, 130), (4, 20, 64), (7, 64, 4096), (17, 5, 33)],
                         ids=str)
def test_fused_linear_is_bit_identical_to_the_composition(dtype, isa, m, n, k):
    from lowbit.ops.cpu_int8_vnni import int8_vnni_best_isa, int8_vnni_gemm, int8_vnni_linear, quantize_per_token_int8

    if isa > int8_vnni_best_isa():
        pytest.skip(f"isa {isa} cannot run on this CPU")
    g = torch.Generator().manual_seed(m * 7919 + n * 31 + k)
    x = (torch.randn(m, k, generator=g) * 3).to(dtype)
    q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    ws = torch.rand(n, 1, generator=g) * 1e-2
    y = int8_vnni_linear(x, q, ws, isa)
    xq, xs = quantize_per_token_int8(x)
    ref = (int8_vnni_gemm(xq, q, isa).to(torch.float32) * xs * ws.reshape(1, -1)).to(dtype)
    assert y.dtype == dtype and y.shape == (m, n)
    assert torch.equal(y, ref)


def test_fused_linear_bad_input_and_empty_batch():
    from lowbit.ops.cpu_int8_vnni import int8_vnni_linear

    q = torch.zeros(8, 16, dtype=torch.int8)
    assert int8_vnni_linear(torch.zeros(0, 16), q, torch.ones(8)).shape == (0, 8)
    with pytest.raises(ValueError, match="x must be a 2-D float32/bfloat16/float16"):
        int8_vnni_linear(torch.zeros(2, 16, dtype=torch.float64), q, torch.ones(8))
    with pytest.raises(ValueError, match="K differs"):
        int8_vnni_linear(torch.zeros(2, 15), q, torch.ones(8))
    with pytest.raises(ValueError, match="per-channel scales"):
        int8_vnni_linear(torch.zeros(2, 16), q, torch.ones(7))
    with pytest.raises(TypeError, match="q must be int8"):
        int8_vnni_linear(torch.zeros(2, 16), q.float(), torch.ones(8))


def test_fused_linear_serves_only_what_the_kernel_takes():
    # lowbit/ops/cpu.py calls the extension directly when this says yes: every case the C++
    # TORCH_CHECKs would reject must say no (and then goes through the validating wrapper).
    from lowbit.ops.cpu_int8_vnni import int8_vnni_linear_serves as serves

    x, q, ws = torch.randn(3, 64, dtype=torch.bfloat16), torch.zeros(8, 64, dtype=torch.int8), torch.ones(8, 1)
    assert serves(x, q, ws)
    assert not serves(x[:0], q, ws)                                  # M = 0
    assert not serves(x.double(), q, ws)                             # activation dtype
    assert not serves(x.reshape(3, 8, 8), q, ws)                     # 3-D
    assert not serves(torch.randn(64, 3, dtype=torch.bfloat16).t(), q, ws)  # strided
    assert not serves(x[:, :63], q, ws)                              # K differs
    assert not serves(x, q.float(), ws)                              # codes dtype
    assert not serves(x, torch.zeros(16, 64, dtype=torch.int8)[::2], ws)  # strided codes
    assert not serves(x, q, ws.double())                             # scale dtype
    assert not serves(x, q, torch.ones(7))                           # one scale per row
    assert not serves(x, q, torch.ones(16)[::2])                     # strided scales


def test_int8_dynamic_linear_direct_call_matches_the_wrapper():
    # The direct extension call of the int8-dynamic linear (strided activations copied first)
    # gives the validating wrapper's bits.
    import lowbit
    from lowbit.ops.cpu import int8_dynamic_linear
    from lowbit.ops.cpu_int8_vnni import int8_vnni_linear

    w = torch.randn(40, 96)
    t = lowbit.tensors.Int8DynActTensor.from_float(w.to(torch.bfloat16))
    for x in (torch.randn(3, 96, dtype=torch.bfloat16), torch.randn(96, 3, dtype=torch.bfloat16).t()):
        with lowbit.ops.cpu_paths.forced_path("int8_dynamic_linear", "vnni"):
            y = int8_dynamic_linear(x, t.qdata, t.scale)
        assert torch.equal(y, int8_vnni_linear(x, t.qdata, t.scale))
