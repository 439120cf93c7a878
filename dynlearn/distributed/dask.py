"""Scale-out on Dask distributed: experiments, multi-start fits, bootstrap and ensembles.

The same code runs on a laptop and on a cluster: pass a ``dask.distributed.Client`` (or
open a :func:`parallel` context) and dynlearn sends its independent pieces of work to the
workers; without one, everything runs in-process and serially and Dask is never imported.

How it works
------------
Work is fanned out at two levels.

* **Independent fits**: the starts of a multi-start fit (``dl.fit(..., n_starts=K,
  client=client)``), bootstrap refits (:func:`bootstrap`), ensemble members
  (:func:`ensemble`) and profile refits run as tasks (:func:`run_tasks`). The first ones go
  out one per worker thread; the run time of the first to come back prices the others,
  which go out packed several to a task (about ``Parallel.task_seconds`` of work each,
  shrinking towards the end so that the workers finish together: :func:`chunk_sizes`).
  When the whole work is too small to pay for the cluster (:func:`pays_for_cluster`), the
  rest runs in the calling process and ``result.starts`` says so. What they share (model,
  bound data, fit settings) is scattered to every worker once (``client.scatter(...,
  broadcast=True)``); each task gets it by reference, so only a few numbers (start points,
  seeds, resampling indices) travel per task. Results are collected with ``as_completed``
  as they finish, and reported item by item (a fit's checkpoint records every start).
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
compiles it on first use and keeps the compiled functions under a key of the model's
structure (:func:`model_key`, :func:`share_compiled`), for this fit and the next ones: a
model is compiled once per worker, not once per task or per fit. Nothing a task does
depends on a shared filesystem or on the client's working directory: inputs travel with
the tasks, and checkpoints are written by the client.

Results are those of the serial run: residuals and Jacobians are stacked in the serial order
(bit-identical); gradients and losses are sums whose order of summation differs (equal to
rounding), and so is the QR-reduced system (a Levenberg-Marquardt fit ends at the same
point to the optimizer's tolerance); independent fits are computed by the same code from
the same inputs and seeds. Every sum and reduction is taken in the order of the
experiments, never in the order results arrive or by batch (the batches change with the
measured load), so a split fit with the same seed gives the same bits on every run.

Faults and elasticity. Workers may join or leave while a fit runs: a new worker takes
queued tasks (and fetches the shared inputs from its peers). When a worker dies, the
scheduler re-runs its tasks elsewhere (up to ``distributed.scheduler.allowed-failures``
times), also those that had finished there but whose results were not yet fetched (their
futures come back "lost", and are waited for again); scattered inputs survive on the other
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
import hashlib
import json
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from dynlearn.core.model import HybridModel
from dynlearn.core.neural import MLP
from dynlearn.errors import ClusterError, OptionError, TaskError

__all__ = ["MODEL_CACHE_SIZE", "RESCATTERS", "TASK_SECONDS", "ClusterError", "Parallel",
           "Placement", "TaskError", "cached", "chunk_sizes", "chunk_task",
           "clear_compiled_models", "cluster_lost", "current_parallel", "forget",
           "forget_everywhere", "local_client", "lost_cluster_error", "lost_inputs",
           "model_cache_info", "model_key", "parallel", "pays_for_cluster",
           "reaching_scheduler", "run_tasks", "scatter", "scheduler_address", "share_compiled",
           "worker_address"]

OVER = ("auto", "starts", "experiments")
#: Default least work per task (seconds): a task costs about 10 ms of scheduling and
#: transfers on a local cluster (benchmarks/scale_out.py), so a task of 0.3 s loses ~3%.
TASK_SECONDS = 0.3
_CURRENT: contextvars.ContextVar[Parallel | None] = contextvars.ContextVar("dynlearn_parallel",
                                                                          default=None)


@dataclass(frozen=True)
class Parallel:
    """How dynlearn uses a Dask client; pass it as ``client=`` or open :func:`parallel`.

    Parameters
    ----------
    client : dask.distributed.Client
    over : {"auto", "starts", "experiments"}
        What a fit fans out. ``"starts"``: the starts of a multi-start fit, as tasks on the
        cluster however little work they are (each start evaluates its experiments
        serially). ``"experiments"``: every evaluation of the objective is split over
        batches of experiments (starts run one after another). ``"auto"`` (default): starts
        when ``n_starts > 1``, else experiments; independent fits too small to pay for the
        cluster run in this process (see ``task_seconds``).
    batch_size : int, optional
        Experiments per task when fanning out experiments. Default: split the experiments
        into as many batches as the cluster has worker threads (fewest round trips; pass a
        smaller size when experiments differ much in cost, to balance the load).
    retries : int
        How many times a task that raised is re-run before its error is reported (default
        1). Tasks lost with a dead worker are re-run by the scheduler regardless.
    task_seconds : float or None
        Independent fits (starts, bootstrap replicates, ensemble members, profile refits)
        are packed several to a task so that each task holds about this much work, priced
        by the first fit to come back (default 0.3 s; a task costs ~10 ms of scheduling and
        transfers); ``None``: one task per fit. When the whole work is too small to pay for
        the cluster (less than ``task_seconds`` per worker thread), the fits not yet sent
        run in this process instead, unless ``over`` was chosen explicitly (``"starts"``
        forces the cluster); ``result.starts`` says where each start ran.
    """

    client: Any
    over: str = "auto"
    batch_size: int | None = None
    retries: int = 1
    task_seconds: float | None = TASK_SECONDS

    def __post_init__(self):
        if self.over not in OVER:
            raise OptionError(f"over={self.over!r}: use one of {list(OVER)}")
        if self.batch_size is not None and (not isinstance(self.batch_size, (int, np.integer))
                                            or self.batch_size < 1):
            raise OptionError(f"batch_size must be a positive integer or None, got "
                              f"{self.batch_size!r}")
        if not isinstance(self.retries, (int, np.integer)) or self.retries < 0:
            raise OptionError(f"retries must be a non-negative integer, got {self.retries!r}")
        if self.task_seconds is not None and not (
                isinstance(self.task_seconds, (int, float, np.number))
                and self.task_seconds >= 0):
            raise OptionError(f"task_seconds must be a non-negative number or None, got "
                              f"{self.task_seconds!r}")
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
             batch_size: int | None = None, retries: int = 1,
             task_seconds: float | None = TASK_SECONDS) -> Iterator[Parallel]:
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
    over, batch_size, retries, task_seconds
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
                                                                  retries, task_seconds)
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
    The models in a new entry's ``obj`` get the compiled functions this process keeps for
    their structure, when an earlier fit left them (:func:`share_compiled`).
    """
    with _CACHE_LOCK:
        entry = _CACHE.get(token)
        if entry is not None:
            _CACHE.move_to_end(token)
            return entry
    if obj is None:
        return None
    share_compiled(obj)    # outside the lock (it may compile): models compiled for earlier fits
    with _CACHE_LOCK:
        entry = _CACHE.setdefault(token, {"obj": obj, "views": {}})
        _CACHE.move_to_end(token)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return entry


# --- compiled models across fits --------------------------------------------------------------
# The cache above lives for one fit. Compiling a model (sympy to Python functions, and for a
# physics model its forward-sensitivity system) costs tens of ms to seconds, and a profile,
# a bootstrap or simply the next fit on the same cluster sends the same model again: each
# worker process therefore also keeps the compiled functions of the last MODEL_CACHE_SIZE
# model structures it used, keyed by the structure's content (model_key), not by the
# scattered copy, so they outlive the fit and serve any equal model, however it was made.
#: Compiled models (distinct structures) each worker process keeps across fits; the least
#: recently used goes first. A few: each holds compiled functions (and, for a physics model,
#: its sensitivity systems), from kilobytes to a few megabytes.
MODEL_CACHE_SIZE = 4
_MODELS: OrderedDict[str, Any] = OrderedDict()
_MODELS_LOCK = threading.Lock()
_MODEL_COUNTS = {"hits": 0, "misses": 0}


def _network_description(net) -> list:
    kind = type(net)
    out = [f"{kind.__module__}.{kind.__qualname__}", net.name,
           [sp.srepr(g) for g in net.inputs], int(net.n_outputs), int(net.n_weights)]
    if kind is MLP:      # evaluated from its architecture (weights come with each call)
        out += [list(net.hidden), net.activation]
    else:                # its own function: shared only with the network itself, or a copy
        out.append(net.uid)
    return out


def model_key(model: HybridModel) -> str:
    """A stable key of everything a model's compiled functions are built from (a SHA-256
    hex digest).

    The states, time and inputs; the parameters in order and which of them are free; the
    equations and observables (sympy's exact ``srepr``: every constant to the last bit); the
    networks in order (an MLP by its architecture, any other network by its identity, which
    its copies share). Not parameter values, bounds, units, network weights or the model's
    name: compiling does not depend on them, so models that differ only there share the key
    (the next fit of a model, a bootstrap's refits, an ensemble, an equal model read from a
    file again). There are no compile options: the
    compiled functions depend on the model only.

    Parameters
    ----------
    model : HybridModel

    Returns
    -------
    str
    """
    desc = {"states": [s.name for s in model.states], "time": model.time.name,
            "inputs": [u.name for u in model.inputs],
            "params": [[s.name, bool(model.params[s].fixed)] for s in model.param_symbols],
            "rhs": [sp.srepr(e) for e in model.rhs],
            "observables": [[k, sp.srepr(e)] for k, e in model.observables.items()],
            "networks": [_network_description(n) for n in model.networks]}
    text = json.dumps(desc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _models_in(obj, depth: int = 0) -> Iterator[HybridModel]:
    """The models in what a fit ships: a model, an object holding one as ``.model`` (an
    objective), or dicts, lists and tuples of those (a few levels deep)."""
    if isinstance(obj, HybridModel):
        yield obj
    elif depth < 3:
        if isinstance(obj, Mapping):
            for v in obj.values():
                yield from _models_in(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from _models_in(v, depth + 1)
        elif isinstance(getattr(obj, "model", None), HybridModel):
            yield obj.model


def share_compiled(obj) -> int:
    """Give the models in ``obj`` the compiled functions this process keeps for their
    structure (:func:`model_key`), and keep those of models not seen before (compiling them
    now: their first use would).

    Runs on a worker, on what a fit scattered (see :func:`cached`): a model, an objective
    (``.model``) or a dict, list or tuple of them. The process keeps the compiled functions
    of :data:`MODEL_CACHE_SIZE` structures, least recently used out first.

    Returns
    -------
    int
        How many of the models got compiled functions from the cache (not compiled here).
    """
    hits, seen = 0, set()
    for model in _models_in(obj):
        if id(model) in seen:      # (an objective's model is also its space's, ...)
            continue
        seen.add(id(model))
        key = model_key(model)
        with _MODELS_LOCK:
            compiled = _MODELS.get(key)
            if compiled is not None:
                _MODELS.move_to_end(key)
            _MODEL_COUNTS["hits" if compiled is not None else "misses"] += 1
        if compiled is not None:
            model.use_compiled(compiled)
            hits += 1
            continue
        compiled = model.compiled          # outside the lock: compiling takes a while
        with _MODELS_LOCK:
            _MODELS[key] = compiled
            _MODELS.move_to_end(key)
            while len(_MODELS) > MODEL_CACHE_SIZE:
                _MODELS.popitem(last=False)
    return hits


def model_cache_info() -> dict:
    """What this process's cache of compiled models holds (run it on the workers:
    ``client.run(model_cache_info)``).

    Returns
    -------
    dict
        ``keys``: the :func:`model_key` of each compiled model kept, least recently used
        first; ``hits`` and ``misses``: how many models :func:`share_compiled` gave cached
        compiled functions, and how many it compiled, since the process started (or since
        :func:`clear_compiled_models`).
    """
    with _MODELS_LOCK:
        return {"keys": list(_MODELS), **_MODEL_COUNTS}


def clear_compiled_models() -> None:
    """Drop the compiled models this process keeps, and zero its counts
    (``client.run(clear_compiled_models)`` on every worker): the next fit compiles its model
    again."""
    with _MODELS_LOCK:
        _MODELS.clear()
        _MODEL_COUNTS.update(hits=0, misses=0)


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
    except TaskError:
        raise                   # already names its item and worker (chunk_task)
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
    # a client that gave up on its scheduler also raises RuntimeError ("ConnectionPool is
    # closed") from whatever it is asked next
    return isinstance(exc, (OSError, TimeoutError, RuntimeError)) and status != "running"


@contextlib.contextmanager
def reaching_scheduler(client, what: str) -> Iterator[None]:
    """Raise the errors of a lost scheduler in the block (after the client gave up
    reconnecting: its ``timeout``) as a :class:`~dynlearn.errors.ClusterError` naming it
    and ``what`` was under way."""
    from concurrent.futures import CancelledError
    try:
        yield
    except (OSError, TimeoutError, CancelledError, RuntimeError) as exc:
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


# --- sizing the tasks ---------------------------------------------------------------------
#: Tasks per worker thread at least, when there are enough items: a slower worker or a
#: dearer item then delays the end by a fraction of a task, not by a whole worker's share.
TASKS_PER_WORKER = 2


def chunk_sizes(n_items: int, seconds_per_item: float | None, n_workers: int,
                task_seconds: float | None = TASK_SECONDS,
                tasks_per_worker: int = TASKS_PER_WORKER) -> list[int]:
    """How many consecutive items each task gets, in item order ("guided" sizes).

    Each task holds about ``task_seconds`` of work at the measured or estimated
    ``seconds_per_item`` (fewer round trips), but at most a ``1 / (tasks_per_worker *
    n_workers)`` share of the items still to hand out, so the tasks shrink towards the end
    (down to one item): the workers finish together even when items differ in cost.
    Without a cost, or with ``task_seconds=None``, every item is a task of its own.

    Parameters
    ----------
    n_items : int
    seconds_per_item : float or None
        The cost of one item.
    n_workers : int
        Worker threads of the cluster.
    task_seconds : float or None
        The work per task worth its overhead.
    tasks_per_worker : int

    Returns
    -------
    list of int
        The sizes of the tasks; they sum to ``n_items``.

    Examples
    --------
    >>> chunk_sizes(14, 0.1, 2)          # 0.3 s per task, then a shrinking tail
    [3, 3, 2, 2, 1, 1, 1, 1]
    >>> chunk_sizes(4, 2.0, 2)           # dear items: one per task
    [1, 1, 1, 1]
    """
    if n_items <= 0:
        return []
    if seconds_per_item is None or task_seconds is None or not np.isfinite(seconds_per_item):
        return [1] * n_items
    by_cost = max(1, int(np.ceil(task_seconds / max(float(seconds_per_item), 1e-9))))
    share = max(1, tasks_per_worker) * max(1, n_workers)
    sizes, left = [], n_items
    while left:
        size = max(1, min(by_cost, -(-left // share)))
        sizes.append(size)
        left -= size
    return sizes


def pays_for_cluster(total_seconds: float, n_workers: int,
                     task_seconds: float | None = TASK_SECONDS) -> bool:
    """Whether ``total_seconds`` of independent work pays for sending it to a cluster of
    ``n_workers`` worker threads: at least one task's worth (``task_seconds``) in all.
    Below that, the cluster's fixed cost per fit
    (scattering the inputs, the workers' first compilation of the model, the round trips:
    ~40 ms on a local cluster) and a loaded machine eat most of the gain. Always ``True``
    with ``task_seconds=None`` (sizing off)."""
    if task_seconds is None:
        return True
    return total_seconds >= task_seconds


@dataclass
class Placement:
    """Where one item of :func:`run_tasks` ran.

    Attributes
    ----------
    worker : str
        The worker's address; ``"client"`` for an item run in the calling process because the
        work was too small to pay for the cluster (see :func:`pays_for_cluster`).
    task : int
        The number of its task (items of a task share it; -1 on the client).
    seconds : float
        The item's own run time.
    task_seconds : float
        The run time of its whole task, on the worker.
    """

    worker: str
    task: int
    seconds: float
    task_seconds: float


def chunk_task(fn: Callable, chunk: tuple, **shared) -> list:
    """Run ``fn(item, **shared)`` for the items of one task, in order, on a worker:
    ``[(result, seconds), ...]``. ``chunk`` is ``(items, labels)``; an error names the
    item's label and the worker."""
    items, labels = chunk
    out = []
    for item, label in zip(items, labels):
        t0 = time.perf_counter()
        try:
            result = fn(item, **shared)
        except Exception as exc:
            worker = worker_address()
            raise TaskError(f"{label} failed on worker {worker or '?'}: "
                            f"{type(exc).__name__}: {exc}", label, worker,
                            traceback.format_exc()) from None
        out.append((result, time.perf_counter() - t0))
    return out


def _timed_chunk(work: tuple, **shared):
    """One task of :func:`run_tasks`: ``work = (fn, items, labels)``; returns (the worker's
    address, the task's run time, :func:`chunk_task`'s list)."""
    t0 = time.perf_counter()
    fn, items, labels = work
    out = chunk_task(fn, (items, labels), **shared)
    return worker_address(), time.perf_counter() - t0, out


def run_tasks(par: Parallel, fn: Callable, items: Sequence, labels: Sequence[str],
              shared: Mapping[str, Any], desc: str = "tasks",
              on_result: Callable[[Any], None] | None = None,
              placement: list | None = None) -> list:
    """``[fn(item, **shared) for item in items]`` as Dask tasks, several items per task.

    Tasks are sized by measured cost (:func:`chunk_sizes`): the first items go out one per
    worker thread; when the first of them is back, its run time prices the others, which go
    out in chunks worth ``par.task_seconds`` each (and at least two tasks per worker
    thread, for balance). When the whole work is too small to pay for the cluster
    (:func:`pays_for_cluster`) and ``par.over`` is ``"auto"``, the items not yet sent run
    here, in this process, instead. ``par.task_seconds=None``: one task per item.

    ``shared`` is scattered to every worker once (and kept in each worker's cache, see
    :func:`cached`); inputs lost with a dead worker are sent again (up to
    :data:`RESCATTERS` times); a task that raises is retried ``par.retries`` times, then
    its error is raised here as a :class:`TaskError` naming the item's label and the
    worker; a lost scheduler as a :class:`~dynlearn.errors.ClusterError` (after
    ``on_result`` saw every result that had arrived).

    Parameters
    ----------
    par : Parallel
    fn : callable
        ``fn(item, **shared)``; must be picklable (a module-level function).
    items : sequence
        The pieces of work.
    labels : sequence of str
        What each item is, for error messages (``"start 2"``, ``"bootstrap replicate 7"``).
    shared : mapping
        Keyword arguments every item gets.
    desc : str
        Part of the task keys (``dynlearn-<desc>-...``).
    on_result : callable, optional
        Called with each item's result as it arrives (tasks in completion order, the items
        of a task in item order).
    placement : list, optional
        Filled with one :class:`Placement` per item, in item order.

    Returns
    -------
    list
        The results in item order.
    """
    from distributed import as_completed
    client = par.client
    n = len(items)
    results: list = [None] * n
    where: list = [None] * n
    if n == 0:
        return []
    token = uuid.uuid4().hex[:10]
    workers = par.n_threads
    with reaching_scheduler(client, f"sending the inputs of {n} {desc}"):
        remote = {k: scatter(client, v) for k, v in shared.items()}
    # the cache token stays that of the first scatter, also when the inputs are re-sent
    tokens = {k: str(f.key) for k, f in remote.items()}
    scattered = list(remote.values())      # every copy sent, released at the end only:
    generation = 0                         # cancelling one would cancel the tasks using it
    # chunks: item ranges; the first ones (one item per worker thread) price the rest
    pilot = n if par.task_seconds is None else min(n, workers)
    chunks: list[range] = [range(i, i + 1) for i in range(pilot)]
    used: list[int] = []                   # the generation of inputs each task was sent
    sent = [0]

    def submit(c):
        sent[0] += 1
        while len(used) <= c:
            used.append(0)
        used[c] = generation
        idx = chunks[c]
        return client.submit(_task, _timed_chunk, f"{desc} {idx.start}-{idx.stop - 1}",
                             (fn, [items[i] for i in idx], [labels[i] for i in idx]),
                             _tokens=tokens, key=f"dynlearn-{desc}-{token}-{c}-{sent[0]}",
                             retries=par.retries, pure=False, **remote)
    with reaching_scheduler(client, f"sending {n} {desc}"):
        futures = [submit(c) for c in range(len(chunks))]
    index = {f.key: c for c, f in enumerate(futures)}
    refetched: dict[int, int] = {}         # tasks submitted again after a lost result
    lost = False

    def resubmit(c: int) -> None:
        futures[c] = submit(c)      # (the superseded future is skipped when it comes back)
        index[futures[c].key] = c
        pending.add(futures[c])

    try:
        pending = as_completed(futures)
        for fut in pending:
            c = index[fut.key]
            if futures[c] is not fut:       # superseded by a resubmission
                continue
            if fut.status not in ("finished", "error", "cancelled"):
                # "lost": it had finished on a worker that died before its result was
                # fetched; the scheduler computes it again (this client still wants it).
                # Unless the scheduler itself is gone: then nothing will compute it
                if str(getattr(client, "status", "running")) == "running":
                    pending.add(fut)
                    continue
                lost = True
                raise lost_cluster_error(
                    client, ConnectionError(f"a task's result was {fut.status} and the client "
                                            f"is {client.status}"),
                    f"running {n} {desc} ({sum(w is not None for w in where)} finished)")
            if fut.status != "finished":
                exc = fut.exception() if fut.status == "error" else _cancel_reason(fut)
                if cluster_lost(client, exc):
                    lost = True
                    raise lost_cluster_error(client, exc, f"running {n} {desc} "
                                             f"({sum(w is not None for w in where)} "
                                             "finished)")
                if not lost_inputs(exc) or (used[c] == generation
                                            and generation >= RESCATTERS):
                    raise _as_task_error(exc, f"{desc} {chunks[c].start}-"
                                         f"{chunks[c].stop - 1}")
                if used[c] == generation:   # the current copy is lost: send another
                    generation += 1
                    with reaching_scheduler(client, f"sending the inputs of {desc} again"):
                        remote = {k: scatter(client, v) for k, v in shared.items()}
                    scattered += remote.values()
                resubmit(c)                 # (tasks sent an older copy come here in turn)
                continue
            try:
                worker, task_s, out = fut.result()
            except BaseException as exc:   # finished, but its result could not be fetched
                if cluster_lost(client, exc):
                    lost = True
                    raise lost_cluster_error(client, exc, f"fetching a result of {desc}"
                                             ) from None
                if lost_inputs(exc) and refetched.get(c, 0) < RESCATTERS:
                    # the worker holding the finished result died between the status seen
                    # above and this fetch, and the scheduler forgot the task ("already
                    # forgotten": it does not compute it again): submit it again (seen
                    # under load, when a worker is killed mid-fit)
                    refetched[c] = refetched.get(c, 0) + 1
                    resubmit(c)
                    continue
                raise
            fut.release()
            for i, (res, s) in zip(chunks[c], out):
                results[i], where[i] = res, Placement(worker, c, s, task_s)
                if on_result is not None:
                    on_result(res)
            rest = chunks[-1].stop
            if rest < n:                    # the first result back: price the rest
                cost = float(np.median([s for _, s in out]))
                if par.over == "auto" and not pays_for_cluster(n * cost, workers,
                                                               par.task_seconds):
                    for i in range(rest, n):   # too little work: run it here
                        t0 = time.perf_counter()
                        try:
                            results[i] = fn(items[i], **shared)
                        except Exception as exc:
                            if hasattr(exc, "add_note"):
                                exc.add_note(f"(in {labels[i]}, run on the client)")
                            raise
                        s = time.perf_counter() - t0
                        where[i] = Placement("client", -1, s, s)
                        if on_result is not None:
                            on_result(results[i])
                    chunks.append(range(rest, n))   # (nothing more to send)
                    continue
                with reaching_scheduler(client, f"sending {n - rest} {desc}"):
                    for size in chunk_sizes(n - rest, cost, workers, par.task_seconds):
                        chunks.append(range(rest, rest + size))
                        rest += size
                        futures.append(submit(len(chunks) - 1))
                        index[futures[-1].key] = len(chunks) - 1
                        pending.add(futures[-1])
    except BaseException as exc:
        lost = lost or cluster_lost(client, exc)
        if not lost:      # (without a scheduler, there is nothing to cancel: no waiting)
            client.cancel(futures)
        raise
    finally:
        if not lost:
            client.cancel(scattered)
            forget_everywhere(client, list(tokens.values()))
    if placement is not None:
        placement[:] = where
    return results


def _cancel_reason(fut) -> BaseException:
    """The exception a cancelled future would raise (it carries the reason)."""
    try:
        fut.result()        # returns at once: the future is done (a timeout here is racy)
    except BaseException as exc:  # noqa: BLE001 - the reason is the point
        return exc
    return RuntimeError(f"task {fut.key} was cancelled")  # pragma: no cover
