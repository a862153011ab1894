"""HQQ-style optimization of int4 groupwise scales and zero points (no calibration data).

Two stages, both per group of ``group_size`` weights, starting from min-max qparams:

1. Half-quadratic zero-point iterations (Badri & Shaji, "Half-Quadratic Quantization of
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
   again.

Every candidate is scored by the plain L2 error of its group and each group keeps its
best, so the result is never worse than min-max in L2 (SQNR) for any group.
"""

from __future__ import annotations

import torch

from . import primitives as P

__all__ = ["hqq_int4_qparams"]

_QMIN, _QMAX = 0, 15
_MID = 8  # the float zero point's centre code
# Fractions of a group's [min, max] range clipped in stage 0 (0 = min-max itself).
_RANGE_SHRINK = (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3)


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding: prox of |x|^p / beta (HQQ eq. 6)."""
    ax = x.abs()
    return torch.sign(x) * torch.relu(ax - ax.clamp(min=1e-12).pow(p - 1) / beta)


def _codes(w, s, z):
    return torch.round(w / s + z).clamp(_QMIN, _QMAX)


def _err(w, s, z, round_z: bool):
    zz = torch.round(z) if round_z else z
    q = _codes(w, s, zz)
    return ((q - zz) * s - w).pow(2).sum(dim=1)


def hqq_int4_qparams(
    w: torch.Tensor,
    group_size: int,
    zero_point_kind,
    *,
    iters: int = 20,
    lp: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    refit_iters: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimized float32 (scale, zero_point) [N, K // group_size] for uint4 codes 0..15.

    ``zero_point_kind="float"`` returns the float zero of ``x = (q - 8) * s + zero``;
    ``"int"`` returns integer-valued zeros in [0, 15] (as float32) for ``x = (q - z) * s``.
    """
    kind = P._enum(P.ZeroPointKind, zero_point_kind, "zero_point_kind")
    round_z = kind is P.ZeroPointKind.INT
    n, k = w.shape
    wg = w.to(torch.float32).reshape(-1, group_size)  # one row per group
    lo, hi = wg.amin(dim=1, keepdim=True), wg.amax(dim=1, keepdim=True)
    if round_z:  # same start as min-max int zero points: the range includes 0
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    s = ((hi - lo) / (_QMAX - _QMIN)).clamp(min=2.0**-20)
    z = -lo / s  # code-domain zero: x = (q - z) * s
    if round_z:
        z = torch.round(z).clamp(_QMIN, _QMAX)

    best_s, best_z = s.clone(), z.clone()
    best = _err(wg, s, z, round_z)

    def keep(s_new, z_new):
        nonlocal best
        e = _err(wg, s_new, z_new, round_z)
        better = (e < best).unsqueeze(1)
        best_s.copy_(torch.where(better, s_new, best_s))
        best_z.copy_(torch.where(better, z_new, best_z))
        best = torch.minimum(e, best)

    # Stage 0: shrink the [min, max] range around its centre (clipping the tails of a
    # group trades a few large errors for a finer step everywhere else).
    for shrink in _RANGE_SHRINK:
        s_c = (s * (1 - shrink)).clamp(min=2.0**-20)
        z_c = -(lo + (hi - lo) * shrink / 2) / s_c  # new min = lo + shrink / 2 of the range
        if round_z:
            z_c = torch.round(z_c).clamp(_QMIN, _QMAX)
        keep(s_c, z_c)
    s, z = best_s.clone(), best_z.clone()

    # Stage 1: half-quadratic iterations on z (s fixed).
    b = beta
    for _ in range(iters):
        q = _codes(wg, s, z)
        e_out = _shrink_lp(wg - (q - z) * s, b, lp)
        z = (q - (wg - e_out) / s).mean(dim=1, keepdim=True)
        if round_z:
            z = torch.round(z).clamp(_QMIN, _QMAX)
        b *= kappa
        keep(s, z)

    # Stage 2: least-squares refit of (s, z) for the best codes so far, then re-round.
    s, z = best_s.clone(), best_z.clone()
    for _ in range(refit_iters):
        q = _codes(wg, s, z)
        if round_z:
            d = q - z
            s = ((d * wg).sum(1, keepdim=True) / d.pow(2).sum(1, keepdim=True).clamp(min=1e-12)).clamp(min=2.0**-20)
        else:
            qm, wm = q.mean(1, keepdim=True), wg.mean(1, keepdim=True)
            var = (q - qm).pow(2).mean(1, keepdim=True)
            cov = ((q - qm) * (wg - wm)).mean(1, keepdim=True)
            ok = var > 0
            s_ls = torch.where(ok, cov / var.clamp(min=1e-12), s).clamp(min=2.0**-20)
            z = torch.where(ok, qm - wm / s_ls, z)  # w ~ s (q - z)  =>  z = mean(q) - mean(w) / s
            s = s_ls
        keep(s, z)

    scale = best_s.reshape(n, k // group_size)
    z = best_z.reshape(n, k // group_size)
    if round_z:
        return scale, z
    return scale, (_MID - z) * scale  # (q - z) s = (q - 8) s + (8 - z) s
