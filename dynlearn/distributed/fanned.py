"""A fit's objective split over Dask workers by experiment.

:class:`FannedObjective` is a :class:`~dynlearn.objective.objective.FitObjective` whose
evaluations run on Dask, one task per batch of experiments. Each worker keeps a copy of the
plain objective (scattered once, then cached: see :func:`dynlearn.distributed.dask.cached`)
and evaluates it through its public per-experiment interface; the client stacks or sums the
pieces exactly as the serial objective does, so residuals and Jacobians are bit-identical to
a serial evaluation (sums, such as gradients, equal to rounding). Sums and the QR reduction
are taken experiment by experiment in the experiments' order, whatever the batches (which
follow the measured load): the same inputs give the same bits on every run.
"""

from __future__ import annotations

import math
import time
import traceback
import uuid
from dataclasses import dataclass

import numpy as np

from dynlearn.distributed.dask import (
    RESCATTERS,
    Parallel,
    TaskError,
    cached,
    cluster_lost,
    forget_everywhere,
    lost_cluster_error,
    lost_inputs,
    reaching_scheduler,
    scatter,
    worker_address,
)
from dynlearn.errors import OptionError, TimeLimitError
from dynlearn.objective.objective import FitObjective, Rejected
from dynlearn.objective.shooting import ShootingObjective
from dynlearn.solve import current_deadline, deadline

__all__ = ["CacheMiss", "FannedObjective", "RejectedAt", "balanced_batches", "contiguous_batches",
           "experiment_task"]


# --- experiments of one fit --------------------------------------------------------------------
def contiguous_batches(n: int, batch_size: int | None, n_threads: int
                       ) -> list[tuple[int, ...]]:
    """Contiguous, near-equal batches of ``range(n)``: of ``batch_size`` experiments, or
    (``batch_size=None``) one per worker thread (at most ``n``).

    Examples
    --------
    >>> contiguous_batches(5, None, 2)
    [(0, 1, 2), (3, 4)]
    >>> contiguous_batches(5, 2, 8)
    [(0, 1), (2, 3), (4,)]
    """
    n_tasks = min(n, n_threads) if batch_size is None else math.ceil(n / batch_size)
    return [tuple(int(i) for i in b) for b in np.array_split(np.arange(n), max(1, n_tasks))
            if b.size]


def balanced_batches(costs: np.ndarray, n_tasks: int) -> list[tuple[int, ...]]:
    """``n_tasks`` batches of experiments with near-equal total cost (longest first, each
    to the least loaded batch: within 4/3 of the best split, and close to it when there are
    many more experiments than tasks). Experiments keep their order inside a batch."""
    loads = np.zeros(max(1, min(n_tasks, costs.size)))
    members: list[list[int]] = [[] for _ in loads]
    for i in np.argsort(-costs, kind="stable"):
        k = int(np.argmin(loads))
        loads[k] += costs[i]
        members[k].append(int(i))
    return [tuple(sorted(m)) for m in members if m]


@dataclass
class RejectedAt:
    """What :func:`experiment_task` returns when the ODE solver fails at a trial point: the
    client raises :class:`~dynlearn.objective.objective.Rejected` with ``message`` (the
    optimizer rejects the point, as in a serial fit)."""

    message: str


class CacheMiss:
    """What :func:`experiment_task` returns when it got only a token and this worker has no
    cached objective under it: the client sends the objective itself again."""


class _InputsLost(Exception):
    """The scattered objective died with a worker: scatter it again (see lost_inputs)."""


def experiment_task(source, token: str, batch: tuple[int, ...], what, x, sigma_hat,
                     at: float | None = None):
    """Evaluate ``what`` for the experiments in ``batch`` (runs on a worker).

    ``source`` is the scattered objective, or just its ``token`` once this worker is known
    to hold it in its cache (no transfer at all then). The cached objective keeps its
    compiled model (and the multiple-shooting problems built on it) across tasks.

    ``what`` is ``"residuals"``, ``"jacobian"``, ``"system"``, ``"sigma-stats"``,
    ``"cost_and_grad"``, or ``("shooting-residuals" | "shooting-jacobian", *spec)`` for the
    rows of a multiple-shooting problem (``spec``: :meth:`ShootingObjective.spec`).

    Returns ``(worker address, [per-experiment results], [per-experiment seconds], None)``
    (for ``"system"`` each experiment's result is its residuals and the triangular factor of
    its rows ``[J r]``, see :func:`_triangular`), or a :class:`RejectedAt` when a trial
    point cannot be solved, or a :class:`CacheMiss`. ``at``: the caller's solve deadline
    (:func:`dynlearn.solve.deadline`, a wall-clock time), which every solve here keeps to:
    past it, the :class:`~dynlearn.errors.TimeLimitError` goes back to the caller.
    """
    with deadline(at):
        return _experiment_batch(source, token, batch, what, x, sigma_hat)


def _experiment_batch(source, token, batch, what, x, sigma_hat):
    """:func:`experiment_task` within its deadline."""
    entry = cached(token, None if isinstance(source, str) else source)
    if entry is None:
        return CacheMiss()
    obj = entry["obj"]
    if not np.array_equal(obj.sigma_hat, sigma_hat):
        obj.set_sigma(np.array(sigma_hat, dtype=float))
    out, seconds = [], []
    shooting = _shooting_problem(entry, what[1:]) if isinstance(what, tuple) else None
    # an experiment's first evaluation here carries one-off work (compiling the model):
    # reported as NaN, not as the experiment's cost
    timed = entry.setdefault("timed", set())
    family = "experiment" if shooting is None else "shooting"
    for i in batch:
        t0 = time.perf_counter()
        try:
            if shooting is not None:
                out.append(shooting.experiment(i, x, what[0] == "shooting-jacobian"))
            elif what == "residuals":
                out.append(obj.experiment_residuals(i, x))
            elif what == "sigma-stats":
                out.append(obj.experiment_noise_statistics(i, x))
            elif what in ("jacobian", "system"):
                r, J = obj.experiment_jacobian(i, x)
                Jc = J[:, obj.experiment_columns(i)]
                out.append((r, Jc) if what == "jacobian" else (r, _triangular(r, Jc)))
            else:
                out.append(obj.experiment_cost_and_grad(i, x))
        except Rejected as exc:   # a failed solve rejects the trial point; not an error
            return RejectedAt(str(exc))
        except TimeLimitError:    # the fit's max_time: the caller stops the fit
            raise
        except Exception as exc:
            worker = worker_address()
            name = obj.bound[i].name
            label = what if isinstance(what, str) else what[0].replace("-", " ")
            raise TaskError(f"experiment '{name}' failed on worker {worker or '?'} while "
                            f"computing the {label}: {type(exc).__name__}: {exc}",
                            f"experiment '{name}'", worker, traceback.format_exc()) from None
        seconds.append(time.perf_counter() - t0 if (family, i) in timed else math.nan)
        timed.add((family, i))
    return worker_address(), out, seconds, None


def _triangular(r: np.ndarray, Jc: np.ndarray) -> np.ndarray:
    """``R`` of a QR decomposition of one experiment's rows ``[J_c r]`` (``J_c``: the
    columns of its Jacobian that can be non-zero, see ``experiment_columns``).

    ``R^T R`` is their ``[J r]^T [J r]``: all a Gauss-Newton-type step needs of them, in at
    most ``(c + 1)^2`` numbers instead of ``rows (c + 1)`` (tall-and-skinny QR: the factors
    of several blocks stacked and factored again give the factor of the whole). Each
    experiment is reduced on its own, never a batch together, so that the client's factor
    of the whole, and with it every step, does not depend on how the experiments were
    batched: a split fit is bit-reproducible whatever the load balancing did.
    """
    return np.linalg.qr(np.column_stack([Jc, r]), mode="r")


def _shooting_problem(entry: dict, spec: tuple) -> ShootingObjective:
    """The multiple-shooting problem around a worker's cached objective (kept with it;
    weight and state scales as the client has them now)."""
    *layout, weight, scale = spec
    key = ("shooting", *layout)
    ms = entry["views"].get(key)
    if ms is None:
        segments, points, max_segments, max_states = layout
        ms = entry["views"][key] = ShootingObjective(entry["obj"], segments, weight, points,
                                                     max_segments, max_states)
    ms.weight, ms.scale = weight, np.asarray(scale, dtype=float)
    return ms


class FannedObjective(FitObjective):
    """A :class:`~dynlearn.objective.objective.FitObjective` whose residuals, Jacobian,
    gradient and noise statistics are evaluated on Dask, one task per batch of experiments.

    Parameters
    ----------
    par : Parallel
        The client, batch size (default: one batch per worker thread, re-cut from the
        measured cost of each experiment) and retries.
    **settings
        The keyword arguments of :class:`~dynlearn.objective.objective.FitObjective`.

    Call :meth:`close` when done: it releases the copies held by the workers.
    """

    def __init__(self, par: Parallel, **settings):
        super().__init__(**settings)
        if self.noise_formulas is not None:
            raise OptionError("a fit with noise formulas (sigma= formulas of noise "
                              "parameters) cannot yet be split over workers by experiment; "
                              "run it without client= (or with several starts, which run "
                              "as whole tasks)")
        self._client = par.client
        self._retries = par.retries
        self._shipped = FitObjective(**settings)
        with reaching_scheduler(par.client, "sending the fit's objective to the workers"):
            self._remote = scatter(par.client, self._shipped)
        self._key = str(self._remote.key)   # the cache token, kept when re-sent
        self._holders: set[str] = set()   # workers known to cache the objective
        self._batches = contiguous_batches(self.n_experiments, par.batch_size, par.n_threads)
        # without a batch size, batches are re-cut from the measured cost of each
        # experiment (solves of different experiments can differ several-fold)
        self._balance = par.batch_size is None and len(self._batches) > 1
        self._seconds = np.full(self.n_experiments, np.nan)
        self._token = uuid.uuid4().hex[:10]
        self._calls = 0
        self._slots_cache: list[str] = []
        self._slots_time = -math.inf

    _lost = False   # the scheduler is gone: nothing to release, and no one to ask

    @property
    def batches(self) -> list[tuple[int, ...]]:
        """The batches of experiments (indices, one task each) of the last evaluation:
        contiguous until every experiment's cost is measured, then re-cut from those costs
        (:func:`balanced_batches`) before each evaluation, unless a ``batch_size`` was
        given."""
        return list(self._batches)

    @property
    def seconds(self) -> np.ndarray:
        """The measured cost (seconds) of one evaluation of each experiment (a running mean;
        NaN until measured: an experiment's first evaluation on a worker, which compiles the
        model there, is not counted). A copy; assigning an array of one cost per experiment
        replaces them (the next evaluation's batches are cut from it)."""
        return self._seconds.copy()

    @seconds.setter
    def seconds(self, costs) -> None:
        costs = np.asarray(costs, dtype=float)
        if costs.shape != self._seconds.shape:
            raise ValueError(f"seconds needs one cost per experiment ({self._seconds.size}), "
                             f"got shape {costs.shape}")
        self._seconds = costs.copy()

    @property
    def holders(self) -> frozenset[str]:
        """The addresses of the workers known to hold the objective in their cache: later
        evaluations send them its token only, not the objective."""
        return frozenset(self._holders)

    def close(self) -> None:
        """Release the workers' copies of the objective."""
        if self._remote is not None and not self._lost:
            self._client.cancel([self._remote])
            forget_everywhere(self._client, [self._key])
            self._remote = None

    def _slots(self) -> list[str]:
        """One worker address per worker thread, refreshed every few seconds.

        Batches are placed round-robin on these (loosely: a batch still runs elsewhere
        if its worker is gone). Left to itself, the scheduler sometimes queues both
        batches of a round on the same worker (every worker holds the objective, so
        data locality does not separate them), which serialises the round.
        """
        now = time.monotonic()
        if now - self._slots_time > 5.0:
            try:
                self._slots_cache = [w for w, n in sorted(self._client.nthreads().items())
                                     for _ in range(n)]
            except Exception:  # noqa: BLE001 - placement is only a hint
                self._slots_cache = []
            self._slots_time = now
        return self._slots_cache

    def _plan(self) -> list[tuple[int, ...]]:
        if self._balance and np.all(np.isfinite(self._seconds)):
            self._batches = balanced_batches(self._seconds, len(self._batches))
        return self._batches

    def _evaluate(self, what, x) -> list:
        """Per-experiment results of ``what`` at ``x``, in the experiments' order."""
        x = np.asarray(x, dtype=float)
        label = what if isinstance(what, str) else what[0]
        slots = self._slots()
        batches = self._plan()
        todo = list(range(len(batches)))
        parts: list = [None] * len(todo)
        rescatters = 0
        for attempt in range(2 + RESCATTERS):
            futures = []
            for k in todo:
                w = slots[k % len(slots)] if slots else None
                # a worker that has the objective cached gets only its token
                src = self._key if attempt == 0 and w in self._holders else self._remote
                self._calls += 1
                where = {} if w is None else {"workers": [w], "allow_other_workers": True}
                futures.append(self._client.submit(
                    experiment_task, src, self._key, batches[k], what, x,
                    self.sigma_hat, current_deadline(),
                    key=f"dynlearn-{label}-{self._token}-{self._calls}",
                    retries=self._retries, pure=False, **where))
            try:
                got = self._gather(futures, label, can_rescatter=rescatters < RESCATTERS)
            except _InputsLost:
                rescatters += 1
                with reaching_scheduler(self._client, "sending the fit's objective again"):
                    old, self._remote = self._remote, scatter(self._client, self._shipped)
                self._client.cancel([old])
                continue
            for k, p in zip(todo, got):
                parts[k] = p
            todo = [k for k in todo if isinstance(parts[k], CacheMiss)]
            if not todo:
                break
        out: list = [None] * self.n_experiments
        for batch, p in zip(batches, parts):
            if isinstance(p, RejectedAt):
                raise Rejected(p.message)
            worker, values, seconds, _ = p
            self._holders.add(worker)
            for i, v, sec in zip(batch, values, seconds):
                out[i] = v
                old = self._seconds[i]
                if np.isfinite(sec):
                    self._seconds[i] = sec if not np.isfinite(old) else 0.5 * (old + sec)
        return out

    def _gather(self, futures, what: str, can_rescatter: bool = False) -> list:
        try:
            return self._client.gather(futures)
        except (TaskError, TimeLimitError):
            raise
        except Exception as exc:
            if cluster_lost(self._client, exc):   # no resubmission cures a dead scheduler
                self._lost = True
                raise lost_cluster_error(self._client, exc, f"evaluating the {what}") from None
            if can_rescatter and lost_inputs(exc):
                self._client.cancel(futures)
                raise _InputsLost() from exc
            raise TaskError(f"evaluating the {what} on Dask failed: "
                            f"{type(exc).__name__}: {exc}", "experiments") from exc
        except BaseException as exc:
            if cluster_lost(self._client, exc):
                self._lost = True
            else:
                self._client.cancel(futures)
            raise

    def map_shooting(self, problem, z, jac: bool) -> list:
        """Per-experiment rows of a multiple-shooting problem built on this objective,
        computed on the workers (see :meth:`ShootingObjective.experiment`)."""
        kind = "shooting-jacobian" if jac else "shooting-residuals"
        return self._evaluate((kind, *problem.spec()), z)

    def noise_statistics(self, x):
        ssr, cnt = np.zeros(len(self.noise_groups)), np.zeros(len(self.noise_groups))
        for a, c in self._evaluate("sigma-stats", x):
            ssr += a
            cnt += c
        return ssr, cnt

    def compute_system(self, x):
        """``(r, R[:, :p], R[:, p])`` with ``R`` the triangular factor of ``[J r]``: each
        experiment's rows are reduced on its worker (at most ``(c+1)^2`` numbers per
        experiment travel back, ``c`` its columns) and the factors, stacked in the order of
        the experiments whatever the batches, once more here: the same bits every run."""
        p = self.space.size
        parts = self._evaluate("system", x)
        rs = [r for r, _ in parts]
        blocks = []
        for i, (_, Rc) in enumerate(parts):
            block = np.zeros((Rc.shape[0], p + 1))
            block[:, self.experiment_columns(i)] = Rc[:, :-1]
            block[:, p] = Rc[:, -1]
            blocks.append(block)
        reg = self.regularization(x)
        rs.append(reg)
        blocks.append(np.column_stack([self.regularization_jacobian(x), reg]))
        R = np.linalg.qr(np.vstack(blocks), mode="r")
        return np.concatenate(rs), R[:, :p], R[:, p]

    def compute_residuals(self, x):
        parts = self._evaluate("residuals", x)
        parts.append(self.regularization(x))
        return np.concatenate(parts)

    def compute_jacobian(self, x):
        sp_ = self.space
        parts = self._evaluate("jacobian", x)
        n_rows = sum(r.size for r, _ in parts) + self.n_reg
        J = np.zeros((n_rows, sp_.size))
        rs, row = [], 0
        for i, (r, Jc) in enumerate(parts):
            J[row:row + r.size, self.experiment_columns(i)] = Jc
            rs.append(r)
            row += r.size
        rs.append(self.regularization(x))
        J[row:] = self.regularization_jacobian(x)
        return np.concatenate(rs), J

    def compute_cost_and_grad(self, x):
        sp_ = self.space
        total, g = 0.0, np.zeros(sp_.size)
        for v, gi in self._evaluate("cost_and_grad", x):
            total += v
            g += gi
        if self.n_reg:
            v, gw = self.weight_penalty(x[sp_.is_weight])
            total += v
            g[sp_.is_weight] += gw * sp_.dphysical(x)[sp_.is_weight]
        return float(total), g
