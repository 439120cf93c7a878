"""The starts of a fit: start points, one start run to its end, all starts through an executor.

A fit with ``n_starts = K`` runs its optimizer from ``K`` points (:func:`start_points`). Each
start (:func:`run_start`) runs every stage of the optimizer with its own
:class:`~dynlearn.fitting.tracker.Tracker`, and returns a picklable :class:`StartOutcome`,
so starts can run in other processes. :func:`run_starts` hands the starts to an
:class:`~dynlearn.distributed.executor.Executor`: as tasks (on Dask several starts to a
task, sized by their measured cost; each outcome then says on which worker and in which task
it ran), or one start after another here, each with the objective the executor makes
(in-process, or split over Dask workers by experiment).

Interruptions. The fit's time limit is one wall-clock deadline shared by every start (a
start that would begin after it does not run). Ctrl-C stops the whole fit: the start in
progress writes its checkpoint, and :class:`StartsInterrupted` carries every outcome so far
up to :func:`dynlearn.fit`. With a checkpoint, every finished start is recorded in it (by
the process that runs the fit's loop: here, or the client of the Dask cluster), so a
resumed fit runs only the starts that had not finished, and the one in progress continues
where it stood (see :mod:`dynlearn.fitting.checkpoint`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize

from dynlearn.core.parameters import ParameterSpace
from dynlearn.distributed.executor import Executor
from dynlearn.errors import ClusterError, TimeLimitError
from dynlearn.fitting.checkpoint import Checkpoint, resume, write_checkpoint
from dynlearn.fitting.tracker import FitStopped, Tracker
from dynlearn.objective.objective import FitObjective, Rejected
from dynlearn.optimizers import Optimizer, Status
from dynlearn.solve import reset_deadline, set_deadline

__all__ = ["StartOutcome", "StartSpec", "StartsInterrupted", "outcome_from_record",
           "outcome_record", "record_finished", "run_start", "run_starts", "start_points"]

#: rounds of noise re-estimation of a loss that estimates noise levels (at most)
NOISE_ROUNDS = 8


@dataclass
class StartSpec:
    """What one start needs besides the objective: picklable, so starts can run on other
    processes.

    Attributes
    ----------
    start : int
        The start's number (0: the model's own values).
    x0 : ndarray
        The start point, in the optimizer's coordinates.
    optimizer : Optimizer
    progress : bool
        Show this start's progress bar.
    callback, max_time, checkpoint, checkpoint_interval
        As in :func:`dynlearn.fit` (``checkpoint=None``: this start writes none).
    deadline : float, optional
        The wall-clock time (``time.time()``) at which the fit's ``max_time`` runs out.
    resume_state : Checkpoint, optional
        Continue from this checkpoint (whose start in progress is this one) instead of
        starting at ``x0``.
    n_starts : int
        The number of starts of the fit.
    seed : int, optional
        The fit's seed (recorded in checkpoints).
    done : list of dict
        The records of the fit's finished starts (:func:`outcome_record`), written with
        this start's checkpoints.
    """

    start: int
    x0: np.ndarray
    optimizer: Optimizer
    progress: bool = False
    callback: Callable | None = None
    checkpoint: Any = None
    checkpoint_interval: float = 5.0
    max_time: float | None = None
    resume_state: Checkpoint | None = None
    n_starts: int = 1
    deadline: float | None = None
    seed: int | None = None
    done: list = field(default_factory=list)


@dataclass
class StartOutcome:
    """The outcome of one start: picklable, so starts can run on other processes.

    ``cost`` is the sum of squared residuals at the start's own noise levels; ``loss`` the
    loss as the fit reports it (for ``loss="gaussian"`` the negative log-likelihood, noise
    levels included), by which the starts are compared.
    """

    start: int
    x: np.ndarray
    cost: float
    success: bool
    message: str
    status: Status
    nfev: int
    njev: int
    ngev: int
    nit: int
    history: list
    sigma_hat: np.ndarray
    elapsed: float
    x0: np.ndarray = field(default=None)
    rejected: int = 0
    # (residuals, A with A^T A = J^T J) at x when the optimizer left them behind (single-
    # start fits; the result's covariance needs them, and they are a solve of every
    # experiment)
    final: tuple | None = field(default=None, repr=False)
    loss: float = math.nan
    # (evaluations before it, round, stage) where each optimizer stage began
    stage_marks: list = field(default_factory=list, repr=False)
    # (evaluations, value, stage mark) of a stage's own objective (multiple shooting)
    stage_history: list = field(default_factory=list, repr=False)
    # where the start ran when the executor sent it elsewhere (a Dask worker's address, or
    # "client" when the work was too small for the cluster), the number of its task, and
    # that task's run time; "" / -1 / nan when it ran here in a plain serial fit
    worker: str = ""
    task: int = -1
    task_seconds: float = math.nan

    def __post_init__(self):
        if math.isnan(self.loss):
            self.loss = self.cost


def start_points(space: ParameterSpace, n_starts: int, seed) -> list[np.ndarray]:
    """The model's own starting point, then random ones.

    Random starts draw each bounded coordinate uniformly within its (transformed) bounds;
    unbounded log parameters are multiplied by a log-normal factor (sd 1 in log space);
    unbounded identity parameters get ``x0 + |x0| N(0, 1)``; network weights get
    ``x0 (1 + 0.5 N(0, 1))``; estimated initial states ``x0 (1 + 0.2 N(0, 1))``.
    """
    rng = np.random.default_rng(seed)
    out = [space.x0.copy()]
    for _ in range(n_starts - 1):
        x = space.x0.copy()
        for k in range(space.size):
            lo, hi = space.lower[k], space.upper[k]
            kind = space.kinds[k]
            if kind == "weight":
                x[k] = x[k] * (1 + 0.5 * rng.standard_normal())
            elif np.isfinite(lo) and np.isfinite(hi):
                x[k] = rng.uniform(lo, hi)
            elif kind == "y0":
                x[k] = x[k] + abs(x[k]) * 0.2 * rng.standard_normal()
            elif space.is_log[k]:
                x[k] = x[k] + rng.standard_normal()
            else:
                x[k] = x[k] + (abs(x[k]) or 1.0) * rng.standard_normal()
        out.append(space.clip(x))
    return out


# --- finished starts as checkpoint records -------------------------------------------------
def outcome_record(o: StartOutcome) -> dict:
    """A finished start as a checkpoint entry (everything but ``final``)."""
    return {"start": int(o.start), "x": np.asarray(o.x, dtype=float),
            "x0": None if o.x0 is None else np.asarray(o.x0, dtype=float),
            "cost": float(o.cost), "loss": float(o.loss), "status": o.status.value,
            "message": o.message, "nfev": int(o.nfev), "njev": int(o.njev),
            "ngev": int(o.ngev), "nit": int(o.nit), "rejected": int(o.rejected),
            "history": [[int(a), float(b)] for a, b in o.history],
            "sigma_hat": np.asarray(o.sigma_hat, dtype=float), "elapsed": float(o.elapsed)}


def outcome_from_record(rec: Mapping) -> StartOutcome:
    """The :class:`StartOutcome` of a checkpoint entry (see :func:`outcome_record`)."""
    status = Status.coerce(rec.get("status", 0), True, rec.get("message", ""))
    sigma = rec.get("sigma_hat")
    return StartOutcome(int(rec["start"]), np.asarray(rec["x"], dtype=float),
                        float(rec["cost"]), status.converged, str(rec.get("message", "")),
                        status, int(rec.get("nfev", 0)), int(rec.get("njev", 0)),
                        int(rec.get("ngev", 0)), int(rec.get("nit", 0)),
                        [(int(a), float(b)) for a, b in rec.get("history", [])],
                        np.asarray(sigma if sigma is not None else [], dtype=float),
                        float(rec.get("elapsed", 0.0)),
                        None if rec.get("x0") is None else np.asarray(rec["x0"], dtype=float),
                        int(rec.get("rejected", 0)), None,
                        float(rec.get("loss", rec["cost"])))


def record_finished(path, names: Sequence[str], n_starts: int, seed,
                    outcomes: Sequence[StartOutcome], method_choice=None, loss=None) -> None:
    """Write a checkpoint holding the finished starts ``outcomes`` and no start in progress
    (its point: the best finished start's), and ``method_choice`` (a
    :class:`~dynlearn.solve.MethodChoice`: what ``method="auto"`` chose) and the fit's
    ``loss`` (a :class:`~dynlearn.objective.losses.Loss`: its name and transforms) if
    given."""
    own = {} if loss is None else {"loss": loss.name, "transform": loss.transform_spec}
    best = min(outcomes, key=_rank) if outcomes else None
    x = None if best is None else np.asarray(best.x, dtype=float)
    write_checkpoint(path, {"names": list(names), "n_starts": int(n_starts), "seed": seed,
                            "start": None, "done": [outcome_record(o) for o in outcomes],
                            "x": x, "best_cost": math.inf if best is None else float(best.cost),
                            "best_loss": math.inf if best is None else float(best.loss),
                            "best_loss_x": x,
                            "method_choice": None if method_choice is None else
                            method_choice.to_dict(), **own})


def _rank(o: StartOutcome):
    """Order of starts: by their loss (the likelihood for losses estimating noise), those
    without a solved point last."""
    return (not np.isfinite(o.loss), o.loss)


# --- running the starts ------------------------------------------------------------------------
class StartsInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fit's starts: carries the outcomes so far (finished starts and the
    interrupted one's best point) up to :func:`dynlearn.fit`, which re-raises it as a
    :class:`~dynlearn.errors.FitInterrupted`. Still a ``KeyboardInterrupt``: whatever does
    not know it stops as on any Ctrl-C."""

    def __init__(self, outcomes: Sequence[StartOutcome] = ()):
        super().__init__("interrupted")
        self.outcomes = list(outcomes)


def run_starts(specs: Sequence[StartSpec], settings: Mapping[str, Any], executor: Executor,
               done: Sequence[StartOutcome] = (), checkpoint=None,
               names: Sequence[str] = ()) -> list[StartOutcome]:
    """Run every start; the outcomes of ``done`` and of the specs, in start order.

    When the executor fans the starts out (a multi-start fit on Dask, a user's ``map``),
    each start is one item of :meth:`~dynlearn.distributed.executor.Executor.map`, with
    ``settings`` (the objective's keyword arguments, shared by every start) sent once, and
    one progress bar over the starts. Otherwise the starts run one after another here, each
    evaluating the objective the executor makes.

    Parameters
    ----------
    specs : sequence of StartSpec
        The starts to run.
    settings : mapping
        The keyword arguments of :class:`~dynlearn.objective.objective.FitObjective`.
    executor : Executor
    done : sequence of StartOutcome
        Starts that finished before (read from a checkpoint).
    checkpoint : path, optional
        Where every finished start is recorded as it finishes (see :func:`record_finished`).
    names : sequence of str
        The names of the fitted values (recorded in the checkpoint).

    Raises
    ------
    StartsInterrupted
        Ctrl-C: the outcomes so far.
    ClusterError
        The Dask scheduler was lost; its ``outcomes`` attribute holds the starts that had
        finished.
    """
    specs = list(specs)
    outcomes = list(done)          # every start so far
    recorded = list(done)          # the finished ones (a stopped start can be continued)
    n_starts = specs[0].n_starts if specs else len(outcomes)
    seed = specs[0].seed if specs else None

    def record(outcome):
        outcomes.append(outcome)
        if outcome.status in (Status.MAX_TIME, Status.CALLBACK):
            return      # stopped early: its checkpoint (if any) holds it in progress
        recorded.append(outcome)
        if checkpoint:
            record_finished(checkpoint, names, n_starts, seed, recorded,
                            settings.get("method_choice"), settings.get("loss"))

    if specs and executor.fans_out(len(specs)):
        light = [replace(s, progress=False, checkpoint=None, done=[]) for s in specs]
        best = [math.inf]

        def show(bar, outcome):
            record(outcome)
            if bar is not None:
                best[0] = min(best[0], outcome.loss)
                bar.set_postfix(loss=f"{best[0]:.6g}", refresh=False)
        placement: list = []
        try:
            executor.map(_start_task, light, [f"start {s.start}" for s in specs],
                         {"settings": settings}, progress=any(s.progress for s in specs),
                         desc="starts", on_result=show, placement=placement)
        except KeyboardInterrupt:
            raise StartsInterrupted(outcomes) from None
        except ClusterError as exc:
            exc.outcomes = list(outcomes)   # the starts that finished (and are recorded)
            raise
        where = {s.start: p for s, p in zip(specs, placement) if p is not None}
        outcomes = [replace(o, worker=where[o.start].worker, task=where[o.start].task,
                            task_seconds=where[o.start].task_seconds)
                    if o.start in where else o for o in outcomes]
    else:
        stop = None
        for spec in specs:
            if stop is not None:   # the callback stopped the fit: the other starts do not run
                outcomes.append(_not_run(spec, stop))
                continue
            spec = replace(spec, done=[outcome_record(o) for o in recorded])
            try:
                with executor.objective(settings) as obj:
                    outcome = run_start(spec, obj)
            except StartsInterrupted as exc:
                raise StartsInterrupted(outcomes + exc.outcomes) from None
            except KeyboardInterrupt:
                raise StartsInterrupted(outcomes) from None
            except ClusterError as exc:   # an experiment-split start lost its scheduler
                exc.outcomes = list(outcomes)
                raise
            record(outcome)
            if outcome.status is Status.CALLBACK:
                stop = "not run: the callback stopped the fit"
    return sorted(outcomes, key=lambda o: o.start)


def _not_run(spec: StartSpec, message: str) -> StartOutcome:
    """The outcome of a start that did not run (the fit stopped before it)."""
    x0 = np.asarray(spec.x0, dtype=float)
    return StartOutcome(spec.start, x0, math.inf, False, message, Status.CALLBACK, 0, 0, 0,
                        0, [], np.zeros(0), 0.0, x0, 0, None, math.inf)


def _start_task(spec: StartSpec, settings: Mapping[str, Any]) -> StartOutcome:
    """One start as a task: the objective is built where the task runs."""
    return run_start(spec, FitObjective(**settings))


def run_start(spec: StartSpec, obj: FitObjective) -> StartOutcome:
    """One start: every stage of the optimizer in turn, with the Gaussian noise re-estimated
    between rounds.

    Interruption-safe: the time limit or the callback end the start with its best point;
    Ctrl-C writes the checkpoint and raises :class:`StartsInterrupted` with the start's
    outcome so far; on any other error the checkpoint is written, then the error
    propagates. A start whose fit ran out of time before it began does not run.
    """
    stages = spec.optimizer.stages()
    desc = "fit" if spec.n_starts == 1 else f"fit (start {spec.start + 1}/{spec.n_starts})"
    tracker = Tracker(obj, spec.progress, spec.callback, spec.deadline, spec.checkpoint,
                      spec.checkpoint_interval,
                      meta={"start": spec.start, "n_starts": spec.n_starts, "seed": spec.seed,
                            # method="auto"'s choice, kept by a resumed fit
                            "method_choice": None if getattr(obj, "method_choice", None)
                            is None else obj.method_choice.to_dict()},
                      desc=desc, done=spec.done, stages=stages)
    obj.tracker = tracker
    x = np.asarray(spec.x0, dtype=float)
    if tracker.past_deadline() and spec.resume_state is None:
        tracker.close()
        return _outcome(spec, obj, tracker, x, math.inf, Status.MAX_TIME,
                        f"not run: max_time={spec.max_time} s was reached before this start")
    rnd0, stage0, state0 = 0, 0, None
    rs = spec.resume_state
    if rs is not None:
        x, rnd0, stage0, state0 = resume(rs, tracker, obj)
    tracker.begin_stage(rnd0, stage0, x, state0 if state0 is not None else {})
    message, status = "", Status.FAILED
    rounds = NOISE_ROUNDS if obj.estimates_noise else 1
    limit = set_deadline(tracker.deadline)   # honoured inside every solve, too
    try:
        for rnd in range(rnd0, rounds):
            resumed_round = rs is not None and rnd == rnd0
            if obj.estimates_noise:
                if rnd == 0 and rs is None:
                    obj.set_sigma(obj.estimate_sigma(x), x)
                if not resumed_round:   # the cost scale changed with the noise levels
                    tracker.best_x, tracker.best_cost = None, math.inf
            for stage in range(stage0 if resumed_round else 0, len(stages)):
                state = state0 if resumed_round and stage == stage0 and state0 is not None \
                    else {}
                tracker.begin_stage(rnd, stage, x, state)
                out = stages[stage].run(obj, x, state)
                if tracker.best_x is not None and tracker.best_cost <= out.cost:
                    x = tracker.best_x.copy()
                else:
                    x = np.asarray(out.x, dtype=float)
                message, status = out.message, out.status
                if not np.isfinite(out.cost) and tracker.best_x is None:
                    break
            if rounds > 1:
                new = obj.estimate_sigma(x)
                change = obj.noise_change(new, x)
                obj.set_sigma(new, x)   # (noise formulas: their levels at x's predictions)
                tracker.best_x, tracker.best_cost = None, math.inf
                if change < 1e-3:
                    break
                tracker.begin_stage(rnd + 1, 0, x, {})
        if getattr(obj, "noise_formulas", None) is not None:
            # the alternation's point is the best so far: a time limit or Ctrl-C during
            # the joint end keeps it (the levels are restored there)
            tracker.report(x, _safe_cost(obj, x))
            x = polish_noise_formulas(obj, x)
        cost = _safe_cost(obj, x)
        tracker.report(x, cost)
    except (FitStopped, TimeLimitError) as exc:
        if isinstance(exc, TimeLimitError):   # a solve ran past the deadline
            tracker.stop_reason = "max_time"
        x, cost = _best_or(tracker, x)
        status = Status.MAX_TIME if tracker.stop_reason == "max_time" else Status.CALLBACK
        message = (f"stopped: max_time={spec.max_time} s reached; best point kept"
                   if tracker.stop_reason == "max_time" else f"stopped: {exc}; best point kept")
        tracker.save()
    except KeyboardInterrupt:
        tracker.save()   # never lose progress
        tracker.close()
        x, cost = _best_or(tracker, x)
        message = "interrupted (Ctrl-C); best point kept" + (
            f", checkpoint in {spec.checkpoint}" if spec.checkpoint else "")
        raise StartsInterrupted([_outcome(spec, obj, tracker, x, cost, Status.INTERRUPTED,
                                          message)]) from None
    except Exception:
        tracker.save()   # never lose progress, then let the error surface
        tracker.close()
        raise
    finally:
        reset_deadline(limit)
        tracker.close()
    # no point solved: the model cannot be solved, unless a stop (time limit, callback)
    # came before any point was tried
    if not np.isfinite(cost) and status not in (Status.MAX_TIME, Status.CALLBACK):
        status = Status.FAILED
    return _outcome(spec, obj, tracker, x, cost, status, message,
                    obj.last_system(x) if spec.n_starts == 1 else None)


#: iterations of the joint optimisation that ends a fit with noise formulas (at most; 0:
#: none, the fit ends at the alternation's fixed point)
POLISH_ITERATIONS = 200


def polish_noise_formulas(obj: FitObjective, x) -> np.ndarray:
    """The end of a fit with noise formulas: from the fixed point of the alternation
    (iteratively reweighted least squares), bounded L-BFGS-B on the exact negative
    log-likelihood, the noise parameters re-estimated at every point and the levels
    followed through the predictions in the gradient
    (:meth:`~dynlearn.objective.objective.FitObjective.exact_loss_and_grad`). Returns the
    better of the two points, with the noise levels set there. Interrupted (a time limit,
    Ctrl-C), it restores the levels at ``x`` before the interruption propagates."""
    x = np.asarray(x, dtype=float)
    if POLISH_ITERATIONS <= 0:
        return x
    try:
        start = (obj.sigma_hat.copy(), obj.noise_predictions(x))
    except Rejected:
        return x

    def f(z):
        try:
            v, g = obj.exact_loss_and_grad(z)
        except Rejected:
            return 1e300, np.zeros_like(z)
        if not (np.isfinite(v) and np.all(np.isfinite(g))):
            return 1e300, np.zeros_like(z)
        return v, g
    sp_ = obj.space
    bounds = [(a if np.isfinite(a) else None, b if np.isfinite(b) else None)
              for a, b in zip(sp_.lower, sp_.upper)]
    try:
        v0, _ = f(x)
        if not v0 < 1e300:
            obj.set_sigma(start[0], predictions=start[1])
            return x
        res = minimize(f, x, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": POLISH_ITERATIONS, "ftol": 1e-13, "gtol": 1e-10})
        best = np.asarray(res.x, dtype=float) if res.fun < v0 else x
        obj.set_sigma(obj.estimate_sigma(best), best)
    except BaseException:
        obj.set_sigma(start[0], predictions=start[1])
        raise
    return best


def _outcome(spec, obj, tracker, x, cost, status, message, final=None) -> StartOutcome:
    loss = (float(obj.loss.value(cost, obj.penalty(), obj.n_data)) if np.isfinite(cost)
            else math.inf)
    return StartOutcome(spec.start, np.asarray(x), float(cost), status.converged, message,
                        status, tracker.counts["nfev"], tracker.counts["njev"],
                        tracker.counts["ngev"], tracker.nit, list(tracker.history),
                        obj.sigma_hat.copy(), time.perf_counter() - tracker.t_start,
                        np.asarray(spec.x0), tracker.counts["rejected"], final, loss,
                        list(tracker.stage_marks), list(tracker.stage_history))


def _safe_cost(obj, x) -> float:
    try:
        return obj.cost(x)
    except Rejected:
        return math.inf


def _best_or(tracker, x):
    if tracker.best_x is not None:
        return tracker.best_x.copy(), tracker.best_cost
    return x, math.inf
