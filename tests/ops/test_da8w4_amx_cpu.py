"""lowbit/csrc/da8w4_amx_cpu.cpp (ops/cpu.py da8w4_linear, path "amx"): DA8W4 on AMX-INT8 tiles.

The tiles give the same exact int32 group sums as the VNNI kernel (da8w4_cpu.cpp). With
symmetric activations (no zero-point correction) the fp32 chain over the groups is the VNNI
kernel's too, so the outputs must be equal bit for bit; with asymmetric activations the
correction is applied once after the groups (sa (sum_g s D_g - zc R)), so they may differ by
fp32 summation order only. Shapes cover the kernel's tiles and tails: M below / at / past one
16-row tile and the 32-row pair and 64-row cache block, an odd number of 16-column blocks
(a single-block tail), groups of 32 (k step 32) and 64 / 128 / 256 (k step 64), K long enough
for several cache blocks. Runs only where AMX-INT8 tiles are usable; elsewhere the dispatch
never picks this path.
"""

import pytest
import torch

import lowbit
from lowbit.ops import cpu as C
from lowbit.ops import reference
from lowbit.ops.cpu_paths import da8w4_amx_available, forced_path
from lowbit.tensors import Int4VnniCpuTensor
from lowbit.testing import make_weight

pytestmark = pytest.mark.skipif(not da8w4_amx_available(), reason="no AMX-INT8 tiles here (or no C++ extension)")

SHAPES = [(1, 16, 256, 32), (7, 80, 512, 128), (15, 48, 1024, 64), (16, 32, 256, 256), (17, 208, 1024, 64),
          (33, 16, 8192, 256), (63, 96, 576, 32), (65, 112, 384, 128), (130, 544, 256, 64), (200, 48, 4096, 128)]


def _case(m, n, k, g, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    t = Int4VnniCpuTensor.from_float(make_weight((n, k), seed=seed), group_size=g)
    x = torch.randn(m, k, generator=gen)
    x[0, :5] = 40.0  # an outlier row: codes far from the zero point
    if m > 2:
        x[2] = x[2].abs()  # no negatives: zero point 0 (asymmetric)
    return x.to(dtype), t


def _amx(x, t, g, symmetric, out_bf16):
    codes, sa, za, _ = torch.ops.lowbit_ext.da8w4_quantize_act(x, g, symmetric)
    return torch.ops.lowbit_ext.da8w4_amx_gemm(codes, sa, za, t.qdata, t.scale, t.zero_point, t.qsum, g, out_bf16)


def _vnni(x, t, g, symmetric):
    return torch.ops.lowbit_ext.da8w4_linear(x, t.qdata, t.scale, t.zero_point, t.qsum, g, symmetric)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}g{g}" for m, n, k, g in SHAPES])
def test_symmetric_equals_the_vnni_kernel_bitwise(shape):
    m, n, k, g = shape
    x, t = _case(m, n, k, g, seed=m * 31 + n + k)
    y = _amx(x, t, g, True, False)
    ref = _vnni(x, t, g, True)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    if not torch.equal(y, ref):
        bad = (y != ref).nonzero()
        raise AssertionError(f"{shape}: {len(bad)} outputs differ, first at {tuple(bad[0].tolist())}")
    assert torch.equal(_amx(x, t, g, True, True), ref.to(torch.bfloat16))


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}g{g}" for m, n, k, g in SHAPES])
def test_asymmetric_matches_the_vnni_kernel(shape):
    m, n, k, g = shape
    x, t = _case(m, n, k, g, seed=m * 17 + n + k)
    y = _amx(x, t, g, False, False)
    ref = _vnni(x, t, g, False)
    # fp32 summation order only: a normwise bound (an output that cancels to ~0 keeps an
    # absolute error of the size of the others' rounding). A wrong block, group, tail or
    # zero point is off by whole codes: far below 100 dB.
    assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert lowbit.sqnr(ref, y) > 110
    assert torch.equal(_amx(x, t, g, False, True), y.to(torch.bfloat16))


def test_against_the_pure_pytorch_reference():
    x, t = _case(40, 208, 1024, 128, seed=5)
    for mapping in ("asymmetric", "symmetric"):
        y = _amx(x, t, 128, mapping == "symmetric", False)
        ref = reference.da8w4_linear(x, t.qdata, t.scale, t.zero_point, t.qsum, 128, mapping)
        assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_extreme_codes():
    # Weights at 0 and 15 with zero points 0 / 15, activations at both ends of [0, 255]: the
    # largest |a - 128| x |q - z| products and the largest group corrections.
    n, k, g = 32, 512, 128
    w = torch.zeros(n, k)
    w[0::2] = 1.0  # a constant positive row: q = 15 at z = 0 after the min/max grid
    w[1::2, ::2] = -1.0
    w[1::2, 1::2] = 1.0
    t = Int4VnniCpuTensor.from_float(w, group_size=g)
    x = torch.stack([torch.full((k,), 1.0), torch.full((k,), -1.0), torch.linspace(-3, 1, k), torch.linspace(0, 9, k)])
    for symmetric in (True, False):
        y = _amx(x, t, g, symmetric, False)
        ref = _vnni(x, t, g, symmetric)
        assert (y - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_nan_row_stays_in_its_row():
    x, t = _case(20, 64, 256, 64, seed=2)
    x[3, 7] = float("nan")
    for symmetric in (True, False):
        y = _amx(x, t, 64, symmetric, False)
        assert torch.isnan(y[3]).all()
        keep = torch.ones(20, dtype=torch.bool)
        keep[3] = False
        assert torch.isfinite(y[keep]).all()
        ref = _vnni(x, t, 64, symmetric)
        assert (y[keep] - ref[keep]).abs().max() <= 1e-5 * ref[keep].abs().max()


def test_same_result_at_any_thread_count():
    x, t = _case(70, 400, 1024, 128, seed=9)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = _amx(x, t, 128, False, False)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(_amx(x, t, 128, False, False), y1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_linear_op_takes_it_and_falls_back_for_groups_of_16(dtype):
    for g in (128, 16):  # 16: not a multiple of the tile's k step -> the VNNI kernel
        x, t = _case(24, 64, 512, g, seed=g, dtype=dtype)
        with forced_path("da8w4_linear", "amx"):
            y = C.da8w4_linear(x, t.qdata, t.scale, t.zero_point, t.qsum, g, "asymmetric")
        ref = reference.da8w4_linear(x, t.qdata, t.scale, t.zero_point, t.qsum, g, "asymmetric")
        assert y.dtype == dtype and y.shape == (24, 64)
        tol = 1e-5 if dtype == torch.float32 else 2**-7
        assert (y.float() - ref.float()).abs().max() <= tol * ref.float().abs().max()


def test_the_module_path_compiles():
    lin = torch.nn.Linear(256, 64, bias=False)
    model = torch.nn.Sequential(lin)
    lowbit.quantize_(model, lowbit.Int8DynamicActivationInt4WeightConfig(group_size=64))
    x = torch.randn(40, 256)
    with forced_path("da8w4_linear", "amx"):
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert torch.equal(eager, compiled)


def test_unserved_groups_never_reach_the_kernel():
    # Groups of 48 (not a multiple of the tile's k step) and 4096 (|Qc| past 16 bits) take the
    # VNNI kernel: the Python side decides, so no C++ check throws (an exception thrown inside
    # the extension crashed the process on the GPU host's toolchain, tests/ops/test_int8_amx_cpu.py).
    for g, k in ((48, 192), (4096, 4096)):
        x, t = _case(5, 32, k, g, seed=g)
        with forced_path("da8w4_linear", "amx"):
            y = C.da8w4_linear(x, t.qdata, t.scale, t.zero_point, t.qsum, g, "asymmetric")
        assert torch.equal(y, _vnni(x, t, g, False))
