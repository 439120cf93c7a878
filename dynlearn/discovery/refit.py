"""Refits of recovered terms to the data, and the pruning refit.

:class:`TermFitter` is the one refit of a recovery's terms to the data, shared by the
selection through the ODE (:mod:`~dynlearn.discovery.selection`) and the pruning refit.
:meth:`Recovery.refit <dynlearn.discovery.Recovery.refit>` (run by :func:`recover` with
``select="prune"``) is :func:`refit_recovery`: the recovered model is fitted to the data with
:func:`dynlearn.fitting.fit`, then terms are eliminated backwards, one refit at a time: the
least significant or negligible term first, then the sparser supports that the regression
met along its threshold path (:func:`path_supports`), accepted when they improve the fit's
information criterion. See :meth:`Recovery.refit <dynlearn.discovery.Recovery.refit>` for
the rules.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from dynlearn.discovery.diagnostics import DiscoveryWarning, score_table
from dynlearn.errors import DataError, DynlearnError, OptionError
from dynlearn.fitting import fit as fit_model
from dynlearn.optimizers import MultipleShooting

if TYPE_CHECKING:   # recovery.py imports this module: annotations only
    from dynlearn.discovery.recovery import Recovery

__all__ = ["refit_recovery", "path_supports", "TermFitter", "failure"]


def path_supports(rec: Recovery) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The candidate models the regression met along its threshold path.

    The regression is recomputed from the recovery's samples at every threshold of
    ``rec.path``; the refit's second step tries these sparser supports.

    Parameters
    ----------
    rec : Recovery
        From a regression (:func:`recover`, :func:`sparse_regression`,
        :func:`sindy_baseline`), or a refit of one.

    Returns
    -------
    list of (output index, support, coefficients)
        Every distinct non-empty support per output, in path order: ``support`` is a bool
        array over ``rec.terms``, ``coefficients`` the regression's values on it (zero
        elsewhere). Empty when the recovery carries no samples or optimizer.
    """
    if rec.arrays is None or rec.optimizer is None or rec.path is None:
        return []
    Theta, Z, _ = rec.arrays
    out = []
    for j, name in enumerate(rec.outputs):
        seen = set()
        thresholds = rec.path.loc[rec.path.output == name, "threshold"]
        for sup, coef in rec.optimizer.supports(Theta, Z[:, j], thresholds):
            key = sup.tobytes()
            if sup.any() and key not in seen:
                seen.add(key)
                out.append((j, sup, coef))
    return out


def _rescored(rec: Recovery) -> Recovery:
    """The same recovery with its score recomputed for its coefficients."""
    if rec.arrays is None:
        return rec
    Theta, Z, on_traj = rec.arrays
    score = score_table(Theta, Z, rec.coef, on_traj, rec.outputs, rec.thresholds,
                        rec.score["stable"].to_numpy())
    return dataclasses.replace(rec, score=score)


def failure(result) -> str:
    """Why a refit failed: a fit result's message, or the text of the error it raised."""
    return getattr(result, "message", None) or str(result)


class TermFitter:
    """Fits a recovery's terms to the data: the one refit that the pruning refit and the
    structure selection (:mod:`~dynlearn.discovery.selection`) share.

    A recovery's non-zero coefficients become free parameters (:meth:`Recovery.to_model
    <dynlearn.discovery.Recovery.to_model>`), started at their values, and the model is
    fitted with :func:`dynlearn.fitting.fit`.

    Parameters
    ----------
    data : Dataset or DataFrame
    fit_kwargs : dict
        Keyword arguments of :func:`dynlearn.fitting.fit` (the original fit's settings and
        the user's overrides).
    user_optimizer : bool
        Whether the user chose the optimizer (then it is used for every refit).
    cold, warm : callable, optional
        ``() -> Optimizer`` for refits from a regression's values (default
        ``MultipleShooting(segments=4)``) and from a previous refit (default: the fit's
        default optimizer).
    """

    def __init__(self, data, fit_kwargs: dict, user_optimizer: bool = False,
                 cold: Callable | None = None, warm: Callable | None = None):
        self.data = data
        self.kwargs = {"progress": False, **fit_kwargs}
        self.user_optimizer = user_optimizer or "optimizer" in fit_kwargs
        self.cold = cold or (lambda: MultipleShooting(segments=4))
        self.warm = warm
        self.n_fits = 0

    def fit_model(self, model, cold: bool):
        """Fit a model: by multiple shooting when ``cold``, else the fit's default.

        From the regression's values (cold) the simulation may be out of phase with the
        data: multiple shooting; from a previous refit (warm) the default
        (Levenberg-Marquardt) is faster and safer.
        """
        self.n_fits += 1
        if self.user_optimizer:
            return fit_model(model, self.data, **self.kwargs)
        default = {} if self.warm is None else {"optimizer": self.warm()}
        if not cold:
            return fit_model(model, self.data, **self.kwargs, **default)
        try:
            return fit_model(model, self.data, **self.kwargs, optimizer=self.cold())
        except DynlearnError:   # multiple shooting does not suit every problem
            return fit_model(model, self.data, **self.kwargs, **default)

    def __call__(self, rec: Recovery, cold: bool = False, restart: np.ndarray | None = None,
                 **fields):
        """``rec``'s terms fitted to the data.

        Parameters
        ----------
        rec : Recovery
            Its non-zero coefficients are the terms, started at their values.
        cold : bool
            The values come from a regression, not from a previous refit.
        restart : ndarray, optional
            Coefficients to start again from (cold) when the warm start cannot be solved.
        **fields
            Further :class:`Recovery` fields of the refitted recovery.

        Returns
        -------
        (Recovery or None, FitResult or None)
            The recovery with the refitted coefficients, their standard errors and the fit
            result (``fit``); None when no fit could be solved (or the model cannot be
            fitted at all: the exception's text is then the result).
        """
        try:
            result = self.fit_model(rec.to_model(), cold)
            if not np.isfinite(result.loss) and not cold and restart is not None:
                # the warm start cannot be solved: start the remaining terms from the
                # regression's values instead
                start = np.where(rec.coef != 0, restart, 0.0)
                result = self.fit_model(dataclasses.replace(rec, coef=start).to_model(), True)
        except DynlearnError as exc:      # e.g. nothing left to fit
            return None, str(exc)
        if not np.isfinite(result.loss):
            return None, result
        coef = np.zeros_like(rec.coef)
        se = np.full_like(rec.coef, np.nan)
        outputs = list(rec.outputs)
        names = [str(t) for t in rec.terms]
        for (o, t), name in rec.parameter_names().items():
            i, j = names.index(t), outputs.index(o)
            coef[i, j] = float(result.params.loc[name, "value"])
            se[i, j] = float(result.params.loc[name, "stderr"])
        return dataclasses.replace(rec, coef=coef, stderr=se, fit=result, **fields), result


def refit_recovery(recovery: Recovery, data=None, *, prune: bool = True, z: float = 2.0,
                   min_contribution: float | None = None, criterion: str | None = "bic",
                   max_rounds: int = 20, **fit_kwargs) -> Recovery:
    """Refit a recovery's model to the data, dropping the terms the data do not support.

    The implementation of :meth:`Recovery.refit <dynlearn.discovery.Recovery.refit>`, whose
    docstring describes the parameters, the elimination rules and the result. Its warnings
    point at the caller of ``Recovery.refit``.
    """
    data = recovery.data if data is None else data
    if data is None:
        raise DataError("refit() needs data=: this recovery did not come from a fit result")
    if not (isinstance(z, (int, float)) and z >= 0):
        raise OptionError(f"z must be a number >= 0, got {z!r}")
    if criterion not in ("bic", "aic", None):
        raise OptionError(f"criterion must be 'bic', 'aic' or None, got {criterion!r}")
    fitter = TermFitter(data, {**recovery.fit_settings, **fit_kwargs},
                        user_optimizer="optimizer" in fit_kwargs)
    cutoff = (recovery.optimizer.min_threshold if recovery.optimizer is not None else 0.01) \
        if min_contribution is None else float(min_contribution)
    regression = recovery.regression if recovery.regression is not None else recovery

    def refitted(rec, dropped, cold: bool = False):
        """rec's terms fitted to the data, or None if no fit could be solved."""
        return fitter(rec, cold=cold, restart=recovery.coef, dropped=dropped,
                      regression=regression)

    def without(rec, i, j, reason):
        coef = rec.coef.copy()
        coef[i, j] = 0.0
        entry = dict(output=rec.outputs[j], term=str(rec.terms[i]),
                     value=float(rec.coef[i, j]), stderr=float(rec.stderr[i, j]),
                     reason=reason)
        return dataclasses.replace(rec, coef=coef), rec.dropped + [entry]

    # the warnings below use stacklevel=3: refit_recovery <- Recovery.refit <- the caller
    current, result = refitted(recovery, list(recovery.dropped), cold=True)
    if current is None:
        warnings.warn(f"the refit failed ({failure(result)}); returning the regression. "
                      "Selecting through the ODE refits every structure on the regression's "
                      "path instead of this one (Python: recover(..., select='ode'), the "
                      "default; command line: dynlearn recover --select ode, the default)",
                      DiscoveryWarning, stacklevel=3)
        return recovery
    ref = recovery.hybrid_loss
    if prune and ref is not None and np.isfinite(ref) and current.fit.loss > 10 * max(
            ref, 1e-12):
        warnings.warn(f"the refitted equations fit the data far worse than the hybrid "
                      f"model (loss {current.fit.loss:.4g} against {ref:.4g}): the "
                      "recovered terms are incomplete or the refit is stuck in a local "
                      "minimum. Nothing was pruned. Try a larger library (Python: "
                      "library=dl.polynomial_library(3); command line: --library poly3), or "
                      "let the data choose among the regression's candidates (Python: "
                      "select='ode', the default; command line: --select ode, the default)",
                      DiscoveryWarning, stacklevel=3)
        prune = False
    n_dropped = 0
    while prune and n_dropped < max_rounds:
        kept = current.coef != 0
        if not kept.any():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            tval = np.where(kept, np.abs(current.coef) / current.stderr, np.inf)
        tval = np.where(np.isnan(tval), np.inf, tval)
        negligible = kept & (np.abs(current.coef) * recovery.scale < cutoff) \
            if recovery.scale is not None else np.zeros_like(kept)
        weak = (kept & (tval < z)) | negligible
        if weak.any():
            # the least significant weak term first; if the model without it cannot be
            # solved (e.g. it was holding another spurious term in check), the next one,
            # then all weak terms together
            order = [np.unravel_index(f, tval.shape) for f in
                     np.argsort(np.where(weak, tval, np.inf), axis=None)[:int(weak.sum())]]
            nxt = None
            why = np.where(negligible & (tval >= z), "negligible", "not significant")
            for i, j in order:
                trial, dropped = without(current, i, j, str(why[i, j]))
                nxt, result = refitted(trial, dropped)
                if nxt is not None:
                    break
            if nxt is None and len(order) > 1:
                trial, dropped = current, current.dropped
                for i, j in order:
                    trial, dropped = without(dataclasses.replace(trial, dropped=dropped), i, j,
                                             str(why[i, j]))
                nxt, result = refitted(trial, dropped)
            if nxt is None:
                warnings.warn(f"no refit without the weak terms could be solved "
                              f"({failure(result)}); stopping the elimination with them "
                              "kept. Selecting through the ODE compares the refits of every "
                              "structure on the regression's path (Python: select='ode', "
                              "the default; command line: --select ode, the default)",
                              DiscoveryWarning, stacklevel=3)
                break
            n_dropped += len(nxt.dropped) - len(current.dropped)
            current = nxt
            continue
        if criterion is None:
            break
        # step 2: sparser supports proposed by the regression's threshold path
        base = getattr(current.fit, criterion)
        best = None
        for j, sup, xi in path_supports(recovery):
            if not (sup.sum() < kept[:, j].sum() and np.all(kept[sup, j])):
                continue
            coef = current.coef.copy()
            coef[:, j] = xi
            gone = [dict(output=recovery.outputs[j], term=str(recovery.terms[i]),
                         value=float(current.coef[i, j]),
                         stderr=float(current.stderr[i, j]), reason=criterion)
                    for i in np.flatnonzero(kept[:, j] & ~sup)]
            nxt, _ = refitted(dataclasses.replace(current, coef=coef), current.dropped + gone,
                              cold=True)
            if nxt is not None and getattr(nxt.fit, criterion) < base and (
                    best is None or getattr(nxt.fit, criterion) <
                    getattr(best.fit, criterion)):
                best = nxt
        if best is None:
            break
        n_dropped += len(best.dropped) - len(current.dropped)
        current = best
    return _rescored(current)
