"""Scale-out on Dask distributed: experiments, multi-start fits, bootstrap and ensembles.

The same code runs on a laptop and on a cluster: pass a ``dask.distributed.Client`` (or
open a :func:`parallel` context) and dynlearn sends its independent pieces of work to the
workers; without one, everything runs in-process and serially and Dask is never imported.

How it works
------------
Work is fanned out at two levels.

* **Independent fits**: the starts of a multi-start fit (``dl.fit(..., n_starts=K,
  client=client)``), bootstrap refits (:func:`bootstrap`) and ensemble members
  (:func:`ensemble`) run one per task. What they share (model, bound data, fit settings) is
  scattered to every worker once (``client.scatter(..., broadcast=True)``); each task gets it
  by reference, so only a few numbers (a start point, a seed, resampling indices) travel per
  task. Results are collected with ``as_completed`` as they finish.
* **Experiments inside one fit** (``n_starts=1``, several experiments): the fit's objective
  is scattered once; every residual, Jacobian or gradient evaluation then sends ``x`` to one
  task per *batch* of experiments and sums (or stacks) what comes back. Batching keeps the
  per-task overhead (a few ms to a few tens of ms per round trip) small against the solves.
  Batches are re-cut after each round from the measured cost of every experiment. Only the
  non-zero columns of each experiment's Jacobian block travel back, and for a
  Levenberg-Marquardt step not even those: each batch's rows ``[J r]`` are reduced to their
  triangular QR factor on the worker (``system``). Multiple-shooting segments and the
  Gaussian loss's noise estimate are split the same way.

The model travels without its compiled functions (:meth:`HybridModel.__getstate__`); a worker
compiles it on first use and keeps it with the scattered object, so it is compiled once per
worker, not once per task.

Results are those of the serial run: residuals and Jacobians are stacked in the serial order
(bit-identical); gradients and losses are sums whose order of summation differs (equal to
rounding), and so is the QR-reduced system (a Levenberg-Marquardt fit ends at the same
point to the optimizer's tolerance); independent fits are computed by the same code from
the same inputs and seeds.

Faults. When a worker dies, the scheduler re-runs its tasks elsewhere (up to
``distributed.scheduler.allowed-failures`` times); scattered inputs survive on the other
workers (they were broadcast), and where Dask's memory manager had left the only copy on
the dead worker, the cancelled tasks are sent again with a fresh copy. Tasks that raise
are retried ``retries`` times (for transient failures such as a lost connection), then the
error is raised on the client as a :class:`TaskError` naming the experiment, start,
replicate or member and the worker. A trial point where the ODE solver fails is not an
error: it is rejected, exactly as in a serial fit.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DataError, DynlearnError, OptionError

__all__ = [
    "Bootstrap",
    "Ensemble",
    "Parallel",
    "TaskError",
    "bootstrap",
    "ensemble",
    "local_client",
    "parallel",
]

OVER = ("auto", "starts", "experiments")
_CURRENT: contextvars.ContextVar[Parallel | None] = contextvars.ContextVar("dynlearn_parallel",
                                                                          default=None)


class TaskError(DynlearnError):
    """A task failed on a Dask worker.

    Attributes
    ----------
    where : str
        What failed, e.g. ``"experiment 'run3'"``, ``"start 2"``, ``"bootstrap replicate 17"``.
    worker : str
        Address of the worker ("" when unknown).
    remote_traceback : str
        The traceback on the worker.
    """

    def __init__(self, message: str, where: str = "", worker: str = "",
                 remote_traceback: str = ""):
        super().__init__(message)
        self.where, self.worker, self.remote_traceback = where, worker, remote_traceback

    def __reduce__(self):  # keep the attributes when the error travels back from a worker
        return (type(self), (str(self), self.where, self.worker, self.remote_traceback))


# --- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Parallel:
    """How dynlearn uses a Dask client; pass it as ``client=`` or open :func:`parallel`.

    Parameters
    ----------
    client : dask.distributed.Client
    over : {"auto", "starts", "experiments"}
        What a fit fans out. ``"starts"``: one task per start of a multi-start fit (each start
        evaluates its experiments serially). ``"experiments"``: every evaluation of the
        objective is split over batches of experiments (starts run one after another).
        ``"auto"`` (default): starts when ``n_starts > 1``, else experiments.
    batch_size : int, optional
        Experiments per task when fanning out experiments. Default: split the experiments
        into as many batches as the cluster has worker threads (fewest round trips; pass a
        smaller size when experiments differ much in cost, to balance the load).
    retries : int
        How many times a task that raised is re-run before its error is reported (default
        1). Tasks lost with a dead worker are re-run by the scheduler regardless.
    """

    client: Any
    over: str = "auto"
    batch_size: int | None = None
    retries: int = 1

    def __post_init__(self):
        if self.over not in OVER:
            raise OptionError(f"over={self.over!r}: use one of {list(OVER)}")
        if self.batch_size is not None and (not isinstance(self.batch_size, (int, np.integer))
                                            or self.batch_size < 1):
            raise OptionError(f"batch_size must be a positive integer or None, got "
                              f"{self.batch_size!r}")
        if not isinstance(self.retries, (int, np.integer)) or self.retries < 0:
            raise OptionError(f"retries must be a non-negative integer, got {self.retries!r}")
        _check_client(self.client)

    @property
    def n_threads(self) -> int:
        """Worker threads in the cluster now (at least 1)."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a client that cannot tell: assume one
            return 1


def _check_client(client) -> None:
    if not all(hasattr(client, a) for a in ("submit", "gather", "scatter")):
        raise OptionError(f"client must be a dask.distributed.Client (or dl.Parallel(client)), "
                          f"got {type(client).__name__}; create one with "
                          "dynlearn.parallel.local_client(n_workers) or "
                          "Client('tcp://scheduler:8786')")
    if getattr(client, "asynchronous", False):
        raise OptionError("client is asynchronous; dynlearn needs a synchronous Client")


def _resolve(client) -> Parallel | None:
    """The :class:`Parallel` configuration for a ``client=`` argument (``None``: the one of
    the enclosing :func:`parallel` context, if any)."""
    if client is None:
        return _CURRENT.get()
    if isinstance(client, Parallel):
        return client
    return Parallel(client)


def local_client(n_workers: int = 2, threads_per_worker: int = 1, **cluster_kwargs):
    """A client of a new local cluster on this machine (loopback only).

    The cluster runs ``n_workers`` worker processes with ``threads_per_worker`` threads each
    and listens on 127.0.0.1 only; closing the client closes the cluster. Workers keep freed
    memory up to 64 MB for reuse instead of Dask's eager trimming (faster Jacobians, see
    ``_WORKER_MALLOC``).

    Parameters
    ----------
    n_workers : int
        Worker processes; the number of cores is the useful maximum (dynlearn's work is
        CPU-bound Python, so processes, not threads, give parallelism).
    threads_per_worker : int
    **cluster_kwargs
        Passed to ``dask.distributed.LocalCluster`` (e.g. ``memory_limit="2GiB"``).

    Returns
    -------
    dask.distributed.Client

    Examples
    --------
    >>> from dynlearn.parallel import local_client          # doctest: +SKIP
    >>> with local_client(2) as client:                     # doctest: +SKIP
    ...     result = dl.fit(model, data, n_starts=8, seed=0, client=client)
    """
    if not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise OptionError(f"n_workers must be a positive integer, got {n_workers!r}")
    try:
        from distributed import Client
    except ImportError:
        raise OptionError("running on Dask needs dask.distributed: pip install "
                          "'dynlearn[dist]'") from None
    import dask
    kw = dict(n_workers=int(n_workers), threads_per_worker=int(threads_per_worker),
              processes=True, host="127.0.0.1", dashboard_address=None)
    kw.update(cluster_kwargs)
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.update(_WORKER_MALLOC)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        # without an address, Client starts a LocalCluster that it owns and closes with it
        return Client(**kw)


# glibc settings of local workers. Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to
# hand memory back to the OS), which also turns off glibc's adaptive mmap threshold: every
# array over 128 KiB is then mmap-ed and page-faulted afresh. A residual Jacobian allocates
# many such temporaries; measured on the benchmark problem (16 experiments): 0.37 s with
# Dask's setting, 0.28 s with glibc's defaults, 0.24 s with these (the memory kept is a few
# tens of MB per worker).
_WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(64 * 2**20),
                  "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


@contextlib.contextmanager
def parallel(client=None, *, workers: int | None = None, over: str = "auto",
             batch_size: int | None = None, retries: int = 1) -> Iterator[Parallel]:
    """Run dynlearn's fits inside the block on Dask.

    ``dl.fit``, :func:`bootstrap` and :func:`ensemble` called without ``client=`` inside the
    block use this client.

    Parameters
    ----------
    client : dask.distributed.Client, optional
        An existing client (left open at the end of the block).
    workers : int, optional
        Without ``client``: start a local cluster with this many worker processes for the
        block and close it afterwards.
    over, batch_size, retries
        See :class:`Parallel`.

    Yields
    ------
    Parallel

    Examples
    --------
    >>> with dl.parallel(workers=2):                              # doctest: +SKIP
    ...     result = dl.fit(model, data, n_starts=8, seed=0)
    """
    own = None
    if client is None:
        if workers is None:
            raise OptionError("dl.parallel() needs a client (a dask.distributed.Client) or "
                              "workers=N to start a local cluster")
        client = own = local_client(workers)
    try:
        par = client if isinstance(client, Parallel) else Parallel(client, over, batch_size,
                                                                  retries)
        token = _CURRENT.set(par)
        try:
            yield par
        finally:
            _CURRENT.reset(token)
    finally:
        if own is not None:
            own.close()


# --- running tasks ---------------------------------------------------------------------------
def _worker_address() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except Exception:  # noqa: BLE001 - not on a worker
        return ""


# --- the per-worker cache ------------------------------------------------------------------
# What a fit sends to the workers (its objective, or the model and data of bootstrap and
# ensemble fits) is also kept in each worker process under the key of its scattered copy,
# until the fit ends (_forget) or 16 newer entries push it out. Why not rely on the scattered
# copies alone: Dask's active memory manager drops the extra replicas of scattered data that
# no task is waiting for (ReduceReplicas, every 2 s), so between two evaluations a worker
# loses its copy and fetches it again, as a new object whose model would be compiled again.
_CACHE: OrderedDict[str, dict] = OrderedDict()
_CACHE_SIZE = 16
_CACHE_LOCK = threading.Lock()


def _cached(token: str, obj=None) -> dict | None:
    """The cache entry ``{"obj": ..., "views": {...}}`` for ``token``; created from ``obj``
    when missing (``None`` when missing and no ``obj`` is given)."""
    with _CACHE_LOCK:
        entry = _CACHE.get(token)
        if entry is None and obj is not None:
            entry = _CACHE[token] = {"obj": obj, "views": {}}
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        elif entry is not None:
            _CACHE.move_to_end(token)
        return entry


def _forget(tokens: Sequence[str]) -> None:
    with _CACHE_LOCK:
        for t in tokens:
            _CACHE.pop(t, None)


def _forget_everywhere(client, tokens: Sequence[str]) -> None:
    try:
        client.run(_forget, list(tokens))
    except Exception:  # noqa: BLE001 - a worker gone meanwhile has nothing to forget
        pass


def _task(fn: Callable, label: str, item, _tokens: Mapping[str, str] | None = None, **shared):
    """Run ``fn(item, **shared)`` on a worker; an error names ``label`` and the worker.

    Shared inputs are replaced by this worker's cached copies (see ``_cached``).
    """
    try:
        if _tokens:
            shared = {k: _cached(_tokens[k], v)["obj"] for k, v in shared.items()}
        return fn(item, **shared)
    except Exception as exc:
        worker = _worker_address()
        raise TaskError(f"{label} failed on worker {worker or '?'}: {type(exc).__name__}: {exc}",
                        label, worker, traceback.format_exc()) from None


def _as_task_error(exc: BaseException, label: str) -> TaskError:
    if isinstance(exc, TaskError):
        return exc
    return TaskError(f"{label} failed: {type(exc).__name__}: {exc}", label)


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(text)


def _progress_bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="task", leave=False, dynamic_ncols=True)


def _run_tasks(par: Parallel | None, fn: Callable, items: Sequence, labels: Sequence[str],
               shared: Mapping[str, Any], progress: bool = False, desc: str = "tasks",
               on_result: Callable | None = None) -> list:
    """``[fn(item, **shared) for item in items]``: serially without ``par``, else one Dask
    task per item, with ``shared`` scattered to every worker once. Results in item order."""
    bar = _progress_bar(progress, len(items), desc)
    try:
        if par is None:
            out = []
            for item, label in zip(items, labels):
                try:
                    out.append(fn(item, **shared))
                except Exception as exc:
                    _note(exc, f"(in {label})")
                    raise
                if bar is not None:
                    bar.update(1)
                    if on_result is not None:
                        on_result(bar, out[-1])
            return out
        return _run_on_dask(par, fn, items, labels, shared, bar, desc, on_result)
    finally:
        if bar is not None:
            bar.close()


def _scatter(client, obj):
    """Send ``obj`` to every worker once; its future. (Wrapped in a list: ``scatter`` would
    split a dict or list into one future per element.)"""
    return client.scatter([obj], broadcast=True, hash=False)[0]


def _lost_inputs(exc: BaseException | None) -> bool:
    """Whether a task was cancelled by the cluster, as when its scattered inputs died.

    Scattered data is broadcast, but Dask's active memory manager trims the replicas no task
    is waiting for; when the worker holding the last one dies, the tasks that need it are
    cancelled ("lost dependencies", or "already forgotten" when the client asks after the
    scheduler has dropped them) rather than re-run. The cure is to scatter again and
    resubmit (a bounded number of times: a cancellation for any other reason then surfaces).
    """
    from concurrent.futures import CancelledError
    return isinstance(exc, CancelledError)


_RESCATTERS = 3   # times the inputs of one piece of work are re-sent after being lost


def _run_on_dask(par, fn, items, labels, shared, bar, desc, on_result) -> list:
    from distributed import as_completed
    client = par.client
    token = uuid.uuid4().hex[:10]
    remote = {k: _scatter(client, v) for k, v in shared.items()}
    # the cache token stays that of the first scatter, also when the inputs are re-sent
    tokens = {k: str(f.key) for k, f in remote.items()}
    scattered = list(remote.values())      # every copy sent, released at the end only:
    generation = 0                         # cancelling one would cancel the tasks using it
    used = [0] * len(items)                # the generation of inputs each task was sent
    sent = [0]

    def submit(i):
        sent[0] += 1
        used[i] = generation
        return client.submit(_task, fn, labels[i], items[i], _tokens=tokens,
                             key=f"dynlearn-{desc}-{token}-{i}-{sent[0]}",
                             retries=par.retries, pure=False, **remote)
    futures = [submit(i) for i in range(len(items))]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    try:
        pending = as_completed(futures)
        for fut in pending:
            i = index[fut.key]
            if futures[i] is not fut:       # superseded by a resubmission
                continue
            if fut.status != "finished":
                exc = fut.exception() if fut.status == "error" else _cancel_reason(fut)
                if not _lost_inputs(exc) or (used[i] == generation
                                             and generation >= _RESCATTERS):
                    raise _as_task_error(exc, labels[i])
                if used[i] == generation:   # the current copy is lost: send another
                    generation += 1
                    remote = {k: _scatter(client, v) for k, v in shared.items()}
                    scattered += remote.values()
                futures[i] = submit(i)      # (tasks sent an older copy come here in turn)
                index[futures[i].key] = i
                pending.add(futures[i])
                continue
            results[i] = fut.result()
            fut.release()
            if bar is not None:
                bar.update(1)
                if on_result is not None:
                    on_result(bar, results[i])
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        client.cancel(scattered)
        _forget_everywhere(client, list(tokens.values()))
    return results


def _cancel_reason(fut) -> BaseException:
    """The exception a cancelled future would raise (it carries the reason)."""
    try:
        fut.result()        # returns at once: the future is done (a timeout here is racy)
    except BaseException as exc:  # noqa: BLE001 - the reason is the point
        return exc
    return RuntimeError(f"task {fut.key} was cancelled")  # pragma: no cover


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
    from .objective import Rejected
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
    from .optimizers import ShootingObjective
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
    from .objective import FitObjective, Rejected

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


# --- bootstrap ---------------------------------------------------------------------------------
_BASE_ONLY = ("n_starts", "callback", "checkpoint", "checkpoint_interval", "resume", "throw")


@dataclass
class Bootstrap:
    """Bootstrap refits of a model: the spread of the estimates.

    Attributes
    ----------
    fit : FitResult
        The fit to the original data (the replicates start from it).
    estimates : pandas.DataFrame
        One row per replicate (index ``replicate``): ``loss``, ``success``, ``message``,
        ``nfev``, then the value of every fitted physical parameter (and initial state).
    thetas : ndarray, shape (n, n_theta)
        Every replicate's model parameters and network weights (``model.with_theta``).
    kind : str
        ``"experiments"`` or ``"residuals"``.
    """

    fit: Any
    estimates: Any
    thetas: np.ndarray
    kind: str
    seed: int | None = None

    @property
    def names(self) -> list[str]:
        skip = {"loss", "success", "message", "nfev"}
        return [c for c in self.estimates.columns if c not in skip]

    def summary(self, level: float = 0.95, successful_only: bool = True):
        """Per parameter: the fitted value, the bootstrap mean and standard deviation, and
        the percentile interval at ``level``.

        Returns
        -------
        pandas.DataFrame
            Index: parameter; columns ``value``, ``mean``, ``std``, ``ci_lower``,
            ``ci_upper``, ``n`` (replicates used).
        """
        import pandas as pd
        if not 0 < level < 1:
            raise OptionError(f"level must be between 0 and 1, got {level}")
        est = self.estimates
        if successful_only:
            est = est[est["success"] & np.isfinite(est["loss"].astype(float))]
        rows = {}
        q = [(1 - level) / 2, (1 + level) / 2]
        for name in self.names:
            v = est[name].astype(float).dropna().to_numpy()
            value = (float(self.fit.params.loc[name, "value"]) if name in self.fit.params.index
                     else np.nan)
            if v.size:
                lo, hi = np.quantile(v, q)
                rows[name] = dict(value=value, mean=v.mean(), std=v.std(ddof=1) if v.size > 1
                                  else np.nan, ci_lower=lo, ci_upper=hi, n=v.size)
            else:
                rows[name] = dict(value=value, mean=np.nan, std=np.nan, ci_lower=np.nan,
                                  ci_upper=np.nan, n=0)
        return pd.DataFrame.from_dict(rows, orient="index")

    def __repr__(self) -> str:
        ok = int(self.estimates["success"].sum())
        return (f"Bootstrap(kind={self.kind!r}, {len(self.estimates)} replicates, {ok} "
                f"converged)")


@dataclass
class _Replicate:
    index: int
    loss: float
    success: bool
    message: str
    nfev: int
    values: dict
    theta: np.ndarray


class _ExperimentResampler:
    """Draws experiments with replacement (repeats renamed ``name#2``, ``name#3``, ...)."""

    kind = "experiments"

    def __init__(self, dataset):
        self.dataset = dataset

    def draw(self, rng) -> np.ndarray:
        n = len(self.dataset)
        return rng.integers(0, n, size=n)

    def make(self, idx):
        from dataclasses import replace

        from .data import Dataset
        seen: dict[str, int] = {}
        exps = []
        for i in idx:
            e = self.dataset[int(i)]
            seen[e.name] = seen.get(e.name, 0) + 1
            name = e.name if seen[e.name] == 1 else f"{e.name}#{seen[e.name]}"
            exps.append(replace(e, name=name, columns=dict(e.columns)))
        return Dataset(exps, self.dataset.time_name)

    def original_name(self, name: str) -> str:
        return name.split("#", 1)[0]


class _ResidualResampler:
    """Adds resampled residuals of the fit to its predictions.

    Residuals are taken on the scale the loss sees them (``(g(data) - g(fit)) * scale``,
    ``g = log`` for ``loss="log"``), pooled per observable, drawn with replacement and
    mapped back through each point's own scale, so noise levels and weights are respected.
    """

    kind = "residuals"

    def __init__(self, result):
        obj = result.objective()
        frame = result.residuals()
        self.dataset = result.data
        self.log = obj.loss == "log"
        self.obs = list(obj.obs)
        self.fitted, self.scales, self.masks = [], [], []
        pos = 0
        pools: dict[int, list] = {k: [] for k in range(len(self.obs))}
        self.slots = []   # per experiment: (row, observable, position in the pool)
        for b, sc in zip(obj.bound, obj.scales):
            rows = np.argwhere(b.mask)
            H = np.full(b.Y.shape, np.nan)
            H[b.mask] = frame["fitted"].to_numpy()[pos:pos + len(rows)]
            scaled = frame["scaled"].to_numpy()[pos:pos + len(rows)]
            pos += len(rows)
            self.fitted.append(H)
            self.scales.append(np.asarray(sc, dtype=float))
            self.masks.append(b.mask)
            for (_, k), s in zip(rows, scaled):
                pools[int(k)].append(float(s))
        self.pools = [np.asarray(pools[k]) for k in range(len(self.obs))]

    def draw(self, rng) -> list[np.ndarray]:
        out = []
        for M in self.masks:
            draws = np.full(M.shape, np.nan)
            for k in range(len(self.obs)):
                m = M[:, k]
                if m.any():
                    draws[m, k] = self.pools[k][rng.integers(0, self.pools[k].size,
                                                             size=int(m.sum()))]
            out.append(draws)
        return out

    def make(self, draws):
        from dataclasses import replace

        from .data import Dataset
        exps = []
        for e, H, sc, M, d in zip(self.dataset, self.fitted, self.scales, self.masks, draws):
            cols = dict(e.columns)
            with np.errstate(divide="ignore", invalid="ignore"):
                step = d / sc
                new = H * np.exp(step) if self.log else H + step
            for k, o in enumerate(self.obs):
                if o in cols:
                    cols[o] = np.where(M[:, k], new[:, k], np.nan)
            exps.append(replace(e, columns=cols))
        return Dataset(exps, self.dataset.time_name)

    def original_name(self, name: str) -> str:
        return name


def _refit_task(item, model, resampler, fit_kwargs):
    from .fit import fit
    index, draw = item
    data = resampler.make(draw)
    kw = dict(fit_kwargs)
    y0 = kw.get("y0")
    if isinstance(y0, Mapping) and y0 and set(y0) <= {e.name for e in resampler.dataset}:
        kw["y0"] = {e.name: y0[resampler.original_name(e.name)] for e in data}
    r = fit(model, data, progress=False, **kw)
    values = {name: float(v) for name, v, fixed in
              zip(r.params.index, r.params["value"], r.params["fixed"]) if not fixed}
    return _Replicate(index, float(r.loss), bool(r.success), r.message,
                      int(r.nfev + r.njev + r.ngev), values, r.model.theta0)


def _check_count(n, what: str) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise OptionError(f"{what} must be a positive integer, got {n!r}")
    return int(n)


def bootstrap(model, data, n: int = 100, *, kind: str = "auto", seed: int | None = 0,
              client=None, progress: bool = True, **fit_kwargs) -> Bootstrap:
    """Bootstrap the fit of a model: refit it to ``n`` resampled datasets.

    Every refit is an independent task: with a Dask ``client`` (or inside
    :func:`parallel`) they run on the cluster, otherwise one after another. The same
    ``seed`` gives the same replicates either way.

    Parameters
    ----------
    model : HybridModel
    data : Dataset or DataFrame
    n : int
        Number of replicates.
    kind : {"auto", "experiments", "residuals"}
        ``"experiments"``: resample whole experiments with replacement (the right choice when
        experiments are independent units: patients, batches, runs). ``"residuals"``: add
        resampled residuals of the fit to its predictions (for one or a few long
        experiments). ``"auto"``: experiments when there are at least 8, else residuals.
    seed : int or None
        Seed of the resampling (and of the random starts of the first fit).
    client : dask.distributed.Client or Parallel, optional
    progress : bool
        Progress bars for the first fit and the replicates.
    **fit_kwargs
        Passed to :func:`dynlearn.fit` (loss, y0, optimizer, sigma, l2, ...). ``n_starts``,
        ``callback``, ``checkpoint`` and ``resume`` apply to the first fit only; every refit
        starts from its optimum.

    Returns
    -------
    Bootstrap

    Notes
    -----
    The percentile intervals of :meth:`Bootstrap.summary` need no linearisation of the
    model (unlike the standard errors of a fit), at the price of ``n`` fits.

    Examples
    --------
    >>> boot = dl.bootstrap(model, data, n=200, client=client)      # doctest: +SKIP
    >>> boot.summary()                                                # doctest: +SKIP
    """
    import pandas as pd

    from .data import as_dataset
    from .fit import fit
    n = _check_count(n, "n")
    if kind not in ("auto", "experiments", "residuals"):
        raise OptionError(f"kind={kind!r}: use 'auto', 'experiments' or 'residuals'")
    dataset = as_dataset(data)
    if kind == "auto":
        kind = "experiments" if len(dataset) >= 8 else "residuals"
    if kind == "experiments" and len(dataset) < 2:
        raise DataError("kind='experiments' resamples experiments, but the data has only one; "
                        "use kind='residuals'")
    refit_kw = {k_: v for k_, v in fit_kwargs.items() if k_ not in _BASE_ONLY}
    par = _resolve(client)
    base = fit(model, dataset, seed=seed, client=par, progress=progress, **fit_kwargs)
    resampler = (_ExperimentResampler(dataset) if kind == "experiments"
                 else _ResidualResampler(base))
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    items = [(i, resampler.draw(rng)) for i, rng in enumerate(rngs)]
    reps = _run_tasks(par, _refit_task, items, [f"bootstrap replicate {i}" for i in range(n)],
                      {"model": base.model, "resampler": resampler, "fit_kwargs": refit_kw},
                      progress=progress, desc="bootstrap")
    names = [nm for nm, fixed in zip(base.params.index, base.params["fixed"]) if not fixed]
    rows = []
    for r in reps:
        row = {"replicate": r.index, "loss": r.loss, "success": r.success,
               "message": r.message, "nfev": r.nfev}
        row.update({nm: r.values.get(nm, np.nan) for nm in names})
        rows.append(row)
    estimates = pd.DataFrame(rows).set_index("replicate")
    return Bootstrap(base, estimates, np.array([r.theta for r in reps]), kind, seed)


# --- ensembles ---------------------------------------------------------------------------------
@dataclass
class Ensemble:
    """Fits of one model from differently initialised networks.

    Attributes
    ----------
    members : list of FitResult
        One fit per member, in member order.
    table : pandas.DataFrame
        One row per member (index ``member``): ``loss``, ``success``, ``nfev``, then the
        fitted physical parameters.
    """

    members: list
    table: Any
    seed: int | None = None

    @property
    def best(self):
        """The member with the lowest loss."""
        return min(self.members, key=lambda r: (not np.isfinite(r.loss), r.loss))

    def predict(self, t, experiment: str | None = None, y0=None, inputs=None,
                level: float = 0.9, successful_only: bool = True):
        """The members' predictions: mean, standard deviation and a central interval.

        Parameters
        ----------
        t, experiment, y0, inputs
            As in :meth:`FitResult.predict`.
        level : float
            Probability of the central interval across members.
        successful_only : bool
            Use only members whose fit converged (all when none did).

        Returns
        -------
        pandas.DataFrame
            The time column, then for every state and observable ``<name>_mean``,
            ``<name>_std``, ``<name>_lower`` and ``<name>_upper``.
        """
        import pandas as pd
        if not 0 < level < 1:
            raise OptionError(f"level must be between 0 and 1, got {level}")
        use = [r for r in self.members if r.success] if successful_only else list(self.members)
        use = use or list(self.members)
        frames = [r.predict(t, y0=y0, inputs=inputs, experiment=experiment, bands=False)
                  for r in use]
        tname = frames[0].columns[0]
        out = {tname: frames[0][tname].to_numpy()}
        q = [(1 - level) / 2, (1 + level) / 2]
        for c in frames[0].columns[1:]:
            A = np.stack([f[c].to_numpy() for f in frames])
            out[f"{c}_mean"] = A.mean(axis=0)
            out[f"{c}_std"] = A.std(axis=0, ddof=1) if len(A) > 1 else np.zeros(A.shape[1])
            lo, hi = np.quantile(A, q, axis=0)
            out[f"{c}_lower"], out[f"{c}_upper"] = lo, hi
        return pd.DataFrame(out)

    def __repr__(self) -> str:
        ok = sum(bool(r.success) for r in self.members)
        return f"Ensemble({len(self.members)} members, {ok} converged)"


def _redraw_weights(model, rng) -> np.ndarray:
    """The model's theta with every network's weights drawn afresh.

    MLPs are re-initialised with their own scheme (Glorot uniform, zero biases), keeping the
    root-mean-square size of the given output layer (relative to Glorot's) so that a network
    built with a small output ``scale`` (a model that starts close to its physics) gives
    members that do too. Other networks get their weights scaled by ``1 + 0.5 N(0, 1)``.
    """
    from .neural import MLP
    theta = model.theta0
    slices = model.theta_slices()
    for net in model.networks:
        w = theta[slices[net.name]]
        if isinstance(net, MLP):
            W = net.unflatten(w)[-1][0]
            n_in, n_out = W.shape
            glorot_rms = math.sqrt(6.0 / (n_in + n_out)) / math.sqrt(3.0)
            scale = min(1.0, float(np.sqrt(np.mean(W * W))) / glorot_rms)
            fresh = MLP(net.name, net.inputs, net.n_outputs, hidden=net.hidden,
                        activation=net.activation, seed=rng, scale=scale)
            theta[slices[net.name]] = fresh.weights
        else:
            theta[slices[net.name]] = w * (1 + 0.5 * rng.standard_normal(w.shape))
    return theta


def _member_task(item, model, data, fit_kwargs):
    from .fit import fit
    _, theta = item
    r = fit(model.with_theta(theta), data, progress=False, **fit_kwargs)
    obj = getattr(r, "_obj", None)
    if obj is not None:
        obj.tracker = None   # holds the progress bar and the callback: not needed any more
    return r


def ensemble(model, data, n: int = 5, *, seed: int | None = 0, client=None,
             progress: bool = True, **fit_kwargs) -> Ensemble:
    """Fit ``n`` copies of a hybrid model whose networks start from different weights.

    The spread of the members' predictions away from the data shows how much the data pin
    down the learned terms. Each member is an independent task: with a Dask ``client`` (or
    inside :func:`parallel`) they run on the cluster, otherwise one after another; the same
    ``seed`` gives the same members either way.

    Parameters
    ----------
    model : HybridModel
        Must contain at least one network. Physical parameters start from the model's
        values in every member.
    data : Dataset or DataFrame
    n : int
        Number of members.
    seed : int or None
        Seed of the weight initialisations.
    client : dask.distributed.Client or Parallel, optional
    progress : bool
    **fit_kwargs
        Passed to :func:`dynlearn.fit` for every member (loss, l2, optimizer, ...).

    Returns
    -------
    Ensemble

    Examples
    --------
    >>> ens = dl.ensemble(model, data, n=8, l2=1e-4, client=client)    # doctest: +SKIP
    >>> band = ens.predict(np.linspace(0, 10, 200))                      # doctest: +SKIP
    """
    import pandas as pd

    from .data import as_dataset
    from .model import HybridModel
    n = _check_count(n, "n")
    if not isinstance(model, HybridModel):
        raise OptionError(f"model must be a dl.HybridModel, got {type(model).__name__}")
    if not model.networks:
        raise OptionError("ensemble() varies the initial network weights, but this model has "
                          "no network; use dl.fit(..., n_starts=N) or dl.bootstrap instead")
    for bad in ("n_starts", "checkpoint", "resume"):
        if bad in fit_kwargs:
            raise OptionError(f"{bad}= is not supported by ensemble(): every member is one fit")
    dataset = as_dataset(data)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    items = [(i, _redraw_weights(model, rng)) for i, rng in enumerate(rngs)]
    par = _resolve(client)
    members = _run_tasks(par, _member_task, items, [f"ensemble member {i}" for i in range(n)],
                         {"model": model, "data": dataset, "fit_kwargs": dict(fit_kwargs)},
                         progress=progress, desc="ensemble")
    rows = []
    for i, r in enumerate(members):
        row = {"member": i, "loss": float(r.loss), "success": bool(r.success),
               "nfev": int(r.nfev + r.njev + r.ngev)}
        p = r.params
        row.update({nm: float(v) for nm, v, fixed in zip(p.index, p["value"], p["fixed"])
                    if not fixed})
        rows.append(row)
    return Ensemble(members, pd.DataFrame(rows).set_index("member"), seed)
