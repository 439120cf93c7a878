"""Noise levels given as formulas of predictions, time and estimated noise parameters.

With ``loss="gaussian"``, ``sigma={"x": "a + b*x"}`` makes the noise level of each value of
observable ``x`` the formula evaluated at that value's prediction ``x`` (any observable's
prediction may appear), its time ``t`` and the noise parameters (every other name: here
``a`` and ``b``), which the fit estimates. The same parameter in several formulas is one
parameter (``sigma={"x": "s0 + s1*x", "y": "s0 + s1*y"}``).

How they are estimated
----------------------
The fit alternates, as for the closed-form noise groups (:data:`dynlearn.fitting.starts.
NOISE_ROUNDS`): with the predictions ``h`` fixed, a noise round minimises the Gaussian
negative log-likelihood of the formula observables' values,

.. math:: \\sum_i w_i\\,d_i^2 / (2\\sigma_i(p)^2) + \\log\\sigma_i(p),
          \\quad d_i = g(h_i) - g(y_i),

over the noise parameters ``p`` (bounded L-BFGS-B with its analytic gradient; no solve);
between rounds the model's optimizer minimises the weighted sum of squares with every
``sigma_i`` held at its value from the last round (iteratively reweighted least squares).
The optimizer does not see the dependence of ``sigma`` on the predictions
(``d r / d h`` lacks ``-r/sigma * d sigma/d h``, and ``sum log sigma`` is not in its
objective), so the fixed point is close to, but not exactly, the joint likelihood
optimum. The fit then ends with a joint optimisation of the exact likelihood
(:func:`dynlearn.fitting.starts.polish_noise_formulas`, through
:meth:`dynlearn.objective.objective.FitObjective.exact_loss_and_grad`). The loss reported
at the end is the exact negative log-likelihood at the final point (noise parameters
optimal for its predictions).

Their standard errors come from the Fisher information of the model's coordinates and the
noise parameters together, which needs the levels' derivatives in the predictions
(:meth:`NoiseFormulas.sigma_jacobian`) and in the noise parameters
(:meth:`NoiseFormulas.sigma_param_jacobian`); see
:func:`dynlearn.results.covariance.noise_fisher_factor`.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

import numpy as np
import sympy as sp
from scipy.optimize import minimize

from dynlearn.core.expressions import CONSTANTS, FUNCTIONS, parse_expression
from dynlearn.errors import ModelError, OptionError

__all__ = ["NoiseFormulas", "is_noise_formula", "split_noise_formulas"]

#: the name of time in a noise formula
TIME = "t"


def is_noise_formula(spec, noise_params) -> bool:
    """Whether the ``sigma=`` entry ``spec`` is a noise formula: a string that is not a
    plain name, or a name given in ``noise_params`` (a plain name alone is a noise group,
    estimated in closed form)."""
    if not isinstance(spec, str):
        return False
    text = spec.strip()
    return not text.isidentifier() or text in (noise_params or {})


def split_noise_formulas(sigma, obs, noise_params) -> tuple[dict, object]:
    """``sigma=`` split into ``({observable: formula text}, the rest of sigma)``."""
    if isinstance(sigma, str) and is_noise_formula(sigma, noise_params):
        return {o: sigma.strip() for o in obs}, None
    if not isinstance(sigma, dict):
        return {}, sigma
    formulas = {k: v.strip() for k, v in sigma.items() if is_noise_formula(v, noise_params)}
    unknown = [k for k in formulas if k not in obs]
    if unknown:
        raise OptionError(f"sigma names {unknown}, which are not observables; observables are "
                          f"{obs}")
    rest = {k: v for k, v in sigma.items() if k not in formulas}
    return formulas, (rest or None)


def _names_in(text: str, where: str) -> list[str]:
    """The identifiers of ``text`` other than functions and constants (the syntax tree is
    only read; the expression parser then refuses anything but arithmetic)."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise OptionError(f"{where}: {exc.msg} in {text!r}") from None
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in FUNCTIONS \
                and node.id not in CONSTANTS and node.id not in out:
            out.append(node.id)
    return out


def _check_param_spec(name, spec, spread) -> tuple[float, float, float]:
    """``(start, lower, upper)`` of noise parameter ``name`` from its ``noise_params``
    entry (None, a start, or ``(start, lower, upper)``)."""
    # a level-like parameter stays positive by default: a level of exactly 0 makes the
    # likelihood infinite (bounded L-BFGS-B would step onto it)
    lower, upper, start = 1e-8 * spread, math.inf, spread
    if spec is not None:
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            start = float(spec)
        elif isinstance(spec, (tuple, list)) and len(spec) == 3:
            try:
                start, lower, upper = (float(v) if v is not None else d for v, d in
                                       zip(spec, (start, -math.inf, math.inf)))
            except (TypeError, ValueError):
                raise OptionError(f"noise_params[{name!r}]={spec!r}: give numbers "
                                  "(start, lower, upper)") from None
        else:
            raise OptionError(f"noise_params[{name!r}]={spec!r}: give a start value or "
                              "(start, lower, upper)")
    if not (np.isfinite(start) and lower <= start <= upper and lower < upper):
        raise OptionError(f"noise_params[{name!r}]: the start {start:g} must be finite and "
                          f"within its bounds [{lower:g}, {upper:g}] (lower < upper)")
    return start, lower, upper


@dataclass
class _Formula:
    observable: int          # the column whose noise it gives
    text: str
    f: object                # f(H columns..., t, params...) -> sigma
    df: list                 # derivatives in each of the formula's own params
    params: list[int]        # indices into NoiseFormulas.names
    dh: list                 # (column, derivative) in each prediction the formula reads


class NoiseFormulas:
    """The noise formulas of a fit and their parameters.

    Parameters
    ----------
    formulas : dict observable -> str
        The formula of each observable that has one.
    obs : list of str
        The observables (in column order).
    reserved : dict name -> what
        Names a formula may not use, with what they are (model parameters, states,
        inputs): a noise formula reads predictions, not states.
    noise_params : dict name -> start or (start, lower, upper), optional
        Starts and bounds of noise parameters (a bound None: none). Default: the start is
        the spread (standard deviation) of the data of the observables whose formulas use
        the parameter, on their residual scale (the geometric mean over them); bounds
        ``[1e-8 * spread, inf)`` (noise parameters are taken as positive, as levels and
        proportional coefficients are; give bounds for one that may be negative or 0).
    spread : dict observable -> float
        The spread of each observable's data (for default starts).

    Attributes
    ----------
    names : list of str
        The noise parameters, in order of first appearance.
    start, lower, upper : ndarray
    columns : ndarray of bool, shape (n_obs,)
        Which observables' noise a formula gives.
    """

    def __init__(self, formulas: dict, obs, reserved: dict, noise_params=None,
                 spread: dict | None = None):
        obs = list(obs)
        noise_params = dict(noise_params or {})
        # what rebuilds it when unpickled (the compiled formulas are not picklable)
        self._args_of_init = (dict(formulas), obs, dict(reserved), noise_params,
                              dict(spread or {}))
        self.obs = obs
        self.texts = dict(formulas)
        self.names: list[str] = []
        symbols = {o: sp.Symbol(f"_h{k}") for k, o in enumerate(obs)}
        tsym = sp.Symbol("_t")
        parsed = []
        for o, text in formulas.items():
            where = f"sigma formula of {o!r}"
            names = _names_in(text, where)
            bad = [n for n in names if n in reserved]
            if bad:
                what = ", ".join(f"{n!r} ({reserved[n]})" for n in bad)
                raise OptionError(f"{where} ({text!r}) uses {what}: a noise formula reads "
                                  f"the observables' predictions, time '{TIME}' and noise "
                                  "parameters (any other name), not the model's parameters, "
                                  "states or inputs")
            for n in names:
                if n not in obs and n != TIME and n not in self.names:
                    self.names.append(n)
            parsed.append((o, text, names))
        unknown = [n for n in noise_params if n not in self.names]
        if unknown:
            raise OptionError(f"noise_params names {unknown}, which no sigma formula uses; "
                              f"the noise parameters are {self.names}")
        psyms = {n: sp.Symbol(f"_p{j}") for j, n in enumerate(self.names)}
        table = {**symbols, TIME: tsym, **psyms}
        args = [symbols[o] for o in obs] + [tsym] + [psyms[n] for n in self.names]
        self.formulas = []
        for o, text, names in parsed:
            try:
                expr = parse_expression(text, table, f"sigma formula of {o!r}")
            except ModelError as exc:
                raise OptionError(str(exc)) from None
            mine = [self.names.index(n) for n in names if n in psyms]
            f = sp.lambdify(args, expr, modules="numpy")
            df = [sp.lambdify(args, sp.diff(expr, psyms[self.names[j]]), modules="numpy")
                  for j in mine]
            dh = [(obs.index(n), sp.lambdify(args, sp.diff(expr, symbols[n]),
                                             modules="numpy"))
                  for n in names if n in symbols]
            self.formulas.append(_Formula(obs.index(o), text, f, df, mine, dh))
        self.columns = np.zeros(len(obs), dtype=bool)
        self.columns[[fm.observable for fm in self.formulas]] = True
        spread = spread or {}
        start, lower, upper = [], [], []
        for j, n in enumerate(self.names):
            users = [self.obs[fm.observable] for fm in self.formulas if j in fm.params]
            s = [spread[o] for o in users if np.isfinite(spread.get(o, np.nan))
                 and spread[o] > 0]
            s0 = float(np.exp(np.mean(np.log(s)))) if s else 1.0
            a, lo, hi = _check_param_spec(n, noise_params.get(n), s0)
            start.append(a)
            lower.append(lo)
            upper.append(hi)
        self.start = np.array(start)
        self.lower = np.array(lower)
        self.upper = np.array(upper)

    def __reduce__(self):
        return (NoiseFormulas, self._args_of_init)

    @property
    def n_params(self) -> int:
        """The number of noise parameters."""
        return len(self.names)

    def members(self) -> dict[str, list[str]]:
        """Each noise parameter and the observables whose formulas use it."""
        return {n: [self.obs[fm.observable] for fm in self.formulas if j in fm.params]
                for j, n in enumerate(self.names)}

    def _args(self, H, t, p):
        H = np.asarray(H, dtype=float)
        return [H[:, k] for k in range(H.shape[1])] + [np.asarray(t, dtype=float)] + list(p)

    def sigma(self, H, t, p) -> np.ndarray:
        """The noise level of every entry of ``H`` (predictions at times ``t``, shape
        ``(m, n_obs)``) under the formulas at parameters ``p``; NaN in the columns
        without a formula."""
        H = np.asarray(H, dtype=float)
        out = np.full(H.shape, np.nan)
        args = self._args(H, t, p)
        with np.errstate(all="ignore"):
            for fm in self.formulas:
                out[:, fm.observable] = np.broadcast_to(fm.f(*args), H.shape[:1])
        return out

    def sigma_jacobian(self, H, t, p) -> dict[int, np.ndarray]:
        """Per column with a formula, the derivatives of its levels in the predictions:
        ``{k: D}`` with ``D[i, j] = d sigma_ik / d H_ij`` (shape of ``H``)."""
        H = np.asarray(H, dtype=float)
        args = self._args(H, t, p)
        out = {}
        with np.errstate(all="ignore"):
            for fm in self.formulas:
                D = np.zeros(H.shape)
                for j, d in fm.dh:
                    D[:, j] = np.broadcast_to(d(*args), H.shape[:1])
                out[fm.observable] = D
        return out

    def sigma_param_jacobian(self, H, t, p) -> dict[int, np.ndarray]:
        """Per column with a formula, the derivatives of its levels in the noise
        parameters: ``{k: D}`` with ``D[i, j] = d sigma_ik / d p_j`` (shape
        ``(m, n_params)``; zero for a parameter the formula does not use)."""
        H = np.asarray(H, dtype=float)
        args = self._args(H, t, p)
        out = {}
        with np.errstate(all="ignore"):
            for fm in self.formulas:
                D = np.zeros((H.shape[0], self.n_params))
                for j, d in zip(fm.params, fm.df):
                    D[:, j] = np.broadcast_to(d(*args), H.shape[:1])
                out[fm.observable] = D
        return out

    def check_positive(self, sig, masks, ts, p, when: str) -> None:
        """Raise OptionError where a formula is not positive (or not finite) at an observed
        value (``sig``, ``masks``, ``ts``: per experiment)."""
        for S, mask, t in zip(sig, masks, ts):
            bad = mask & self.columns[None, :] & ~(S > 0)
            if bad.any():
                i, k = np.argwhere(bad)[0]
                fm = next(f for f in self.formulas if f.observable == k)
                vals = ", ".join(f"{n}={v:g}" for n, v in zip(self.names, p))
                raise OptionError(f"the sigma formula of {self.obs[k]!r} ({fm.text!r}) is "
                                  f"{S[i, k]:g} at t={t[i]:g} {when} ({vals}): a noise level "
                                  "must be positive; choose starts or bounds of noise_params "
                                  "that keep it so")

    def nll(self, p, data) -> tuple[float, np.ndarray]:
        """The negative log-likelihood of the formula observables' values (without the
        constant ``n/2 log 2 pi``) and its gradient in ``p``: ``data`` is a list of
        ``(H, t, D2, free)`` per experiment, ``D2`` the weighted squared misfits
        ``w d^2`` on the residual scale and ``free`` the entries it covers."""
        value, grad = 0.0, np.zeros(len(p))
        for H, t, D2, free in data:
            args = self._args(H, t, p)
            with np.errstate(all="ignore"):
                for fm in self.formulas:
                    rows = free[:, fm.observable]
                    if not rows.any():
                        continue
                    s = np.broadcast_to(fm.f(*args), rows.shape)[rows]
                    if not np.all(s > 0) or not np.all(np.isfinite(s)):
                        return math.inf, grad
                    d2 = D2[rows, fm.observable]
                    value += float(np.sum(0.5 * d2 / s**2 + np.log(s)))
                    outer = -d2 / s**3 + 1.0 / s
                    for j, dfj in zip(fm.params, fm.df):
                        ds = np.broadcast_to(dfj(*args), rows.shape)[rows]
                        grad[j] += float(np.sum(outer * ds))
        return value, grad

    def estimate(self, p0, data) -> np.ndarray:
        """The noise parameters minimising :meth:`nll` from ``p0`` (bounded L-BFGS-B,
        restarted from where it stops while that still lowers the value: its line search
        may stop early next to the formulas' domain)."""
        p0 = np.clip(np.asarray(p0, dtype=float), self.lower, self.upper)
        v0, _ = self.nll(p0, data)
        if not self.n_params:      # a formula of predictions and time alone: nothing to fit
            if not np.isfinite(v0):
                sig = [self.sigma(H, t, p0) for H, t, _, _ in data]
                self.check_positive(sig, [fr for *_, fr in data],
                                    [t for _, t, _, _ in data], p0, "at the fit's predictions")
            return p0
        if not np.isfinite(v0):
            sig = [self.sigma(H, t, p0) for H, t, _, _ in data]
            self.check_positive(sig, [fr for *_, fr in data], [t for _, t, _, _ in data],
                                p0, "at the start of a noise round")

        def f(p):
            v, g = self.nll(p, data)
            if not np.isfinite(v):     # a trial step outside the formulas' domain
                return 1e300, np.zeros_like(p)
            return v, g
        bounds = [(a if np.isfinite(a) else None, b if np.isfinite(b) else None)
                  for a, b in zip(self.lower, self.upper)]
        p, v = p0, v0
        for _ in range(10):
            res = minimize(f, p, jac=True, method="L-BFGS-B", bounds=bounds,
                           options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
            if not res.fun < v:
                break
            gain = v - float(res.fun)
            p, v = np.asarray(res.x, dtype=float), float(res.fun)
            if gain <= 1e-13 * max(abs(v), 1.0):
                break
        return p
