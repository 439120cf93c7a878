"""Where independent work runs: in this process, through a ``map``-like callable, or on Dask.

Fits, bootstrap replicates, ensemble members and profile refits hand their independent pieces
of work to an :class:`Executor`; :func:`resolve_executor` turns a ``client=`` argument into
one. The serial path is an executor like the others, so callers have one code path:

* :class:`SerialExecutor`: everything in this process, one item after another (the
  default, and what runs without a client: Dask is never imported then);
* :class:`MapExecutor`: a ``map``-like callable supplied by the user (e.g. a process pool's
  ``map``), for the starts of a multi-start fit;
* :class:`DaskExecutor`: a Dask client (see :mod:`dynlearn.distributed.dask`): items are
  tasks, and one fit's objective can itself be split over the workers by experiment
  (:class:`~dynlearn.distributed.fanned.FannedObjective`).

An executor also decides how a fit's starts run (:meth:`Executor.fans_out`): as separate
tasks through :meth:`Executor.map`, or one after another here, each evaluating the
objective that :meth:`Executor.objective` makes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from dynlearn.distributed.dask import Parallel, current_parallel, run_tasks
from dynlearn.distributed.fanned import FannedObjective
from dynlearn.objective.objective import FitObjective
from dynlearn.report.progress import ProgressBar

__all__ = ["DaskExecutor", "Executor", "MapExecutor", "SerialExecutor", "resolve_executor"]

OnResult = Callable[[Any, Any], None]


@runtime_checkable
class Executor(Protocol):
    """Runs independent work, and makes the objective a fit evaluates.

    Every method is called on the client side (the process that called ``dl.fit``,
    ``dl.bootstrap``, ...).
    """

    def map(self, fn: Callable, items: Sequence, labels: Sequence[str],
            shared: Mapping[str, Any], *, progress: bool = False, desc: str = "tasks",
            on_result: OnResult | None = None, placement: list | None = None) -> list:
        """``[fn(item, **shared) for item in items]``, in item order.

        Parameters
        ----------
        fn : callable
            A module-level (picklable) function ``fn(item, **shared)``.
        items : sequence
            One piece of work each.
        labels : sequence of str
            What each item is, for error messages (``"start 2"``, ``"bootstrap replicate
            7"``).
        shared : mapping
            Keyword arguments common to every item (sent to each worker once).
        progress : bool
            Show a progress bar over the items.
        desc : str
            The progress bar's label (and, on Dask, part of the task keys).
        on_result : callable, optional
            ``on_result(bar, result)`` after each result, as it arrives (``bar`` is the
            progress bar, ``None`` without one): to show the best loss so far, or to record
            finished work (a fit's checkpoint records every finished start).
        placement : list, optional
            Filled with one :class:`~dynlearn.distributed.dask.Placement` per item (where it
            ran, in which task, how long) by executors that run items elsewhere; left
            empty by those that run them here.
        """
        ...

    def objective(self, settings: Mapping[str, Any]
                  ) -> contextlib.AbstractContextManager[FitObjective]:
        """A context manager giving the objective of one fit (``settings``: the keyword
        arguments of :class:`~dynlearn.objective.objective.FitObjective`), released at the
        end of the block."""
        ...

    def fans_out(self, n_fits: int) -> bool:
        """Whether ``n_fits`` independent fits (the starts of one fit) run as items of
        :meth:`map` (``True``) or one after another in this process, each with an
        :meth:`objective` (``False``)."""
        ...


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(text)


def _progress_bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    # a tqdm bar on a terminal, plain lines (no carriage returns) in a file or a log
    return ProgressBar(desc, total=total, unit="task")


def _with_bar(bar, on_result: OnResult | None) -> Callable[[Any], None] | None:
    """The per-result hook of a run: advance ``bar`` (if any), then call
    ``on_result(bar, result)`` (if given)."""
    if bar is None and on_result is None:
        return None

    def done(result):
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(bar, result)
    return done


@contextlib.contextmanager
def _in_process(settings: Mapping[str, Any]) -> Iterator[FitObjective]:
    yield FitObjective(**settings)


class _InProcess:
    """What the serial and the ``map`` executors share: objectives built in this process, and
    a :meth:`map` that collects the results of :meth:`_results` with a progress bar."""

    def _results(self, fn: Callable, items: Sequence, labels: Sequence[str],
                 shared: Mapping[str, Any]) -> Iterable:
        raise NotImplementedError

    def map(self, fn: Callable, items: Sequence, labels: Sequence[str],
            shared: Mapping[str, Any], *, progress: bool = False, desc: str = "tasks",
            on_result: OnResult | None = None, placement: list | None = None) -> list:
        """See :meth:`Executor.map` (``placement`` stays empty: items run here or
        through the user's mapper, which does not say where)."""
        bar = _progress_bar(progress, len(items), desc)
        done = _with_bar(bar, on_result)
        try:
            out = []
            for result in self._results(fn, items, labels, shared):
                out.append(result)
                if done is not None:
                    done(result)
            return out
        finally:
            if bar is not None:
                bar.close()

    def objective(self, settings: Mapping[str, Any]
                  ) -> contextlib.AbstractContextManager[FitObjective]:
        """An in-process :class:`~dynlearn.objective.objective.FitObjective`."""
        return _in_process(settings)


class SerialExecutor(_InProcess):
    """Everything in this process, one item after another (no Dask). An error raised by a
    function it maps propagates as is, with a note naming the item (Python >= 3.11)."""

    def _results(self, fn, items, labels, shared):
        for item, label in zip(items, labels):
            try:
                yield fn(item, **shared)
            except Exception as exc:
                _note(exc, f"(in {label})")
                raise

    def fans_out(self, n_fits: int) -> bool:
        """Never: starts run one after another, each with its own progress bar."""
        return False

    def __repr__(self) -> str:
        return "SerialExecutor()"


def _apply(fn: Callable, shared: Mapping[str, Any], item):
    return fn(item, **shared)


class MapExecutor(_InProcess):
    """Items through a ``map``-like callable ``mapper(f, items)`` supplied by the user (for
    example a process pool's ``map``); objectives are evaluated in this process.

    Parameters
    ----------
    mapper : callable
        Called once per :meth:`map` with a picklable ``f`` and the list of items; it must
        return (or yield) ``f(item)`` for every item, in order.
    """

    def __init__(self, mapper: Callable):
        self.mapper = mapper

    def _results(self, fn, items, labels, shared):
        return self.mapper(functools.partial(_apply, fn, shared), list(items))

    def fans_out(self, n_fits: int) -> bool:
        """Always: the starts of a fit go through the mapper."""
        return True

    def __repr__(self) -> str:
        return f"MapExecutor({self.mapper!r})"


class DaskExecutor:
    """Items as Dask tasks, and a fit's objective split over the workers by experiment.

    Parameters
    ----------
    parallel : Parallel
        The client and how to use it (``over``, ``batch_size``, ``retries``).
    """

    def __init__(self, parallel: Parallel):
        self.parallel = parallel

    def map(self, fn: Callable, items: Sequence, labels: Sequence[str],
            shared: Mapping[str, Any], *, progress: bool = False, desc: str = "tasks",
            on_result: OnResult | None = None, placement: list | None = None) -> list:
        """See :meth:`Executor.map` and :func:`dynlearn.distributed.dask.run_tasks` (items
        packed into tasks by measured cost; ``shared`` scattered to every worker once; lost
        inputs sent again; a failed item raised as a
        :class:`~dynlearn.distributed.dask.TaskError`; work too small for the cluster run
        here)."""
        bar = _progress_bar(progress, len(items), desc)
        try:
            return run_tasks(self.parallel, fn, items, labels, shared, desc=desc,
                             on_result=_with_bar(bar, on_result), placement=placement)
        finally:
            if bar is not None:
                bar.close()

    @contextlib.contextmanager
    def objective(self, settings: Mapping[str, Any]) -> Iterator[FitObjective]:
        """A :class:`~dynlearn.distributed.fanned.FannedObjective` (every evaluation split
        over the workers by batches of experiments), released from the workers at the end;
        an in-process objective when there is only one experiment (nothing to split)."""
        if len(settings["bound"]) < 2:
            yield FitObjective(**settings)
            return
        obj = FannedObjective(self.parallel, **settings)
        try:
            yield obj
        finally:
            obj.close()

    def fans_out(self, n_fits: int) -> bool:
        """``over="starts"``: always; ``"experiments"``: never; ``"auto"``: when there are
        several fits."""
        over = self.parallel.over
        if over == "auto":
            return n_fits > 1
        return over == "starts"

    def __repr__(self) -> str:
        return f"DaskExecutor({self.parallel!r})"


def resolve_executor(client=None) -> Executor:
    """The executor for a ``client=`` argument.

    Parameters
    ----------
    client : None, Executor, dask.distributed.Client, Parallel or callable
        ``None``: the Dask client of the enclosing :func:`dynlearn.parallel` block, else
        serial. An :class:`Executor` is used as is; a Dask client or :class:`Parallel` gives
        a :class:`DaskExecutor`; any other ``map``-like callable a :class:`MapExecutor`.

    Returns
    -------
    Executor

    Raises
    ------
    OptionError
        ``client`` is none of these (or an asynchronous Dask client).
    """
    if client is None:
        par = current_parallel()
        return SerialExecutor() if par is None else DaskExecutor(par)
    if isinstance(client, Executor):
        return client
    if callable(client) and not hasattr(client, "submit"):
        return MapExecutor(client)
    return DaskExecutor(client if isinstance(client, Parallel) else Parallel(client))
