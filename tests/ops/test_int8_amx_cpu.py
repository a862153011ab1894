"""lowbit/csrc/int8_amx_cpu.cpp (ops/cpu.py int8_dynamic_amx): exact int8 GEMM on AMX-INT8 tiles.

The int32 sums are exact, so the fp32 output must equal ``(float(xq @ q^T) * xs) * ws`` bit
for bit (bf16: that value rounded once): shapes across the kernel's tiles and tails (M not a
multiple of 16 / 32 / the 64-row cache block, an odd number of 16-row weight tiles, more
weight rows than one 256-row chunk), extreme codes. Then the Python checks. Runs only where
AMX-INT8 tiles are usable; elsewhere the dispatch never picks this path.
"""

import pytest
import torch

from lowbit.ops import cpu as C
from lowbit.ops.cpu_paths import int8_amx_available

pytestmark = pytest.mark.skipif(not int8_amx_available(), reason="no AMX-INT8 tiles here (or no C++ extension)")


def _expected(xq, q, xs, ws, dtype):
    acc = (xq.long() @ q.long().t()).to(torch.float32)  # exact: |sums| < 2^24 in these cases
    return (acc * xs.reshape(-1, 1) * ws.reshape(1, -1)).to(dtype)


def _run(m, n, k, gen, dtype=torch.float32, lo=-127, hi=127):
    xq = torch.randint(lo, hi + 1, (m, k), dtype=torch.int8, generator=gen)
    q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    xs = torch.rand(m, 1, generator=gen) * 0.01 + 1e-4
    ws = torch.rand(n, 1, generator=gen) * 0.01 + 1e-4
    x = torch.zeros(m, k, dtype=dtype)  # only its dtype and shape matter to the kernel
    y = C.int8_dynamic_amx(x, xq, xs, q, ws)
    want = _expected(xq, q, xs, ws, dtype)
    assert y.dtype == dtype and tuple(y.shape) == (m, n)
    if not torch.equal(y, want):
        bad = (y != want).nonzero()
        raise AssertionError(f"M,N,K={m},{n},{k} {dtype}: {len(bad)} outputs differ, first at {tuple(bad[0].tolist())}")


SHAPES = [(1, 16, 64), (5, 48, 128), (15, 32, 64), (17, 80, 576), (33, 64, 192), (63, 16, 128), (65, 96, 256),
          (200, 272, 128), (130, 544, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
def test_exact(shape, dtype):
    m, n, k = shape
    _run(m, n, k, torch.Generator().manual_seed(m * 131 + n * 7 + k), dtype)


def test_extreme_codes():
    k = 1024
    xq = torch.stack([torch.full((k,), v, dtype=torch.int8) for v in (-128, 127, -127)] * 6)
    q = torch.stack([torch.full((k,), v, dtype=torch.int8) for v in (-128, 127)] * 8)
    xs, ws = torch.ones(xq.shape[0], 1), torch.ones(q.shape[0], 1)
    y = C.int8_dynamic_amx(torch.zeros(xq.shape, dtype=torch.float32), xq, xs, q, ws)
    assert torch.equal(y, _expected(xq, q, xs, ws, torch.float32))


def test_the_dynamic_linear_takes_it_and_falls_back_for_other_shapes():
    from lowbit.ops.cpu_paths import forced_path

    gen = torch.Generator().manual_seed(3)
    for n, k in ((64, 128), (24, 128), (64, 100)):  # the last two: N % 16, K % 64 -> brgemm
        qd = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
        scale = torch.rand(n, 1, generator=gen) * 0.01
        x = torch.randn(7, k, generator=gen)
        with forced_path("int8_dynamic_linear", "amx"):
            y = C.int8_dynamic_linear(x, qd, scale)
        xq, xs = C.quantize_per_token_int8(x)
        ref = (xq.double() @ qd.double().t()) * xs.double() * scale.reshape(1, -1).double()
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused_before_cpp():
    xq, q = torch.zeros(2, 128, dtype=torch.int8), torch.zeros(32, 128, dtype=torch.int8)
    x, xs, ws = torch.zeros(2, 128), torch.ones(2, 1), torch.ones(32, 1)
    with pytest.raises(ValueError, match=r"K % 64 == 0 and N % 16 == 0"):
        C.int8_dynamic_amx(torch.zeros(2, 96), xq[:, :96].contiguous(), xs, q[:, :96].contiguous(), ws)
    with pytest.raises(ValueError, match=r"K % 64 == 0 and N % 16 == 0"):
        C.int8_dynamic_amx(x, xq, xs, q[:24].contiguous(), ws[:24])
    with pytest.raises(TypeError, match="xq must be int8"):
        C.int8_dynamic_amx(x, xq.float(), xs, q, ws)
    with pytest.raises(ValueError, match="xs must hold one scale per row"):
        C.int8_dynamic_amx(x, xq, torch.ones(3, 1), q, ws)
    with pytest.raises(ValueError, match="scale must hold one value per output channel"):
        C.int8_dynamic_amx(x, xq, xs, q, torch.ones(31, 1))
    y = C.int8_dynamic_amx(torch.zeros(0, 128), torch.zeros(0, 128, dtype=torch.int8), torch.ones(0, 1), q, ws)
    assert tuple(y.shape) == (0, 32)
