"""lowbit's Triton int4 kernels against their pure-PyTorch references.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1; small shapes, the
interpreter is slow). Its tl.dot is wrong for bfloat16 operands (triton 3.9: a 16x16
bf16 dot is off by 1e10), so the tensor-core kernels are checked with float16
activations there; bfloat16 runs in the GPU tests below. On CUDA: fuzzed shapes
(M 1..300, K multiples of the group, N multiples of the tile) for every kernel.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

from lowbit.ops import triton_int4 as T
from lowbit.ops.reference import int4_marlin_mm
from lowbit.packing.int4_marlin import (
    pack_marlin_int4,
    pack_marlin_scales,
    pack_marlin_zero_points,
)
from lowbit.packing.int4_triton import pack_int4_triton, padded_k, unpack_int4_triton
from lowbit.primitives import sqnr

_HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not _HAS_TRITON, reason="needs the triton package (pip install triton)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Triton's interpreter is the CPU stand-in for the GPU; where a GPU exists the compiled
# kernels are tested instead (and older interpreters, e.g. triton 3.6's, differ in details).
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: its tests run the compiled kernels")

# bf16 output rounding alone limits SQNR to ~48 dB; fp16 to ~70 dB.
_MIN_SQNR = {torch.bfloat16: 42.0, torch.float16: 55.0}


@pytest.fixture(scope="module")
def interpreted():
    """The kernels module imported with TRITON_INTERPRET=1 (triton decides at decoration),
    installed under its own name while the module's tests run (the interpreter resolves a
    kernel's helpers through ``sys.modules``)."""
    name = "lowbit.ops.triton_int4_kernels"
    old_env, old_mod = os.environ.get("TRITON_INTERPRET"), sys.modules.get(name)
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.find_spec(name)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if old_env is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old_env
    sys.modules[name] = mod
    yield T._kernel_table(mod)
    if old_mod is None:
        del sys.modules[name]
    else:
        sys.modules[name] = old_mod


@pytest.fixture
def cpu_kernels(interpreted, monkeypatch):
    monkeypatch.setattr(T, "_kernels", lambda: interpreted)


def _operands(n, k, g, int_zp, device, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
    scale = (torch.rand(k // g, n, generator=gen) * 0.01 + 1e-3).to(dtype)
    if int_zp:
        zero = torch.randint(0, 16, (k // g, n), dtype=torch.int32, generator=gen)
    else:
        zero = (torch.randn(k // g, n, generator=gen) * 0.01).to(dtype)
    return codes.to(device), scale.to(device), zero.to(device)


# ---------------------------------------------------------------------- layout (CPU, no triton)


@pytest.mark.parametrize("n,k", [(8, 128), (16, 96), (24, 320)], ids=str)
def test_pack_unpack_round_trip(n, k):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    packed = pack_int4_triton(codes)
    assert packed.shape == (padded_k(k) // 8, n) and packed.dtype == torch.int32
    assert torch.equal(unpack_int4_triton(packed, k), codes)


def test_layout_meaning():
    """Nibble j of word row 16 c + i is k = 128 c + 16 j + i (scalar decode of the spec)."""
    n, k = 8, 256
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    words = (pack_int4_triton(codes).to(torch.int64) & 0xFFFFFFFF).tolist()
    for kk in range(0, k, 7):
        c, r = divmod(kk, 128)
        j, i = divmod(r, 16)
        for nn in range(n):
            assert (words[16 * c + i][nn] >> (4 * j)) & 0xF == codes[nn, kk]


def test_unpack_rejects_wrong_k():
    with pytest.raises(ValueError, match="int32"):
        unpack_int4_triton(torch.zeros(16, 8, dtype=torch.int32), 256)


# ---------------------------------------------------------------------- kernels in the interpreter

_CPU_CASES = [
    # (kind, M, N, K, group, int zero point, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, act dtype)
    ("gemv", 1, 64, 256, 32, False, 1, 32, 128, 1, torch.bfloat16),
    ("gemv", 3, 48, 320, 64, True, 1, 32, 128, 2, torch.bfloat16),
    ("gemv", 2, 32, 512, 256, False, 1, 32, 128, 3, torch.float16),
    ("mm", 20, 64, 384, 128, False, 16, 32, 64, 1, torch.float16),
    ("mm", 5, 40, 320, 32, True, 16, 32, 128, 2, torch.float16),  # groups inside a K tile
    ("mm", 17, 32, 256, 64, False, 32, 32, 32, 3, torch.float16),
    ("deq", 9, 32, 192, 64, False, 0, 32, 0, 1, torch.bfloat16),
]


@needs_triton
@interpreter_only
@pytest.mark.parametrize("kind,m,n,k,g,int_zp,bm,bn,bk,split,dtype", _CPU_CASES,
                         ids=[f"{c[0]}-M{c[1]}-N{c[2]}-K{c[3]}-g{c[4]}-{'int' if c[5] else 'float'}zp-bk{c[8]}-split{c[9]}"
                              for c in _CPU_CASES])
def test_kernel_matches_reference_interpreted(cpu_kernels, kind, m, n, k, g, int_zp, bm, bn, bk, split, dtype):
    codes, scale, zero = _operands(n, k, g, int_zp, "cpu", dtype)
    q = pack_int4_triton(codes)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dtype)
    cfg = {"kind": kind, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": 4, "num_stages": 2, "SPLIT_K": split}
    y = T.int4_triton_linear(x, q, scale, zero, g, cfg=cfg)
    ref = T.int4_triton_reference(x, q, scale, zero, g)
    assert y.shape == (m, n) and y.dtype == dtype
    assert sqnr(ref.float(), y.float()) >= _MIN_SQNR[dtype]


@needs_triton
@interpreter_only
@pytest.mark.parametrize("int_zp", [False, True], ids=["floatzp", "intzp"])
def test_dequantize_kernel_interpreted(cpu_kernels, int_zp):
    n, k, g = 16, 320, 64
    codes, scale, zero = _operands(n, k, g, int_zp, "cpu")
    w = T.int4_triton_dequantize(pack_int4_triton(codes), scale, zero, k, g)
    from lowbit.ops.reference import dequantize_int4_float_zp, dequantize_int4_int_zp

    fn = dequantize_int4_int_zp if int_zp else dequantize_int4_float_zp
    ref = fn(codes, scale.t(), zero.t(), g).t()
    assert w.shape == (k, n) and w.dtype == torch.bfloat16
    # fp32 math, then one rounding to bf16: within one bf16 ulp (the interpreter truncates).
    torch.testing.assert_close(w.float(), ref, rtol=2**-7, atol=1e-7)


_MARLIN_CPU_CASES = [(3, 64, 256, 32, 1), (17, 128, 256, 128, 2), (2, 64, 128, 128, 1)]  # M, N, K, group, split


@needs_triton
@interpreter_only
@pytest.mark.parametrize("m,n,k,g,split", _MARLIN_CPU_CASES, ids=[f"M{c[0]}-N{c[1]}-K{c[2]}-g{c[3]}-split{c[4]}"
                                                                 for c in _MARLIN_CPU_CASES])
def test_marlin_kernel_matches_reference_interpreted(cpu_kernels, m, n, k, g, split):
    codes, scale, zero = _operands(n, k, g, True, "cpu", torch.float16)
    scale, zero = scale.t(), zero.t()  # [N, G] as the Marlin packers take them
    qm, sm, zm = pack_marlin_int4(codes), pack_marlin_scales(scale, k), pack_marlin_zero_points(zero)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2)).to(torch.float16)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2, "SPLIT_K": split}
    y = T.int4_marlin_linear(x, qm, sm, zm, g, cfg=cfg)
    assert sqnr(int4_marlin_mm(x, qm, sm, zm, g).float(), y.float()) >= _MIN_SQNR[torch.float16]


@needs_triton
@interpreter_only
@pytest.mark.parametrize("g", [32, 128, 256], ids=["g32", "g128", "channelwise"])
def test_marlin_dequantize_kernel_interpreted(cpu_kernels, g):
    """Marlin large-M path: the layout dequantized to [K, N] in one pass."""
    from lowbit.ops.reference import dequantize_int4_int_zp

    n, k = 128, 256
    codes, scale, zero = _operands(n, k, g, True, "cpu", torch.float16)
    scale, zero = scale.t(), zero.t()
    qm, sm, zm = pack_marlin_int4(codes), pack_marlin_scales(scale, k), pack_marlin_zero_points(zero)
    w = T.int4_marlin_dequantize(qm, sm, zm, g, torch.float32)
    torch.testing.assert_close(w, dequantize_int4_int_zp(codes, scale, zero, g).t())


# The factored kernels (mm2_kernel, gemv2_kernel: codes enter the dot as 1 + q / 16, the
# affine map applied once per group) round differently from the dequantize-then-dot
# kernels, so they are checked against the exact (float64) product with a stated bound:
#   |y - y64| <= rtol_out |y64| + K 2^-23 B,  B = sum_k |x_k| m_k,
# rtol_out = 2^-7 (bf16) / 2^-10 (fp16) covers the one rounding of the output, and K 2^-23 B
# the fp32 sums, whose terms (16 s P and the zero-point correction times sum x) are each
# at most |x| m in size with m = 32 s + |z| (float zero point) or (32 + z) s (int).
_RTOL_OUT = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


@pytest.fixture
def bf16_dot(monkeypatch):
    """The interpreter multiplies bfloat16 dot operands as their raw uint16 bits (triton
    3.9); this widens them to float32 first, as the tensor cores do, so that bf16 runs."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as interp

    orig = interp.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, *args):
        if a.dtype.scalar == tl.bfloat16:
            a, b = (interp.TensorHandle(interp._convert_float(t.data, tl.bfloat16, tl.float32, None).view(np.float32),
                                        tl.float32) for t in (a, b))
        return orig(self, a, b, d, *args)

    monkeypatch.setattr(interp.InterpreterBuilder, "create_dot", create_dot)


def _check_factored(y, x, codes, scale, zero, g, int_zp):
    sd, zd = scale.double(), zero.double()  # [G, N]
    q, sk, zk = codes.double().t(), sd.repeat_interleave(g, 0), zd.repeat_interleave(g, 0)  # [K, N]
    y64 = x.double() @ ((q - zk) * sk if int_zp else (q - 8) * sk + zk)  # exact weights, float64 sums
    mag = (32 + zd) * sd if int_zp else 32 * sd + zd.abs()  # [G, N]
    bound = _RTOL_OUT[x.dtype] * y64.abs() + x.shape[1] * 2.0**-23 * (x.double().abs() @ mag.repeat_interleave(g, 0))
    err = (y.double() - y64).abs()
    assert y.dtype == x.dtype and y.shape == y64.shape
    assert bool((err <= bound).all()), f"max err {err.max():.3g}, worst err / bound {(err / bound).max():.3g}"


def _factored_case(seed, min_group=32):
    """Fuzzed (M, N, K, group, int zp, BLOCK_N, SPLIT_K, dtype): M 1..70, K a multiple of
    the group (often not of 128: the last chunk is padding), N tails past BLOCK_N."""
    gen = torch.Generator().manual_seed(1000 + seed)

    def pick(seq):
        return seq[int(torch.randint(0, len(seq), (1,), generator=gen))]

    g = pick(tuple(v for v in (32, 64, 128, 256) if v >= min_group))
    k = g * int(torch.randint(1, max(2, 400 // g), (1,), generator=gen))
    n = 8 * int(torch.randint(1, 9, (1,), generator=gen))
    m = int(torch.randint(1, 71, (1,), generator=gen))
    return m, n, k, g, bool(seed % 2), pick((32, 64)), pick((1, 2, 3)), (torch.bfloat16, torch.float16)[seed // 2 % 2]


def _run_factored(kind, seed, extra):
    m, n, k, g, int_zp, bn, split, dtype = _factored_case(seed, 128 if extra.get("PAIR") else 32)  # PAIR: g >= 128
    if kind in ("gemv2", "gemv3"):
        m = min(m, 3)
    codes, scale, zero = _operands(n, k, g, int_zp, "cpu", dtype, seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)).to(dtype)
    cfg = {"kind": kind, "BLOCK_M": 16 if kind == "mm2" else 1, "BLOCK_N": bn, "BLOCK_K": 0, "num_warps": 4,
           "num_stages": 2, "SPLIT_K": split, **extra}
    y = T.int4_triton_linear(x, pack_int4_triton(codes), scale, zero, g, cfg=cfg)
    _check_factored(y, x, codes, scale, zero, g, int_zp)


_MM2_VARIANTS = [{"SUB": 1}, {"SUB": 2}, {"SUB": 8}, {"SUB": 4, "JOIN": False}, {"SUB": 8, "JOIN": False},
                 {"SUB": 1, "XDOT": True}, {"SUB": 8, "XDOT": True}, {"PAIR": True}, {"PAIR": True, "XDOT": True},
                 {"PAIR": True, "XDOT": True, "PREFETCH": True}, {"SUB": 8, "XDOT": True, "PREFETCH": True}]


@needs_triton
@interpreter_only
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("variant", range(len(_MM2_VARIANTS)),
                         ids=["-".join(f"{a}{b}" for a, b in v.items()) for v in _MM2_VARIANTS])
def test_mm2_kernel_interpreted(cpu_kernels, bf16_dot, variant, seed):
    _run_factored("mm2", 3 * variant + seed, _MM2_VARIANTS[variant])  # distinct shapes per variant


@needs_triton
@interpreter_only
@pytest.mark.parametrize("seed", range(6))
def test_gemv2_kernel_interpreted(cpu_kernels, seed):
    # PREFETCH with SPLIT_K 1, so that programs run two or three chunks (K 256, 192, 320).
    _run_factored("gemv2", seed, {"PREFETCH": True, "SPLIT_K": 1} if seed in (0, 1, 3) else {})


@needs_triton
@interpreter_only
@pytest.mark.parametrize("seed", range(6))
def test_gemv3_kernel_interpreted(cpu_kernels, seed):
    # CH chunks per step (1, 2, 4) with and without PREFETCH; seeds 0, 1, 3 run one split so
    # that a program walks several steps, the last one past the end of K.
    extra = {"CH": (1, 2, 4)[seed % 3], "PREFETCH": seed % 2 == 0}
    _run_factored("gemv3", seed, {**extra, "SPLIT_K": 1} if seed in (0, 1, 3) else extra)


@needs_triton
@interpreter_only
@pytest.mark.parametrize("m, n", [(1, 96), (2, 96), (3, 96), (16, 96), (17, 96), (32, 96), (33, 96), (1, 8192), (2, 8192),
                                  (3, 8192)])
def test_dispatch_table_configs_interpreted(cpu_kernels, bf16_dot, m, n):
    # Each row of _SM90_TABLE and of the narrow-layer gemv3 table, with the launch
    # parameters _pick derives, on both sides of their M and N bounds (33: dequantize +
    # matmul, checked against the reference by SQNR).
    k, g = 256, 128
    codes, scale, zero = _operands(n, k, g, False, "cpu", torch.bfloat16, m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    cfg = T._pick(m, n, k, torch.device("cpu"))
    narrow = n < T._NARROW_N
    want = "gemv3" if m == 1 or (m == 2 and narrow) else "mm2" if m <= 32 else "deq"
    assert cfg["kind"] == want, cfg
    if want == "gemv3":
        assert cfg["SPLIT_K"] == 1 and cfg["BLOCK_N"] == (T._SM90_NARROW_GEMV3[m][0] if narrow else 64), cfg
    if want == "mm2":  # the narrow-layer row (64-column tiles, prefetch) up to its M bound
        assert cfg.get("PREFETCH", False) == (narrow and m <= T._NARROW_MM2_MAX_M), cfg
    q = pack_int4_triton(codes)
    y = T.int4_triton_linear(x, q, scale, zero, g, cfg=cfg)
    if cfg["kind"] == "deq":
        assert sqnr(T.int4_triton_reference(x, q, scale, zero, g).float(), y.float()) >= 40
    else:
        _check_factored(y, x, codes, scale, zero, g, False)


@pytest.mark.parametrize("m", [1, 2, 3, 40])
def test_pick_takes_a_symbolic_m(m):
    # torch.compile's dynamic shapes hand _pick a SymInt (unhashable): the table lookups
    # must only compare it (opcheck's test_aot_dispatch_dynamic caught a dict lookup).
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    sym = env.create_symintnode(env.create_symbol(m, ConstantSource("m")), hint=m)
    for n in (96, 14336):
        assert T._pick(sym, n, 256, torch.device("cpu")) == T._pick(m, n, 256, torch.device("cpu"))


def test_op_runs_reference_off_cuda():
    n, k, g = 16, 256, 128
    codes, scale, zero = _operands(n, k, g, False, "cpu")
    q = pack_int4_triton(codes)
    x = torch.randn(3, k).to(torch.bfloat16)
    y = torch.ops.lowbit.int4_triton_cuda_mm(x, q, scale, zero, g)
    assert torch.equal(y, T.int4_triton_reference(x, q, scale, zero, g))


# ---------------------------------------------------------------------- CUDA: fuzzed shapes

_FUZZ = 12  # cases per kernel family on the GPU


def _fuzz_case(seed):
    gen = torch.Generator().manual_seed(seed)
    g = (32, 64, 128, 256)[int(torch.randint(0, 4, (1,), generator=gen))]
    m = int(torch.randint(1, 301, (1,), generator=gen))
    n = 8 * int(torch.randint(1, 96, (1,), generator=gen))
    k = g * int(torch.randint(1, 24, (1,), generator=gen))
    return m, n, k, g, bool(seed % 2)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("seed", range(_FUZZ))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fuzz_triton_linear_cuda(seed, dtype):
    m, n, k, g, int_zp = _fuzz_case(seed)
    codes, scale, zero = _operands(n, k, g, int_zp, "cuda", dtype, seed)
    q = pack_int4_triton(codes)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    ref = T.int4_triton_reference(x, q, scale, zero, g)
    y = T.int4_triton_linear(x, q, scale, zero, g)
    assert sqnr(ref.float(), y.float()) >= _MIN_SQNR[dtype], (m, n, k, g, int_zp)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("kind", ["gemv", "mm", "deq"])
@pytest.mark.parametrize("seed", range(6))
def test_fuzz_each_kernel_cuda(kind, seed):
    m, n, k, g, int_zp = _fuzz_case(100 + seed)
    m = min(m, 3) if kind == "gemv" else m
    codes, scale, zero = _operands(n, k, g, int_zp, "cuda", torch.bfloat16, seed)
    q = pack_int4_triton(codes)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    bm = {"gemv": 1, "mm": 16 if m <= 16 else 64, "deq": 0}[kind]
    cfg = {"kind": kind, "BLOCK_M": bm, "BLOCK_N": 64, "BLOCK_K": 128 if kind == "gemv" else 64, "num_warps": 4,
           "num_stages": 3, "SPLIT_K": 1 if kind == "deq" else 1 + seed % 3}
    y = T.int4_triton_linear(x, q, scale, zero, g, cfg=cfg)
    assert sqnr(T.int4_triton_reference(x, q, scale, zero, g).float(), y.float()) >= 42.0, (kind, m, n, k, g)


_FACTORED_CUDA = [("gemv2", {}), ("gemv2", {"PREFETCH": True}), ("gemv3", {"CH": 4}),
                  ("gemv3", {"CH": 8, "PREFETCH": True}), ("mm2", {"SUB": 1}), ("mm2", {"SUB": 8}),
                  ("mm2", {"SUB": 8, "XDOT": True}), ("mm2", {"SUB": 4, "JOIN": False}), ("mm2", {"PAIR": True}),
                  ("mm2", {"PAIR": True, "XDOT": True}), ("mm2", {"PAIR": True, "XDOT": True, "PREFETCH": True}),
                  ("mm2", {"SUB": 8, "XDOT": True, "PREFETCH": True})]


@needs_cuda
@needs_triton
@pytest.mark.parametrize("variant", range(len(_FACTORED_CUDA)),
                         ids=[k + "".join(f"-{a}{b}" for a, b in e.items()) for k, e in _FACTORED_CUDA])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fuzz_factored_kernels_cuda(variant, seed, dtype):
    """The factored kernels on the GPU (bf16 tensor-core dots included) within the stated bound."""
    kind, extra = _FACTORED_CUDA[variant]
    m, n, k, g, int_zp = _fuzz_case(300 + seed)
    m = min(m, 3) if kind in ("gemv2", "gemv3") else m
    codes, scale, zero = _operands(n, k, g, int_zp, "cuda", dtype, seed)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    cfg = {"kind": kind, "BLOCK_M": (16 if m <= 16 else 64) if kind == "mm2" else 1, "BLOCK_N": 64, "BLOCK_K": 0,
           "num_warps": 4, "num_stages": 3, "SPLIT_K": 1 + seed % 3, **extra}
    y = T.int4_triton_linear(x, pack_int4_triton(codes), scale, zero, g, cfg=cfg)
    _check_factored(y, x, codes, scale, zero, g, int_zp)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("seed", range(10))
def test_fuzz_marlin_cuda(seed):
    m, _, _, g, _ = _fuzz_case(200 + seed)
    g = min(g, 128)  # Marlin groups: 32, 64, 128 (or one group spanning K)
    gen = torch.Generator().manual_seed(seed)
    n = 64 * int(torch.randint(1, 12, (1,), generator=gen))
    k = max(128, g) * int(torch.randint(1, 12, (1,), generator=gen))
    codes, scale, zero = _operands(n, k, g, True, "cuda", torch.bfloat16, seed)
    scale, zero = scale.t(), zero.t()
    qm, sm, zm = pack_marlin_int4(codes), pack_marlin_scales(scale, k), pack_marlin_zero_points(zero)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = T.int4_marlin_linear(x, qm, sm, zm, g)
    assert sqnr(int4_marlin_mm(x, qm, sm, zm, g).float(), y.float()) >= 42.0, (m, n, k, g)


@needs_cuda
@needs_triton
def test_marlin_channelwise_cuda():
    n, k = 128, 512
    codes, scale, zero = _operands(n, k, k, True, "cuda", torch.bfloat16)
    scale, zero = scale.t(), zero.t()
    qm, sm, zm = pack_marlin_int4(codes), pack_marlin_scales(scale, k), pack_marlin_zero_points(zero)
    x = torch.randn(5, k, device="cuda", dtype=torch.bfloat16)
    y = T.int4_marlin_linear(x, qm, sm, zm, k)
    assert sqnr(int4_marlin_mm(x, qm, sm, zm, k).float(), y.float()) >= 42.0


@needs_cuda
@needs_triton
def test_op_compiles_fullgraph_cuda():
    n, k, g = 256, 512, 128
    codes, scale, zero = _operands(n, k, g, False, "cuda")
    q = pack_int4_triton(codes)
    x = torch.randn(4, k, device="cuda", dtype=torch.bfloat16)
    torch._dynamo.reset()
    f = torch.compile(lambda x: torch.ops.lowbit.int4_triton_cuda_mm(x, q, scale, zero, g) * 2, fullgraph=True)
    assert sqnr(T.int4_triton_reference(x, q, scale, zero, g).float() * 2, f(x).float()) >= 42.0
