"""Noise parameters profiled out of a PEtab likelihood (hierarchical optimisation).

A parameter that enters only noise formulas (:attr:`PetabProblem.noise_only
<dynlearn.petab.PetabProblem.noise_only>`) does not move the simulation: given one
simulation, the likelihood's optimum over those parameters ``z`` costs no ODE solve. The
outer optimizer then sees the profiled objective ``f~(x) = min_z f(x, z)`` (pyPESTO's
hierarchical optimisation: Loos et al. 2018, Bioinformatics 34:4266; Schmiester et al.
2020). This module holds the inner problem and the algebra the outer one needs:

* :func:`profile_noise`: ``z*`` within the bounds, on the parameters' scales, for the
  simulated observables of one evaluation (:class:`NoiseRows`), with the objective priors of
  ``z`` when the fit is a posterior one. Where every row's sigma is homogeneous of degree
  one in a single noise parameter (``sigma = c * p``, ``c`` free of ``z``: sigma the
  parameter itself, or a scaling times it) the optimum is closed-form: ``p^2 =
  mean((d / c)^2)`` for normal noise, ``p = mean(|d| / c)`` for Laplace noise, ``d`` the
  residual on the observable's transformed scale; the likelihood is unimodal in ``p`` and
  the blocks are separate, so clipping to the bounds keeps it exact. Otherwise (any other
  noise formula, noise parameters sharing a row, mixed noise distributions, priors) the
  closed form, or the current ``z`` rescaled to the residuals, is a first guess beside the
  current ``z``, and a damped Newton method on the analytic gradient and curvature
  finishes (no ODE solve: the simulated values are fixed).
* The outer gradient is the full one at ``(x, z*(x))`` (the envelope theorem: ``df/dz = 0``
  at an interior optimum, and a bound does not move with ``x``). Its Fisher information is
  the Schur complement ``F_xx - F_xz F_zz^-1 F_zx`` over the ``z`` inside their bounds
  (:func:`schur_complement`); a ``z`` on a bound is a constant of the outer problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dynlearn.petab.problem import from_scale, nllh_terms, to_scale

_LN10 = float(np.log(10.0))

__all__ = ["NoiseRows", "inner_objective", "interior", "profile_noise", "schur_complement"]


@dataclass
class NoiseRows:
    """The rows of one observable in one simulation whose noise depends on a noise-only
    parameter: everything the inner problem needs, the simulation done.

    Attributes
    ----------
    h : ndarray (m,)
        Simulated observable values (untransformed).
    m : ndarray (m,)
        Measurements.
    trans, dist : str
        The observable's transformation and noise distribution (as in
        :func:`~dynlearn.petab.problem.nllh_terms`).
    noise : callable
        ``noise(P, grad) -> (sigma (m,), dsigma/dextras (m, k) or None, idx (m, k))``: the
        noise formula at the linear parameter values ``P``, its derivatives with respect
        to its extra symbols (with ``grad``) and the index into ``P`` of each extra
        (``-1`` for a constant).
    """

    h: np.ndarray
    m: np.ndarray
    trans: str
    dist: str
    noise: Callable


def inner_objective(z, x, z_index, scales, blocks, prior=None, curvature: bool = False):
    """The part of the objective that depends on the noise parameters ``z`` (their rows'
    negative log-likelihood, plus the priors' value when ``prior`` is given), and its
    gradient with respect to ``z`` on their scales; ``x`` gives every other parameter.

    With ``curvature`` also a Hessian ``(f, g, H)``: the likelihood's own curvature in
    sigma (from :func:`~dynlearn.petab.problem.nllh_terms`' derivative: ``r^2 = 1 - sigma
    dL/dsigma`` for normal noise, ``|r| = 1 - sigma dL/dsigma`` for Laplace noise) through
    ``dsigma/dz``, plus the change of scale's second derivative. Exact where sigma is
    affine in each noise parameter with no products of two (``s0 + s1 * obs``,
    ``scaling * sigma``); the priors' curvature is left out."""
    zi = np.asarray(z_index, dtype=int)
    xx = np.array(x, dtype=float)
    xx[zi] = z
    P, dPdx = from_scale(xx, scales)
    nz = zi.size
    pos = -np.ones(P.size, dtype=int)
    pos[zi] = np.arange(nz)
    f, gP = 0.0, np.zeros(P.size)
    HP = np.zeros((nz, nz))
    for b in blocks:
        s, de, idx = b.noise(P, True)
        val, _, d_s = nllh_terms(b.h, s, b.m, b.trans, b.dist)
        f += float(np.sum(val))
        if de is None or not de.size:
            continue
        mask = idx >= 0
        np.add.at(gP, idx[mask], (d_s[:, None] * de)[mask])
        if curvature:
            D = np.zeros((s.size, nz))          # dsigma/dP of the noise parameters
            zm = mask & (pos[np.maximum(idx, 0)] >= 0)
            rows = np.nonzero(zm)[0]
            np.add.at(D, (rows, pos[idx[zm]]), de[zm])
            sd = s * d_s
            c = (2.0 - 3.0 * sd if b.dist == "normal" else 1.0 - 2.0 * sd) / s ** 2
            HP += D.T @ (c[:, None] * D)
    g = gP[zi] * dPdx[zi]
    if curvature:
        sc = np.asarray(scales, dtype=object)[zi]
        d2 = np.where(sc == "log", P[zi], np.where(sc == "log10", P[zi] * _LN10 ** 2, 0.0))
        H = HP * np.outer(dPdx[zi], dPdx[zi]) + np.diag(gP[zi] * d2)
    if prior is not None:
        fp, gp = prior.value_and_grad(xx)
        f, g = f + float(fp), g + np.asarray(gp, dtype=float)[zi]
    return (f, g, H) if curvature else (f, g)


def _guesses(x, zi, scales, blocks):
    """First guesses of the noise parameters (on the scales, unclipped), by position in
    ``zi``: the closed-form optimum of those whose rows all have ``sigma = c * p`` with one
    noise parameter ``p`` and one noise distribution (``exact``), and for the others their
    value times the RMS (normal) or mean absolute (Laplace) weighted residual of their
    rows, as if sigma were proportional to it (a start near the optimum's scale: from
    random starts the noise parameters can be orders of magnitude off)."""
    P, _ = from_scale(x, scales)
    nz = zi.size
    num = np.zeros(nz)          # closed form: sum of (d / c)^2 or |d| / c
    dev = np.zeros(nz)          # rescaling: sum of r^2 or |r|
    n = np.zeros(nz)
    dist = [None] * nz
    exact = np.ones(nz, dtype=bool)
    for b in blocks:
        s, de, idx = b.noise(P, True)
        if de is None:
            continue
        normal = b.dist == "normal"
        onez = np.isin(idx, zi)
        # |d| or d^2 on the transformed scale through nllh_terms (one implementation of the
        # transformations): dL/dsigma at sigma = 1 is 1 - d^2 (normal), 1 - |d| (Laplace)
        d1 = 1.0 - nllh_terms(b.h, np.ones_like(b.h), b.m, b.trans, b.dist)[2]
        # the same weighted by the current sigma: r^2 or |r|
        r = 1.0 - s * nllh_terms(b.h, s, b.m, b.trans, b.dist)[2]
        for k, j in enumerate(zi):
            hit = idx == j
            rows = np.any(hit, axis=1)
            if not np.any(rows):
                continue
            n[k] += rows.sum()
            dev[k] += float(np.sum(r[rows]))
            if dist[k] not in (None, b.dist):
                exact[k] = False
            dist[k] = b.dist
            if not exact[k]:
                continue
            # one noise parameter per row, entering once, sigma = c * p
            ok = np.all(onez[rows].sum(axis=1) == 1) and np.all(hit[rows].sum(axis=1) == 1)
            c = np.sum(np.where(hit, de, 0.0), axis=1)[rows] if ok else None
            if not ok or not np.all(np.isfinite(c)) or np.any(c <= 0) or not np.allclose(
                    s[rows], c * P[j], rtol=1e-10, atol=0.0):
                exact[k] = False
                continue
            num[k] += float(np.sum(d1[rows] / c ** 2 if normal else d1[rows] / c))
    exact &= n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        normal = np.array([d == "normal" for d in dist])
        closed = np.where(normal, np.sqrt(np.maximum(num, 0) / n), np.maximum(num, 0) / n)
        factor = np.where(normal, np.sqrt(np.maximum(dev, 0) / n), np.maximum(dev, 0) / n)
        lin = np.where(exact, closed, P[zi] * factor)
    out = to_scale(lin, [scales[j] for j in zi])
    return np.where(n > 0, out, x[zi]), exact


def profile_noise(x, z_index, lower, upper, scales, blocks, prior=None,
                  xtol: float = 1e-10, maxiter: int = 200) -> np.ndarray:
    """``x`` with its noise parameters ``z = x[z_index]`` at the optimum of the inner
    problem (see the module notes), within ``lower``/``upper`` (on the scales).

    Where no closed form holds: from the better of the current ``z`` and the guesses of
    the module notes, a damped Newton method on :func:`inner_objective`'s curvature
    (eigenvalues floored positive; the damping raised until a step lowers the objective),
    a parameter on a bound that the gradient pushes outward held there, until the step is
    below ``xtol`` on the scales.

    Parameters
    ----------
    x : array-like
        The point; its ``z`` entries are the warm start.
    z_index : sequence of int
        Positions of the noise-only parameters in ``x``.
    lower, upper : array-like
        Bounds of all of ``x`` on the scales.
    scales : sequence of str
        ``"lin"``, ``"log"`` or ``"log10"`` for every entry of ``x``.
    blocks : list of NoiseRows
        The rows whose noise depends on ``z``.
    prior : object with ``value_and_grad(x)``, optional
        The objective priors (added to the inner objective: a posterior fit).
    xtol, maxiter : float, int
        The Newton method's step tolerance and iterations.

    Returns
    -------
    ndarray
        A copy of ``x`` with the optimal ``z``.
    """
    zi = np.asarray(z_index, dtype=int)
    x = np.array(x, dtype=float)
    if zi.size == 0 or not blocks:
        return x
    lo = np.asarray(lower, dtype=float)[zi]
    hi = np.asarray(upper, dtype=float)[zi]
    guess, exact = _guesses(x, zi, scales, blocks)
    guess = np.clip(np.nan_to_num(guess, nan=0.0), lo, hi)
    if prior is None and np.all(exact):
        x[zi] = guess           # exact: separate, unimodal 1-D problems
        return x

    def fun(z):
        f, g, H = inner_objective(z, x, zi, scales, blocks, prior, curvature=True)
        if not (np.isfinite(f) and np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
            return np.inf, g, H
        return f, g, H

    z = np.clip(x[zi], lo, hi)
    cur = fun(z)
    alt = fun(guess)
    if alt[0] < cur[0]:
        z, cur = guess, alt
    f, g, H = cur
    if not np.isfinite(f):
        x[zi] = z
        return x
    lam = 0.0
    for _ in range(maxiter):
        free = ~(((z <= lo) & (g > 0)) | ((z >= hi) & (g < 0)))
        if not np.any(free):
            break
        w, V = np.linalg.eigh(H[np.ix_(free, free)])
        wmax = max(float(np.max(np.abs(w))), 1e-300)
        w = np.maximum(w, 1e-10 * wmax)
        c = V.T @ g[free]
        done = False
        while True:
            step = np.zeros_like(z)
            step[free] = -V @ (c / (w + lam * wmax))
            zn = np.clip(z + step, lo, hi)
            dz = zn - z
            if np.max(np.abs(dz)) <= xtol * (1.0 + np.max(np.abs(z))):
                done = True
                break
            fn, gn, Hn = fun(zn)
            if fn <= f + 1e-14 * (1.0 + abs(f)):
                lam = lam / 4.0 if lam > 1e-6 else 0.0
                break
            lam = max(4.0 * lam, 1e-3)
            if lam > 1e12:
                done = True
                break
        if done:
            break
        z, f, g, H = zn, fn, gn, Hn
    x[zi] = z
    return x


def interior(z, lower, upper) -> np.ndarray:
    """Which entries of ``z`` lie strictly inside their bounds."""
    z = np.asarray(z, dtype=float)
    return (z > np.asarray(lower, dtype=float)) & (z < np.asarray(upper, dtype=float))


def schur_complement(H, z_index, inside) -> np.ndarray:
    """The curvature of the profiled objective: ``H`` with the rows and columns of
    ``z_index`` zeroed and the rest replaced by ``H_xx - H_xz H_zz^+ H_zx`` over the
    ``z`` marked ``inside`` (those on a bound are constants of the outer problem and
    drop out; a pseudo-inverse where ``H_zz`` is singular)."""
    H = np.array(H, dtype=float)
    zi = np.asarray(z_index, dtype=int)
    keep = np.ones(H.shape[0], dtype=bool)
    keep[zi] = False
    xi = np.nonzero(keep)[0]
    ii = zi[np.asarray(inside, dtype=bool)]
    out = np.zeros_like(H)
    Hxx = H[np.ix_(xi, xi)]
    if ii.size:
        Hxz = H[np.ix_(xi, ii)]
        Hxx = Hxx - Hxz @ np.linalg.pinv(H[np.ix_(ii, ii)], hermitian=True) @ Hxz.T
    out[np.ix_(xi, xi)] = 0.5 * (Hxx + Hxx.T)
    return out
