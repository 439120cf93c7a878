"""Checkpoints of a fit: where it stands, on disk, so that a resumed fit continues.

A checkpoint is a pair ``<path>.json`` + ``<path>.npz`` written atomically through
:func:`dynlearn.files.write_json_npz`, so an interrupted or killed fit never leaves a
half-written checkpoint. The JSON holds everything (arrays as lists of exactly written
floats), so one atomic rename publishes a complete, consistent checkpoint; the npz holds
the best point ``x`` again, for readers of the older layout. A checkpoint records

* the starts that have finished (``done``): each one's outcome (point, cost, loss, status,
  counts, loss history, noise levels), so a resumed multi-start fit runs only the others;
* the start in progress, if any (``start``): its position (``round`` of the noise
  re-estimation of a Gaussian loss, optimizer ``stage``), the point the stage started from
  (``stage_x0``), the optimizer's own state at the end of its last iteration (``state``:
  e.g. the Levenberg-Marquardt damping and column scales, Adam's moments, the multiple-
  shooting segment states; see :meth:`dynlearn.optimizers.Optimizer.run`), the best point
  so far (``x``, ``best_cost``), the counters, loss history and noise levels.

``dl.fit(..., checkpoint=path, resume=True)`` reads it back (:func:`read_checkpoint`) and
continues the start in progress where it stood (:func:`resume`): the same stage, with the
iteration budget that was left and the optimizer's state, from the same best point, so the
best cost never increases across resumes and an interrupted fit ends where an uninterrupted
one does. A damaged checkpoint raises a :class:`~dynlearn.DataError` that says so and how to
start afresh.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dynlearn.errors import DataError
from dynlearn.files import json_npz_paths, jsonable, read_json, read_json_npz, write_json_npz
from dynlearn.optimizers import Status

if TYPE_CHECKING:
    from dynlearn.fitting.tracker import Tracker
    from dynlearn.objective.objective import FitObjective

__all__ = ["FORMAT", "VERSION", "Checkpoint", "decode", "encode", "read_checkpoint", "resume",
           "write_checkpoint"]

#: the ``format`` entry of a checkpoint's JSON
FORMAT = "dynlearn.Checkpoint"
#: the current layout (1, unnumbered: the best point and the stage only, the point in the npz)
VERSION = 2


# --- numbers and arrays as JSON ---------------------------------------------------------------
def encode(value: Any) -> Any:
    """``value`` (dicts, lists, tuples, numbers, strings, float arrays) as JSON-able data
    that :func:`decode` turns back: an array becomes ``{"__array__": [...], "shape": [...]}``,
    a non-finite float ``{"__float__": "inf"}``. Floats are written by ``repr``, so they
    come back exactly."""
    if isinstance(value, np.ndarray):
        flat = np.asarray(value, dtype=float).ravel()
        return {"__array__": jsonable(flat), "shape": list(value.shape)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    return value


def decode(tree: Any) -> Any:
    """The data :func:`encode` encoded (tuples come back as lists)."""
    if isinstance(tree, dict):
        if "__array__" in tree and set(tree) <= {"__array__", "shape"}:
            flat = np.array([float(v) for v in tree["__array__"]], dtype=float)
            return flat.reshape(tree.get("shape", [flat.size]))
        if set(tree) == {"__float__"}:
            return float(tree["__float__"])
        return {k: decode(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode(v) for v in tree]
    return tree


# --- the checkpoint as read ------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint read from disk (decoded: arrays are arrays).

    Attributes
    ----------
    meta : dict
        ``names``, ``n_starts``, ``seed``, ``done`` (finished starts), ``start`` (the start
        in progress or ``None``), ``round``, ``stage``, ``stage_x0``, ``state``, ``x`` and
        ``best_cost`` (the best point since the noise levels were last re-estimated),
        ``best_loss`` and ``best_loss_x`` (the best loss of any point of the fit: it never
        rises), ``counts``, ``nit``, ``history``, ``sigma_hat``, ...
    path : str
        The JSON file it was read from.
    """

    meta: dict
    path: str = ""

    @property
    def version(self) -> int:
        return int(self.meta.get("version", 1))

    @property
    def names(self) -> list[str] | None:
        """The names of the fitted values (to check the checkpoint belongs to the fit)."""
        return self.meta.get("names")

    @property
    def x(self) -> np.ndarray:
        """The best point of the start in progress."""
        return np.asarray(self.meta["x"], dtype=float)

    @property
    def start(self) -> int | None:
        """The start in progress (``None`` when every start recorded has finished)."""
        if self.version < 2:
            return None if self.meta.get("finished") else int(self.meta.get("start", 0))
        s = self.meta.get("start")
        return None if s is None else int(s)

    @property
    def n_starts(self) -> int | None:
        """The number of starts of the fit (unknown in checkpoints of the older layout)."""
        n = self.meta.get("n_starts")
        return None if n is None else int(n)

    @property
    def done(self) -> list[dict]:
        """The finished starts, one record each (the outcome's numbers and words, its point
        ``x`` and start point ``x0``; see :func:`dynlearn.fitting.starts.outcome_record`)."""
        if self.version >= 2:
            return list(self.meta.get("done", []))
        if not self.meta.get("finished"):
            return []
        m = self.meta
        counts = m.get("counts", {})
        return [{"start": int(m.get("start", 0)), "x": self.x, "x0": None,
                 "cost": float(m.get("best_cost", math.inf)), "status": m.get("status", 0),
                 "message": m.get("message", ""), "nfev": counts.get("nfev", 0),
                 "njev": counts.get("njev", 0), "ngev": counts.get("ngev", 0),
                 "rejected": counts.get("rejected", 0), "nit": m.get("nit", 0),
                 "history": m.get("history", []), "sigma_hat": m.get("sigma_hat"),
                 "elapsed": m.get("elapsed", 0.0)}]

    @property
    def stage_x0(self) -> np.ndarray:
        """The point the checkpointed stage started from."""
        return np.asarray(self.meta.get("stage_x0", self.meta["x"]), dtype=float)

    @property
    def state(self) -> dict | None:
        """The optimizer's state in the checkpointed stage (``None``: none recorded, the
        stage starts over from :attr:`stage_x0`)."""
        return self.meta.get("state") or None


def write_checkpoint(path, meta: dict) -> None:
    """Write ``meta`` (encoded with :func:`encode`; the ``format`` and ``version`` entries
    are added) to ``<path>.json``, and its point ``x`` (when it has one) to ``<path>.npz``,
    atomically."""
    x = meta.get("x")
    arrays = {} if x is None else {"x": np.asarray(x, dtype=float)}
    write_json_npz(path, encode({"format": FORMAT, "version": VERSION, **meta}), arrays)


def read_checkpoint(path) -> Checkpoint | None:
    """The checkpoint at ``path`` (with or without suffix), or ``None`` when there is none.

    Every entry is checked and converted (numbers, counters, points of the right length,
    finished starts' records), so that what a resumed fit reads is whole.

    Raises
    ------
    DataError
        The checkpoint is damaged (unreadable, missing entries, entries of the wrong kind,
        points that do not fit its names): the message says so, and how to start afresh.
    """
    jpath, npath = json_npz_paths(path)
    try:
        raw = read_json(path)
        if isinstance(raw, dict) and "version" not in raw:
            raw, arrays = read_json_npz(path)      # the older layout: the point in the npz
            raw = {**raw, "x": arrays["x"]}
        meta = _normalised(decode(raw))
    except FileNotFoundError as exc:
        if exc.filename is not None and str(exc.filename) == npath:
            raise _damaged(jpath, npath, f"{npath} is missing") from None
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, EOFError,
            zipfile.BadZipFile) as exc:
        raise _damaged(jpath, npath, str(exc) if isinstance(exc, _Bad)
                       else f"{type(exc).__name__}: {exc}") from None
    return Checkpoint(meta, jpath)


def _damaged(jpath: str, npath: str, why: str) -> DataError:
    return DataError(f"the checkpoint {jpath} is damaged ({why}); start afresh without "
                     f"resuming (dl.fit(..., resume=False), or dynlearn fit without --resume: "
                     f"the checkpoint is then overwritten), or delete {jpath} and {npath}")


class _Bad(ValueError):
    """What is wrong with an entry of a checkpoint."""


def _int(v, what: str, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
            not float(v).is_integer() or v < minimum:
        raise _Bad(f"{what} is {v!r}, not an integer >= {minimum}")
    return int(v)


def _float(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
            math.isnan(float(v)):
        raise _Bad(f"{what} is {v!r}, not a number")
    return float(v)


def _point(v, what: str, n: int | None, finite: bool = True) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise _Bad(f"{what} is not an array of numbers") from None
    if a.ndim != 1 or (n is not None and a.size != n):
        raise _Bad(f"{what} has shape {a.shape}, not ({'n' if n is None else n},)")
    if finite and not np.all(np.isfinite(a)):
        raise _Bad(f"{what} holds non-finite values")
    return a


def _history(v, what: str) -> list:
    if not isinstance(v, list):
        raise _Bad(f"{what} is not a list")
    out = []
    for h in v:
        if not isinstance(h, list) or len(h) != 2:
            raise _Bad(f"{what} holds {h!r}, not a pair (evaluation, cost)")
        out.append((_int(h[0], what), _float(h[1], what)))
    return out


def _counts(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise _Bad(f"{what} is not a table")
    return {k: _int(v[k], f"{what}[{k!r}]") for k in ("nfev", "njev", "ngev", "rejected")
            if k in v}


def _record(rec, n: int) -> dict:
    """A finished start's record, checked and converted."""
    if not isinstance(rec, dict):
        raise _Bad("a finished start's record is not a table")
    k = _int(rec.get("start"), "a finished start's number")
    what = f"finished start {k}"
    try:
        status = Status.coerce(rec.get("status", 0), True, str(rec.get("message", "")))
    except (ValueError, TypeError):
        raise _Bad(f"{what} has the status {rec.get('status')!r}") from None
    counts = _counts({c: rec.get(c, 0) for c in ("nfev", "njev", "ngev", "rejected")}, what)
    sigma = rec.get("sigma_hat")
    return {"start": k, "x": _point(rec.get("x"), f"the point of {what}", n, finite=False),
            "x0": None if rec.get("x0") is None else
            _point(rec["x0"], f"the start point of {what}", n, finite=False),
            "cost": _float(rec.get("cost"), f"the cost of {what}"),
            "loss": _float(rec.get("loss", rec.get("cost")), f"the loss of {what}"),
            "status": status.value, "message": str(rec.get("message", "")), **counts,
            "nit": _int(rec.get("nit", 0), f"the iterations of {what}"),
            "history": _history(rec.get("history", []), f"the history of {what}"),
            "sigma_hat": None if sigma is None else
            _point(sigma, f"the noise levels of {what}", None),
            "elapsed": _float(rec.get("elapsed", 0.0), f"the time of {what}")}


def _normalised(meta) -> dict:
    """``meta`` with every entry a resumed fit reads checked and converted; raises
    :class:`_Bad` saying what is wrong."""
    if not isinstance(meta, dict):
        raise _Bad("the JSON is not an object")
    if meta.get("format", FORMAT) != FORMAT:
        raise _Bad(f"it is not a checkpoint (format {meta.get('format')!r})")
    version = _int(meta.get("version", 1), "its layout", 1)
    if version > VERSION:
        raise _Bad(f"written by a newer dynlearn (layout {version})")
    names = meta.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _Bad("no list of parameter names")
    n = len(names)
    out = dict(meta)
    out["version"] = version
    if meta.get("n_starts") is not None:
        out["n_starts"] = _int(meta["n_starts"], "the number of starts", 1)
    if version < 2:
        out["x"] = _point(meta.get("x"), "its point", n)
        out["finished"] = bool(meta.get("finished"))
        out["start"] = _int(meta.get("start", 0), "the start")
        out["stage"] = _int(meta.get("stage", 0), "the stage")
        out["best_cost"] = _float(meta.get("best_cost", math.inf), "the best cost")
        out["counts"] = _counts(meta.get("counts", {}), "the counters")
        out["nit"] = _int(meta.get("nit", 0), "the iterations")
        out["history"] = _history(meta.get("history", []), "the history")
        if meta.get("sigma_hat") is not None:
            out["sigma_hat"] = _point(meta["sigma_hat"], "the noise levels", None)
        return out
    out["done"] = [_record(rec, n) for rec in meta.get("done", [])]
    finished = [rec["start"] for rec in out["done"]]
    if len(set(finished)) != len(finished):
        raise _Bad("a start is recorded as finished twice")
    if meta.get("start") is None:
        out["start"] = None
        return out
    out["start"] = _int(meta["start"], "the start in progress")
    if out["start"] in finished:
        raise _Bad(f"start {out['start']} is both in progress and finished")
    out["round"] = _int(meta.get("round", 0), "the round")
    out["stage"] = _int(meta.get("stage", 0), "the stage")
    out["x"] = _point(meta.get("x"), "the best point", n)
    out["stage_x0"] = _point(meta.get("stage_x0"), "the stage's starting point", n)
    out["best_cost"] = _float(meta.get("best_cost", math.inf), "the best cost")
    out["best_loss"] = _float(meta.get("best_loss", math.inf), "the best loss")
    out["best_loss_x"] = None if meta.get("best_loss_x") is None else \
        _point(meta["best_loss_x"], "the point of the best loss", n)
    out["counts"] = _counts(meta.get("counts", {}), "the counters")
    out["nit"] = _int(meta.get("nit", 0), "the iterations")
    out["history"] = _history(meta.get("history", []), "the history")
    if meta.get("sigma_hat") is not None:
        sigma = _point(meta["sigma_hat"], "the noise levels", None)
        if np.any(sigma <= 0):
            raise _Bad("the noise levels are not positive")
        out["sigma_hat"] = sigma
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise _Bad("the optimizer state is not a table")
    out["state"] = state
    return out


def resume(checkpoint: Checkpoint, tracker: Tracker, objective: FitObjective
           ) -> tuple[np.ndarray, int, int, dict | None]:
    """Restore the start in progress from ``checkpoint``.

    The tracker's best point, counters, iteration count and loss history continue from the
    checkpoint's; the objective gets the checkpoint's noise levels.

    Returns
    -------
    x : ndarray
        The point the checkpointed stage started from.
    round, stage : int
        Where the start stood: the round of noise re-estimation and the optimizer stage.
    state : dict or None
        The optimizer's state in that stage (``None``: the stage starts over from ``x``).
    """
    meta = checkpoint.meta
    tracker.counts.update({k: int(v) for k, v in meta.get("counts", {}).items()})
    tracker.nit = int(meta.get("nit", 0))
    tracker.history = [(int(a), float(b)) for a, b in meta.get("history", [])]
    best = float(meta.get("best_cost", math.inf))
    if math.isfinite(best):
        tracker.best_x, tracker.best_cost = checkpoint.x.copy(), best
    best_loss = float(meta.get("best_loss", math.inf))
    if math.isfinite(best_loss) and meta.get("best_loss_x") is not None:
        tracker.best_loss = best_loss
        tracker.best_loss_x = np.asarray(meta["best_loss_x"], dtype=float)
    if meta.get("sigma_hat") is not None:
        # (noise formulas: their levels taken at the resumed point's predictions)
        objective.set_sigma(np.asarray(meta["sigma_hat"], dtype=float), checkpoint.x)
    if checkpoint.version < 2:   # the best point and the stage only: the stage starts over
        return checkpoint.x.copy(), 0, int(meta.get("stage", 0)), None
    return (checkpoint.stage_x0.copy(), int(meta.get("round", 0)), int(meta.get("stage", 0)),
            checkpoint.state)
