"""Fitting models to measurements: :func:`fit`.

How it works
------------
1. The dataset is matched to the model (columns named like observables are data, columns
   named like inputs drive the model, ``<obs>_sigma`` columns give noise levels).
2. The unknowns are laid out in one vector ``x`` (free physical parameters in their
   transformed coordinates, network weights, free initial states): see
   :class:`~dynlearn.parameters.ParameterSpace`.
3. An optimizer object (see :mod:`dynlearn.optimizers`) minimises the objective
   (:class:`~dynlearn.objective.FitObjective`); a trial point where the solver fails is
   rejected and the optimizer backs off.
4. A tracker records every evaluation: the best point so far, the loss history, a progress
   bar, the user's callback, the time limit and a checkpoint file. An interrupted fit
   (Ctrl-C, time limit, an error) keeps its best point; ``resume=True`` continues from the
   checkpoint.
5. The result (:class:`~dynlearn.results.FitResult`) reports the parameters in physical units
   with standard errors from the residual Jacobian at the optimum.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dynlearn.core.parameters import Parameter, ParameterSpace
from dynlearn.data.dataset import as_dataset
from dynlearn.errors import DataError, DynlearnError, OptionError, ParameterError
from dynlearn.objective.objective import LOSSES, FitObjective, Rejected, bind_data
from dynlearn.optimizers.optimizers import Optimizer, default_optimizer
from dynlearn.sensitivity import Sensitivity
from dynlearn.solve import check_method, check_options

__all__ = ["fit"]


class _Stop(Exception):
    """Raised inside an evaluation to end the fit early (time limit, callback)."""


@dataclass
class _StartOutcome:
    """The outcome of one start: picklable, so starts can run on other processes."""

    start: int
    x: np.ndarray
    cost: float
    success: bool
    message: str
    status: int
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


class Tracker:
    """Counts evaluations, keeps the best point, drives progress bar, callback, time limit
    and checkpoints."""

    def __init__(self, obj, progress: bool, callback: Callable | None, max_time: float | None,
                 checkpoint: str | None, checkpoint_interval: float, meta: dict, desc: str = "fit"):
        self.obj = obj
        self.counts = {"nfev": 0, "njev": 0, "ngev": 0, "rejected": 0}
        self.nit = 0
        self.best_x, self.best_cost = None, math.inf
        self.history: list[tuple[int, float]] = []   # (evaluation number, best cost) on improvement
        self.callback = callback
        self.t_start = time.perf_counter()
        self.deadline = None if max_time is None else self.t_start + float(max_time)
        self.checkpoint = checkpoint
        self.checkpoint_interval = checkpoint_interval
        self.last_save = time.perf_counter()
        self.meta = meta
        self.stop_reason = None
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(desc=desc, unit="eval", leave=False, dynamic_ncols=True)

    @property
    def n_evals(self) -> int:
        return self.counts["nfev"] + self.counts["njev"] + self.counts["ngev"]

    def count(self, what: str):
        self.counts[what] += 1
        if what == "rejected":
            return
        if self.bar is not None:
            self.bar.update(1)
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.stop_reason = "max_time"
            raise _Stop("time limit reached")

    def report(self, x, cost, iteration: bool = False):
        if x is not None and cost is not None and np.isfinite(cost) and cost < self.best_cost:
            self.best_x, self.best_cost = np.array(x, dtype=float), float(cost)
            self.history.append((self.n_evals, self.best_cost))
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{self.best_cost:.6g}", refresh=False)
            if self.checkpoint and time.perf_counter() - self.last_save > self.checkpoint_interval:
                self.save()
        if iteration:
            self.nit += 1
            if self.callback is not None and self.best_x is not None:
                theta, y0s = self.obj.space.unpack(self.best_x)
                info = {"iteration": self.nit, "nfev": self.n_evals, "loss": self.best_cost,
                        "x": self.best_x.copy(), "theta": theta, "y0": y0s,
                        "names": list(self.obj.space.names),
                        "values": self.obj.space.physical(self.best_x),
                        "elapsed": time.perf_counter() - self.t_start}
                if self.callback(info) is True:
                    self.stop_reason = "callback"
                    raise _Stop("the callback asked to stop")

    def save(self, **extra):
        if not self.checkpoint or self.best_x is None:
            return
        meta = dict(self.meta)
        meta.update(extra)
        meta.update(best_cost=self.best_cost, counts=self.counts, nit=self.nit,
                    names=list(self.obj.space.names), history=self.history,
                    sigma_hat=self.obj.sigma_hat.tolist(), saved=time.time())
        _write_checkpoint(self.checkpoint, meta, {"x": self.best_x})
        self.last_save = time.perf_counter()

    def close(self):
        if self.bar is not None:
            self.bar.close()


# --- checkpoints (JSON + npz, written atomically) ------------------------------------------
def _paths(path) -> tuple[str, str]:
    base = os.fspath(path)
    for ext in (".json", ".npz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base + ".json", base + ".npz"


def _write_checkpoint(path, meta: dict, arrays: dict):
    jpath, npath = _paths(path)
    os.makedirs(os.path.dirname(os.path.abspath(jpath)), exist_ok=True)
    tmp_n = npath + ".tmp.npz"
    np.savez(tmp_n, **arrays)
    os.replace(tmp_n, npath)
    tmp_j = jpath + ".tmp"
    with open(tmp_j, "w") as f:
        json.dump(_jsonable(meta), f, indent=1)
    os.replace(tmp_j, jpath)


def _read_checkpoint(path):
    jpath, npath = _paths(path)
    if not (os.path.exists(jpath) and os.path.exists(npath)):
        return None
    with open(jpath) as f:
        meta = json.load(f)
    with np.load(npath, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


# --- initial states -------------------------------------------------------------------------
def _first_row_values(model, exp) -> np.ndarray:
    """Each state's value in the experiment's first row (NaN when not measured there)."""
    idx = model.compiled.obs_state_index
    y = np.full(model.n_states, np.nan)
    for name, i in idx.items():
        if i is not None and name in exp.columns and np.isfinite(exp.columns[name][0]):
            y[i] = exp.columns[name][0]
    return y


def _y0_parameters(model, dataset, bound, y0, y0_init) -> list[list[Parameter]]:
    """Per experiment, one Parameter per state (fixed = known)."""
    states = [s.name for s in model.states]
    n = len(states)
    init = None
    if y0_init is not None:
        if isinstance(y0_init, Mapping):
            init = np.array([float(y0_init.get(s, np.nan)) for s in states])
            unknown = set(y0_init) - set(states)
            if unknown:
                raise OptionError(f"y0_init names {sorted(unknown)}, which are not states "
                                  f"{states}")
        else:
            init = np.asarray(y0_init, dtype=float)
            if init.shape != (n,):
                raise OptionError(f"y0_init must have one value per state {states}; got shape "
                                  f"{init.shape}")
    out = []
    for exp, b in zip(dataset, bound):
        first = _first_row_values(model, exp)
        if isinstance(y0, str) and y0 == "estimate":
            guess = first.copy()
            if init is not None:
                guess = np.where(np.isnan(init), guess, init)
            missing = [states[i] for i in range(n) if not np.isfinite(guess[i])]
            if missing:
                raise DataError(f"y0='estimate' needs a starting guess for state(s) {missing}, "
                                f"which are not measured in the first row of experiment "
                                f"'{exp.name}'; pass y0_init={{{missing[0]!r}: value, ...}}")
            out.append([Parameter(float(v)) for v in guess])
        elif isinstance(y0, Mapping) and set(y0) <= set(states) and y0:
            row = []
            for i, s in enumerate(states):
                if s in y0:
                    spec = y0[s]
                    p = spec if isinstance(spec, Parameter) else Parameter.coerce(
                        spec if isinstance(spec, dict) else {"value": spec, "fixed": True}, s)
                    row.append(p)
                elif np.isfinite(first[i]):
                    row.append(Parameter(float(first[i]), fixed=True))
                else:
                    raise DataError(f"y0 gives no value for state '{s}', which is not measured in "
                                    f"the first row of experiment '{exp.name}'; add it to y0")
            out.append(row)
        else:
            if b.y0 is None:  # pragma: no cover - bind_data raised already
                raise DataError(f"no initial state for experiment '{exp.name}'")
            out.append([Parameter(float(v), fixed=True) for v in b.y0])
    return out


def _bind(model, dataset, y0, input_kind):
    if isinstance(y0, str):
        if y0 not in ("first", "estimate"):
            raise OptionError(f"y0={y0!r}: use 'first', 'estimate', an array (one value per "
                              "state), a dict {experiment: array} or a dict {state: value or "
                              "dl.Parameter}")
        return bind_data(model, dataset, None, input_kind, require_y0=(y0 == "first"))
    states = {s.name for s in model.states}
    if isinstance(y0, Mapping) and y0 and set(y0) <= states:
        return bind_data(model, dataset, None, input_kind, require_y0=False)
    return bind_data(model, dataset, y0, input_kind)


# --- the fit --------------------------------------------------------------------------------
def fit(model, data, loss: str = "ls", y0="first", optimizer: Optimizer | None = None,
        sensitivity: Sensitivity | None = None, method: str = "RK45", rtol: float = 1e-6,
        atol: float = 1e-8, sigma=None, weights=None, l2: float = 0.0,
        input_kind: str | None = None, y0_init=None, n_starts: int = 1, seed: int | None = None,
        progress: bool = True, callback: Callable | None = None, checkpoint=None,
        checkpoint_interval: float = 5.0, resume: bool = False, max_time: float | None = None,
        throw: bool = False, client=None, **options):
    """Fit a model's free parameters (and optionally initial states) to measurements.

    Parameters
    ----------
    model : HybridModel
        Never modified; the fitted model is ``result.model``.
    data : Dataset or DataFrame
        Columns named like observables are fitted (NaN = not measured); columns named like
        inputs drive the model; ``<obs>_sigma`` columns give noise levels.
    loss : {"ls", "gaussian", "log"}
        ``"ls"``: (weighted) least squares. ``"gaussian"``: Gaussian likelihood with the noise
        level of each observable estimated (where no sigma is given). ``"log"``: least squares
        on the log scale, the usual error model for positive counts such as populations.
    y0 : "first", "estimate", array, dict
        Initial states: ``"first"`` takes them from each experiment's first row;
        ``"estimate"`` fits them per experiment (names ``y0[<state>]`` or
        ``y0[<state>]@<experiment>``); an array gives known values (the same for every
        experiment), a dict ``{experiment: array}`` per experiment, and a dict
        ``{state: value or dl.Parameter}`` fixes or frees states one by one.
    optimizer : Optimizer, optional
        Default: :class:`~dynlearn.LevenbergMarquardt`, which uses the exact residual
        Jacobian (see :func:`~dynlearn.optimizers.default_optimizer`).
    sensitivity : Sensitivity, optional
        Gradient method for gradient-based optimizers (default :class:`~dynlearn.Adjoint`).
    method, rtol, atol : solver settings
        Any ``solve_ivp`` method; RK45 (default) and RK23 get exact discrete derivatives.
    sigma : float or dict, optional
        Known noise standard deviations per observable (overridden by data columns).
    weights : dict, optional
        Relative weights per observable.
    l2 : float
        L2 penalty ``l2 * |w|^2`` on network weights.
    input_kind : {"linear", "zoh"}, optional
        How inputs are interpolated between samples (default: the dataset's choice).
    y0_init : array or dict, optional
        Starting guesses for estimated initial states that the first row does not give.
    n_starts : int
        Number of starts: the first from the model's values, the others random (log-uniform
        within bounds for positive parameters, perturbed otherwise). The best is returned;
        ``result.starts`` lists them all.
    seed : int, optional
        Seed of the random starts.
    progress : bool
        Show a progress bar (tqdm).
    callback : callable, optional
        ``callback(info)`` after every iteration with a dict (``iteration``, ``nfev``,
        ``loss``, ``names``, ``values``, ``theta``, ``y0``, ``elapsed``); returning ``True``
        stops the fit (best point kept).
    checkpoint : path, optional
        Write the best point to ``<path>.json`` + ``<path>.npz`` every
        ``checkpoint_interval`` seconds and when the fit ends or is interrupted.
    resume : bool
        Continue from ``checkpoint`` if it exists (same model layout required).
    max_time : float, optional
        Wall-time limit in seconds; the best point so far is returned with
        ``success=False``.
    throw : bool
        Raise :class:`~dynlearn.DynlearnError` when the fit fails instead of returning a result
        with ``success=False``.
    client : dask.distributed.Client or dl.Parallel, optional
        Run on Dask (see :mod:`dynlearn.parallel`): with ``n_starts > 1`` every start is a
        task; with one start and several experiments, every evaluation is split over batches
        of experiments. Default: the client of an enclosing ``with dl.parallel(...)`` block,
        else in-process and serial. A ``map``-like callable is also accepted for the starts.
    **options
        Solver options (``max_step``, ``first_step``, ...).

    Returns
    -------
    FitResult

    Examples
    --------
    >>> result = dl.fit(model, data, loss="log", y0="estimate")      # doctest: +SKIP
    >>> result.params[["value", "stderr"]]                            # doctest: +SKIP
    """
    from dynlearn.core.model import HybridModel
    from dynlearn.results.result import FitResult
    if not isinstance(model, HybridModel):
        raise OptionError(f"model must be a dl.HybridModel, got {type(model).__name__}")
    if loss not in LOSSES:
        raise OptionError(f"loss={loss!r}: use one of {list(LOSSES)}")
    method = check_method(method)
    options = check_options(options, "fit")
    if optimizer is None:
        optimizer = default_optimizer(model)
    if not isinstance(optimizer, Optimizer):
        raise OptionError(f"optimizer must be an optimizer object such as "
                          f"dl.LevenbergMarquardt() or dl.Staged([...]), got {optimizer!r}")
    if not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
        raise OptionError(f"n_starts must be a positive integer, got {n_starts!r}")
    if resume and not checkpoint:
        raise OptionError("resume=True needs checkpoint=<path>")
    dataset = as_dataset(data)
    bound = _bind(model, dataset, y0, input_kind)
    y0p = _y0_parameters(model, dataset, bound, y0, y0_init)
    space = ParameterSpace(model, y0p, [e.name for e in dataset])
    if space.size == 0:
        raise ParameterError("nothing to fit: every parameter is fixed and y0 is known")
    settings = dict(model=model, bound=bound, space=space, loss=loss, sigma=sigma,
                    weights=weights, l2=l2, method=method, rtol=rtol, atol=atol,
                    options=options, sensitivity=sensitivity)
    obj = FitObjective(**settings)
    if obj.n_data == 0:
        raise DataError("the data has no measured values for the model's observables")

    starts = _start_points(space, n_starts, seed)
    ckpt = None
    if resume:
        ckpt = _read_checkpoint(checkpoint)
        if ckpt is None:
            warnings.warn(f"resume=True but no checkpoint at {checkpoint!r}; starting afresh",
                          stacklevel=2)
        elif ckpt[0].get("names") != space.names:
            raise OptionError(f"the checkpoint {checkpoint!r} belongs to a fit with different "
                              "parameters; delete it or choose another path")
    specs = [dict(start=i, x0=x0, settings=settings, optimizer=optimizer,
                  progress=progress and i == 0 if client is not None else progress,
                  callback=callback, checkpoint=checkpoint if i == 0 or n_starts == 1 else None,
                  checkpoint_interval=checkpoint_interval, max_time=max_time,
                  resume_state=ckpt if i == 0 else None, n_starts=n_starts)
             for i, x0 in enumerate(starts)]
    t0 = time.perf_counter()
    outcomes = _run_starts(specs, mapper=_mapper(client))
    elapsed = time.perf_counter() - t0
    best = min(outcomes, key=lambda o: (not np.isfinite(o.cost), o.cost))
    obj.set_sigma(best.sigma_hat)
    result = FitResult.from_fit(model, dataset, obj, best, outcomes, optimizer, elapsed,
                                dict(loss=loss, y0=y0 if isinstance(y0, str) else "given",
                                     method=method, rtol=rtol, atol=atol, l2=l2, seed=seed,
                                     n_starts=n_starts, options=options,
                                     input_kind=input_kind))
    result._refit = dict(loss=loss, y0=y0, sensitivity=sensitivity, method=method, rtol=rtol,
                         atol=atol, sigma=sigma, weights=weights, l2=l2,
                         input_kind=input_kind, y0_init=y0_init, **options)
    if throw and not result.success:
        raise DynlearnError(f"the fit failed: {result.message}")
    return result


def _mapper(client):
    # Dask lives in dynlearn.distributed.dask (imported lazily: no client, no dask import)
    from dynlearn.distributed.fanned import start_mapper
    return start_mapper(client)


def _run_starts(specs: Sequence[dict], mapper=map) -> list[_StartOutcome]:
    """Run every start through ``mapper`` (``map`` serially; a Dask client's map in
    parallel). Each spec is self-contained and picklable."""
    return list(mapper(_fit_one, specs))


def _start_points(space: ParameterSpace, n_starts: int, seed) -> list[np.ndarray]:
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


def _fit_one(spec: dict) -> _StartOutcome:
    """One start: every stage of the optimizer in turn, with the Gaussian noise re-estimated
    between rounds; interruption-safe."""
    # "make_objective": dynlearn.distributed.dask fans the experiments of a start out over Dask
    obj = spec.get("make_objective", FitObjective)(**spec["settings"])
    optimizer = spec["optimizer"]
    stages = optimizer.stages()
    desc = "fit" if spec["n_starts"] == 1 else f"fit (start {spec['start'] + 1}/{spec['n_starts']})"
    tracker = Tracker(obj, spec["progress"], spec["callback"], spec["max_time"],
                      spec["checkpoint"], spec["checkpoint_interval"],
                      meta={"start": spec["start"]}, desc=desc)
    obj.tracker = tracker
    x = np.asarray(spec["x0"], dtype=float)
    first_stage = 0
    rs = spec.get("resume_state")
    if rs is not None:
        meta, arrays = rs
        x = np.asarray(arrays["x"], dtype=float)
        first_stage = int(meta.get("stage", 0))
        if meta.get("finished"):
            first_stage = len(stages)
        tracker.counts.update(meta.get("counts", {}))
        tracker.nit = int(meta.get("nit", 0))
        tracker.history = [tuple(h) for h in meta.get("history", [])]
        if meta.get("sigma_hat") is not None:
            obj.set_sigma(np.asarray(meta["sigma_hat"], dtype=float))
    message, success, status = "", False, 0
    stage = first_stage
    try:
        if first_stage >= len(stages):  # a finished checkpoint: re-evaluate only
            tracker.report(x, obj.cost(x))
            message, success = "resumed from a finished checkpoint", True
        rounds = 8 if obj.loss == "gaussian" and obj.estimated.any() else 1
        for rnd in range(rounds):
            if obj.loss == "gaussian" and obj.estimated.any():
                if rnd == 0 and rs is None:
                    obj.set_sigma(obj.estimate_sigma(x))
                tracker.best_x, tracker.best_cost = None, math.inf  # cost scale changed
            for stage in range(first_stage if rnd == 0 else 0, len(stages)):
                tracker.meta["stage"] = stage
                out = stages[stage].run(obj, x)
                if tracker.best_x is not None and tracker.best_cost <= out.cost:
                    x = tracker.best_x.copy()
                else:
                    x = np.asarray(out.x, dtype=float)
                message, success = out.message, out.success
                if not np.isfinite(out.cost) and tracker.best_x is None:
                    break
            if rounds > 1:
                new = obj.estimate_sigma(x)
                change = np.max(np.abs(new - obj.sigma_hat) / obj.sigma_hat)
                obj.set_sigma(new)
                tracker.best_x, tracker.best_cost = None, math.inf
                if change < 1e-3:
                    break
        cost = _safe_cost(obj, x)
        tracker.report(x, cost)
        tracker.save(stage=len(stages), finished=True)
    except _Stop as exc:
        x, cost = _best_or(tracker, x)
        success, status = False, 2
        message = (f"stopped: max_time={spec['max_time']} s reached; best point kept"
                   if tracker.stop_reason == "max_time" else f"stopped: {exc}; best point kept")
        tracker.save(stage=stage)
    except KeyboardInterrupt:
        x, cost = _best_or(tracker, x)
        success, status = False, 3
        message = "interrupted (KeyboardInterrupt); best point kept" + (
            f", checkpoint in {spec['checkpoint']}" if spec["checkpoint"] else "")
        tracker.save(stage=stage)
    except Exception:
        tracker.save(stage=stage)  # never lose progress, then let the error surface
        tracker.close()
        raise
    finally:
        tracker.close()
    if not np.isfinite(cost):
        success, status = False, 1
    return _StartOutcome(spec["start"], np.asarray(x), float(cost), bool(success), message,
                         status, tracker.counts["nfev"], tracker.counts["njev"],
                         tracker.counts["ngev"], tracker.nit, list(tracker.history),
                         obj.sigma_hat.copy(), time.perf_counter() - tracker.t_start,
                         np.asarray(spec["x0"]), tracker.counts["rejected"],
                         obj.last_system(x) if spec["n_starts"] == 1 else None)


def _safe_cost(obj, x) -> float:
    try:
        return obj.cost(x)
    except Rejected:
        return math.inf


def _best_or(tracker, x):
    if tracker.best_x is not None:
        return tracker.best_x.copy(), tracker.best_cost
    return x, math.inf
