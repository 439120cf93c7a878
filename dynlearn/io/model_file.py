"""Model files: a whole problem (model, data mapping, fit settings) in one TOML file.

A model file is read with :mod:`tomllib` and checked key by key; every error names the file
and, where it can be found, the line. docs/model-files.md is the full reference, with an
example per feature. Equations are parsed by
:func:`dynlearn.expressions.parse_expression`, never evaluated.

Layout
------
.. code-block:: toml

    [model]
    name = "lynx-hare"                     # optional
    states = ["hare", "lynx"]
    time = "t"                             # symbol used for time in equations (default "t")
    inputs = []                            # exogenous inputs, supplied by CSV columns

    [model.equations]                      # or inline: equations = { hare = "...", ... }
    hare = "alpha*hare - beta*hare*lynx + nn[0]"
    lynx = "delta*hare*lynx - gamma*lynx + nn[1]"

    [model.params]
    alpha = { value = 0.5, min = 0.0, transform = "log" }
    beta = 0.02                            # a bare number: free, untransformed
    gamma = { value = 0.8, fixed = true }  # a known constant
    delta = { value = 0.02, min = 0.0, max = 1.0 }
    rho = { value = 1.0, fixed = true }

    [model.networks.nn]                    # outputs used in equations as nn[0], nn[1], ...
    inputs = ["hare", "lynx"]              # expressions of states, time and inputs
    outputs = 2
    hidden = [8, 8]
    activation = "tanh"
    seed = 0
    scale = 0.1                            # shrink the initial output layer

    [model.observables]                    # optional; default: every state, by name
    hare = "hare"
    lynx = "rho*lynx"                      # e.g. a reporting rate (declare rho in params)

    [model.units]                          # optional unit labels (shown, never converted)
    t = "year"                             # of states, inputs, observables and time;
    hare = "thousand pelts"                # a parameter's unit may also be given in its
    lynx = "thousand pelts"                # table: alpha = { value = 0.5, unit = "1/year" }

    [initial]                              # optional; default: the first data row
    values = { hare = 30.0, lynx = 4.0 }   # the initial state (at the first data time)
    estimate = true                        # let the fit estimate it, starting from values
                                           # (states without one start from the first row)

    [data]
    file = "data.csv"                      # optional default CSV, relative to this file
    time = "year"
    group = "run"                          # optional column splitting experiments
    columns = ["hare", "lynx"]             # optional: the CSV columns to use
    rename = { in_bed = "I" }              # optional: CSV column -> model name
    interpolation = "linear"               # inputs between samples: "linear" | "zoh"
    format = "wide"                        # or "long": one row per measurement, with
    observable = "observable"              #   these columns naming the quantity,
    value = "value"                        #   its value
    sigma = "sigma"                        #   and (optionally) its noise level
    sep = ","                              # column separator: one character or "whitespace"
    decimal = "."                          # or "," (a decimal comma, with sep = ";")
    skip_rows = 0                          # lines before the header to skip
    unit_rows = 0                          # rows after the header to skip (units)
    time_unit = "day"                      # read `time` as dates: elapsed time in this unit
    time_format = "%d.%m.%Y"               # optional: how the dates are written

    [noise]
    sigma = { hare = 5.0, lynx = 3.0 }     # known noise per observable, one number for all,
                                           # or "estimate" (Gaussian likelihood);
                                           # a name estimates a shared level: { x = "s" }
                                           # a formula: { x = "a + b*x" } (noise
                                           # parameters a, b estimated)
    noise_params = { a = [0.1, 0.0, 10.0] } # optional: start or [start, lower, upper]
    sigma_by = "experiment"                # optional: estimated levels per experiment
    sigma_columns = { hare = "hare_sd" }   # or row-by-row noise levels from CSV columns

    [fit]                                  # passed to dl.fit
    loss = "log"                           # "ls" | "gaussian" | "log"
    transform = { hare = "log" }           # optional, instead: a residual scale per
                                           # observable, "lin" | "log" | "log10"
    method = "RK45"                        # any solve_ivp method
    rtol = 1e-6
    atol = 1e-8
    sensitivity = "adjoint"                # "forward" | "adjoint" | "finite-difference"
    optimizer = "lm"                       # "lm" | "gauss-newton" | "lbfgs" | "adam" |
                                           # "multiple-shooting" (default: chosen by dl.fit)
    maxiter = 200                          # iteration budget of the optimizer
    n_starts = 1                           # multi-start
    l2 = "gcv"                             # L2 penalty on network weights: a number, or
                                           # "gcv" (the default) or "auto"
    max_time = 600                         # seconds; the best point so far is kept
    seed = 0
    options = { max_step = 0.5 }           # other dl.fit keywords (solver options, ...)

    [simulate]                             # defaults for `dynlearn simulate`
    t = "0:20:0.1"                         # start:stop:step, or a list of times
    y0 = { hare = 30.0, lynx = 4.0 }

``lr = 0.01`` sets Adam's learning rate (with ``optimizer = "adam"``). Stages are written as
an array of tables, e.g. ``[[fit.stages]]`` with ``optimizer = "adam"``, ``maxiter = 200``,
``lr = 0.01``, then another with ``optimizer = "lbfgs"``; a stage's ``options`` table goes to
the optimizer's constructor (e.g. ``{ ftol = 1e-12 }``).
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp

from dynlearn.core.expressions import parse_expression
from dynlearn.core.model import HybridModel
from dynlearn.core.neural import MLP
from dynlearn.core.parameters import Parameter
from dynlearn.core.serialise import model_to_dict
from dynlearn.data.checks import check_times
from dynlearn.data.dataset import TIME_UNITS, WHITESPACE, Dataset
from dynlearn.errors import DataError, ModelError, OptionError, OptionTypeError, ParameterError
from dynlearn.files import read_head
from dynlearn.objective.losses import LOSS_NAMES, TRANSFORMS, loss_from_name
from dynlearn.objective.objective import L2_AUTO, L2_GCV
from dynlearn.optimizers import OPTIMIZERS, Staged, default_optimizer, optimizer_from_name
from dynlearn.solve import METHOD_NAMES

__all__ = ["MODEL_FILE_KEYS", "ModelFile", "load_model_file", "looks_like_csv",
           "model_to_toml", "parse_model_text", "parse_time_grid"]

# allowed keys of each table; None marks a table whose keys are user names
_TOP = {"model", "initial", "data", "noise", "fit", "simulate"}
_MODEL = {"name", "states", "time", "inputs", "equations", "params", "networks", "observables",
          "units"}
_PARAM = {"value", "min", "max", "fixed", "transform", "unit"}
_NETWORK = {"inputs", "outputs", "hidden", "activation", "seed", "scale", "type"}
_INITIAL = {"values", "estimate"}
_DATA = {"file", "time", "group", "columns", "rename", "interpolation", "format", "observable",
         "value", "sigma", "sep", "decimal", "skip_rows", "unit_rows", "time_unit",
         "time_format", "t0"}
_NOISE = {"sigma", "sigma_columns", "sigma_by", "noise_params"}
_FIT = {"loss", "method", "rtol", "atol", "sensitivity", "optimizer", "maxiter", "seed",
        "stages", "n_starts", "l2", "options", "progress", "lr", "max_time", "transform"}
_STAGE = {"optimizer", "maxiter", "lr", "options"}
_SIMULATE = {"t", "method", "rtol", "atol", "y0"}
SENSITIVITIES = ("forward", "adjoint", "finite-difference")

#: The keys the parser accepts, table by table (``<name>`` stands for a name the file
#: chooses: a parameter, a network, a state, an observable). Tables listed with ``None``
#: take names chosen by the file as keys (equations, observables, ...). docs/model-files.md
#: documents each; a test checks that it names every key here.
MODEL_FILE_KEYS: dict[str, frozenset[str] | None] = {
    "": frozenset(_TOP),
    "model": frozenset(_MODEL),
    "model.equations": None,
    "model.params": None,
    "model.params.<name>": frozenset(_PARAM),
    "model.networks.<name>": frozenset(_NETWORK),
    "model.observables": None,
    "model.units": None,
    "initial": frozenset(_INITIAL),
    "initial.values": None,
    "data": frozenset(_DATA),
    "data.rename": None,
    "data.t0": None,
    "noise": frozenset(_NOISE),
    "noise.sigma": None,
    "noise.sigma_columns": None,
    "noise.noise_params": None,
    "fit": frozenset(_FIT),
    "fit.options": None,
    "fit.stages": frozenset(_STAGE),
    "simulate": frozenset(_SIMULATE),
    "simulate.y0": None,
}


class _Lines:
    """Best-effort line numbers of keys in TOML text (tomllib keeps none after parsing).

    Tracks ``[table]`` and ``[[array]]`` headers and ``key = value`` lines, including the
    keys of one-line inline tables, so ``where(("model", "equations", "hare"))`` finds the
    line where that equation is written.
    """

    _header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _key = re.compile(r"^\s*((?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')"
                      r"(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*'))*)\s*=")
    _inline_key = re.compile(r"[{,]\s*([A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')\s*=")

    def __init__(self, text: str):
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for no, line in enumerate(text.splitlines(), start=1):
            m = self._header.match(line)
            if m:
                table = self._split(m.group(1))
                self.lines.setdefault(table, no)
                continue
            m = self._key.match(line)
            if m:
                key = table + self._split(m.group(1))
                self.lines.setdefault(key, no)
                rest = line[m.end():]
                for k in self._inline_key.findall(rest):
                    self.lines.setdefault(key + (self._unquote(k),), no)

    @staticmethod
    def _unquote(k: str) -> str:
        k = k.strip()
        return k[1:-1] if k[:1] in "\"'" and k[-1:] == k[:1] else k

    def _split(self, dotted: str) -> tuple[str, ...]:
        parts = re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted)
        return tuple(self._unquote(p) for p in parts if p.strip())

    def line(self, path: tuple[str, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


@dataclass
class ModelFile:
    """A parsed model file.

    Attributes
    ----------
    path : pathlib.Path or None
        The file (``None`` for text parsed with :func:`parse_model_text`).
    model : HybridModel
    networks : dict name -> MLP
    initial : dict
        ``values`` (dict state -> float, possibly empty) and ``estimate`` (bool).
    data : dict
        ``file`` (Path or None), ``time``, ``group``, ``columns``, ``rename``,
        ``interpolation``, ``format``, ``observable``, ``value``, ``sigma`` and the CSV
        dialect: ``sep`` (None: a comma), ``decimal``, ``skip_rows``, ``unit_rows``,
        ``time_unit`` and ``time_format`` (None unless given); ``t0``: the experiments'
        start time (None: each one's first data time; a number; or a dict experiment ->
        number).
    noise : dict
        ``sigma`` (None, a float, ``"estimate"`` or a dict observable -> float or the
        name of a shared estimated level or a noise formula), ``sigma_columns`` (dict
        observable -> CSV column), ``sigma_by`` (None or ``"experiment"``) and
        ``noise_params`` (None or a dict name -> start or ``(start, lower, upper)``).
    fit : dict
        The ``[fit]`` table, checked (``loss``, ``method``, ``stages``, ...).
    simulate : dict
        The ``[simulate]`` table (``t`` already turned into an array when given).
    raw : dict
        The TOML document as read.
    """

    path: Path | None
    model: object
    networks: dict
    initial: dict
    data: dict
    noise: dict
    fit: dict
    simulate: dict
    raw: dict = field(repr=False, default_factory=dict)
    _lines: _Lines | None = field(repr=False, default=None)

    @property
    def source(self) -> str:
        """The file's path as text, or ``"<model file>"`` for parsed text."""
        return str(self.path) if self.path is not None else "<model file>"

    def where(self, *path: str) -> str:
        """``"file.toml, line N"`` for a key path, as precise as the file allows."""
        line = self._lines.line(tuple(path)) if self._lines is not None else None
        return f"{self.source}, line {line}" if line else self.source

    def y0(self):
        """The initial-state setting for :func:`dynlearn.fit`: ``"first"``, ``"estimate"``
        or an array (states in model order)."""
        values = self.initial["values"]
        if self.initial["estimate"]:
            return "estimate"
        if values:
            return np.array([values[s.name] for s in self.model.states], dtype=float)
        return "first"

    def y0_init(self):
        """Starting guesses of estimated initial states (``[initial] values``, all states or
        some of them; the others start from the first data row), or None."""
        values = self.initial["values"]
        if self.initial["estimate"] and values:
            return dict(values)
        return None

    def optimizer(self, maxiter: int | None = None):
        """The optimizer object described by ``[fit]`` (None: dl.fit's default).

        Parameters
        ----------
        maxiter : int, optional
            Overrides the iteration budget of every stage (``--maxiter``). With no optimizer
            named in the file, it applies to ``dl.fit``'s default optimizer.
        """
        ft = self.fit
        if "stages" in ft:
            specs = [(("fit", "stages"), st) for st in ft["stages"]]
        elif "optimizer" in ft or "maxiter" in ft or "lr" in ft or maxiter is not None:
            spec = {k: ft[k] for k in ("optimizer", "maxiter", "lr") if k in ft}
            specs = [(("fit",), spec)]
        else:
            return None
        built = []
        for path, spec in specs:
            name = spec.get("optimizer")
            budget = maxiter if maxiter is not None else spec.get("maxiter")
            if name is None:
                # dl.fit's own choice for this model, keeping its tuning; only the budget
                # changes
                default = copy.deepcopy(default_optimizer(self.model))
                if budget is not None:
                    for o in [default, *default.stages()]:
                        for attr in ("max_iter", "iterations"):
                            if hasattr(o, attr):
                                setattr(o, attr, int(budget))
                                break
                built.append(default)
                continue
            kw = dict(spec.get("options", {}))
            if budget is not None:
                kw["max_iter"] = int(budget)     # the factory maps it to Adam's iterations
            if "lr" in spec:
                if name != "adam":
                    raise OptionError(f"{self.where(*path, 'lr')}: lr is the learning rate "
                                      "of the 'adam' optimizer only")
                kw["lr"] = float(spec["lr"])
            try:
                built.append(optimizer_from_name(name, **kw))
            except (TypeError, OptionError) as exc:    # an unknown or invalid option
                cls = OptionTypeError if isinstance(exc, TypeError) else OptionError
                raise cls(f"{self.where(*path, 'options')}: optimizer '{name}': {exc}") from None
        return built[0] if len(built) == 1 else Staged(built)

    def read_data(self, csv=None):
        """Read the measurements: ``csv`` or the file named by ``[data] file``.

        The file is read by :meth:`dynlearn.Dataset.from_csv` with the ``[data]`` settings
        (the CSV dialect included) and ``[noise] sigma_columns``. Columns the model does not
        read (a date, a comment, a misspelt name) are dropped with a
        :class:`~dynlearn.errors.DataWarning` naming each, unless ``[data] columns`` lists
        the columns to read; a column differing from a model name only by case is a
        :class:`~dynlearn.errors.DataError`. ``Dataset.ignored_columns`` lists what was left
        out, and why.

        Returns
        -------
        Dataset
            Columns renamed to model names, restricted to ``[data] columns`` when given.
        """
        path = Path(csv) if csv is not None else self.data["file"]
        if path is None:
            raise DataError(f"{self.where('data')}: no data file: pass DATA.csv on the command "
                            "line or set `file` in [data]")
        d = self.data
        m = self.model
        origin = {k: self.where("data", k) for k in ("time", "group", "columns", "rename",
                                                      "observable", "value")}
        origin["sigma_columns"] = self.where("noise", "sigma_columns")
        data = Dataset.from_csv(path, time=d["time"], group=d["group"], format=d["format"],
                                observable=d["observable"], value=d["value"], sigma=d["sigma"],
                                input_kind=d["interpolation"], columns=d["columns"],
                                rename=d["rename"], sigma_columns=self.noise["sigma_columns"],
                                observables=list(m.observable_names),
                                inputs=[u.name for u in m.inputs], origin=origin,
                                states=[x.name for x in m.states], sep=d["sep"],
                                decimal=d["decimal"], skip_rows=d["skip_rows"],
                                unit_rows=d["unit_rows"], time_unit=d["time_unit"],
                                time_format=d["time_format"], skipinitialspace=True)
        try:
            return data.with_start(d["t0"])
        except DataError as exc:    # named where the start was set
            raise DataError(f"{self.where('data', 't0')}: [data] t0: {exc}") from None


# --- helpers -------------------------------------------------------------------------------
class _Checker:
    """Type checks that raise ModelError naming the file and line of the offending key."""

    def __init__(self, source: str, lines: _Lines):
        self.source = source
        self.lines = lines

    def where(self, *path: str) -> str:
        line = self.lines.line(tuple(path))
        return f"{self.source}, line {line}" if line else self.source

    def fail(self, path: tuple[str, ...], message: str, cls=ModelError):
        key = "[" + ".".join(path[:-1]) + "] " + path[-1] if len(path) > 1 else path[0]
        raise cls(f"{self.where(*path)}: {key}: {message}")

    def table(self, value, path: tuple[str, ...], allowed: set | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a table, got {_tname(value)} {value!r}")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                k = unknown[0]
                self.fail(path + (k,), f"unknown key '{k}'; allowed keys are "
                          f"{sorted(allowed)}")
        return value

    def string(self, value, path, choices=None) -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {_tname(value)} {value!r}")
        if choices is not None and value not in choices:
            self.fail(path, f"{value!r} is not one of {list(choices)}")
        return value

    def strings(self, value, path) -> list[str]:
        if isinstance(value, str) or not isinstance(value, list) or \
                not all(isinstance(v, str) for v in value):
            self.fail(path, f"expected a list of strings, got {value!r}")
        return list(value)

    def number(self, value, path, integer=False, positive=False):
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            self.fail(path, f"expected {'an integer' if integer else 'a number'}, got "
                      f"{_tname(value)} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"must be finite, got {value}")
        if positive and value <= 0:
            self.fail(path, f"must be positive, got {value}")
        return value

    def boolean(self, value, path) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"expected true or false, got {value!r}")
        return value

    def identifier(self, name: str, path, what: str) -> str:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
            self.fail(path, f"{what} name {name!r} is not a valid name (letters, digits and "
                      "underscores, not starting with a digit or '__')")
        return name


def _tname(v) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "a list", dict: "a table"}.get(type(v), type(v).__name__)


def parse_time_grid(spec, where: str = "t") -> np.ndarray:
    """Output times from ``"start:stop:step"`` (stop included when on the grid), a list of
    numbers, or a ``{start, stop, step}``/``{start, stop, n}`` table.

    Raises
    ------
    OptionError
        With ``where`` in the message.
    """
    def bad(msg):
        raise OptionError(f"{where}: {msg}")

    if isinstance(spec, str):
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            bad(f"{spec!r} is not a time grid; write start:stop:step, e.g. 0:10:0.1")
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            bad(f"{spec!r} is not a time grid; start, stop and step must be numbers "
                "(start:stop:step, e.g. 0:10:0.1)")
        start, stop = vals[0], vals[1]
        step = vals[2] if len(vals) == 3 else (stop - start) / 100.0
        if not all(math.isfinite(v) for v in vals):
            bad(f"{spec!r}: start, stop and step must be finite")
        if step <= 0 or stop <= start:
            bad(f"{spec!r}: need stop > start and a positive step")
        n = math.floor((stop - start) / step + 1e-9) + 1
        if n > 10_000_000:
            bad(f"{spec!r} has {n} points; use a larger step")
        return start + step * np.arange(n)
    if isinstance(spec, dict):
        try:
            start, stop = float(spec["start"]), float(spec["stop"])
            if "n" in spec:
                return np.linspace(start, stop, int(spec["n"]))
            return parse_time_grid(f"{start}:{stop}:{float(spec['step'])}", where)
        except (KeyError, TypeError, ValueError):
            bad(f"{spec!r}: a time table needs start, stop and step (or n)")
    if isinstance(spec, (list, tuple, np.ndarray)):
        try:
            return check_times(spec, "t")
        except DataError as exc:
            bad(str(exc))
    bad(f"expected start:stop:step or a list of times, got {spec!r}")


# --- parsing ---------------------------------------------------------------------------------
def looks_like_csv(path) -> bool:
    """Whether a file looks like a CSV table rather than a TOML model file.

    True for a name ending in ``.csv`` or ``.tsv``, and for text whose first line (not
    blank, not a comment) has neither ``=`` nor ``[`` and splits into two or more fields at
    commas, semicolons or tabs. False for a file that cannot be read.
    """
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return True
    head = read_head(path, 4096)
    if head is None:
        return False
    for line in head.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" in line or "[" in line:
            return False
        return any(len(line.split(sep)) >= 2 for sep in (",", ";", "\t"))
    return False


def load_model_file(path, default_seed: int | None = None) -> ModelFile:
    """Read and check a TOML model file.

    Parameters
    ----------
    path : str or pathlib.Path
    default_seed : int, optional
        Seed of networks whose table gives none (default 0, so that a model file always
        describes the same initial network).

    Returns
    -------
    ModelFile

    Raises
    ------
    ModelError
        Malformed TOML (with line and column), unknown keys, wrong types, equations that do
        not parse or use undeclared names; every message names the file and, where known, the
        line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory, not a model file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    try:
        return parse_model_text(text, source=path, default_seed=default_seed)
    except ModelError:
        if looks_like_csv(path):
            raise ModelError(f"{path}: this looks like a CSV file (a table of data), not a "
                             "TOML model file") from None
        raise


def parse_model_text(text: str, source=None, default_seed: int | None = None) -> ModelFile:
    """Parse model-file text (see :func:`load_model_file`).

    Parameters
    ----------
    text : str
    source : str or pathlib.Path, optional
        The file the text came from, for messages and for relative data paths.
    default_seed : int, optional
        See :func:`load_model_file`.
    """

    src = Path(source) if source is not None else None
    name = str(src) if src is not None else "<model file>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)"
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)$", msg)
        if m:
            msg = msg[:m.start()].strip()
            raise ModelError(f"{name}, line {m.group(1)}, column {m.group(2)}: malformed "
                             f"TOML: {msg}") from None
        raise ModelError(f"{name}: malformed TOML: {msg}") from None
    lines = _Lines(text)
    ck = _Checker(name, lines)
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        ck.fail((unknown[0],), f"unknown table; a model file has {sorted(_TOP)}")
    if "model" not in doc:
        raise ModelError(f"{name}: no [model] table; a model file needs [model] with states "
                         "and equations")

    # [model] -------------------------------------------------------------------------
    mt = ck.table(doc["model"], ("model",), _MODEL)
    for req in ("states", "equations"):
        if req not in mt:
            raise ModelError(f"{ck.where('model')}: [model] needs `{req}`")
    states = ck.strings(mt["states"], ("model", "states"))
    if not states:
        ck.fail(("model", "states"), "at least one state is needed")
    time_name = ck.string(mt.get("time", "t"), ("model", "time"))
    inputs = ck.strings(mt.get("inputs", []), ("model", "inputs"))
    params_t = ck.table(mt.get("params"), ("model", "params"))
    for n in states:
        ck.identifier(n, ("model", "states"), "state")
    for n in inputs:
        ck.identifier(n, ("model", "inputs"), "input")
    ck.identifier(time_name, ("model", "time"), "time")

    seen: dict[str, str] = {}

    def declare(n, role, path):
        ck.identifier(n, path, role)
        if n in seen:
            ck.fail(path, f"'{n}' is declared twice, as {seen[n]} and as {role}")
        seen[n] = role

    for n in states:
        declare(n, "state", ("model", "states"))
    for n in inputs:
        declare(n, "input", ("model", "inputs"))
    declare(time_name, "time", ("model", "time"))
    symbols: dict[str, sp.Symbol] = {n: sp.Symbol(n) for n in seen}

    params = {}
    for pname, spec in params_t.items():
        path = ("model", "params", pname)
        declare(pname, "parameter", path)
        symbols[pname] = sp.Symbol(pname)
        if isinstance(spec, dict):
            ck.table(spec, path, _PARAM)
            if "value" not in spec:
                ck.fail(path, "a parameter table needs `value`")
            kw = {}
            for k, v in spec.items():
                if k in ("value", "min", "max"):
                    kw[k] = ck.number(v, path + (k,))
                elif k == "fixed":
                    kw[k] = ck.boolean(v, path + (k,))
                elif k == "unit":
                    kw[k] = ck.string(v, path + (k,))
                else:
                    kw[k] = ck.string(v, path + (k,), ("identity", "log"))
        else:
            kw = {"value": ck.number(spec, path)}
        try:
            params[symbols[pname]] = Parameter(**kw)
        except ParameterError as exc:   # bounds, transform
            ck.fail(path, str(exc))

    plain_names = dict(symbols)
    networks = {}
    nets_t = ck.table(mt.get("networks"), ("model", "networks"))
    for nname, spec in nets_t.items():
        path = ("model", "networks", nname)
        declare(nname, "network", path)
        spec = ck.table(spec, path, _NETWORK)
        for req in ("inputs", "outputs"):
            if req not in spec:
                ck.fail(path, f"a network needs `{req}`")
        if spec.get("type", "mlp") != "mlp":
            ck.fail(path + ("type",), f"unknown network type {spec['type']!r}; only 'mlp'")
        nin = [_parse(ck, e, plain_names, path + ("inputs",), f"input of network '{nname}'")
               for e in ck.strings(spec["inputs"], path + ("inputs",))]
        hidden = spec.get("hidden", [16, 16])
        if not isinstance(hidden, list) or not all(isinstance(h, int) and not isinstance(h, bool)
                                                   and h > 0 for h in hidden):
            ck.fail(path + ("hidden",), f"expected a list of positive integers, got {hidden!r}")
        kw = {"outputs": ck.number(spec["outputs"], path + ("outputs",), integer=True,
                                   positive=True),
              "hidden": hidden,
              "activation": ck.string(spec.get("activation", "tanh"), path + ("activation",))}
        kw["seed"] = (ck.number(spec["seed"], path + ("seed",), integer=True) if "seed" in spec
                      else (0 if default_seed is None else int(default_seed)))
        if "scale" in spec:
            kw["scale"] = float(ck.number(spec["scale"], path + ("scale",)))
        try:
            networks[nname] = MLP(nname, inputs=nin, **kw)
        except ModelError as exc:
            ck.fail(path, str(exc))

    all_names = {**plain_names, **networks}
    eqs = ck.table(mt["equations"], ("model", "equations"))
    for k in eqs:
        if k not in states:
            ck.fail(("model", "equations", k), f"equation for '{k}', which is not a state; "
                    f"states are {states}")
    missing = [s for s in states if s not in eqs]
    if missing:
        ck.fail(("model", "equations"), f"no equation for state(s) {missing}")
    rhs = {}
    for s in states:
        path = ("model", "equations", s)
        e = eqs[s]
        if isinstance(e, (int, float)) and not isinstance(e, bool):
            e = repr(e)
        rhs[symbols[s]] = _parse(ck, ck.string(e, path), all_names, path, f"equation of '{s}'")
    unused = [n for n in networks if not any(
        n == getattr(getattr(a, "network", None), "name", None)
        for e in rhs.values() for a in e.free_symbols)]
    if unused:
        ck.fail(("model", "networks", unused[0]), f"network '{unused[0]}' is not used in any "
                "equation; use its outputs as " + f"{unused[0]}[0], ... or remove it")

    observables = None
    obs_t = ck.table(mt.get("observables"), ("model", "observables"))
    if obs_t:
        observables = {}
        for k, e in obs_t.items():
            path = ("model", "observables", k)
            ck.identifier(k, path, "observable")
            observables[k] = _parse(ck, ck.string(e, path), plain_names, path,
                                    f"observable '{k}'")
    units = {k: ck.string(v, ("model", "units", k))
             for k, v in ck.table(mt.get("units"), ("model", "units")).items()}
    for k in units:
        if k not in seen and k not in (observables or {}):
            ck.fail(("model", "units", k), f"a unit for '{k}', which is not a state, input, "
                    "observable, parameter or the time")
    try:
        model = HybridModel(states=[symbols[s] for s in states], rhs=rhs, params=params,
                            inputs=[symbols[u] for u in inputs], observables=observables,
                            time=symbols[time_name], units=units,
                            name=ck.string(mt.get("name", src.stem if src else "model"),
                                           ("model", "name")))
    except ModelError as exc:
        raise ModelError(f"{ck.where('model')}: {exc}") from None

    # [initial] ---------------------------------------------------------------------------
    it = ck.table(doc.get("initial"), ("initial",), _INITIAL)
    values = ck.table(it.get("values"), ("initial", "values"))
    for k, v in values.items():
        if k not in states:
            ck.fail(("initial", "values", k), f"'{k}' is not a state; states are {states}")
        ck.number(v, ("initial", "values", k))
    estimate = ck.boolean(it.get("estimate", False), ("initial", "estimate"))
    if values and len(values) != len(states) and not estimate:
        ck.fail(("initial", "values"), f"give a value for every state {states} (missing "
                f"{[s for s in states if s not in values]}), or set estimate = true to use "
                "them as starting guesses")
    initial = {"values": {k: float(v) for k, v in values.items()}, "estimate": estimate}

    # [data] ------------------------------------------------------------------------------
    dt = ck.table(doc.get("data"), ("data",), _DATA)
    file_ = dt.get("file")
    if file_ is not None:
        file_ = Path(ck.string(file_, ("data", "file")))
        if not file_.is_absolute() and src is not None:
            file_ = src.parent / file_
    data = {
        "file": file_,
        "time": ck.string(dt.get("time", "t"), ("data", "time")),
        "group": ck.string(dt["group"], ("data", "group")) if "group" in dt else None,
        "columns": ck.strings(dt["columns"], ("data", "columns")) if "columns" in dt else None,
        "rename": {k: ck.string(v, ("data", "rename", k))
                   for k, v in ck.table(dt.get("rename"), ("data", "rename")).items()},
        "format": ck.string(dt.get("format", "wide"), ("data", "format"), ("wide", "long")),
        "observable": ck.string(dt.get("observable", "observable"), ("data", "observable")),
        "value": ck.string(dt.get("value", "value"), ("data", "value")),
        "sigma": ck.string(dt.get("sigma", "sigma"), ("data", "sigma")),
        "interpolation": ck.string(dt.get("interpolation", "linear"), ("data", "interpolation"),
                                   ("linear", "zoh")),
        "sep": ck.string(dt["sep"], ("data", "sep")) if "sep" in dt else None,
        "decimal": ck.string(dt.get("decimal", "."), ("data", "decimal"), (".", ",")),
        "skip_rows": ck.number(dt.get("skip_rows", 0), ("data", "skip_rows"), integer=True),
        "unit_rows": ck.number(dt.get("unit_rows", 0), ("data", "unit_rows"), integer=True),
        "time_unit": (ck.string(dt["time_unit"], ("data", "time_unit"), list(TIME_UNITS))
                      if "time_unit" in dt else None),
        "time_format": (ck.string(dt["time_format"], ("data", "time_format"))
                        if "time_format" in dt else None),
        "t0": None,
    }
    if "t0" in dt:
        # one start time for every experiment, or a table experiment -> start time
        if isinstance(dt["t0"], dict):
            data["t0"] = {k: float(ck.number(v, ("data", "t0", k)))
                          for k, v in dt["t0"].items()}
        else:
            data["t0"] = float(ck.number(dt["t0"], ("data", "t0")))
    if data["sep"] is not None and len(data["sep"]) != 1 and data["sep"] != WHITESPACE:
        ck.fail(("data", "sep"), f"expected one character (\",\", \";\", \"\\t\", ...) or "
                f"\"{WHITESPACE}\", got {data['sep']!r}")
    if (data["sep"] or ",") == data["decimal"]:
        ck.fail(("data", "decimal"), f"the separator and the decimal mark are both "
                f"{data['decimal']!r}; with a decimal comma, columns are usually separated by "
                "';': write sep = \";\"")
    for k in ("skip_rows", "unit_rows"):
        if data[k] < 0:
            ck.fail(("data", k), f"must be 0 or more, got {data[k]}")
    if data["time_format"] is not None and data["time_unit"] is None:
        ck.fail(("data", "time_format"), "time_format needs time_unit: the unit of the elapsed "
                "time the dates are converted to (e.g. time_unit = \"day\")")

    # [noise] -----------------------------------------------------------------------------
    nt = ck.table(doc.get("noise"), ("noise",), _NOISE)
    sigma = nt.get("sigma")
    obs_names = list(model.observable_names)
    if isinstance(sigma, dict):
        for k, v in sigma.items():
            if k not in obs_names:
                ck.fail(("noise", "sigma", k), f"'{k}' is not an observable; observables are "
                        f"{obs_names}")
            if isinstance(v, str):     # the name of an estimated level it shares
                ck.string(v, ("noise", "sigma", k))
            else:
                ck.number(v, ("noise", "sigma", k), positive=True)
        sigma = {k: v if isinstance(v, str) else float(v) for k, v in sigma.items()}
    elif isinstance(sigma, str):
        ck.string(sigma, ("noise", "sigma"), ("estimate",))
    elif sigma is not None:
        sigma = float(ck.number(sigma, ("noise", "sigma"), positive=True))
    sigma_columns = {k: ck.string(v, ("noise", "sigma_columns", k))
                     for k, v in ck.table(nt.get("sigma_columns"),
                                          ("noise", "sigma_columns")).items()}
    for k in sigma_columns:
        if k not in obs_names:
            ck.fail(("noise", "sigma_columns", k), f"'{k}' is not an observable; observables "
                    f"are {obs_names}")
    sigma_by = nt.get("sigma_by")
    if sigma_by is not None:
        ck.string(sigma_by, ("noise", "sigma_by"), ("experiment",))
    noise_params = None
    if "noise_params" in nt:
        noise_params = {}
        for k, v in ck.table(nt["noise_params"], ("noise", "noise_params")).items():
            where = ("noise", "noise_params", k)
            if isinstance(v, list):
                if len(v) != 3:
                    ck.fail(where, "give a start or [start, lower, upper]")
                # (a bound may be infinite: no bound)
                noise_params[k] = tuple(
                    u if j and isinstance(u, float) and math.isinf(u)
                    else float(ck.number(u, where)) for j, u in enumerate(v))
            else:
                noise_params[k] = float(ck.number(v, where))
    noise = {"sigma": sigma, "sigma_columns": sigma_columns, "sigma_by": sigma_by,
             "noise_params": noise_params}

    # [fit] ---------------------------------------------------------------------------------
    ft = dict(ck.table(doc.get("fit"), ("fit",), _FIT))
    if "loss" in ft:
        ck.string(ft["loss"], ("fit", "loss"), LOSS_NAMES)
    if "transform" in ft:
        tr = ft["transform"]
        if isinstance(tr, str):
            ck.string(tr, ("fit", "transform"), TRANSFORMS)
        else:
            for k, v in ck.table(tr, ("fit", "transform")).items():
                if k not in obs_names:
                    ck.fail(("fit", "transform", k), f"'{k}' is not an observable; "
                            f"observables are {obs_names}")
                ck.string(v, ("fit", "transform", k), TRANSFORMS)
        try:
            loss_from_name(ft.get("loss", "ls"), tr)
        except OptionError as exc:
            ck.fail(("fit", "transform"), str(exc))
    if "sensitivity" in ft:
        ck.string(ft["sensitivity"], ("fit", "sensitivity"), SENSITIVITIES)
    if "method" in ft:
        ck.string(ft["method"], ("fit", "method"), METHOD_NAMES)
    for k in ("rtol", "atol"):
        if k in ft:
            ck.number(ft[k], ("fit", k), positive=True)
    if isinstance(ft.get("l2"), str):          # a rule choosing the strength from the data
        ck.string(ft["l2"], ("fit", "l2"), [L2_AUTO, L2_GCV])
    elif "l2" in ft and ck.number(ft["l2"], ("fit", "l2")) < 0:
        ck.fail(("fit", "l2"), f"must be >= 0, \"{L2_AUTO}\" or \"{L2_GCV}\", got {ft['l2']}")
    for k in ("maxiter", "seed", "n_starts"):
        if k in ft:
            ck.number(ft[k], ("fit", k), integer=True, positive=k != "seed")
    for k in ("lr", "max_time"):
        if k in ft:
            ck.number(ft[k], ("fit", k), positive=True)
    if isinstance(sigma, str) and not loss_from_name(ft.get("loss", "gaussian")).estimates_noise:
        ck.fail(("noise", "sigma"), f"sigma = \"estimate\" needs loss = \"gaussian\" in [fit] "
                f"(the file says loss = {ft['loss']!r})")
    if "progress" in ft:
        ck.boolean(ft["progress"], ("fit", "progress"))
    if "optimizer" in ft:
        ck.string(ft["optimizer"], ("fit", "optimizer"), list(OPTIMIZERS))
    if "stages" in ft and ("optimizer" in ft or "lr" in ft or "maxiter" in ft):
        ck.fail(("fit", "stages"), "give either [[fit.stages]] or optimizer/maxiter/lr in "
                "[fit], not both")
    if "options" in ft:
        ck.table(ft["options"], ("fit", "options"))
    if "stages" in ft:
        st = ft["stages"]
        if not isinstance(st, list) or not st:
            ck.fail(("fit", "stages"), "expected a non-empty array of tables [[fit.stages]]")
        for i, s in enumerate(st):
            ck.table(s, ("fit", "stages"), _STAGE)
            if "optimizer" not in s:
                ck.fail(("fit", "stages"), f"stage {i + 1} needs `optimizer`")
            ck.string(s["optimizer"], ("fit", "stages", "optimizer"), list(OPTIMIZERS))
            if "options" in s:
                ck.table(s["options"], ("fit", "stages", "options"))
            if "maxiter" in s:
                ck.number(s["maxiter"], ("fit", "stages", "maxiter"), integer=True,
                          positive=True)
            if "lr" in s:
                ck.number(s["lr"], ("fit", "stages", "lr"), positive=True)

    # [simulate] ----------------------------------------------------------------------------
    smt = dict(ck.table(doc.get("simulate"), ("simulate",), _SIMULATE))
    if "t" in smt:
        smt["t"] = parse_time_grid(smt["t"], f"{ck.where('simulate', 't')}: [simulate] t")
    if "method" in smt:
        ck.string(smt["method"], ("simulate", "method"), METHOD_NAMES)
    for k in ("rtol", "atol"):
        if k in smt:
            ck.number(smt[k], ("simulate", k), positive=True)
    if "y0" in smt:
        y0 = ck.table(smt["y0"], ("simulate", "y0"))
        for k, v in y0.items():
            if k not in states:
                ck.fail(("simulate", "y0", k), f"'{k}' is not a state; states are {states}")
            ck.number(v, ("simulate", "y0", k))
        if len(y0) != len(states):
            ck.fail(("simulate", "y0"), f"give a value for every state {states}")
        smt["y0"] = {k: float(v) for k, v in y0.items()}

    return ModelFile(path=src, model=model, networks=networks, initial=initial, data=data,
                     noise=noise, fit=ft, simulate=smt, raw=doc, _lines=lines)


def _parse(ck: _Checker, text: str, names: Mapping, path: tuple[str, ...], what: str):
    return parse_expression(text, names, where=f"{ck.where(*path)}: {what}")


# --- writing ---------------------------------------------------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)          # a TOML basic string uses JSON's escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) \
            + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_\-]+", k) else json.dumps(k)


def model_to_toml(model, tables: Mapping[str, Mapping] | None = None, comment: str = "") -> str:
    """A model file (TOML text) describing ``model``, readable by :func:`load_model_file`.

    The model's fields are those of :func:`dynlearn.core.serialise.model_to_dict` (the
    description result files store), rendered as TOML: defaults are left out (``time =
    "t"``, parameter bounds implied by a log transform, observables equal to the states).

    Parameters
    ----------
    model : HybridModel
        Equations are written with sympy's printer (``**`` powers, ``exp``, ``Abs``, ...),
        which :func:`dynlearn.expressions.parse_expression` reads back.
    tables : dict, optional
        Further top-level tables (``data``, ``fit``, ``initial``, ...) written as given.
    comment : str
        Written at the top, each line prefixed with ``#``.

    Notes
    -----
    Trained network weights are not part of a model file: networks are written with their
    architecture, ``seed`` and ``scale``, so they start from their initial weights when the
    file is read (exactly those of ``model`` when its MLPs were built from an integer seed).
    """
    d = model_to_dict(model)
    out = [f"# {line}".rstrip() for line in comment.splitlines()]
    if out:
        out.append("")
    out.append("[model]")
    out.append(f"name = {_toml_value(d['name'])}")
    out.append(f"states = {_toml_value(d['states'])}")
    if d["time"] != "t":
        out.append(f"time = {_toml_value(d['time'])}")
    if d["inputs"]:
        out.append(f"inputs = {_toml_value(d['inputs'])}")
    out.append("")
    out.append("[model.equations]")
    for s, e in d["rhs"].items():
        out.append(f"{_toml_key(s)} = {_toml_value(e)}")
    if d["params"]:
        out.append("")
        out.append("[model.params]")
        for name, p in d["params"].items():
            spec = {"value": p["value"]}
            if p["transform"] != "identity":
                spec["transform"] = p["transform"]
            if p["min"] != -math.inf and not (p["transform"] == "log" and p["min"] == 0.0):
                spec["min"] = p["min"]
            if p["max"] != math.inf:
                spec["max"] = p["max"]
            if p["fixed"]:
                spec["fixed"] = True
            if p.get("unit"):
                spec["unit"] = p["unit"]
            value = _toml_value(spec) if len(spec) > 1 else _toml_value(p["value"])
            out.append(f"{_toml_key(name)} = {value}")
    for net in d["networks"]:
        if net["type"] != "MLP":
            raise ModelError(f"network '{net['name']}' is a custom dl.Network; only MLPs can be "
                             "written to a model file")
        out.append("")
        out.append(f"[model.networks.{net['name']}]")
        out.append(f"inputs = {_toml_value(net['inputs'])}")
        out.append(f"outputs = {net['outputs']}")
        out.append(f"hidden = {_toml_value(net['hidden'])}")
        out.append(f"activation = {_toml_value(net['activation'])}")
        if "seed" in net:
            out.append(f"seed = {net['seed']}")
        if net["scale"] != 1.0:
            out.append(f"scale = {_toml_value(net['scale'])}")
    if d["observables"] != {s: s for s in d["states"]}:
        out.append("")
        out.append("[model.observables]")
        for k, e in d["observables"].items():
            out.append(f"{_toml_key(k)} = {_toml_value(e)}")
    if d.get("units"):
        out.append("")
        out.append("[model.units]")
        for k, u in d["units"].items():
            out.append(f"{_toml_key(k)} = {_toml_value(u)}")
    for name, table in (tables or {}).items():
        if not table:
            continue
        out.append("")
        out.append(f"[{name}]")
        for k, v in table.items():
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(out) + "\n"
