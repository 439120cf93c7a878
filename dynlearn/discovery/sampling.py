"""Where a learned term is read: the fitted trajectories and points of the region around them.

:func:`recover` evaluates a network along the fitted trajectories
(:func:`simulate_trajectories`) and at points spread over a region they cover
(:func:`region_points`): a narrow tube around them (the default), their convex hull or their
bounding box. :func:`sample_states` assembles both; :func:`network_outputs` evaluates the
networks there.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError, cKDTree

from dynlearn.core.model import HybridModel
from dynlearn.data import as_dataset, as_input_signal, check_times
from dynlearn.discovery.diagnostics import DiscoveryWarning
from dynlearn.errors import DataError, OptionError
from dynlearn.objective.binding import bind_data
from dynlearn.solve import simulate

__all__ = ["REGIONS", "latin_hypercube", "region_points", "simulate_trajectories",
           "sample_states", "network_outputs"]

#: The values of ``recover(region=...)``.
REGIONS = ("tube", "hull", "box", "trajectory")


def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """A Latin hypercube sample of ``n`` points in the unit cube ``[0, 1]^d``.

    Each of the ``n`` equal slices of every axis holds exactly one point.

    Parameters
    ----------
    n, d : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (n, d)
    """
    u = (rng.random((n, d)) + np.arange(n)[:, None]) / n
    for j in range(d):
        u[:, j] = u[rng.permutation(n), j]
    return u


def region_points(P: np.ndarray, n: int, region: str, rng: np.random.Generator,
                  radius: float, starts: Sequence[int] = (0,)) -> np.ndarray:
    """``n`` points spread over the region covered by trajectories.

    Points are drawn by Latin hypercube in the bounding box of the trajectories, each
    variable scaled to the unit interval, and rejected outside the region.

    Parameters
    ----------
    P : ndarray, shape (m, d)
        The trajectories' points, one trajectory after another, each in time order.
    n : int
        Number of points wanted.
    region : {"tube", "hull", "box"}
        ``"tube"``: within ``radius`` of the trajectories (of the polylines through their
        points); ``"hull"``: inside their convex hull (the bounding box, with a
        :class:`DiscoveryWarning`, when the hull is not full-dimensional); ``"box"``: inside
        their bounding box.
    rng : numpy.random.Generator
    radius : float
        Half-width of the tube, as a fraction of each variable's range.
    starts : sequence of int
        The row of ``P`` at which each trajectory begins (the tube does not join the end of
        one trajectory to the start of the next).

    Returns
    -------
    ndarray, shape (n, d)
        Variables that do not vary along the trajectories keep their (constant) value.
    """
    lo, hi = P.min(0), P.max(0)
    span = hi - lo
    vary = span > 1e-12 * np.maximum(1.0, np.abs(hi))
    out = np.tile((lo + hi) / 2, (n, 1))
    dv = int(vary.sum())
    if dv == 0 or n == 0:
        return out
    Q = (P[:, vary] - lo[vary]) / span[vary]           # trajectories in the unit box
    if region == "box":
        out[:, vary] = lo[vary] + latin_hypercube(n, dv, rng) * span[vary]
        return out
    if region == "tube":
        # densify the polylines so that nearest-sample distance ~ distance to the curve
        f = np.linspace(0.0, 1.0, 8, endpoint=False)[:, None, None]
        pieces = []
        for a, b in zip(starts, [*starts[1:], len(Q)]):
            q = Q[a:b]
            pieces += [(q[:-1] + f * (q[1:] - q[:-1])).reshape(-1, dv), q[-1:]]
        tree = cKDTree(np.concatenate(pieces))
        box_lo, box_w = -radius, 1.0 + 2 * radius

        def inside(c):
            return tree.query(c, distance_upper_bound=radius)[0] <= radius
    else:   # hull
        box_lo, box_w = 0.0, 1.0
        if dv == 1:
            def inside(c):
                return np.ones(len(c), bool)
        else:
            try:
                eq = ConvexHull(Q).equations           # a.x + b <= 0 inside
            except QhullError:
                # stacklevel: region_points <- sample_states <- the regression step
                # <- recover <- the caller
                warnings.warn("the trajectories do not span a full-dimensional region "
                              "(convex hull failed); sampling their bounding box instead. "
                              "The default region, a tube around the trajectories, needs "
                              "no hull (Python: region='tube'; command line: --region tube)",
                              DiscoveryWarning, stacklevel=5)
                out[:, vary] = lo[vary] + latin_hypercube(n, dv, rng) * span[vary]
                return out

            def inside(c):
                return np.all(c @ eq[:, :-1].T + eq[:, -1] <= 1e-12, axis=1)
    got, need = [], n
    for _ in range(200):
        cand = box_lo + box_w * latin_hypercube(max(4 * need, 256), dv, rng)
        keep = cand[inside(cand)][:need]
        got.append(keep)
        need -= len(keep)
        if need <= 0:
            break
    pts = np.concatenate(got)
    if len(pts) < n:   # pragma: no cover - only for extremely thin regions
        pts = np.concatenate([pts, Q[rng.integers(0, len(Q), n - len(pts))]])
    out[:, vary] = lo[vary] + pts * span[vary]
    return out


def simulate_trajectories(model: HybridModel, data, t, y0, inputs, n_trajectory: int,
                          method: str, rtol: float, atol: float) -> tuple[list[tuple], int]:
    """The model's trajectories over the data's experiments, or over ``t`` from ``y0``.

    Parameters
    ----------
    model : HybridModel
        Simulated at its ``theta0`` (the fitted values, for a fitted model).
    data : Dataset or DataFrame or None
        Per experiment, a trajectory over the experiment's time span from its initial
        state; ``n_trajectory`` evenly spaced times each.
    t : array_like or None
        Instead of ``data``: the times of one trajectory from ``y0``.
    y0 : array_like, dict or None
        Initial states: one for every experiment, a dict per experiment, or one row per
        experiment (e.g. fitted initial states); with ``t``, required.
    inputs : InputSignal or DataFrame or None
        Input values, with ``t``, for a model with inputs.
    n_trajectory : int
    method, rtol, atol
        Solver settings.

    Returns
    -------
    trajectories : list of (T (m,), Y (m, n_states), U (m, n_inputs) or None)
    n_rows : int
        The number of measured time points (rows with at least one value), or ``t.size``.

    Raises
    ------
    OptionError
        Both ``data`` and ``t`` were given.
    DataError
        Neither was given, or ``t`` holds fewer than two times.
    """
    out = []
    if data is not None:
        if t is not None:
            raise OptionError("pass either data= or t= (with y0=), not both")
        if isinstance(y0, Mapping) or y0 is None or np.ndim(y0) == 1:
            y0_arg = y0
        else:   # one row per experiment (e.g. fitted initial states)
            y0_arg = {e.name: np.asarray(r, float) for e, r in zip(as_dataset(data), y0)}
        bound = bind_data(model, data, y0_arg)
        n_rows = 0
        for b in bound:
            n_rows += int(b.mask.any(axis=1).sum())
            T = np.linspace(b.t0, b.t[-1], n_trajectory)
            sol = simulate(model, T, b.y0, method=method, rtol=rtol, atol=atol,
                           inputs=b.inputs)
            U = b.inputs(T) if b.inputs is not None else None
            out.append((T, sol.y, U))
        return out, n_rows
    if t is None or y0 is None:
        raise DataError("recover() needs where to evaluate the learned terms: the fit result "
                        "(which carries its data), data=..., or t=... together with y0=...")
    T = check_times(t)
    if T.size < 2:
        raise DataError("t must hold at least two times")
    signal = as_input_signal(inputs, model) if model.inputs else None
    sol = simulate(model, T, y0, method=method, rtol=rtol, atol=atol, inputs=signal)
    return [(T, sol.y, signal(T) if signal is not None else None)], T.size


def sample_states(trajectories: Sequence[tuple], n_states: int, n_inputs: int, region: str,
                  n_region: int, radius: float, seed: int | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The samples a learned term is read at: the trajectories' points plus region points.

    Parameters
    ----------
    trajectories : sequence of (T, Y, U)
        As returned by :func:`simulate_trajectories`.
    n_states, n_inputs : int
    region : {"tube", "hull", "box", "trajectory"}
        ``"trajectory"`` adds no points; otherwise see :func:`region_points`. The region
        spans the states and inputs; the time of a region point is drawn uniformly over
        the trajectories' span.
    n_region : int
        Number of region points.
    radius : float
        Half-width of the tube (fraction of each variable's range).
    seed : int or None
        Seeds the region points.

    Returns
    -------
    T : ndarray, shape (m,)
    Y : ndarray, shape (m, n_states)
    U : ndarray, shape (m, n_inputs), or None without inputs
    source : ndarray of object, shape (m,)
        ``"trajectory"`` or ``"region"`` per sample.
    """
    T = np.concatenate([tr[0] for tr in trajectories])
    Y = np.concatenate([tr[1] for tr in trajectories])
    U = np.concatenate([tr[2] for tr in trajectories]) if n_inputs else None
    source = np.array(["trajectory"] * T.size, dtype=object)
    if region != "trajectory" and n_region > 0:
        rng = np.random.default_rng(seed)
        P = np.column_stack([Y] + ([U] if n_inputs else []))
        starts = np.cumsum([0] + [len(tr[0]) for tr in trajectories[:-1]])
        R = region_points(P, n_region, region, rng, radius, list(starts))
        TR = rng.uniform(T.min(), T.max(), n_region)
        T = np.concatenate([T, TR])
        Y = np.concatenate([Y, R[:, :n_states]])
        if n_inputs:
            U = np.concatenate([U, R[:, n_states:]])
        source = np.concatenate([source, np.array(["region"] * n_region, dtype=object)])
    return T, Y, U, source


def network_outputs(model: HybridModel, T: np.ndarray, Y: np.ndarray,
                    U: np.ndarray | None) -> np.ndarray:
    """Every network output of ``model`` (at its ``theta0``) at ``m`` sample points.

    Parameters
    ----------
    model : HybridModel
    T : ndarray, shape (m,)
    Y : ndarray, shape (m, n_states)
    U : ndarray, shape (m, n_inputs), or None without inputs

    Returns
    -------
    ndarray, shape (m, n_outputs)
        Columns in the order of ``model.networks`` and their outputs.
    """
    c = model.compiled
    p, ws = model.split_theta(model.theta0)
    m = T.size
    Ug = U.T if U is not None else np.zeros((0, m))
    Z = np.empty((m, c.nz))
    for d, w in zip(c.nets, ws):
        V = d["g"].batch(m, [T], Y.T, p.tolist(), [], Ug).T
        Z[:, d["zslice"]] = d["net"].forward(w, V)
    return Z
