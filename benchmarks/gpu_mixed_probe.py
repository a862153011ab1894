"""Probe: how the weight conversion limits lowbit's mixed-input (8-bit / 4-bit weight x bf16)
GEMMs on the GPU, and which conversion a Triton kernel should use.

    python3 -m benchmarks.gpu_mixed_probe --out probe.md

One Triton tile kernel ``y = x @ W^T`` (x bf16 [M, K] the first operand, the weight tile the
second, per-channel scale in the epilogue) with the weight tile turned into bf16 in
registers by one of several conversions (``CONV``):

* ``bf16``     the weight already bf16: the ceiling of this kernel (no conversion)
* ``i8-f32``   int8 -> float32 -> bf16 (lowbit's w8a16 kernel today: an I2F per weight)
* ``i8-bf16``  int8 -> bf16 in one Triton cast
* ``i8-magic`` int8 bits into a float32 mantissa (2^23 + 128 + q, an or and a subtract;
  no int -> float instruction), then bf16 (exact: |q| <= 128)
* ``i8-asm``   the same in inline PTX, four weights per 32-bit word (xor, 4 prmt, 4 sub,
  2 cvt.rn.bf16x2.f32)
* ``f8-f32``   e4m3 -> float32 -> bf16 (lowbit's float8 weight-only kernel today)
* ``f8-bf16``  e4m3 -> bf16 in one Triton cast
* ``f8-bits``  e4m3 bits moved into a float32 (sign, 7 exponent+mantissa bits) times
  2^120 (exact, subnormals too), then bf16
* ``i4-magic`` int4 (two codes per byte, k and k + BLOCK_K/2 of one step) as bf16
  128 + q (bits 0x4300 | q), then (v - 128 - z) * s in float32 per weight, group 128
* ``i4-fact``  the same codes, 128 + q straight into the dot; the group's scale and zero
  applied once per output per group from the sums of x (BLOCK_K = the group size)

Rows: bf16 F.linear (cuBLAS), lowbit's current w8a16 kernel (``w8a16_linear``, its own
block table), and each conversion over a few block configs (best shown), with CUDA-graph
replays over enough weight copies to be cold (>= 256 MB per replay). Each kernel's output
is checked against float32 math on the same codes before it is timed.
"""

from __future__ import annotations

import argparse
import sys

import torch
import triton
import triton.language as tl

from lowbit.tune_cuda import _graph_us

CONVS = ("bf16", "i8-f32", "i8-bf16", "i8-magic", "i8-asm", "f8-f32", "f8-bf16", "f8-bits", "i4-magic", "i4-fact")
_CODE = {name: i for i, name in enumerate(CONVS)}


@triton.jit
def _i8_asm(w):
    # int8 -> bf16, 4 per 32-bit word: bytes + 128 into float32 mantissas (2^23 + u), minus
    # 2^23 + 128, packed in pairs into bf16x2.
    return tl.inline_asm_elementwise(
        """
        {
        .reg .b32 t, f0, f1, f2, f3;
        xor.b32 t, $2, 0x80808080;
        prmt.b32 f0, t, 0x4B000000, 0x7440;
        prmt.b32 f1, t, 0x4B000000, 0x7441;
        prmt.b32 f2, t, 0x4B000000, 0x7442;
        prmt.b32 f3, t, 0x4B000000, 0x7443;
        sub.f32 f0, f0, 0f4B000080;
        sub.f32 f1, f1, 0f4B000080;
        sub.f32 f2, f2, 0f4B000080;
        sub.f32 f3, f3, 0f4B000080;
        cvt.rn.bf16x2.f32 $0, f1, f0;
        cvt.rn.bf16x2.f32 $1, f3, f2;
        }
        """,
        "=r,=r,r", [w], dtype=tl.bfloat16, is_pure=True, pack=4)


@triton.jit
def _convert(w, CONV: tl.constexpr):
    # One weight tile (as loaded: bf16, int8 or uint8 bytes of e4m3) -> bf16.
    if CONV == 0:
        v = w
    elif CONV == 1:
        v = w.to(tl.float32).to(tl.bfloat16)
    elif CONV == 2:
        v = w.to(tl.bfloat16)
    elif CONV == 3:
        u = (w.to(tl.uint8, bitcast=True) ^ 0x80).to(tl.int32) | 0x4B000000
        v = (u.to(tl.float32, bitcast=True) - 8388736.0).to(tl.bfloat16)
    elif CONV == 4:
        v = _i8_asm(w)
    elif CONV == 5:
        v = w.to(tl.float8e4nv, bitcast=True).to(tl.float32).to(tl.bfloat16)
    elif CONV == 6:
        v = w.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
    else:
        b = w.to(tl.int32) & 0xFF
        bits = ((b & 0x80) << 24) | ((b & 0x7F) << 20)
        v = (bits.to(tl.float32, bitcast=True) * 1.329227995784916e36).to(tl.bfloat16)  # 2^120
    return v


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    rows = min(grid_m - first_m, GROUP_M)
    return first_m + (pid % width) % rows, (pid % width) // rows


@triton.jit
def _mm8(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, CONV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, F32: tl.constexpr = False):
    # F32: multiply in float32 (Triton's interpreter, whose bf16 dot is wrong).
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        a = tl.load(x_ptr + rm[:, None] * K + k[None, :], mask=m_ok[:, None], other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K + k[:, None], mask=n_ok[None, :], other=0)
        v = _convert(w, CONV)
        if F32:
            acc = tl.dot(a.to(tl.float32), v.to(tl.float32), acc)
        else:
            acc = tl.dot(a, v, acc)
    s = tl.load(s_ptr + rn, mask=n_ok, other=0.0)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], (acc * s[None, :]).to(tl.bfloat16),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _mm4(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, M, N, K, FACT: tl.constexpr, BLOCK_M: tl.constexpr,
         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr,
         F32: tl.constexpr = False):
    # q: uint8 [N, K / 2]; byte j of step t holds code k = t*BK + j (low nibble) and
    # k = t*BK + BK/2 + j (high nibble). Group size 128 = BLOCK_K (FACT) or a multiple of it.
    HALF: tl.constexpr = BLOCK_K // 2
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rh = tl.arange(0, HALF)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    steps = K // BLOCK_K // SPLIT_K
    for it in range(steps):
        t = pid_k * steps + it
        k0 = t * BLOCK_K
        g = k0 // 128
        b = tl.load(q_ptr + rn[None, :] * (K // 2) + (t * HALF + rh)[:, None], mask=n_ok[None, :], other=0)
        b = b.to(tl.int32)
        lo = ((b & 0xF) | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
        hi = (((b >> 4) & 0xF) | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
        a0 = tl.load(x_ptr + rm[:, None] * K + (k0 + rh)[None, :], mask=m_ok[:, None], other=0.0)
        a1 = tl.load(x_ptr + rm[:, None] * K + (k0 + HALF + rh)[None, :], mask=m_ok[:, None], other=0.0)
        s = tl.load(s_ptr + g * N + rn, mask=n_ok, other=0.0)
        z = tl.load(z_ptr + g * N + rn, mask=n_ok, other=0.0)
        if F32:
            a0, a1, lo, hi = a0.to(tl.float32), a1.to(tl.float32), lo.to(tl.float32), hi.to(tl.float32)
        if FACT:
            p = tl.dot(a0, lo)
            p = tl.dot(a1, hi, p)
            xs = tl.sum(a0.to(tl.float32), axis=1) + tl.sum(a1.to(tl.float32), axis=1)
            acc += s[None, :] * (p - (128.0 + z)[None, :] * xs[:, None])
        else:
            c = (128.0 + z)[None, :]
            w0 = ((lo.to(tl.float32) - c) * s[None, :]).to(a0.dtype)
            w1 = ((hi.to(tl.float32) - c) * s[None, :]).to(a0.dtype)
            acc = tl.dot(a0, w0, acc)
            acc = tl.dot(a1, w1, acc)
    out = y_ptr + rm[:, None] * N + rn[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K > 1:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------- host side

CONFIGS_8 = {  # M upper bound -> (BM, BN, BK, warps, stages)
    64: [(64, 64, 128, 4, 4), (64, 128, 64, 4, 4), (64, 128, 128, 4, 3), (32, 128, 128, 4, 4)],
    256: [(128, 128, 64, 8, 3), (128, 64, 128, 4, 4), (64, 128, 128, 4, 4), (128, 128, 128, 8, 3)],
    1 << 30: [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 128, 8, 3), (256, 128, 64, 8, 3),
              (128, 128, 64, 4, 4)],
}
CONFIGS_4 = {  # (BM, BN, BK, warps, stages, split_k)
    16: [(16, 64, 128, 4, 4, 1), (16, 64, 128, 4, 4, 2), (16, 128, 128, 4, 4, 2),
         (16, 128, 128, 4, 3, 4)],
    64: [(32, 64, 128, 4, 4, 1), (64, 64, 128, 4, 4, 1), (64, 128, 128, 4, 3, 1), (32, 128, 128, 4, 4, 2)],
    1 << 30: [(128, 128, 128, 8, 3, 1), (128, 64, 128, 4, 4, 1), (64, 128, 128, 4, 4, 1), (128, 256, 128, 8, 3, 1)],
}


def _configs(table, m):
    return next(v for top, v in sorted(table.items()) if m <= top)


def _time_graph(fns):
    """Median microseconds per call of a CUDA graph that calls every fn in ``fns`` once."""
    return _graph_us(fns, reps=20)


def _best(tag, label, configs, launch, weights, out, ref, log):
    """Time ``launch(w, cfg)`` over ``weights`` for each config; the fastest as a table row.

    Each config's output (``out`` after one call) is checked against ``ref`` first; a config
    that fails to compile or launch is logged and skipped.
    """
    best = None
    for cfg in configs:
        name = f"{cfg[0]}x{cfg[1]}x{cfg[2]} w{cfg[3]} s{cfg[4]}" + (f" sk{cfg[5]}" if len(cfg) > 5 else "")
        try:
            launch(weights[0], cfg)
            torch.cuda.synchronize()
            err = ((out(cfg).float() - ref).abs().max() / ref.abs().max()).item()
            t = _time_graph([lambda w=w, cfg=cfg: launch(w, cfg) for w in weights])
        except Exception as e:  # noqa: BLE001
            log(f"{tag} {label} {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
            continue
        log(f"{tag} {label} {name}: {t:.1f} us, rel err {err:.2e}")
        if best is None or t < best[2]:
            best = (label, name, t, err)
    return best


def _copies(nbytes):
    return max(1, min(64, -(-(256 << 20) // nbytes)))


def probe_8bit(n, k, m, log):
    rows = []
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w_bf16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    s = (w_bf16.float().abs().amax(1) / 127.0).clamp_min(1e-8)
    q8 = torch.round(w_bf16.float() / s[:, None]).clamp(-127, 127).to(torch.int8)
    s8 = (w_bf16.float().abs().amax(1) / 448.0).clamp_min(1e-8)
    f8 = (w_bf16.float() / s8[:, None]).to(torch.float8_e4m3fn)
    c = _copies(n * k)
    ref8 = (x.float() @ (q8.float() * s[:, None]).T)
    reff8 = (x.float() @ (f8.float() * s8[:, None]).T)
    ones = torch.ones(n, device="cuda")
    ws_b = [w_bf16.clone() for _ in range(max(1, c // 2))]
    ws_8 = [q8.clone() for _ in range(c)]
    ws_f = [f8.view(torch.uint8).clone() for _ in range(c)]
    y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    t_bf16 = _time_graph([lambda w=w: torch.nn.functional.linear(x, w) for w in ws_b])
    rows.append(("bf16 F.linear", "-", t_bf16, None))
    try:
        from lowbit.ops.triton_int8 import w8a16_linear
        t = _time_graph([lambda w=w: w8a16_linear(x, w, s) for w in ws_8])
        err = ((w8a16_linear(x, q8, s).float() - ref8).abs().max() / ref8.abs().max()).item()
        rows.append(("lowbit w8a16_linear int8 (table)", "-", t, err))
        t = _time_graph([lambda w=w: w8a16_linear(x, w.view(torch.float8_e4m3fn), s8) for w in ws_f])
        err = ((w8a16_linear(x, f8, s8).float() - reff8).abs().max() / reff8.abs().max()).item()
        rows.append(("lowbit w8a16_linear e4m3 (table)", "-", t, err))
    except Exception as e:  # noqa: BLE001
        log(f"lowbit w8a16_linear failed: {type(e).__name__}: {e}")
    for conv in CONVS[:8]:
        code = _CODE[conv]
        if conv == "bf16":
            wl, sc, ref = ws_b, ones, (x.float() @ w_bf16.float().T)
        elif conv.startswith("i8"):
            wl, sc, ref = ws_8, s, ref8
        else:
            wl, sc, ref = ws_f, s8, reff8

        def launch(w, cfg, sc=sc, code=code):
            bm, bn, bk, nw, ns = cfg
            _mm8[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](x, w, sc, y, m, n, k, CONV=code, BLOCK_M=bm, BLOCK_N=bn,
                                                            BLOCK_K=bk, GROUP_M=8, num_warps=nw, num_stages=ns)
        best = _best(f"{n}x{k} M={m}", conv, _configs(CONFIGS_8, m), launch, wl, lambda cfg: y, ref, log)
        if best:
            rows.append(best)
    return t_bf16, rows


def probe_4bit(n, k, m, log):
    rows = []
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    codes = torch.randint(0, 16, (n, k), device="cuda", dtype=torch.uint8)
    g = k // 128
    s = torch.rand(g, n, device="cuda") * 0.01 + 0.001
    z = torch.rand(g, n, device="cuda") * 15.0  # float zero point on the code scale: w = (q - z) s
    w = (codes.float() - z.T.repeat_interleave(128, 1)) * s.T.repeat_interleave(128, 1)
    ref = x.float() @ w.T
    # pack: per step of 128 k, byte j = code(k0 + j) | code(k0 + 64 + j) << 4
    cv = codes.view(n, k // 128, 2, 64)
    packed = (cv[:, :, 0, :] | (cv[:, :, 1, :] << 4)).reshape(n, k // 2).contiguous()
    c = _copies(packed.numel())
    qs = [packed.clone() for _ in range(c)]
    wb = [w.to(torch.bfloat16) for _ in range(max(1, _copies(n * k * 2)))]
    t_bf16 = _time_graph([lambda w=w: torch.nn.functional.linear(x, w) for w in wb])
    rows.append(("bf16 F.linear", "-", t_bf16, None))
    for conv, fact in (("i4-magic", False), ("i4-fact", True)):
        configs = [c for c in _configs(CONFIGS_4, m) if c[2] == 128]  # the byte layout pairs k, k + 64 per 128
        outs = {c: torch.empty(m, n, device="cuda", dtype=torch.float32 if c[5] > 1 else torch.bfloat16) for c in configs}

        def launch(q, cfg, fact=fact):
            bm, bn, bk, nw, ns, sk = cfg
            y = outs[cfg]
            if sk > 1:
                y.zero_()
            _mm4[(triton.cdiv(m, bm) * triton.cdiv(n, bn), sk)](x, q, s, z, y, m, n, k, FACT=fact, BLOCK_M=bm,
                                                               BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, SPLIT_K=sk,
                                                               num_warps=nw, num_stages=ns)
        best = _best(f"{n}x{k} M={m}", conv, configs, launch, qs, outs.__getitem__, ref, log)
        if best:
            rows.append(best)
    return t_bf16, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes8", default="14336x4096,4096x14336")
    p.add_argument("--m8", default="64,256,1024,4096")
    p.add_argument("--shapes4", default="14336x4096,4096x4096")
    p.add_argument("--m4", default="16,64,256")
    p.add_argument("--out", default=None)
    p.add_argument("--log", default=None)
    args = p.parse_args(argv)
    logf = open(args.log, "w") if args.log else None

    def log(msg):
        print(msg, flush=True)
        if logf:
            logf.write(msg + "\n")
            logf.flush()

    props = torch.cuda.get_device_properties(0)
    lines = [f"# Mixed-input GEMM conversion probe, {props.name}",
             "",
             f"torch {torch.__version__}, triton {triton.__version__}; bf16 activations; CUDA-graph replays over "
             "weight copies (>= 256 MB); median per call. rel err: max |y - ref| / max |ref| against float32 math "
             "on the same codes.",
             "",
             "| N x K | M | kernel | config | us | x bf16 | rel err |",
             "|---|---|---|---|---|---|---|"]
    jobs = [("8", s, int(m)) for s in args.shapes8.split(",") if s for m in args.m8.split(",") if m]
    jobs += [("4", s, int(m)) for s in args.shapes4.split(",") if s for m in args.m4.split(",") if m]
    for kind, shape, m in jobs:
        n, k = (int(v) for v in shape.split("x"))
        t_bf16, rows = (probe_8bit if kind == "8" else probe_4bit)(n, k, m, log)
        for name, cfg, t, err in rows:
            e = "-" if err is None else f"{err:.1e}"
            lines.append(f"| {n}x{k} | {m} | {name} | {cfg} | {t:.1f} | {t_bf16 / t:.2f} | {e} |")
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
