"""Losses over datasets, and their gradients.

The default loss is the sum of squared residuals over every observed value (NaN = not
observed), summed over experiments. Each experiment starts from its first data row unless an
initial state is given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .data import Dataset, Experiment, InputSignal, as_dataset
from .errors import DataError, OptionError
from .sensitivity import Adjoint, Problem, Sensitivity
from .solve import check_method, check_options, check_y0, solve_observed
from .vectorfield import VectorField

__all__ = ["loss", "loss_and_grad", "Objective", "BoundExperiment", "bind_data"]


@dataclass
class BoundExperiment:
    """An experiment matched to a model: observations as an array in observable order."""

    name: str
    t: np.ndarray
    Y: np.ndarray          # (m, n_obs), NaN where not observed
    mask: np.ndarray       # (m, n_obs) bool
    y0: np.ndarray | None  # initial state, if known
    t0: float
    inputs: InputSignal | None


def _first_row_y0(model, exp: Experiment) -> np.ndarray | None:
    idx = model.compiled.obs_state_index
    y0 = np.full(model.n_states, np.nan)
    for name, i in idx.items():
        if i is not None and name in exp.columns:
            y0[i] = exp.columns[name][0]
    return y0 if np.all(np.isfinite(y0)) else None


def bind_data(model, data, y0=None, input_kind: str = "linear") -> list[BoundExperiment]:
    """Match a dataset to a model's observables and inputs.

    Parameters
    ----------
    y0 : None, array_like or dict
        ``None``: each experiment's own ``y0`` or else its first data row. An array: the same
        initial state for every experiment. A dict: per experiment name.
    """
    data = as_dataset(data)
    obs = list(model.observable_names)
    inputs = [u.name for u in model.inputs]
    states = [s.name for s in model.states]
    out = []
    for exp in data:
        cols = set(exp.columns)
        present = [o for o in obs if o in cols]
        if not present:
            raise DataError(f"experiment '{exp.name}' has no column named like an observable of "
                            f"the model {obs}; its columns are {sorted(cols)}")
        missing_in = [u for u in inputs if u not in cols]
        if missing_in:
            raise DataError(f"experiment '{exp.name}' lacks column(s) {missing_in} for the "
                            "model's inputs")
        extra = sorted(cols - set(obs) - set(inputs))
        if extra:
            warnings.warn(f"experiment '{exp.name}': column(s) {extra} match no observable or "
                          "input of the model and are not used", stacklevel=3)
        m = exp.t.size
        Y = np.full((m, len(obs)), np.nan)
        for k, o in enumerate(obs):
            if o in cols:
                Y[:, k] = exp.columns[o]
        signal = None
        if inputs:
            signal = InputSignal(exp.t, np.column_stack([exp.columns[u] for u in inputs]),
                                 kind=input_kind, names=inputs)
        if isinstance(y0, dict):
            y = y0.get(exp.name)
        elif y0 is not None:
            y = y0
        else:
            y = exp.y0
        if y is None:
            y = _first_row_y0(model, exp)
            if y is None:
                unmeasured = [s for s in states if s not in cols or
                              not np.isfinite(exp.columns[s][0])]
                raise DataError(f"cannot take the initial state of experiment '{exp.name}' from "
                                f"its first row: state(s) {unmeasured} are not measured at "
                                f"t={exp.t[0]}. Pass y0=[...] (or estimate it in dl.fit)")
        else:
            y = check_y0(y, model.n_states, states, f" of experiment '{exp.name}'")
        out.append(BoundExperiment(exp.name, exp.t, Y, np.isfinite(Y), np.asarray(y, float),
                                   float(exp.t[0]), signal))
    return out


def squared_error(D: np.ndarray, mask: np.ndarray):
    """``obs_loss`` for the sum of squared residuals against data ``D`` (NaN ignored)."""
    D0 = np.where(mask, D, 0.0)

    def obs_loss(H):
        r = np.where(mask, H - D0, 0.0)
        return float(np.sum(r * r)), 2.0 * r
    return obs_loss


class Objective:
    """A loss over a dataset, evaluated with a chosen solver and gradient method.

    Parameters
    ----------
    model : HybridModel
    data : Dataset
    y0 : see :func:`bind_data`
    method, rtol, atol : solver settings
    sensitivity : Sensitivity, optional
        Default :class:`~dynlearn.Adjoint`.
    obs_loss_factory : callable, optional
        ``factory(bound_experiment) -> obs_loss``; default: squared error.
    **options : solver options
    """

    def __init__(self, model, data, y0=None, method: str = "RK45", rtol: float = 1e-6,
                 atol: float = 1e-8, sensitivity: Sensitivity | None = None,
                 obs_loss_factory=None, **options):
        self.model = model
        self.method = check_method(method)
        self.options = check_options(options, "loss")
        self.rtol, self.atol = rtol, atol
        if sensitivity is None:
            sensitivity = Adjoint()
        if not isinstance(sensitivity, Sensitivity):
            raise OptionError(f"sensitivity must be dl.ForwardSensitivity(), dl.Adjoint() or "
                              f"dl.FiniteDifference(), got {sensitivity!r}")
        self.sensitivity = sensitivity
        self.data = as_dataset(data) if not isinstance(data, Dataset) else data
        self.bound = bind_data(model, self.data, y0)
        factory = obs_loss_factory or (lambda b: squared_error(b.Y, b.mask))
        self.obs_losses = [factory(b) for b in self.bound]

    def problems(self, theta, y0s=None):
        theta = self.model.check_theta(theta)
        out = []
        for i, (b, ol) in enumerate(zip(self.bound, self.obs_losses)):
            vf = VectorField(self.model, theta, b.inputs)
            y0 = b.y0 if y0s is None else y0s[i]
            out.append(Problem(vf, b.t0, b.t, y0, ol, self.method, self.rtol, self.atol,
                               self.options, b.name))
        return out

    def value(self, theta=None, y0s=None) -> float:
        total = 0.0
        for p in self.problems(theta, y0s):
            Y, _ = solve_observed(p.vf, p.t0, p.t_obs, p.y0, p.method, p.rtol, p.atol, p.options,
                                  where=p.where)
            total += p.obs_loss(p.vf.observe_batch(p.t_obs, Y))[0]
        return float(total)

    def value_and_grad(self, theta=None, y0s=None, wrt_y0: bool = False):
        total, grad, gy0 = 0.0, np.zeros(self.model.n_theta), []
        for p in self.problems(theta, y0s):
            v, g, gy = self.sensitivity.loss_and_grad(p, wrt_y0)
            total += v
            grad += g
            gy0.append(gy)
        return (float(total), grad, gy0) if wrt_y0 else (float(total), grad)


def loss(model, data, theta=None, method: str = "RK45", rtol: float = 1e-6, atol: float = 1e-8,
         y0=None, **options) -> float:
    """The sum of squared residuals of a model against data: one forward solve per experiment.

    Parameters
    ----------
    model : HybridModel
    data : Dataset
    theta : array_like, optional
        Free parameters (physical units) then network weights; default ``model.theta0``.
    method : str
        Any ``solve_ivp`` method.
    rtol, atol : float
    y0 : see :func:`bind_data`
    **options : solver options (``max_step``, ``first_step``, ...)

    Returns
    -------
    float
    """
    return Objective(model, data, y0, method, rtol, atol, **options).value(theta)


def loss_and_grad(model, data, theta=None, sensitivity: Sensitivity | None = None,
                  method: str = "RK45", rtol: float = 1e-6, atol: float = 1e-8, y0=None,
                  **options) -> tuple[float, np.ndarray]:
    """The loss (as :func:`loss`) and its gradient with respect to ``theta``.

    Parameters
    ----------
    sensitivity : Sensitivity, optional
        ``dl.Adjoint()`` (default), ``dl.ForwardSensitivity()`` or ``dl.FiniteDifference()``.
    Other parameters as in :func:`loss`.

    Returns
    -------
    value : float
    grad : ndarray, shape (n_theta,)
        In physical units, in the order of ``model.theta_names``.
    """
    return Objective(model, data, y0, method, rtol, atol, sensitivity, **options).value_and_grad(theta)
