"""Hybrid models: symbolic physics with neural-network terms.

A :class:`HybridModel` is an immutable description: states, parameters, optional exogenous
inputs, right-hand sides (sympy expressions in which network outputs such as ``nn[0]``
appear as symbols) and observables. It compiles itself once, on first use, into the
numerical functions the solvers and sensitivity methods need (see :mod:`dynlearn.vectorfield`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

from dynlearn.core.bandwidth import bandwidth
from dynlearn.core.expressions import (
    FUNCTIONS,
    check_constants,
    normalize_name,
    parse_expression,
)
from dynlearn.core.neural import BaseNetwork, NetworkOutput
from dynlearn.core.parameters import Parameter
from dynlearn.core.symbolic import CompiledExprs, derivative, jacobian_exprs
from dynlearn.errors import ModelError, ModelTypeError, ParameterError

__all__ = ["SENSITIVITY_SYSTEM_LIMIT", "HybridModel"]

#: largest forward-sensitivity system ``n (1 + q)`` compiled as one symbolic function with
#: its exact Jacobian (:meth:`CompiledModel.sensitivity_system`); forward sensitivities use
#: it up to this size. Above it, one compiled call for ``f, df/dy, df/dtheta``
#: (:meth:`CompiledModel.rhs_and_jacobians`) plus numpy products is faster (per call,
#: measured by benchmarks/bench_stiff.py: 8 against 27 us at 12 components, 52 against
#: 43 us at 110, 524 against 90 us at 930), and the symbolic Jacobian's size grows as its
#: square.
SENSITIVITY_SYSTEM_LIMIT = 80


def _as_symbol(s, what: str, renamed: dict | None = None) -> sp.Symbol:
    """A declared symbol, its name normalised (NFKC) as Python's parser normalises the
    names in equations; a sympy Symbol whose name changes is replaced, and the replacement
    recorded in ``renamed`` (applied to the model's sympy expressions)."""
    if isinstance(s, str):
        if not s.isidentifier():
            raise ModelError(f"{what} name {s!r} is not a valid identifier")
        return sp.Symbol(normalize_name(s))
    if isinstance(s, NetworkOutput):
        raise ModelError(f"{what} {s} is a network output; networks cannot be {what}s")
    if isinstance(s, sp.Symbol):
        name = normalize_name(s.name)
        if name == s.name:
            return s
        new = sp.Symbol(name, **s.assumptions0)
        if renamed is not None:
            renamed[s] = new
        return new
    raise ModelTypeError(f"{what} must be a sympy Symbol or a name, got {s!r} "
                         f"({type(s).__name__})")


def _as_expr(e, where: str, names: Mapping[str, sp.Basic],
             renamed: Mapping | None = None) -> sp.Expr:
    """An equation as a sympy expression: text is parsed (which checks its constants);
    a number or a sympy expression has its constants checked (no ``nan``, ``zoo``,
    complex or overflowing constants) and declared symbols renamed as ``renamed`` says."""
    if isinstance(e, str):
        return parse_expression(e, names, where=where)
    if isinstance(e, (int, float, np.number)):
        e = sp.Float(e) if isinstance(e, (float, np.floating)) else sp.Integer(int(e))
        return check_constants(e, where)
    if isinstance(e, sp.Basic):
        if isinstance(e, (sp.MatrixBase, sp.NDimArray)):
            raise ModelTypeError(f"{where}: expected a scalar expression, got a matrix/array")
        if renamed:
            e = e.xreplace(dict(renamed))
        check_functions(e, where)
        return check_constants(e, where)
    raise ModelTypeError(f"{where}: expected a sympy expression or a number, got {e!r}")


def check_functions(e: sp.Basic, where: str) -> None:
    """Raise :class:`~dynlearn.ModelError` if ``e`` calls a function sympy does not know
    (``sp.Function("exq")(x)``): it has no numerical value, so the model could not be
    compiled, and the printer's error deep inside sympy would not name it."""
    undefined = sorted({str(f.func) for f in e.atoms(AppliedUndef)})
    if undefined:
        raise ModelError(f"{where} calls the undefined function(s) {undefined} (made with "
                         "sp.Function(name), they have no numerical value); use sympy's "
                         f"functions, e.g. sp.exp, sp.sin: those of model files are "
                         f"{sorted(FUNCTIONS)}")


class HybridModel:
    """A dynamical system with known (symbolic) and learned (neural) parts.

    Parameters
    ----------
    states : sequence of sympy.Symbol or str
        State variables, in the order used for ``y``.
    rhs : mapping state -> expression
        ``dy/dt`` for every state. Expressions may use states, parameters, inputs, the time
        symbol and network outputs (``nn[i]``), anywhere (sums, products, inside ``exp``).
    params : mapping symbol -> float | Parameter | dict, optional
        Physical parameters in declaration order. A bare number is a free, untransformed
        parameter with that initial value; use :class:`~dynlearn.Parameter` for bounds,
        ``fixed=True`` or ``transform="log"``.
    inputs : sequence of sympy.Symbol or str, optional
        Exogenous input signals (e.g. a pump voltage ``u``), supplied at solve time.
    observables : mapping name -> expression, optional
        What the data measures, as expressions of states, parameters, inputs and time.
        Default: every state, observed under its own name.
    time : sympy.Symbol, optional
        The time symbol used in expressions (default ``t``).
    name : str, optional
    units : mapping name -> str, optional
        Unit labels, keyed by the name (or symbol) of a state, input, observable, parameter
        or the time symbol, e.g. ``{x: "V", "t": "s", "k": "1/s"}``. Labels only: nothing is
        converted; they appear on plot axes, in parameter tables, summaries and reports.
        A parameter's unit may also be given as ``Parameter(..., unit=...)``. An observable
        without a label of its own takes the label of the state it is (when it is one).

    Raises
    ------
    ModelError
        An inconsistent model: an undeclared symbol, a missing equation, a name declared
        twice, a parameter that appears in no equation (right-hand side, observable or
        network input), or a unit for a name the model does not declare.

    Attributes
    ----------
    theta0 : ndarray
        Initial free parameters in physical units: free physical parameters in declaration
        order, then every network's weights.
    theta_names : list of str
    networks : tuple of BaseNetwork
        Networks found in the right-hand sides, by first appearance.
    units : dict name -> str
        The unit labels given (states, inputs, observables, time and parameters; see
        :meth:`unit`).

    Examples
    --------
    >>> import sympy as sp, dynlearn as dl
    >>> x, y, a, d = sp.symbols("x y alpha delta")
    >>> nn = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[5, 5, 5], activation="rbf", seed=0)
    >>> m = dl.HybridModel(states=[x, y], params={a: 1.3, d: 1.8},
    ...                    rhs={x: a*x + nn[0], y: -d*y + nn[1]})
    >>> m.theta0.shape
    (89,)
    """

    def __init__(self, states: Sequence, rhs: Mapping, params: Mapping | None = None,
                 inputs: Sequence | None = None, observables: Mapping | None = None,
                 time: sp.Symbol | None = None, name: str | None = None,
                 units: Mapping | None = None):
        self.name = name or "model"
        if isinstance(states, (str, sp.Symbol)) or not isinstance(states, Sequence):
            raise ModelTypeError(f"states must be a list of symbols, got {states!r}")
        if len(states) == 0:
            raise ModelError("a model needs at least one state")
        # names are normalised (NFKC) where they are declared; sympy symbols whose names
        # change are replaced in the equations given as sympy expressions
        renamed: dict[sp.Symbol, sp.Symbol] = {}
        self.states = tuple(_as_symbol(s, "state", renamed) for s in states)
        self.time = time if time is not None else sp.Symbol("t")
        if not isinstance(self.time, sp.Symbol):
            raise ModelTypeError(f"time must be a sympy Symbol, got {self.time!r}")
        self.time = _as_symbol(self.time, "time", renamed)
        inputs = [] if inputs is None else inputs
        if isinstance(inputs, (str, sp.Symbol)):
            inputs = [inputs]
        self.inputs = tuple(_as_symbol(u, "input", renamed) for u in inputs)

        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise ModelTypeError("params must be a dict {symbol: value}, got "
                                 f"{type(params).__name__}")
        self.params: dict[sp.Symbol, Parameter] = {}
        for k, v in params.items():
            s = _as_symbol(k, "parameter", renamed)
            try:
                self.params[s] = Parameter.coerce(v, str(s))
            except ParameterError as exc:
                raise type(exc)(f"parameter '{s}': {exc}") from None
        self.param_symbols = tuple(self.params)

        # every declared name must be unique across roles
        seen: dict[str, str] = {}
        for role, syms in (("state", self.states), ("parameter", self.param_symbols),
                           ("input", self.inputs), ("time", (self.time,))):
            for s in syms:
                if s.name in seen:
                    hint = (" (pass time=sp.Symbol('time') to name time differently)"
                            if "time" in (role, seen[s.name]) else "")
                    raise ModelError(f"'{s.name}' is declared twice, as {seen[s.name]} and as "
                                     f"{role}{hint}")
                seen[s.name] = role
        self._names = {s.name: s for s in (*self.states, *self.param_symbols, *self.inputs,
                                            self.time)}

        # right-hand sides
        if not isinstance(rhs, Mapping):
            raise ModelTypeError("rhs must be a dict {state: expression}")
        by_name = {}
        for k, v in rhs.items():
            key = k.name if isinstance(k, sp.Symbol) else k
            key = normalize_name(key) if isinstance(key, str) else key
            if key not in {s.name for s in self.states}:
                raise ModelError(f"rhs has an equation for '{key}', which is not a state; "
                                 f"states are {[s.name for s in self.states]}")
            by_name[key] = v
        missing = [s.name for s in self.states if s.name not in by_name]
        if missing:
            raise ModelError(f"state(s) {missing} have no equation in rhs; add d{missing[0]}/dt "
                             "(use 0 for a constant state)")
        self.rhs = tuple(_as_expr(by_name[s.name], f"rhs of '{s.name}'", self._names, renamed)
                         for s in self.states)

        # networks, discovered from the equations
        nets: list[BaseNetwork] = []
        for e in self.rhs:
            outs = sorted((a for a in e.free_symbols if isinstance(a, NetworkOutput)),
                          key=lambda a: (a.network.uid, a.index))
            for a in outs:
                # identity is the uid: a network and its copies with other weights
                # (BaseNetwork.with_weights) are one network
                if all(a.network.uid != n.uid for n in nets):
                    if any(n.name == a.network.name for n in nets):
                        raise ModelError(f"two different networks are both named "
                                         f"'{a.network.name}'; give each network its own name")
                    nets.append(a.network)
        self.networks = tuple(nets)
        allowed = set(self.states) | set(self.param_symbols) | set(self.inputs) | {self.time}
        for s, e in zip(self.states, self.rhs):
            unknown = {a for a in e.free_symbols
                       if a not in allowed and not isinstance(a, NetworkOutput)}
            if unknown:
                names = sorted(str(u) for u in unknown)
                raise ModelError(f"rhs of '{s}' uses undeclared symbol(s) {names}: declare them "
                                 "as states, params or inputs (time is "
                                 f"'{self.time}')")
        for net in self.networks:
            for i, v in enumerate(net.inputs):
                unknown = {a for a in v.free_symbols if a not in allowed}
                if unknown:
                    raise ModelError(f"network '{net.name}' input {i} ({v}) uses undeclared "
                                     f"symbol(s) {sorted(map(str, unknown))}")
                check_functions(v, f"network '{net.name}' input {i} ({v})")

        # observables
        if observables is None:
            observables = {s.name: s for s in self.states}
        if not isinstance(observables, Mapping):
            raise ModelTypeError("observables must be a non-empty dict {name: expression}")
        if not observables:
            raise ModelError("observables must be a non-empty dict {name: expression}")
        self.observables: dict[str, sp.Expr] = {}
        for k, v in observables.items():
            key = normalize_name(k.name if isinstance(k, sp.Symbol) else str(k))
            if key in self.observables:
                raise ModelError(f"observable '{key}' is declared twice")
            if key in {u.name for u in self.inputs} or key == self.time.name:
                raise ModelError(f"observable '{key}' has the name of an input or of time; "
                                 "rename it")
            e = _as_expr(v, f"observable '{key}'", self._names, renamed)
            bad = {a for a in e.free_symbols if a not in allowed}
            if bad:
                raise ModelError(f"observable '{key}' uses {sorted(map(str, bad))}, which are "
                                 "not states, parameters, inputs or time"
                                 + (" (observables cannot use network outputs)"
                                    if any(isinstance(a, NetworkOutput) for a in bad) else ""))
            self.observables[key] = e
        self.observable_names = tuple(self.observables)

        # a parameter used nowhere cannot be fitted (the data say nothing about it) and is
        # almost always a typo or a leftover: refuse it here, not as an "n/a" after a fit
        used = set().union(*(e.free_symbols for e in (*self.rhs, *self.observables.values())))
        for net in self.networks:
            for v in net.inputs:
                used |= v.free_symbols
        unused = [s.name for s in self.param_symbols if s not in used]
        if unused:
            raise ModelError(f"parameter(s) {unused} appear in no equation (right-hand sides, "
                             "observables or network inputs); remove them or use them")

        self._set_units(units)

        # parameter vector layout
        self.free_params = tuple(s for s, p in self.params.items() if not p.fixed)
        self._free_index = np.array([i for i, s in enumerate(self.param_symbols)
                                     if not self.params[s].fixed], dtype=int)
        self._compiled = None

    def _set_units(self, units: Mapping | None) -> None:
        """Check the unit labels and store them: parameters' units on their Parameter, every
        label (parameters' included) in :attr:`units`."""
        given: dict[str, str] = {}
        for k, v in (units or {}).items():
            key = normalize_name(k.name if isinstance(k, sp.Symbol) else str(k))
            if v is None:
                continue
            if not isinstance(v, str):
                raise ModelTypeError(f"the unit of '{key}' must be a string label, got {v!r}")
            if key not in self._names and key not in self.observables:
                raise ModelError(f"a unit is given for '{key}', which is not a state, input, "
                                 "observable, parameter or the time of this model; names are "
                                 f"{sorted({*self._names, *self.observables})}")
            if v.strip():
                given[key] = v.strip()
        for s, p in list(self.params.items()):
            if s.name in given and p.unit and p.unit != given[s.name]:
                raise ModelError(f"parameter '{s.name}' has two units: {p.unit!r} (its "
                                 f"Parameter) and {given[s.name]!r} (units=)")
            if s.name in given and not p.unit:
                self.params[s] = p.replace(unit=given[s.name])
        for s, p in self.params.items():
            if p.unit:
                given[s.name] = p.unit
        self.units: dict[str, str] = given

    def unit(self, name: str) -> str:
        """The unit label of a name (``""`` when it has none).

        ``name`` is a state, input, observable, parameter or the time symbol's name, or the
        label of an estimated initial state (``y0[x]`` or ``y0[x]@experiment``: the unit of
        ``x``). An observable without a label of its own that is a state takes that state's.
        A network output that is a term of one state's equation (``dx/dt = ... + nn[0]``)
        has that state's rate, ``"<unit of x>/<unit of time>"``.
        """
        name = str(name)
        if name.startswith("y0[") and "]" in name:
            name = name[3:name.index("]")]
        if name in self.units:
            return self.units[name]
        e = self.observables.get(name)
        if isinstance(e, sp.Symbol) and e.name in self.units and e in set(self.states):
            return self.units[e.name]
        if name.endswith("]") and self.networks:
            return self._rate_unit(name)
        return ""

    def _rate_unit(self, output: str) -> str:
        """The unit of a network output that is a term (times a number) of exactly one
        state's right-hand side: that state's unit over time's; "" otherwise."""
        homes = []
        for s, e in zip(self.states, self.rhs):
            for term in sp.Add.make_args(e):
                _, rest = term.as_coeff_Mul()
                if isinstance(rest, NetworkOutput) and rest.name == output:
                    homes.append(s.name)
        su, tu = (self.units.get(homes[0], ""), self.units.get(self.time.name, "")) \
            if len(homes) == 1 else ("", "")
        if not su or not tu:
            return ""
        return f"{su}/({tu})" if any(c in tu for c in "/* ") else f"{su}/{tu}"

    def label(self, name: str) -> str:
        """``name`` with its unit for an axis or a table, e.g. ``"x [V]"`` (``"x"`` without,
        and ``"day"``, not ``"day [day]"``, when the name is the unit)."""
        u = self.unit(name)
        return f"{name} [{u}]" if u and u != str(name) else str(name)

    # --- parameter vector --------------------------------------------------------------
    @property
    def n_states(self) -> int:
        """The number of states."""
        return len(self.states)

    @property
    def n_theta(self) -> int:
        """The length of theta: free physical parameters plus network weights."""
        return len(self.free_params) + sum(n.n_weights for n in self.networks)

    @property
    def theta0(self) -> np.ndarray:
        """Free parameters in physical units, then network weights (a fresh copy)."""
        vals = [self.params[s].value for s in self.free_params]
        return np.concatenate([np.array(vals, dtype=float)]
                              + [n.weights for n in self.networks])

    @property
    def theta_names(self) -> list[str]:
        """Names of the entries of theta: free parameters, then the weights
        (``nn.W0[i,j]``, ``nn.b0[j]``, ...)."""
        names = [s.name for s in self.free_params]
        for n in self.networks:
            names += n.weight_names()
        return names

    def theta_slices(self) -> dict[str, slice]:
        """Where each block lives in theta: ``"params"`` and one entry per network name."""
        out = {"params": slice(0, len(self.free_params))}
        i = len(self.free_params)
        for n in self.networks:
            out[n.name] = slice(i, i + n.n_weights)
            i += n.n_weights
        return out

    def check_theta(self, theta) -> np.ndarray:
        """``theta`` as a finite float array of the right length (``theta0`` when None), or a
        ParameterError saying what is wrong."""
        if theta is None:
            return self.theta0
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.n_theta,):
            raise ParameterError(f"theta must have shape ({self.n_theta},) for this model "
                                 f"({len(self.free_params)} free parameters + "
                                 f"{self.n_theta - len(self.free_params)} network weights); "
                                 f"got shape {theta.shape}")
        if not np.all(np.isfinite(theta)):
            bad = int(np.flatnonzero(~np.isfinite(theta))[0])
            raise ParameterError(f"theta[{bad}] ({self.theta_names[bad]}) is {theta[bad]}; "
                                 "theta must be finite")
        return theta

    def split_theta(self, theta) -> tuple[np.ndarray, list[np.ndarray]]:
        """All physical parameter values (fixed included) and the weights of each network."""
        theta = np.asarray(theta, dtype=float)
        p = np.array([self.params[s].value for s in self.param_symbols], dtype=float)
        nfree = len(self.free_params)
        p[self._free_index] = theta[:nfree]
        ws, i = [], nfree
        for n in self.networks:
            ws.append(theta[i:i + n.n_weights])
            i += n.n_weights
        return p, ws

    def with_theta(self, theta) -> HybridModel:
        """A copy whose initial values (parameters and weights) are ``theta``.

        The copy's networks carry the new weights (copies made by
        :meth:`BaseNetwork.with_weights`): ``fitted.networks[0].weights`` are the fitted
        weights. This model and its networks are not changed.
        """
        theta = self.check_theta(theta)
        new = self._copy()
        p, ws = self.split_theta(theta)
        new.params = {s: self.params[s].replace(value=float(v)) if not self.params[s].fixed
                      else self.params[s] for s, v in zip(self.param_symbols, p)}
        new.networks = tuple(n.with_weights(w) for n, w in zip(self.networks, ws))
        return new

    def with_networks(self, networks: Sequence[BaseNetwork]) -> HybridModel:
        """A copy in which some networks are replaced by copies of them with other weights.

        Parameters
        ----------
        networks : sequence of BaseNetwork
            Networks of this model as carried by another model (e.g. a fitted one) or made
            by :meth:`BaseNetwork.with_weights`; each replaces the network it is a copy of.
            Use it to keep fitted weights in a model rebuilt from the same equations.

        Raises
        ------
        ModelError
            When a network is not one of this model's (nor a copy of one).
        """
        mine = {n.uid for n in self.networks}
        foreign = [n.name for n in networks if n.uid not in mine]
        if foreign:
            raise ModelError(f"network(s) {foreign} are not networks of this model (nor copies "
                             "of them); a model's networks are found in its equations")
        by_uid = {n.uid: n for n in networks}
        new = self._copy()
        new.networks = tuple(by_uid.get(n.uid, n) for n in self.networks)
        return new

    def _copy(self) -> HybridModel:
        # a shallow copy: it shares the compiled functions, which depend only on the
        # equations, never on parameter values or weights
        new = object.__new__(HybridModel)
        new.__dict__.update(self.__dict__)
        return new

    def with_params(self, **changes) -> HybridModel:
        """A copy with some parameters changed.

        Example: ``m.with_params(beta=dl.Parameter(0.9, fixed=True))``.

        Changing which parameters are free changes the layout of theta.
        """
        params = dict(self.params)
        for k, v in changes.items():
            s = self._names.get(normalize_name(k))
            if s not in self.params:
                raise ParameterError(f"'{k}' is not a parameter of this model; parameters are "
                                     f"{[p.name for p in self.param_symbols]}")
            params[s] = Parameter.coerce(v, k) if not isinstance(v, (int, float)) \
                else self.params[s].replace(value=float(v))
            if not params[s].unit and self.params[s].unit:    # a new spec keeps the label
                params[s] = params[s].replace(unit=self.params[s].unit)
        units = {k: v for k, v in self.units.items()
                 if k not in self._names or self._names[k] not in self.params}
        new = HybridModel(states=self.states, rhs=dict(zip(self.states, self.rhs)), params=params,
                          inputs=self.inputs, observables=self.observables, time=self.time,
                          name=self.name, units=units)
        return new.with_networks(self.networks)

    # --- compiled numerics -------------------------------------------------------------
    @property
    def compiled(self) -> CompiledModel:
        """The compiled numerical functions (built on first use, shared by the model's copies)."""
        if self._compiled is None:
            self._compiled = CompiledModel(self)
        return self._compiled

    def use_compiled(self, compiled: CompiledModel) -> None:
        """Evaluate this model with ``compiled`` instead of compiling its own on first use.

        ``compiled`` must come from a model of the same structure: the same states, time,
        inputs, parameters (in order, the same ones free), equations, observables and
        networks (architecture; for a custom network, the network itself or a copy). The
        compiled functions depend on nothing else (never on values or weights), so a Dask
        worker keeps those of the fits it ran and gives them to the copies of the same model
        that later fits send it (``dynlearn.distributed.dask.share_compiled``).
        """
        self._compiled = compiled

    def __getstate__(self):
        # compiled functions are rebuilt where the model is unpickled (e.g. on a dask worker)
        state = dict(self.__dict__)
        state["_compiled"] = None
        return state

    def __repr__(self) -> str:
        eqs = ", ".join(f"d{s}/dt = {e}" for s, e in zip(self.states, self.rhs))
        nets = ", ".join(n.name for n in self.networks) or "none"
        return (f"HybridModel({eqs}; params={[s.name for s in self.param_symbols]}, "
                f"networks: {nets})")

    def equations(self) -> list[str]:
        """Readable equations, one per state."""
        return [f"d{s}/dt = {e}" for s, e in zip(self.states, self.rhs)]


class CompiledModel:
    """All compiled pieces of a model (built once per model, shared by its copies).

    Argument groups are ``[t], y, p, z, u``: time, states, all physical parameters (fixed
    included), all network outputs (concatenated over networks) and inputs.
    """

    def __init__(self, model: HybridModel):
        self.model = model
        Y = list(model.states)
        P = list(model.param_symbols)
        U = list(model.inputs)
        Z = [o for net in model.networks for o in net.outputs]
        T = [model.time]
        groups = [T, Y, P, Z, U]
        ngroups = [T, Y, P, [], U]   # network inputs and observables cannot use network outputs
        n, npar, nz = len(Y), len(P), len(Z)
        rhs = list(model.rhs)
        self.n, self.np, self.nz, self.nu = n, npar, nz, len(U)
        self.f = CompiledExprs(groups, rhs)
        self.f_y = CompiledExprs(groups, rhs, (n, n), wrt=[Y], values=False)
        self.f_p = CompiledExprs(groups, rhs, (n, npar), wrt=[P], values=False)
        self.f_z = CompiledExprs(groups, sum(jacobian_exprs(rhs, Z), []), (n, nz))
        self.free = model._free_index
        # network inputs v_k = g_k(t, y, p, u)
        self.nets = []
        zi = 0
        for net in model.networks:
            g = list(net.inputs)
            k = len(g)
            self.nets.append(dict(
                net=net,
                zslice=slice(zi, zi + net.n_outputs),
                g=CompiledExprs(ngroups, g),
                g_y=CompiledExprs(ngroups, sum(jacobian_exprs(g, Y), []), (k, n)),
                g_p=CompiledExprs(ngroups, sum(jacobian_exprs(g, P), []), (k, npar)),
                # inputs that are plain states are read from y without a compiled call
                state_index=(np.array([Y.index(e) for e in g]) if all(e in Y for e in g)
                             else None),
            ))
            zi += net.n_outputs
        obs = list(model.observables.values())
        no = len(obs)
        self.h = CompiledExprs(ngroups, obs)
        self.h_y = CompiledExprs(ngroups, sum(jacobian_exprs(obs, Y), []), (no, n))
        self.h_p = CompiledExprs(ngroups, sum(jacobian_exprs(obs, P), []), (no, npar))
        self._groups = groups
        self._sens_cache = {}
        self._pattern = None
        self._fjp = None
        # observables that are exactly a state: lets y0 default to the first data row
        self.obs_state_index = {name: Y.index(e) if e in Y else None
                                for name, e in model.observables.items()}

    def sensitivity_system(self, wrt_y0: bool):
        """The forward-sensitivity system compiled as one symbolic function (physics-only
        models): state ``[y, S_1, ..., S_q]`` with ``S_k = dy/dtheta_k``, right-hand side
        ``[f, J S_k + df/dtheta_k]`` and its exact Jacobian. One compiled call per
        right-hand-side evaluation instead of several matrix operations: stiff
        sensitivity solves spend most of their time there."""
        key = bool(wrt_y0)
        if key in self._sens_cache:
            return self._sens_cache[key]
        m = self.model
        Y, P = list(m.states), list(m.param_symbols)
        free = [P[i] for i in self.free]
        n = len(Y)
        q = len(free) + (n if wrt_y0 else 0)
        S = [[sp.Symbol(f"_S{k}_{i}") for i in range(n)] for k in range(q)]
        rhs = list(m.rhs)
        J = sp.Matrix(jacobian_exprs(rhs, Y))
        out = list(rhs)
        for k in range(q):
            col = J * sp.Matrix(S[k])
            if k < len(free):
                col += sp.Matrix([derivative(e, free[k]) for e in rhs])
            out += list(col)
        Z = Y + [s for row in S for s in row]
        groups = [self._groups[0], Z, P, [], self._groups[4]]
        f = CompiledExprs(groups, out)
        jac = None
        if len(Z) <= SENSITIVITY_SYSTEM_LIMIT:
            jac = CompiledExprs(groups, sum(jacobian_exprs(out, Z), []), (len(Z), len(Z)))
        self._sens_cache[key] = (f, jac, q)
        return self._sens_cache[key]

    def rhs_and_jacobians(self) -> CompiledExprs:
        """``[f, df/dy, df/dtheta_free]`` flattened into one compiled function
        (physics-only models), shape ``n + n*n + n*n_free``: what one step of the forward
        sensitivity system needs, in one call and with subexpressions (rate constants,
        shared propensities) evaluated once across all three instead of once per
        function. Split the result with :meth:`split_rhs_and_jacobians`."""
        if self._fjp is None:
            m = self.model
            Y, P = list(m.states), list(m.param_symbols)
            free = [P[i] for i in self.free]
            rhs = list(m.rhs)
            self._fjp = CompiledExprs(self._groups, rhs, wrt=[Y, free])
        return self._fjp

    def split_rhs_and_jacobians(self, v: np.ndarray):
        """``(f, J, F_theta)`` from a result of :meth:`rhs_and_jacobians`, shapes (n,),
        (n, n), (n, n_free)."""
        n = self.n
        return v[:n], v[n:n + n * n].reshape(n, n), v[n + n * n:].reshape(n, -1)

    def jacobian_pattern(self) -> np.ndarray:
        """Where ``df/dy`` can be non-zero, shape (n, n), bool: ``f_i`` depends on ``y_j``
        directly, or through a network output whose inputs depend on ``y_j`` (a network's
        Jacobian is taken as dense in its inputs). Structural, so it holds at every point."""
        if self._pattern is None:
            m = self.model
            Y = list(m.states)
            rhs = list(m.rhs)
            pat = np.array([[e.has(s) for s in Y] for e in rhs], dtype=bool).reshape(
                self.n, self.n)
            for net in m.networks:
                used = np.array([any(e.has(o) for o in net.outputs) for e in rhs], dtype=bool)
                feeds = np.array([any(g.has(s) for g in net.inputs) for s in Y], dtype=bool)
                pat |= used[:, None] & feeds[None, :]
            self._pattern = pat
        return self._pattern

    def jacobian_bandwidth(self) -> tuple[int, int]:
        """``(lower, upper)``: ``df_i/dy_j`` is structurally zero unless
        ``-lower <= j - i <= upper`` (see :meth:`jacobian_pattern`)."""
        return bandwidth(self.jacobian_pattern())
