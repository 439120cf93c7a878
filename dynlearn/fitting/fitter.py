"""Fitting models to measurements: :func:`fit`.

How it works
------------
1. The dataset is matched to the model (columns named like observables are data, columns
   named like inputs drive the model, ``<obs>_sigma`` columns give noise levels).
2. The unknowns are laid out in one vector ``x`` (free physical parameters in their
   transformed coordinates, network weights, free initial states): see
   :class:`~dynlearn.core.parameters.ParameterSpace`.
3. An optimizer object (see :mod:`dynlearn.optimizers`) minimises the objective
   (:class:`~dynlearn.objective.objective.FitObjective`) from every start point
   (:mod:`dynlearn.fitting.starts`); a trial point where the solver fails is rejected and
   the optimizer backs off. The starts run through an executor
   (:func:`~dynlearn.distributed.executor.resolve_executor`): in-process, or on Dask.
4. A tracker (:mod:`dynlearn.fitting.tracker`) records every evaluation: the best point so
   far, the loss history, a progress bar, the user's callback, the time limit and a
   checkpoint file (:mod:`dynlearn.fitting.checkpoint`). A stopped fit (time limit,
   callback) returns its best point; Ctrl-C writes the checkpoint and raises
   :class:`~dynlearn.errors.FitInterrupted` (a ``KeyboardInterrupt``) carrying the best
   point; ``resume=True`` continues from the checkpoint where the fit stood.
5. The result (:class:`~dynlearn.results.result.FitResult`) reports the parameters in
   physical units with standard errors from the residual Jacobian at the optimum; it
   carries a :class:`Refitter` (the fit's settings) for refits such as profile likelihoods.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from dynlearn.core.model import HybridModel
from dynlearn.core.parameters import Parameter, ParameterSpace
from dynlearn.data.dataset import as_dataset
from dynlearn.distributed.executor import resolve_executor
from dynlearn.errors import (
    ClusterError,
    DataError,
    DynlearnError,
    FitInterrupted,
    OptionError,
    ParameterError,
)
from dynlearn.files import json_npz_paths
from dynlearn.fitting.checkpoint import read_checkpoint
from dynlearn.fitting.regularisation import (
    AUTO,
    GCV,
    check_l2,
    choose_l2,
    choose_l2_gcv,
    penalised_dof,
)
from dynlearn.fitting.starts import StartSpec, outcome_from_record, run_starts, start_points
from dynlearn.fitting.threads import blas_threads_for
from dynlearn.objective.binding import initial_states
from dynlearn.objective.losses import Loss, loss_from_name
from dynlearn.objective.objective import FitObjective, probe_method
from dynlearn.optimizers import Optimizer, Status, default_optimizer
from dynlearn.results.covariance import covariance_budget, optimum_jacobian
from dynlearn.results.result import FitResult
from dynlearn.sensitivity import Sensitivity
from dynlearn.solve import AUTO_METHOD, MethodChoice, check_method, check_options
from dynlearn.solve import deadline as solve_deadline

__all__ = ["Refitter", "fit"]


# --- the fit --------------------------------------------------------------------------------
def fit(model, data, loss: str | Loss = "ls", y0="first", optimizer: Optimizer | None = None,
        sensitivity: Sensitivity | None = None, method: str = "auto", rtol: float = 1e-6,
        atol: float = 1e-8, sigma=None, weights=None, l2: float | str | None = "gcv",
        input_kind: str | None = None, y0_init=None, n_starts: int = 1, seed: int | None = None,
        progress: bool = True, callback: Callable | None = None, checkpoint=None,
        checkpoint_interval: float = 5.0, resume: bool = False, max_time: float | None = None,
        throw: bool = False, client=None, t0=None, sigma_by: str | None = None,
        transform=None, noise_params=None, **options):
    """Fit a model's free parameters (and optionally initial states) to measurements.

    Parameters
    ----------
    model : HybridModel
        Never modified; the fitted model is ``result.model``.
    data : Dataset or DataFrame
        Columns named like observables are fitted (NaN = not measured); columns named like
        inputs drive the model; ``<obs>_sigma`` columns give noise levels.
    loss : {"ls", "gaussian", "log"} or Loss
        ``"ls"``: (weighted) least squares. ``"gaussian"``: Gaussian likelihood with the noise
        level of each observable estimated (where no sigma is given). ``"log"``: least squares
        on the log scale, the usual error model for positive counts such as populations
        (every observable's ``transform`` is ``"log"``).
    transform : str or dict, optional
        The residual transform per observable, ``{"A": "log", "B": "log10"}`` (PEtab's
        observable transformations ``"lin"``, ``"log"``, ``"log10"``; observables not named
        are ``"lin"``), or one name for every observable: residuals are ``g(model) -
        g(data)``, so a log observable has multiplicative noise. With ``loss="gaussian"``
        its noise level is estimated on its own scale (the sigma of a log observable is that
        of its log) and the reported negative log-likelihood is that of the data on their
        own scale. ``loss="log"`` is every observable on ``"log"``; a transform contradicting
        it is an error. Data of a log observable must be positive.
    y0 : "first", "estimate", array, dict
        Initial states: ``"first"`` takes them from each experiment's first row;
        ``"estimate"`` fits them per experiment (names ``y0[<state>]`` or
        ``y0[<state>]@<experiment>``); an array gives known values (the same for every
        experiment), a dict ``{experiment: array}`` per experiment, and a dict
        ``{state: value or dl.Parameter}`` fixes or frees states one by one. Initial states
        are at each experiment's start time (``t0``).
    t0 : float or dict, optional
        The experiments' start time, where the initial state is and integration starts (one
        number, or ``{experiment: number}``); it overrides the data's own
        (:attr:`Experiment.t0 <dynlearn.data.dataset.Experiment.t0>`). Default: each
        experiment's first data time. A start before the first data row needs ``y0`` given
        or ``"estimate"`` (the first row is not the state there).
    sigma_by : {None, "experiment"}, optional
        ``"experiment"`` (with ``loss="gaussian"``): a noise level per experiment for each
        observable (or named group of ``sigma``), labelled ``<name>@<experiment>`` in
        ``result.sigma``.
    optimizer : Optimizer, optional
        Default: :class:`~dynlearn.LevenbergMarquardt`, which uses the exact residual
        Jacobian (see :func:`~dynlearn.optimizers.default_optimizer`).
    sensitivity : Sensitivity, optional
        Gradient method for gradient-based optimizers (default: the adjoint; forward
        sensitivities with a stiff method and at most 100 parameters, see
        :func:`~dynlearn.sensitivity.choice.default_sensitivity`).
    method, rtol, atol : solver settings
        Any ``solve_ivp`` method (RK45 and RK23 get exact discrete derivatives), or
        ``"auto"`` (default): a cheap stiffness probe of every experiment's solve at the
        first start point (:func:`dynlearn.solve.choose_method`) chooses RK45 for a
        non-stiff problem, LSODA for a stiff or borderline one; the sensitivity follows
        the chosen method (unless given). ``result.method`` is the method used,
        ``result.method_choice`` why; the summary and report say so. A method named here
        is never overridden.
    sigma : float, str or dict, optional
        Known noise standard deviations per observable (overridden by data columns), or,
        with ``loss="gaussian"``, names of noise levels shared by observables
        (``{"x": "s", "y": "s"}``: one level ``s`` for both, estimated in closed form from
        their pooled residuals), or formulas of the observables' predictions, time ``t``
        and noise parameters (``{"x": "a + b*x"}``), whose parameters the fit estimates
        (see :mod:`dynlearn.objective.noise`). See
        :func:`~dynlearn.objective.objective.parse_sigma` and the noise section of
        docs/fitting.md.
    noise_params : dict, optional
        Starts and bounds of the noise parameters of sigma formulas: ``{"a": start}`` or
        ``{"a": (start, lower, upper)}``; default start: the spread of the data of the
        observables using it, bounds ``[1e-8 * spread, inf)``. A name given here is read
        as a formula even alone (``sigma={"x": "s"}, noise_params={"s": 0.1}``).
    weights : dict, optional
        Relative weights per observable.
    l2 : float, "gcv" or "auto"
        L2 penalty ``l2 * |w|^2`` on network weights. The default, ``"gcv"``, chooses it from
        the data for a network model (pure-physics models are not penalised): the fit with
        no penalty runs first, then the strength minimising generalised cross-validation
        over the network's effective degrees of freedom (the trace of the hat matrix from
        the residual Jacobian; it needs no noise level) is fitted, warm-started
        (:func:`~dynlearn.fitting.regularisation.choose_l2_gcv`; why this rule is the
        default, measured: docs/fitting.md). ``"auto"`` (or ``None``) chooses it by the
        discrepancy principle instead: if the unpenalised fit is below the noise level
        (known, or estimated from the data) as the diagnostics' warning judges it, the
        least penalty that brings it to the noise level. The choice is in
        ``result.config["regularisation"]`` and the summary. A number (0 included) is used
        as given.
    input_kind : {"linear", "zoh"}, optional
        How inputs are interpolated between samples (default: the dataset's choice).
    y0_init : array or dict, optional
        Starting guesses for estimated initial states that the first row does not give.
    n_starts : int
        Number of starts: the first from the model's values, the others random (log-uniform
        within bounds for positive parameters, perturbed otherwise). The best by the loss
        (for ``"gaussian"`` the likelihood with each start's own noise levels) is returned;
        ``result.starts`` lists them all.
    seed : int, optional
        Seed of the random starts.
    progress : bool
        Show the progress on stderr: the stage, its iterations out of the optimizer's
        budget, the best loss, the time left at most. A tqdm bar on a terminal or in
        Jupyter; elsewhere (a file, a log) plain lines, one per stage, one every 10 s and
        one at the end, with no carriage returns.
    callback : callable, optional
        ``callback(info)`` after every iteration with a dict (``iteration``, ``nfev``,
        ``loss``, ``names``, ``values``, ``theta``, ``y0``, ``elapsed``, ``start``);
        returning ``True`` stops the fit (best point kept; the starts not yet begun do not
        run).
    checkpoint : path, optional
        Write where the fit stands to ``<path>.json`` + ``<path>.npz`` (atomically) every
        ``checkpoint_interval`` seconds, when a start finishes, and when the fit stops, is
        interrupted or fails: the finished starts, and the start in progress with its stage,
        the optimizer's state and its best point (see :mod:`dynlearn.fitting.checkpoint`).
    resume : bool
        Continue from ``checkpoint`` if it exists (same model layout, ``n_starts`` and seed
        required): finished starts are not run again, and the start in progress continues
        its stage with the iteration budget that was left and the optimizer's state
        (L-BFGS-B restarts its memory), so the fit ends as an uninterrupted one would and its
        best loss never rises. A damaged checkpoint raises a :class:`~dynlearn.DataError`.
    max_time : float, optional
        Wall-time limit of the whole fit in seconds (all starts together; a start that would
        begin after it does not run); the best point so far is returned with
        ``success=False`` and status ``max_time``.
    throw : bool
        Raise :class:`~dynlearn.DynlearnError` when the fit fails instead of returning a result
        with ``success=False``.
    client : dask.distributed.Client or dl.Parallel, optional
        Run on Dask (see :mod:`dynlearn.distributed.dask`): with ``n_starts > 1`` every start
        is a task; with one start and several experiments, every evaluation is split over
        batches of experiments. Default: the client of an enclosing ``with dl.parallel(...)``
        block, else in-process and serial. A ``map``-like callable is also accepted for the
        starts, and so is an :class:`~dynlearn.distributed.executor.Executor`.
    **options
        Solver options (``max_step``, ``first_step``, ...).

    Returns
    -------
    FitResult
        Its :meth:`~dynlearn.results.result.FitResult.refit` fits again with these
        settings (profile likelihoods use it).

    Raises
    ------
    FitInterrupted
        Ctrl-C (a ``KeyboardInterrupt``, so a script stops): raised after the checkpoint is
        written; its ``result`` is the fit at its best point so far (``None`` when no point
        had been evaluated), its ``checkpoint`` the checkpoint's path.
    ClusterError
        The Dask scheduler was lost: its ``result`` holds the starts that had finished
        (kept in the checkpoint too), and a split fit's progress is in the checkpoint.

    Examples
    --------
    >>> result = dl.fit(model, data, loss="log", y0="estimate")      # doctest: +SKIP
    >>> result.params[["value", "stderr"]]                            # doctest: +SKIP
    """
    if not isinstance(model, HybridModel):
        raise OptionError(f"model must be a dl.HybridModel, got {type(model).__name__}")
    loss = loss_from_name(loss, transform).bind(model.observable_names)
    method = check_method(method, auto=True)
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
    l2 = check_l2(l2)
    auto_l2 = l2 in (AUTO, GCV)
    choose = choose_l2_gcv if l2 == GCV else choose_l2
    if auto_l2:        # the first fit has no penalty; the path afterwards chooses one
        l2 = 0.0
    dataset = as_dataset(data).with_start(t0)
    strategy = initial_states(y0, model, y0_init)
    bound = strategy.bind(model, dataset, input_kind)
    y0p = strategy.parameters(model, dataset, bound)
    space = ParameterSpace(model, y0p, [e.name for e in dataset])
    if space.size == 0:
        raise ParameterError("nothing to fit: every parameter is fixed and y0 is known")
    settings = dict(model=model, bound=bound, space=space, loss=loss, sigma=sigma,
                    weights=weights, l2=l2, method=method, rtol=rtol, atol=atol,
                    options=options, sensitivity=sensitivity, sigma_by=sigma_by,
                    noise_params=noise_params)
    stored = read_checkpoint(checkpoint) if resume else None   # read once, checked below
    if method == AUTO_METHOD:
        # probed once, here (a resumed fit keeps the choice its checkpoint recorded): the
        # starts, refits and workers get the chosen method
        choice = _checkpoint_choice(stored)
        if choice is None:
            choice = probe_method(model, bound, *space.unpack(space.x0), rtol, atol, options)
        settings.update(method=choice.method, method_choice=choice)
        method = choice.method
    obj = FitObjective(**settings)
    if obj.n_data == 0:
        raise DataError("the data has no measured values for the model's observables")

    executor = resolve_executor(client)
    # the time limit is one wall-clock deadline for the whole fit, shared by every start
    # (and comparable across the processes that run them)
    deadline = None if max_time is None else time.time() + float(max_time)

    starts = start_points(space, n_starts, seed)
    ckpt = _read_resumed(stored, checkpoint, space, n_starts, optimizer, obj) if resume \
        else None
    done = [outcome_from_record(rec) for rec in ckpt.done] if ckpt is not None else []
    in_progress = ckpt.start if ckpt is not None else None
    skip = {o.start for o in done}
    # progress: each start run here shows its own bar; starts fanned out as tasks show one
    # bar over the starts instead (see run_starts)
    specs = [StartSpec(start=i, x0=x0, optimizer=optimizer, progress=progress,
                       callback=callback, checkpoint=checkpoint,
                       checkpoint_interval=checkpoint_interval, max_time=max_time,
                       deadline=deadline, resume_state=ckpt if i == in_progress else None,
                       n_starts=n_starts,
                       seed=int(seed) if isinstance(seed, (int, np.integer)) else None)
             for i, x0 in enumerate(starts) if i not in skip]
    # what a refit (a profile likelihood's) passes to fit() again, besides model and data
    refitter = Refitter(dict(loss=loss, y0=y0, sensitivity=sensitivity, method=method,
                             rtol=rtol, atol=atol, sigma=sigma, sigma_by=sigma_by,
                             noise_params=noise_params, weights=weights, l2=l2,
                             input_kind=input_kind, y0_init=y0_init, **options))
    config = dict(loss=loss.name, y0=y0 if isinstance(y0, str) else "given", method=method,
                  rtol=rtol, atol=atol, l2=l2, seed=seed, n_starts=n_starts, options=options,
                  input_kind=input_kind)
    if loss.transform_spec is not None:
        config["transform"] = loss.transform_spec
    if obj.method_choice is not None:
        config["method_choice"] = obj.method_choice.to_dict()
    if sigma_by is not None or obj.sigma_names != obj.obs or obj.noise_formulas is not None:
        config.update(sigma_by=sigma_by, noise_groups=obj.noise_group_members())
    if obj.noise_formulas is not None:
        config.update(noise_formulas=dict(obj.noise_formulas.texts),
                      noise_params={k: list(v) for k, v in obj.noise_params_spec().items()})

    def result_of(outcomes, elapsed, status=None, message=None):
        """The result of the best of ``outcomes`` (with the fit's own status and message if
        given)."""
        best = min(outcomes, key=lambda o: (not np.isfinite(o.loss), o.loss))
        if status is not None:
            best = replace(best, status=status, success=status.converged)
        if message is not None:
            best = replace(best, message=message)
        if np.size(best.sigma_hat) == len(obj.sigma_hat):
            # (noise formulas: their levels at the best point's predictions)
            obj.set_sigma(best.sigma_hat, best.x if obj.noise_formulas is not None
                          and np.isfinite(best.loss) else None)
        # the result's own solves (the Jacobian at the best point, for standard errors) get
        # the fit's deadline plus a grace of a tenth of max_time (at least 1 s), not more
        grace = None if deadline is None else deadline + max(1.0, 0.1 * float(max_time))
        with solve_deadline(grace):
            best = _record_effective_dof(obj, best, outcomes, elapsed, config)
            return FitResult.from_fit(model, dataset, obj, best, outcomes, optimizer,
                                      elapsed, config, refitter=refitter)

    # a small fit runs its linear algebra on one BLAS thread (dynlearn.fitting.threads)
    with blas_threads_for(space.size):
        t0 = time.perf_counter()
        try:
            outcomes = run_starts(specs, settings, executor, done=done, checkpoint=checkpoint,
                                  names=space.names)
        except KeyboardInterrupt as exc:
            # Ctrl-C stops the whole fit: the checkpoint is written; the best point so far goes
            # up with the interrupt, which a script does not swallow
            outcomes = list(getattr(exc, "outcomes", []))
            raise _interrupted(outcomes, checkpoint, n_starts, lambda: result_of(
                outcomes, time.perf_counter() - t0, Status.INTERRUPTED,
                _interrupt_message(outcomes, checkpoint, n_starts))) from None
        except ClusterError as exc:
            # the scheduler is gone: the finished starts are kept (in the checkpoint as they
            # finished, and in the error's result), and so is a split fit's progress
            outcomes = list(getattr(exc, "outcomes", []))
            finished = [o for o in outcomes if np.isfinite(o.cost)]
            text = str(exc)
            if n_starts > 1:
                text += f"; {len(finished)} of {n_starts} starts had finished"
                if finished:
                    text += " (the error's .result holds them" + (
                        f", and the checkpoint {checkpoint}" if checkpoint else "") + ")"
            if checkpoint and os.path.exists(json_npz_paths(checkpoint)[0]):
                text += (f"; resuming from the checkpoint {checkpoint} continues the fit "
                         "(resume=True, or dynlearn fit --resume)")
            result = result_of(finished, time.perf_counter() - t0, message=(
                f"the best of the {len(finished)} of {n_starts} starts that had finished when the "
                "Dask scheduler was lost")) if finished else None
            raise ClusterError(text, exc.address, result) from None
        if auto_l2 and model.networks:
            # the L2 strength from the data: a warm-started path from the best start
            outcomes = list(outcomes)
            k = min(range(len(outcomes)), key=lambda i: (not np.isfinite(outcomes[i].loss),
                                                         outcomes[i].loss))
            try:
                chosen, best, report = choose(settings, outcomes[k], deadline=deadline,
                                              max_time=max_time, callback=callback)
            except KeyboardInterrupt:      # Ctrl-C along the path: the unpenalised fit goes up
                raise _interrupted(outcomes, checkpoint, n_starts, lambda: result_of(
                    outcomes, time.perf_counter() - t0, Status.INTERRUPTED,
                    "interrupted (Ctrl-C) while the L2 penalty was chosen; the fit with no "
                    "penalty is kept")) from None
            outcomes[k] = best
            settings["l2"] = chosen
            obj = FitObjective(**settings)
            refitter.settings["l2"] = chosen       # refits (profiles) keep the chosen penalty
            config.update(l2=chosen, regularisation=report)
        elapsed = time.perf_counter() - t0
        status = message = None
        if n_starts > 1:   # a stop ends the whole fit, whichever start is best
            if any(o.status is Status.MAX_TIME for o in outcomes):
                ran = sum(o.status is not Status.MAX_TIME or np.isfinite(o.cost) for o in outcomes)
                status, message = Status.MAX_TIME, (
                    f"stopped: max_time={max_time} s reached after {ran} of {n_starts} starts "
                    "had run (or begun); best point kept")
            elif any(o.status is Status.CALLBACK for o in outcomes):
                status, message = Status.CALLBACK, ("stopped: the callback asked to stop; best "
                                                    "point kept")
        try:
            result = result_of(outcomes, elapsed, status, message)
        except KeyboardInterrupt:      # while the result's covariance was computed
            raise FitInterrupted("interrupted after every start had finished, while the result "
                                 "was computed" + (f"; resume=True with the checkpoint "
                                                   f"{checkpoint} computes it again"
                                                   if checkpoint else ""),
                                 None, None if not checkpoint else str(checkpoint)) from None
        if throw and not result.success:
            raise DynlearnError(f"the fit failed: {result.message}")
        return result


def _record_effective_dof(obj: FitObjective, best, outcomes, elapsed: float, config: dict):
    """Record in ``config["effective_dof"]`` the effective degrees of freedom of a penalised
    network fit at its strength (the below-noise warning of the result's diagnostics divides
    by ``n - df``): those generalised cross-validation recorded for the strength it chose,
    else counted the same way from the Jacobian at the optimum
    (:func:`~dynlearn.fitting.regularisation.penalised_dof`). That Jacobian is the one the
    result needs for its standard errors, so it is handed on with ``best`` (``final``), not
    computed twice. Returns ``best``."""
    config.pop("effective_dof", None)
    config.pop("unpenalised_cost", None)
    if obj.l2 <= 0 or not obj.space.is_weight.any() or not np.isfinite(best.cost):
        return best
    reg = config.get("regularisation") or {}
    path = reg.get("path") or []
    if reg.get("l2") == obj.l2 and path and path[0].get("l2") == 0.0 \
            and np.isfinite(path[0].get("cost", math.nan)):
        # the data cost of the unpenalised fit the rule started from: the diagnostics
        # count the degrees of freedom only if the penalty cost the fit something
        config["unpenalised_cost"] = float(path[0]["cost"])
    if reg.get("rule") == "gcv" and reg.get("l2") == obj.l2 and "dof" in reg:
        config["effective_dof"] = float(reg["dof"])
        return best
    r, J, _ = optimum_jacobian(obj, best.x, best.final, covariance_budget(elapsed, outcomes))
    if J is None:
        return best
    df = penalised_dof(obj, best.x, (r, J))
    if np.isfinite(df):
        config["effective_dof"] = df
    return replace(best, final=(r, J))


def _checkpoint_choice(ckpt) -> MethodChoice | None:
    """The ``method="auto"`` choice a read checkpoint recorded (None: none, or no
    checkpoint)."""
    rec = None if ckpt is None else ckpt.meta.get("method_choice")
    return MethodChoice.from_dict(rec) if isinstance(rec, dict) and "method" in rec else None


def _read_resumed(ckpt, checkpoint, space, n_starts: int, optimizer, obj):
    """The checkpoint ``ckpt`` read from ``checkpoint`` to resume from (``None``, with a
    warning, when there is none), checked against the fit: its parameters, starts, stage,
    noise levels and optimizer state."""
    if ckpt is None:
        warnings.warn(f"resume=True but no checkpoint at {checkpoint!r}; starting afresh",
                      stacklevel=3)
        return None
    if ckpt.names != space.names:
        raise OptionError(f"the checkpoint {checkpoint!r} belongs to a fit with different "
                          "parameters; delete it or choose another path")
    if "loss" in ckpt.meta and (ckpt.meta["loss"], ckpt.meta.get("transform")) != (
            obj.loss.name, obj.loss.transform_spec):
        # (checkpoints written before transforms existed record no loss: not checked)
        raise OptionError(f"the checkpoint {checkpoint!r} belongs to a fit with "
                          f"loss={ckpt.meta['loss']!r}, transform="
                          f"{ckpt.meta.get('transform')!r}, not loss={obj.loss.name!r}, "
                          f"transform={obj.loss.transform_spec!r}; resume with the same "
                          "settings, or delete it")
    if ckpt.n_starts is not None and ckpt.n_starts != n_starts:
        raise OptionError(f"the checkpoint {checkpoint!r} belongs to a fit with "
                          f"n_starts={ckpt.n_starts}, not {n_starts}; resume with the same "
                          "n_starts (and seed), or delete it")
    if any(rec.get("sigma_hat") is not None and np.size(rec["sigma_hat"]) != np.size(obj.sigma_hat)
           for rec in ckpt.done):
        raise OptionError(f"the checkpoint {checkpoint!r} belongs to a fit with other noise "
                          f"levels (not {np.size(obj.sigma_hat)}: sigma= or sigma_by= "
                          "differ); resume with the same settings, or delete it")
    starts = [rec["start"] for rec in ckpt.done] + \
        ([] if ckpt.start is None else [ckpt.start])
    if any(not 0 <= int(k) < n_starts for k in starts):
        raise OptionError(f"the checkpoint {checkpoint!r} holds start {max(starts)}, but the "
                          f"fit has n_starts={n_starts}")
    if ckpt.start is not None:
        stages = optimizer.stages()
        stage = int(ckpt.meta.get("stage", 0))
        sigma = ckpt.meta.get("sigma_hat")
        if stage >= len(stages):
            raise OptionError(f"the checkpoint {checkpoint!r} stopped in stage {stage + 1} of "
                              f"an optimizer with more stages than {optimizer!r}; resume with "
                              "the same optimizer, or delete it")
        try:
            if sigma is not None and np.size(sigma) != np.size(obj.sigma_hat):
                raise ValueError(f"it holds {np.size(sigma)} noise levels, not "
                                 f"{np.size(obj.sigma_hat)}")
            if ckpt.version >= 2:
                stages[stage].check_state(ckpt.meta.get("state") or {}, space.size)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"the checkpoint {checkpoint} is damaged ({exc}), or belongs to a "
                            f"fit with another optimizer; start afresh without resuming "
                            "(dl.fit(..., resume=False), or dynlearn fit without --resume), or "
                            "resume with the optimizer that wrote it") from None
    return ckpt


def _interrupt_message(outcomes, checkpoint, n_starts: int) -> str:
    finished = sum(o.status is not Status.INTERRUPTED for o in outcomes)
    if any(np.isfinite(o.cost) for o in outcomes):
        text = "interrupted (Ctrl-C); best point so far kept"
    else:
        text = "interrupted (Ctrl-C) before any point was evaluated"
    if n_starts > 1:
        text += f" ({finished} of {n_starts} starts had finished)"
    if checkpoint:
        text += f"; checkpoint in {checkpoint}, resume=True continues the fit"
    return text


def _interrupted(outcomes, checkpoint, n_starts: int, make_result) -> FitInterrupted:
    """The :class:`~dynlearn.errors.FitInterrupted` to raise: with the result at the best
    point so far when some point was evaluated (a second Ctrl-C while it is computed leaves
    it out)."""
    result = None
    if any(np.isfinite(o.cost) for o in outcomes):
        try:
            result = make_result()
        except KeyboardInterrupt:
            result = None
    return FitInterrupted(_interrupt_message(outcomes, checkpoint, n_starts), result,
                          None if not checkpoint else str(checkpoint))


class Refitter:
    """Fits again with the settings of a finished fit: the refit seam of a
    :class:`~dynlearn.results.result.FitResult` (``result.refit``, profile likelihoods).

    :func:`fit` stores one in every result it returns; a result loaded from disk has none
    (the settings, e.g. a custom sensitivity object, are not saved).

    Parameters
    ----------
    settings : dict
        Keyword arguments of :func:`fit` (loss, y0, sensitivity, solver settings, sigma,
        weights, l2, input_kind, y0_init, solver options).

    Notes
    -----
    Picklable (when its settings are): profile refits send it to Dask workers.
    """

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = dict(settings)

    def __call__(self, model, data, fixed: Mapping[str, float] | None = None,
                 **overrides) -> FitResult:
        """``fit(model, data, **settings, **overrides)``.

        Parameters
        ----------
        model : HybridModel
            The model to fit (a fitted one, to warm-start from its values).
        data : Dataset
        fixed : dict, optional
            ``{parameter: value}``: hold these parameters fixed at these values.
        **overrides
            Replace stored settings or add others (``optimizer=``, ``progress=``, ...).
        """
        if fixed:
            model = model.with_params(**{name: Parameter(float(v), fixed=True)
                                         for name, v in fixed.items()})
        return fit(model, data, **{**self.settings, **overrides})

    def __repr__(self) -> str:
        return f"Refitter({sorted(self.settings)})"
