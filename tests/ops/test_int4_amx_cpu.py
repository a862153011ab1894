"""lowbit/csrc/int4_amx_cpu.cpp (ops/cpu.py int4_tinygemm_amx): int4 weights on AMX tiles.

The kernel multiplies the raw codes (exact bf16 128 + q) and applies each group's scale and
zero point to the fp32 tile sums, so it is checked against the float64 product of the
bf16-rounded activations and the exact weights ``(q - 8) s + z`` within the bound of its fp32
sums: shapes across the tile height (M < 16 configures shorter tiles, M > 16 pads), N tails
(the last block's scalar loop), K across the 4096-k conversion chunk, every group size it
takes and every activation dtype. Then the Python checks and torch.compile. Runs only on
CPUs (and kernels) with AMX tiles; elsewhere the dispatch never picks this path.
"""

import pytest
import torch

from lowbit.ops import cpu as C
from lowbit.packing.int4 import tinygemm_cpu_layout

pytestmark = pytest.mark.skipif(
    tinygemm_cpu_layout() != "avx512" or not C.int4_amx_available(),
    reason="no AMX tiles here (or not the 64-row int4 packing, or no C++ extension)",
)


def _weight(n, k, g, gen):
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    qdata = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    n_pad = qdata.shape[0]
    s = torch.rand(k // g, n_pad, generator=gen) * 0.02 + 1e-3
    z = torch.randn(k // g, n_pad, generator=gen) * 0.01
    return codes, qdata, torch.stack([s, z], -1).to(torch.bfloat16).contiguous()


def _check(x, codes, qdata, sz, g):
    n, k = codes.shape
    y = C.int4_tinygemm_amx(x, qdata, sz, g, "avx512")
    assert y.dtype == x.dtype and tuple(y.shape) == (x.shape[0], qdata.shape[0])
    s = sz[..., 0].double()[:, :n].t().repeat_interleave(g, 1)
    z = sz[..., 1].double()[:, :n].t().repeat_interleave(g, 1)
    xb = x.to(torch.bfloat16).double()
    ref = xb @ ((codes.double() - 8) * s + z).t()
    # fp32 sums of exact products: terms up to |x| (128 + 15) |s| and the correction |z - 136 s| |x|
    mag = xb.abs() @ (144 * s.abs() + z.abs()).t()
    out_eps = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[x.dtype]
    bound = mag * (k * 2.0**-23) + ref.abs() * out_eps * 1.01 + 1e-30
    err = (y[:, :n].double() - ref).abs()
    assert bool((err <= bound).all()), f"max err / bound {(err / bound).max():.3g} at M,N,K,g={x.shape[0]},{n},{k},{g}"
    return y


SHAPES = [  # (M, N, K, group)
    (1, 64, 128, 128), (3, 128, 256, 32), (15, 64, 512, 64), (16, 192, 256, 256), (17, 80, 256, 128),
    (33, 1040, 1024, 64), (2, 64, 4224, 128), (5, 128, 8192, 32), (64, 128, 384, 128),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}g{g}" for m, n, k, g in SHAPES])
def test_matches_reference(shape, dtype):
    m, n, k, g = shape
    gen = torch.Generator().manual_seed(m * 7919 + n * 31 + k + g)
    codes, qdata, sz = _weight(n, k, g, gen)
    _check(torch.randn(m, k, generator=gen).to(dtype), codes, qdata, sz, g)


def test_fuzzed_shapes():
    gen = torch.Generator().manual_seed(11)
    for _ in range(12):
        g = (32, 64, 128, 256)[int(torch.randint(0, 4, (1,), generator=gen))]
        k = g * int(torch.randint(1, 9, (1,), generator=gen))
        n = 16 * int(torch.randint(1, 12, (1,), generator=gen))
        m = int(torch.randint(1, 40, (1,), generator=gen))
        codes, qdata, sz = _weight(n, k, g, gen)
        _check(torch.randn(m, k, generator=gen), codes, qdata, sz, g)


def test_m0_and_non_contiguous_x():
    codes, qdata, sz = _weight(64, 256, 128, torch.Generator().manual_seed(3))
    y = C.int4_tinygemm_amx(torch.zeros(0, 256), qdata, sz, 128, "avx512")
    assert tuple(y.shape) == (0, 64)
    x = torch.randn(512, 3)[:, 0].reshape(2, 256)  # a copy of strided columns
    _check(torch.randn(6, 512)[:, ::2], codes, qdata, sz, 128)
    _check(x, codes, qdata, sz, 128)


def test_bad_arguments_are_refused_before_cpp():
    codes, qdata, sz = _weight(64, 256, 128, torch.Generator().manual_seed(4))
    x = torch.randn(2, 256)
    with pytest.raises(ValueError, match="multiple of 32"):
        C.int4_tinygemm_amx(x, qdata, torch.zeros(16, 64, 2, dtype=torch.bfloat16), 16, "avx512")
    with pytest.raises(ValueError, match="layout must be one of"):
        C.int4_tinygemm_amx(x, qdata, sz, 128, "avx1024")
    with pytest.raises(ValueError, match="needs the 64-row 'avx512' packing"):
        C.int4_tinygemm_amx(x, qdata, sz, 128, "avx2")
    with pytest.raises(ValueError, match="K=128 but the weight has K=256"):
        C.int4_tinygemm_amx(torch.randn(2, 128), qdata, sz, 128, "avx512")
    with pytest.raises(TypeError, match="x must be a float tensor"):
        C.int4_tinygemm_amx(x.to(torch.int32), qdata, sz, 128, "avx512")
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
        C.int4_tinygemm_amx(x.double(), qdata, sz, 128, "avx512")
    with pytest.raises(ValueError, match="scale_and_zero must be"):
        C.int4_tinygemm_amx(x, qdata, sz[:1], 128, "avx512")


def test_compile_fullgraph_matches_eager():
    codes, qdata, sz = _weight(128, 256, 64, torch.Generator().manual_seed(5))
    x = torch.randn(3, 256)

    def f(x):
        return C.int4_tinygemm_amx(x, qdata, sz, 64, "avx512") + 1

    torch._dynamo.reset()
    y = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y, f(x))
