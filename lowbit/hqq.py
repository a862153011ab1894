"""HQQ-style optimization of int4 groupwise scales and zero points (no calibration data).

Three stages, all per group of ``group_size`` weights, starting from min-max qparams:

0. Range shrink: clip a fraction of each group's [min, max] around its centre (clipping
   the tails trades a few large errors for a finer step everywhere else).
1. (Off by default, ``iters=0``.) Half-quadratic zero-point iterations (Badri & Shaji, "Half-Quadratic Quantization of
   Large Machine Learning Models", 2023, https://mobiusml.github.io/hqq_blog/). The
   error W - dequant(quant(W)) is split with an auxiliary variable E that absorbs
   outliers under an l_p (p < 1) penalty, solved by generalized soft-thresholding, and
   the zero point gets the closed-form update of the quadratic part:
       q  = clamp(round(W / s + z))            (codes; z in the code domain)
       E  = shrink_p(W - (q - z) s, beta)       (outlier part of the error)
       z  = mean(q - (W - E) / s)               (zero that best explains W - E)
       beta *= kappa
2. Least-squares refit (our addition, an alternating minimization of the L2 error):
   with codes fixed, (s, z) solve the per-group linear regression W ~ s q - s z
   (int zero points: z fixed, s = <q - z, W> / |q - z|^2); then the codes are rounded
   again, until the error stops falling. The refit stops in the nearest fixed point of
   its codes, so a second round starts from nudged qparams (z +- 0.5 code, s +- 2%)
   where they help: +0.05 dB over stage 1 at a third of its cost.

Every candidate is scored by the plain L2 error of its group and each group keeps its
best, so the result is never worse than min-max in L2 (SQNR) for any group.

Speed: the groups are processed in chunks of 2^18 weights per CPU thread, so each
stage's chain of elementwise ops stays in the CPU's cache instead of streaming the whole
layer through memory per op, and in stages 1 and 2 each group stops once an iteration
lowers its L2 error by less than ``tol`` (relative), so the result of a group never
depends on the chunking. It runs on the weight's device.
"""

from __future__ import annotations

import torch

from . import primitives as P

__all__ = ["hqq_int4_qparams"]

_QMIN, _QMAX = 0, 15
_MID = 8  # the float zero point's centre code
_MIN_SCALE = 2.0**-20  # same floor as lowbit.tensors.int4_common's min-max scales
# Fractions of a group's [min, max] range clipped in stage 0 (0 = min-max itself).
# Four are enough: the refit below moves each group to its own optimum from any of them
# (ten candidates measured the same SQNR, +0.000 dB, at 1.7x the time).
_RANGE_SHRINK = (0.04, 0.1, 0.16, 0.25)
# Weights per chunk and CPU thread: 2^18 float32 = 1 MiB per temporary, within a core's L2
# on current x86 server CPUs; on GPUs larger chunks only cut launch overhead.
_CPU_CHUNK_ELEMS_PER_THREAD = 1 << 18
_GPU_CHUNK_ELEMS = 1 << 24
# Stage 2 rounds: (zero shift in codes, scale factor) nudges tried before each refit.
_NUDGE_ROUNDS = ((), ((0.5, 1.0), (-0.5, 1.0), (0.0, 1.02), (0.0, 0.98)))


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding: prox of |x|^p / beta (HQQ eq. 6)."""
    ax = x.abs()
    return torch.sign(x) * torch.relu(ax - ax.clamp(min=1e-12).pow(p - 1) / beta)


def _codes(w, s, z):
    return torch.round(w / s + z).clamp_(_QMIN, _QMAX)


def _err(w, s, z, round_z: bool):
    """Per-group squared L2 error of quantizing ``w`` with (s, z): one temporary, six passes."""
    zz = torch.round(z) if round_z else z
    t = torch.addcmul(zz, w, s.reciprocal()).round_().clamp_(_QMIN, _QMAX).sub_(zz)
    t = torch.addcmul(w, t, s, value=-1.0)  # w - (q - z) s
    return torch.linalg.vector_norm(t, dim=1).square()


def _refit(wg, s, z, round_z):
    """Least-squares (s, z) for the codes of (s, z): int zero points keep z."""
    q = _codes(wg, s, z)
    if round_z:
        d = q - z
        s = ((d * wg).sum(1, keepdim=True) / d.pow(2).sum(1, keepdim=True).clamp(min=1e-12)).clamp(min=_MIN_SCALE)
        return s, z
    qm, wm = q.mean(1, keepdim=True), wg.mean(1, keepdim=True)
    q.sub_(qm)
    var = q.square().mean(1, keepdim=True)
    cov = (q * (wg - wm)).mean(1, keepdim=True)
    ok = var > 0
    s_ls = torch.where(ok, cov / var.clamp(min=1e-12), s).clamp(min=_MIN_SCALE)
    return s_ls, torch.where(ok, qm - wm / s_ls, z)  # w ~ s (q - z)  =>  z = mean(q) - mean(w) / s


class _Best:
    """Per-group best (s, z) so far and its L2 error."""

    def __init__(self, wg, s, z, round_z):
        self.wg, self.round_z = wg, round_z
        self.s, self.z = s.clone(), z.clone()
        self.err = _err(wg, s, z, round_z)

    def keep(self, s_new, z_new) -> None:
        e = _err(self.wg, s_new, z_new, self.round_z)
        better = (e < self.err).unsqueeze(1)
        self.s = torch.where(better, s_new, self.s)
        self.z = torch.where(better, z_new, self.z)
        self.err = torch.minimum(e, self.err)

    def total(self) -> float:
        return float(self.err.sum())


def _optimize_chunk(wg, round_z, iters, lp, beta, kappa, refit_iters, tol):
    lo, hi = wg.amin(dim=1, keepdim=True), wg.amax(dim=1, keepdim=True)
    if round_z:  # same start as min-max int zero points: the range includes 0
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    s = ((hi - lo) / (_QMAX - _QMIN)).clamp(min=_MIN_SCALE)
    z = -lo / s  # code-domain zero: x = (q - z) * s
    if round_z:
        z = torch.round(z).clamp(_QMIN, _QMAX)
    best = _Best(wg, s, z, round_z)

    # Stage 0: shrink the [min, max] range around its centre.
    for shrink in _RANGE_SHRINK:
        s_c = (s * (1 - shrink)).clamp(min=_MIN_SCALE)
        z_c = -(lo + (hi - lo) * shrink / 2) / s_c  # new min = lo + shrink / 2 of the range
        if round_z:
            z_c = torch.round(z_c).clamp(_QMIN, _QMAX)
        best.keep(s_c, z_c)

    # Early stop is per group: a group whose L2 error improved by less than ``tol`` keeps
    # its (s, z) from then on, so every group's result depends on that group alone (not on
    # which chunk, thread count or fused neighbour it was processed with).
    def still_active(active, before):
        if tol <= 0:
            return active
        return active & ((before - best.err) > tol * before.clamp(min=1e-30)).reshape(active.shape)

    # Stage 1: half-quadratic iterations on z (s fixed).
    s, z = best.s.clone(), best.z.clone()
    b = beta
    active = torch.ones_like(z, dtype=torch.bool)
    for _ in range(iters):
        before = best.err.clone()
        q = _codes(wg, s, z)
        e_out = _shrink_lp(wg - (q - z) * s, b, lp)
        z_new = (q - (wg - e_out) / s).mean(dim=1, keepdim=True)
        if round_z:
            z_new = torch.round(z_new).clamp(_QMIN, _QMAX)
        z = torch.where(active, z_new, z)
        b *= kappa
        best.keep(s, z)
        active = still_active(active, before)
        if not bool(active.any()):
            break

    # Stage 2: least-squares refit of (s, z) for the best codes so far, then re-round;
    # between rounds, nudge each group's zero and step and keep what helps (the refit
    # alone stops in the nearest fixed point of its codes).
    for nudges in _NUDGE_ROUNDS:
        s, z = best.s.clone(), best.z.clone()
        for dz, ds in nudges:
            z_n = z + dz
            if round_z:
                z_n = z_n.clamp(_QMIN, _QMAX)
            best.keep(s * ds, z_n)
        s, z = best.s.clone(), best.z.clone()
        active = torch.ones_like(z, dtype=torch.bool)
        for _ in range(refit_iters):
            before = best.err.clone()
            s_new, z_new = _refit(wg, s, z, round_z)
            s, z = torch.where(active, s_new, s), torch.where(active, z_new, z)
            best.keep(s, z)
            active = still_active(active, before)
            if not bool(active.any()):
                break
    return best.s, best.z


def hqq_int4_qparams(
    w: torch.Tensor,
    group_size: int,
    zero_point_kind,
    *,
    iters: int = 0,
    lp: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    refit_iters: int = 10,
    tol: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimized float32 (scale, zero_point) [N, K // group_size] for uint4 codes 0..15.

    ``zero_point_kind="float"`` returns the float zero of ``x = (q - 8) * s + zero``;
    ``"int"`` returns integer-valued zeros in [0, 15] (as float32) for ``x = (q - z) * s``.
    ``iters``: half-quadratic iterations (stage 1), off by default: after the nudged
    refit of stage 2 they cost 3x the time for < 0.01 dB (benchmarks/hqq_speed.py).
    ``tol``: in stages 1 and 2 a group stops when an iteration improves its L2 error by
    less than this fraction (0: run every iteration). Runs on ``w``'s device.
    """
    kind = P._enum(P.ZeroPointKind, zero_point_kind, "zero_point_kind")
    round_z = kind is P.ZeroPointKind.INT
    n, k = w.shape
    wg = w.reshape(-1, group_size)  # one row per group
    elems = _CPU_CHUNK_ELEMS_PER_THREAD * torch.get_num_threads() if w.device.type == "cpu" else _GPU_CHUNK_ELEMS
    chunk = max(1, elems // group_size)
    scales, zeros = [], []
    for g0 in range(0, wg.shape[0], chunk):
        s, z = _optimize_chunk(wg[g0:g0 + chunk].to(torch.float32), round_z, iters, lp, beta, kappa,
                               refit_iters, tol)
        scales.append(s)
        zeros.append(z)
    scale = torch.cat(scales).reshape(n, k // group_size)
    z = torch.cat(zeros).reshape(n, k // group_size)
    if round_z:
        return scale, z
    return scale, (_MID - z) * scale  # (q - z) s = (q - 8) s + (8 - z) s
