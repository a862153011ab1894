import io
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.errors import UnsupportedError
from lowbit.ops import cpu as cpu_ops
from lowbit.ops import reference
from lowbit.ops.cpu_paths import choose_path
from lowbit.packing.int4 import TINYGEMM_CPU_LAYOUTS, pack_tinygemm_cpu, tinygemm_cpu_layout, unpack_tinygemm_cpu
from lowbit.tensors import Int4PlainTensor, Int4TinygemmCpuTensor
from lowbit.tensors.base import UnsupportedOpError
from lowbit.tensors.int4_common import quantize_int4
from lowbit.testing import FormatConformance, assert_same_tensor, make_weight

BIG_M = cpu_ops.CPU_INT4_TINYGEMM_MAX_M + 1  # first batch size on the dequantize + GEMM path


class TestInt4TinygemmCpu(FormatConformance):
    tensor_cls = Int4TinygemmCpuTensor
    shapes = [(64, 256), (96, 512), (100, 128)]  # 100: padded to 112 rows inside
    act_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    devices = ["cpu"]
    batch_sizes = [1, 7, 33, BIG_M, 130]  # both sides of the tinygemm / GEMM switch
    min_linear_sqnr = 40.0
    fuzz_group_sizes = (32, 64, 128, 256)

    @property
    def traced_ops(self):
        # Where the table picks tinygemm / lowbit's GEMV (the extension's op, when it is built).
        ops = (torch.ops.aten._weight_int4pack_mm_for_cpu.default,)
        return ops + ((torch.ops.lowbit_ext.int4_tinygemm_gemv.default,) if cpu_ops._int4_gemv_available() else ())

    def make(self, w):
        return Int4TinygemmCpuTensor.from_float(w, group_size=64)


# ---------------------------------------------------------------------- fuzz: kernel vs reference


def _case(seed):
    g = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    group = pick([32, 64, 128, 256])
    return dict(
        m=int(torch.randint(1, 301, (1,), generator=g)),
        n=int(torch.randint(1, 300, (1,), generator=g)),
        k=group * int(torch.randint(1, 5, (1,), generator=g)),
        group=group,
        act=pick([torch.bfloat16, torch.float16]),
        three_d=bool(torch.randint(2, (1,), generator=g)),
        bias=bool(torch.randint(2, (1,), generator=g)),
    )


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_kernel_matches_reference(seed):
    c = _case(seed)
    w = make_weight((c["n"], c["k"]), torch.bfloat16, seed=seed)
    t = Int4TinygemmCpuTensor.from_float(w, group_size=c["group"])
    shape = (2, (c["m"] + 1) // 2, c["k"]) if c["three_d"] else (c["m"], c["k"])
    x = torch.randn(shape).to(c["act"])
    b = torch.randn(c["n"]).to(c["act"]) if c["bias"] else None
    y = F.linear(x, t, b)
    ref = reference.int4_tinygemm_cpu_linear(
        x.reshape(-1, c["k"]), t.qdata, t.scale_and_zero, t.group_size, c["n"], t.cpu_layout
    ).reshape(*shape[:-1], c["n"])
    if b is not None:
        ref = ref + b
    assert y.shape == ref.shape and y.dtype == c["act"]
    assert lowbit.sqnr(ref.float(), y.float()) >= 45.0, (c, lowbit.sqnr(ref.float(), y.float()))


# ---------------------------------------------------------------------- exactness


@pytest.mark.parametrize("shape,group", [((64, 256), 32), ((100, 512), 128), ((48, 256), 256)], ids=str)
def test_dequantize_equals_quantized_values(shape, group):
    w = make_weight(shape, torch.float32, heavy_tail=True)
    codes, scale, zero = quantize_int4(w, group, "float", scale_dtype=torch.bfloat16)  # the stored dtype
    t = Int4TinygemmCpuTensor.from_codes(codes, scale, zero, group_size=group, shape=shape, dtype=w.dtype)
    c2, s2, z2 = t.to_codes()
    assert torch.equal(c2, codes) and torch.equal(s2, scale) and torch.equal(z2, zero)
    want = lowbit.primitives.dequantize_affine(codes, (1, group), scale, zero, 0, 15, "float", torch.float32)
    assert torch.equal(t.dequantize(torch.float32), want)


@pytest.mark.parametrize("layout", sorted(TINYGEMM_CPU_LAYOUTS))
@pytest.mark.parametrize("n,k", [(16, 32), (48, 64), (64, 128), (80, 96), (208, 256)], ids=str)
def test_tinygemm_pack_unpack_bit_exact(layout, n, k):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    packed = pack_tinygemm_cpu(codes, layout)
    assert packed.shape == (n, k // 2) and packed.dtype == torch.uint8
    assert torch.equal(unpack_tinygemm_cpu(packed, layout), codes)


@pytest.mark.parametrize("n,k", [(16, 32), (48, 64), (80, 96), (256, 256)], ids=str)
def test_aten_packer_matches_our_layout_model(n, k):
    # What the kernel reads is what our unpacker inverts, byte for byte.
    layout = tinygemm_cpu_layout()
    assert layout is not None
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    native = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    assert torch.equal(native, pack_tinygemm_cpu(codes, layout))
    assert torch.equal(unpack_tinygemm_cpu(native, layout), codes)


def test_unpack_is_not_a_kernel_roundtrip():
    # The packed layout inverted directly must agree with what the kernel computes:
    # one-hot activations read single columns of the dequantized weight.
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 128)), group_size=32)
    eye = torch.eye(128, dtype=torch.float32)
    cols = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, t.qdata, 32, t.scale_and_zero.float())
    assert torch.allclose(cols.t()[:64], t.dequantize(torch.float32), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- layouts of other CPUs


def _foreign(t: Int4TinygemmCpuTensor) -> Int4TinygemmCpuTensor:
    """The same weight packed in a layout this machine's ATen does not use."""
    other = next(name for name in TINYGEMM_CPU_LAYOUTS if name != t.cpu_layout)
    codes = unpack_tinygemm_cpu(t.qdata, t.cpu_layout)
    return t._replace(qdata=pack_tinygemm_cpu(codes, other), cpu_layout=other)


def test_foreign_layout_refuses_to_run_and_repacks_exactly():
    t = Int4TinygemmCpuTensor.from_float(make_weight((96, 256)), group_size=64)
    f = _foreign(t)
    assert torch.equal(f.dequantize(), t.dequantize())  # unpacking honours the recorded layout
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with pytest.raises(UnsupportedError, match="from_checkpoint"):
        F.linear(x, f)
    fixed = f.from_checkpoint(torch.device("cpu"))
    assert_same_tensor(fixed, t)
    assert torch.equal(F.linear(x, fixed), F.linear(x, t))


def test_foreign_layout_pickle_loads_and_repacks():
    f = _foreign(Int4TinygemmCpuTensor.from_float(make_weight((64, 128)), group_size=32))
    buf = io.BytesIO()
    torch.save({"w": f}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["w"]
    assert loaded.cpu_layout == f.cpu_layout
    assert torch.equal(loaded.from_checkpoint(torch.device("cpu")).dequantize(), f.dequantize())


# ---------------------------------------------------------------------- checkpoints and devices


def test_checkpoint_is_plain_and_reloads_bit_exact():
    m = nn.Sequential(nn.Linear(256, 96), nn.Linear(96, 64)).to(torch.bfloat16)
    lowbit.quantize_(m, lowbit.Int4WeightOnlyConfig(group_size=32))
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        lowbit.save_file(m, path)
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            assert '"int4_plain"' in f.metadata()["lowbit"]
        fresh = nn.Sequential(nn.Linear(256, 96), nn.Linear(96, 64)).to(torch.bfloat16)
        lowbit.load_into(fresh, path)
    assert isinstance(fresh[0].weight, Int4TinygemmCpuTensor)
    assert_same_tensor(fresh[0].weight, m[0].weight)
    assert torch.equal(fresh(x), m(x))


def test_moving_to_a_device_without_int4_format_raises():
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 128)), group_size=32)
    with pytest.raises(UnsupportedError, match="meta"):
        t._to_device(torch.device("meta"))
    plain = t.to_checkpoint()
    assert isinstance(plain, Int4PlainTensor)
    with pytest.raises(UnsupportedError, match="meta"):
        plain.from_checkpoint(torch.device("meta"))


# ---------------------------------------------------------------------- views


def test_transpose_and_mm_decomposition():
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 128)), group_size=32)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    assert t.t().shape == (128, 64)
    assert_same_tensor(t.t().t(), t)
    assert torch.equal(t.t().dequantize(), t.dequantize().t())
    assert torch.equal(torch.mm(x, t.t()), F.linear(x, t))
    b = torch.randn(64, dtype=torch.bfloat16)
    assert torch.equal(torch.addmm(b, x, t.t()), F.linear(x, t, b))
    with pytest.raises(UnsupportedOpError):
        F.linear(torch.randn(5, 64, dtype=torch.bfloat16), t.t())


@pytest.mark.parametrize("dim,start,end", [(0, 0, 32), (0, 16, 61), (1, 0, 64), (1, 32, 128)], ids=str)
def test_narrow_and_slice_match_dense(dim, start, end):
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 128), torch.float32), group_size=32)
    dense = t.dequantize(torch.float32).narrow(dim, start, end - start)
    part = t.narrow(dim, start, end - start)
    assert isinstance(part, Int4TinygemmCpuTensor) and part.shape == dense.shape
    assert torch.equal(part.dequantize(torch.float32), dense)
    sl = t[start:end] if dim == 0 else t[:, start:end]
    assert torch.equal(sl.dequantize(torch.float32), dense)
    x = torch.randn(3, part.shape[1])
    assert lowbit.sqnr(F.linear(x, dense), F.linear(x, part)) > 45


def test_slice_of_transposed_and_off_group_slice():
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 128), torch.float32), group_size=32)
    assert torch.equal(t.t()[32:96].dequantize(), t.dequantize().t()[32:96])
    with pytest.raises(UnsupportedOpError, match="multiples of group_size=32"):
        t[:, 8:40]


# ---------------------------------------------------------------------- errors, compile, opcheck


def test_bad_inputs_raise_clear_errors():
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 128)), group_size=32)
    with pytest.raises(ValueError, match="expects 128"):
        F.linear(torch.randn(2, 100, dtype=torch.bfloat16), t)
    with pytest.raises(TypeError, match="float32/float16/bfloat16 input"):
        F.linear(torch.ones(2, 128, dtype=torch.int32), t)
    with pytest.raises(ValueError, match="does not divide"):
        Int4TinygemmCpuTensor.from_float(make_weight((64, 96)), group_size=64)
    with pytest.raises(ValueError, match="group_size must be one of"):
        Int4TinygemmCpuTensor.from_float(make_weight((64, 96)), group_size=16)
    with pytest.raises(ValueError, match="float zero point"):
        codes, scale, zero = quantize_int4(make_weight((64, 128)), 32, "int")
        Int4TinygemmCpuTensor.from_codes(codes, scale, zero, group_size=32, shape=(64, 128), dtype=torch.bfloat16)
    assert "CPU only" in Int4TinygemmCpuTensor.supports(make_weight((64, 128)), "cuda")


@pytest.mark.parametrize("m", [3, BIG_M], ids=["tinygemm", "gemm"])
def test_compiled_graph_calls_lowbit_kernel(m):
    from torch._inductor.utils import run_and_get_code

    mod = nn.Linear(128, 80, dtype=torch.bfloat16)
    lowbit.quantize_(mod, lowbit.Int4WeightOnlyConfig(group_size=64))
    x = torch.randn(m, 128, dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = mod(x)
        out, code = run_and_get_code(torch.compile(mod, fullgraph=True), x)
    # The tinygemm and GEMV paths are traced into the graph as the kernels themselves; the
    # others stay lowbit's op.
    path = choose_path("int4_tinygemm_cpu_linear", m)
    want = {"tinygemm": "_weight_int4pack_mm_for_cpu", "gemv": "lowbit_ext.int4_tinygemm_gemv"}.get(
        path, "lowbit.int4_tinygemm_cpu_linear")
    assert want in "\n".join(code)
    assert torch.equal(out, eager)


@pytest.mark.parametrize("m,n", [(3, 64), (BIG_M, 80)], ids=["tinygemm", "gemm_padded"])
def test_opcheck(m, n):
    t = Int4TinygemmCpuTensor.from_float(make_weight((n, 128)), group_size=32)
    x = torch.randn(m, 128, dtype=torch.bfloat16)
    torch.library.opcheck(
        torch.ops.lowbit.int4_tinygemm_cpu_linear, (x, t.qdata, t.scale_and_zero, 32, n, t.cpu_layout)
    )


def test_cpu_packing_on_another_device_refuses_to_run():
    # What torch.load(map_location=...) of a CPU blob produces: the bytes moved, not repacked.
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 128)), group_size=32)
    moved = t._replace(lambda f: f.to("meta"))
    with pytest.raises(UnsupportedError, match="CPU-only packing"):
        F.linear(torch.randn(2, 128, dtype=torch.bfloat16, device="meta"), moved)


# ---------------------------------------------------------------------- C++ M = 1 GEMV

_needs_gemv = pytest.mark.skipif(
    not cpu_ops._int4_gemv_available(),
    reason="lowbit's C++ CPU extension with int4_tinygemm_gemv is not built here (ops/_ext.py)",
)


# Each inner loop of the GEMV, forced in turn (as the DA8W4 tests force theirs); a CPU that
# cannot run a loop skips only that one.
_GEMV_ISA_NEEDS = {"scalar": "x86-64", "avx2": "AVX2 + FMA", "avx512": "AVX512F/BW",
                   "avx512_bf16": "AVX512F/BW + AVX512-BF16"}


def _gemv_isa_or_skip(name):
    if not cpu_ops._int4_gemv_available():
        pytest.skip("lowbit's C++ CPU extension with int4_tinygemm_gemv is not built here (ops/_ext.py)")
    isa, best = cpu_ops.INT4_GEMV_ISAS[name], cpu_ops.int4_gemv_best_isa()
    if isa > best:
        pytest.skip(f"the {name} GEMV loop needs {_GEMV_ISA_NEEDS[name]}; this CPU's widest loop is isa {best}")
    return isa


def _gemv_fuzz_case(seed):
    g = torch.Generator().manual_seed(1000 + seed)

    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    group = (32, 64, 128, 256)[seed % 4]
    # n: odd N -> a short pair-packed tail block after the full 32/64-row blocks
    return dict(m=rint(1, 9), n=rint(1, 300), k=group * rint(1, 4), group=group,
                layout=("avx2", "avx512")[rint(0, 1)], noncontig=bool(rint(0, 1)))


def _gemv_inputs(c, seed):
    t = Int4TinygemmCpuTensor.from_float(make_weight((c["n"], c["k"]), seed=seed), group_size=c["group"])
    qdata = pack_tinygemm_cpu(unpack_tinygemm_cpu(t.qdata, t.cpu_layout), c["layout"])
    x = torch.randn(c["k"], c["m"]).t() if c["noncontig"] else torch.randn(c["m"], c["k"])
    return x, qdata, t.scale_and_zero


@pytest.mark.parametrize("name", list(cpu_ops.INT4_GEMV_ISAS))
@pytest.mark.parametrize("seed", range(6))
def test_gemv_each_loop_matches_reference(name, seed):
    isa = _gemv_isa_or_skip(name)
    c = _gemv_fuzz_case(seed)
    x, qdata, sz = _gemv_inputs(c, seed)
    y = cpu_ops.int4_tinygemm_gemv(x, qdata, sz, c["group"], c["layout"], isa)
    # The bf16 loop (64-row layout only; 32-row packings take the AVX2 loop) reads x rounded
    # to bf16: against the reference on those rounded values it is as exact as the fp32
    # loops (~110-140 dB measured), against the fp32 x it carries the rounding (~55 dB).
    rounds_x = name == "avx512_bf16" and c["layout"] == "avx512"
    x_used = x.to(torch.bfloat16).float() if rounds_x else x
    ref = reference.int4_tinygemm_cpu_linear(x_used, qdata, sz, c["group"], qdata.shape[0], c["layout"])
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert lowbit.sqnr(ref, y) >= 100.0, (c, lowbit.sqnr(ref, y))
    exact = reference.int4_tinygemm_cpu_linear(x, qdata, sz, c["group"], qdata.shape[0], c["layout"])
    assert lowbit.sqnr(exact, y) >= 48.0, (c, lowbit.sqnr(exact, y))


@pytest.mark.parametrize("name", list(cpu_ops.INT4_GEMV_ISAS))
@pytest.mark.parametrize("act", [torch.bfloat16, torch.float16], ids=str)
def test_gemv_each_loop_low_precision_activations(name, act):
    isa = _gemv_isa_or_skip(name)
    c = dict(m=5, n=200, k=512, group=128, layout="avx512", noncontig=False)
    x, qdata, sz = _gemv_inputs(c, 7)
    x = x.to(act)
    y = cpu_ops.int4_tinygemm_gemv(x, qdata, sz, 128, "avx512", isa)
    ref = reference.int4_tinygemm_cpu_linear(x.float(), qdata, sz, 128, qdata.shape[0], "avx512")
    assert y.dtype == act
    assert lowbit.sqnr(ref, y.float()) >= 45.0  # bf16/fp16 output rounding (~50 dB), fp16 x to bf16


@pytest.mark.parametrize("name", list(cpu_ops.INT4_GEMV_ISAS))
def test_gemv_each_loop_zero_rows(name):
    isa = _gemv_isa_or_skip(name)
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 256)), group_size=64)
    y = cpu_ops.int4_tinygemm_gemv(torch.zeros(0, 256), t.qdata, t.scale_and_zero, 64, t.cpu_layout, isa)
    assert y.shape == (0, t.qdata.shape[0])


@_needs_gemv
@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randn(2, 3, 256), q, sz, 64, "avx512"), ValueError, "2-D"),
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randn(2, 128), q, sz, 64, "avx512"), ValueError, "K=128"),
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randn(2, 256), q, sz, 48, "avx512"), ValueError,
         "group_size"),
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randn(2, 256), q, sz, 64, "pairs32"), ValueError, "layout"),
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randn(2, 256), q.to(torch.int8), sz, 64, "avx512"),
         TypeError, "uint8"),
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randn(2, 256), q, sz[:2], 64, "avx512"), ValueError,
         "scale_and_zero"),
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randn(2, 256), q, sz, 64, "avx512", 7), ValueError, "isa"),
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randint(0, 3, (2, 256)), q, sz, 64, "avx512"), TypeError,
         "float"),
        (lambda q, sz: cpu_ops.int4_tinygemm_gemv(torch.randn(2, 256, dtype=torch.float64), q, sz, 64, "avx512"),
         TypeError, "float64"),
    ],
    ids=["3d-x", "k-mismatch", "group", "layout", "qdata-dtype", "sz-shape", "isa", "int-x", "float64-x"],
)
def test_gemv_bad_input_is_refused_before_cpp(call, exc, match):
    t = Int4TinygemmCpuTensor.from_float(make_weight((64, 256)), group_size=64)
    with pytest.raises(exc, match=match):
        call(t.qdata, t.scale_and_zero)


@_needs_gemv
def test_gemv_loop_of_this_class_is_runnable():
    from lowbit.ops import cpu_paths

    assert 0 <= cpu_paths.int4_gemv_isa() <= cpu_ops.int4_gemv_best_isa()


@_needs_gemv
@pytest.mark.parametrize("layout", ["avx2", "avx512"])
@pytest.mark.parametrize(
    "n,k,group,act",
    [(4096, 512, 128, torch.bfloat16), (100, 256, 32, torch.float16), (208, 576, 64, torch.float32)],
    ids=str,
)
def test_gemv_matches_reference(layout, n, k, group, act):
    t = Int4TinygemmCpuTensor.from_float(make_weight((n, k)), group_size=group)
    qdata = pack_tinygemm_cpu(unpack_tinygemm_cpu(t.qdata, t.cpu_layout), layout)
    x = torch.randn(1, k).to(act)
    y = torch.ops.lowbit_ext.int4_tinygemm_gemv(x, qdata, t.scale_and_zero, group, cpu_ops._INT4_GEMV_BLOCK_N[layout])
    ref = reference.int4_tinygemm_cpu_linear(x, qdata, t.scale_and_zero, group, qdata.shape[0], layout)
    assert y.dtype == act and y.shape == ref.shape
    assert lowbit.sqnr(ref.float(), y.float()) >= 60.0


@pytest.mark.parametrize("group", [32, 128])
def test_large_m_bf16_gemm_path_keeps_precision(monkeypatch, group):
    # CPUs with native bf16 (AVX512-BF16/AMX) run the large-M path as a bf16 GEMM; force
    # that path here (an AVX2 CI box would take fp32) and hold it to the same bar.
    import lowbit.ops.cpu as cpu_ops

    monkeypatch.setattr(cpu_ops, "cpu_has_native_bf16", lambda: True)
    w = make_weight((84, 512), torch.bfloat16, seed=3)
    t = Int4TinygemmCpuTensor.from_float(w, group_size=group)
    x = torch.randn(cpu_ops.CPU_INT4_TINYGEMM_MAX_M + 121, 512).to(torch.bfloat16)
    y = F.linear(x, t)
    ref = reference.int4_tinygemm_cpu_linear(x, t.qdata, t.scale_and_zero, t.group_size, 84, t.cpu_layout)
    assert lowbit.sqnr(ref.float(), y.float()) >= 45.0
@_needs_gemv
@pytest.mark.parametrize("layout", ["avx2", "avx512"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize(
    "n,k,group",
    [(96, 256, 32), (100, 512, 256), (208, 576, 64), (48, 576, 32), (80, 384, 128)],
    ids=str,
)
def test_gemv_multi_row_matches_reference(layout, m, n, k, group):
    # Row tiles of 4 (+ 1..3 remainder) and N tails (blocks of 32/64 rows + a pair-packed tail).
    t = Int4TinygemmCpuTensor.from_float(make_weight((n, k)), group_size=group)
    qdata = pack_tinygemm_cpu(unpack_tinygemm_cpu(t.qdata, t.cpu_layout), layout)
    x = torch.randn(m, k, dtype=torch.bfloat16)
    y = torch.ops.lowbit_ext.int4_tinygemm_gemv(x, qdata, t.scale_and_zero, group, cpu_ops._INT4_GEMV_BLOCK_N[layout])
    ref = reference.int4_tinygemm_cpu_linear(x.float(), qdata, t.scale_and_zero, group, qdata.shape[0], layout)
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert lowbit.sqnr(ref.float(), y.float()) >= 45.0  # bf16 output rounding: ~50 dB


@_needs_gemv
@pytest.mark.parametrize("m", [1, 3, cpu_ops.CPU_INT4_GEMV_MAX_M])
def test_linear_small_batch_uses_gemv(m, monkeypatch):
    # The generic (non-AMX) table's choice: the GEMV up to CPU_INT4_GEMV_MAX_M rows.
    from lowbit.ops import cpu_paths

    monkeypatch.setattr(cpu_paths, "active_table", lambda: (cpu_paths._generic_table(), "test"))
    t = Int4TinygemmCpuTensor.from_float(make_weight((72, 256)), group_size=64)
    x = torch.randn(m, 256, dtype=torch.bfloat16)
    calls = []
    ns = torch.ops.lowbit_ext
    real = ns.int4_tinygemm_gemv

    class _Spy:
        def int4_tinygemm_gemv(self, *a):
            calls.append(a[0].shape[0])
            return real(*a)

        def __getattr__(self, name):  # the other extension ops (e.g. a first int4_gemv_best_isa())
            return getattr(ns, name)

    with monkeypatch.context() as mp:
        mp.setattr(torch.ops, "lowbit_ext", _Spy())
        y = F.linear(x, t)
    ref = reference.int4_tinygemm_cpu_linear(x.float(), t.qdata, t.scale_and_zero, 64, t.qdata.shape[0], t.cpu_layout)
    assert calls == [m]
    assert y.shape == (m, 72) and lowbit.sqnr(ref[:, :72].float(), y.float()) >= 45.0
