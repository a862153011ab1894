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
   (int zero points: z fixed, s = <q - z, W> / |q - z|^2), over-relaxed (a step 1.6x
   as far); then the codes are rounded again, until the error stops falling. The refit stops in the nearest fixed point of
   its codes, so a second round starts from nudged qparams (float zero points: z +- 0.5
   and +- 0.25 code; int: z +- 1 code, s +- 2%) where they help.

Every candidate is scored by the plain L2 error of its group and each group keeps its
best, so the result is never worse than min-max in L2 (SQNR) for any group.

Speed (benchmarks/hqq_speed.py): the groups are processed in chunks of 2^21 weights per
CPU thread, so each stage's chain of elementwise ops works on a few MiB (L3) instead of
streaming the whole layer through memory. Every op is a plain in-place or ``out=`` pass
over [groups, group_size] with per-group [groups, 1] operands (ATen vectorizes those;
``addcmul`` with two such operands took 2-3x a ``mul`` plus an ``add_`` on CPU,
``benchmarks/hqq_speed.py --ops``). One evaluation of a candidate (codes, residual, L2
error) is six passes; the refit reads its statistics (sum q, sum q^2, sum q w) off the
codes of that evaluation in four, so an iteration of stage 2 is ten passes. In stages 1
and 2 each group stops once an iteration lowers its L2 error by less than ``tol``
(relative), and the stopped groups are dropped from the working set, so a group's result
depends on that group alone (not on chunking, thread count or a fused neighbour layer).
It runs on the weight's device; ``tol=0`` (every iteration, no early stop) has no
data-dependent control flow.
"""

from __future__ import annotations

import torch

from . import primitives as P

__all__ = ["hqq_int4_qparams"]

_QMIN, _QMAX = 0, 15
_MID = 8  # the float zero point's centre code
_MIN_SCALE = 2.0**-20  # same floor as lowbit.tensors.int4_common's min-max scales
# Per zero-point kind: the fractions of a group's [min, max] range clipped in stage 0
# (min-max itself is always a candidate) and the nudges (zero shift in codes, scale
# factor) tried before the second refit round of stage 2. On 512 rows of the Student-t
# layer of benchmarks/hqq_speed.py, float zero points: shrinks (0.04, 0.1, 0.16, 0.25)
# with nudges z +- 0.5, s +- 2% gave 17.565 dB for 126 passes over each group, one shrink
# with z +- 0.5, z +- 0.25 17.589 dB for 112; int zero points: one shrink cost 0.003 dB
# (17.214 vs 17.217), so they keep four. (Measured before the over-relaxation below.)
_FLOAT_SEARCH = ((0.1,), ((0.5, 1.0), (-0.5, 1.0), (0.25, 1.0), (-0.25, 1.0)))
_INT_SEARCH = ((0.04, 0.1, 0.16, 0.25), ((1.0, 1.0), (-1.0, 1.0), (0.0, 1.02), (0.0, 0.98)))
# Stage 2 steps this far along each refit (s, z) - (s, z)_before: the alternating refit
# converges linearly (8% of the groups still improve by > 0.1% after ten plain steps).
# 1.6 measured +0.009 dB in 6% fewer passes than 1.0 (float zero points, 512 rows of the
# layer of benchmarks/hqq_speed.py), 2.0 no gain; int zero points the same either way.
_OVERRELAX = 1.6
# Weights per chunk and CPU thread: 2^21 float32 = 8 MiB per temporary. On the 2-core
# Sapphire Rapids (2 MiB L2 per core) 2^18..2^21 ran within noise of each other at one
# thread and 2^22 slower; with two threads on a loaded machine every op waits for the
# other thread's time slice, so fewer ops win there and 2^18 was slowest
# (benchmarks/results/hqq_speed_xeon-spr.md, --chunk-log2). On GPUs larger chunks only
# cut launch overhead.
_CPU_CHUNK_ELEMS_PER_THREAD = 1 << 21
_GPU_CHUNK_ELEMS = 1 << 24


class _Chunk:
    """A chunk of groups as centred float32 rows ``wc = w - wm`` [G, n] with two scratch
    buffers of that shape; ``c`` [G, 3] holds each group's (wm, mean(w), sum(wc)) and
    ``best`` [G, 3] its best (s, z) so far with their L2 error."""

    def __init__(self, wg: torch.Tensor, round_z: bool):
        self.round_z = round_z
        self.n = wg.shape[1]
        wm = wg.mean(1, keepdim=True)
        self.wc = wg - wm  # centred: the refit's sum q w without cancellation
        swc = self.wc.sum(1, keepdim=True)  # ~0; kept so that mean(w) = wm + swc / n exactly
        self.c = torch.cat([wm, wm + swc / self.n, swc], 1)
        self.t = torch.empty_like(self.wc)
        self.q = torch.empty_like(self.wc)
        self.best = None

    def eval(self, wc, c, s, z):
        """L2 error per group of (s, z) on centred rows ``wc`` (constants ``c``); leaves
        the codes in ``self.q[:G]``: six passes over the rows."""
        g = wc.shape[0]
        t, q = self.t[:g], self.q[:g]
        r = s.reciprocal()
        torch.mul(wc, r, out=t).add_(torch.addcmul(z, c[:, :1], r))  # code domain: w / s + z
        torch.round(t, out=q).clamp_(_QMIN, _QMAX)
        t.sub_(q)  # w - (q - z) s = s (w / s + z - q)
        return (torch.linalg.vector_norm(t, dim=1, keepdim=True) * s).square_()

    def keep(self, s, z) -> None:
        """Keep (s, z) for the groups of the chunk it improves."""
        err = self.eval(self.wc, self.c, s, z)
        cand = torch.cat([s, z, err], 1)
        self.best = cand if self.best is None else torch.where(err < self.best[:, 2:], cand, self.best)

    def refit(self, wc, c, s, z):
        """Least-squares (s, z) for the codes in ``self.q`` (int zero points keep z): four
        passes over the rows (sum q, sum q^2, sum q (w - wm))."""
        g = wc.shape[0]
        t, q, n = self.t[:g], self.q[:g], self.n
        sq = q.sum(1, keepdim=True)
        # sum q^2 is an integer below 2^24 (n <= 256: n sum q^2 <= 14.7M), so the norm
        # (one pass, a few ulps off) rounds back to it exactly.
        sqq = torch.linalg.vector_norm(q, dim=1, keepdim=True).square_().round_()
        sqw = torch.mul(q, wc, out=t).sum(1, keepdim=True)
        wm, mw, swc = c[:, :1], c[:, 1:2], c[:, 2:]
        # Sums and products of integers below 2^24 are exact in float32.
        if self.round_z:  # s = <q - z, w> / |q - z|^2
            d2 = torch.addcmul(sqq, z, n * z - 2 * sq)
            dw = torch.addcmul(sqw, wm, sq - n * z).addcmul_(z, swc, value=-1.0)
            return (dw / d2.clamp(min=1e-12)).clamp_(min=_MIN_SCALE), z
        var_n = torch.addcmul(n * sqq, sq, sq, value=-1.0)  # n^2 var(q)
        cov_n = torch.addcmul(n * sqw, sq, swc, value=-1.0)  # n^2 cov(q, w)
        ok = var_n > 0
        s_ls = torch.where(ok, cov_n / var_n.clamp(min=1e-12), s).clamp_(min=_MIN_SCALE)
        return s_ls, torch.where(ok, sq / n - mw / s_ls, z)  # w ~ s (q - z): z = mean(q) - mean(w) / s

    def refit_round(self, iters: int, tol: float) -> None:
        """Stage 2: refit each group from its best (s, z) until its error falls by less
        than ``tol``; the groups that stop leave the working set (their best is written
        back, the others' rows, codes and state are copied out), so a group's iterations
        depend on that group alone."""
        rows = None  # indices of the working set in the chunk (None: all of it)
        wc, c, best = self.wc, self.c, self.best
        s, z = best[:, :1], best[:, 1:2]
        self.eval(wc, c, s, z)  # the codes of the best (s, z)
        for _ in range(iters):
            s_fit, z_fit = self.refit(wc, c, s, z)
            s = torch.lerp(s, s_fit, _OVERRELAX).clamp_(min=_MIN_SCALE)
            z = z if self.round_z else torch.lerp(z, z_fit, _OVERRELAX)
            err = self.eval(wc, c, s, z)
            be = best[:, 2:]
            best = torch.where(err < be, torch.cat([s, z, err], 1), best)
            if tol <= 0:
                continue
            # The groups still running improved, so their best is their current (s, z).
            keep = torch.lt(err, be * (1 - tol)).reshape(-1).nonzero().reshape(-1)
            size, m = best.shape[0], keep.shape[0]
            if m == size:
                continue
            self._write_back(rows, best)
            if m == 0:
                return
            rows = keep if rows is None else rows.index_select(0, keep)
            wc, c, best = wc.index_select(0, keep), c.index_select(0, keep), best.index_select(0, keep)
            s, z = best[:, :1], best[:, 1:2]
            torch.index_select(self.q[:size], 0, keep, out=self.t[:m])  # their codes
            self.t, self.q = self.q, self.t
        self._write_back(rows, best)

    def _write_back(self, rows, best) -> None:
        if rows is None:
            self.best = best
        else:
            self.best.index_copy_(0, rows, best)

    def half_quadratic(self, iters, lp, beta, kappa, tol) -> None:
        """Stage 1: half-quadratic iterations on z (s fixed) for every group until it stops."""
        w = self.wc + self.c[:, :1]
        s, z = self.best[:, :1], self.best[:, 1:2].clone()
        active = torch.ones_like(z, dtype=torch.bool)
        for _ in range(iters):
            before = self.best[:, 2:]
            q = torch.round(w / s + z).clamp_(_QMIN, _QMAX)
            e_out = _shrink_lp(w - (q - z) * s, beta, lp)
            z_new = (q - (w - e_out) / s).mean(dim=1, keepdim=True)
            if self.round_z:
                z_new = torch.round(z_new).clamp_(_QMIN, _QMAX)
            z = torch.where(active, z_new, z)
            beta *= kappa
            self.keep(s, z)
            if tol > 0:
                active &= self.best[:, 2:] < before * (1 - tol)
                if not bool(active.any()):
                    break


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding: prox of |x|^p / beta (HQQ eq. 6)."""
    ax = x.abs()
    return torch.sign(x) * torch.relu(ax - ax.clamp(min=1e-12).pow(p - 1) / beta)


def _optimize_chunk(wg, round_z, iters, lp, beta, kappa, refit_iters, tol):
    g = _Chunk(wg, round_z)
    lo, hi = torch.aminmax(wg, dim=1, keepdim=True)
    if round_z:  # same start as min-max int zero points: the range includes 0
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    s = ((hi - lo) / (_QMAX - _QMIN)).clamp(min=_MIN_SCALE)
    z = -lo / s  # code-domain zero: x = (q - z) * s
    if round_z:
        z = torch.round(z).clamp_(_QMIN, _QMAX)
    g.keep(s, z)

    # Stage 0: shrink the [min, max] range around its centre.
    shrinks, nudges = _INT_SEARCH if round_z else _FLOAT_SEARCH
    for shrink in shrinks:
        s_c = (s * (1 - shrink)).clamp(min=_MIN_SCALE)
        z_c = -(lo + (hi - lo) * shrink / 2) / s_c  # new min = lo + shrink / 2 of the range
        if round_z:
            z_c = torch.round(z_c).clamp_(_QMIN, _QMAX)
        g.keep(s_c, z_c)

    if iters:
        g.half_quadratic(iters, lp, beta, kappa, tol)

    # Stage 2: refit, nudge each group's zero and step (keeping what helps: the refit
    # alone stops in the nearest fixed point of its codes), refit again.
    g.refit_round(refit_iters, tol)
    s, z = g.best[:, :1], g.best[:, 1:2]
    for dz, ds in nudges:
        g.keep(s * ds, (z + dz).clamp_(_QMIN, _QMAX) if round_z else z + dz)
    g.refit_round(refit_iters, tol)
    return g.best[:, 0], g.best[:, 1]


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
    tol: float = 3e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimized float32 (scale, zero_point) [N, K // group_size] for uint4 codes 0..15.

    ``zero_point_kind="float"`` returns the float zero of ``x = (q - 8) * s + zero``;
    ``"int"`` returns integer-valued zeros in [0, 15] (as float32) for ``x = (q - z) * s``.
    ``iters``: half-quadratic iterations (stage 1), off by default: after the nudged
    refit of stage 2 they cost 3x the time for < 0.01 dB (benchmarks/hqq_speed.py).
    ``tol``: in stages 1 and 2 a group stops when an iteration improves its L2 error by
    less than this fraction (0: run every iteration; 1e-3: 10% more passes for +0.002
    dB on the benchmark layer). Runs on ``w``'s device.
    """
    kind = P._enum(P.ZeroPointKind, zero_point_kind, "zero_point_kind")
    if kind is P.ZeroPointKind.NONE:
        raise ValueError("hqq_int4_qparams: int4 codes are asymmetric: zero_point_kind must be 'float' or 'int', "
                         "got 'none'")
    if w.ndim != 2 or not w.is_floating_point():
        raise ValueError(f"hqq_int4_qparams: expected a float [N, K] weight, got {w.dtype} of shape {tuple(w.shape)}")
    if group_size < 1 or w.shape[1] % group_size:
        raise ValueError(f"hqq_int4_qparams: group_size={group_size} must divide K={w.shape[1]}; "
                         "pick a group size that divides in_features")
    if refit_iters < 0 or iters < 0 or not 0 <= tol < 1:
        raise ValueError(f"hqq_int4_qparams: expected iters >= 0, refit_iters >= 0 and 0 <= tol < 1, "
                         f"got iters={iters}, refit_iters={refit_iters}, tol={tol}")
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
