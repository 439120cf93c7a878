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
the same inputs and seeds. Every sum and reduction is taken in the order of the
experiments, never in the order results arrive or by batch (the batches change with the
measured load), so a split fit with the same seed gives the same bits on every run.

Faults. When a worker dies, the scheduler re-runs its tasks elsewhere (up to
``distributed.scheduler.allowed-failures`` times); scattered inputs survive on the other
workers (they were broadcast), and where Dask's memory manager had left the only copy on
the dead worker, the cancelled tasks are sent again with a fresh copy. Tasks that raise
are retried ``retries`` times (for transient failures such as a lost connection), then the
error is raised on the client as a :class:`TaskError` naming the experiment, start,
replicate or member and the worker. A trial point where the ODE solver fails is not an
error: it is rejected, exactly as in a serial fit. When the scheduler itself dies (or the
connection to it breaks), the client cancels every task at once: that is raised at once as
a :class:`~dynlearn.errors.ClusterError` naming the scheduler, never retried (a fit keeps
its finished starts, and its checkpoint its progress, see :func:`dynlearn.fit`).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynlearn.errors import ClusterError, OptionError, TaskError

__all__ = ["RESCATTERS", "ClusterError", "Parallel", "TaskError", "cached", "cluster_lost",
           "current_parallel", "forget", "forget_everywhere", "local_client", "lost_inputs",
           "lost_cluster_error", "parallel", "reaching_scheduler", "run_tasks", "scatter",
           "scheduler_address", "worker_address"]

OVER = ("auto", "starts", "experiments")
_CURRENT: contextvars.ContextVar[Parallel | None] = contextvars.ContextVar("dynlearn_parallel",
                                                                          default=None)


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
                          "dynlearn.distributed.local_client(n_workers) or "
                          "Client('tcp://scheduler:8786')")
    if getattr(client, "asynchronous", False):
        raise OptionError("client is asynchronous; dynlearn needs a synchronous Client")


def current_parallel() -> Parallel | None:
    """The :class:`Parallel` configuration of the enclosing :func:`parallel` block, or
    ``None`` outside one."""
    return _CURRENT.get()


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
    >>> from dynlearn.distributed.dask import local_client          # doctest: +SKIP
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
def worker_address() -> str:
    """The address of the Dask worker running the caller ("" when not on a worker)."""
    try:
        from distributed import get_worker
        return get_worker().address
    except Exception:  # noqa: BLE001 - not on a worker
        return ""


# --- the per-worker cache ------------------------------------------------------------------
# What a fit sends to the workers (its objective, or the model and data of bootstrap and
# ensemble fits) is also kept in each worker process under the key of its scattered copy,
# until the fit ends (forget) or 16 newer entries push it out. Why not rely on the scattered
# copies alone: Dask's active memory manager drops the extra replicas of scattered data that
# no task is waiting for (ReduceReplicas, every 2 s), so between two evaluations a worker
# loses its copy and fetches it again, as a new object whose model would be compiled again.
_CACHE: OrderedDict[str, dict] = OrderedDict()
_CACHE_SIZE = 16
_CACHE_LOCK = threading.Lock()


def cached(token: str, obj=None) -> dict | None:
    """This process's cache entry ``{"obj": ..., "views": {...}}`` for ``token``; created
    from ``obj`` when missing (``None`` when missing and no ``obj`` is given).

    Runs on a worker: ``token`` is the key of a scattered input, ``obj`` its value; the entry
    keeps it (and whatever the caller stores in ``views``) for later tasks on this worker.
    """
    with _CACHE_LOCK:
        entry = _CACHE.get(token)
        if entry is None and obj is not None:
            entry = _CACHE[token] = {"obj": obj, "views": {}}
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        elif entry is not None:
            _CACHE.move_to_end(token)
        return entry


def forget(tokens: Sequence[str]) -> None:
    """Drop the cache entries of ``tokens`` in this process (see :func:`cached`)."""
    with _CACHE_LOCK:
        for t in tokens:
            _CACHE.pop(t, None)


def forget_everywhere(client, tokens: Sequence[str]) -> None:
    """Drop the cache entries of ``tokens`` on every worker of ``client`` (see
    :func:`cached`); a worker that is gone has nothing to forget."""
    try:
        client.run(forget, list(tokens))
    except Exception:  # noqa: BLE001 - a worker gone meanwhile has nothing to forget
        pass


def _task(fn: Callable, label: str, item, _tokens: Mapping[str, str] | None = None, **shared):
    """Run ``fn(item, **shared)`` on a worker; an error names ``label`` and the worker.

    Shared inputs are replaced by this worker's cached copies (see :func:`cached`).
    """
    try:
        if _tokens:
            shared = {k: cached(_tokens[k], v)["obj"] for k, v in shared.items()}
        return fn(item, **shared)
    except Exception as exc:
        worker = worker_address()
        raise TaskError(f"{label} failed on worker {worker or '?'}: {type(exc).__name__}: {exc}",
                        label, worker, traceback.format_exc()) from None


def _as_task_error(exc: BaseException, label: str) -> TaskError:
    if isinstance(exc, TaskError):
        return exc
    return TaskError(f"{label} failed: {type(exc).__name__}: {exc}", label)


def scatter(client, obj):
    """Send ``obj`` to every worker once; its future. (Wrapped in a list: ``scatter`` would
    split a dict or list into one future per element.)"""
    return client.scatter([obj], broadcast=True, hash=False)[0]


def lost_inputs(exc: BaseException | None) -> bool:
    """Whether a task was cancelled by the cluster, as when its scattered inputs died.

    Scattered data is broadcast, but Dask's active memory manager trims the replicas no task
    is waiting for; when the worker holding the last one dies, the tasks that need it are
    cancelled ("lost dependencies", or "already forgotten" when the client asks after the
    scheduler has dropped them) rather than re-run. The cure is to scatter again and
    resubmit (a bounded number of times: a cancellation for any other reason then surfaces).
    """
    from concurrent.futures import CancelledError
    return isinstance(exc, CancelledError)


RESCATTERS = 3   # times the inputs of one piece of work are re-sent after being lost


def scheduler_address(client) -> str:
    """The address of ``client``'s scheduler, without asking the scheduler ("" when
    unknown)."""
    try:
        return str(client.scheduler.address or "")
    except Exception:  # noqa: BLE001 - only for messages
        return ""


def cluster_lost(client, exc: BaseException | None) -> bool:
    """Whether ``exc`` (raised while waiting for tasks) means the client has lost its
    scheduler: the scheduler died or the connection broke.

    The client then cancels every future at once with the reason
    ``"scheduler-connection-lost"`` (a cancellation, like lost inputs, but one that no
    resubmission can cure) and tries to reconnect; a connection error raised while the
    client is not running says the same.
    """
    if exc is None or isinstance(exc, TaskError):
        return False
    if getattr(exc, "reason", None) == "scheduler-connection-lost":
        return True
    status = str(getattr(client, "status", "running"))
    return isinstance(exc, (OSError, TimeoutError)) and status != "running"


@contextlib.contextmanager
def reaching_scheduler(client, what: str) -> Iterator[None]:
    """Raise the errors of a lost scheduler in the block (after the client gave up
    reconnecting: its ``timeout``) as a :class:`~dynlearn.errors.ClusterError` naming it
    and ``what`` was under way."""
    from concurrent.futures import CancelledError
    try:
        yield
    except (OSError, TimeoutError, CancelledError) as exc:
        if cluster_lost(client, exc):
            raise lost_cluster_error(client, exc, what) from None
        raise


def lost_cluster_error(client, exc: BaseException, what: str) -> ClusterError:
    """The :class:`~dynlearn.errors.ClusterError` of a lost scheduler, naming it and
    ``what`` was under way."""
    address = scheduler_address(client)
    reason = getattr(exc, "reason", None)
    detail = reason if reason else f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return ClusterError(f"the Dask scheduler {address or '(unknown address)'} can no longer "
                        f"be reached (it died, or the connection to it was lost) while "
                        f"{what} ({detail})", address)


def run_tasks(par: Parallel, fn: Callable, items: Sequence, labels: Sequence[str],
              shared: Mapping[str, Any], desc: str = "tasks",
              on_result: Callable[[Any], None] | None = None) -> list:
    """``[fn(item, **shared) for item in items]`` as one Dask task per item.

    ``shared`` is scattered to every worker once (and kept in each worker's cache, see
    :func:`cached`); inputs lost with a dead worker are sent again (up to
    :data:`RESCATTERS` times); a task that raises is retried ``par.retries`` times, then
    its error is raised here as a :class:`TaskError` naming ``labels[i]`` and the worker;
    a lost scheduler as a :class:`~dynlearn.errors.ClusterError` (after ``on_result`` saw
    every result that had arrived).

    Parameters
    ----------
    par : Parallel
    fn : callable
        ``fn(item, **shared)``; must be picklable (a module-level function).
    items : sequence
        One task each.
    labels : sequence of str
        What each task is, for error messages (``"start 2"``, ``"bootstrap replicate 7"``).
    shared : mapping
        Keyword arguments every task gets.
    desc : str
        Part of the task keys (``dynlearn-<desc>-...``).
    on_result : callable, optional
        Called with each result as it arrives (in completion order).

    Returns
    -------
    list
        The results in item order.
    """
    from distributed import as_completed
    client = par.client
    token = uuid.uuid4().hex[:10]
    with reaching_scheduler(client, f"sending the inputs of {len(items)} {desc}"):
        remote = {k: scatter(client, v) for k, v in shared.items()}
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
    with reaching_scheduler(client, f"sending {len(items)} {desc}"):
        futures = [submit(i) for i in range(len(items))]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    lost = False
    try:
        pending = as_completed(futures)
        for fut in pending:
            i = index[fut.key]
            if futures[i] is not fut:       # superseded by a resubmission
                continue
            if fut.status != "finished":
                exc = fut.exception() if fut.status == "error" else _cancel_reason(fut)
                if cluster_lost(client, exc):
                    lost = True
                    raise lost_cluster_error(client, exc, f"running {len(items)} {desc} "
                                             f"({sum(r is not None for r in results)} "
                                             "finished)")
                if not lost_inputs(exc) or (used[i] == generation
                                            and generation >= RESCATTERS):
                    raise _as_task_error(exc, labels[i])
                if used[i] == generation:   # the current copy is lost: send another
                    generation += 1
                    with reaching_scheduler(client, f"sending the inputs of {desc} again"):
                        remote = {k: scatter(client, v) for k, v in shared.items()}
                    scattered += remote.values()
                futures[i] = submit(i)      # (tasks sent an older copy come here in turn)
                index[futures[i].key] = i
                pending.add(futures[i])
                continue
            try:
                results[i] = fut.result()
            except BaseException as exc:   # finished, but its result could not be fetched
                if cluster_lost(client, exc):
                    lost = True
                    raise lost_cluster_error(client, exc, f"fetching a result of {desc}"
                                             ) from None
                raise
            fut.release()
            if on_result is not None:
                on_result(results[i])
    except BaseException as exc:
        lost = lost or cluster_lost(client, exc)
        if not lost:      # (without a scheduler, there is nothing to cancel: no waiting)
            client.cancel(futures)
        raise
    finally:
        if not lost:
            client.cancel(scattered)
            forget_everywhere(client, list(tokens.values()))
    return results


def _cancel_reason(fut) -> BaseException:
    """The exception a cancelled future would raise (it carries the reason)."""
    try:
        fut.result()        # returns at once: the future is done (a timeout here is racy)
    except BaseException as exc:  # noqa: BLE001 - the reason is the point
        return exc
    return RuntimeError(f"task {fut.key} was cancelled")  # pragma: no cover
