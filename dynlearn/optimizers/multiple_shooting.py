"""Multiple shooting: Levenberg-Marquardt on pieces of the time series, then a polish."""

from __future__ import annotations

import numpy as np

from dynlearn.errors import OptionError
from dynlearn.objective.objective import Rejected
from dynlearn.objective.shooting import ShootingObjective
from dynlearn.optimizers.base import OptimizeOutcome, Optimizer, Status, check_positive_int
from dynlearn.optimizers.levenberg_marquardt import LevenbergMarquardt

__all__ = ["MultipleShooting"]


class MultipleShooting(Optimizer):
    """Multiple shooting with Levenberg-Marquardt, then a single-shooting polish.

    Each experiment's time series is cut into ``segments`` pieces; each piece starts from
    its own initial state (extra unknowns, initialised from the data where every state is
    observed, else from a simulation). Continuity residuals
    ``weight * (y_end of piece k - y_start of piece k+1)`` join the pieces. Short pieces
    cannot drift out of phase with the data, so the fit avoids the local minima that trap
    single shooting on oscillating series. The joined solution then seeds an ordinary
    (single-shooting) fit with ``polish``.

    Parameters
    ----------
    segments : int, optional
        Pieces per experiment. Default: pieces of ``points`` observation times each (so
        consecutive pieces share one time), at most ``max_segments``.
    points : int
        Observation times per piece when ``segments`` is not given.
    max_segments : int
    max_states : int
        At most this many segment-state unknowns over all experiments when ``segments`` is
        not given (default 600): with many experiments the pieces lengthen, all by the same
        factor. The shooting Jacobian has one column per unknown and is held densely (its
        steps are computed experiment by experiment, see
        :class:`~dynlearn.optimizers.steps.BlockSteps`).
    continuity_weight : float or sequence of float
        Weight of the continuity residuals (a gap of one typical state size costs as much as
        a data residual of this size). A sequence is a continuation: ``max_iter``
        iterations at each weight in turn, keeping the segment states.
    max_iter : int
        Levenberg-Marquardt iterations on the multiple-shooting problem (per weight).
    patience : int, optional
        See :class:`~dynlearn.optimizers.LevenbergMarquardt`.
    init : {"data", "simulation"}
        Segment states from the data where all states are measured (default: robust far
        from a fit), or from a simulation at the current point (to refine a fit).
    polish : Optimizer or None
        Final single-shooting optimizer (default
        :class:`~dynlearn.optimizers.LevenbergMarquardt`).

    Notes
    -----
    The multiple-shooting stage reports the status of its last Levenberg-Marquardt run
    (``FAILED`` when no joined solution could be solved); the messages of every weight's
    run are its outcome's ``detail``. A fit's status is the polish's when there is one.
    """

    least_squares = True

    def __init__(self, segments: int | None = None, points: int = 3, max_segments: int = 50,
                 continuity_weight=(10.0, 100.0), max_iter: int = 100, init: str = "data",
                 patience: int | None = None, polish: Optimizer | None = "default",
                 max_states: int = 600):
        self.max_states = check_positive_int(max_states, "max_states")
        if init not in ("data", "simulation"):
            raise OptionError(f"init={init!r}: use 'data' or 'simulation'")
        self.init = init
        self.patience = patience
        self.segments = None if segments is None else check_positive_int(segments, "segments")
        self.points = check_positive_int(points, "points")
        if self.points < 2:
            raise OptionError("points must be >= 2 (each piece spans at least one interval)")
        self.max_segments = check_positive_int(max_segments, "max_segments")
        self.continuity_weight = (tuple(float(w) for w in continuity_weight)
                                  if np.ndim(continuity_weight) else float(continuity_weight))
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.polish = LevenbergMarquardt() if polish == "default" else polish

    state_entries = {"j": "count", "z": "vector", "scale": "vector", "inner": "table",
                     "msgs": "words", "ok": "flag", "nit": "count", "status": "status",
                     "best_x": "point", "best_cost": "number", "ended": "flag"}

    def check_state(self, state: dict, size: int) -> None:
        """See :meth:`Optimizer.check_state`; the inner Levenberg-Marquardt run's state is
        checked against the segment states too."""
        super().check_state(state, size)
        if state:
            z = np.asarray(state["z"], dtype=float)
            if z.size < size or np.any(np.asarray(state["scale"], dtype=float) <= 0):
                raise ValueError("the optimizer state's segment states do not fit the fit")
            LevenbergMarquardt().check_state(state["inner"], z.size)

    def stages(self) -> list[Optimizer]:
        """This stage, then the polish's stages."""
        return [self] + ([] if self.polish is None else self.polish.stages())

    def run(self, obj, x0, state=None) -> OptimizeOutcome:
        """The multiple-shooting stage from ``x0`` (the polish is a stage of its own).

        ``state`` (see :meth:`Optimizer.run`) keeps the continuity weight in progress, the
        segment states and state scales, the inner Levenberg-Marquardt run's own state and
        the best joined fit so far: a resumed stage continues the same inner run.
        """
        weights = np.atleast_1d(np.asarray(self.continuity_weight, dtype=float))
        ms = ShootingObjective(obj, self.segments, float(weights[0]), self.points,
                               self.max_segments, self.max_states)
        st = {} if state is None else state
        if "z" in st:     # resumed
            ms.scale = np.asarray(st["scale"], dtype=float)
            z = np.asarray(st["z"], dtype=float)
        else:
            z = ms.initial(np.asarray(x0, dtype=float), use_data=self.init == "data")
            st.update(j=0, z=z, scale=ms.scale, inner={}, msgs=[], ok=True, nit=0,
                      status=Status.FAILED.value, best_x=np.asarray(x0, dtype=float),
                      best_cost=np.inf, ended=False)
        msgs, ok, nit = list(st["msgs"]), bool(st["ok"]), int(st["nit"])
        status = Status(st["status"])
        best_x, best_cost = np.asarray(st["best_x"], dtype=float), float(st["best_cost"])
        # continuation: a loose continuity weight first lets the segments settle on the data,
        # tighter ones then close the gaps so the joined trajectory is one solution
        for j in range(int(st["j"]), 0 if st["ended"] else len(weights)):
            w = weights[j]
            ms.weight = float(w)
            ms.best_x, ms.best_cost = None, np.inf
            out = LevenbergMarquardt(max_iter=self.max_iter, patience=self.patience).run(
                ms, z, st["inner"])
            z = ms.best_x if ms.best_x is not None else out.x
            msgs.append(out.message)
            status = out.status
            ok, nit = ok and np.isfinite(out.cost), nit + out.nit
            x = z[:obj.space.size]
            try:  # keep the joined (single-shooting) fit that is best so far
                cost = obj.cost(x)
                obj.report(x, cost)
            except Rejected:
                cost = np.inf
            if cost < best_cost:
                best_x, best_cost = x.copy(), cost
            ended = out.nit <= 1   # a tighter weight cannot move: the gaps are closed as can be
            st.update(j=j + 1, z=z, inner={}, msgs=list(msgs), ok=bool(ok), nit=nit,
                      status=status.value, best_x=best_x, best_cost=float(best_cost),
                      ended=ended)
            if ended:
                break
        if not (ok and np.isfinite(best_cost)):
            status = Status.FAILED
        detail = "; ".join(f"weight {w:g}: {m}" for w, m in zip(weights, msgs))
        return OptimizeOutcome(best_x, best_cost, status,
                               f"multiple shooting ({ms.n_segments} segments): {msgs[-1]}", nit,
                               detail=detail)
