"""A fit's objective split over Dask workers by experiment, and multi-start fits as tasks."""

from __future__ import annotations

import math
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dynlearn.distributed.dask import (
    _RESCATTERS,
    Parallel,
    TaskError,
    _cached,
    _forget_everywhere,
    _lost_inputs,
    _resolve,
    _run_tasks,
    _scatter,
    _worker_address,
)
from dynlearn.errors import DynlearnError

__all__ = ["start_mapper"]


# --- multi-start fits (the hook used by dl.fit) ------------------------------------------------
def start_mapper(client) -> Callable:
    """The ``map``-like function :func:`dynlearn.fit` runs its starts with.

    ``client`` is ``None`` (the enclosing :func:`parallel` context, else builtin ``map``), a
    Dask client, a :class:`Parallel`, or any ``map``-like callable (used as is).
    """
    if client is not None and callable(client) and not hasattr(client, "submit"):
        return client
    par = _resolve(client)
    if par is None:
        return map
    return lambda f, specs: _map_starts(par, f, list(specs))


def _map_starts(par: Parallel, f: Callable, specs: list) -> list:
    if not specs:
        return []
    settings = specs[0]["settings"]
    n_exp = len(settings["bound"])
    over = par.over
    if over == "auto":
        over = "starts" if len(specs) > 1 else "experiments"
    if over == "experiments":
        if n_exp < 2:       # nothing to split: one experiment evaluates fastest in-process
            return [f(s) for s in specs]
        out = []
        for s in specs:
            made: list = []

            def make(made=made, **kw):
                made.append(_FannedObjective(par, **kw))
                return made[-1]
            try:
                out.append(f({**s, "make_objective": make}))
            finally:
                for obj in made:
                    obj.close()
        return out
    if any(s["settings"] is not settings for s in specs):  # pragma: no cover - fit shares one
        raise DynlearnError("internal: the starts of a fit must share their settings")
    light = [{k: v for k, v in s.items() if k != "settings"} | {"progress": False}
             for s in specs]
    best = [math.inf]

    def show(bar, outcome):
        best[0] = min(best[0], outcome.cost)
        bar.set_postfix(loss=f"{best[0]:.6g}", refresh=False)
    return _run_tasks(par, _start_task, [(f, s) for s in light],
                      [f"start {s['start']}" for s in specs], {"settings": settings},
                      progress=any(s.get("progress") for s in specs), desc="starts",
                      on_result=show)


def _start_task(item, settings):
    f, spec = item
    return f({**spec, "settings": settings})


# --- experiments of one fit --------------------------------------------------------------------
def _batches(n: int, batch_size: int | None, n_threads: int) -> list[tuple[int, ...]]:
    """Contiguous, near-equal batches of ``range(n)``."""
    n_tasks = min(n, n_threads) if batch_size is None else math.ceil(n / batch_size)
    return [tuple(int(i) for i in b) for b in np.array_split(np.arange(n), max(1, n_tasks))
            if b.size]


def _balanced_batches(costs: np.ndarray, n_tasks: int) -> list[tuple[int, ...]]:
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


class _SubSpace:
    """A :class:`~dynlearn.parameters.ParameterSpace` seen by one experiment: the same ``x``,
    only that experiment's initial states."""

    def __init__(self, space, i: int):
        self._space, self._i = space, i
        self.y0_index = [space.y0_index[i]]

    def unpack(self, x):
        theta, y0s = self._space.unpack(x)
        return theta, [y0s[self._i]]

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_space", "_i"):  # e.g. while unpickling
            raise AttributeError(name)
        return getattr(self._space, name)


def _experiment_view(obj, i: int):
    """The objective restricted to experiment ``i``, without the L2 term.

    Relies on FitObjective keeping per-experiment lists ``bound``, ``known`` and ``scales``
    and its L2 size in ``n_reg``; tests/test_parallel.py compares every evaluation with the
    serial one, so a change there shows up at once.
    """
    import copy
    view = copy.copy(obj)
    view.bound, view.known = [obj.bound[i]], [obj.known[i]]
    view.space = _SubSpace(obj.space, i)
    view.n_reg = 0
    view.tracker = None
    view.sigma_hat = np.array(obj.sigma_hat, dtype=float)
    view._refresh_scales()
    return view


@dataclass
class _RejectedAt:
    message: str


class _CacheMiss:
    """The worker has no cached objective for the token: resend the objective."""


class _InputsLost(Exception):
    """The scattered objective died with a worker: scatter it again (see _lost_inputs)."""


def _experiment_task(source, token: str, batch: tuple[int, ...], what: str, x, sigma_hat):
    """Evaluate ``what`` for the experiments in ``batch`` (runs on a worker).

    ``source`` is the scattered objective, or just its ``token`` once this worker is known
    to hold it in its cache (no transfer at all then). The cached objective keeps its
    compiled model and its per-experiment views across tasks.

    Returns ``(worker address, [per-experiment results], [per-experiment seconds], the
    batch's triangular factor for "system" else None)``, or a :class:`_RejectedAt` when a
    trial point cannot be solved, or a :class:`_CacheMiss`.
    """
    from dynlearn.objective.objective import Rejected
    entry = _cached(token, None if isinstance(source, str) else source)
    if entry is None:
        return _CacheMiss()
    obj, views = entry["obj"], entry["views"]
    out, seconds = [], []
    shooting = _shooting_problem(entry, what[1:], sigma_hat) if isinstance(what, tuple) \
        else None
    # an experiment's first evaluation here carries one-off work (compiling the model,
    # building its view): reported as NaN, not as the experiment's cost
    timed = entry.setdefault("timed", set())
    family = "view" if shooting is None else "shooting"
    for i in batch:
        t0 = time.perf_counter()
        if shooting is None:
            view = views.get(i)
            if view is None:
                view = views[i] = _experiment_view(obj, i)
            if not np.array_equal(view.sigma_hat, sigma_hat):
                view.set_sigma(np.array(sigma_hat, dtype=float))
        try:
            if shooting is not None:
                out.append(shooting.experiment(i, x, what[0] == "shooting-jacobian"))
            elif what == "residuals":
                out.append(view._residuals(x))
            elif what == "sigma-stats":
                out.append(view._sigma_stats(x))
            elif what in ("jacobian", "system"):
                r, J = view._jacobian(x)
                cols = _jacobian_columns(obj.space, i)
                out.append((r, J[:, cols]))
            else:
                out.append(view._cost_and_grad(x))
        except Rejected as exc:   # a failed solve rejects the trial point; not an error
            return _RejectedAt(str(exc))
        except Exception as exc:
            worker = _worker_address()
            name = obj.bound[i].name
            label = what if isinstance(what, str) else what[0].replace("-", " ")
            raise TaskError(f"experiment '{name}' failed on worker {worker or '?'} while "
                            f"computing the {label}: {type(exc).__name__}: {exc}",
                            f"experiment '{name}'", worker, traceback.format_exc()) from None
        seconds.append(time.perf_counter() - t0 if (family, i) in timed else math.nan)
        timed.add((family, i))
    if what == "system":     # the batch's rows of [J r], reduced to their triangular factor
        return _worker_address(), [r for r, _ in out], seconds, _triangular(obj.space, batch,
                                                                            out)
    return _worker_address(), out, seconds, None


def _triangular(space, batch, parts) -> np.ndarray:
    """``R`` of a QR decomposition of the stacked rows ``[J_i r_i]`` of some experiments.

    ``R^T R`` is their ``[J r]^T [J r]``: all a Gauss-Newton-type step needs of them, in
    ``(p + 1)^2`` numbers instead of ``n_rows (p + 1)`` (tall-and-skinny QR: the factors of
    several blocks stacked and factored again give the factor of the whole).
    """
    p = space.size
    block = np.zeros((sum(r.size for r, _ in parts), p + 1))
    row = 0
    for i, (r, Jc) in zip(batch, parts):
        block[row:row + r.size, _jacobian_columns(space, i)] = Jc
        block[row:row + r.size, p] = r
        row += r.size
    return np.linalg.qr(block, mode="r")


def _shooting_problem(entry: dict, spec: tuple, sigma_hat):
    """The multiple-shooting problem around a worker's cached objective (kept with it;
    weight, state scales and noise levels as the client has them now)."""
    from dynlearn.objective.shooting import ShootingObjective
    *layout, weight, scale = spec
    obj = entry["obj"]
    if not np.array_equal(obj.sigma_hat, sigma_hat):
        obj.set_sigma(np.array(sigma_hat, dtype=float))
    key = ("shooting", *layout)
    ms = entry["views"].get(key)
    if ms is None:
        segments, points, max_segments, max_states = layout
        ms = entry["views"][key] = ShootingObjective(obj, segments, weight, points,
                                                     max_segments, max_states)
    ms.weight, ms.scale = weight, np.asarray(scale, dtype=float)
    return ms


def _jacobian_columns(space, i: int) -> np.ndarray:
    """Columns of ``x`` an experiment's residuals depend on: theta and its own initial
    states (the rest of its Jacobian block is zero and need not travel)."""
    return np.r_[np.arange(space.n_theta), np.array([k for _, k in space.y0_index[i]],
                                                    dtype=int)].astype(int)


def _fanned_objective_class():
    from dynlearn.objective.objective import FitObjective, Rejected

    class FannedObjective(FitObjective):
        """A :class:`~dynlearn.objective.FitObjective` whose residuals, Jacobian and
        gradient are evaluated on Dask, one task per batch of experiments."""

        def __init__(self, par: Parallel, **settings):
            super().__init__(**settings)
            self._client = par.client
            self._retries = par.retries
            self._shipped = FitObjective(**settings)
            self._remote = _scatter(par.client, self._shipped)
            self._key = str(self._remote.key)   # the cache token, kept when re-sent
            self._holders: set[str] = set()   # workers known to cache the objective
            self._batches = _batches(len(self.bound), par.batch_size, par.n_threads)
            # without a batch size, batches are re-cut from the measured cost of each
            # experiment (solves of different experiments can differ several-fold)
            self._balance = par.batch_size is None and len(self._batches) > 1
            self._seconds = np.full(len(self.bound), np.nan)
            self._token = uuid.uuid4().hex[:10]
            self._calls = 0
            self._slots_cache: list[str] = []
            self._slots_time = -math.inf

        def close(self):
            if self._remote is not None:
                self._client.cancel([self._remote])
                _forget_everywhere(self._client, [self._key])
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
                self._batches = _balanced_batches(self._seconds, len(self._batches))
            return self._batches

        def _evaluate(self, what: str, x) -> list:
            """Per-experiment results of ``what`` at ``x``, in the experiments' order."""
            x = np.asarray(x, dtype=float)
            label = what if isinstance(what, str) else what[0]
            slots = self._slots()
            batches = self._plan()
            todo = list(range(len(batches)))
            parts: list = [None] * len(todo)
            rescatters = 0
            for attempt in range(2 + _RESCATTERS):
                futures = []
                for k in todo:
                    w = slots[k % len(slots)] if slots else None
                    # a worker that has the objective cached gets only its token
                    src = self._key if attempt == 0 and w in self._holders else self._remote
                    self._calls += 1
                    where = {} if w is None else {"workers": [w], "allow_other_workers": True}
                    futures.append(self._client.submit(
                        _experiment_task, src, self._key, batches[k], what, x,
                        self.sigma_hat, key=f"dynlearn-{label}-{self._token}-{self._calls}",
                        retries=self._retries, pure=False, **where))
                try:
                    got = self._gather(futures, label, can_rescatter=rescatters < _RESCATTERS)
                except _InputsLost:
                    rescatters += 1
                    old, self._remote = self._remote, _scatter(self._client, self._shipped)
                    self._client.cancel([old])
                    continue
                for k, p in zip(todo, got):
                    parts[k] = p
                todo = [k for k in todo if isinstance(parts[k], _CacheMiss)]
                if not todo:
                    break
            out: list = [None] * len(self.bound)
            self._reduced = []   # per batch, the triangular factor a "system" round returns
            for batch, p in zip(batches, parts):
                if isinstance(p, _RejectedAt):
                    raise Rejected(p.message)
                worker, values, seconds, reduced = p
                self._reduced.append(reduced)
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
            except TaskError:
                raise
            except Exception as exc:
                if can_rescatter and _lost_inputs(exc):
                    self._client.cancel(futures)
                    raise _InputsLost() from exc
                raise TaskError(f"evaluating the {what} on Dask failed: "
                                f"{type(exc).__name__}: {exc}", "experiments") from exc
            except BaseException:
                self._client.cancel(futures)
                raise

        def map_shooting(self, ms, z, jac: bool) -> list:
            """Per-experiment rows of a multiple-shooting problem built on this objective
            (see :meth:`dynlearn.optimizers.ShootingObjective.experiment`)."""
            kind = "shooting-jacobian" if jac else "shooting-residuals"
            return self._evaluate((kind, *ms.spec()), z)

        def _sigma_stats(self, x):
            ssr, cnt = np.zeros(len(self.obs)), np.zeros(len(self.obs))
            for a, c in self._evaluate("sigma-stats", x):
                ssr += a
                cnt += c
            return ssr, cnt

        def _system(self, x):
            """``(r, R[:, :p], R[:, p])`` with ``R`` the triangular factor of ``[J r]``: each
            batch's rows are reduced on its worker (only ``(p+1)^2`` numbers per batch
            travel back) and the stacked factors once more here."""
            p = self.space.size
            rs = self._evaluate("system", x)
            reg = self._reg(x)
            rs.append(reg)
            blocks = [*self._reduced, np.column_stack([self._reg_jacobian(x), reg])]
            R = np.linalg.qr(np.vstack(blocks), mode="r")
            return np.concatenate(rs), R[:, :p], R[:, p]

        def _residuals(self, x):
            parts = self._evaluate("residuals", x)
            parts.append(self._reg(x))
            return np.concatenate(parts)

        def _jacobian(self, x):
            sp_ = self.space
            parts = self._evaluate("jacobian", x)
            n_rows = sum(r.size for r, _ in parts) + self.n_reg
            J = np.zeros((n_rows, sp_.size))
            rs, row = [], 0
            for i, (r, Jc) in enumerate(parts):
                J[row:row + r.size, _jacobian_columns(sp_, i)] = Jc
                rs.append(r)
                row += r.size
            rs.append(self._reg(x))
            J[row:] = self._reg_jacobian(x)
            return np.concatenate(rs), J

        def _cost_and_grad(self, x):
            sp_ = self.space
            total, g = 0.0, np.zeros(sp_.size)
            for v, gi in self._evaluate("cost_and_grad", x):
                total += v
                g += gi
            if self.n_reg:
                w = x[sp_.is_weight]
                total += self.l2 * float(w @ w)
                g[sp_.is_weight] += 2.0 * self.l2 * w * sp_.dphysical(x)[sp_.is_weight]
            return float(total), g

    return FannedObjective


_FANNED = None


def _FannedObjective(par: Parallel, **settings):
    # the class derives from FitObjective; built on first use so that importing this module
    # stays light (objective.py imports the solvers)
    global _FANNED
    if _FANNED is None:
        _FANNED = _fanned_objective_class()
    return _FANNED(par, **settings)
