"""PEtab SciML problems: a PEtab v2 problem whose model contains neural networks.

A PEtab SciML problem adds to the PEtab v2 tables (:mod:`dynlearn.petab.v2`):

* networks, each defined by a YAML file (read by :mod:`dynlearn.petab.networks`), with
  their parameters in HDF5 array files;
* a *mapping* table naming the networks' inputs, outputs and parameter arrays with PEtab
  ids (``net1.inputs[0][1]``, ``net1.outputs[0][0]``, ``net1.parameters[layer1].weight``);
* a *hybridization* table assigning values to those ids: a network input gets an
  expression (of states, parameters, ...) or ``array`` (an input array file); a model
  parameter or a species gets an expression of network outputs.

How the problem is evaluated
----------------------------
A network whose inputs depend on the states is *dynamic*: when its outputs set a model
parameter, that parameter is replaced in the right-hand side by the network's output
symbol (a :class:`~dynlearn.NetworkOutput`), and the ODE is one dynlearn
:class:`~dynlearn.HybridModel` whose theta holds the constants it uses and the weights of
its networks; forward sensitivities (:class:`~dynlearn.ForwardSensitivity`) then carry
``dy/dweights`` (one column a weight: fine for the small networks of the test suite). A
network whose inputs do not depend on the states is *static*: it is evaluated once per
experiment, before the ODE, and its outputs (with their derivatives through autograd,
chained to the parameters and weights that feed them) set parameters or initial values.
A network in an observable formula is evaluated on the simulated states at the
measurement times, with its input and weight Jacobians.

The optimizer's vector ``x`` (:attr:`SciMLProblem.x_names`) holds first the estimated
mechanistic parameters, in the parameter table's order, on their PEtab scales; then one
block per network (networks in the order in which the parameter table first names them),
each the estimated entries of that network's flat weight vector (layer by layer, arrays in
PyTorch row-major order, as :func:`~dynlearn.petab.networks.parameter_slices` lays them out;
frozen layers and arrays are left out), named ``<net>.<layer>.<array>[<flat index>]``.

Supported: one SBML model; experiments of one or more periods (PEtab v2 time courses:
conditions applied at later times are evaluated with the state at that time, may set
parameters, network inputs and species, and the sensitivities carry across the change
exactly, the change times being fixed); condition changes of parameters, network inputs and
initial values; networks in the right-hand side, before the ODE (setting parameters or
initial values; re-evaluated when a later period changes their inputs) and in observable
formulas; inputs from expressions, parameters, conditions and array files (global or per
condition of the experiment's first period); several networks; networks with several
outputs; frozen layers and arrays; priors on the linear scale (``normal``, ``laplace``,
``uniform``, ``log-normal``, ``log-laplace``), per parameter or per network array. Not
supported (a :class:`~dynlearn.errors.PetabError` names the construct): preequilibration,
steady-state measurements, observable/noise placeholders, a network whose inputs use
another network's outputs, network output tensors other than the first.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sympy as sp

from dynlearn.core.model import HybridModel
from dynlearn.core.neural import NetworkOutput
from dynlearn.core.symbolic import Lambdified
from dynlearn.core.vectorfield import VectorField
from dynlearn.errors import PetabError
from dynlearn.petab.extra import require
from dynlearn.petab.priors import parameter_priors
from dynlearn.petab.problem import PetabProblem, from_scale, nllh_terms, to_scale
from dynlearn.petab.sbml import TIME, sbml_to_ode
from dynlearn.petab.v2 import (
    V1_PRIOR_TYPES,
    PetabV2Tables,
    condition_changes,
    experiment_periods,
    is_estimated,
    read_v2,
)
from dynlearn.sensitivity.base import Problem, Sensitivity
from dynlearn.sensitivity.forward import ForwardSensitivity
from dynlearn.solve import solve_observed

__all__ = ["SciMLProblem", "load_sciml"]

_LN10 = math.log(10.0)
_MAP = re.compile(r"^(?P<net>[A-Za-z_]\w*)\.(?P<kind>inputs|outputs|parameters)"
                  r"(?:\[(?P<a>[A-Za-z_0-9]+)\])?(?:\[(?P<b>\d+)\])?(?:\.(?P<arr>\w+))?$")


def _networks_module():
    # the network reader is written alongside; imported where it is needed so that plain
    # PEtab problems do not need autograd's import time
    from dynlearn.petab import networks
    return networks


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == ""


def _number(v):
    """``v`` as a float, or None when it is not a number."""
    if isinstance(v, (int, float, np.number)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    try:
        return float(str(v).strip())
    except ValueError:
        return None


class _Fn:
    """A sympy expression compiled with its partial derivatives with respect to its
    arguments, evaluated on many rows at once."""

    def __init__(self, expr, args):
        self.args = list(args)
        self.f = Lambdified(self.args, expr)
        grads = [sp.diff(expr, a) for a in self.args]
        self.g = [None if g == 0 else Lambdified(self.args, g) for g in grads]

    def __call__(self, vals, m: int, grad: bool = True):
        """Value (m,) and partials (m, len(args)) at argument values ``vals`` (each a
        scalar or (m,))."""
        v = np.broadcast_to(np.asarray(self.f(*vals), dtype=float), (m,))
        if not grad:
            return v, None
        G = np.zeros((m, len(self.args)))
        for i, g in enumerate(self.g):
            if g is not None:
                G[:, i] = np.broadcast_to(np.asarray(g(*vals), dtype=float), (m,))
        return v, G


@dataclass
class _Net:
    """One network of the problem: the dynlearn network, its weights, which of them are
    estimated, where they sit in ``P``, and its inputs and outputs."""

    name: str
    network: object            # dl.Network
    weights: np.ndarray        # nominal flat weights
    estimated: np.ndarray      # bool mask over the weights
    slices: dict               # "<layer>.<array>" -> slice of the flat weights
    inputs: list               # sympy expression of every flat input
    outputs: dict              # PEtab output id -> flat output index
    dynamic: bool = False
    p_index: np.ndarray | None = None   # P index of every weight (-1 when fixed)

    def weights_at(self, P) -> np.ndarray:
        w = self.weights.copy()
        sel = self.p_index >= 0
        w[sel] = P[self.p_index[sel]]
        return w

    def weight_jac_P(self, nP: int) -> np.ndarray:
        """dw/dP, shape (n_weights, nP)."""
        D = np.zeros((self.weights.size, nP))
        sel = np.flatnonzero(self.p_index >= 0)
        D[sel, self.p_index[sel]] = 1.0
        return D


class SciMLProblem:
    """A PEtab SciML (or plain PEtab v2) problem: negative log-likelihood, gradient and
    simulations at a parameter vector ``x``.

    Made by :func:`load_sciml` (or :func:`dynlearn.petab.load` on a v2 problem with the
    ``sciml`` extension).

    Attributes
    ----------
    x_names : list of str
        Estimated mechanistic parameters (parameter table order), then the estimated
        weights of each network (``<net>.<layer>.<array>[<flat index>]``); see the module
        notes for the order.
    x_nominal : ndarray
        Nominal values: mechanistic ones on their PEtab scales, network weights from the
        networks' parameter files.
    x_scales : list of str
        ``lin``, ``log`` or ``log10`` for each entry (weights are ``lin``).
    lower, upper : ndarray
        Bounds on the scales.
    networks : dict str -> dl.Network
        The problem's networks (with their nominal weights).
    model : HybridModel
        The ODE, with the dynamic networks in its right-hand side.
    priors : Priors or None
        The priors of the estimated parameters, when the table gives any.
    tables, petab_problem : PetabV2Tables
        The problem's tables (``petab_problem``, with petab's ``measurement_df``,
        ``parameter_df`` and ``observable_df``, for code written for
        :class:`~dynlearn.petab.PetabProblem`).
    rtol, atol, method : solver settings
        Defaults 1e-9, 1e-12 and LSODA.
    sensitivity : Sensitivity or None
        The gradient method of experiments of one period. ``None``: forward
        sensitivities, as :class:`~dynlearn.petab.PetabProblem` uses (they integrate the
        states with their sensitivities under one error control; on the test suite the
        continuous adjoint, which :func:`~dynlearn.sensitivity.choice.default_sensitivity`
        picks with LSODA beyond 100 parameters, missed the reference gradients of cases
        001, 010 and 038 at the same tolerances: errors 0.11, 0.11 and 0.26 against 0.1;
        ``benchmarks/petab_sciml_suite.py --sensitivity adjoint``). Experiments of several
        periods always use forward sensitivities, which carry ``dy/dx`` across the
        condition changes.
    """

    def __init__(self, tables: PetabV2Tables, rtol: float = 1e-9, atol: float = 1e-12,
                 method: str = "LSODA", sensitivity: Sensitivity | None = None):
        self.tables = self.petab_problem = tables
        self.rtol, self.atol, self.method = float(rtol), float(atol), method
        self.sensitivity = sensitivity
        self.sbml = sbml_to_ode(tables.model_path)
        self._read_mapping()
        self._read_parameters()
        self._read_arrays()
        self._build_networks()
        self._layout()
        self._build_model()
        self._build_measurements()

    # --- tables ---------------------------------------------------------------------------
    def _read_mapping(self):
        self._map = {}
        mp = self.tables.mapping
        if mp is not None:
            for pid, mid in zip(mp["petabEntityId"], mp["modelEntityId"]):
                pid, mid = str(pid).strip(), str(mid).strip()
                m = _MAP.match(mid)
                if m is None:
                    raise PetabError(f"mapping: '{pid}' -> '{mid}' is not a network input, "
                                     "output or parameter reference")
                self._map[pid] = m.groupdict()
        ext = self.tables.extensions.get("sciml") or {}
        self._ext = ext
        nets = ext.get("neural_nets") or {}
        self._net_files = {str(k): self.tables.directory / str(v["location"])
                           for k, v in nets.items()}
        for k, v in nets.items():
            fmt = str(v.get("format", "YAML")).lower()
            if fmt != "yaml":
                raise PetabError(f"network '{k}': format '{v.get('format')}' is not supported "
                                 "(the PEtab SciML YAML format only)")
        self._hyb = {}
        for name in ext.get("hybridization_files") or []:
            df = pd.read_csv(self.tables.directory / str(name), sep="\t")
            for tid, val in zip(df["targetId"], df["targetValue"]):
                self._hyb[str(tid).strip()] = val

    def _read_parameters(self):
        par = self.tables.parameters
        self._mech = []           # rows of mechanistic parameters: (id, dict)
        self._net_rows = []       # rows naming network parameters
        for pid, row in par.iterrows():
            pid = str(pid)
            est = is_estimated(row["estimate"])
            scale = str(row.get("parameterScale", "lin"))
            scale = "lin" if scale in ("nan", "") else scale
            if scale not in ("lin", "log", "log10"):
                raise PetabError(f"parameter '{pid}': unknown parameterScale '{scale}'")
            info = dict(est=est, scale=scale, nominal=row.get("nominalValue"),
                        lb=float(row.get("lowerBound", -np.inf)),
                        ub=float(row.get("upperBound", np.inf)),
                        prior=row.get("priorDistribution", row.get("objectivePriorType")),
                        prior_par=row.get("priorParameters",
                                          row.get("objectivePriorParameters")))
            m = self._map.get(pid)
            if m is not None and m["kind"] == "parameters":
                self._net_rows.append((pid, m, info))
                continue
            nom = _number(info["nominal"])
            if nom is None:
                raise PetabError(f"parameter '{pid}': nominalValue '{info['nominal']}' is not a "
                                 "number")
            info["nominal"] = nom
            self._mech.append((pid, info))
        self._mech_ids = {pid for pid, _ in self._mech}

    def _read_arrays(self):
        """Network parameters and input arrays from the array files."""
        h5py = require("h5py", "reading PEtab SciML array files")
        self._param_files = {}     # net -> path
        self._input_arrays = {}    # PEtab id -> {condition id or "0": ndarray}
        for name in self._ext.get("array_files") or []:
            path = self.tables.directory / str(name)
            with h5py.File(path, "r") as f:
                if "parameters" in f:
                    for net in f["parameters"]:
                        self._param_files[str(net)] = path
                if "inputs" in f:
                    for pid in f["inputs"]:
                        self._input_arrays[str(pid)] = {
                            str(k): np.asarray(v[()], dtype=float)
                            for k, v in f["inputs"][pid].items()}

    # --- networks -------------------------------------------------------------------------
    def _input_shape(self, net: str, arg: int) -> tuple:
        """The sample shape of input argument ``arg`` of ``net``: an array file's shape,
        or ``(n,)`` from the largest index the mapping table gives it."""
        sizes, shape = [], None
        for pid, m in self._map.items():
            if m["net"] != net or m["kind"] != "inputs" or int(m["a"] or 0) != arg:
                continue
            if m["b"] is not None:
                sizes.append(int(m["b"]) + 1)
            else:
                arrs = self._input_arrays.get(pid)
                if not arrs:
                    raise PetabError(f"network '{net}' input {arg} ('{pid}') is a whole array "
                                     "but no array file holds inputs/" + pid)
                shape = tuple(next(iter(arrs.values())).shape)
                sizes.append(int(np.prod(shape)))
        if not sizes:
            raise PetabError(f"network '{net}': input argument {arg} is not in the mapping "
                             "table")
        return shape if shape is not None else (max(sizes),)

    def _build_networks(self):
        ode = self.sbml
        self._env_symbols = {}    # name -> sympy symbol of everything that is not a state
        nets_mod = _networks_module()
        self.nets: dict[str, _Net] = {}
        states = {ode.symbols[s] for s in ode.states}
        unknown = sorted({m["net"] for m in self._map.values()} - set(self._net_files))
        if unknown:
            raise PetabError(f"the mapping table names network(s) {unknown}, which the "
                             "problem's sciml extension (neural_nets) does not define")
        for net, path in self._net_files.items():
            args = sorted({int(m["a"] or 0) for m in self._map.values()
                           if m["net"] == net and m["kind"] == "inputs"})
            if args != list(range(len(args))):
                raise PetabError(f"network '{net}': its input arguments {args} in the mapping "
                                 "table are not 0, 1, ...")
            offsets, total, shapes = [], 0, []
            for a in args:
                offsets.append(total)
                shapes.append(self._input_shape(net, a))
                total += int(np.prod(shapes[-1]))
            exprs: list = [None] * total
            for pid, m in self._map.items():
                if m["net"] != net or m["kind"] != "inputs":
                    continue
                start = offsets[int(m["a"] or 0)]
                if m["b"] is not None:
                    exprs[start + int(m["b"])] = self._input_expr(pid)
                else:
                    size = int(np.prod(shapes[int(m["a"] or 0)]))
                    for k in range(size):
                        exprs[start + k] = self._symbol(f"{pid}__{k}")
            missing = [i for i, e in enumerate(exprs) if e is None]
            if missing:
                raise PetabError(f"network '{net}': input entries {missing} have no value in "
                                 "the mapping table")
            outputs = {}
            for pid, m in self._map.items():
                if m["net"] == net and m["kind"] == "outputs":
                    if int(m["a"] or 0) != 0:
                        raise PetabError(f"network '{net}': output argument {m['a']} (only "
                                         "one output tensor is supported)")
                    outputs[pid] = int(m["b"] or 0)
            network = nets_mod.network_from_yaml(path, name=net, inputs=exprs,
                                                 input_shapes=shapes)
            if net in self._param_files:
                weights = np.asarray(nets_mod.read_parameters(self._param_files[net], network),
                                     dtype=float)
            else:
                weights = np.asarray(network.weights, dtype=float)
            slices = nets_mod.parameter_slices(network)
            dyn = any(e.free_symbols & (states | {TIME}) for e in exprs)
            pre = (self._ext.get("neural_nets") or {}).get(net, {}).get("pre_initialization")
            if dyn and str(pre).strip().lower() == "true":
                raise PetabError(f"network '{net}' is declared pre_initialization (evaluated "
                                 "before the ODE) but its inputs depend on the states")
            self.nets[net] = _Net(name=net, network=network, weights=weights,
                                  estimated=np.zeros(weights.size, dtype=bool),
                                  slices=slices, inputs=exprs, outputs=outputs, dynamic=dyn)
        self._apply_net_rows()

    def _symbol(self, name: str) -> sp.Symbol:
        ode = self.sbml
        if name in ode.symbols:
            return ode.symbols[name]
        s = self._env_symbols.get(name)
        if s is None:
            s = self._env_symbols[name] = sp.Symbol(name)
        return s

    def _parse(self, value, where: str) -> sp.Expr:
        """A table cell (number or formula) in the model's symbols."""
        from petab.v1.math import sympify_petab

        num = _number(value)
        if num is not None:
            return sp.Float(num)
        try:
            e = sympify_petab(str(value))
        except Exception as exc:   # petab raises plain exceptions on malformed math
            raise PetabError(f"{where}: cannot read '{value}' as a PEtab math expression: "
                             f"{exc}") from None
        ode = self.sbml
        reps = {}
        for s in e.free_symbols:
            if s.name == "time":
                reps[s] = TIME
            elif s.name in ode.derived:
                reps[s] = ode.expand(ode.symbols[s.name])
            else:
                reps[s] = self._symbol(s.name)
        return e.xreplace(reps)

    def _input_expr(self, pid: str) -> sp.Expr:
        """A scalar network input: its hybridization expression, or its own symbol (then
        given by the condition table, the parameter table or an array file)."""
        if pid in self._hyb:
            v = self._hyb[pid]
            if str(v).strip() == "array":
                return self._symbol(f"{pid}__0")
            return self._parse(v, f"hybridization of '{pid}'")
        return self._symbol(pid)

    def _apply_net_rows(self):
        """Estimated/frozen network parameters, nominal values and priors from the
        parameter table (the most specific row wins: network, layer, array)."""
        self._weight_prior = {net: [None] * n.weights.size for net, n in self.nets.items()}
        rows = sorted(self._net_rows,
                      key=lambda r: (r[1]["a"] is not None) + (r[1]["arr"] is not None))
        self._net_order = []
        for _pid, m, _info in self._net_rows:
            if m["net"] not in self._net_order:
                self._net_order.append(m["net"])
        for pid, m, info in rows:
            net = self.nets.get(m["net"])
            if net is None:
                raise PetabError(f"parameter '{pid}' names network '{m['net']}', which the "
                                 "problem does not define")
            if m["a"] is None:
                sl = [slice(0, net.weights.size)]
            else:
                keys = [k for k in net.slices if k.split(".")[0] == m["a"]
                        and (m["arr"] is None or k.split(".", 1)[1] == m["arr"])]
                if not keys:
                    raise PetabError(f"parameter '{pid}': network '{net.name}' has no "
                                     f"parameters {m['a']}{'.' + m['arr'] if m['arr'] else ''}")
                sl = [net.slices[k] for k in keys]
            nom = info["nominal"]
            if str(nom).strip() == "array" and net.name not in self._param_files:
                raise PetabError(f"parameter '{pid}': nominalValue 'array', but no array "
                                 f"file holds parameters/{net.name}")
            for s in sl:
                net.estimated[s] = info["est"]
                if str(nom).strip() != "array":
                    v = _number(nom)
                    if v is None:
                        raise PetabError(f"parameter '{pid}': nominalValue '{nom}' is neither "
                                         "a number nor 'array'")
                    net.weights[s] = v
                prior = None
                if not _blank(info["prior"]):
                    prior = (str(info["prior"]).strip(), info["prior_par"])
                for k in range(s.start, s.stop):
                    self._weight_prior[net.name][k] = prior

    # --- layout of x ----------------------------------------------------------------------
    def _layout(self):
        names, scales, nominal, lo, hi, prior_rows = [], [], [], [], [], []
        self._mech_index = {}
        for pid, info in self._mech:
            if not info["est"]:
                continue
            self._mech_index[pid] = len(names)
            names.append(pid)
            scales.append(info["scale"])
            nominal.append(info["nominal"])
            lo.append(info["lb"])
            hi.append(info["ub"])
            prior_rows.append((info["prior"], info["prior_par"]))
        self.n_mech = len(names)
        for net_name in self._net_order + [n for n in self.nets if n not in self._net_order]:
            net = self.nets[net_name]
            net.p_index = -np.ones(net.weights.size, dtype=int)
            label = np.empty(net.weights.size, dtype=object)
            for key, s in net.slices.items():
                for k in range(s.start, s.stop):
                    label[k] = f"{net_name}.{key}[{k - s.start}]"
            for k in np.flatnonzero(net.estimated):
                net.p_index[k] = len(names)
                names.append(str(label[k]))
                scales.append("lin")
                nominal.append(net.weights[k])
                lo.append(-np.inf)
                hi.append(np.inf)
                pr = self._weight_prior[net_name][k]
                prior_rows.append(pr if pr is not None else (np.nan, np.nan))
        self.x_names = names
        self.x_scales = scales
        self.lower = self.to_scale(np.array(lo, dtype=float))
        self.upper = self.to_scale(np.array(hi, dtype=float))
        self.x_nominal = self.to_scale(np.array(nominal, dtype=float))
        self.networks = {k: n.network.with_weights(n.weights) for k, n in self.nets.items()}
        # priors: one row per entry of x, in the objective prior columns of priors.py
        kinds, pars = [], []
        for pid, (kind, par) in zip(names, prior_rows):
            if _blank(kind):
                kinds.append(np.nan)
                pars.append(np.nan)
                continue
            k = V1_PRIOR_TYPES.get(str(kind).strip())
            if k is None:
                raise PetabError(f"parameter '{pid}': prior '{kind}' is not supported "
                                 f"({', '.join(V1_PRIOR_TYPES)})")
            kinds.append(k)
            pars.append(par)
        df = pd.DataFrame({"objectivePriorType": kinds, "objectivePriorParameters": pars},
                          index=pd.Index(names, name="parameterId"))
        self.priors = parameter_priors(df, names, scales)

    def to_scale(self, P) -> np.ndarray:
        """Linear values of the estimated parameters on their PEtab scales."""
        return to_scale(P, self.x_scales)

    def from_scale(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Linear values ``P`` of ``x`` and ``dP/dx``."""
        return from_scale(x, self.x_scales)

    # --- the model ------------------------------------------------------------------------
    def _output_symbols(self) -> dict:
        """PEtab output id -> its value's symbol: a NetworkOutput of a dynamic network, or a
        plain symbol (set per experiment) of a static one."""
        out = {}
        for net in self.nets.values():
            for pid, j in net.outputs.items():
                out[pid] = (net.network[j] if net.dynamic else self._symbol(pid))
        return out

    def _build_model(self):
        ode = self.sbml
        states = [ode.symbols[s] for s in ode.states]
        self._out_sym = outs = self._output_symbols()
        net_ids = set(self._map)
        # hybridization targets that are not network inputs: parameters and species
        self._static_targets = {}   # name -> expression (parameters set before the ODE)
        self._init_targets = {}     # species -> expression
        dyn_subs = {}
        for tid, val in self._hyb.items():
            if tid in net_ids:
                continue
            e = self._parse(val, f"hybridization of '{tid}'")
            e = e.xreplace({self._symbol(k): v for k, v in outs.items()})
            dynamic = any(isinstance(s, NetworkOutput) for s in e.free_symbols) or bool(
                e.free_symbols & (set(states) | {TIME}))
            if tid in ode.states:
                if dynamic:
                    raise PetabError(f"hybridization: species '{tid}' is set to '{val}', which "
                                     "depends on the states; only initial values can be set")
                self._init_targets[tid] = e
            elif tid in ode.constants or tid in self._mech_ids:
                if dynamic:
                    dyn_subs[self._symbol(tid)] = e
                else:
                    self._static_targets[tid] = e
            else:
                raise PetabError(f"hybridization: target '{tid}' is neither a network input, "
                                 "a model parameter nor a species")
        self._dyn_subs = dyn_subs
        rhs = {s: ode.rhs[k].xreplace(dyn_subs) for s, k in zip(states, ode.states)}
        used = set()
        for e in rhs.values():
            used |= e.free_symbols
        model_nets = {a.network.name for e in rhs.values() for a in e.free_symbols
                      if isinstance(a, NetworkOutput)}
        for n in model_nets:
            for e in self.nets[n].inputs:
                used |= e.free_symbols
        params = sorted((s for s in used if s not in set(states) and s != TIME
                         and not isinstance(s, NetworkOutput)), key=lambda s: s.name)
        self._theta_params = [s.name for s in params]
        self.model = HybridModel(states=states, rhs=rhs, params={s: 1.0 for s in params},
                                 time=TIME, name=str(self.tables.model_path.stem))
        self._model_nets = [n.name for n in self.model.networks]

    # --- measurements ---------------------------------------------------------------------
    def _build_measurements(self):
        from petab.v1.math import sympify_petab

        meas = self.tables.measurements
        ode = self.sbml
        states = [ode.symbols[s] for s in ode.states]
        for col in ("observableParameters", "noiseParameters"):
            if col in meas and meas[col].notna().any():
                raise PetabError(f"measurement table: {col} (placeholders) are not supported "
                                 "for PEtab SciML problems")
        self._obs = {}
        for oid, row in self.tables.observables.iterrows():
            oid = str(oid)
            trans = str(row.get("observableTransformation", "lin"))
            trans = "lin" if trans in ("nan", "") else trans
            dist = str(row.get("noiseDistribution", "normal"))
            dist = "normal" if dist in ("nan", "") else dist
            if dist in ("log-normal", "log-laplace"):
                trans, dist = "log", dist[4:]
            if trans not in ("lin", "log", "log10") or dist not in ("normal", "laplace"):
                raise PetabError(f"observable '{oid}': noise model {trans}/{dist} is not "
                                 "supported")
            comp = []
            for col in ("observableFormula", "noiseFormula"):
                v = row.get(col)
                e = sympify_petab(str(v) if not _blank(v) else "0")
                reps = {}
                for s in e.free_symbols:
                    if s.name == "time":
                        reps[s] = TIME
                    elif s.name in self._out_sym:
                        reps[s] = self._out_sym[s.name]
                    elif s.name in ode.derived:
                        reps[s] = ode.expand(ode.symbols[s.name])
                    else:
                        reps[s] = self._symbol(s.name)
                e = e.xreplace(reps).xreplace(self._dyn_subs)
                extra = sorted((s for s in e.free_symbols if s not in set(states)
                                and s != TIME), key=lambda s: s.name)
                comp.append(_Fn(e, [TIME, *states, *extra]))
            self._obs[oid] = dict(h=comp[0], s=comp[1], trans=trans, dist=dist)
        t = np.asarray(meas["time"], dtype=float)
        if np.any(~np.isfinite(t)):
            raise PetabError("measurement times must be finite (steady-state measurements "
                             "are not supported for PEtab SciML problems)")
        self._t = t
        self._m = np.asarray(meas["measurement"], dtype=float)
        eids = (meas["experimentId"] if "experimentId" in meas else
                pd.Series([np.nan] * len(meas)))
        keys = ["" if _blank(e) else str(e).strip() for e in eids]
        self._exps = []
        for eid in dict.fromkeys(keys):
            rows = np.array([i for i, k in enumerate(keys) if k == eid])
            periods = experiment_periods(self.tables, eid or None)
            if periods[0][0] == -np.inf:
                raise PetabError(f"experiment '{eid}': preequilibration (a period at -inf) "
                                 "is not supported for PEtab SciML problems")
            cids = periods[0][1]
            times, tidx = np.unique(t[rows], return_inverse=True)
            starts = np.array([p[0] for p in periods])
            if times[0] < starts[0]:
                raise PetabError(f"experiment '{eid}': a measurement at t = {times[0]} "
                                 f"before the experiment starts (t = {starts[0]})")
            period_of = np.searchsorted(starts, times, side="right") - 1
            groups = []
            obs_ids = [str(o) for o in meas["observableId"].iloc[rows]]
            for o in dict.fromkeys(obs_ids):
                if o not in self._obs:
                    raise PetabError(f"measurement of unknown observable '{o}'")
                js = np.array([j for j, oo in enumerate(obs_ids) if oo == o])
                groups.append((o, rows[js], tidx[js]))
            self._exps.append(dict(
                id=eid, cids=cids, times=times, groups=groups, period_of=period_of,
                periods=[(t_k, condition_changes(self.tables, c)) for t_k, c in periods]))
        self._n_rows = len(meas)

    # --- evaluation -----------------------------------------------------------------------
    def _env(self, exp, P):
        """Values and dvalue/dP of every non-state symbol at the start of experiment
        ``exp`` (its first period's changes applied), and the initial values that the
        changes and the networks set: ``{species: (value, gradient)}``."""
        nP = P.size
        ode = self.sbml
        val, grad = {}, {}

        def setc(name, v, g=None):
            val[name] = float(v)
            grad[name] = np.zeros(nP) if g is None else g

        for k, v in ode.constants.items():
            setc(k, v)
        for pid, info in self._mech:
            if pid in self._mech_index:
                g = np.zeros(nP)
                g[self._mech_index[pid]] = 1.0
                setc(pid, P[self._mech_index[pid]], g)
            else:
                setc(pid, info["nominal"])
        for pid, arrs in self._input_arrays.items():
            arr = None
            for c in exp["cids"]:
                if c in arrs:
                    arr = arrs[c]
            if arr is None:
                arr = arrs.get("0")
            if arr is None:
                if len(arrs) == 1:
                    arr = next(iter(arrs.values()))
                else:
                    raise PetabError(f"input array '{pid}' has no entry for experiment "
                                     f"'{exp['id']}' (conditions {exp['cids']})")
            for k, v in enumerate(np.ravel(arr)):
                setc(f"{pid}__{k}", v)
        setc(TIME.name, exp["periods"][0][0])
        init = self._apply_changes(exp["periods"][0][1], val, grad, nP)
        init.update(self._derived(val, grad, P))
        return val, grad, init

    def _apply_changes(self, changes: dict, val, grad, nP) -> dict:
        """Condition changes: every target value is evaluated with the current values (all
        before any is assigned), then parameters are assigned in ``val``/``grad``; the new
        values of species are returned."""
        ode = self.sbml
        new = {}
        for tid, v in changes.items():
            e = self._parse(v, f"condition change of '{tid}'")
            new[tid] = self._eval(e, val, grad, nP)
        init = {}
        for tid, (ev, eg) in new.items():
            if tid in ode.states:
                init[tid] = (ev, eg)
            elif tid in ode.derived:
                raise PetabError(f"condition change of '{tid}', which an SBML rule defines: "
                                 "not allowed by PEtab")
            else:
                val[tid], grad[tid] = float(ev), eg
        return init

    def _derived(self, val, grad, P) -> dict:
        """Static networks evaluated on the current values, the parameters they set (in
        ``val``/``grad``), and the initial values they set (returned)."""
        nP = P.size
        for net in self.nets.values():
            if net.dynamic:
                continue
            V = np.empty(len(net.inputs))
            DV = np.zeros((len(net.inputs), nP))
            for i, e in enumerate(net.inputs):
                V[i], DV[i] = self._eval(e, val, grad, nP)
            w = net.weights_at(P)
            z = np.asarray(net.network.forward(w, V[None, :]), dtype=float)[0]
            Jw = np.asarray(net.network.weight_jacobian(w, V[None, :]))[0]
            D = Jw @ net.weight_jac_P(nP)
            if np.any(DV):
                D = D + np.asarray(net.network.input_jacobian(w, V[None, :]))[0] @ DV
            for pid, j in net.outputs.items():
                val[pid], grad[pid] = float(z[j]), D[j]
        for tid, e in self._static_targets.items():
            val[tid], grad[tid] = self._eval(e, val, grad, nP)
        return {tid: self._eval(e, val, grad, nP) for tid, e in self._init_targets.items()}

    _fn_cache: dict

    def _eval(self, e, val, grad, nP):
        """Value of expression ``e`` (no states) and its gradient over P."""
        if not isinstance(e, sp.Basic) or not e.free_symbols:
            return float(e), np.zeros(nP)
        cache = self.__dict__.setdefault("_fn_cache", {})
        fn = cache.get(e)
        if fn is None:
            args = sorted(e.free_symbols, key=lambda s: s.name)
            for s in args:
                if s.name not in val:
                    raise PetabError(f"'{s.name}' (in '{e}') has no value: it is not a model "
                                     "parameter, a parameter-table entry, a condition target "
                                     "or an array input")
            fn = cache[e] = _Fn(e, args)
        v, G = fn([val[s.name] for s in fn.args], 1)
        g = np.zeros(nP)
        for i, s in enumerate(fn.args):
            if G[0, i]:
                g += G[0, i] * grad[s.name]
        return float(v[0]), g

    def _theta(self, val, grad, P):
        """The model's theta (its constants, then its networks' weights) and dtheta/dP."""
        nP = P.size
        theta = np.concatenate([np.array([val[k] for k in self._theta_params], dtype=float)]
                               + [self.nets[n].weights_at(P) for n in self._model_nets])
        Dtheta = np.vstack([np.array([grad[k] for k in self._theta_params]).reshape(-1, nP)]
                           + [self.nets[n].weight_jac_P(nP) for n in self._model_nets])
        return theta, Dtheta

    def _start(self, exp, P):
        """The constants at the start of an experiment (values and d/dP), the initial
        state and dy0/dP."""
        ode = self.sbml
        n, nP = len(ode.states), P.size
        val, gr, init = self._env(exp, P)
        y = np.empty(n)
        D = np.zeros((n, nP))
        t0 = exp["periods"][0][0]
        for i, k in enumerate(ode.states):
            if k in init:
                y[i], D[i] = init[k]
            else:
                y[i], D[i] = self._eval(ode.initial[k].xreplace({TIME: t0}), val, gr, nP)
        return val, gr, y, D

    def _simulate(self, exp, P, grad: bool):
        """States (and dy/dP, by forward sensitivities) at the experiment's unique
        measurement times, period by period; also every period's values of the constants
        (for the observables)."""
        ode = self.sbml
        n, nP = len(ode.states), P.size
        val, gr, y, D = self._start(exp, P)
        times = exp["times"]
        Y = np.empty((times.size, n))
        SP = np.empty((times.size, n, nP)) if grad else None
        envs = []
        starts = [p[0] for p in exp["periods"]]
        for k, (t_k, changes) in enumerate(exp["periods"]):
            if k > 0:
                # later periods: changes evaluated with the state at the period's start
                # (PEtab v2); the state itself is continuous unless a change sets it
                val, gr = dict(val), dict(gr)
                for i, s in enumerate(ode.states):
                    val[s], gr[s] = float(y[i]), D[i]
                val[TIME.name] = t_k
                for s, (v, g) in self._apply_changes(changes, val, gr, nP).items():
                    i = ode.states.index(s)
                    y[i], D[i] = v, g
                self._derived(val, gr, P)
                for s in ode.states:
                    val.pop(s)
                    gr.pop(s)
            envs.append((val, gr))
            t_end = starts[k + 1] if k + 1 < len(starts) else None
            sel = (times >= t_k) & (times < t_end) if t_end is not None else times >= t_k
            seg = times[sel] if t_end is None else np.append(times[sel], t_end)
            if seg.size == 0:
                continue
            theta, Dtheta = self._theta(val, gr, P)
            vf = VectorField(self.model, theta)
            where = f" in experiment '{exp['id']}'"
            if not grad:
                Ys, _ = solve_observed(vf, t_k, seg, y, self.method, self.rtol, self.atol, {},
                                       where=where)
            else:
                prob = Problem(vf=vf, t0=t_k, t_obs=seg, y0=y, obs_loss=None,
                               method=self.method, rtol=self.rtol, atol=self.atol,
                               name=exp["id"] or "petab")
                Ys, S = ForwardSensitivity().trajectories(prob, wrt_y0=True)
                q = Dtheta.shape[0]
                Ss = S[:, :, :q] @ Dtheta + S[:, :, q:] @ D
                SP[sel] = Ss[:int(sel.sum())]
                D = Ss[-1].copy()
            Y[sel] = Ys[:int(sel.sum())]
            y = np.array(Ys[-1], dtype=float)
        return Y, SP, envs

    def _formula(self, fn: _Fn, tt, Yr, val, gr, P, grad):
        """A formula's values on rows, and its partial derivatives: with respect to the
        states (rows, n) and directly with respect to P at fixed states (rows, nP)."""
        m, nP = tt.size, P.size
        n = len(self.sbml.states)
        extras = fn.args[1 + n:]
        vals = [tt, *Yr.T]
        dY = [None] * (1 + n)        # states enter through their own columns below
        dP = [None] * (1 + n)
        for s in extras:
            if isinstance(s, NetworkOutput):
                z, zy, zp = self._net_rows_eval(s, tt, Yr, val, gr, P, grad)
                vals.append(z)
                dY.append(zy)
                dP.append(zp)
            else:
                if s.name not in val:
                    raise PetabError(f"'{s.name}' in an observable or noise formula has no "
                                     "value")
                vals.append(np.full(m, val[s.name]))
                dY.append(None)
                dP.append(np.broadcast_to(gr[s.name], (m, nP)) if grad else None)
        v, G = fn(vals, m, grad)
        if not grad:
            return v, None, None
        GY = np.array(G[:, 1:1 + n])
        GP = np.zeros((m, nP))
        for i in range(1 + n, len(vals)):
            if not np.any(G[:, i]):
                continue
            if dY[i] is not None:
                GY += G[:, i:i + 1] * dY[i]
            if dP[i] is not None:
                GP += G[:, i:i + 1] * dP[i]
        return v, GY, GP

    def _net_rows_eval(self, out: NetworkOutput, tt, Yr, val, gr, P, grad):
        """A dynamic network's output on rows, its derivatives with respect to the states
        (rows, n), and directly with respect to P (rows, nP: through the constants that
        feed it and its weights)."""
        net = self.nets[out.network.name]
        ode = self.sbml
        states = [ode.symbols[s] for s in ode.states]
        key = ("net_inputs", net.name)
        cache = self.__dict__.setdefault("_fn_cache", {})
        if key not in cache:
            fns = []
            for e in net.inputs:
                extra = sorted((s for s in e.free_symbols if s not in set(states) and s != TIME),
                               key=lambda s: s.name)
                fns.append(_Fn(e, [TIME, *states, *extra]))
            cache[key] = fns
        m, nP, n = tt.size, P.size, len(states)
        k_in = len(net.inputs)
        V = np.empty((m, k_in))
        VY = np.zeros((m, k_in, n))
        VP = np.zeros((m, k_in, nP))
        for i, fn in enumerate(cache[key]):
            extra = fn.args[1 + n:]
            args = [tt, *Yr.T, *(np.full(m, val[s.name]) for s in extra)]
            v, G = fn(args, m, grad)
            V[:, i] = v
            if grad:
                VY[:, i] = G[:, 1:1 + n]
                for j, s in enumerate(extra):
                    VP[:, i] += G[:, 1 + n + j:2 + n + j] * gr[s.name]
        w = net.weights_at(P)
        Z = np.asarray(net.network.forward(w, V), dtype=float)[:, out.index]
        if not grad:
            return Z, None, None
        Jv = np.asarray(net.network.input_jacobian(w, V))[:, out.index, :]
        Jw = np.asarray(net.network.weight_jacobian(w, V))[:, out.index, :]
        return (Z, np.einsum("ri,rin->rn", Jv, VY),
                np.einsum("ri,rip->rp", Jv, VP) + Jw @ net.weight_jac_P(nP))

    def _experiment_loss(self, exp, Y, envs, P, grad: bool, hsim=None):
        """The negative log-likelihood of an experiment's measurements given the states
        ``Y`` at its unique times, its derivative with respect to ``Y`` (times, n) and its
        direct gradient over P (at fixed states). Simulated values go to ``hsim``."""
        total = 0.0
        GY = np.zeros(Y.shape) if grad else None
        gP = np.zeros(P.size) if grad else None
        for oid, rows_all, ti_all in exp["groups"]:
            info = self._obs[oid]
            period = exp["period_of"][ti_all]
            for k in np.unique(period):
                # the observables of each period see that period's constants
                rows, ti = rows_all[period == k], ti_all[period == k]
                val, gr = envs[k]
                tt, Yr = self._t[rows], Y[ti]
                h, hy, hp = self._formula(info["h"], tt, Yr, val, gr, P, grad)
                if hsim is not None:
                    hsim[rows] = h
                s, sy, sp_ = self._formula(info["s"], tt, Yr, val, gr, P, grad)
                v, d_h, d_s = nllh_terms(h, s, self._m[rows], info["trans"], info["dist"])
                total += float(np.sum(v))
                if grad:
                    np.add.at(GY, ti, d_h[:, None] * hy + d_s[:, None] * sy)
                    gP += d_h @ hp + d_s @ sp_
        return total, GY, gP

    def _evaluate(self, x, grad: bool, want_sim: bool = False):
        x = np.asarray(x, dtype=float)
        if x.shape != (len(self.x_names),):
            raise PetabError(f"x must have shape ({len(self.x_names)},), got {x.shape}")
        P, dPdx = self.from_scale(x)
        total, g = 0.0, np.zeros(P.size)
        hsim = np.full(self._n_rows, np.nan) if want_sim else None
        grad = grad and not want_sim
        for exp in self._exps:
            if grad and len(exp["periods"]) == 1:
                value, gx = self._one_period_loss_and_grad(exp, P)
                total += value
                g += gx
                continue
            Y, SP, envs = self._simulate(exp, P, grad)
            value, GY, gP = self._experiment_loss(exp, Y, envs, P, grad, hsim)
            total += value
            if grad:
                g += np.einsum("mn,mnp->p", GY, SP) + gP
        if want_sim:
            return hsim
        return (total, g * dPdx) if grad else total

    def _one_period_loss_and_grad(self, exp, P):
        """An experiment of one period: the loss and its gradient over P through the
        problem's gradient method (forward sensitivities unless another was given):
        ``dL/dtheta dtheta/dP + dL/dy0 dy0/dP`` plus the direct part."""
        val, gr, y0, D0 = self._start(exp, P)
        theta, Dtheta = self._theta(val, gr, P)
        vf = VectorField(self.model, theta)
        sens = self.sensitivity if self.sensitivity is not None else ForwardSensitivity()
        envs = [(val, gr)]
        direct = {}

        def obs_loss(H):
            # the model observes its states: H is Y at the experiment's unique times
            value, GY, gP = self._experiment_loss(exp, np.asarray(H), envs, P, True)
            direct["gP"] = gP
            return value, GY

        prob = Problem(vf=vf, t0=exp["periods"][0][0], t_obs=exp["times"], y0=y0,
                       obs_loss=obs_loss, method=self.method, rtol=self.rtol, atol=self.atol,
                       name=exp["id"] or "petab")
        value, g_theta, g_y0 = sens.loss_and_grad(prob, wrt_y0=True)
        return value, g_theta @ Dtheta + g_y0 @ D0 + direct["gP"]

    # --- public ---------------------------------------------------------------------------
    def nllh(self, x) -> float:
        """The negative log-likelihood at ``x`` (normalisation constants included, priors
        not)."""
        return self._evaluate(x, grad=False)

    def loss_and_grad(self, x) -> tuple[float, np.ndarray]:
        """The negative log-likelihood and its gradient with respect to ``x`` (forward
        sensitivities through the ODE, autograd through the networks)."""
        return self._evaluate(x, grad=True)

    def objective(self, x, prior: bool = True) -> tuple[float, np.ndarray]:
        """The objective :meth:`fit` minimises and its gradient: :meth:`loss_and_grad`,
        plus the negative log prior density when ``prior`` and the parameter table gives
        priors (then the negative log-posterior, the suite's ``-log_posterior``)."""
        f, g = self.loss_and_grad(x)
        if prior and self.priors is not None:
            pv, pg = self.priors.value_and_grad(x)
            f, g = f + pv, g + pg
        return f, g

    def starts(self, n_starts: int, seed: int | None = 0, x0=None) -> np.ndarray:
        """Start points for :meth:`fit`: ``x0`` (default the nominal point) first; then
        mechanistic parameters drawn uniformly within their bounds on their scales (around
        the nominal value, +-1 on the scale, where a bound is infinite) and network weights
        drawn as each network's own initialisation (PyTorch's defaults) with a new seed.
        """
        rng = np.random.default_rng(seed)
        out = np.empty((int(n_starts), len(self.x_names)))
        out[0] = self.x_nominal if x0 is None else np.asarray(x0, dtype=float)
        nets_mod = _networks_module()
        m = self.n_mech
        lo, hi = self.lower[:m].copy(), self.upper[:m].copy()
        inf_lo, inf_hi = ~np.isfinite(lo), ~np.isfinite(hi)
        lo[inf_lo] = self.x_nominal[:m][inf_lo] - 1.0
        hi[inf_hi] = self.x_nominal[:m][inf_hi] + 1.0
        for k in range(1, out.shape[0]):
            out[k, :m] = lo + rng.random(m) * (hi - lo)
            for net in self.nets.values():
                fresh = nets_mod.network_from_yaml(
                    self._net_files[net.name], name=net.name, inputs=None,
                    input_shapes=net.network.input_shapes,
                    seed=int(rng.integers(2 ** 31))).weights
                sel = net.p_index >= 0
                out[k, net.p_index[sel]] = fresh[sel]
        return out

    def fit(self, n_starts: int = 1, seed: int | None = 0, x0=None, maxiter: int = 2000,
            starts=None, max_time: float | None = None, prior: bool = True, client=None):
        """Multi-start L-BFGS-B on the exact gradient of :meth:`objective`, the starts from
        :meth:`starts` unless given; the same driver and result
        (:class:`~dynlearn.petab.PetabFit`) as :meth:`PetabProblem.fit
        <dynlearn.petab.PetabProblem.fit>`, which needs only this class's ``objective``,
        ``priors``, ``lower``, ``upper`` and ``x_names``. ``client``: where the starts run,
        as there (a Dask client, or a ``map``-like callable such as a process pool's; the
        problem pickles)."""
        if starts is None:
            starts = self.starts(n_starts, seed, x0)
        return PetabProblem.fit(self, starts=starts, maxiter=maxiter, max_time=max_time,
                                prior=prior, client=client)

    def simulate(self, x) -> np.ndarray:
        """Simulated observables (untransformed) in the measurement table's order."""
        return self._evaluate(x, grad=False, want_sim=True)

    def weights(self, x) -> dict:
        """Every network's full flat weight vector at ``x`` (fixed entries at their
        nominal values)."""
        P, _ = self.from_scale(x)
        return {k: n.weights_at(P) for k, n in self.nets.items()}

    def __repr__(self) -> str:
        nw = len(self.x_names) - self.n_mech
        return (f"SciMLProblem({self.n_mech} mechanistic + {nw} network parameters, "
                f"networks {list(self.nets)}, {len(self._exps)} experiments, "
                f"{self._n_rows} measurements)")


def load_sciml(path: str | os.PathLike, **options) -> SciMLProblem:
    """Load a PEtab v2 (SciML) problem from its YAML file.

    Parameters
    ----------
    path : str or path-like
    **options
        ``rtol``, ``atol``, ``method``, ``sensitivity`` of :class:`SciMLProblem`.
    """
    return SciMLProblem(read_v2(path), **options)
