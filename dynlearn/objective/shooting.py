"""The multiple-shooting objective: pieces of the trajectory with their start states as unknowns."""

from __future__ import annotations

import numpy as np

from dynlearn.objective.objective import SOLVE_FAILURES, LeastSquaresProblem, Rejected
from dynlearn.sensitivity.choice import observe_with_jacobian, state_jacobian
from dynlearn.solve import solve_observed

__all__ = ["ShootingObjective"]


class _Box:
    """The bounds of a shooting problem's unknowns (what optimizers read from ``space``)."""

    def __init__(self, lower, upper, size):
        self.lower, self.upper, self.size = lower, upper, size


class ShootingObjective(LeastSquaresProblem):
    """The multiple-shooting least-squares problem built on a :class:`FitObjective`.

    Unknowns ``z = [x, s_1, s_2, ...]``: the fit's own vector, then the initial state of
    every segment after the first of each experiment. Residuals: the data residuals of
    every segment (scaled exactly as in the single-shooting fit), then the continuity
    defects ``w (y_j(T_{j+1}) - s_{j+1}) / scale`` with ``scale`` a typical size of each
    state. Derivatives come from the same state sensitivities as the single-shooting
    Jacobian (:func:`dynlearn.sensitivity.choice.state_jacobian`).

    Built on the public per-experiment interface of
    :class:`~dynlearn.objective.objective.FitObjective` (``experiment_problem``,
    ``data_residuals``, ``data_residual_jacobian``, ``regularization``, ``map_shooting``),
    so it works alike on an objective evaluated on Dask.
    """

    def __init__(self, obj, segments: int | None, weight: float, points: int = 3,
                 max_segments: int = 50, max_states: int | None = None):
        self.obj = obj
        self.weight = weight
        self.segments, self.points, self.max_segments = segments, points, max_segments
        self.max_states = max_states
        sp_ = obj.space
        n = obj.model.n_states
        self.n = n
        sizes = np.array([b.t.size for b in obj.bound])
        if segments is not None:
            ks = np.full(sizes.size, segments)
        else:
            ks = np.minimum(max_segments, np.maximum(1, np.ceil((sizes - 1) / (points - 1))))
            extra = n * np.sum(ks - 1)
            if max_states is not None and extra > max_states:   # lengthen every piece alike
                ks = 1 + np.floor((ks - 1) * max_states / extra)
        self.plan = []   # per experiment: (first obs, end obs, offset of s in z or None)
        off = sp_.size
        for b, k in zip(obj.bound, ks.astype(int)):
            m = b.t.size
            cuts = np.unique(np.linspace(0, m - 1, min(k, max(m - 1, 1)) + 1).round()
                             .astype(int))
            segs = []
            for j in range(len(cuts) - 1):
                a, e = int(cuts[j]), int(cuts[j + 1])
                last = j == len(cuts) - 2
                segs.append((a, e + 1 if last else e, None if j == 0 else off))
                if j > 0:
                    off += n
            self.plan.append(segs)
        self.size = off
        self.n_segments = max(len(segs) for segs in self.plan)
        lo = np.concatenate([sp_.lower, np.full(off - sp_.size, -np.inf)])
        hi = np.concatenate([sp_.upper, np.full(off - sp_.size, np.inf)])
        self.space = _Box(lo, hi, off)
        self.scale = np.ones(n)
        self.best_x, self.best_cost = None, np.inf

    # --- set-up ------------------------------------------------------------------------------
    def initial(self, x0, use_data: bool = True):
        """Segment states from a simulation at ``x0``, replaced by the measured states where
        ``use_data`` (or where the simulation fails)."""
        obj = self.obj
        theta, y0s = obj.space.unpack(x0)
        z = np.concatenate([x0, np.zeros(self.size - x0.size)])
        idx = obj.model.compiled.obs_state_index
        states = []
        for i, (b, y0, segs) in enumerate(zip(obj.bound, y0s, self.plan)):
            Y = None
            try:
                prob = obj.experiment_problem(i, theta, y0)
                with np.errstate(all="ignore"):
                    Y, _ = solve_observed(prob.vf, b.t0, b.t, y0, obj.method, obj.rtol,
                                          obj.atol, obj.options)
            except Exception:  # noqa: BLE001 - only a first guess: the data stand in for it
                # (an error in the model's own code surfaces at the first evaluation, which
                # on Dask names the experiment and the worker)
                Y = None
            if Y is None or not np.all(np.isfinite(Y)):   # fall back to the data, then to y0
                Y = np.tile(y0, (b.t.size, 1))
                use_data = True
            # measured states override the simulation (the point of multiple shooting)
            for k, name in enumerate(obj.obs):
                s = idx.get(name)
                if s is not None and use_data:
                    col = b.Y[:, k]
                    Y[:, s] = np.where(np.isfinite(col), col, Y[:, s])
            for a, _, off in segs:
                if off is not None:
                    z[off:off + self.n] = Y[a]
            states.append(Y)
        allY = np.vstack(states)
        self.scale = np.maximum(np.mean(np.abs(allY), axis=0), 1e-8)
        self.forget()
        return z

    # --- evaluation ----------------------------------------------------------------------------
    def columns(self, i: int) -> np.ndarray:
        """Columns of ``z`` experiment ``i``'s rows depend on: the fit's own vector and the
        experiment's segment states (the rest of its Jacobian rows is zero)."""
        offs = [off for _, _, off in self.plan[i] if off is not None]
        own = np.arange(offs[0], offs[-1] + self.n) if offs else np.zeros(0, dtype=int)
        return np.r_[np.arange(self.obj.space.size), own].astype(int)

    def experiment(self, i: int, z, jac: bool):
        """Residual rows of experiment ``i`` (data of every segment, continuity defects) and,
        with ``jac``, their derivatives in the columns :meth:`columns` lists."""
        obj = self.obj
        sp_ = obj.space
        P = sp_.n_theta
        n = self.n
        x = z[:sp_.size]
        theta, y0s = sp_.unpack(x)
        dphys = sp_.dphysical(x)
        b, y0, segs, y0idx = obj.bound[i], y0s[i], self.plan[i], sp_.y0_index[i]
        cols = self.columns(i)
        # segment offsets inside the compact columns
        shift = sp_.size - (cols[sp_.size] if cols.size > sp_.size else sp_.size)
        rows, jrows = [], []
        for j, (a, e, off) in enumerate(segs):
            last = j == len(segs) - 1
            t_obs = b.t[a:e] if last else b.t[a:e + 1]
            t0 = b.t0 if j == 0 else b.t[a]
            start = y0 if off is None else z[off:off + n]
            if not np.all(np.isfinite(start)):
                raise Rejected("non-finite segment state")
            try:   # a failed solve rejects the point; any other error is a bug and propagates
                prob = obj.experiment_problem(i, theta, start, t0=t0, t_obs=t_obs)
                with np.errstate(all="ignore"):
                    if not jac:
                        Y, _ = solve_observed(prob.vf, t0, t_obs, start, obj.method, obj.rtol,
                                              obj.atol, obj.options)
                        S = None
                    else:
                        Y, S = state_jacobian(prob, obj.sensitivity, wrt_y0=True)
            except SOLVE_FAILURES as exc:
                raise Rejected(str(exc)) from None
            if not np.all(np.isfinite(Y)):
                raise Rejected("non-finite segment solution")
            nd = e - a
            seg = slice(a, e)
            if jac:
                H, dH = observe_with_jacobian(prob.vf, t_obs[:nd], Y[:nd], S[:nd])
            else:
                H = prob.vf.observe_batch(t_obs[:nd], Y[:nd])
            r = obj.data_residuals(i, H, seg)
            rows.append(r)
            o = None if off is None else off + shift
            if jac:
                dR = obj.data_residual_jacobian(i, H, dH, seg)
                Jd = np.zeros((r.size, cols.size))
                Jd[:, :P] = dR[:, :P] * dphys[:P]
                self._place_start(Jd, dR[:, P:], o, y0idx, dphys)
                jrows.append(Jd)
            if not last:
                nxt = segs[j + 1][2]
                w = self.weight / self.scale
                rows.append(w * (Y[-1] - z[nxt:nxt + n]))
                if jac:
                    Jc = np.zeros((n, cols.size))
                    Jc[:, :P] = (w[:, None] * S[-1][:, :P]) * dphys[:P]
                    self._place_start(Jc, w[:, None] * S[-1][:, P:], o, y0idx, dphys)
                    Jc[:, nxt + shift:nxt + shift + n] -= np.diag(w)
                    jrows.append(Jc)
        r = np.concatenate(rows)
        return (r, np.vstack(jrows)) if jac else r

    @property
    def n_shared(self) -> int:
        """Columns every row may use: the fit's own vector (the rest are segment states)."""
        return self.obj.space.size

    def blocks(self) -> list:
        """``(rows, own columns)`` of each experiment in the Jacobian last computed; the L2
        rows, outside every block, use the shared columns only."""
        return self._blocks

    def spec(self) -> tuple:
        """What a Dask worker needs to rebuild this problem around its copy of the fit's
        objective (see :class:`~dynlearn.distributed.fanned.FannedObjective`)."""
        return (self.segments, self.points, self.max_segments, self.max_states, self.weight,
                self.scale)

    def _evaluate(self, z, jac: bool):
        obj = self.obj
        sp_ = obj.space
        x = z[:sp_.size]
        # a fit on Dask evaluates the experiments on its workers
        parts = obj.map_shooting(self, z, jac)
        rs = [p[0] if jac else p for p in parts]
        if obj.n_reg:
            rs.append(obj.regularization(x))
        r = np.concatenate(rs)
        if not jac:
            return r
        J = np.zeros((r.size, self.size))
        row, self._blocks = 0, []
        for i, (ri, Ji) in enumerate(parts):
            cols = self.columns(i)
            J[row:row + ri.size, cols] = Ji
            self._blocks.append((slice(row, row + ri.size), cols[sp_.size:]))
            row += ri.size
        J[row:, :sp_.size] = obj.regularization_jacobian(x)
        return r, J

    @staticmethod
    def _place_start(J, dstart, off, y0idx, dphys):
        """Columns of the segment's initial state: its own unknowns, or the experiment's
        (free) initial states for the first segment."""
        if off is not None:
            J[:, off:off + dstart.shape[1]] += dstart
        else:
            for i, k in y0idx:
                J[:, k] += dstart[:, i] * dphys[k]

    @property
    def cheap_jacobian(self) -> bool:
        return self.obj.cheap_jacobian

    @property
    def weight(self) -> float:
        return self._weight

    @weight.setter
    def weight(self, w: float):
        self._weight = float(w)
        self.forget()

    def compute_residuals(self, z):
        return self._evaluate(z, False)

    def compute_jacobian(self, z):
        return self._evaluate(z, True)

    def count(self, kind: str) -> None:
        self.obj.count(kind)

    def report(self, z, cost, iteration: bool = False):
        """Keep the best ``z``; an ended iteration is reported to the fit's objective."""
        if z is not None and cost is not None and np.isfinite(cost) and cost < self.best_cost:
            self.best_x, self.best_cost = np.array(z), float(cost)
            self.obj.report_stage(self.best_cost)      # the loss plot draws this stage too
        if iteration:
            self.obj.report(None, None, iteration=True)
