"""CPU kernel paths: every path this machine can run vs the reference, forced one by one;
the brgemm kernels alone (vector and scalar weight conversion, K tails, odd N,
unaligned storage); the dispatch table (no machine's thresholds assumed); lowbit.tune."""

import json

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.ops import cpu as cpu_ops
from lowbit.ops import cpu_paths, reference
from lowbit.tensors import Int4TinygemmCpuTensor, Int4VnniCpuTensor, Int8Tensor
from lowbit.testing import make_weight


@pytest.fixture(autouse=True)
def _no_tune_cache(tmp_path, monkeypatch):
    # A tune cache on the developer's machine must not steer these tests.
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    cpu_paths.clear_tuned_cache()
    yield
    cpu_paths.clear_tuned_cache()


def _caps() -> int:
    return cpu_paths._brgemm_caps()


_needs_bf16_brgemm = pytest.mark.skipif(not _caps() & 1, reason="no bf16 brgemm here (needs AMX or AVX512-BF16, and the extension)")
_needs_u8s8_brgemm = pytest.mark.skipif(not _caps() & 2, reason="no u8s8 brgemm here (needs AMX or AVX512-VNNI, and the extension)")

_ALL_PATHS = [(op, p) for op, paths in cpu_paths.PATHS.items() for p in paths]


def _run_op(op, x, seed=0):
    n, k = 72, x.shape[1]
    if op == "int4_tinygemm_cpu_linear":
        t = Int4TinygemmCpuTensor.from_float(make_weight((n, k), seed=seed), group_size=64)
        args = (t.qdata, t.scale_and_zero, 64, n, t.cpu_layout)
    elif op == "da8w4_linear":
        t = Int4VnniCpuTensor.from_float(make_weight((n + 8, k), seed=seed), group_size=64)
        args = (t.qdata, t.scale, t.zero_point, t.qsum, 64, "asymmetric")
    else:
        t = Int8Tensor.from_float(make_weight((n, k), torch.float32, seed=seed))
        args = (t.qdata, t.scale)
    return getattr(cpu_ops, op)(x, *args), getattr(reference, op)(x, *args)


@pytest.mark.parametrize("op,path", _ALL_PATHS, ids=lambda v: str(v))
@pytest.mark.parametrize("m", [1, 5, 33])
def test_every_available_path_matches_reference(op, path, m):
    if not cpu_paths.path_available(op, path):
        pytest.skip(f"{op} path {path} cannot run on this machine (class {cpu_paths.isa_class()})")
    x = torch.randn(m, 256).to(torch.bfloat16)
    with cpu_paths.forced_path(op, path):
        y, ref = _run_op(op, x)
    assert y.shape == ref.shape and y.dtype == x.dtype
    # bf16 activations and outputs: ~50 dB; the int4 weight's own error is not in this.
    assert lowbit.sqnr(ref.float(), y.float()) > 35, (op, path, m)
    assert lowbit.sqnr(ref.float(), y.float()) > 40


@pytest.mark.parametrize("op,path", _ALL_PATHS, ids=lambda v: str(v))
def test_every_available_path_handles_m_zero(op, path):
    if not cpu_paths.path_available(op, path):
        pytest.skip(f"{op} path {path} cannot run on this machine")
    with cpu_paths.forced_path(op, path):
        y, ref = _run_op(op, torch.randn(0, 256).to(torch.bfloat16))
    assert y.shape == ref.shape and y.shape[0] == 0 and y.shape[1] >= 72


# ------------------------------------------------------------------ brgemm kernels alone


def _unaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data starts 1 element past an aligned address."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


@_needs_bf16_brgemm
@pytest.mark.parametrize("isa", [-1, 0], ids=["vector", "scalar"])
@pytest.mark.parametrize("m,n,k", [(1, 64, 64), (17, 100, 130), (3, 33, 7), (40, 16, 1030)], ids=str)
@pytest.mark.parametrize("unaligned", [False, True])
def test_int8_bf16_brgemm_any_k_any_n_any_alignment(isa, m, n, k, unaligned):
    x = torch.randn(m, k).to(torch.bfloat16)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    if unaligned:
        x, q = _unaligned(x), _unaligned(q)
    y = torch.ops.lowbit_ext.int8_brgemm_bf16(x, q, None, False, isa)
    ref = x.float() @ q.float().t()
    assert lowbit.sqnr(ref, y) > 100  # exact products, fp32 sums
    # The fused epilogue: the same fp32 products as (y * ws).to(bf16), rounded the same way.
    ws = torch.rand(n) + 0.5
    assert torch.equal(torch.ops.lowbit_ext.int8_brgemm_bf16(x, q, ws, False, isa), y * ws)
    assert torch.equal(torch.ops.lowbit_ext.int8_brgemm_bf16(x, q, ws, True, isa), (y * ws).to(torch.bfloat16))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_int8_brgemms_split_rows_where_blocks_do_not_split_evenly(threads):
    # 570 rows = 9 blocks of 64 (the last 58): on 2 threads at M = 300 the rows are split
    # between the threads instead (row_split in wo_gemm_cpu.cpp); 1 and 3 threads do not.
    caps = _caps()
    if not caps & 3:
        pytest.skip("no brgemm here (needs AMX or AVX512-BF16/VNNI, and the extension)")
    x = torch.randn(300, 200).to(torch.bfloat16)
    xq = torch.randint(-127, 128, (300, 200), dtype=torch.int8)
    q = torch.randint(-127, 128, (570, 200), dtype=torch.int8)
    ws, xs = torch.rand(570) + 0.5, torch.rand(300) + 0.5
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        if caps & 1:
            y = torch.ops.lowbit_ext.int8_brgemm_bf16(x, q, ws, False, -1)
            ref = (x.double() @ q.double().t() * ws.double()).float()
            assert lowbit.sqnr(ref, y) > 100
        if caps & 2:
            y = torch.ops.lowbit_ext.int8_brgemm_u8s8(xq, q, None, None, False, -1)
            assert torch.equal(y, (xq.long() @ q.long().t()).to(torch.int32))
            ys = torch.ops.lowbit_ext.int8_brgemm_u8s8(xq, q, xs, ws, False, -1)
            assert torch.equal(ys, y.float() * xs[:, None] * ws)
    finally:
        torch.set_num_threads(old)


@_needs_u8s8_brgemm
@pytest.mark.parametrize("isa", [-1, 0], ids=["vector", "scalar"])
@pytest.mark.parametrize("m,n,k", [(1, 64, 64), (17, 100, 130), (3, 33, 7), (40, 16, 2051)], ids=str)
@pytest.mark.parametrize("unaligned", [False, True])
def test_int8_u8s8_brgemm_is_exact(isa, m, n, k, unaligned):
    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    if unaligned:
        xq, q = _unaligned(xq), _unaligned(q)
    y = torch.ops.lowbit_ext.int8_brgemm_u8s8(xq, q, None, None, False, isa)
    assert torch.equal(y.long(), xq.long() @ q.long().t())
    xs, ws = torch.rand(m) + 0.5, torch.rand(n) + 0.5
    scaled = y.float() * xs[:, None] * ws[None, :]
    assert torch.equal(torch.ops.lowbit_ext.int8_brgemm_u8s8(xq, q, xs, ws, False, isa), scaled)
    assert torch.equal(torch.ops.lowbit_ext.int8_brgemm_u8s8(xq, q, xs, ws, True, isa), scaled.to(torch.bfloat16))


@_needs_bf16_brgemm
@pytest.mark.parametrize("isa", [-1, 0], ids=["vector", "scalar"])
@pytest.mark.parametrize("m,n,k,group", [(1, 64, 256, 32), (7, 80, 512, 64), (33, 208, 1024, 256), (2, 16, 128, 128),
                                         (70, 144, 4608, 128)], ids=str)
def test_int4_brgemm_matches_reference(isa, m, n, k, group):
    # N tails: 80 = 64 + a 16-row pair-packed block; 16 = only a tail block. 144 x 4608: an
    # odd number of blocks (two share each activation tile without AMX) and k chunks with a
    # short last one, accumulated into C.
    t = Int4TinygemmCpuTensor.from_float(make_weight((n, k), seed=n), group_size=group)
    x = torch.randn(m, k).to(torch.bfloat16)
    y = cpu_ops.int4_tinygemm_brgemm(x, t.qdata, t.scale_and_zero, group, t.cpu_layout, isa)[:, :n]
    ref = reference.int4_tinygemm_cpu_linear(x.float(), t.qdata, t.scale_and_zero, group, n, t.cpu_layout)
    assert lowbit.sqnr(ref.float(), y.float()) > 45


@_needs_bf16_brgemm
@pytest.mark.parametrize("m", [37, 300])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_int4_brgemm_any_thread_count_and_block_grouping(threads, m):
    # 576 rows: 9 weight blocks of 64 (or 18 of 32). Without AMX blocks go in pairs unless
    # pairs would load one thread more than single blocks (2 threads: singles), so both
    # groupings and an odd last task run depending on the thread count; with M = 300 on 2
    # threads the 9 blocks do not split evenly and the rows are split instead (150 each:
    # two full token tiles and a short one).
    t = Int4TinygemmCpuTensor.from_float(make_weight((576, 512), seed=5), group_size=64)
    x = torch.randn(m, 512).to(torch.bfloat16)
    ref = reference.int4_tinygemm_cpu_linear(x.float(), t.qdata, t.scale_and_zero, 64, 576, t.cpu_layout)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y = cpu_ops.int4_tinygemm_brgemm(x, t.qdata, t.scale_and_zero, 64, t.cpu_layout)[:, :576]
    finally:
        torch.set_num_threads(old)
    assert lowbit.sqnr(ref.float(), y.float()) > 45


@_needs_bf16_brgemm
def test_int4_brgemm_vector_and_scalar_dequantize_agree():
    t = Int4TinygemmCpuTensor.from_float(make_weight((128, 512), seed=1), group_size=128)
    x = torch.randn(9, 512).to(torch.bfloat16)
    a = cpu_ops.int4_tinygemm_brgemm(x, t.qdata, t.scale_and_zero, 128, t.cpu_layout, -1)
    b = cpu_ops.int4_tinygemm_brgemm(x, t.qdata, t.scale_and_zero, 128, t.cpu_layout, 0)
    # The two differ only by fma vs mul+add before the bf16 rounding of a weight.
    assert lowbit.sqnr(b.float(), a.float()) > 50


@pytest.mark.parametrize(
    "call,exc",
    [
        (lambda: cpu_ops.int8_weight_only_brgemm(torch.randn(2, 3, 4), torch.zeros(5, 4, dtype=torch.int8),
                                                 torch.ones(5, 1)), ValueError),
        (lambda: cpu_ops.int8_weight_only_brgemm(torch.randn(2, 8), torch.zeros(5, 4, dtype=torch.int8),
                                                 torch.ones(5, 1)), ValueError),
        (lambda: cpu_ops.int8_weight_only_brgemm(torch.randn(2, 4), torch.zeros(5, 4), torch.ones(5, 1)), TypeError),
        (lambda: cpu_ops.int8_weight_only_brgemm(torch.randn(2, 4), torch.zeros(5, 4, dtype=torch.int8),
                                                 torch.ones(3, 1)), ValueError),
        (lambda: cpu_ops.int8_dynamic_brgemm(torch.randn(2, 4), torch.zeros(2, 4), torch.ones(2, 1),
                                             torch.zeros(5, 4, dtype=torch.int8), torch.ones(5, 1)), TypeError),
        (lambda: cpu_ops.int4_tinygemm_brgemm(torch.randn(2, 64), torch.zeros(16, 16, dtype=torch.uint8),
                                              torch.zeros(1, 16, 2), 32, "avx512"), ValueError),
        (lambda: cpu_ops.int4_tinygemm_brgemm(torch.randn(2, 32), torch.zeros(16, 16, dtype=torch.uint8),
                                              torch.zeros(1, 16, 2), 32, "pairs32"), ValueError),
        (lambda: cpu_ops.int4_tinygemm_brgemm(torch.randn(2, 32), torch.zeros(16, 16, dtype=torch.uint8),
                                              torch.zeros(2, 16, 2), 32, "avx512"), ValueError),
        (lambda: cpu_ops.int4_tinygemm_brgemm(torch.randn(2, 32), torch.zeros(15, 16, dtype=torch.uint8),
                                              torch.zeros(1, 15, 2), 32, "avx512"), ValueError),
    ],
    ids=["3d-x", "k-mismatch", "float-qdata", "scale-count", "xq-dtype", "int4-k", "int4-layout", "int4-sz-shape",
         "int4-odd-n"],
)
def test_brgemm_wrappers_reject_bad_input_before_cpp(call, exc):
    with pytest.raises(exc, match="lowbit"):
        call()


# ------------------------------------------------------------------ dispatch


def test_isa_class_is_one_of_the_known():
    assert cpu_paths.isa_class() in cpu_paths.DEFAULT_TABLES


@pytest.mark.parametrize("op", cpu_paths.OPS)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 16, 64, 100, 256, 4096])
def test_chosen_path_is_a_real_available_kernel(op, m):
    path = cpu_paths.choose_path(op, m)
    assert path in cpu_paths.PATHS[op] and cpu_paths.path_available(op, path)


@pytest.mark.parametrize("op", cpu_paths.OPS)
def test_unavailable_table_path_falls_back_to_the_generic_choice(op, monkeypatch):
    table = {o: [(None, "brgemm")] for o in cpu_paths.OPS}
    monkeypatch.setattr(cpu_paths, "active_table", lambda: (table, "test"))
    monkeypatch.setattr(cpu_paths, "_brgemm_caps", lambda: 0)
    path = cpu_paths.choose_path(op, 8)
    assert path != "brgemm" and cpu_paths.path_available(op, path)


def test_table_lookup_follows_max_m():
    table = {"int8_weight_only_linear": [(2, "gemv"), (50, "dequant_gemm"), (None, "gemv")]}
    got = [cpu_paths._lookup(table, "int8_weight_only_linear", m) for m in (1, 2, 3, 50, 51, 10**6)]
    assert got == ["gemv", "gemv", "dequant_gemm", "dequant_gemm", "gemv", "gemv"]


def test_forced_path_rejects_unknown_and_restores():
    with pytest.raises(ValueError, match="no path"), cpu_paths.forced_path("int8_dynamic_linear", "tinygemm"):
        pass
    with cpu_paths.forced_path("int8_dynamic_linear", "fp32_gemm"):
        assert cpu_paths.choose_path("int8_dynamic_linear", 1) == "fp32_gemm"
    assert "int8_dynamic_linear" not in cpu_paths._override


def test_linear_layer_runs_the_path_the_table_names(monkeypatch):
    # Whatever this machine's table says, a layer runs the named kernel: spy on the path.
    calls = []
    real = cpu_ops._int4_tinygemm_cpu_gemm
    monkeypatch.setattr(cpu_ops, "_int4_tinygemm_cpu_gemm", lambda *a: calls.append(1) or real(*a))
    table = {"int4_tinygemm_cpu_linear": [(None, "dequant_gemm")]}
    monkeypatch.setattr(cpu_paths, "active_table", lambda: (table, "test"))
    t = Int4TinygemmCpuTensor.from_float(make_weight((72, 256)), group_size=64)
    F.linear(torch.randn(3, 256).to(torch.bfloat16), t)
    assert calls == [1]


# ------------------------------------------------------------------ tune


def test_tune_writes_a_table_the_dispatch_uses():
    r = lowbit.tune((64, 128), ms=(1, 8), cold_mib=1, reps=1)
    assert r.path is not None
    with open(r.path) as f:
        data = json.load(f)
    assert set(data["table"]) == set(cpu_paths.OPS)
    _, where = cpu_paths.active_table()
    assert "tune" in where
    for op, entries in r.table.items():
        assert entries[-1][0] is None
        for m in (1, 8):
            best = min(r.times_us[op], key=lambda p: r.times_us[op][p][r.ms.index(m)])
            assert cpu_paths.choose_path(op, m) == best


def test_unreadable_tune_cache_is_ignored_with_a_warning(caplog):
    path = cpu_paths.tune_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    cpu_paths.clear_tuned_cache()
    with caplog.at_level("WARNING"):
        _, where = cpu_paths.active_table()
    assert "tune" not in where and "unreadable tune cache" in caplog.text


def test_tune_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        lowbit.tune((64, 100))
    with pytest.raises(ValueError, match="unknown ops"):
        lowbit.tune((64, 128), ops=("nope",))


@_needs_u8s8_brgemm
@pytest.mark.parametrize("act_mapping", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("m,n,k,group", [(1, 64, 256, 32), (7, 80, 512, 128), (40, 208, 1024, 64)], ids=str)
def test_da8w4_brgemm_matches_the_integer_kernel(act_mapping, m, n, k, group):
    # Same integer group sums as da8w4_cpu.cpp (exact), so only fp32 summation order differs.
    t = Int4VnniCpuTensor.from_float(make_weight((n, k), seed=k), group_size=group)
    x = torch.randn(m, k)
    sym = act_mapping == "symmetric"
    codes, sa, za, gsum = torch.ops.lowbit_ext.da8w4_quantize_act(x, group, sym)
    y = torch.ops.lowbit_ext.da8w4_brgemm(codes, sa, za, gsum, t.qdata, t.scale, t.zero_point, t.qsum, group)
    ref = torch.ops.lowbit_ext.da8w4_linear(x, t.qdata, t.scale, t.zero_point, t.qsum, group, sym)
    assert lowbit.sqnr(ref, y) > 100


@_needs_bf16_brgemm
@pytest.mark.parametrize("isa", [-1, 0], ids=["vector", "scalar"])
@pytest.mark.parametrize("act_mapping", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("m,n,k,group", [(1, 64, 256, 32), (7, 80, 512, 128), (40, 208, 1024, 64), (33, 16, 8192, 256)],
                         ids=str)
def test_da8w4_bf16_brgemm_matches_the_integer_kernel(isa, act_mapping, m, n, k, group):
    # Same activation codes; the weight block is rounded to bf16 (relative 2^-9), so ~50 dB,
    # while a wrong layout, group or zero point would be far below 30 dB. K = 8192 > the
    # 4096-k chunk (accumulation across chunks); n = 80, 208: a short last 64-column task.
    t = Int4VnniCpuTensor.from_float(make_weight((n, k), seed=k), group_size=group)
    x = torch.randn(m, k)
    x[0, :5] = 40.0  # an outlier row: codes far from the zero point
    sym = act_mapping == "symmetric"
    codes, sa, za, _ = torch.ops.lowbit_ext.da8w4_quantize_act(x, group, sym)
    y = torch.ops.lowbit_ext.da8w4_brgemm_bf16(codes, sa, za, t.qdata, t.scale, t.zero_point, group, False, isa)
    ref = reference.da8w4_linear(x, t.qdata, t.scale, t.zero_point, t.qsum, group, act_mapping)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert lowbit.sqnr(ref, y) > 45
    yb = torch.ops.lowbit_ext.da8w4_brgemm_bf16(codes, sa, za, t.qdata, t.scale, t.zero_point, group, True, isa)
    assert yb.dtype == torch.bfloat16 and torch.equal(yb, y.to(torch.bfloat16))


@_needs_bf16_brgemm
def test_da8w4_bf16_brgemm_nan_row_stays_nan():
    t = Int4VnniCpuTensor.from_float(make_weight((64, 256)), group_size=64)
    x = torch.randn(3, 256)
    x[1, 7] = float("nan")
    codes, sa, za, _ = torch.ops.lowbit_ext.da8w4_quantize_act(x, 64, False)
    y = torch.ops.lowbit_ext.da8w4_brgemm_bf16(codes, sa, za, t.qdata, t.scale, t.zero_point, 64)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


def test_every_default_table_names_known_paths_for_every_op():
    tables = {**cpu_paths.DEFAULT_TABLES, **{f"{c}/{v}": t for (c, v), t in cpu_paths.VENDOR_TABLES.items()},
              **{f"{c}/{v}/{f}": t for (c, v, f), t in cpu_paths.FAMILY_TABLES.items()},
              **{f"{c}/few-threads": t for c, t in cpu_paths.FEW_THREAD_TABLES.items()}}
    for cls, table in tables.items():
        table = cpu_paths._generic_table() if table is None else table
        assert set(table) == set(cpu_paths.OPS), cls
        for op, entries in table.items():
            assert entries[-1][0] is None, (cls, op)  # every M is served
            assert all(p in cpu_paths.PATHS[op] for _, p in entries), (cls, op)


def test_vendor_table_is_used_on_its_vendor_only(monkeypatch):
    cls = cpu_paths.isa_class()
    fake = {op: [(None, cpu_paths.PATHS[op][0])] for op in cpu_paths.OPS}
    monkeypatch.setitem(cpu_paths.VENDOR_TABLES, (cls, "testvendor"), fake)
    monkeypatch.setattr(cpu_paths, "cpu_vendor", lambda: "testvendor")
    table, where = cpu_paths.active_table()
    assert table is fake and "testvendor" in where
    monkeypatch.setattr(cpu_paths, "cpu_vendor", lambda: "othervendor")
    assert cpu_paths.active_table()[0] is not fake


def test_family_table_is_used_on_its_family_only(monkeypatch):
    cls = cpu_paths.isa_class()
    fake = {op: [(None, cpu_paths.PATHS[op][0])] for op in cpu_paths.OPS}
    monkeypatch.setitem(cpu_paths.FAMILY_TABLES, (cls, "testvendor", 99), fake)
    monkeypatch.setattr(cpu_paths, "load_tuned_table", lambda: None)
    monkeypatch.setattr(cpu_paths, "cpu_vendor", lambda: "testvendor")
    monkeypatch.setattr(cpu_paths, "cpu_family", lambda: 99)
    table, where = cpu_paths.active_table()
    assert table is fake and "family 99" in where
    monkeypatch.setattr(cpu_paths, "cpu_family", lambda: 98)
    assert cpu_paths.active_table()[0] is not fake


def test_cpu_family_is_an_int_or_none():
    f = cpu_paths.cpu_family()
    assert f is None or (isinstance(f, int) and f >= 0)


def test_few_thread_table_is_used_at_few_threads_only(monkeypatch):
    cls = cpu_paths.isa_class()
    fake = {op: [(None, cpu_paths.PATHS[op][0])] for op in cpu_paths.OPS}
    monkeypatch.setitem(cpu_paths.FEW_THREAD_TABLES, cls, fake)
    monkeypatch.setattr(cpu_paths, "cpu_vendor", lambda: "testvendor")  # no vendor table
    monkeypatch.setattr(cpu_paths, "load_tuned_table", lambda: None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: cpu_paths.FEW_THREADS)
    assert cpu_paths.active_table()[0] is fake
    monkeypatch.setattr(torch, "get_num_threads", lambda: cpu_paths.FEW_THREADS + 1)
    assert cpu_paths.active_table()[0] is not fake


def test_cpu_vendor_is_known_or_other():
    assert cpu_paths.cpu_vendor() in ("amd", "intel", "other")


@pytest.mark.parametrize("m", [1, 3, 17])
def test_int8_dynamic_int_mm_path_is_the_exact_integer_product(m):
    # K = 96: |sum| <= 96 * 127 * 127 < 2^24, so the fp32 GEMM over the codes is exact too;
    # both paths must give the same bits.
    x = torch.randn(m, 96).to(torch.bfloat16)
    t = Int8Tensor.from_float(make_weight((40, 96), torch.float32, seed=3))
    outs = []
    for path in ("int_mm", "fp32_gemm"):
        with cpu_paths.forced_path("int8_dynamic_linear", path):
            outs.append(cpu_ops.int8_dynamic_linear(x, t.qdata, t.scale))
    assert torch.equal(outs[0], outs[1])
