"""A model as plain data: the one description of a model's fields.

:func:`model_to_dict` turns a :class:`~dynlearn.HybridModel` into JSON-able text and numbers
(symbols by name, equations as text, parameters with their bounds, MLP architectures);
:func:`model_from_dict` rebuilds it, parsing equations with the restricted parser of
:mod:`dynlearn.core.expressions` (never ``eval``). Result files store this dict as JSON and
model files (:func:`dynlearn.io.model_file.model_to_toml`) render it as TOML, so both
describe a model with the same fields.

Network weights are not part of the description: an MLP is described by its architecture,
``seed`` and ``scale``, which give its initial weights. Fitted weights are stored beside the
description (the ``.npz`` of a result).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sympy as sp

from dynlearn.core.expressions import parse_expression
from dynlearn.core.model import HybridModel
from dynlearn.core.neural import MLP
from dynlearn.core.parameters import Parameter
from dynlearn.errors import ModelError

__all__ = ["model_from_dict", "model_to_dict", "parameter_to_dict"]


def parameter_to_dict(p) -> dict:
    """A :class:`~dynlearn.Parameter` as a dict of its fields (``Parameter(**d)`` inverts it).

    Parameters
    ----------
    p : Parameter

    Returns
    -------
    dict
        ``value``, ``min``, ``max`` (floats, possibly infinite), ``fixed``, ``transform`` and,
        when it has one, ``unit``.
    """
    d = {"value": p.value, "min": p.min, "max": p.max, "fixed": p.fixed,
         "transform": p.transform}
    if p.unit:
        d["unit"] = p.unit
    return d


def _network_to_dict(net) -> dict:
    if not isinstance(net, MLP):
        return {"type": type(net).__name__, "name": net.name}
    spec = {"type": "MLP", "name": net.name, "inputs": [str(v) for v in net.inputs],
            "outputs": net.n_outputs, "hidden": list(net.hidden),
            "activation": net.activation}
    # only an integer seed reproduces the initial weights (None or a Generator does not)
    if isinstance(net.seed, (int, np.integer)) and not isinstance(net.seed, bool):
        spec["seed"] = int(net.seed)
    spec["scale"] = float(net.scale)
    return spec


def model_to_dict(model) -> dict:
    """The model's description as JSON-able text and numbers.

    Parameters
    ----------
    model : HybridModel

    Returns
    -------
    dict
        ``name``; ``states``, ``inputs`` (lists of names) and ``time`` (a name);
        ``params`` (name -> :func:`parameter_to_dict`); ``rhs`` (state -> equation text);
        ``observables`` (name -> expression text); ``networks``: a list of dicts, for an MLP
        ``type = "MLP"``, ``name``, ``inputs`` (expression texts), ``outputs``, ``hidden``,
        ``activation``, ``scale`` and ``seed`` (when an integer), for any other network its
        ``type`` and ``name`` only; ``units`` (name -> label, for states, inputs,
        observables and time; parameters carry theirs). Equations use sympy's printer
        (``**`` powers, ``exp``, network outputs as ``nn[0]``), which
        :func:`model_from_dict` reads back.
    """
    return {
        "name": model.name,
        "states": [s.name for s in model.states],
        "time": model.time.name,
        "inputs": [u.name for u in model.inputs],
        "params": {s.name: parameter_to_dict(p) for s, p in model.params.items()},
        "rhs": {s.name: str(e) for s, e in zip(model.states, model.rhs)},
        "observables": {k: str(e) for k, e in model.observables.items()},
        "networks": [_network_to_dict(n) for n in model.networks],
        "units": {k: v for k, v in model.units.items()
                  if k not in {s.name for s in model.params}},
    }


def model_from_dict(d: Mapping):
    """Rebuild a model from :func:`model_to_dict`.

    Equations are parsed with the restricted parser (declared names, whitelisted functions
    and network outputs only). MLPs start from the weights given by their ``seed`` (0 when
    absent, as in files written before seeds were stored) and ``scale`` (default 1).

    Parameters
    ----------
    d : dict

    Returns
    -------
    HybridModel

    Raises
    ------
    ModelError
        For a custom (non-MLP) network, which cannot be rebuilt from text, or an equation
        that does not parse.
    """
    names: dict = {}
    for group in ("states", "inputs"):
        for n in d[group]:
            names[n] = sp.Symbol(n)
    for n in d["params"]:
        names[n] = sp.Symbol(n)
    names[d["time"]] = sp.Symbol(d["time"])
    for spec in d["networks"]:
        if spec.get("type") != "MLP":
            raise ModelError(f"network '{spec['name']}' is a custom {spec.get('type')}; pass "
                             "model= to load_result")
        inputs = [parse_expression(v, names, where=f"network '{spec['name']}' input")
                  for v in spec["inputs"]]
        names[spec["name"]] = MLP(spec["name"], inputs=inputs, outputs=spec["outputs"],
                                  hidden=spec["hidden"], activation=spec["activation"],
                                  seed=spec.get("seed", 0), scale=spec.get("scale", 1.0))
    rhs = {names[s]: parse_expression(e, names, where=f"equation of '{s}'")
           for s, e in d["rhs"].items()}
    obs = {k: parse_expression(e, names, where=f"observable '{k}'")
           for k, e in d["observables"].items()}
    params = {names[k]: Parameter(**v) for k, v in d["params"].items()}
    return HybridModel(states=[names[s] for s in d["states"]], rhs=rhs, params=params,
                       inputs=[names[u] for u in d["inputs"]], observables=obs,
                       time=names[d["time"]], name=d.get("name"), units=d.get("units"))
