"""The tracker of one start of a fit: counts, best point, progress, callback, time limit,
checkpoints.

The objective tells the tracker about every evaluation (``count``) and every evaluated point
(``report``); the tracker keeps the best point so far, so that a fit stopped early (time
limit, callback, Ctrl-C, an error) still returns, and checkpoints, its best point. The start
that runs the optimizer tells it where it stands (:meth:`Tracker.begin_stage`: the round,
the stage, the point the stage started from and the optimizer's state dict, which the
optimizer keeps up to date); a checkpoint records all of it, so a resumed fit continues.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from dynlearn.fitting.checkpoint import write_checkpoint
from dynlearn.report.progress import ProgressBar

__all__ = ["FitStopped", "Tracker"]


class FitStopped(Exception):
    """Raised inside an evaluation to end the fit early (time limit, callback).

    A control-flow signal between the tracker and the start that runs the optimizer (see
    :func:`dynlearn.fitting.starts.run_start`), never seen by users: the fit returns its
    best point with ``success=False``.
    """


class Tracker:
    """Counts evaluations, keeps the best point, drives progress bar, callback, time limit
    and checkpoints.

    Parameters
    ----------
    obj : FitObjective
        The objective of the start (for the parameter layout and the noise levels).
    progress : bool
        Show the progress of the start (:class:`~dynlearn.report.progress.ProgressBar`): the
        stage, its iterations out of its budget, the best loss and the evaluations so far;
        a tqdm bar on a terminal, plain lines (no carriage returns) elsewhere.
    callback : callable, optional
        ``callback(info)`` after every iteration; returning ``True`` stops the fit.
    deadline : float, optional
        The wall-clock time (``time.time()``) at which the fit stops: the fit's
        ``max_time`` counted from the fit's start, shared by all its starts.
    checkpoint : path, optional
        Where :meth:`save` writes (nothing is written without one).
    checkpoint_interval : float
        Seconds between checkpoints written at the end of an iteration or on improvement
        (the first is written at the first occasion).
    meta : dict
        Entries of every checkpoint (``start``, ``n_starts``, ``seed``); :meth:`begin_stage`
        adds ``round`` and ``stage``.
    desc : str
        The progress bar's label.
    done : list of dict, optional
        The records of the fit's finished starts (see
        :func:`dynlearn.fitting.starts.outcome_record`), written with every checkpoint.
    stages : sequence of Optimizer, optional
        The optimizers of the start's stages, for the progress display (names, budgets).

    Attributes
    ----------
    counts : dict
        ``nfev``, ``njev``, ``ngev`` and ``rejected``.
    nit : int
    best_x, best_cost
        The best point so far (``None``, ``inf`` before the first finite evaluation); for a
        loss that estimates noise levels, the best since they were last re-estimated.
    best_loss, best_loss_x
        The best loss (as the fit reports it) of any point so far, and that point: it never
        rises, also across rounds of noise re-estimation.
    history : list of (int, float)
        ``(evaluation number, best cost)`` at each improvement.
    stage_marks : list of (int, int, int)
        ``(evaluations before it, round, stage)`` each time a stage begins (the loss plot's
        stage boundaries).
    stage_history : list of (int, float, int)
        ``(evaluations, value, index into stage_marks)`` each time the own objective of a
        stage that minimises something other than the loss improved (multiple shooting,
        see :meth:`report_stage`).
    stop_reason : str or None
        ``"max_time"`` or ``"callback"`` once :class:`FitStopped` was raised.
    """

    def __init__(self, obj, progress: bool, callback: Callable | None, deadline: float | None,
                 checkpoint: str | None, checkpoint_interval: float, meta: dict,
                 desc: str = "fit", done: list[dict] | None = None,
                 stages: Sequence | None = None):
        self.obj = obj
        self.counts = {"nfev": 0, "njev": 0, "ngev": 0, "rejected": 0}
        self.nit = 0
        self.best_x, self.best_cost = None, math.inf
        # the best loss (as the fit reports it) of any point so far: unlike the cost, it is
        # comparable across rounds of noise re-estimation, so it never rises
        self.best_loss, self.best_loss_x = math.inf, None
        self.history: list[tuple[int, float]] = []   # (evaluation number, best cost) on improvement
        self.stage_marks: list[tuple[int, int, int]] = []
        # (evaluation number, value, index into stage_marks) of a stage's own objective
        self.stage_history: list[tuple[int, float, int]] = []
        self.callback = callback
        self.t_start = time.perf_counter()
        self.deadline = deadline
        self.checkpoint = checkpoint
        self.checkpoint_interval = checkpoint_interval
        # the first checkpoint comes at the first occasion, then one per interval: a fit
        # killed more often than the interval still moves on from resume to resume
        self.last_save = -math.inf
        self.meta = dict(meta)
        self.done = list(done or [])
        self.stage_x0: np.ndarray | None = None
        self.state: dict | None = None
        self.stop_reason = None
        self.stages = list(stages or [])
        self.bar: ProgressBar | None = ProgressBar(desc, unit="it") if progress else None
        self._shown_stage: tuple[int, int] | None = None

    @property
    def n_evals(self) -> int:
        """Residual, Jacobian and gradient evaluations so far."""
        return self.counts["nfev"] + self.counts["njev"] + self.counts["ngev"]

    def past_deadline(self) -> bool:
        """Whether the fit's time limit has passed."""
        return self.deadline is not None and time.time() > self.deadline

    def begin_stage(self, rnd: int, stage: int, x0: np.ndarray, state: dict) -> None:
        """A stage begins (or resumes): round ``rnd`` of the noise re-estimation, optimizer
        stage ``stage``, from ``x0``, the optimizer keeping its state in ``state``."""
        self.meta.update(round=int(rnd), stage=int(stage))
        mark = (self.n_evals, int(rnd), int(stage))
        if not self.stage_marks or self.stage_marks[-1][1:] != mark[1:]:
            self.stage_marks.append(mark)
        self.stage_x0 = np.array(x0, dtype=float)
        self.state = state
        if self.bar is not None and self._shown_stage != (rnd, stage):
            self._shown_stage = (rnd, stage)
            label, budget = self._stage_label(rnd, stage)
            self.bar.reset(total=budget, stage=label)

    def report_stage(self, value: float) -> None:
        """A stage's own objective improved to ``value`` (a stage that minimises something
        other than the fit's loss, e.g. multiple shooting): kept for the loss plot."""
        self.stage_history.append((self.n_evals, float(value),
                                   max(len(self.stage_marks) - 1, 0)))

    def _stage_label(self, rnd: int, stage: int) -> tuple[str, int | None]:
        """The progress display's name of a stage and its iteration budget (if known)."""
        if not 0 <= stage < len(self.stages):
            return f"stage {stage + 1}", None
        opt = self.stages[stage]
        label = type(opt).__name__
        if len(self.stages) > 1:
            label = f"stage {stage + 1}/{len(self.stages)} {label}"
        if rnd > 0:      # the rounds of noise re-estimation of a Gaussian loss
            label += f", noise round {rnd + 1}"
        budget = getattr(opt, getattr(opt, "budget_option", "max_iter"), None)
        ok = isinstance(budget, int) and not isinstance(budget, bool) and budget > 0
        return label, budget if ok else None

    def count(self, what: str):
        """Count one evaluation (``"nfev"``, ``"njev"``, ``"ngev"``, ``"rejected"``); raises
        :class:`FitStopped` past the time limit."""
        self.counts[what] += 1
        if what == "rejected":
            return
        if self.past_deadline():
            self.stop_reason = "max_time"
            raise FitStopped("time limit reached")

    def report(self, x, cost, iteration: bool = False):
        """An evaluated point (kept if it is the best so far); ``iteration=True``: an
        optimizer iteration ended (the callback runs and may stop the fit with
        :class:`FitStopped`).

        A checkpoint is written on improvement or at the end of an iteration, once
        ``checkpoint_interval`` seconds have passed since the last one: the optimizer
        updates its state before it reports an iteration, so the checkpoint always holds a
        state it can continue from.
        """
        improved = (x is not None and cost is not None and np.isfinite(cost)
                    and cost < self.best_cost)
        if improved:
            self.best_x, self.best_cost = np.array(x, dtype=float), float(cost)
            self.history.append((self.n_evals, self.best_cost))
            loss = self.loss_of(self.best_cost)
            if loss < self.best_loss:
                self.best_loss, self.best_loss_x = loss, self.best_x
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{self.best_loss:.6g}", refresh=False)
        if iteration:
            self.nit += 1
            if self.bar is not None:
                self.bar.set_postfix(evals=self.n_evals, refresh=False)
                self.bar.update(1)
        if self.checkpoint and (improved or iteration) and \
                time.perf_counter() - self.last_save > self.checkpoint_interval:
            self.save()
        if iteration and self.callback is not None and self.best_x is not None:
            theta, y0s = self.obj.space.unpack(self.best_x)
            info = {"iteration": self.nit, "nfev": self.n_evals, "loss": self.best_cost,
                    "x": self.best_x.copy(), "theta": theta, "y0": y0s,
                    "names": list(self.obj.space.names),
                    "values": self.obj.space.physical(self.best_x),
                    "elapsed": time.perf_counter() - self.t_start,
                    "start": self.meta.get("start", 0)}
            if self.callback(info) is True:
                self.stop_reason = "callback"
                raise FitStopped("the callback asked to stop")

    def loss_of(self, cost: float) -> float:
        """The loss (as :func:`dynlearn.fit` reports it) of a point of cost ``cost`` at the
        current noise levels."""
        obj = self.obj
        if not obj.loss.estimates_noise:
            return float(cost)
        return float(obj.loss.value(cost, obj.penalty(), obj.n_data))

    def save(self) -> None:
        """Write where the start stands to the checkpoint (if any): the best point (the
        stage's starting point while there is none), the round, stage and optimizer state,
        the counters, history and noise levels, and the finished starts."""
        if not self.checkpoint or self.stage_x0 is None:
            return
        x = self.best_x if self.best_x is not None else self.stage_x0
        meta = dict(self.meta)
        meta.update(names=list(self.obj.space.names), x=x, stage_x0=self.stage_x0,
                    state=self.state or {}, best_cost=self.best_cost,
                    best_loss=self.best_loss, best_loss_x=self.best_loss_x,
                    counts=dict(self.counts), nit=self.nit,
                    history=list(self.history), sigma_hat=np.array(self.obj.sigma_hat),
                    elapsed=time.perf_counter() - self.t_start, saved=time.time(),
                    done=self.done, loss=self.obj.loss.name,
                    transform=self.obj.loss.transform_spec)
        write_checkpoint(self.checkpoint, meta)
        self.last_save = time.perf_counter()

    def close(self):
        """Close the progress bar."""
        if self.bar is not None:
            self.bar.close()
