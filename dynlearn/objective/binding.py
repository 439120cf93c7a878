"""Data bound to a model: observations in observable order, inputs, initial states.

:func:`bind_data` matches a dataset's columns to a model's observables and inputs. How each
experiment's initial state is obtained is an *initial-state strategy*, made from the ``y0``
argument of :func:`dynlearn.fit` by :func:`initial_states`:

* :class:`FirstRow` (``y0="first"``): each experiment's own ``y0``, else its first data row;
* :class:`Estimated` (``y0="estimate"``): fitted per experiment, started from the first row
  (and ``y0_init`` where the first row does not measure a state);
* :class:`Given` (an array, or a dict ``{experiment: array}``): known values;
* :class:`PerState` (a dict ``{state: value or dl.Parameter}``): fixes or frees states one by
  one, the others taken from the first row.

Each strategy binds the data (:meth:`InitialStates.bind`) and gives the fit one
:class:`~dynlearn.Parameter` per state and experiment (:meth:`InitialStates.parameters`,
``fixed`` = known).

An initial state is the state at the experiment's start time
(:attr:`~dynlearn.data.dataset.Experiment.t0`, by default its first data time). An
experiment that starts before its first data row cannot take its initial state from that
row: it must be given, or estimated (the first row is then only the starting guess).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dynlearn.core.parameters import Parameter
from dynlearn.data.checks import check_y0
from dynlearn.data.dataset import (
    Experiment,
    as_dataset,
    match_columns,
    warn_ignored_columns,
)
from dynlearn.data.signals import InputSignal
from dynlearn.errors import DataError, OptionError

__all__ = [
    "BoundExperiment",
    "Estimated",
    "FirstRow",
    "Given",
    "InitialStates",
    "PerState",
    "bind_data",
    "first_row_values",
    "initial_states",
]


@dataclass
class BoundExperiment:
    """An experiment matched to a model: observations as an array in observable order."""

    name: str
    t: np.ndarray
    Y: np.ndarray          # (m, n_obs), NaN where not observed
    mask: np.ndarray       # (m, n_obs) bool
    y0: np.ndarray | None  # initial state (at t0), if known
    t0: float              # start of integration: the experiment's t0, else its first time
    inputs: InputSignal | None
    sigma: np.ndarray | None = None   # (m, n_obs) from `<obs>_sigma` columns, NaN if none


def first_row_values(model, exp: Experiment) -> np.ndarray:
    """Each state's value in the experiment's first row, through the observables that are
    states (NaN where a state is not measured there)."""
    idx = model.compiled.obs_state_index
    y = np.full(model.n_states, np.nan)
    for name, i in idx.items():
        if i is not None and name in exp.columns and np.isfinite(exp.columns[name][0]):
            y[i] = exp.columns[name][0]
    return y


def bind_data(model, data, y0=None, input_kind: str | None = None,
              require_y0: bool = True) -> list[BoundExperiment]:
    """Match a dataset to a model's observables and inputs.

    Parameters
    ----------
    model : HybridModel
    data : Dataset or DataFrame
    y0 : None, array_like or dict
        ``None``: each experiment's own ``y0`` or else its first data row. An array: the same
        initial state for every experiment. A dict: per experiment name.
    input_kind : {"linear", "zoh"}, optional
        How inputs are interpolated (default: the dataset's setting, else linear).
    require_y0 : bool
        Raise :class:`~dynlearn.DataError` when an initial state is neither given nor in the
        first row (else ``y0`` is ``None`` for that experiment).

    Returns
    -------
    list of BoundExperiment
    """
    data = as_dataset(data)
    obs = list(model.observable_names)
    inputs = [u.name for u in model.inputs]
    states = [s.name for s in model.states]
    # one word about the columns the model does not read (a column differing from a model
    # name only by case is an error: silently fitting half the data is worse)
    every = list(dict.fromkeys(c for exp in data for c in exp.columns))
    _, ignored = match_columns(every, obs, inputs, states)
    warn_ignored_columns(ignored, obs, inputs, stacklevel=4)
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
            signal = _input_signal(exp, inputs, kind)
        if isinstance(y0, dict):
            y = y0.get(exp.name)
        elif y0 is not None:
            y = y0
        else:
            y = exp.y0
        start = exp.start
        if y is None and start < exp.t[0]:
            # the first row is not the state at an earlier start
            if require_y0:
                raise DataError(f"experiment '{exp.name}' starts at t0={start:g}, before its "
                                f"first data row (t={exp.t[0]:g}), so its initial state cannot "
                                "be taken from that row: pass y0=[...] (the state at t0) or "
                                "estimate it (y0='estimate')")
        elif y is None:
            first = first_row_values(model, exp)
            y = first if np.all(np.isfinite(first)) else None
            if y is None and require_y0:
                unmeasured = [s for s in states if s not in cols or
                              not np.isfinite(exp.columns[s][0])]
                raise DataError(f"cannot take the initial state of experiment '{exp.name}' from "
                                f"its first row: state(s) {unmeasured} are not measured at "
                                f"t={exp.t[0]}. Pass y0=[...] (or estimate it in dl.fit)")
        else:
            y = check_y0(y, model.n_states, states, f" of experiment '{exp.name}'")
        out.append(BoundExperiment(exp.name, exp.t, Y, np.isfinite(Y),
                                   None if y is None else np.asarray(y, float),
                                   start, signal, S))
    return out


def _input_signal(exp: Experiment, inputs: list, kind: str) -> InputSignal:
    """The inputs of an experiment sampled at its distinct times (replicate rows repeat a
    time; their inputs must agree, since an input has one value at one time)."""
    values = np.column_stack([exp.columns[u] for u in inputs])
    t, first = np.unique(exp.t, return_index=True)
    if t.size < exp.t.size:
        rows = np.searchsorted(t, exp.t)
        differ = ~np.isclose(values, values[first][rows], rtol=1e-12, atol=0.0, equal_nan=True)
        if differ.any():
            r, c = np.argwhere(differ)[0]
            raise DataError(f"experiment '{exp.name}': input '{inputs[c]}' has two values at "
                            f"t={exp.t[r]:g} ({values[first[rows[r]], c]:g} and "
                            f"{values[r, c]:g}, rows {first[rows[r]] + 1} and {r + 1}); rows at "
                            "one time are replicates and must give the inputs alike")
        values = values[first]
    return InputSignal(t, values, kind=kind, names=inputs)


# --- initial-state strategies --------------------------------------------------------------
def _state_guesses(model, init) -> np.ndarray | None:
    """``y0_init`` (an array or a dict ``{state: value}``) as one value per state, NaN where
    not given; raises :class:`~dynlearn.OptionError` when it is malformed."""
    if init is None:
        return None
    states = [s.name for s in model.states]
    if isinstance(init, Mapping):
        unknown = set(init) - set(states)
        values = np.array([float(init.get(s, np.nan)) for s in states])
        if unknown:
            raise OptionError(f"y0_init names {sorted(unknown)}, which are not states "
                              f"{states}")
        return values
    values = np.asarray(init, dtype=float)
    if values.shape != (len(states),):
        raise OptionError(f"y0_init must have one value per state {states}; got shape "
                          f"{values.shape}")
    return values


class InitialStates:
    """How the initial state of every experiment is obtained (see the module notes)."""

    #: the ``require_y0`` of :func:`bind_data`
    require_y0 = True

    def bind(self, model, dataset, input_kind: str | None = None) -> list[BoundExperiment]:
        """The dataset bound to the model (see :func:`bind_data`)."""
        return bind_data(model, dataset, None, input_kind, require_y0=self.require_y0)

    def parameters(self, model, dataset, bound: list[BoundExperiment]) -> list[list[Parameter]]:
        """Per experiment, one :class:`~dynlearn.Parameter` per state (``fixed`` = known)."""
        out = []
        for exp, b in zip(dataset, bound):
            if b.y0 is None:  # pragma: no cover - bind_data raised already
                raise DataError(f"no initial state for experiment '{exp.name}'")
            out.append([Parameter(float(v), fixed=True) for v in b.y0])
        return out


class FirstRow(InitialStates):
    """Known initial states: each experiment's own ``y0``, else its first data row."""

    def __repr__(self) -> str:
        return "FirstRow()"


class Given(InitialStates):
    """Known initial states: ``values`` (one per state) for every experiment, or a dict
    ``{experiment: values}`` (experiments not in it as :class:`FirstRow`)."""

    def __init__(self, values):
        self.values = values

    def bind(self, model, dataset, input_kind: str | None = None) -> list[BoundExperiment]:
        return bind_data(model, dataset, self.values, input_kind)

    def __repr__(self) -> str:
        return f"Given({self.values!r})"


class Estimated(InitialStates):
    """Initial states fitted per experiment, started from the first data row; ``init`` (an
    array, or a dict ``{state: value}``) gives starting guesses where it does not."""

    require_y0 = False

    def __init__(self, init=None):
        self.init = init

    def parameters(self, model, dataset, bound):
        states = [s.name for s in model.states]
        init = _state_guesses(model, self.init)
        out = []
        for exp in dataset:
            guess = first_row_values(model, exp)
            if init is not None:
                guess = np.where(np.isnan(init), guess, init)
            missing = [states[i] for i in range(len(states)) if not np.isfinite(guess[i])]
            if missing:
                raise DataError(f"y0='estimate' needs a starting guess for state(s) {missing}, "
                                f"which are not measured in the first row of experiment "
                                f"'{exp.name}'; pass y0_init={{{missing[0]!r}: value, ...}}")
            out.append([Parameter(float(v)) for v in guess])
        return out

    def __repr__(self) -> str:
        return f"Estimated(init={self.init!r})"


class PerState(InitialStates):
    """Initial states set state by state: ``spec`` maps state names to a value (fixed) or a
    :class:`~dynlearn.Parameter` (fixed or free); the other states come from the first row."""

    require_y0 = False

    def __init__(self, spec: Mapping):
        self.spec = spec

    def parameters(self, model, dataset, bound):
        states = [s.name for s in model.states]
        out = []
        for exp in dataset:
            first = first_row_values(model, exp)
            if exp.start < exp.t[0]:
                first[:] = np.nan     # the first row is not the state at an earlier start
            row = []
            for i, s in enumerate(states):
                if s in self.spec:
                    spec = self.spec[s]
                    p = spec if isinstance(spec, Parameter) else Parameter.coerce(
                        spec if isinstance(spec, dict) else {"value": spec, "fixed": True}, s)
                    row.append(p)
                elif np.isfinite(first[i]):
                    row.append(Parameter(float(first[i]), fixed=True))
                else:
                    raise DataError(f"y0 gives no value for state '{s}', which is not measured in "
                                    f"the first row of experiment '{exp.name}'"
                                    + (f" (nor at its start t0={exp.start:g})"
                                       if exp.start < exp.t[0] else "") + "; add it to y0")
            out.append(row)
        return out

    def __repr__(self) -> str:
        return f"PerState({self.spec!r})"


def initial_states(y0, model, y0_init=None) -> InitialStates:
    """The strategy for the ``y0`` (and ``y0_init``) arguments of :func:`dynlearn.fit`.

    ``"first"`` or ``None``: :class:`FirstRow`; ``"estimate"``: :class:`Estimated`; a dict
    whose keys are all state names: :class:`PerState`; an array or a dict
    ``{experiment: array}``: :class:`Given`; an :class:`InitialStates` object as is.

    Raises
    ------
    OptionError
        For another string.
    """
    _state_guesses(model, y0_init)     # a malformed y0_init is an error whatever y0 says
    if isinstance(y0, InitialStates):
        return y0
    if isinstance(y0, str):
        if y0 == "first":
            return FirstRow()
        if y0 == "estimate":
            return Estimated(y0_init)
        raise OptionError(f"y0={y0!r}: use 'first', 'estimate', an array (one value per "
                          "state), a dict {experiment: array} or a dict {state: value or "
                          "dl.Parameter}")
    if y0 is None:
        return FirstRow()
    states = {s.name for s in model.states}
    if isinstance(y0, Mapping) and y0 and set(y0) <= states:
        return PerState(y0)
    return Given(y0)
