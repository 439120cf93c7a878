"""Export: a dynlearn model and dataset written as a PEtab (or PEtab SciML) problem.

:func:`save` writes what :func:`dynlearn.petab.load` reads back to the same likelihood:

* the physics as SBML (level 3 version 2): each state a species (amount, in a compartment
  of size 1) whose right-hand side is a rate rule, each physical parameter an SBML
  parameter; expressions are printed as SBML level 3 formulas (:func:`formula`) and parsed
  by libsbml;
* the parameter table: the free physical parameters (``parameterScale`` ``log`` where
  dynlearn uses ``transform="log"``), the fixed ones (not estimated), estimated initial
  states and estimated noise levels;
* the observable table (dynlearn's observables, normal noise on each observable's residual
  scale, its ``observableTransformation``: ``lin``, or ``log``/``log10`` as the fit's
  ``transform`` puts it; a noise level shared by several observables is one parameter in
  their noise formulas, levels per experiment or per row go through the measurement
  table's ``noiseParameters``), the
  measurement table (one row per measured value) and one condition per experiment (its
  initial states, and its start time when the model uses time explicitly);
* for a model with :class:`~dynlearn.MLP` networks, a PEtab SciML problem (PEtab v2): each
  network as the standard's YAML (``Linear`` layers and activation nodes), its weights in
  HDF5 (:func:`~dynlearn.petab.networks.write_parameters`), the mapping and hybridization
  tables that feed it the expressions of its inputs and put its outputs in the right-hand
  side. A model without networks is written as PEtab v1.

PEtab simulations start at ``t = 0``; dynlearn's experiments start at their first time. The
measurement times are written relative to that start, and a model whose equations use time
gets a parameter ``t_start`` (set per condition) so that time in its equations is the
experiment's own clock.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import sympy as sp

from dynlearn.core.expressions import parse_expression
from dynlearn.core.model import HybridModel
from dynlearn.core.neural import MLP
from dynlearn.core.parameters import Parameter
from dynlearn.data.dataset import as_dataset
from dynlearn.errors import ModelError, OptionError, PetabError
from dynlearn.files import write_text_atomic
from dynlearn.objective.binding import initial_states
from dynlearn.objective.losses import loss_from_config, loss_from_name, transformed
from dynlearn.petab.extra import require
from dynlearn.results.result import FitResult

__all__ = ["formula", "save"]

# names the SBML level 3 formula parser or the PEtab math grammar read as something else
_RESERVED = {
    "time", "avogadro", "pi", "e", "exponentiale", "true", "false", "inf", "infinity", "nan",
    "notanumber", "and", "or", "not", "xor", "implies", "piecewise", "otherwise", "abs",
    "exp", "ln", "log", "log2", "log10", "sqrt", "pow", "sin", "cos", "tan", "cot", "sec",
    "csc", "sinh", "cosh", "tanh", "coth", "sech", "csch", "arcsin", "arccos", "arctan",
    "arccot", "arcsec", "arccsc", "arcsinh", "arccosh", "arctanh", "arccoth", "arcsech",
    "arccsch", "asin", "acos", "atan", "asinh", "acosh", "atanh", "floor", "ceil", "ceiling",
    "factorial", "min", "max", "sign", "rem", "quotient", "root", "delay", "rateof", "lambda",
}

_FUNCTIONS = {
    sp.exp: "exp", sp.sin: "sin", sp.cos: "cos", sp.tan: "tan", sp.asin: "arcsin",
    sp.acos: "arccos", sp.atan: "arctan", sp.sinh: "sinh", sp.cosh: "cosh", sp.tanh: "tanh",
    sp.asinh: "arcsinh", sp.acosh: "arccosh", sp.atanh: "arctanh", sp.Abs: "abs",
    sp.log: "ln",
}
# SBML has these, the PEtab math grammar does not
_SBML_ONLY = {sp.floor: "floor", sp.ceiling: "ceiling"}

_RELATIONS = {sp.StrictLessThan: "<", sp.LessThan: "<=", sp.StrictGreaterThan: ">",
              sp.GreaterThan: ">=", sp.Equality: "==", sp.Unequality: "!="}

# dynlearn's MLP activations as PEtab SciML forward-graph nodes (torch.fx call_function
# targets): a chain of (target, kwargs). softplus: PyTorch returns x itself above
# ``threshold``; at 700 the difference log1p(exp(-x)) is below 1e-304, so the file means
# dynlearn's exact softplus, and exp(700) stays finite in float64.
_ACTIVATION_NODES = {
    "tanh": [("tanh", {})],
    "sigmoid": [("sigmoid", {})],
    "relu": [("relu", {})],
    "softplus": [("softplus", {"beta": 1.0, "threshold": 700.0})],
    "swish": [("silu", {})],
    "rbf": [("square", {}), ("neg", {}), ("exp", {})],
    "identity": [],
}


# --- formulas --------------------------------------------------------------------------------
def _number(v: float) -> str:
    v = float(v)
    if not math.isfinite(v):
        raise PetabError(f"cannot write the number {v} in a formula")
    s = repr(v)
    return f"({s})" if v < 0 else s


def formula(expr, ids: Mapping[sp.Symbol, str], dialect: str = "sbml") -> str:
    """A sympy expression as an SBML level 3 formula or a PEtab math formula.

    Parameters
    ----------
    expr : sympy expression
        Of symbols in ``ids``, numbers, ``+ - * / **``, ``exp``, ``log`` (natural),
        trigonometric and hyperbolic functions and their inverses, ``Abs``, ``sign``,
        ``Heaviside``, ``Max``, ``Min``, ``Piecewise``, comparisons and ``&``, ``|``,
        ``~``; ``floor`` and ``ceiling`` in SBML only.
    ids : mapping sympy.Symbol -> str
        The identifier to print for each symbol (e.g. ``"time"`` for the time symbol).
    dialect : {"sbml", "petab"}
        ``"sbml"``: for :func:`libsbml.parseL3Formula`; ``"petab"``: the PEtab math grammar
        of observable and noise formulas and hybridization values.

    Returns
    -------
    str
        Fully parenthesised, numbers printed exactly (``repr`` of the float).

    Raises
    ------
    PetabError
        A symbol without an id, or a function neither grammar has (named).
    """
    if dialect not in ("sbml", "petab"):
        raise PetabError(f"dialect {dialect!r}: use 'sbml' or 'petab'")

    def go(e) -> str:
        if isinstance(e, sp.Symbol):
            if e not in ids:
                raise PetabError(f"the symbol '{e}' in {expr} has no PEtab id")
            return ids[e]
        if e is sp.true or e is sp.false:
            return "true" if e is sp.true else "false"
        if e.is_Integer:
            return f"({int(e)})" if e < 0 else str(int(e))
        if e.is_Rational:
            return f"({int(e.p)}/{int(e.q)})"
        if e.is_Number or e is sp.pi:
            return _number(float(e))
        if e is sp.E:
            return "exp(1)"
        if e.is_Add:
            return "(" + " + ".join(go(a) for a in e.args) + ")"
        if e.is_Mul:
            return "(" + " * ".join(go(a) for a in e.args) + ")"
        if e.is_Pow:
            return f"({go(e.base)}^{go(e.exp)})"
        f = e.func
        if f in _FUNCTIONS or (dialect == "sbml" and f in _SBML_ONLY):
            if f is sp.log and len(e.args) != 1:    # pragma: no cover - sympy splits these
                return f"(ln({go(e.args[0])}) / ln({go(e.args[1])}))"
            name = _FUNCTIONS.get(f) or _SBML_ONLY[f]
            return f"{name}(" + ", ".join(go(a) for a in e.args) + ")"
        if f is sp.sign:
            x = go(e.args[0])
            return f"piecewise(1, {x} > 0, -1, {x} < 0, 0)"
        if f is sp.Heaviside:
            x = go(e.args[0])
            h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
            return f"piecewise(1, {x} > 0, {go(h0)}, {x} == 0, 0)"
        if f in (sp.Max, sp.Min):
            name = "max" if f is sp.Max else "min"
            parts = [go(a) for a in e.args]
            out = parts[-1]
            for p in reversed(parts[:-1]):
                out = f"{name}({p}, {out})"
            return out
        if f is sp.Piecewise:
            parts = []
            for val, cond in e.args:
                if cond is sp.true:
                    parts.append(go(val))
                    break
                parts += [go(val), go(cond)]
            return "piecewise(" + ", ".join(parts) + ")"
        if f in _RELATIONS:
            return f"({go(e.lhs)} {_RELATIONS[f]} {go(e.rhs)})"
        if f is sp.And or f is sp.Or:
            op = " && " if f is sp.And else " || "
            return "(" + op.join(go(a) for a in e.args) + ")"
        if f is sp.Not:
            return f"(!{go(e.args[0])})"
        lang = "SBML" if dialect == "sbml" else "PEtab"
        raise PetabError(f"cannot write '{f}' (in {expr}) as {lang} math: it is not a "
                         "function of that format")

    return go(sp.sympify(expr))


# --- identifiers -----------------------------------------------------------------------------
def _ascii(ch: str) -> str:
    """An ASCII spelling of one character: itself, its decomposition without accents
    (``é`` -> ``e``), or the last word of its Unicode name (``α`` -> ``alpha``)."""
    if ch.isascii():
        return ch
    plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
    if plain:
        return plain
    words = unicodedata.name(ch, "").split()
    return words[-1].lower() if words else "_"


class _Ids:
    """Unique identifiers valid in SBML and PEtab (``[A-Za-z_][A-Za-z0-9_]*``), made from
    dynlearn's names."""

    def __init__(self):
        self.used: set[str] = set()

    def new(self, name: str) -> str:
        base = re.sub(r"\W", "_", "".join(_ascii(ch) for ch in str(name))) or "id"
        if not re.match(r"[A-Za-z_]", base):
            base = "_" + base
        if base.lower() in _RESERVED:
            base += "_"
        cand, k = base, 2
        while cand in self.used:
            cand, k = f"{base}_{k}", k + 1
        self.used.add(cand)
        return cand


# --- tables ----------------------------------------------------------------------------------
def _cell(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return "" if v is None else str(v)


def _tsv(path: Path, columns: list[str], rows: list[list]) -> None:
    lines = ["\t".join(columns)] + ["\t".join(_cell(v) for v in r) for r in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _filled_bounds(p: Parameter, value: float, factor: float) -> tuple[float, float]:
    """Finite bounds for an estimated parameter: its own, and where dynlearn leaves it open,
    ``value / factor`` .. ``value * factor`` (log scale) or ``value -+ factor * max(|value|,
    1)`` (linear scale)."""
    lo, hi = p.min, p.max
    if p.transform == "log":
        if not lo > 0:
            lo = value / factor
        if not math.isfinite(hi):
            hi = value * factor
    else:
        span = factor * max(abs(value), 1.0)
        if not math.isfinite(lo):
            lo = value - span
        if not math.isfinite(hi):
            hi = value + span
    return min(lo, value), max(hi, value)


def _mlp_spec(net: MLP, net_id: str) -> dict:
    """The PEtab SciML YAML content of a dynlearn MLP (PyTorch ``Linear`` layers)."""
    layers, forward = [], [{"name": "net_input", "op": "placeholder", "target": "net_input",
                            "args": [], "kwargs": {}}]
    prev = "net_input"
    n_layers = len(net.sizes) - 1
    for k, (n_in, n_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        lid = f"layer{k + 1}"
        layers.append({"layer_id": lid, "layer_type": "Linear",
                       "args": {"in_features": int(n_in), "out_features": int(n_out),
                                "bias": True}})
        forward.append({"name": lid, "op": "call_module", "target": lid, "args": [prev],
                        "kwargs": {}})
        prev = lid
        if k < n_layers - 1:
            for j, (target, kwargs) in enumerate(_ACTIVATION_NODES[net.activation]):
                node = f"{target}_{k + 1}_{j}"
                forward.append({"name": node, "op": "call_function", "target": target,
                                "args": [prev], "kwargs": dict(kwargs)})
                prev = node
    forward.append({"name": "output", "op": "output", "target": "output", "args": [prev],
                    "kwargs": {}})
    return {"nn_model_id": net_id, "inputs": [{"input_id": "input0"}], "layers": layers,
            "forward": forward}


def _mlp_arrays(net: MLP, weights) -> dict:
    """``{layer_id: {"weight": (out, in), "bias": (out,)}}``: PyTorch's layout of dynlearn's
    ``a @ W + b`` with ``W`` of shape (in, out)."""
    return {f"layer{k + 1}": {"weight": np.ascontiguousarray(W.T), "bias": b.copy()}
            for k, (W, b) in enumerate(net.unflatten(np.asarray(weights, dtype=float)))}


class _NoisePlan:
    """Which noise level each measured value of :func:`save` has: ``label(o, k)`` for
    observable ``o`` in experiment ``k`` (its level's name, ``"<name>@<experiment>"`` per
    experiment), and ``spec(label, base)``, what ``sigma`` says of that level (a number,
    ``"estimate"`` or a Parameter)."""

    def __init__(self, sigma, sigma_by, obs_names: list[str], exp_names: list[str]):
        if sigma_by not in (None, "experiment"):
            raise PetabError(f"sigma_by={sigma_by!r}: use None or 'experiment'")
        if isinstance(sigma, Mapping):
            sig = dict(sigma)
        elif _is_name(sigma):          # one level shared by every observable
            sig = {o: sigma for o in obs_names}
        else:
            sig = {o: ("estimate" if sigma is None else sigma) for o in obs_names}
        self.sig, self.by_exp, self.exp_names = sig, sigma_by == "experiment", exp_names
        self.name_of = {}
        for o in obs_names:
            v = sig.get(o)
            if _is_name(v) and not v.strip():
                raise PetabError(f"sigma of '{o}': an empty noise-level name")
            self.name_of[o] = v.strip() if _is_name(v) else o
        for o, n in self.name_of.items():
            if n in obs_names and self.name_of[n] != n:
                raise PetabError(f"sigma: observable '{o}' shares the noise level '{n}', the "
                                 "name of another observable with a level of its own; choose "
                                 "another name")
        names = set(self.name_of.values())
        known = set(obs_names) | names
        if self.by_exp:
            known |= {f"{n}@{e}" for n in names for e in exp_names}
        unknown = [k for k in sig if k not in known]
        if unknown:
            raise PetabError(f"sigma names {unknown}, which are neither observables of the "
                             f"model {obs_names} nor noise levels they share "
                             f"{sorted(names - set(obs_names))}"
                             + (" (per experiment: '<name>@<experiment>')" if self.by_exp
                                else ""))

    def label(self, o: str, k: int) -> str:
        name = self.name_of[o]
        return f"{name}@{self.exp_names[k]}" if self.by_exp else name

    def spec(self, label: str, base: str):
        for key in dict.fromkeys((label, base)):
            if key in self.sig and not _is_name(self.sig[key]):
                return self.sig[key]
        return "estimate"


def _is_name(v) -> bool:
    """Whether a ``sigma`` value names a shared noise level (a string, not "estimate")."""
    return isinstance(v, str) and v != "estimate"


def _fitted_noise(result: FitResult, exp_names: list[str], skip=()) -> dict:
    """The ``sigma`` of :func:`save` for a fit whose noise levels were estimated in groups
    (shared by observables, or per experiment): each group an estimated level starting
    at the fitted value, each member observable naming its group; the other observables'
    known levels as numbers. ``skip``: entries of ``noise_groups`` that are no groups (the
    noise parameters of formulas)."""
    by_exp = result.config.get("sigma_by") == "experiment"
    spec: dict = {}
    grouped = set()
    for label, members in result.config["noise_groups"].items():
        if label in skip:
            continue
        base = label
        if by_exp:
            ends = [e for e in exp_names if label.endswith(f"@{e}")]
            if not ends:
                raise PetabError(f"the fit's noise level '{label}' is of no experiment of "
                                 f"the dataset {exp_names}: export the data that was fitted")
            base = label[:-len(max(ends, key=len)) - 1]
        spec[label] = Parameter(float(result.sigma[label]), min=0.0, transform="log")
        for o in members:
            grouped.add(o)
            if base != o:
                spec[o] = base
    for o, v in (result.sigma or {}).items():
        if o not in grouped and o in result.model.observable_names and o not in spec:
            spec[o] = float(v)
    return spec


def save(model: HybridModel, dataset, directory: str | os.PathLike, *, theta=None,
         y0=None, y0_init=None, sigma=None, sigma_by: str | None = None,
         transform=None, bound_factor: float = 1e3, name: str | None = None) -> Path:
    """Write a dynlearn model and dataset as a PEtab problem.

    Parameters
    ----------
    model : HybridModel
        Pure physics (written as PEtab v1) or with :class:`~dynlearn.MLP` networks in the
        right-hand side (PEtab SciML, on PEtab v2).
    dataset : Dataset or DataFrame
        Every measured value becomes a measurement row; ``<obs>_sigma`` columns give the
        noise level of their rows, as in :func:`dynlearn.fit`.
    directory : str or path-like
        Created if needed; its files of the same names are replaced.
    theta : array-like or FitResult, optional
        The parameter values to write as nominal values (free parameters then weights, as
        ``model.theta0``; default ``model.theta0``). A :class:`~dynlearn.FitResult` gives
        its fitted model, and (unless ``y0`` or ``sigma`` are given) its initial states
        and noise levels (shared and per-experiment ones included, from its
        ``config["noise_groups"]``).
    y0, y0_init : optional
        The initial states, as :func:`dynlearn.fit` takes them: ``"first"`` (each
        experiment's own ``y0``, else its first row), ``"estimate"`` (estimated parameters
        ``y0_<state>_<experiment>``), an array, ``{experiment: array}``, or ``{state: value
        or dl.Parameter}``. Known values go into the condition table.
    sigma : float, str, Parameter or dict, optional
        The noise standard deviation of each observable: a number (known), ``"estimate"``
        (a parameter ``sigma_<observable>`` on the log10 scale, nominal the standard
        deviation of the observable's data), a :class:`~dynlearn.Parameter` (known when
        ``fixed``, else estimated from its value within its bounds), or a dict per
        observable of these. Another string names a noise level shared, as in
        :func:`dynlearn.fit`, by every observable given that name (``{"x": "s", "y": "s"}``:
        one parameter ``sigma_s`` in both observables' noise formulas); the dict may give
        that level under its name (``"s": 0.1``, default ``"estimate"`` with the pooled
        data's standard deviation as nominal). Default: a FitResult's noise levels
        (estimated, from the fitted values, after a ``loss="gaussian"`` fit; known
        otherwise), else ``"estimate"``. Rows with a ``<obs>_sigma`` value use it (PEtab
        ``noiseParameters``).
    sigma_by : {None, "experiment"}, optional
        ``"experiment"``: each observable's (or shared) noise level is a level per
        experiment, as :func:`dynlearn.fit` estimates it with ``sigma_by="experiment"``:
        one parameter ``sigma_<name>_<experiment>`` each, given to the rows of its
        experiment through the measurement table's ``noiseParameters``; the dict of
        ``sigma`` may give one under ``"<name>@<experiment>"`` (else under ``"<name>"``,
        for every experiment). PEtab v1 only (a model without networks). Default: a
        FitResult's own.
    transform : str or dict, optional
        The residual transform of each observable, as :func:`dynlearn.fit` takes it
        (``{"A": "log", "B": "log10"}``; PEtab's ``observableTransformation``, with noise
        levels on that scale). Default: a FitResult's own (``loss="log"``: every
        observable ``"log"``), else ``"lin"``.
    bound_factor : float
        Bounds for estimated parameters that dynlearn leaves open: ``value / factor`` to
        ``value * factor`` on a log scale, ``value -+ factor * max(|value|, 1)`` on a
        linear one (PEtab needs finite bounds to draw starts).
    name : str, optional
        The SBML model's id (default the model's name).

    Returns
    -------
    pathlib.Path
        The problem's YAML file (``problem.yaml``), for :func:`dynlearn.petab.load`.

    Raises
    ------
    PetabError
        What PEtab cannot express, named: model inputs (signals), custom
        :class:`~dynlearn.Network` functions, functions outside SBML/PEtab math, networks
        fed by time alone, per-row or per-experiment noise levels with networks.
    """
    libsbml = require("libsbml", "writing PEtab")
    yaml = require("yaml", "writing PEtab")
    result = theta if isinstance(theta, FitResult) else None
    fitted_y0 = {}
    formulas: dict = {}          # observable -> noise formula (a fit's)
    formula_params: dict = {}    # noise parameter -> (value, lower, upper)
    if result is not None:
        model, theta = result.model, None
        fitted_y0 = {k: np.asarray(v, dtype=float) for k, v in result.y0.items()}
        if y0 is None:
            y0 = fitted_y0
        elif y0_init is None and fitted_y0:
            # estimated initial states start at the fitted ones (set per experiment below)
            y0_init = next(iter(fitted_y0.values()))
        if sigma is None and result.config.get("noise_formulas"):
            # noise formulas: written as noiseFormulas, their parameters estimated from
            # the fitted values within the fit's bounds
            formulas = dict(result.config["noise_formulas"])
            for n, (_, lo, hi) in (result.config.get("noise_params") or {}).items():
                formula_params[n] = (float(result.sigma[n]),
                                     -math.inf if lo is None else float(lo),
                                     math.inf if hi is None else float(hi))
        if sigma is None and result.config.get("noise_groups"):
            # shared or per-experiment levels (a Gaussian fit's): estimated, from there
            sigma = _fitted_noise(result, [e.name for e in as_dataset(dataset)],
                                  skip=formula_params)
            sigma.update(formulas)
            if sigma_by is None:
                sigma_by = result.config.get("sigma_by")
        elif sigma is None:
            # a Gaussian fit estimated its noise levels: they stay estimated, from there
            free = result.config.get("loss") == "gaussian"
            sigma = {k: Parameter(float(v), min=0.0, transform="log") if free else float(v)
                     for k, v in (result.sigma or {}).items()}
    if not isinstance(model, HybridModel):
        raise PetabError(f"save needs a dl.HybridModel, got {type(model).__name__}")
    given = [v for k, v in (sigma.items() if isinstance(sigma, dict) else [(None, sigma)])
             if isinstance(v, str) and not v.strip().isidentifier() and k not in formulas]
    if given:
        raise PetabError(f"sigma={given}: dl.petab.save writes noise formulas of a fit "
                         "(theta=result of dl.fit with them) only; give numbers, "
                         "'estimate', parameters or shared names here")
    if formulas:
        sigma = {k: v for k, v in sigma.items() if k not in formulas}
    try:
        scale = (loss_from_config(result.config) if result is not None and transform is None
                 else loss_from_name("ls", transform)).bind(model.observable_names)
    except OptionError as exc:
        raise PetabError(str(exc)) from None
    if theta is not None:
        model = model.with_theta(theta)
    if model.inputs:
        raise PetabError(f"the model's inputs {[u.name for u in model.inputs]} (signals "
                         "given at solve time) cannot be written as PEtab")
    for net in model.networks:
        if type(net) is not MLP:
            raise PetabError(f"network '{net.name}' is a {type(net).__name__}; only dl.MLP "
                             "networks can be written as PEtab SciML (a custom function has "
                             "no layers to write)")
    factor = float(bound_factor)
    if not factor > 1:
        raise PetabError(f"bound_factor must be > 1, got {bound_factor}")
    dataset = as_dataset(dataset)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sciml = bool(model.networks)

    strategy = initial_states(y0, model, y0_init)
    bound = strategy.bind(model, dataset)
    y0_params = strategy.parameters(model, dataset, bound)
    for exp, row in zip(dataset, y0_params):
        if exp.name in fitted_y0:
            row[:] = [p if p.fixed else p.replace(value=float(v))
                      for p, v in zip(row, fitted_y0[exp.name])]
    t0s = [float(b.t0) for b in bound]

    ids = _Ids()
    sym_id: dict[sp.Symbol, str] = {}
    comp = ids.new("compartment")
    for s in model.states:
        sym_id[s] = ids.new(s.name)
    for s in model.param_symbols:
        sym_id[s] = ids.new(s.name)
    net_ids = {net.name: ids.new(net.name) for net in model.networks}
    out_param = {}     # NetworkOutput -> SBML parameter id it is written as
    for net in model.networks:
        for j, o in enumerate(net.outputs):
            out_param[o] = ids.new(f"{net_ids[net.name]}_out{j}")
    exprs = [*model.rhs, *model.observables.values(),
             *(v for net in model.networks for v in net.inputs)]
    uses_time = any(model.time in e.free_symbols for e in exprs)
    clock = sp.Dummy("time")
    time_sub = clock
    t_start = None
    if uses_time and any(t != 0 for t in t0s):
        t_start = ids.new("t_start")
        t_start_sym = sp.Dummy("t_start")
        sym_id[t_start_sym] = t_start
        time_sub = clock + t_start_sym
    sym_id[clock] = "time"
    names = {**sym_id, **out_param}

    def write(e, dialect):
        return formula(sp.sympify(e).xreplace({model.time: time_sub}), names, dialect)

    # --- the SBML model --------------------------------------------------------------------
    doc = libsbml.SBMLDocument(3, 2)
    m = doc.createModel()
    m.setId(ids.new(name or model.name))
    c = m.createCompartment()
    c.setId(comp)
    c.setSize(1.0)
    c.setConstant(True)
    first_y0 = [p.value for p in y0_params[0]]
    for s, v in zip(model.states, first_y0):
        sp_ = m.createSpecies()
        sp_.setId(sym_id[s])
        sp_.setName(s.name)
        sp_.setCompartment(comp)
        sp_.setInitialAmount(float(v))
        sp_.setHasOnlySubstanceUnits(True)
        sp_.setBoundaryCondition(False)
        sp_.setConstant(False)

    def sbml_parameter(pid, value, pname=None):
        p = m.createParameter()
        p.setId(pid)
        if pname:
            p.setName(pname)
        p.setValue(float(value))
        p.setConstant(True)

    for s in model.param_symbols:
        sbml_parameter(sym_id[s], model.params[s].value, s.name)
    for o, pid in out_param.items():
        sbml_parameter(pid, 0.0, f"{o.network.name}[{o.index}]")
    if t_start is not None:
        sbml_parameter(t_start, 0.0, "start time of the experiment")
    for s, e in zip(model.states, model.rhs):
        text = write(e, "sbml")
        ast = libsbml.parseL3Formula(text)
        if ast is None:   # pragma: no cover - formula() writes what the parser reads
            raise PetabError(f"libsbml cannot read the right-hand side of '{s}': {text} "
                             f"({libsbml.getLastParseL3Error()})")
        r = m.createRateRule()
        r.setVariable(sym_id[s])
        r.setMath(ast)
    write_text_atomic(directory / "model.xml", libsbml.writeSBMLToString(doc))

    # --- parameters ----------------------------------------------------------------------
    par_rows = []   # parameterId, parameterName, scale, lower, upper, nominal, estimate
    for s in model.param_symbols:
        p = model.params[s]
        if p.fixed:
            par_rows.append([sym_id[s], s.name, "lin", p.value, p.value, p.value, False])
        else:
            lo, hi = _filled_bounds(p, p.value, factor)
            par_rows.append([sym_id[s], s.name, "log" if p.transform == "log" else "lin",
                             lo, hi, p.value, True])

    # initial states: known values or estimated parameters, per experiment
    cond_ids = [ids.new(f"c_{e.name}") for e in dataset]
    exp_ids = [ids.new(f"e_{e.name}") for e in dataset] if sciml else None
    conditions = []     # per experiment: {target id: value or parameter id}
    multi = len(dataset) > 1
    for exp, row, t0 in zip(dataset, y0_params, t0s):
        cond = {}
        for s, p in zip(model.states, row):
            if p.fixed:
                cond[sym_id[s]] = float(p.value)
            else:
                pid = ids.new(f"y0_{sym_id[s]}" + (f"_{exp.name}" if multi else ""))
                lo, hi = _filled_bounds(p, p.value, factor)
                par_rows.append([pid, f"y0[{s.name}]" + (f"@{exp.name}" if multi else ""),
                                 "log" if p.transform == "log" else "lin", lo, hi, p.value,
                                 True])
                cond[sym_id[s]] = pid
        if t_start is not None:
            cond[t_start] = t0
        conditions.append(cond)

    # --- observables, noise and measurements -----------------------------------------------
    obs_names = list(model.observable_names)
    measured = {o: [] for o in obs_names}     # o -> (experiment index, time, value, row sigma)
    for k, b in enumerate(bound):
        for j, o in enumerate(obs_names):
            rows = np.flatnonzero(b.mask[:, j])
            for r in rows:
                s_row = b.sigma[r, j] if b.sigma is not None else np.nan
                if scale.log_factor(j) and not b.Y[r, j] > 0:
                    raise PetabError(f"observable '{o}' is on the {scale.transform_of(j)} "
                                     f"scale but experiment '{b.name}' has {o}={b.Y[r, j]} "
                                     f"at t={b.t[r]} (row {r + 1}): it needs positive data")
                measured[o].append((k, float(b.t[r]) - t0s[k], float(b.Y[r, j]),
                                    float(s_row)))
    obs_list = [o for o in obs_names if measured[o]]
    exp_names = [e.name for e in dataset]
    plan = _NoisePlan(sigma, sigma_by, obs_names, exp_names)
    obs_rows, meas_rows = [], []
    obs_id = {o: ids.new(o if o not in {s.name for s in model.states} else f"{o}_obs")
              for o in obs_list}
    # the data of each noise level (for the nominal value of an estimated one)
    label_values: dict[str, list] = {}
    for o in obs_list:
        for k, _, v, _ in measured[o]:
            # (on the observable's scale: that of its noise level)
            label_values.setdefault(plan.label(o, k), []).append(
                float(transformed(v, scale.transform_of(o))))
    noise_of: dict[str, float | str] = {}    # label -> a number or its parameter id

    def level(label: str, base: str):
        """The noise level ``label`` as a number (known) or a parameter id (estimated,
        added to the parameter table at its first use)."""
        if label in noise_of:
            return noise_of[label]
        spec = plan.spec(label, base)
        where = f"sigma of '{label}'"
        if isinstance(spec, str):
            if spec != "estimate":
                raise PetabError(f"{where}: {spec!r}; use a number, 'estimate' or a "
                                 "dl.Parameter")
            vals = np.array(label_values[label])
            guess = float(np.std(vals)) if vals.size > 1 else 0.0
            spec = Parameter(guess if guess > 0 and math.isfinite(guess) else 1.0, min=0.0,
                             transform="log")
        elif not isinstance(spec, Parameter):
            spec = Parameter(float(spec), fixed=True)
        if not (spec.value > 0 and math.isfinite(spec.value)):
            raise PetabError(f"{where} must be a positive number, got {spec.value}")
        if spec.fixed:
            noise_of[label] = spec.value
        else:
            # noise levels on log10, PEtab's custom; bounds as for any parameter
            base_id = obs_id.get(base, base)
            pid = ids.new(f"sigma_{base_id}" if label == base
                          else f"sigma_{base_id}_{label[len(base) + 1:]}")
            lo, hi = _filled_bounds(spec.replace(transform="log"), spec.value, factor)
            par_rows.append([pid, f"sigma[{label}]", "log10", lo, hi, spec.value, True])
            noise_of[label] = pid
        return noise_of[label]

    noise_text = _noise_formula_texts(model, formulas, formula_params, ids, par_rows,
                                      names, time_sub, factor)
    for o in obs_list:
        rows = measured[o]
        if o in noise_text:
            if any(np.isfinite(r[3]) for r in rows):
                raise PetabError(f"observable '{o}' has a noise formula and <obs>_sigma "
                                 "values: write one or the other")
            obs_rows.append([obs_id[o], o, write(model.observables[o], "petab"),
                             noise_text[o], scale.transform_of(o), "normal"])
            meas_rows.extend([obs_id[o], k, v, t, None] for k, t, v, _ in rows)
            continue
        labels = [plan.label(o, r[0]) for r in rows]
        per_row = [r[3] if np.isfinite(r[3]) else level(lab, plan.name_of[o])
                   for r, lab in zip(rows, labels)]
        if any(np.isfinite(r[3]) for r in rows) or len(set(labels)) > 1:
            if sciml:
                raise PetabError(f"observable '{o}': noise levels per row (<obs>_sigma "
                                 "columns) or per experiment (sigma_by='experiment') need "
                                 "PEtab noiseParameters, which dynlearn's PEtab SciML "
                                 "reader does not read; give one sigma per observable "
                                 "(shared by several observables or not)")
            noise_formula = f"noiseParameter1_{obs_id[o]}"
        else:
            noise_formula, per_row = per_row[0], None
        obs_rows.append([obs_id[o], o, write(model.observables[o], "petab"),
                         noise_formula, scale.transform_of(o), "normal"])
        for i, (k, t, v, _) in enumerate(rows):
            meas_rows.append([obs_id[o], k, v, t, None if per_row is None else per_row[i]])
    if not meas_rows:
        raise PetabError("the dataset has no measured value of the model's observables")
    has_noise_pars = any(r[4] is not None for r in meas_rows)
    _tsv(directory / "observables.tsv",
         ["observableId", "observableName", "observableFormula", "noiseFormula",
          "observableTransformation", "noiseDistribution"], obs_rows)

    if not sciml:
        _write_v1(directory, yaml, par_rows, conditions, cond_ids, dataset, meas_rows,
                  has_noise_pars)
    else:
        _write_sciml(directory, yaml, model, ids, par_rows, conditions, cond_ids, exp_ids,
                     meas_rows, net_ids, out_param, write)
    return directory / "problem.yaml"


def _noise_formula_texts(model, formulas, params, ids, par_rows, names, time_sub,
                        factor) -> dict[str, str]:
    """The PEtab noiseFormula of each observable with a noise formula (its observables'
    predictions written as their observableFormulas, ``t`` as PEtab's time), adding its
    noise parameters to ``par_rows`` (log10 scale when bounded below by a positive number,
    as PEtab's noise parameters usually are, else linear)."""
    if not formulas:
        return {}
    psym = {n: sp.Dummy(n) for n in params}
    pid = {}
    for n, (value, lo, hi) in params.items():
        pid[psym[n]] = ids.new(n)
        log = lo > 0
        p = Parameter(value, min=lo, max=hi, transform="log" if log else "identity")
        blo, bhi = _filled_bounds(p, value, factor)
        par_rows.append([pid[psym[n]], f"noise parameter {n}", "log10" if log else "lin",
                         blo, bhi, value, True])
    table = {**{o: e for o, e in model.observables.items()}, "t": model.time, **psym}
    out = {}
    for o, text in formulas.items():
        try:
            e = parse_expression(text, table, f"sigma formula of '{o}'")
        except ModelError as exc:     # (the fit read it: only a changed model gets here)
            raise PetabError(str(exc)) from None
        out[o] = formula(sp.sympify(e).xreplace({model.time: time_sub}), {**names, **pid},
                         "petab")
    return out


def _write_v1(directory, yaml, par_rows, conditions, cond_ids, dataset, meas_rows,
              has_noise_pars):
    _tsv(directory / "parameters.tsv",
         ["parameterId", "parameterName", "parameterScale", "lowerBound", "upperBound",
          "nominalValue", "estimate"],
         [[*r[:6], 1 if r[6] else 0] for r in par_rows])
    targets = list(dict.fromkeys(k for c in conditions for k in c))
    _tsv(directory / "conditions.tsv", ["conditionId", "conditionName", *targets],
         [[cid, exp.name, *(c.get(k) for k in targets)]
          for cid, exp, c in zip(cond_ids, dataset, conditions)])
    cols = ["observableId", "simulationConditionId", "measurement", "time"]
    rows = [[r[0], cond_ids[r[1]], r[2], r[3]] for r in meas_rows]
    if has_noise_pars:
        cols.append("noiseParameters")
        rows = [row + [r[4]] for row, r in zip(rows, meas_rows)]
    _tsv(directory / "measurements.tsv", cols, rows)
    spec = {"format_version": 1, "parameter_file": "parameters.tsv",
            "problems": [{"sbml_files": ["model.xml"], "condition_files": ["conditions.tsv"],
                          "measurement_files": ["measurements.tsv"],
                          "observable_files": ["observables.tsv"]}]}
    write_text_atomic(directory / "problem.yaml", yaml.safe_dump(spec, sort_keys=False))


def _write_sciml(directory, yaml, model, ids, par_rows, conditions, cond_ids, exp_ids,
                 meas_rows, net_ids, out_param, write):
    from dynlearn.petab.networks import arrays_to_weights, network_from_yaml, write_parameters

    mapping, hybrid, nets_yaml, arrays = [], [], {}, []
    for net in model.networks:
        nid = net_ids[net.name]
        for i, v in enumerate(net.inputs):
            if model.time in v.free_symbols and not (v.free_symbols & set(model.states)):
                raise PetabError(f"network '{net.name}' input {i} ({v}) depends on time but "
                                 "not on the states: PEtab SciML evaluates such a network "
                                 "once, before the simulation")
            pid = ids.new(f"{nid}_input{i}")
            mapping.append([pid, f"{nid}.inputs[0][{i}]"])
            hybrid.append([pid, write(v, "petab")])
        for o in net.outputs:
            pid = ids.new(f"{nid}_output{o.index}")
            mapping.append([pid, f"{nid}.outputs[0][{o.index}]"])
            hybrid.append([out_param[o], pid])
        ps = ids.new(f"{nid}_ps")
        mapping.append([ps, f"{nid}.parameters"])
        par_rows.append([ps, f"{net.name} weights", "lin", -math.inf, math.inf, "array",
                         True])
        spec = _mlp_spec(net, nid)
        fname = f"{nid}.yaml"
        write_text_atomic(directory / fname, yaml.safe_dump(spec, sort_keys=False))
        pnet = network_from_yaml(spec, name=nid)
        w = arrays_to_weights(pnet, _mlp_arrays(net, net.weights))
        write_parameters(directory / f"{nid}_ps.hdf5", pnet, w, net_id=nid)
        nets_yaml[nid] = {"location": fname, "format": "YAML", "pre_initialization": False}
        arrays.append(f"{nid}_ps.hdf5")

    _tsv(directory / "parameters.tsv",
         ["parameterId", "parameterName", "parameterScale", "lowerBound", "upperBound",
          "nominalValue", "estimate"], par_rows)
    cond_rows = [[cid, k, v] for cid, c in zip(cond_ids, conditions) for k, v in c.items()]
    _tsv(directory / "conditions.tsv", ["conditionId", "targetId", "targetValue"], cond_rows)
    _tsv(directory / "experiments.tsv", ["experimentId", "time", "conditionId"],
         [[eid, 0.0, cid if cond else None]
          for eid, cid, cond in zip(exp_ids, cond_ids, conditions)])
    _tsv(directory / "measurements.tsv", ["observableId", "experimentId", "measurement", "time"],
         [[r[0], exp_ids[r[1]], r[2], r[3]] for r in meas_rows])
    _tsv(directory / "mapping.tsv", ["petabEntityId", "modelEntityId"], mapping)
    _tsv(directory / "hybridization.tsv", ["targetId", "targetValue"], hybrid)
    spec = {"format_version": "2.0.0",
            "model_files": {"model": {"location": "model.xml", "language": "sbml"}},
            "parameter_files": ["parameters.tsv"],
            "observable_files": ["observables.tsv"],
            "measurement_files": ["measurements.tsv"],
            "condition_files": ["conditions.tsv"],
            "experiment_files": ["experiments.tsv"],
            "mapping_files": ["mapping.tsv"],
            # the layout of the PEtab SciML test suite (read by dynlearn and PEtab.jl)
            "extensions": {"sciml": {"version": "1.0.0", "required": True,
                                     "array_files": arrays,
                                     "hybridization_files": ["hybridization.tsv"],
                                     "neural_nets": nets_yaml}}}
    write_text_atomic(directory / "problem.yaml", yaml.safe_dump(spec, sort_keys=False))
