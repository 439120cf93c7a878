"""Automatic restarts of network training that stalls far above the noise level.

Training a network inside an ODE from an unlucky initialisation can end in a local minimum
far above the noise level (on the LV-UDE of ``benchmarks/bench_fit.py``, 2 of 5 Glorot
seeds and the small-weights start of the peers end 38-400x above the noise floor, while
the other starts reach it). A fit whose cost is far above the noise floor estimated from
the data alone (:func:`noise_floor`) has stalled; :class:`Restarts` starts the training
again from new network weights while it is.
"""

from __future__ import annotations

import zlib

import numpy as np

from dynlearn.data.noise import noise_level
from dynlearn.errors import OptionError
from dynlearn.objective.objective import Rejected
from dynlearn.optimizers.base import (
    OptimizeOutcome,
    Optimizer,
    Status,
    check_positive_int,
)

__all__ = ["Restarts", "data_cost", "fresh_weights", "noise_floor"]

#: fewest measured values in one series for its differences to estimate its noise
MIN_SERIES = 7


def noise_floor(obj) -> float:
    """The noise floor of a fit's data (the cost of the noise alone) estimated from the
    data, or NaN where no series is long enough.

    Each experiment's series of one observable, on the scale of the fit's residuals (the
    loss's transform, the noise levels and weights), gives its noise level from third
    differences of neighbouring values with the largest quarter trimmed
    (:func:`dynlearn.data.noise.noise_level`, the estimate the result's diagnostics use);
    the estimate sums ``m sigma^2`` over the series of ``m`` values.

    The estimate is high where the signal bends between samples and close where the
    sampling is dense; measured over 8 noise seeds of an oscillator (estimate / actual
    floor): 1.04 at dt = 0.05, 0.93 at 0.1, 1.12 at 0.25, 1.57 at 0.5 (second differences
    with a median, used before, gave 10.4 at dt = 0.5, so a fit stuck at 20x the floor
    passed as "at the noise level"). An upper estimate where it errs, so a fit far above it
    has not reached the noise level.

    Parameters
    ----------
    obj : FitObjective
    """
    total, counted = 0.0, False
    g = obj.loss.g
    for b, sc in zip(obj.bound, obj.scales):
        G = g(np.where(b.mask, b.Y, 1.0), b.mask) * sc
        for k in range(b.mask.shape[1]):
            ok = b.mask[:, k]
            if ok.sum() < MIN_SERIES:
                continue
            t, y = b.t[ok], G[ok, k]
            if not np.all(np.isfinite(y)):
                continue
            # replicates (repeated times) are fine: noise_level uses their spread
            sigma, _ = noise_level([(t, y)], order=3, statistic="trimmed")
            if not np.isfinite(sigma):
                continue
            total += y.size * sigma ** 2
            counted = True
    return total if counted else np.nan


def data_cost(obj, x) -> float:
    """The data part of the cost at ``x`` (without regularisation rows); NaN where the
    model cannot be solved."""
    try:
        r = obj.residuals(x)[:obj.n_data]
    except Rejected:
        return np.nan
    return float(r @ r)


#: runs that end within AGREE_RTOL of the best one's cost, counting the best, that show the
#: fit's level is the model's, not the start's: no more restarts
AGREE = 3
AGREE_RTOL = 0.05


def _agree(ratios) -> bool:
    """Whether :data:`AGREE` runs ended within :data:`AGREE_RTOL` of the lowest cost."""
    valid = [r for r in ratios if r >= 0]
    if len(valid) < AGREE:
        return False
    lo = min(valid)
    return sum(r <= lo * (1.0 + AGREE_RTOL) for r in valid) >= AGREE


def fresh_weights(model, rng) -> np.ndarray:
    """New initial weights for every network of ``model`` (flat, the order of the model's
    theta after its physical parameters).

    Networks with layers (:meth:`unflatten`, e.g. :class:`~dynlearn.MLP`) get a
    Glorot-uniform draw with zero biases (the output layer times the network's ``scale``);
    any other network its current weights plus normal noise of their own spread.
    """
    parts = []
    for net in model.networks:
        w0 = np.asarray(net.weights, dtype=float)
        if hasattr(net, "unflatten"):
            w = np.zeros_like(w0)
            layers = net.unflatten(w)
            for k, (W, _b) in enumerate(layers):
                n_in, n_out = W.shape
                lim = np.sqrt(6.0 / (n_in + n_out))
                W[...] = rng.uniform(-lim, lim, size=W.shape)
                if k == len(layers) - 1:
                    W *= float(getattr(net, "scale", 1.0))
        else:
            w = w0 + rng.standard_normal(w0.size) * max(float(np.std(w0)), 0.1)
        parts.append(w)
    return np.concatenate(parts) if parts else np.zeros(0)


class Restarts(Optimizer):
    """Run ``inner`` (all its stages in turn); while the result's cost is more than
    ``threshold`` times the noise floor estimated from the data (:func:`noise_floor`),
    run it again from new network weights (:func:`fresh_weights`; the physical parameters
    and initial states restart from the given start), at most ``max_restarts`` times. The
    best run is returned.

    Parameters
    ----------
    inner : Optimizer
        The training, e.g. the default :class:`~dynlearn.optimizers.MultipleShooting`.
    max_restarts : int
    threshold : float
        A run whose data cost exceeds ``threshold`` times the estimated noise floor has
        stalled. The estimate errs high (2.1x the actual floor on the LV-UDE data), so a
        fit at the noise level has a ratio below 1 (0.17-0.36 there); stalled LV-UDE fits
        had 18-191.
    seed : int
        Seed of the new weights, mixed with the start's values: a fit run again restarts
        from the same weights, the starts of a multi-start fit from different ones.

    Notes
    -----
    The outcome is the best run's, with its status, unless even the best run is above
    ``threshold``: then :attr:`~dynlearn.optimizers.Status.STALLED`, saying how far above.
    When :data:`AGREE` runs from different weights end within :data:`AGREE_RTOL` of the
    same cost above ``threshold``, no start does better: the model cannot fit the data to
    the noise level (a missing term, a network too small) or the noise estimate is high
    (data sampled coarsely for the dynamics). The restarts stop there, and the outcome is
    the best run's, saying so.
    A run that fails (the model cannot be solved from its weights) is restarted too; one
    that ran out of iterations (:attr:`~dynlearn.optimizers.Status.MAX_ITER`) is not, and
    keeps that status (more runs would multiply the budget). Its
    message says how many runs were made. Only models with networks restart (a model
    without one returns ``inner``'s outcome, with the noise test left out), and only where
    the residual series are long enough for the test.
    """

    state_entries = {"attempt": "count", "stage": "count", "x": "point", "x0": "point",
                     "inner": "table", "best_x": "point", "best_cost": "number",
                     "ratios": "numbers", "best": "table"}

    def __init__(self, inner: Optimizer, max_restarts: int = 6, threshold: float = 3.0,
                 seed: int = 0):
        if not isinstance(inner, Optimizer):
            raise OptionError(f"Restarts needs an optimizer object, got {inner!r}")
        self.inner = inner
        self.max_restarts = int(max_restarts)
        if self.max_restarts < 0:
            raise OptionError(f"max_restarts must be >= 0, got {max_restarts!r}")
        self.threshold = float(threshold)
        if not self.threshold > 1:
            raise OptionError(f"threshold must be > 1, got {threshold!r}")
        self.seed = int(seed)
        check_positive_int(len(inner.stages()), "the inner optimizer's number of stages")

    @property
    def least_squares(self) -> bool:  # noqa: D102 - as the inner optimizer
        return any(s.least_squares for s in self.inner.stages())

    @property
    def max_iter(self) -> int | None:
        """The iteration budget of the inner optimizer's last stage (per run); setting it
        sets that of every inner stage (a model file's ``maxiter``, ``--maxiter``)."""
        last = self.inner.stages()[-1]
        return getattr(last, last.budget_option, None)

    @max_iter.setter
    def max_iter(self, n: int) -> None:
        for o in [self.inner, *self.inner.stages()]:
            if hasattr(o, o.budget_option):
                setattr(o, o.budget_option, check_positive_int(n, "max_iter"))

    def __repr__(self) -> str:
        return (f"Restarts({self.inner!r}, max_restarts={self.max_restarts}, "
                f"threshold={self.threshold:g}, seed={self.seed})")

    def to_dict(self) -> dict:
        return {"type": "Restarts", "inner": self.inner.to_dict(),
                "max_restarts": self.max_restarts, "threshold": self.threshold,
                "seed": self.seed}

    def check_state(self, state: dict, size: int) -> None:
        """See :meth:`Optimizer.check_state`; the inner stage's state is checked too."""
        super().check_state(state, size)
        if state:
            stages = self.inner.stages()
            if int(state["stage"]) >= len(stages):
                raise ValueError("the optimizer state's stage is past the inner optimizer's")
            stages[int(state["stage"])].check_state(state["inner"], size)

    def _start(self, obj, x0, attempt: int) -> np.ndarray:
        """The starting point of run ``attempt`` (0: ``x0`` itself)."""
        x = np.array(x0, dtype=float)
        if attempt == 0:
            return x
        # the draws depend on the start too, so that the starts of a multi-start fit
        # (n_starts) restart from different weights; the same start restarts alike
        key = zlib.crc32(np.ascontiguousarray(x0, dtype=float).tobytes())
        rng = np.random.default_rng([self.seed, key, attempt])
        x[np.flatnonzero(obj.space.is_weight)] = fresh_weights(obj.model, rng)
        return x

    def run(self, obj, x0, state=None) -> OptimizeOutcome:
        """Run the training, restarting from new weights while it stalls (see the class
        notes). ``state`` (see :meth:`Optimizer.run`) keeps the run in progress, its stage
        and that stage's own state, and the best run so far."""
        st = {} if state is None else state
        stages = self.inner.stages()
        networks = bool(obj.model.networks)
        floor = noise_floor(obj) if networks else np.nan
        if "attempt" not in st:
            st.update(attempt=0, stage=0, x=np.asarray(x0, dtype=float),
                      x0=np.asarray(x0, dtype=float), inner={},
                      best_x=np.asarray(x0, dtype=float), best_cost=np.inf, ratios=[],
                      best={})
        x0 = np.asarray(st["x0"], dtype=float)
        # the best run's status, message and iterations (kept in the state: a resumed run
        # reports it as an uninterrupted one would)
        best = dict(st["best"])
        best_x, best_cost = np.asarray(st["best_x"], dtype=float), float(st["best_cost"])
        ratios = [float(v) for v in st["ratios"]]
        attempts = 1 + (self.max_restarts if networks else 0)
        for attempt in range(int(st["attempt"]), attempts):
            x = np.asarray(st["x"], dtype=float)
            out = None
            for k in range(int(st["stage"]), len(stages)):
                out = stages[k].run(obj, x, st["inner"])
                if np.isfinite(out.cost):
                    x = np.asarray(out.x, dtype=float)
                if not np.isfinite(out.cost) and k == 0:
                    break
                if k + 1 < len(stages):
                    # the next stage begins; after the last one the state keeps its ended
                    # run (a resumed one returns that stage's outcome at once)
                    st.update(stage=k + 1, x=x, inner={})
            solved = out is not None and np.isfinite(out.cost)
            ratio = data_cost(obj, x) / floor if floor > 0 and solved else np.nan
            ratios.append(float(ratio) if np.isfinite(ratio) else -1.0)
            if out is not None and (np.isfinite(out.cost) and out.cost < best_cost or not best):
                if np.isfinite(out.cost):
                    best_x, best_cost = x.copy(), float(out.cost)
                best = {"status": out.status.value, "message": out.message, "nit": out.nit,
                        "detail": out.detail}
            nxt = attempt + 1
            st.update(attempt=nxt, stage=0,
                      x=self._start(obj, x0, nxt) if nxt < attempts else x, inner={},
                      best_x=best_x, best_cost=best_cost, ratios=ratios, best=best)
            # go on while a run stalls, or fails where the data allow the test (new weights
            # may make a model solvable that saturated or exploding ones did not)
            go_on = ratio > self.threshold if np.isfinite(ratio) else floor > 0
            # a run that used up its iteration budget did not stall: more runs would only
            # multiply the budget the user set
            if not go_on or _agree(ratios) or out is not None and out.status is Status.MAX_ITER:
                break
        if not best or not np.isfinite(best_cost):
            return OptimizeOutcome(best_x, best_cost, Status.FAILED,
                                   best.get("message") or "no run of the training could be "
                                   "solved", int(best.get("nit", 0)))
        status, message = Status(best["status"]), str(best["message"])
        nit, detail = int(best["nit"]), str(best["detail"])
        runs = len(ratios)
        final_ratio = data_cost(obj, best_x) / floor if floor > 0 else np.nan
        if np.isfinite(final_ratio) and final_ratio > self.threshold and _agree(ratios):
            # runs from different weights end at the same cost: no start does better, so
            # the model (or the noise estimate) limits the fit, not a local minimum
            note = (f"{runs} runs from different weights (cost / noise floor estimated from "
                    f"the data: " + ", ".join(f"{v:.3g}" for v in ratios) + f"), {AGREE} of "
                    f"them within {AGREE_RTOL:.0%} of each other above {self.threshold:g}: "
                    "the model cannot fit the data to the noise level (or the noise is "
                    "overestimated), not a local minimum")
            return OptimizeOutcome(best_x, best_cost, status, f"{message}; {note}", nit,
                                   detail=detail, extra={"runs": runs, "noise_ratios": ratios,
                                                         "noise_floor": float(floor)})
        note = (f"{runs} runs (the first from the given weights, {runs - 1} restarts from new "
                f"weights; cost / noise floor estimated from the data: " + ", ".join(
                    f"{v:.3g}" if v >= 0 else "n/a" for v in ratios) + ")") if runs > 1 \
            else ("1 run, no restart needed (cost / noise floor estimated from the data: "
                  f"{ratios[0]:.3g})" if ratios and ratios[0] >= 0 else "")
        extra = {"runs": runs, "noise_ratios": ratios,
                 "noise_floor": float(floor)}
        if np.isfinite(final_ratio) and final_ratio > self.threshold and \
                status is not Status.MAX_ITER:
            return OptimizeOutcome(best_x, best_cost, Status.STALLED,
                                   f"stalled: the best of {runs} runs ends at {final_ratio:.3g}"
                                   f" times the noise floor estimated from the data "
                                   f"(threshold {self.threshold:g}): a local minimum or a "
                                   f"model that cannot fit the data; try other initial "
                                   f"weights, a larger network, or a check of the model; "
                                   f"{note}", nit, detail=message, extra=extra)
        msg = f"{message}; {note}" if note else message
        return OptimizeOutcome(best_x, best_cost, status, msg, nit, detail=detail, extra=extra)
