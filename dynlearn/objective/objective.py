"""Losses over datasets, and their gradients.

The default loss is the sum of squared residuals over every observed value (NaN = not
observed), summed over experiments. Each experiment starts from its first data row unless an
initial state is given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from dynlearn.core.vectorfield import VectorField
from dynlearn.data.dataset import Dataset, Experiment, InputSignal, as_dataset
from dynlearn.errors import DataError, OptionError, ParameterError, SolveError
from dynlearn.sensitivity import Adjoint, ForwardSensitivity, Problem, Sensitivity
from dynlearn.sensitivity.discrete import DISCRETE_METHODS, discrete_state_jacobian
from dynlearn.solve import check_method, check_options, check_y0, solve_observed

__all__ = [
    "LOSSES",
    "BoundExperiment",
    "FitObjective",
    "Objective",
    "Rejected",
    "bind_data",
    "discrete_observable_jacobian",
    "loss",
    "loss_and_grad",
]


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
    sigma: np.ndarray | None = None   # (m, n_obs) from `<obs>_sigma` columns, NaN if none


def _first_row_y0(model, exp: Experiment) -> np.ndarray | None:
    idx = model.compiled.obs_state_index
    y0 = np.full(model.n_states, np.nan)
    for name, i in idx.items():
        if i is not None and name in exp.columns:
            y0[i] = exp.columns[name][0]
    return y0 if np.all(np.isfinite(y0)) else None


def bind_data(model, data, y0=None, input_kind: str | None = None,
              require_y0: bool = True) -> list[BoundExperiment]:
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
        sig_cols = {f"{o}_sigma" for o in obs}
        extra = sorted(cols - set(obs) - set(inputs) - sig_cols)
        if extra:
            warnings.warn(f"experiment '{exp.name}': column(s) {extra} match no observable or "
                          "input of the model and are not used", stacklevel=3)
        m = exp.t.size
        Y = np.full((m, len(obs)), np.nan)
        for k, o in enumerate(obs):
            if o in cols:
                Y[:, k] = exp.columns[o]
        S = np.full((m, len(obs)), np.nan)
        for k, o in enumerate(obs):
            if f"{o}_sigma" in cols:
                S[:, k] = exp.columns[f"{o}_sigma"]
        signal = None
        if inputs:
            kind = input_kind or exp.meta.get("input_kind", "linear")
            signal = InputSignal(exp.t, np.column_stack([exp.columns[u] for u in inputs]),
                                 kind=kind, names=inputs)
        if isinstance(y0, dict):
            y = y0.get(exp.name)
        elif y0 is not None:
            y = y0
        else:
            y = exp.y0
        if y is None:
            y = _first_row_y0(model, exp)
            if y is None and not require_y0:
                pass
            elif y is None:
                unmeasured = [s for s in states if s not in cols or
                              not np.isfinite(exp.columns[s][0])]
                raise DataError(f"cannot take the initial state of experiment '{exp.name}' from "
                                f"its first row: state(s) {unmeasured} are not measured at "
                                f"t={exp.t[0]}. Pass y0=[...] (or estimate it in dl.fit)")
        else:
            y = check_y0(y, model.n_states, states, f" of experiment '{exp.name}'")
        out.append(BoundExperiment(exp.name, exp.t, Y, np.isfinite(Y),
                                   None if y is None else np.asarray(y, float),
                                   float(exp.t[0]), signal, S))
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
    input_kind : {"linear", "zoh"}, optional
        How inputs are interpolated between samples (default: the dataset's setting, else
        linear). With ``"zoh"`` the solvers restart at every input jump.
    **options : solver options
    """

    def __init__(self, model, data, y0=None, method: str = "RK45", rtol: float = 1e-6,
                 atol: float = 1e-8, sensitivity: Sensitivity | None = None,
                 obs_loss_factory=None, input_kind: str | None = None, **options):
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
        self.bound = bind_data(model, self.data, y0, input_kind)
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
    obj = Objective(model, data, y0, method, rtol, atol, sensitivity, **options)
    return obj.value_and_grad(theta)


# --- residual Jacobians ------------------------------------------------------------------
def discrete_observable_jacobian(prob: Problem, wrt_y0: bool = False):
    """Observables and their exact Jacobian for the discrete RK45/RK23 solve.

    See :func:`discrete_state_jacobian`; this maps its result through the observables.

    Returns
    -------
    H : ndarray, shape (m, n_obs)
    dH : ndarray, shape (m, n_obs, q)
        ``q = n_theta (+ n when wrt_y0)``.
    """
    Y, S = discrete_state_jacobian(prob, wrt_y0)
    return observe_with_jacobian(prob.vf, prob.t_obs, Y, S)


def observe_with_jacobian(vf: VectorField, t, Y, S):
    """Observables and ``d observables / d[theta, y0]`` from states and their sensitivities."""
    H, Hy, Hp = vf.observe_batch(t, Y, derivatives=True)
    dH = Hy @ S
    if vf.n_free:
        dH[:, :, :vf.n_free] += Hp
    return H, dH


# --- the objective of a fit ---------------------------------------------------------------
LOSSES = ("ls", "gaussian", "log")


class Rejected(Exception):
    """A trial point at which the residuals cannot be computed (solver failure, a
    non-positive prediction under the log loss). Optimizers reject the point and back off."""


class LeastSquaresProblem:
    """Residuals and their Jacobian at ``x``, with a memory of the last point.

    :meth:`system` gives what a Gauss-Newton-type step needs: ``(r, A, b)`` with
    ``A^T A = J^T J``, ``A^T b = J^T r`` and ``|b + A s|^2 = |r + J s|^2 - c`` for every step
    ``s`` (``c`` constant). By default that is ``(r, J, r)``; an objective evaluated in
    pieces (on Dask) returns the triangular factor of a QR decomposition of ``[J r]``
    instead, which is far smaller than ``J``.

    An optimizer asks again for what it already has (the cost at the accepted trial point,
    the Jacobian there for the covariance), and each of those is a solve of every
    experiment: the last evaluation is remembered. Arrays handed out are read-only, so
    the remembered ones cannot change behind the memory's back. Subclasses define
    ``_residuals(x)``, ``_jacobian(x) -> (r, J)`` and ``_count(kind)`` (and may define
    ``_system``), and call :meth:`forget` when anything but ``x`` changes what they compute.
    """

    _memo = None   # (x, residuals, A or None, b or None); A is the Jacobian when b is r

    def forget(self) -> None:
        self._memo = None

    def _recall(self, x, need: str):
        """The memory at ``x`` if it holds what ``need`` asks: "r", "system" or "J"."""
        m = self._memo
        if m is None or not np.array_equal(m[0], x):
            return None
        if need == "system" and m[2] is None or need == "J" and m[3] is not m[1]:
            return None
        return m

    def _remember(self, x, r, A=None, b=None):
        for a in (r, A, b):
            if a is not None:
                a.setflags(write=False)
        self._memo = (np.array(x, dtype=float), r, A, b)

    def residuals(self, x) -> np.ndarray:
        """All residuals at ``x``; raises :class:`Rejected`."""
        m = self._recall(x, "r")
        if m is not None:
            return m[1]
        r = self._evaluated("nfev", self._residuals, x)
        self._remember(x, r)
        return r

    def jacobian(self, x):
        """``(residuals, d residuals / d x)``; raises :class:`Rejected`."""
        m = self._recall(x, "J")
        if m is not None:
            return m[1], m[2]
        r, J = self._evaluated("njev", self._jacobian, x)
        self._remember(x, r, J, r)
        return r, J

    def system(self, x):
        """``(r, A, b)`` at ``x`` (see the class notes); raises :class:`Rejected`."""
        m = self._recall(x, "system")
        if m is not None:
            return m[1], m[2], m[3]
        r, A, b = self._evaluated("njev", self._system, x)
        self._remember(x, r, A, b)
        return r, A, b

    def _system(self, x):
        r, J = self._jacobian(x)
        return r, J, r

    def last_system(self, x):
        """The remembered ``(residuals, A)`` at ``x`` (``A^T A = J^T J``), or ``None``."""
        m = self._recall(x, "system")
        return None if m is None else (m[1], m[2])

    def _evaluated(self, kind: str, f, x):
        self._count(kind)
        try:
            return f(x)
        except Rejected:
            self._count("rejected")
            raise


class FitObjective(LeastSquaresProblem):
    """Residuals, Jacobians and gradients of a fit, in the optimizer's coordinates ``x``.

    The residual of observation ``i`` of observable ``k`` is

    .. math:: r_{ik} = \\sqrt{w_k}\\,\\frac{g(h_{ik}) - g(d_{ik})}{\\sigma_{ik}},

    with ``g`` the identity (``loss="ls"``, ``"gaussian"``) or ``log`` (``loss="log"``),
    ``sigma`` from ``<obs>_sigma`` data columns or the ``sigma`` argument (default 1; for
    ``"gaussian"``, estimated per observable), ``w`` optional weights. Network weights get an
    L2 penalty ``l2 * |w|^2``, added as extra residuals ``sqrt(l2) w`` so least-squares
    optimizers see it. ``cost = sum r^2``; the Gaussian loss adds ``2 sum log sigma`` to make
    it ``2 x`` the negative log-likelihood up to a constant.

    Parameters
    ----------
    model : HybridModel
    bound : list of BoundExperiment
    space : ParameterSpace
    loss : {"ls", "gaussian", "log"}
    sigma : None, float or dict observable -> float
    weights : None or dict observable -> float
    l2 : float
    method, rtol, atol, options : solver settings
    sensitivity : Sensitivity, optional
        Gradient method of :meth:`cost_and_grad` (default :class:`Adjoint`).
    """

    def __init__(self, model, bound, space, loss: str = "ls", sigma=None, weights=None,
                 l2: float = 0.0, method: str = "RK45", rtol: float = 1e-6,
                 atol: float = 1e-8, options: dict | None = None,
                 sensitivity: Sensitivity | None = None):
        if loss not in LOSSES:
            raise OptionError(f"loss={loss!r}: use one of {list(LOSSES)}")
        self.model, self.bound, self.space, self.loss = model, bound, space, loss
        self.method, self.rtol, self.atol = method, rtol, atol
        self.options = dict(options or {})
        # the discrete Jacobian costs 1.1-2 forward solves; forward sensitivities far more
        self.cheap_jacobian = method in DISCRETE_METHODS
        self.sensitivity = sensitivity if sensitivity is not None else Adjoint()
        self.l2 = float(l2)
        if self.l2 < 0:
            raise OptionError(f"l2 must be >= 0, got {l2}")
        obs = list(model.observable_names)
        self.obs = obs
        no = len(obs)
        fixed_sigma = _per_observable(sigma, obs, "sigma")
        w = _per_observable(weights, obs, "weights")
        w = np.where(np.isnan(w), 1.0, w)
        if np.any(w < 0):
            raise OptionError("weights must be >= 0")
        self.weights = w
        # per experiment: known sigma where given (data column, else the argument)
        self.known = []
        for b in bound:
            S = b.sigma if b.sigma is not None else np.full(b.Y.shape, np.nan)
            S = np.where(np.isnan(S), fixed_sigma[None, :], S)
            if loss == "log":
                bad = b.mask & (b.Y <= 0)
                if bad.any():
                    i, k = np.argwhere(bad)[0]
                    raise DataError(f"loss='log' needs positive data; experiment '{b.name}' has "
                                    f"{obs[k]}={b.Y[i, k]} at t={b.t[i]} (row {i + 1}). Use "
                                    "loss='ls', or drop/blank that value")
            self.known.append(S)
        self.has_known_sigma = any(np.isfinite(S[b.mask]).any() for S, b in
                                   zip(self.known, bound))
        # observables whose sigma is estimated (gaussian) and the current estimate
        self.estimated = np.zeros(no, dtype=bool)
        if loss == "gaussian":
            for S, b in zip(self.known, bound):
                self.estimated |= (b.mask & np.isnan(S)).any(axis=0)
        self.sigma_hat = np.ones(no)
        self.n_data = int(sum(b.mask.sum() for b in bound))
        self.n_reg = int(space.is_weight.sum()) if self.l2 > 0 else 0
        self._refresh_scales()
        # evaluation bookkeeping (see Tracker in dynlearn.fitting.fitter)
        self.tracker = None

    # --- scales --------------------------------------------------------------------------
    def _refresh_scales(self):
        self.scales = []
        for S in self.known:
            sig = np.where(np.isnan(S), self.sigma_hat[None, :], S)
            self.scales.append(np.sqrt(self.weights)[None, :] / sig)

    def set_sigma(self, sigma_hat):
        self.sigma_hat = np.asarray(sigma_hat, dtype=float)
        self._refresh_scales()
        self.forget()

    def estimate_sigma(self, x) -> np.ndarray:
        """Maximum-likelihood noise levels of the estimated observables at ``x``:
        ``sigma_k^2 = SSR_k / n_k`` on the unscaled residuals."""
        ssr, cnt = self._sigma_stats(x)
        out = self.sigma_hat.copy()
        ok = self.estimated & (cnt > 0)
        out[ok] = np.sqrt(np.maximum(ssr[ok] / cnt[ok], 1e-300))
        return out

    def _sigma_stats(self, x):
        """Per observable: the weighted sum of squared unscaled residuals over the data
        whose noise is estimated, and how many such data there are."""
        ssr = np.zeros(len(self.obs))
        cnt = np.zeros(len(self.obs))
        theta, y0s = self.space.unpack(x)
        for b, S, y0 in zip(self.bound, self.known, y0s):
            H = self._observe(theta, b, y0)
            free = b.mask & np.isnan(S)
            d = np.where(free, self._g(H, b) - self._g(np.where(b.mask, b.Y, 1.0), b), 0.0)
            ssr += (d * d).sum(axis=0) * self.weights
            cnt += free.sum(axis=0)
        return ssr, cnt

    def _g(self, H, b):
        if self.loss != "log":
            return H
        if np.any(H[b.mask] <= 0):
            raise Rejected("non-positive prediction under loss='log'")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.where(b.mask, H, 1.0))

    # --- model evaluations ----------------------------------------------------------------
    def _problem(self, vf, b, y0):
        if y0 is None or not np.all(np.isfinite(y0)):
            raise Rejected("initial state not finite")
        return Problem(vf, b.t0, b.t, y0, None, self.method, self.rtol, self.atol,
                       self.options, b.name)

    def _observe(self, theta, b, y0):
        try:
            vf = VectorField(self.model, theta, b.inputs)
            p = self._problem(vf, b, y0)
            with np.errstate(all="ignore"):
                Yh, _ = solve_observed(vf, p.t0, p.t_obs, p.y0, p.method, p.rtol, p.atol,
                                       p.options, where=p.where)
                H = vf.observe_batch(p.t_obs, Yh)
        except (SolveError, ParameterError) as exc:
            raise Rejected(str(exc)) from None
        if not np.all(np.isfinite(H[b.mask])):
            raise Rejected("non-finite prediction")
        return H

    def _observe_jac(self, theta, b, y0):
        try:
            vf = VectorField(self.model, theta, b.inputs)
            p = self._problem(vf, b, y0)
            with np.errstate(all="ignore"):
                if self.method in DISCRETE_METHODS:
                    H, dH = discrete_observable_jacobian(p, wrt_y0=True)
                else:
                    fs = self.sensitivity if isinstance(self.sensitivity, ForwardSensitivity) \
                        else ForwardSensitivity()
                    H, dH = fs.observable_jacobian(p, wrt_y0=True)
        except (SolveError, ParameterError) as exc:
            raise Rejected(str(exc)) from None
        if not (np.all(np.isfinite(H[b.mask])) and np.all(np.isfinite(dH[b.mask]))):
            raise Rejected("non-finite prediction or sensitivity")
        return H, dH

    # --- residuals ------------------------------------------------------------------------
    @property
    def n_residuals(self) -> int:
        return self.n_data + self.n_reg

    def _reg(self, x):
        return np.sqrt(self.l2) * x[self.space.is_weight] if self.n_reg else np.zeros(0)

    def _residuals(self, x) -> np.ndarray:
        theta, y0s = self.space.unpack(x)
        out = []
        for b, sc, y0 in zip(self.bound, self.scales, y0s):
            H = self._observe(theta, b, y0)
            out.append(((self._g(H, b) - self._g(np.where(b.mask, b.Y, 1.0), b)) * sc)[b.mask])
        out.append(self._reg(x))
        return np.concatenate(out)

    def _jacobian(self, x):
        sp_ = self.space
        theta, y0s = sp_.unpack(x)
        dphys = sp_.dphysical(x)
        P = sp_.n_theta
        rs, Js = [], []
        for b, sc, y0, idx in zip(self.bound, self.scales, y0s, sp_.y0_index):
            H, dH = self._observe_jac(theta, b, y0)
            gH = self._g(H, b)
            r = ((gH - self._g(np.where(b.mask, b.Y, 1.0), b)) * sc)[b.mask]
            fac = sc / np.where(b.mask, H, 1.0) if self.loss == "log" else sc
            dR = (dH * fac[:, :, None])[b.mask]                   # (n_res, n_theta + n)
            J = np.zeros((r.size, sp_.size))
            J[:, :P] = dR[:, :P]
            for i, k in idx:
                J[:, k] = dR[:, P + i]
            rs.append(r)
            Js.append(J)
        rs.append(self._reg(x))
        J = np.vstack([np.vstack(Js) * dphys[None, :], self._reg_jacobian(x)])
        return np.concatenate(rs), J

    def _reg_jacobian(self, x) -> np.ndarray:
        """Derivatives of the L2 residuals :meth:`_reg` in ``x``: ``(n_reg, size)``."""
        sp_ = self.space
        Jr = np.zeros((self.n_reg, sp_.size))
        if self.n_reg:        # (no rows without an L2 term, whatever the weights)
            Jr[np.arange(self.n_reg), np.flatnonzero(sp_.is_weight)] = (
                np.sqrt(self.l2) * sp_.dphysical(x)[sp_.is_weight])
        return Jr

    def penalty(self) -> float:
        """``2 sum log sigma`` over the data with estimated noise (Gaussian loss)."""
        if self.loss != "gaussian":
            return 0.0
        tot = 0.0
        for b, S in zip(self.bound, self.known):
            sig = np.where(np.isnan(S), self.sigma_hat[None, :], S)
            tot += 2.0 * np.log(sig[b.mask]).sum()
        return float(tot)

    def cost(self, x) -> float:
        r = self.residuals(x)
        return float(r @ r)

    def cost_and_grad(self, x):
        """``(sum r^2, gradient in x)`` through the chosen sensitivity (adjoint by default)."""
        self._count("ngev")
        try:
            return self._cost_and_grad(x)
        except Rejected:
            self._count("rejected")
            raise

    def _cost_and_grad(self, x):
        sp_ = self.space
        theta, y0s = sp_.unpack(x)
        P = sp_.n_theta
        total = 0.0
        g = np.zeros(sp_.size)
        for b, sc, y0, idx in zip(self.bound, self.scales, y0s, sp_.y0_index):
            D = np.where(b.mask, b.Y, 1.0)
            gD = self._g(D, b)

            def obs_loss(H, b=b, sc=sc, gD=gD):
                if self.loss == "log" and np.any(H[b.mask] <= 0):
                    raise Rejected("non-positive prediction under loss='log'")
                with np.errstate(divide="ignore", invalid="ignore"):
                    gH = np.log(np.where(b.mask, H, 1.0)) if self.loss == "log" else H
                r = np.where(b.mask, (gH - gD) * sc, 0.0)
                dr = 2.0 * r * sc
                if self.loss == "log":
                    dr = dr / np.where(b.mask, H, 1.0)
                return float(np.sum(r * r)), dr
            try:
                vf = VectorField(self.model, theta, b.inputs)
                p = self._problem(vf, b, y0)
                p.obs_loss = obs_loss
                with np.errstate(all="ignore"):
                    v, gt, gy = self.sensitivity.loss_and_grad(p, wrt_y0=bool(idx))
            except (SolveError, ParameterError) as exc:
                raise Rejected(str(exc)) from None
            if not (np.isfinite(v) and np.all(np.isfinite(gt))):
                raise Rejected("non-finite loss or gradient")
            total += v
            g[:P] += gt
            for i, k in idx:
                g[k] += gy[i]
        if self.n_reg:
            w = x[sp_.is_weight]
            total += self.l2 * float(w @ w)
            g[sp_.is_weight] += 2.0 * self.l2 * w
        g = g * sp_.dphysical(x)
        return float(total), g

    def _count(self, what: str):
        if self.tracker is not None:
            self.tracker.count(what)

    # --- progress reporting (delegated to the fit's tracker) ------------------------------
    def report(self, x, cost, iteration: bool = False):
        """Tell the tracker about an evaluated point (``x=None``: an iteration ended)."""
        if self.tracker is not None:
            self.tracker.report(x, cost, iteration)
        elif x is not None and cost is not None and cost < self._best[1]:
            self._best = (np.array(x), float(cost))

    _best = (None, np.inf)

    @property
    def best_x(self):
        return self.tracker.best_x if self.tracker is not None else self._best[0]

    @property
    def best_cost(self) -> float:
        return self.tracker.best_cost if self.tracker is not None else self._best[1]


def _per_observable(spec, obs, what: str) -> np.ndarray:
    """A value per observable (NaN = not given) from None, a number or a dict."""
    out = np.full(len(obs), np.nan)
    if spec is None:
        return out
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in obs]
        if unknown:
            raise OptionError(f"{what} names {unknown}, which are not observables; observables "
                              f"are {obs}")
        for k, v in spec.items():
            out[obs.index(k)] = float(v)
    else:
        try:
            out[:] = float(spec)
        except (TypeError, ValueError):
            raise OptionError(f"{what} must be a number or a dict {{observable: value}}, got "
                              f"{spec!r}") from None
    if what == "sigma" and np.any(out[np.isfinite(out)] <= 0):
        raise OptionError(f"sigma must be positive, got {spec!r}")
    return out
