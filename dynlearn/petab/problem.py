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
method and the exact Jacobian, at the unique measurement times; it integrates ``dy/dP``
directly (:meth:`~dynlearn.ForwardSensitivity.directional`: the sensitivity equations
forced by ``df/dtheta dtheta/dP`` from ``dy0/dP``), ``n (1 + nP)`` components at most
instead of ``n (1 + n_theta + n)`` for ``dy/dtheta`` and ``dy/dy0``. Where the sensitivity
components are many per measurement time, :meth:`PetabProblem.loss_and_grad` takes the
adjoint instead (:mod:`dynlearn.petab.adjoint`: one backward solve per simulation, after
the cotangents of all rows are summed). Replicates and measurements at ``t = 0`` read the
same simulated row.

Observables and noise formulas are compiled per observable with their derivatives with
respect to the states and to every other symbol they use, and the negative log-likelihood
(with normalisation constants, as PEtab defines it) and its gradient are summed per row.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sympy as sp

from dynlearn.core.model import HybridModel
from dynlearn.core.symbolic import Lambdified, jacobian_exprs
from dynlearn.core.vectorfield import VectorField
from dynlearn.errors import PetabError, SolveError
from dynlearn.fitting.threads import blas_threads_for
from dynlearn.petab.adjoint import AdjointTape, prefer_adjoint
from dynlearn.petab.events import CompiledEvents
from dynlearn.petab.extra import require
from dynlearn.petab.priors import parameter_priors
from dynlearn.petab.sbml import TIME, SbmlOde, sbml_to_ode
from dynlearn.petab.steady import steady_state
from dynlearn.sensitivity.base import Problem
from dynlearn.sensitivity.forward import ForwardSensitivity, moving_directions
from dynlearn.solve import BUDGET_EXHAUSTED, NO_PROGRESS, solve_observed

__all__ = ["CRAWL_FACTOR", "CRAWL_FLOOR", "CRAWL_WORK", "GRADIENT_METHODS",
           "GradientSwitchWarning", "PetabFit", "PetabProblem", "SensitivityCrawlError",
           "fisher_terms", "from_scale", "load", "nllh_terms", "to_scale"]

_SCALES = ("lin", "log", "log10")
#: PetabProblem(gradient=...): "auto" (the adjoint where dynlearn.petab.adjoint.prefer_adjoint
#: says it pays, forward sensitivities elsewhere), "forward" (forward sensitivities, the
#: default), "adjoint"
GRADIENT_METHODS = ("auto", "forward", "adjoint")
#: forward sensitivities of one simulation may take this many times the right-hand-side
#: evaluations of its states alone (in the last evaluation without gradient) ...
CRAWL_FACTOR = 20.0
#: ... or this many, whichever is more (short simulations whose states take few steps),
CRAWL_FLOOR = 2000
#: ... or this many evaluations of one sensitivity-system component (evaluations times
#: ``n (1 + k)``), before the gradient is taken by the adjoint instead
#: (``PetabProblem(crawl_factor=...)``): a crawl is worth leaving when it costs seconds.
#: From random starts of Fiedler_BMCSystBiol2016 (6 states, 22 parameters) the Fisher
#: systems of 42 of 2,497 points took 6,500-20,000 evaluations against 55 for the states,
#: and the floor of 2,000 alone sent 7 of 20 starts to the slower BFGS fallback; Smith's
#: crawl (1,853 components) is past this floor after 5,400 evaluations
CRAWL_WORK = 1e7
#: ``SolveError.solver_message`` of a solve that ran out of its budget or stopped moving:
#: with a crawl budget set, forward sensitivities that crawled
_OUT_OF_BUDGET = (BUDGET_EXHAUSTED, NO_PROGRESS)
_LN10 = math.log(10.0)


class _Crawl(Exception):
    """Forward sensitivities of simulation ``index`` used up their evaluation budget."""

    def __init__(self, index: int, budget: int, states: int, stalled: bool = False):
        super().__init__(index, budget, states, stalled)
        self.index, self.budget, self.states, self.stalled = index, budget, states, stalled


class SensitivityCrawlError(SolveError):
    """The forward sensitivities of a Fisher system asked for with ``watch=True`` (as the
    Fisher method of :meth:`PetabProblem.fit` asks) took more than ``crawl_factor`` times
    their states' right-hand-side evaluations. The Fisher information needs ``dy/dP``,
    which the adjoint cannot give, so nothing is returned; the problem's gradients are
    taken by the adjoint from then on (:attr:`PetabProblem.gradient_switch`)."""


class GradientSwitchWarning(UserWarning):
    """A PEtab problem's gradient left forward sensitivities for the adjoint, because the
    forward sensitivities of a simulation took many times its states' evaluations (see
    :attr:`PetabProblem.gradient_switch`)."""


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
        self.f = Lambdified(args, expr)
        # the non-zero entries only, in one function with shared subexpressions: observables
        # with assignment rules substituted are large, and one lambdify per entry made
        # SalazarCavazos_MBoC2020's import take minutes
        grads = jacobian_exprs([expr], [*states, *extras])[0]
        self._nz = [i for i, g in enumerate(grads) if g != 0]
        self.g = (Lambdified(args, [grads[i] for i in self._nz], namespace=True, cse=True)
                  if self._nz else None)
        self.k = len(grads)
        self.n = len(states)

    def __call__(self, t, Y, E, grad: bool):
        """Values (m,), and when ``grad`` d/dy (m, n) and d/dextras (m, k)."""
        m = t.shape[0]
        args = [t, *Y.T, *E.T]
        val = np.broadcast_to(np.asarray(self.f(*args), dtype=float), (m,))
        if not grad:
            return val, None, None
        G = np.zeros((m, self.k))
        if self.g is not None:
            for i, v in zip(self._nz, self.g(*args)):
                G[:, i] = np.broadcast_to(np.asarray(v, dtype=float), (m,))
        return val, G[:, :self.n], G[:, self.n:]


def to_scale(P, scales) -> np.ndarray:
    """Linear values ``P`` on their PEtab scales (``"lin"``, ``"log"``, ``"log10"``, one per
    value); a zero on a log scale gives ``-inf``."""
    P = np.asarray(P, dtype=float)
    scales = np.asarray(scales, dtype=object)
    out = P.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        log, log10 = scales == "log", scales == "log10"
        out[log] = np.log(P[log])
        out[log10] = np.log10(P[log10])
    return out


def from_scale(x, scales) -> tuple[np.ndarray, np.ndarray]:
    """Linear values ``P`` of ``x`` given on PEtab scales, and ``dP/dx`` (elementwise)."""
    x = np.asarray(x, dtype=float)
    scales = np.asarray(scales, dtype=object)
    P, d = x.copy(), np.ones_like(x)
    log, log10 = scales == "log", scales == "log10"
    P[log] = d[log] = np.exp(x[log])
    P[log10] = 10.0 ** x[log10]
    d[log10] = P[log10] * _LN10
    return P, d


def direction_scale(dPdx) -> np.ndarray:
    """The scale of each sensitivity direction in the solves: ``|dP/dx|`` where it is below
    1, else 1 (and 1 where it is zero or not finite).

    The solver integrates ``dy/dP * scale``, so the states' ``atol`` on it is ``atol /
    scale`` on ``dy/dP``: where a parameter's ``dP/dx`` is small (a log-scale parameter
    below ``1/ln 10``), the sensitivities are held to the tolerance on the estimation
    scale the gradient is taken in, as CVODES-based tools integrate them. Without it,
    ``dy/dP`` of a log-scale parameter of 1e-10 is 1e10 times ``dy/dlog P``: entries of
    1e10 beside entries of 1e-13 in one column held to an ``atol`` of 1e-12, whose
    roundoff made LSODA's steps collapse (Fujita_SciSignal2010: 65 times the evaluations of
    the states alone; SalazarCavazos_MBoC2020 and Raia_CancerResearch2011 3-6 times
    slower gradients). The scale is not raised above 1 for large parameters: that only
    tightens ``atol`` on sensitivities already controlled relatively, and made
    Bachmann_MSB2011's and Isensee_JCB2018's gradients 1.3-1.5 times slower for no
    accuracy (docs/solvers.md, "The sensitivities' tolerances").
    """
    c = np.abs(np.asarray(dPdx, dtype=float))
    return np.minimum(np.where((c > 0) & np.isfinite(c), c, 1.0), 1.0)


def _scaled(D, c):
    """``D`` (rows x directions, or ``None``) with its columns multiplied by ``c``."""
    return None if D is None else D * c


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
        Defaults rtol 1e-9, atol 1e-12, LSODA with the exact Jacobian (banded for the
        sensitivity system): its compiled stepping made one evaluation 5-30 times and one
        gradient 1.6-25 times faster than scipy's BDF on the benchmark collection (see
        docs/solvers.md, "Where the time goes").
    gradient : str
        How :meth:`loss_and_grad` differentiates (one of :data:`GRADIENT_METHODS`):
        ``"forward"`` (default) integrates the forward sensitivities; ``"adjoint"`` one
        backward solve (:mod:`dynlearn.petab.adjoint`: 6x faster on Laske, 1.8x on
        Lucarelli, but 6-10x slower on reaction chains of 30 and 100 states and less
        accurate at loose tolerances); ``"auto"`` takes the adjoint where
        :func:`~dynlearn.petab.adjoint.prefer_adjoint` says it pays (a rule set on six
        collection problems that picked the adjoint on those chains too: opt-in until a
        rule holds on problems it was not set on). State-triggered events take forward
        sensitivities (``"adjoint"`` refuses them).
        :meth:`fisher_system` needs ``dy/dP`` and never takes the adjoint. See
        docs/solvers.md, "PEtab gradients".
    crawl_factor : float or None
        Forward sensitivities that crawl are given up for the adjoint: when the forward
        sensitivities of one simulation (in :meth:`loss_and_grad`, :meth:`objective` and
        the L-BFGS-B fit) take more than ``crawl_factor`` times the right-hand-side
        evaluations of its states alone (at least :data:`CRAWL_FLOOR`, and
        :data:`CRAWL_WORK` over the sensitivity system's size), that gradient and
        every later one is taken by the adjoint, with a :class:`GradientSwitchWarning`;
        :attr:`gradient_switch` says why. :meth:`fisher_system` needs them: watched
        (``watch=True``, as the Fisher method of :meth:`fit` asks) it raises
        :class:`SensitivityCrawlError` instead.
        Default :data:`CRAWL_FACTOR` = 20: on 26 problems of the benchmark collection the
        forward sensitivities of a simulation took at most 11.2 times its states'
        evaluations (Bachmann_MSB2011; the median simulation of each problem 0.8-5.9
        times), on Smith_BMCSystBiol2013 over 10 times before reaching 3/4 of its span.
        ``None``: never. Not with ``gradient="adjoint"`` or state-triggered events.
    gradient_switch : str or None
        Why the gradient switched to the adjoint (the simulation, its evaluations and its
        states'), or ``None`` while it has not.
    priors : dynlearn.petab.priors.Priors or None
        The parameter table's objective priors (``None`` when it has none).
    steady_state_horizon : float
        The longest preequilibration (and steady-state measurement) integration; the
        steady state is declared when the weighted RMS norm of dy/dt, with tolerances 100
        times rtol and atol, drops below 1.
    preequilibration : {"newton", "simulation"}
        How steady states (preequilibration, ``time = inf``) are found: damped Newton with
        a simulation fallback and algebraic sensitivities also with conservation laws
        (default), or simulation only (the former behaviour; :mod:`dynlearn.petab.steady`).
    steady_state_paths : collections.Counter
        How many steady states took each path, keyed ``"newton/regular"``,
        ``"simulation/conserved"``, ... (path, then the sensitivity method; ``none``
        without gradient).
    noise_only : tuple of int
        Positions in ``x`` of the estimated parameters that enter only noise formulas
        (``noiseFormula`` or ``noiseParameters`` placeholders) and nothing else: not the
        right-hand side, initial values, condition overrides, observable formulas or
        ``observableParameters``, and with SBML events no model constant at all. Found from
        the tables and the equations at load time. The simulation does not depend on them,
        so their optimum given one simulation needs no solve: :meth:`profiled_nllh`,
        :meth:`profiled_fisher_system` and :mod:`dynlearn.petab.hierarchical`.
    fallback_method : str or None
        The solver a failed LSODA solve is tried again with (default ``"BDF"``; ``None``:
        no second try, the failure is raised). LSODA is given a block-diagonal Jacobian of
        the sensitivity system (the states' ``J`` on every block, the fastest it accepts);
        at extreme parameters its Newton iterations can then fail to converge ("repeated
        convergence failures") where scipy's BDF, shrinking its steps instead, solves the
        same system (Fiedler_BMCSystBiol2016, a random start: LSODA failed, BDF solved it
        in 0.2 s, CVODES too). A time limit is not retried, nor a solve that used up its
        evaluation budget (``max_nfev``: a solution that blows up or oscillates fast, which
        BDF would spend another budget on).
    solver_fallbacks : collections.Counter
        How many solves were retried with :attr:`fallback_method`, keyed ``"plain"`` and
        ``"sensitivities"`` (the retry's outcome: ``"... failed"`` when it failed too).

    Notes
    -----
    Supported: PEtab v1 with one SBML model; condition overrides of parameters,
    compartments and initial values (numbers or parameter ids); observable and noise
    placeholders per measurement (also timepoint-specific); noise formulas; normal and
    Laplace noise on lin/log/log10 observables; replicates; preequilibration; steady-state
    measurements (``time = inf``); time-triggered ``piecewise`` with parameter-dependent
    switching times, and SBML events triggered by time or by the state
    (:mod:`dynlearn.petab.events`; state triggers take forward sensitivities), all with
    exact sensitivity jumps. Priors are not part of the likelihood
    (:meth:`nllh`, :meth:`loss_and_grad`: what AMICI's references are); :meth:`objective`
    adds them, and :meth:`fit` minimises it (the negative log-posterior when the parameter
    table has ``objectivePriorType``).
    """

    def __init__(self, petab_problem, rtol: float = 1e-9, atol: float = 1e-12,
                 method: str = "LSODA", steady_state_horizon: float = 1e9,
                 gradient: str = "forward", preequilibration: str = "newton",
                 fallback_method: str | None = "BDF", crawl_factor: float | None = CRAWL_FACTOR):
        self.petab_problem = pp = petab_problem
        if crawl_factor is not None and not crawl_factor > 1.0:
            raise PetabError(f"crawl_factor={crawl_factor!r}: give a number above 1, or None")
        self.crawl_factor = None if crawl_factor is None else float(crawl_factor)
        self.gradient_switch: str | None = None
        # the states' right-hand-side evaluations per simulation in the last evaluation
        # without gradient (the crawl's yardstick), and the bookkeeping of the solves
        self._state_nfev: list | None = None
        self._nfev_acc = 0
        self._sens_budget: int | None = None
        self._probing = False       # a solve for the crawl's yardstick: not counted
        self.rtol, self.atol, self.method = float(rtol), float(atol), method
        self.fallback_method = fallback_method
        self.solver_fallbacks: Counter = Counter()
        if gradient not in GRADIENT_METHODS:
            raise PetabError(f"gradient={gradient!r}: use one of {', '.join(GRADIENT_METHODS)}")
        self.gradient = gradient
        self.steady_state_horizon = float(steady_state_horizon)
        if preequilibration not in ("newton", "simulation"):
            raise PetabError(f"preequilibration={preequilibration!r}: use 'newton' or "
                             "'simulation'")
        self.preequilibration = preequilibration
        self.steady_state_paths: Counter = Counter()
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
        self.priors = parameter_priors(par, self.x_names, self.x_scales)

    def copy(self) -> PetabProblem:
        """A copy that evaluates independently of this problem.

        An evaluation keeps state on the problem between its solves: the crawl's yardstick
        and budget (:attr:`crawl_factor`), the switch to the adjoint
        (:attr:`gradient_switch`), and the :attr:`fallback_method` a fit's objective turns
        off after a start's first point. Two threads evaluating one problem would mix
        them; each thread should evaluate its own copy (every start of :meth:`fit` does,
        so a fit leaves the problem's settings as they were). The compiled model and the
        tables, which no evaluation changes, are shared; so are the counters
        :attr:`solver_fallbacks` and :attr:`steady_state_paths`, which count the solves of
        every copy.

        Returns
        -------
        PetabProblem
            With this problem's settings and :attr:`gradient_switch`.
        """
        new = copy.copy(self)
        new._state_nfev, new._nfev_acc, new._sens_budget = None, 0, None
        new._probing = False
        return new

    def _count(self, counter: Counter, key: str) -> None:
        if not self._probing:
            counter[key] += 1

    def to_scale(self, P) -> np.ndarray:
        """Linear values of the estimated parameters on their PEtab scales."""
        return to_scale(P, self.x_scales)

    def from_scale(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Linear values ``P`` of ``x`` and ``dP/dx``."""
        return from_scale(x, self.x_scales)

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
        self._y0 = Lambdified([vsyms], y0e)
        J = sp.Matrix(y0e).jacobian(sp.Matrix(vsyms)) if vsyms else sp.zeros(len(y0e), 0)
        self._y0_depends = [bool(J.row(i).free_symbols or any(J.row(i))) for i in
                            range(len(y0e))]
        self._y0_jac = Lambdified([vsyms], J) if vsyms else None

        # times at which the right-hand side switches (time-triggered piecewise)
        taus = _switching_times(list(rhs.values()), set(states))
        self._switch = self._switch_jac = None
        if taus:
            self._switch = Lambdified([vsyms], taus)
            Jt = (sp.Matrix(taus).jacobian(sp.Matrix(vsyms)) if vsyms
                  else sp.zeros(len(taus), 0))
            self._switch_jac = Lambdified([vsyms], Jt)

        # SBML events, time- or state-triggered (dynlearn.petab.events)
        self._events = None
        if ode.events:
            self._events = CompiledEvents([e.replaced(fixed_subs) for e in ode.events],
                                          states, vsyms, TIME)
            changed = sorted({k for e in ode.events for k in e.assignments} & self._par_ids)
            if changed:
                raise PetabError(f"parameter(s) {', '.join(changed)} of the parameter table "
                                 "are changed by SBML events: not supported")
            if any(pre) or np.any(np.asarray(meas["time"], dtype=float) == np.inf):
                raise PetabError(f"SBML events ({', '.join(self._events.ids)}) with "
                                 "preequilibration or steady-state measurements (time = inf) "
                                 "are not supported")

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
        self.noise_only = self._noise_only()

    def _noise_only(self) -> tuple[int, ...]:
        """Positions in ``x`` of the estimated parameters that enter only noise formulas
        (see :attr:`noise_only`), found from the tables and the model's equations."""
        ode = self.sbml
        # constants the dynamics read: right-hand sides (switching times included) and
        # initial values; with events every constant counts (their triggers and
        # assignments read them)
        used = set()
        for e in (*ode.rhs.values(), *ode.initial.values()):
            used.update(sp.sympify(e).free_symbols)
        other = set()
        for src, init in self._cond.values():
            other.update(s.index for k, s in src.items()
                         if s.index >= 0 and (ode.events or ode.symbols.get(k) in used))
            other.update(s.index for s in init.values() if s is not None and s.index >= 0)
        noise = set()
        for grp in self._groups:
            other.update(int(i) for i in np.unique(grp["E_obs"][1]) if i >= 0)
            noise.update(int(i) for i in np.unique(grp["E_noise"][1]) if i >= 0)
        out = tuple(sorted(noise - other))
        # the groups of rows whose noise reads one of them (the inner problem's rows)
        self._noise_groups = [i for i, grp in enumerate(self._groups)
                              if np.any(np.isin(grp["E_noise"][1], out))]
        return out

    def _observables(self, ode: SbmlOde, fixed_subs, varying):
        require("petab.v1", "reading PEtab")
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

    def _use_adjoint(self) -> bool:
        """Whether :meth:`loss_and_grad` takes the adjoint (``gradient="adjoint"``, or
        ``"auto"`` and :func:`dynlearn.petab.adjoint.prefer_adjoint` says it pays)."""
        if self._events is not None and self._events.has_state_events:
            # state-triggered firing times are found during the forward solve: the
            # adjoint's jumps are not; forward sensitivities handle them
            if self.gradient == "adjoint":
                names = ", ".join(self._events.ids[i] for i in self._events.state_indices)
                raise PetabError("gradient='adjoint' does not support state-triggered SBML "
                                 f"events ({names}): use 'forward'")
            return False
        if self.gradient_switch is not None:
            return True
        if self.gradient != "auto":
            return self.gradient == "adjoint"
        moving = set()      # entries of P that move a simulation (parameters, initial values)
        for src, init in self._cond.values():
            moving.update(s.index for k, s in src.items() if k in self._vidx and s.index >= 0)
            moving.update(s.index for s in init.values() if s is not None and s.index >= 0)
        return prefer_adjoint(len(self.sbml.states), len(moving),
                              sum(s["times"].size for s in self._sims))

    def _break_points(self, v, Dv, t_end: float) -> dict[float, tuple]:
        """The times in ``(0, t_end]`` (and 0 for events) where the right-hand side switches
        or time-triggered events fire: ``{time: (dtime/dP or None, event indices)}``."""
        points: dict[float, tuple] = {}
        if self._switch is not None and t_end > 0:
            tv = np.array(self._switch(v), dtype=float).reshape(-1)
            Jt = np.array(self._switch_jac(v), dtype=float).reshape(tv.size, -1) @ Dv
            for i in np.argsort(tv):
                # switches at one time (e.g. two conditions on one tau) make one jump
                if 0.0 < tv[i] < t_end and float(tv[i]) not in points:
                    points[float(tv[i])] = (Jt[i], [])
        if self._events is not None:
            for te, dte, idx in self._events.schedule(v, Dv, t_end):
                key = next((t for t in points if abs(t - te) <= 1e-12 * max(1.0, te)), te)
                points[key] = (dte, [*points.get(key, (None, []))[1], *idx])
        return points

    def _adjoint_tape(self, vf, times, y0, D0, Dtheta, v, Dv) -> AdjointTape:
        """The forward pass of one simulation for the adjoint gradient, with the jumps of
        :meth:`_solve_switched` (switching times and events) as affine maps of dy/dP."""
        n, nP = y0.size, Dtheta.shape[1]
        t_end = float(times[-1]) if times.size else 0.0
        points = self._break_points(v, Dv, t_end)

        def jump_at(t, dt, idx):
            def fn(y):
                # D+ = A D- + C: C is the image of D- = 0, A that of the identity with
                # nothing else moving (the jump is affine in D-, dv/dP and dt/dP)
                y_new, C = self._jump(vf, t, y, np.zeros((n, nP)), v, Dv, dt, idx, True)
                _, A = self._jump(vf, t, y, np.eye(n), v, np.zeros((Dv.shape[0], n)),
                                  None, idx, True)
                return y_new, A, C
            return fn
        # events at the start act on the initial state (no switching time there)
        start = jump_at(0.0, None, points.pop(0.0)[1]) if 0.0 in points else None
        jumps = [(t, jump_at(t, dt, idx), bool(idx)) for t, (dt, idx) in points.items()]
        return AdjointTape(vf, 0.0, times, y0, D0, Dtheta, self.method, self.rtol,
                           self.atol, where=" (petab)", jumps=jumps, start_jump=start)

    def _solve(self, vf, t0, times, y0, D0, Dtheta, grad):
        """States at ``times`` and dy/dP (or None), by :attr:`method`; a failed LSODA solve
        is tried once more with :attr:`fallback_method`."""
        try:
            return self._solve_by(self.method, vf, t0, times, y0, D0, Dtheta, grad)
        except SolveError as first:
            second = self.fallback_method
            # (an LSODA solve that used up its evaluation budget met a solution that blows
            # up or oscillates fast, not a Newton iteration that failed to converge: BDF
            # would spend another budget on it. Seen on Crauste_CellSystems2017's fit
            # starts, where both crawled to 1e6 evaluations at the same time, 98 s a start)
            if (self.method != "LSODA" or not second or second == self.method
                    or first.solver_message == BUDGET_EXHAUSTED):
                raise
            key = "sensitivities" if grad else "plain"
            try:
                out = self._solve_by(second, vf, t0, times, y0, D0, Dtheta, grad)
            except SolveError as retry:
                self._count(self.solver_fallbacks, f"{key} failed")
                if self._sens_budget is not None and retry.solver_message in _OUT_OF_BUDGET:
                    raise       # the retry crawled: the adjoint takes over (_simulate_all)
                raise SolveError(f"{first}; tried again with {second}, which failed too: "
                                 f"{retry}", status=first.status, t=first.t,
                                 solver_message=first.solver_message) from retry
            self._count(self.solver_fallbacks, key)
            return out

    def _solve_by(self, method, vf, t0, times, y0, D0, Dtheta, grad):
        budget = {} if self._sens_budget is None or not grad else {
            "max_nfev": self._sens_budget}
        prob = Problem(vf=vf, t0=t0, t_obs=times, y0=y0, obs_loss=None, method=method,
                       rtol=self.rtol, atol=self.atol, options=budget, name="petab")
        fs = ForwardSensitivity()
        if not grad:
            Y, res = solve_observed(vf, t0, times, y0, method, self.rtol, self.atol, {},
                                    where=prob.where)
            self._nfev_acc += res.nfev if res is not None else 0
            return Y, None
        # dy/dP directly (n (1 + nP) components, fewer where P moves nothing), not
        # dy/d[theta, y0] (n (1 + n_theta + n)) and then the chain rule
        return fs.directional(prob, Dtheta, D0)

    def _solve_switched(self, vf, times, y0, D0, Dtheta, grad, v, Dv):
        """:meth:`_solve` from ``t = 0`` in segments between the switching times of the
        right-hand side (time-triggered ``piecewise``) and the firing times of SBML events
        (time triggers scheduled in advance; state triggers located segment by segment by
        :meth:`~dynlearn.petab.events.CompiledEvents.locate`, the segment then ending at the
        firing). At a switch whose time depends on ``P`` the sensitivities jump by
        ``(f(tau-) - f(tau+)) dtau/dP``; at an event the state and the sensitivities jump
        as :mod:`dynlearn.petab.events` describes (a measurement at the firing time sees
        the state after the event)."""
        if times.size == 0:      # only steady-state data
            n = y0.size
            return np.empty((0, n)), (np.empty((0, n, Dtheta.shape[1])) if grad else None)
        t_end = float(times[-1])
        points = self._break_points(v, Dv, t_end)
        ev = self._events
        watch = ev is not None and ev.has_state_events
        if not points and not watch:
            return self._solve(vf, 0.0, times, y0, D0, Dtheta, grad)
        n, nP = y0.size, Dtheta.shape[1]
        Y = np.empty((times.size, n))
        SP = np.empty((times.size, n, nP)) if grad else None
        y = np.asarray(y0, dtype=float)
        D = (np.zeros((n, nP)) if D0 is None else D0) if grad else None
        trig = None
        if 0.0 in points:         # events at the start act on the initial state
            y, D = self._jump(vf, 0.0, y, D, v, Dv, None, points.pop(0.0)[1], grad)
        if watch:                 # state triggers: their values at the start, and firings
            trig, idx = ev.watch(0.0, y, v)
            y, D = self._fire(vf, 0.0, y, D, v, Dv, None, idx, trig, grad)
        if t_end == 0.0:
            Y[:] = y
            if grad:
                SP[:] = D
            return Y, SP
        a = 0.0
        for b in sorted({*points, t_end}):
            while True:
                # a state-triggered event firing before b ends the segment there
                hit = (ev.locate(vf, self.method, self.rtol, self.atol, a, b, y, v, trig,
                                 where=" (petab)") if watch else None)
                tb = hit.t if hit is not None else b
                sel = (times >= a) & (times <= tb) if a == 0.0 else (times > a) & (times <= tb)
                seg = np.unique(np.concatenate([times[sel], [tb]]))
                Ys, Ss = self._solve(vf, a, seg, y, D, Dtheta, grad)
                pos = np.searchsorted(seg, times[sel])
                Y[sel] = Ys[pos]
                if grad:
                    SP[sel] = Ss[pos]
                y = Ys[-1]
                D = Ss[-1] if grad else None
                if hit is None:
                    break
                dt = (ev.firing_time_derivative(hit, tb, y, D, vf.fun(tb, y), v, Dv)
                      if grad else None)
                y, D = self._fire(vf, tb, y, D, v, Dv, dt, hit.indices, trig, grad)
                at = times == tb
                Y[at] = y
                if grad:
                    SP[at] = D
                a = tb
            if b in points:
                dt, idx = points[b]
                y, D = self._fire(vf, b, y, D, v, Dv, dt, idx, trig, grad)
                if idx:
                    at = times == b
                    Y[at] = y
                    if grad:
                        SP[at] = D
            a = b
        return Y, SP

    def _fire(self, vf, t, y, D, v, Dv, dt, idx, trig, grad):
        """:meth:`_jump` at ``t`` with the events ``idx``; with state triggers watched
        (``trig``, a :class:`~dynlearn.petab.events.TriggerState`), then the state-triggered
        events that the assignments turn true, at the same time and with the same
        ``dt/dP``, until none does (a loop is a SolveError naming the event)."""
        while True:
            if trig is not None:
                self._events.record(trig, idx, t)
            y_new, D = self._jump(vf, t, y, D, v, Dv, dt, idx, grad)
            idx = (self._events.after_jump(trig, t, y, y_new, v)
                   if trig is not None and idx else [])
            y = y_new
            if not idx:
                return y, D

    def _jump(self, vf, t, y, D, v, Dv, dt, idx, grad):
        """The state and dy/dP right after time ``t``, where the right-hand side switches
        (``dt = dt/dP`` of the switching time, ``None`` when it is fixed) and the events
        ``idx`` fire."""
        if not grad:
            return (self._events.apply(idx, t, y, v)[0] if idx else y), None
        moves = dt is not None and bool(np.any(dt))
        d = 1e-9 * max(1.0, abs(t))       # f just before and just after t
        # T: the total derivative of the state at the jump, S- + f- dt/dP
        T = D + np.outer(vf.fun(t - d, y), dt) if moves else D
        if idx:
            y, T = self._events.apply(idx, t, y, v, T, Dv,
                                      dt if moves else np.zeros(D.shape[1]))
        if moves:
            T = T - np.outer(vf.fun(t + d, y), dt)
        return y, T

    def _steady_state(self, vf, y0, D0, Dtheta, grad):
        """Preequilibration: the steady state reached from ``y0`` and its dy/dP
        (:func:`dynlearn.petab.steady.steady_state`; the path taken is counted in
        :attr:`steady_state_paths`)."""
        ss = steady_state(vf, y0, D0, Dtheta, rtol=self.rtol, atol=self.atol,
                          method=self.method, horizon=self.steady_state_horizon, grad=grad,
                          newton=self.preequilibration == "newton")
        self._count(self.steady_state_paths, f"{ss.path}/{ss.sensitivity or 'none'}")
        return ss.y, ss.S

    def _simulate_all(self, P, grad: bool, adjoint: bool = False, scale=None,
                      watch: bool = False):
        # adjoint: the solves keep AdjointTapes (dynlearn.petab.adjoint) in place of dy/dP.
        # scale: dP/dx, the directions' scale in the solves (see direction_scale); every
        # dy/dP returned is on P's own scale. watch: forward sensitivities get an
        # evaluation budget from the states' own (crawl_factor); _Crawl when it runs out
        out = []
        pre_states = {}   # one steady state per preequilibration condition: many share one
        c = np.ones(len(P)) if scale is None else scale
        counts = []
        for i, s in enumerate(self._sims):
            v_sim, D_sim = self._varying_values(s["sim"], P)
            y_pre = S_pre = None
            if s["pre"]:
                if s["pre"] not in pre_states:
                    v_pre, D_pre = self._varying_values(s["pre"], P)
                    vf = VectorField(self.model, v_pre[self._theta_vidx])
                    y0, D0 = self._initial(s["pre"], v_pre, D_pre, P)
                    y_ss, S_ss = self._steady_state(vf, y0, _scaled(D0, c),
                                                    D_pre[self._theta_vidx] * c, grad)
                    pre_states[s["pre"]] = (y_ss, _scaled(S_ss, 1.0 / c))
                y_pre, S_pre = pre_states[s["pre"]]
            vf = VectorField(self.model, v_sim[self._theta_vidx])
            y0, D0 = self._initial(s["sim"], v_sim, D_sim, P, y_pre, S_pre)
            D0, Dc = _scaled(D0, c), D_sim * c
            if adjoint:
                SP = self._adjoint_tape(vf, s["times"], y0, D0, Dc[self._theta_vidx],
                                        v_sim, Dc)
                Y = SP.Y
            else:
                budget = None
                if watch and grad and self._state_nfev is not None:
                    k = np.count_nonzero(moving_directions(Dc[self._theta_vidx], D0))
                    budget = int(max(self.crawl_factor * self._state_nfev[i], CRAWL_FLOOR,
                                     CRAWL_WORK / (len(y0) * (1 + k))))
                self._nfev_acc, self._sens_budget = 0, budget
                try:
                    Y, SP = self._solve_switched(vf, s["times"], y0, D0,
                                                 Dc[self._theta_vidx], grad, v_sim, Dc)
                except SolveError as err:
                    if budget is not None and err.solver_message in _OUT_OF_BUDGET:
                        raise _Crawl(i, budget, self._state_nfev[i],
                                     err.solver_message == NO_PROGRESS) from err
                    raise
                finally:
                    self._sens_budget = None
                counts.append(self._nfev_acc)
            if s["steady"]:
                # measurements at t = inf: the steady state reached from the start
                y_ss, S_ss = self._steady_state(vf, y0, D0, Dc[self._theta_vidx], grad)
                Y = np.vstack([Y, y_ss[None]])
                if grad:
                    if adjoint:
                        SP.set_steady(S_ss)
                    else:
                        SP = np.concatenate([SP, S_ss[None]], axis=0)
            if grad and not adjoint:
                SP = SP / c
            out.append((Y, SP, v_sim, D_sim))
        if not grad:
            self._state_nfev = counts
        return out

    def _evaluate(self, *args, **kwargs):
        # every solve of an evaluation on one BLAS thread up to SINGLE_THREAD_MAX states:
        # OpenBLAS's threads gain nothing on LSODA's LU of a few hundred rows and lose much
        # when they compete for shared cores (dynlearn.fitting.threads)
        with blas_threads_for(len(self.sbml.states)):
            return self._evaluate_all(*args, **kwargs)

    def _evaluate_all(self, x, grad: bool, want_sim: bool = False,
                      fisher: list | None = None, profile: bool = False, prior=None,
                      watch_fisher: bool = False):
        # fisher: a list collecting, per group of rows, the blocks (A, b) of
        # fisher_system (only with grad); watch_fisher: its sensitivities are watched for a
        # crawl (SensitivityCrawlError). profile: the noise-only parameters are set to
        # their optimum given the simulation (with the priors ``prior``, a Priors or None)
        # before the likelihood is summed, and the point is returned last
        x = np.asarray(x, dtype=float)
        if x.shape != (len(self.x_names),):
            raise PetabError(f"x must have shape ({len(self.x_names)},), got {x.shape}")
        P, dPdx = self.from_scale(x)
        nP = len(P)
        adjoint = grad and fisher is None and not want_sim and self._use_adjoint()
        scale = direction_scale(dPdx)
        # forward sensitivities that crawl give way to the adjoint where it can serve
        watch = (grad and not adjoint and (fisher is None or watch_fisher) and not want_sim
                 and self.crawl_factor is not None
                 and not (self._events is not None and self._events.has_state_events))
        if watch and self._state_nfev is None:
            # the states' own evaluations, the crawl's yardstick (once: later evaluations
            # without gradient renew it). An internal probe: the counters of paths and
            # fallbacks report the evaluations asked for. If the states cannot be solved,
            # the gradient's own solve will say why
            self._probing = True
            try:
                self._simulate_all(P, False)
            except SolveError:
                watch = False
            finally:
                self._probing = False
        try:
            sims = self._simulate_all(P, grad, adjoint, scale, watch)
        except _Crawl as crawl:
            name = self._sims[crawl.index]["sim"]
            took = ("stopped moving in time within" if crawl.stalled else "took over")
            self.gradient_switch = (
                f"forward sensitivities of simulation {crawl.index} (condition '{name}') "
                f"{took} {crawl.budget} right-hand-side evaluations, against "
                f"{crawl.states} for its states alone (crawl_factor {self.crawl_factor:g}): "
                "the gradient is taken by the adjoint from here on")
            warnings.warn(f"PEtab problem: {self.gradient_switch}", GradientSwitchWarning,
                          stacklevel=4)
            if fisher is not None:
                # the Fisher information needs dy/dP, which the adjoint does not give
                raise SensitivityCrawlError(
                    f"no Fisher system: {self.gradient_switch} (crawl_factor=None waits "
                    "for the forward sensitivities)",
                    solver_message=NO_PROGRESS if crawl.stalled else BUDGET_EXHAUSTED
                ) from crawl
            adjoint = True
            sims = self._simulate_all(P, grad, adjoint, scale)
        if profile:     # (the simulation does not depend on the noise-only parameters)
            x = self._profile(x, P, sims, prior)
            P, dPdx = self.from_scale(x)
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
            val, d_h, d_s = nllh_terms(hv, sv, m, info["trans"], info["dist"])
            total += float(np.sum(val))
            if grad and fisher is not None:
                wh, bh, ws, bs = fisher_terms(hv, sv, m, info["trans"], info["dist"])
                for w, b, dy, de, idx in ((wh, bh, hdy, hde, Ih), (ws, bs, sdy, sde, Is)):
                    D = np.zeros((len(rows), nP))
                    if dy is not None and np.any(dy):
                        D += np.einsum("rn,rnp->rp", dy, SP[ti])
                    if de is not None and de.size:
                        mask = idx >= 0
                        np.add.at(D, (np.nonzero(mask)[0], idx[mask]), de[mask])
                    if np.any(D):     # noise that depends on no parameter adds no row
                        fisher.append((w[:, None] * D, b))
            if grad:
                for dval, dy, de, idx in ((d_h, hdy, hde, Ih), (d_s, sdy, sde, Is)):
                    if dy is not None and np.any(dy):
                        if adjoint:
                            SP.add_cotangent(ti, dval[:, None] * dy)
                        else:
                            g += np.einsum("r,rn,rnp->p", dval, dy, SP[ti])
                    if de is not None and de.size:
                        w = dval[:, None] * de
                        mask = idx >= 0
                        np.add.at(g, idx[mask], w[mask])
        if want_sim:
            return hsim
        if not grad:
            return (total, x) if profile else total
        if adjoint:     # one backward solve per simulation, after all cotangents are in
            for _, tape, _, _ in sims:
                g += tape.gradient() / scale
        return (total, g * dPdx, x) if profile else (total, g * dPdx)

    def _profile(self, x, P, sims, prior) -> np.ndarray:
        """``x`` with its noise-only parameters at their optimum given the simulations
        ``sims`` (:func:`dynlearn.petab.hierarchical.profile_noise`; no solve)."""
        from dynlearn.petab.hierarchical import NoiseRows, profile_noise

        blocks = []
        for gi in self._noise_groups:
            grp = self._groups[gi]
            info = self._obs[grp["obs"]]
            rows = grp["rows"]
            tt, Yr = self._t[rows], sims[grp["sim"]][0][grp["tidx"]]
            hv = self._eval_formula(info["h"], grp["E_obs"], tt, Yr, P, False)[0]

            def noise(PP, grad, comp=info["s"], E=grp["E_noise"], tt=tt, Yr=Yr):
                sv, _, sde, _, idx = self._eval_formula(comp, E, tt, Yr, PP, grad)
                return sv, sde, idx
            blocks.append(NoiseRows(h=np.asarray(hv, dtype=float), m=self._m[rows],
                                    trans=info["trans"], dist=info["dist"], noise=noise))
        return profile_noise(x, self.noise_only, self.lower, self.upper, self.x_scales,
                             blocks, prior)

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

    def fisher_system(self, x, watch: bool = False
                      ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """The negative log-likelihood, its gradient ``g`` and a matrix ``A`` and vector
        ``b`` with ``A.T @ b == g`` and ``A.T @ A`` the Fisher information matrix, all
        with respect to ``x`` (on the parameters' scales), by forward sensitivities.

        Each measurement row gives one row of ``A`` for its simulated (transformed) value
        and, when its noise depends on ``x``, one for its noise parameter (see
        :func:`fisher_terms`): with fixed normal noise ``b`` are the weighted residuals
        ``(h - m) / sigma`` and ``A`` their Jacobian (Gauss-Newton). Priors are not
        included. Used by :mod:`dynlearn.petab.fitting`.

        Parameters
        ----------
        x : array-like
            The estimated parameters on their scales.
        watch : bool
            Give up with :class:`SensitivityCrawlError` when the forward sensitivities of a
            simulation take more than :attr:`crawl_factor` times its states' evaluations
            (the Fisher method of :meth:`fit` then rejects a trial point, or goes on with
            BFGS updates of the adjoint gradient); by default they run to the end, however
            long.

        Returns
        -------
        nllh : float
        g : ndarray (n,)
        A : ndarray (rows, n)
        b : ndarray (rows,)
        """
        return self._fisher(x, profile=False, watch=watch)[:4]

    def _fisher(self, x, profile: bool, prior=None, watch: bool = False):
        """:meth:`fisher_system` (profiled: :meth:`profiled_fisher_system`), and the point."""
        blocks: list = []
        if profile:
            total, g, x = self._evaluate(x, grad=True, fisher=blocks, profile=True,
                                         prior=prior, watch_fisher=watch)
        else:
            total, g = self._evaluate(x, grad=True, fisher=blocks, watch_fisher=watch)
        _, dPdx = self.from_scale(x)
        n = len(self.x_names)
        A = np.vstack([a for a, _ in blocks]) * dPdx if blocks else np.zeros((0, n))
        b = np.concatenate([bb for _, bb in blocks]) if blocks else np.zeros(0)
        return total, g, A, b, np.asarray(x, dtype=float)

    def _inner_prior(self, prior: bool):
        return self.priors if prior and self.priors is not None else None

    def profiled_nllh(self, x, prior: bool = False) -> tuple[float, np.ndarray]:
        """The negative log-likelihood with the noise-only parameters (:attr:`noise_only`)
        profiled out: one simulation at ``x`` (without sensitivities), then those
        parameters set to the optimum of the likelihood given it, within their bounds on
        their scales (:func:`dynlearn.petab.hierarchical.profile_noise`; the entries of
        ``x`` are the warm start).

        Parameters
        ----------
        x : array-like
            The estimated parameters on their scales.
        prior : bool
            Optimise the noise parameters on the likelihood plus their objective priors
            (a posterior fit). The value returned is the likelihood alone either way.

        Returns
        -------
        nllh : float
            The likelihood at the profiled point.
        x : ndarray
            The profiled point: ``x`` with its noise-only entries at their optimum.
        """
        return self._evaluate(x, grad=False, profile=True, prior=self._inner_prior(prior))

    def profiled_loss_and_grad(self, x, prior: bool = False
                               ) -> tuple[float, np.ndarray, np.ndarray]:
        """:meth:`profiled_nllh` with the gradient: ``(nllh, g, x)``, ``g`` the full
        gradient at the profiled point ``x``. Its entries for the other parameters are
        the gradient of the profiled likelihood (envelope theorem); those of the
        noise-only parameters are ~0 inside their bounds."""
        return self._evaluate(x, grad=True, profile=True, prior=self._inner_prior(prior))

    def profiled_fisher_system(self, x, prior: bool = False, watch: bool = False):
        """:meth:`fisher_system` at the profiled point (:meth:`profiled_nllh`):
        ``(nllh, g, A, b, x)``, ``x`` the profiled point. ``A.T @ A`` is the Fisher
        information of all of ``x``; that of the profiled objective is its Schur complement
        over the noise-only parameters inside their bounds
        (:func:`dynlearn.petab.hierarchical.schur_complement`). ``watch``: as for
        :meth:`fisher_system`."""
        return self._fisher(x, profile=True, prior=self._inner_prior(prior), watch=watch)

    def simulate(self, x) -> np.ndarray:
        """Simulated observables (untransformed) in the measurement table's order."""
        return self._evaluate(x, grad=False, want_sim=True)

    def objective(self, x, prior: bool = True) -> tuple[float, np.ndarray]:
        """The objective :meth:`fit` minimises and its gradient with respect to ``x``.

        Parameters
        ----------
        x : array-like
            The estimated parameters on their scales.
        prior : bool
            Add the parameter table's objective priors (the negative log prior density,
            see :mod:`dynlearn.petab.priors`): the negative log-posterior, up to a
            constant. Without priors in the table, or with ``prior=False``, this is
            :meth:`loss_and_grad`.
        """
        f, g = self.loss_and_grad(x)
        if prior and self.priors is not None:
            fp, gp = self.priors.value_and_grad(x)
            f, g = f + fp, g + gp
        return f, g

    def fit(self, n_starts: int = 10, seed: int | None = 0, x0=None, maxiter: int = 2000,
            starts=None, max_time: float | None = None, prior: bool = True,
            optimizer: str = "auto", client=None) -> PetabFit:
        """Multi-start fit within the bounds of the parameter table, each start drawn
        uniformly on the parameters' scales (:func:`dynlearn.petab.fitting.fit_petab`): by
        default a trust-region method on the exact gradient and the Fisher information
        (Gauss-Newton for normal noise), ``optimizer="lbfgsb"`` scipy's L-BFGS-B.

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
        max_time : float, optional
            Wall-clock budget of the whole fit in seconds, checked inside every solve: the
            running start stops at the best point it evaluated (status ``"max_time"``) and
            the starts not begun are recorded with status ``"not run"``. The first
            evaluation of the first start always runs, so that there is a point to report.
        prior : bool
            Minimise the negative log-posterior (:meth:`objective`) when the parameter
            table has objective priors; ``False`` fits the likelihood alone.
        optimizer : {"auto", "fisher", "lbfgsb"}
            ``"auto"`` is ``"fisher"`` (see :mod:`dynlearn.petab.fitting`).
        client : None, Dask client or map-like callable
            Where the starts run (default: one after the other, here).

        Returns
        -------
        PetabFit
            The best point and every start's result, best first. A start whose simulation
            fails at its first point is recorded with ``fun = inf`` and its error message.
        """
        from dynlearn.petab.fitting import fit_petab

        return fit_petab(self, n_starts=n_starts, seed=seed, x0=x0, maxiter=maxiter,
                         starts=starts, max_time=max_time, prior=prior, optimizer=optimizer,
                         client=client)

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
        Its objective: the negative log-likelihood, or the negative log-posterior when
        ``posterior``.
    x_names : list of str
    runs : list of dict
        Every start, best first: ``index`` (its place among the starts), ``x``, ``fun``
        (the objective), ``nllh`` (the likelihood
        part), ``start``, ``nit``, ``message``, ``status`` (``"converged"``, ``"not
        converged"`` (out of iterations or stalled), ``"max_time"``, ``"failed"`` or ``"not
        run"``), ``success``, and from :func:`dynlearn.petab.fitting.fit_petab` ``reason``
        (the :class:`~dynlearn.optimizers.Status` value), ``optimizer``, ``n_eval`` and
        ``time``.
    posterior : bool
        Whether the objective included the parameter table's priors.
    """

    x: np.ndarray
    fun: float
    x_names: list
    runs: list
    posterior: bool = False

    @property
    def success(self) -> bool:
        """Whether the best start converged (its optimizer's own test)."""
        return bool(self.runs and self.runs[0].get("success", False))

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


def nllh_terms(h, sigma, m, trans: str, dist: str):
    """Per-row PEtab negative log-likelihood (normalisation constants included) and its
    derivatives with respect to the simulated value ``h`` and to ``sigma``.

    ``trans`` is the observable's transformation (``lin``, ``log``, ``log10``), ``dist`` its
    noise distribution (``normal`` or ``laplace``); ``m`` are the measurements. Shared by
    :class:`PetabProblem` and :mod:`dynlearn.petab.sciml` (one implementation of the loss).
    """
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


def fisher_terms(h, sigma, m, trans: str, dist: str):
    """Per-row factors of the Fisher information of the PEtab likelihood
    (:func:`nllh_terms`): ``(w_h, b_h, w_s, b_s)`` such that the rows
    ``w_h * dh/dx`` and ``w_s * dsigma/dx`` of a matrix ``A`` and the entries ``b_h``,
    ``b_s`` of a vector ``b`` give ``A.T @ b`` = the gradient and ``A.T @ A`` = the Fisher
    information (expected Hessian) with respect to ``x``.

    For normal noise on the transformed value ``t(h)``: ``w_h = t'(h) / sigma``, ``b_h =
    (t(h) - t(m)) / sigma`` (the weighted residual), ``w_s = sqrt(2) / sigma``, ``b_s =
    (1 - b_h^2) / sqrt(2)``; for Laplace noise ``b_h = sign(t(h) - t(m))``, ``w_s = 1 /
    sigma``, ``b_s = 1 - |t(h) - t(m)| / sigma``.
    """
    if trans == "lin":
        ht, mt, dht = h, m, np.ones_like(h)
    elif trans == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            ht, mt, dht = np.log(h), np.log(m), 1.0 / h
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ht, mt, dht = np.log10(h), np.log10(m), 1.0 / (h * _LN10)
    d = ht - mt
    w_h = dht / sigma
    if dist == "normal":
        r = d / sigma
        return w_h, r, math.sqrt(2.0) / sigma, (1.0 - r ** 2) / math.sqrt(2.0)
    return w_h, np.sign(d), 1.0 / sigma, 1.0 - np.abs(d) / sigma


def load(path: str | os.PathLike, **options) -> PetabProblem:
    """Load a PEtab problem (v1, or v2 and PEtab SciML) from its YAML file.

    Parameters
    ----------
    path : str or path-like
        The problem's YAML file.
    **options
        Solver settings passed to :class:`PetabProblem`: ``rtol``, ``atol``, ``method``,
        ``steady_state_horizon`` (the longest preequilibration, default 1e9),
        ``preequilibration`` (``"newton"``, the default, or ``"simulation"``),
        ``gradient``, ``fallback_method`` (see :class:`PetabProblem`); for a PEtab
        SciML problem those of :class:`~dynlearn.petab.sciml.SciMLProblem`.

    Returns
    -------
    PetabProblem or SciMLProblem
        A v2 problem with the ``sciml`` extension, a mapping table, or experiments with
        condition changes after their start is a
        :class:`~dynlearn.petab.sciml.SciMLProblem`; another v2 problem is read through
        :func:`dynlearn.petab.v2.as_v1` (experiments starting at t = 0, with at most a
        preequilibration) and evaluated by :class:`PetabProblem`.

    Raises
    ------
    PetabError
        An unsupported construct (named with its id) or inconsistent tables.
    MissingDependencyError
        The ``petab`` extra is not installed.
    """
    from dynlearn.petab import v2

    content = v2._read_yaml(path)
    if v2.format_version(path, content) >= 2:
        tables = v2.read_v2(path)
        if "sciml" in tables.extensions or (tables.mapping is not None and len(
                tables.mapping)) or v2.has_time_courses(tables):
            from dynlearn.petab.sciml import SciMLProblem
            return SciMLProblem(tables, **options)
        return PetabProblem(v2.as_v1(tables), **options)
    petab = require("petab.v1", "reading PEtab")
    pp = petab.Problem.from_yaml(v1_files(path, content),
                                 base_path=str(Path(path).resolve().parent))
    return PetabProblem(pp, **options)


#: the file lists of a v1 problem's YAML (``problems`` entries) and what they hold
V1_FILE_KEYS = {"sbml_files": "SBML model", "condition_files": "condition",
                "measurement_files": "measurement", "observable_files": "observable"}


def v1_files(path: str | os.PathLike, content: dict | None = None) -> dict:
    """A v1 problem's YAML content with every file it lists checked: a missing one is a
    :class:`~dynlearn.errors.PetabError` naming it (not the petab library's bare
    ``FileNotFoundError``). Visualization files are left out: they say how to plot the
    data, nothing of the likelihood, and a problem whose plots are missing or malformed
    still loads. ``content``: the YAML file's content when already read (it is changed)."""
    from dynlearn.petab.v2 import _read_yaml

    y = _read_yaml(path) if content is None else content
    base = Path(path).resolve().parent
    listed = [("parameter", f) for f in np.atleast_1d(y.get("parameter_file") or [])]
    problems = y.get("problems")
    if not isinstance(problems, list) or not problems:
        raise PetabError(f"{path}: no 'problems' list (not a PEtab v1 problem file)")
    for k, sub in enumerate(problems):
        if not isinstance(sub, dict):
            raise PetabError(f"{path}: problems[{k}] is not a mapping of file lists")
        sub.pop("visualization_files", None)
        for key, what in V1_FILE_KEYS.items():
            listed += [(what, f) for f in np.atleast_1d(sub.get(key) or [])]
    for what, name in listed:
        if not (base / str(name)).is_file():
            raise PetabError(f"{path}: the {what} file '{name}' it lists does not exist "
                             f"(looked for {base / str(name)})")
    return y
