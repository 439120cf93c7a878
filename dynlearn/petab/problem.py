"""A PEtab (v1) problem: its SBML model as a dynlearn HybridModel, its tables, and its
negative log-likelihood with the exact gradient.

How the likelihood is assembled
-------------------------------
The optimizer's vector ``x`` holds the estimated parameters of the parameter table, in its
order, on their PEtab scale (``lin``, ``log`` or ``log10``); ``P`` is the same vector on the
linear scale. Every number the simulation and the observables need has a *source*: a
constant, or an entry of ``P``. Sources come from the SBML model (its values), the
parameter table (nominal values of parameters that are not estimated), the condition table
(per-condition overrides of parameters, compartments and initial amounts) and the
measurement table (``observableParameters`` and ``noiseParameters``, per row).

One HybridModel (pure physics) is built for the whole problem. Its free parameters are the
SBML constants whose value depends on ``P`` or differs between conditions; every other
constant is substituted as a number. Each simulation (a pair of preequilibration and
simulation conditions) is solved by :class:`dynlearn.ForwardSensitivity` with a stiff
method and the exact Jacobian, at the unique measurement times; its sensitivities
``dy/dtheta`` (and ``dy/dy0`` when initial values depend on ``P``) are mapped to ``dy/dP``
by the chain rule. Replicates and measurements at ``t = 0`` read the same simulated row.

Observables and noise formulas are compiled per observable with their derivatives with
respect to the states and to every other symbol they use, and the negative log-likelihood
(with normalisation constants, as PEtab defines it) and its gradient are summed per row.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import sympy as sp

from dynlearn.core.model import HybridModel
from dynlearn.core.vectorfield import VectorField
from dynlearn.errors import MissingDependencyError, PetabError, SolveError
from dynlearn.petab.sbml import TIME, SbmlOde, sbml_to_ode
from dynlearn.sensitivity.base import Problem
from dynlearn.sensitivity.forward import ForwardSensitivity
from dynlearn.solve import solve_observed

__all__ = ["PetabFit", "PetabProblem", "load"]

_SCALES = ("lin", "log", "log10")
_LN10 = math.log(10.0)


def _require_petab():
    try:
        import petab.v1 as petab
    except ImportError as exc:   # pragma: no cover - the tests skip without it
        raise MissingDependencyError(
            "reading PEtab needs the petab library: pip install 'dynlearn[petab]'") from exc
    return petab


def _is_nan(v) -> bool:
    return isinstance(v, float) and v != v


def _split_overrides(cell) -> list:
    """The entries of an ``observableParameters``/``noiseParameters`` cell: numbers or ids."""
    if cell is None or _is_nan(cell):
        return []
    if isinstance(cell, (int, float, np.number)):
        return [float(cell)]
    out = []
    for part in str(cell).split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            out.append(part)
    return out


@dataclass(frozen=True)
class _Source:
    """A constant (``index == -1``) or the entry ``P[index]``."""

    value: float
    index: int = -1


class _Compiled:
    """An expression and its gradient with respect to ``[states..., extras...]``,
    evaluated on many rows at once."""

    def __init__(self, expr: sp.Expr, states: list[sp.Symbol], extras: list[sp.Symbol]):
        args = [TIME, *states, *extras]
        self.extras = extras
        self.f = sp.lambdify(args, expr, modules="numpy")
        grads = [sp.diff(expr, s) for s in (*states, *extras)]
        self.g = [None if g == 0 else sp.lambdify(args, g, modules="numpy") for g in grads]
        self.n = len(states)

    def __call__(self, t, Y, E, grad: bool):
        """Values (m,), and when ``grad`` d/dy (m, n) and d/dextras (m, k)."""
        m = t.shape[0]
        args = [t, *Y.T, *E.T]
        val = np.broadcast_to(np.asarray(self.f(*args), dtype=float), (m,))
        if not grad:
            return val, None, None
        G = np.zeros((m, len(self.g)))
        for i, g in enumerate(self.g):
            if g is not None:
                G[:, i] = np.broadcast_to(np.asarray(g(*args), dtype=float), (m,))
        return val, G[:, :self.n], G[:, self.n:]


class PetabProblem:
    """A PEtab problem whose negative log-likelihood dynlearn evaluates and differentiates.

    Made by :func:`load`. The optimizer's vector ``x`` holds the estimated parameters on
    their PEtab scale.

    Attributes
    ----------
    x_names : list of str
        The estimated parameters, in the parameter table's order.
    x_nominal : ndarray
        Their nominal values on their scale.
    x_scales : list of str
        ``"lin"``, ``"log"`` or ``"log10"`` for each.
    lower, upper : ndarray
        Their bounds on their scale.
    model : HybridModel
        The SBML model's equations (free parameters: the constants that depend on ``x`` or
        on the condition).
    sbml : SbmlOde
        The SBML model as sympy equations.
    rtol, atol, method : solver settings
        Defaults rtol 1e-9, atol 1e-12, BDF with the exact Jacobian.
    steady_state_horizon : float
        The longest preequilibration (and steady-state measurement) integration; the
        steady state is declared when the weighted RMS norm of dy/dt, with tolerances 100
        times rtol and atol, drops below 1.

    Notes
    -----
    Supported: PEtab v1 with one SBML model; condition overrides of parameters,
    compartments and initial values (numbers or parameter ids); observable and noise
    placeholders per measurement (also timepoint-specific); noise formulas; normal and
    Laplace noise on lin/log/log10 observables; replicates; preequilibration; steady-state
    measurements (``time = inf``); time-triggered ``piecewise`` with parameter-dependent
    switching times (exact sensitivity jumps). Priors are not part of the likelihood.
    """

    def __init__(self, petab_problem, rtol: float = 1e-9, atol: float = 1e-12,
                 method: str = "BDF", steady_state_horizon: float = 1e9):
        self.petab_problem = pp = petab_problem
        self.rtol, self.atol, self.method = float(rtol), float(atol), method
        self.steady_state_horizon = float(steady_state_horizon)
        if pp.model is None:
            raise PetabError("the PEtab problem has no model")
        self.sbml = ode = sbml_to_ode(pp.model.sbml_model)
        self._tables(pp)
        self._build(ode)

    # --- tables ---------------------------------------------------------------------------
    def _tables(self, pp):
        par = pp.parameter_df
        if par is None:
            raise PetabError("the PEtab problem has no parameter table")
        est = par["estimate"].astype(int) == 1
        self.x_names = [str(i) for i in par.index[est]]
        scales = (par["parameterScale"] if "parameterScale" in par else
                  ["lin"] * len(par))
        scale_of = {str(k): str(v) for k, v in zip(par.index, scales)}
        for k, s in scale_of.items():
            if s not in _SCALES:
                raise PetabError(f"parameter '{k}': unknown parameterScale '{s}'")
        self.x_scales = [scale_of[k] for k in self.x_names]
        nominal = {str(k): float(v) for k, v in zip(par.index, par["nominalValue"])}
        self._nominal_lin = nominal
        self.x_nominal = self.to_scale(np.array([nominal[k] for k in self.x_names]))
        self.lower = self.to_scale(np.array(par.loc[est, "lowerBound"], dtype=float))
        self.upper = self.to_scale(np.array(par.loc[est, "upperBound"], dtype=float))
        self._x_index = {k: i for i, k in enumerate(self.x_names)}
        self._par_ids = set(nominal)

    def to_scale(self, P) -> np.ndarray:
        """Linear values of the estimated parameters on their PEtab scales."""
        P = np.asarray(P, dtype=float)
        out = P.copy()
        for i, s in enumerate(self.x_scales):
            if s == "log":
                out[i] = np.log(P[i])
            elif s == "log10":
                out[i] = np.log10(P[i])
        return out

    def from_scale(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Linear values ``P`` of ``x`` and ``dP/dx``."""
        x = np.asarray(x, dtype=float)
        P, d = x.copy(), np.ones_like(x)
        for i, s in enumerate(self.x_scales):
            if s == "log":
                P[i] = math.exp(x[i])
                d[i] = P[i]
            elif s == "log10":
                P[i] = 10.0 ** x[i]
                d[i] = P[i] * _LN10
        return P, d

    def _source(self, v, where: str) -> _Source:
        """The source of a table cell: a number, an estimated parameter, or a fixed one."""
        if isinstance(v, (int, float, np.number)) and not _is_nan(v):
            return _Source(float(v))
        name = str(v).strip()
        try:
            return _Source(float(name))
        except ValueError:
            pass
        if name in self._x_index:
            return _Source(float("nan"), self._x_index[name])
        if name in self._nominal_lin:
            return _Source(self._nominal_lin[name])
        if name in self.sbml.constants:
            return _Source(self.sbml.constants[name])
        raise PetabError(f"{where}: '{name}' is neither a number nor a parameter of the "
                         "parameter table or the model")

    # --- the model and the measurements ---------------------------------------------------
    def _condition_sources(self, cid: str):
        """Sources of every SBML constant and the initial-value overrides in condition
        ``cid``."""
        ode = self.sbml
        cond = self.petab_problem.condition_df
        src = {}
        for k, v in ode.constants.items():
            if k in self._par_ids:
                src[k] = self._source(k, f"parameter '{k}'")
            else:
                src[k] = _Source(v)
        init = {}
        if cond is None or cid not in cond.index:
            raise PetabError(f"condition '{cid}' is not in the condition table")
        row = cond.loc[cid]
        for col, v in row.items():
            if col == "conditionName":
                continue
            where = f"condition '{cid}', column '{col}'"
            if col in ode.constants:
                if _is_nan(v):
                    continue
                src[col] = self._source(v, where)
            elif col in ode.states:
                if _is_nan(v):
                    init[col] = None      # PEtab: keep the preequilibrated value
                else:
                    init[col] = self._source(v, where)
            elif col in ode.derived:
                raise PetabError(f"{where}: overriding '{col}', which an SBML rule or "
                                 "initial assignment defines, is not supported")
            else:
                raise PetabError(f"{where}: '{col}' is not a parameter, compartment or "
                                 "species of the model")
        return src, init

    def _build(self, ode: SbmlOde):
        pp = self.petab_problem
        meas = pp.measurement_df
        if meas is None or len(meas) == 0:
            raise PetabError("the PEtab problem has no measurements")
        pre_col = "preequilibrationConditionId"
        pre = [("" if (pre_col not in meas or _is_nan(v) or v == "") else str(v))
               for v in (meas[pre_col] if pre_col in meas else [None] * len(meas))]
        sim = [str(v) for v in meas["simulationConditionId"]]
        cids = sorted(set(sim) | {p for p in pre if p})
        self._cond = {c: self._condition_sources(c) for c in cids}

        # constants that depend on x or differ between conditions stay symbols
        varying = set()
        for k in ode.constants:
            srcs = {self._cond[c][0][k] for c in cids}
            if len(srcs) > 1 or any(s.index >= 0 for s in srcs):
                varying.add(k)
        fixed_subs = {ode.symbols[k]: sp.Float(v.value) for k, v in self._cond[cids[0]][0]
                      .items() if k not in varying}
        self._varying = [k for k in ode.constants if k in varying]
        vsyms = [ode.symbols[k] for k in self._varying]
        states = [ode.symbols[s] for s in ode.states]
        rhs = {s: ode.rhs[k].xreplace(fixed_subs) for s, k in zip(states, ode.states)}
        used = set().union(*(e.free_symbols for e in rhs.values())) if rhs else set()
        self._theta_names = [k for k in self._varying if ode.symbols[k] in used]
        params = {ode.symbols[k]: 1.0 for k in self._theta_names}
        self.model = HybridModel(states=states, rhs=rhs, params=params, time=TIME,
                                 name=str(pp.model.model_id if hasattr(pp.model, "model_id")
                                          else "petab"))
        self._vidx = {k: i for i, k in enumerate(self._varying)}
        self._theta_vidx = np.array([self._vidx[k] for k in self._theta_names], dtype=int)
        # initial values as functions of the varying constants
        y0e = [ode.initial[k].xreplace(fixed_subs).xreplace({TIME: 0}) for k in ode.states]
        self._y0 = sp.lambdify([vsyms], y0e, modules="numpy")
        J = sp.Matrix(y0e).jacobian(sp.Matrix(vsyms)) if vsyms else sp.zeros(len(y0e), 0)
        self._y0_depends = [bool(J.row(i).free_symbols or any(J.row(i))) for i in
                            range(len(y0e))]
        self._y0_jac = sp.lambdify([vsyms], J, modules="numpy") if vsyms else None

        # times at which the right-hand side switches (time-triggered piecewise)
        taus = _switching_times(list(rhs.values()), set(states))
        self._switch = self._switch_jac = None
        if taus:
            self._switch = sp.lambdify([vsyms], taus, modules="numpy")
            Jt = (sp.Matrix(taus).jacobian(sp.Matrix(vsyms)) if vsyms
                  else sp.zeros(len(taus), 0))
            self._switch_jac = sp.lambdify([vsyms], Jt, modules="numpy")

        # observables and noise formulas
        self._observables(ode, fixed_subs, varying)

        # rows: simulation of each (pre, sim) pair at unique times
        t = np.asarray(meas["time"], dtype=float)
        if np.any(np.isnan(t)) or np.any(t == -np.inf):
            raise PetabError("measurement times must be numbers (or inf for steady state)")
        if np.any(t < 0):
            raise PetabError("measurements before t = 0")
        self._t = t
        self._m = np.asarray(meas["measurement"], dtype=float)
        obs_ids = [str(o) for o in meas["observableId"]]
        keys = list(zip(pre, sim))
        self._sims = []
        self._groups = []   # (sim index, observable, rows, time index, E-sources obs, E noise)
        order = {}
        for r, k in enumerate(keys):
            order.setdefault(k, []).append(r)
        ocols = meas["observableParameters"] if "observableParameters" in meas else None
        ncols = meas["noiseParameters"] if "noiseParameters" in meas else None
        for si, (k, rows) in enumerate(order.items()):
            rows = np.array(rows)
            # unique times; inf (steady-state data) sorts last and is solved apart
            times, tidx = np.unique(t[rows], return_inverse=True)
            steady = bool(times.size and times[-1] == np.inf)
            self._sims.append(dict(pre=k[0], sim=k[1], times=times[:-1] if steady else times,
                                   steady=steady))
            by_obs = {}
            for j, r in enumerate(rows):
                by_obs.setdefault(obs_ids[r], []).append(j)
            for o, js in by_obs.items():
                if o not in self._obs:
                    raise PetabError(f"measurement of unknown observable '{o}'")
                js = np.array(js)
                rr = rows[js]
                info = self._obs[o]
                E_obs = self._row_sources(info["h"].extras, o, rr, ocols, ncols, k[1])
                E_noise = self._row_sources(info["s"].extras, o, rr, ocols, ncols, k[1])
                self._groups.append(dict(sim=si, obs=o, rows=rr, tidx=tidx[js],
                                         E_obs=E_obs, E_noise=E_noise))
        self._n_rows = len(meas)

    def _observables(self, ode: SbmlOde, fixed_subs, varying):
        _require_petab()
        from petab.v1.math import sympify_petab

        obs_df = self.petab_problem.observable_df
        if obs_df is None:
            raise PetabError("the PEtab problem has no observable table")
        states = [ode.symbols[s] for s in ode.states]
        state_names = set(ode.states)
        self._obs = {}
        for oid, row in obs_df.iterrows():
            oid = str(oid)
            trans = str(row.get("observableTransformation", "lin"))
            trans = "lin" if trans in ("nan", "") else trans
            dist = str(row.get("noiseDistribution", "normal"))
            dist = "normal" if dist in ("nan", "") else dist
            if trans not in _SCALES:
                raise PetabError(f"observable '{oid}': unknown observableTransformation "
                                 f"'{trans}'")
            if dist not in ("normal", "laplace"):
                raise PetabError(f"observable '{oid}': unsupported noiseDistribution '{dist}'")
            exprs = []
            for col in ("observableFormula", "noiseFormula"):
                v = row.get(col)
                e = sympify_petab(v if not _is_nan(v) else 0)
                exprs.append(self._resolve_expr(e, ode, fixed_subs, varying, oid, col))
            extras = []
            for e in exprs:
                extras.append(sorted((s for s in e.free_symbols
                                      if s.name not in state_names and s != TIME),
                                     key=lambda s: s.name))
            self._obs[oid] = dict(h=_Compiled(exprs[0], states, extras[0]),
                                  s=_Compiled(exprs[1], states, extras[1]),
                                  trans=trans, dist=dist)

    def _resolve_expr(self, e, ode: SbmlOde, fixed_subs, varying, oid, col):
        """An observable or noise formula in the model's symbols: states, varying constants,
        placeholders and parameter-table ids stay symbols; other constants become numbers."""
        reps = {}
        for s in e.free_symbols:
            name = s.name
            if name in ode.symbols and ode.symbols[name] in fixed_subs:
                reps[s] = fixed_subs[ode.symbols[name]]
            elif name in ode.derived:
                reps[s] = ode.expand(ode.symbols[name]).xreplace(fixed_subs)
            elif name in ode.symbols:
                reps[s] = ode.symbols[name]
            elif name == "time":
                reps[s] = TIME
            elif name in self._nominal_lin or name.startswith(
                    ("observableParameter", "noiseParameter")):
                reps[s] = sp.Symbol(name)
            else:
                raise PetabError(f"observable '{oid}', {col}: unknown symbol '{name}'")
        e = e.xreplace(reps)
        # expanding derived quantities can bring in constants that are not varying
        return e.xreplace(fixed_subs)

    def _row_sources(self, extras, oid, rows, ocols, ncols, cid):
        """Per-row constant values and P indices of the extra symbols of a formula."""
        m, k = len(rows), len(extras)
        vals = np.zeros((m, k))
        idx = -np.ones((m, k), dtype=int)
        csrc = self._cond[cid][0]
        for j, s in enumerate(extras):
            name = s.name
            for i, r in enumerate(rows):
                if name in csrc:
                    src = csrc[name]
                elif name in self._nominal_lin:
                    # a parameter-table id (even one named like a placeholder)
                    src = self._source(name, f"observable '{oid}'")
                elif name.startswith(("observableParameter", "noiseParameter")):
                    kind = "observable" if name.startswith("observable") else "noise"
                    head, _, tail = name.partition("_")
                    if tail != oid:
                        raise PetabError(f"observable '{oid}' uses placeholder '{name}' of "
                                         "another observable")
                    n = int(head[len(kind) + len("Parameter"):])
                    cells = _split_overrides((ocols if kind == "observable" else ncols).iloc[r]
                                             if (ocols if kind == "observable" else ncols)
                                             is not None else None)
                    if len(cells) == 1 and n > 1:
                        raise PetabError(f"measurement row {r}: {kind}Parameters has 1 entry, "
                                         f"observable '{oid}' needs {n}")
                    if n > len(cells):
                        raise PetabError(f"measurement row {r}: {kind}Parameters has "
                                         f"{len(cells)} entries; '{oid}' needs {n}")
                    src = self._source(cells[n - 1], f"measurement row {r}")
                else:
                    src = self._source(name, f"observable '{oid}'")
                vals[i, j] = src.value if src.index < 0 else 0.0
                idx[i, j] = src.index
        return vals, idx

    # --- evaluation -----------------------------------------------------------------------
    def _varying_values(self, cid: str, P):
        """Values of the varying constants in condition ``cid`` and dvalues/dP."""
        src = self._cond[cid][0]
        nv, nP = len(self._varying), len(P)
        v = np.empty(nv)
        D = np.zeros((nv, nP))
        for i, k in enumerate(self._varying):
            s = src[k]
            if s.index >= 0:
                v[i] = P[s.index]
                D[i, s.index] = 1.0
            else:
                v[i] = s.value
        return v, D

    def _initial(self, cid: str, v, Dv, P, y_pre=None, S_pre=None):
        """Initial state of condition ``cid`` and dy0/dP (``None`` when zero)."""
        ode = self.sbml
        y0 = np.array(self._y0(v), dtype=float).reshape(-1)
        n, nP = y0.size, len(P)
        D = None
        if self._y0_jac is not None and any(self._y0_depends):
            Jy = np.array(self._y0_jac(v), dtype=float).reshape(n, len(self._varying))
            D = Jy @ Dv
        init = self._cond[cid][1]
        if y_pre is not None:     # preequilibrated: the steady state, then the overrides
            y0 = y_pre.copy()
            D = None if S_pre is None else S_pre.copy()
        for i, k in enumerate(ode.states):
            s = init.get(k)
            if s is None:
                continue
            y0[i] = P[s.index] if s.index >= 0 else s.value
            if D is not None:
                D[i] = 0.0
            if s.index >= 0:
                if D is None:
                    D = np.zeros((n, nP))
                D[i, s.index] = 1.0
        return y0, D

    def _solve(self, vf, t0, times, y0, D0, Dtheta, grad):
        """States at ``times`` and dy/dP (or None)."""
        prob = Problem(vf=vf, t0=t0, t_obs=times, y0=y0, obs_loss=None, method=self.method,
                       rtol=self.rtol, atol=self.atol, name="petab")
        fs = ForwardSensitivity()
        if not grad:
            Y, _ = solve_observed(vf, t0, times, y0, self.method, self.rtol, self.atol, {},
                                  where=prob.where)
            return Y, None
        wrt_y0 = D0 is not None
        Y, S = fs.trajectories(prob, wrt_y0=wrt_y0)
        q = Dtheta.shape[0]
        SP = S[:, :, :q] @ Dtheta
        if wrt_y0:
            SP += S[:, :, q:] @ D0
        return Y, SP

    def _solve_switched(self, vf, times, y0, D0, Dtheta, grad, v, Dv):
        """:meth:`_solve` from ``t = 0`` in segments between the switching times of the
        right-hand side (time-triggered ``piecewise``), with the sensitivity jump
        ``(f(tau-) - f(tau+)) dtau/dP`` at each switch whose time depends on ``P``."""
        if times.size == 0:      # only steady-state data
            n = y0.size
            return np.empty((0, n)), (np.empty((0, n, Dtheta.shape[1])) if grad else None)
        t_end = float(times[-1])
        taus, dtaus = [], []
        if self._switch is not None and t_end > 0:
            tv = np.array(self._switch(v), dtype=float).reshape(-1)
            Jt = np.array(self._switch_jac(v), dtype=float).reshape(tv.size, -1) @ Dv
            for i in np.argsort(tv):
                # switches at one time (e.g. two conditions on one tau) make one jump
                if 0.0 < tv[i] < t_end and (not taus or tv[i] > taus[-1]):
                    taus.append(float(tv[i]))
                    dtaus.append(Jt[i])
        if not taus:
            return self._solve(vf, 0.0, times, y0, D0, Dtheta, grad)
        n, nP = y0.size, Dtheta.shape[1]
        Y = np.empty((times.size, n))
        SP = np.empty((times.size, n, nP)) if grad else None
        y = np.asarray(y0, dtype=float)
        D = (np.zeros((n, nP)) if D0 is None else D0) if grad else None
        a = 0.0
        for b, dtau in zip([*taus, t_end], [*dtaus, None]):
            sel = (times >= a) & (times <= b) if a == 0.0 else (times > a) & (times <= b)
            seg = np.unique(np.concatenate([times[sel], [b]]))
            Ys, Ss = self._solve(vf, a, seg, y, D, Dtheta, grad)
            pos = np.searchsorted(seg, times[sel])
            Y[sel] = Ys[pos]
            if grad:
                SP[sel] = Ss[pos]
            y = Ys[-1]
            if grad:
                D = Ss[-1]
                if dtau is not None and np.any(dtau):
                    d = 1e-9 * max(1.0, abs(b))
                    D = D + np.outer(vf.fun(b - d, y) - vf.fun(b + d, y), dtau)
            a = b
        return Y, SP

    def _steady_state(self, vf, y0, D0, Dtheta, grad):
        """Preequilibration: the steady state reached from ``y0`` and its dy/dP.

        The state is integrated (stiff method, exact Jacobian) until the weighted RMS norm
        of dy/dt, with tolerances 100 times the solver's (AMICI's convention), drops below 1.
        Its sensitivities are ``-J^{-1} df/dtheta`` when the Jacobian ``J`` is well
        conditioned (the steady state is then locally unique and forgets ``y0``); with
        conservation laws (``J`` singular) they are integrated to the same time instead.
        """
        from scipy.integrate import solve_ivp

        rtol_ss, atol_ss = 100 * self.rtol, 100 * self.atol

        def wrms(t, y):
            f = vf.fun(t, y)
            return float(np.sqrt(np.mean((f / (atol_ss + rtol_ss * np.abs(y))) ** 2))) - 1.0
        wrms.terminal = True
        if wrms(0.0, y0) < 0:
            y, t_end = np.array(y0, dtype=float), 0.0
        else:
            res = solve_ivp(vf.fun, (0.0, self.steady_state_horizon), y0, method=self.method,
                            rtol=self.rtol, atol=self.atol, jac=vf.jac, events=wrms)
            if res.status != 1:
                raise SolveError("preequilibration did not reach a steady state by t = "
                                 f"{self.steady_state_horizon:.3g}: {res.message}")
            y, t_end = res.y_events[0][0], float(res.t_events[0][0])
        if not grad:
            return y, None
        J, Jt = vf.jac_and_theta_jac(t_end, y)
        if np.linalg.cond(J) < 1e10:
            return y, -np.linalg.solve(J, Jt @ Dtheta)
        if D0 is None:
            D0 = np.zeros((y.size, Dtheta.shape[1]))
        y0 = np.asarray(y0, dtype=float)
        # sensitivities settle more slowly than states: integrate over longer spans (each
        # from the start: restarting BDF near the steady state fails at tight tolerances)
        # until their derivative J D + df/dtheta Dtheta passes the same test
        t = max(t_end, 1.0)
        for _ in range(12):
            Y, SP = self._solve(vf, 0.0, np.array([t]), y0, D0, Dtheta, True)
            y, D = Y[0], SP[0]
            J, Jt = vf.jac_and_theta_jac(t, y)
            dD = J @ D + Jt @ Dtheta
            if np.sqrt(np.mean((dD / (atol_ss + rtol_ss * np.abs(D))) ** 2)) < 1.0:
                return y, D
            t *= 4.0
        raise SolveError("preequilibration: the steady-state sensitivities did not settle by "
                         f"t = {t:.3g}")

    def _simulate_all(self, P, grad: bool):
        out = []
        for s in self._sims:
            v_sim, D_sim = self._varying_values(s["sim"], P)
            y_pre = S_pre = None
            if s["pre"]:
                v_pre, D_pre = self._varying_values(s["pre"], P)
                vf = VectorField(self.model, v_pre[self._theta_vidx])
                y0, D0 = self._initial(s["pre"], v_pre, D_pre, P)
                y_pre, S_pre = self._steady_state(vf, y0, D0, D_pre[self._theta_vidx], grad)
            vf = VectorField(self.model, v_sim[self._theta_vidx])
            y0, D0 = self._initial(s["sim"], v_sim, D_sim, P, y_pre, S_pre)
            Y, SP = self._solve_switched(vf, s["times"], y0, D0, D_sim[self._theta_vidx],
                                         grad, v_sim, D_sim)
            if s["steady"]:
                # measurements at t = inf: the steady state reached from the start
                y_ss, S_ss = self._steady_state(vf, y0, D0, D_sim[self._theta_vidx], grad)
                Y = np.vstack([Y, y_ss[None]])
                if grad:
                    SP = np.concatenate([SP, S_ss[None]], axis=0)
            out.append((Y, SP, v_sim, D_sim))
        return out

    def _evaluate(self, x, grad: bool, want_sim: bool = False):
        x = np.asarray(x, dtype=float)
        if x.shape != (len(self.x_names),):
            raise PetabError(f"x must have shape ({len(self.x_names)},), got {x.shape}")
        P, dPdx = self.from_scale(x)
        nP = len(P)
        sims = self._simulate_all(P, grad)
        total = 0.0
        g = np.zeros(nP)
        hsim = np.full(self._n_rows, np.nan) if want_sim else None
        for grp in self._groups:
            Y, SP, v, Dv = sims[grp["sim"]]
            info = self._obs[grp["obs"]]
            rows, ti = grp["rows"], grp["tidx"]
            tt = self._t[rows]
            Yr = Y[ti]
            hv, hdy, hde, Eh, Ih = self._eval_formula(info["h"], grp["E_obs"], tt, Yr, P,
                                                      grad)
            if want_sim:
                hsim[rows] = hv
            sv, sdy, sde, Es, Is = self._eval_formula(info["s"], grp["E_noise"], tt, Yr, P,
                                                      grad)
            m = self._m[rows]
            val, d_h, d_s = _nllh_terms(hv, sv, m, info["trans"], info["dist"])
            total += float(np.sum(val))
            if grad:
                for dval, dy, de, idx in ((d_h, hdy, hde, Ih), (d_s, sdy, sde, Is)):
                    if dy is not None and np.any(dy):
                        g += np.einsum("r,rn,rnp->p", dval, dy, SP[ti])
                    if de is not None and de.size:
                        w = dval[:, None] * de
                        mask = idx >= 0
                        np.add.at(g, idx[mask], w[mask])
        if want_sim:
            return hsim
        if not grad:
            return total
        return total, g * dPdx

    def _eval_formula(self, comp: _Compiled, E_src, t, Yr, P, grad):
        vals, idx = E_src
        E = np.where(idx >= 0, P[np.maximum(idx, 0)] if len(P) else 0.0, vals)
        v, dy, de = comp(t, Yr, E, grad)
        return v, dy, de, E, idx

    # --- public ---------------------------------------------------------------------------
    def nllh(self, x) -> float:
        """The PEtab negative log-likelihood at ``x`` (estimated parameters on their
        scales), normalisation constants included, priors not."""
        return self._evaluate(x, grad=False)

    def loss_and_grad(self, x) -> tuple[float, np.ndarray]:
        """The negative log-likelihood and its gradient with respect to ``x`` (on the
        parameters' scales), by forward sensitivities."""
        return self._evaluate(x, grad=True)

    def simulate(self, x) -> np.ndarray:
        """Simulated observables (untransformed) in the measurement table's order."""
        return self._evaluate(x, grad=False, want_sim=True)

    def fit(self, n_starts: int = 10, seed: int | None = 0, x0=None, maxiter: int = 2000,
            starts=None) -> PetabFit:
        """Multi-start fit: L-BFGS-B (scipy) on the exact gradient, within the bounds of the
        parameter table, each start drawn uniformly on the parameters' scales.

        Parameters
        ----------
        n_starts : int
            Number of starts (``x0``, when given, is the first).
        seed : int or None
            Seed of the random starts.
        x0 : array-like, optional
            A start of its own (on the scales), e.g. ``problem.x_nominal``.
        maxiter : int
            Iterations per start.
        starts : array-like, shape (k, n), optional
            Starts given explicitly (then ``n_starts`` and ``seed`` are not used).

        Returns
        -------
        PetabFit
            The best point and every start's result, best first. A start whose simulation
            fails at its first point is recorded with ``fun = inf`` and its error message.
        """
        from scipy.optimize import minimize

        lo, hi = self.lower, self.upper
        if starts is None:
            rng = np.random.default_rng(seed)
            starts = lo + rng.random((int(n_starts), lo.size)) * (hi - lo)
            if x0 is not None:
                starts[0] = np.clip(np.asarray(x0, dtype=float), lo, hi)
        starts = np.atleast_2d(np.asarray(starts, dtype=float))
        runs = []
        for s in starts:
            def fun(x):
                try:
                    return self.loss_and_grad(x)
                except SolveError:
                    # a failed simulation is a rejected point, not the end of the start
                    return np.inf, np.zeros_like(x)
            try:
                res = minimize(fun, s, jac=True, method="L-BFGS-B",
                               bounds=list(zip(lo, hi)), options=dict(maxiter=maxiter))
                runs.append(dict(x=res.x, fun=float(res.fun), start=s, nit=int(res.nit),
                                 message=str(res.message)))
            except (SolveError, ValueError) as exc:
                runs.append(dict(x=s, fun=np.inf, start=s, nit=0, message=str(exc)))
        runs.sort(key=lambda r: r["fun"])
        return PetabFit(x=runs[0]["x"], fun=runs[0]["fun"], x_names=list(self.x_names),
                        runs=runs)

    def __repr__(self) -> str:
        return (f"PetabProblem({len(self.x_names)} estimated parameters, "
                f"{len(self.sbml.states)} states, {len(self._sims)} simulations, "
                f"{self._n_rows} measurements)")


@dataclass
class PetabFit:
    """The result of :meth:`PetabProblem.fit`.

    Attributes
    ----------
    x : ndarray
        The best point, on the parameters' scales.
    fun : float
        Its negative log-likelihood.
    x_names : list of str
    runs : list of dict
        Every start (``x``, ``fun``, ``start``, ``nit``, ``message``), best first.
    """

    x: np.ndarray
    fun: float
    x_names: list
    runs: list

    def n_at_best(self, tol: float = 0.1) -> int:
        """How many starts ended within ``tol`` of the best negative log-likelihood."""
        return sum(1 for r in self.runs if r["fun"] <= self.fun + tol)


def _switching_times(exprs, states: set) -> list:
    """The times at which time-triggered ``Piecewise`` conditions in ``exprs`` switch, as
    expressions of the constants (conditions linear in time and free of states)."""
    out = []
    for e in exprs:
        for pw in e.atoms(sp.Piecewise):
            for _, cond in pw.args:
                for rel in (cond.atoms(sp.core.relational.Relational)
                            if not isinstance(cond, sp.core.relational.Relational)
                            else {cond}):
                    g = rel.lhs - rel.rhs
                    if TIME not in g.free_symbols or g.free_symbols & states:
                        continue
                    slope = sp.diff(g, TIME)
                    if slope.free_symbols or slope == 0:
                        continue
                    tau = sp.simplify(TIME - g / slope)
                    if TIME in tau.free_symbols:
                        continue
                    if all(sp.simplify(tau - o) != 0 for o in out):
                        out.append(tau)
    return out


def _nllh_terms(h, sigma, m, trans: str, dist: str):
    """Per-row negative log-likelihood and its derivatives with respect to the simulated
    value ``h`` and to ``sigma``."""
    if trans == "lin":
        ht, mt, dht = h, m, np.ones_like(h)
        extra = 0.0
    elif trans == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            ht, mt, dht = np.log(h), np.log(m), 1.0 / h
        extra = np.log(m)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ht, mt, dht = np.log10(h), np.log10(m), 1.0 / (h * _LN10)
        extra = np.log(m * _LN10)
    d = ht - mt
    if dist == "normal":
        r = d / sigma
        val = 0.5 * np.log(2 * np.pi * sigma ** 2) + 0.5 * r ** 2 + extra
        d_ht = r / sigma
        d_s = 1.0 / sigma - r ** 2 / sigma
    else:
        a = np.abs(d)
        val = np.log(2 * sigma) + a / sigma + extra
        d_ht = np.sign(d) / sigma
        d_s = 1.0 / sigma - a / sigma ** 2
    return val, d_ht * dht, d_s


def load(path: str | os.PathLike, **options) -> PetabProblem:
    """Load a PEtab v1 problem from its YAML file.

    Parameters
    ----------
    path : str or path-like
        The problem's YAML file.
    **options
        Solver settings passed to :class:`PetabProblem`: ``rtol``, ``atol``, ``method``,
        ``steady_state_horizon`` (the longest preequilibration, default 1e9).

    Returns
    -------
    PetabProblem

    Raises
    ------
    PetabError
        An unsupported construct (named with its id) or inconsistent tables.
    MissingDependencyError
        The ``petab`` extra is not installed.
    """
    petab = _require_petab()
    pp = petab.Problem.from_yaml(str(path))
    return PetabProblem(pp, **options)
