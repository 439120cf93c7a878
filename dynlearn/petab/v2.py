"""PEtab version 2 problems: reading the YAML file and the tables.

PEtab v2 changes what v1 called simulation and preequilibration conditions into
*experiments* (``experiments.tsv``: an experiment applies conditions at time points; the
time ``-inf`` marks preequilibration), writes the condition table in long form
(``conditionId``, ``targetId``, ``targetValue``: one change a row) and names a measurement's
experiment instead of its conditions. Tables are read here as they are written; two users
build on them:

* :func:`as_v1` views a v2 problem whose experiments start at ``t = 0`` with at most one
  preequilibration period as the v1 tables :class:`~dynlearn.petab.problem.PetabProblem`
  evaluates (conditions merged per experiment period into wide rows);
* :mod:`dynlearn.petab.sciml` reads the same tables for PEtab SciML problems.

Both ``estimate`` spellings (v1 ``1``/``0``, v2 ``true``/``false``) are accepted, and a
missing ``parameterScale`` column means ``lin``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dynlearn.errors import PetabError
from dynlearn.petab.extra import require

__all__ = ["PetabV2Tables", "V1_PRIOR_TYPES", "read_v2", "format_version", "experiment_periods",
           "condition_changes", "as_v1", "is_estimated", "has_time_courses"]


#: PEtab v2 prior distributions (on the linear value) and the v1 objective prior types
#: that mean the same.
V1_PRIOR_TYPES = {"normal": "normal", "laplace": "laplace", "uniform": "uniform",
                  "log-normal": "logNormal", "log-laplace": "logLaplace"}


def _read_yaml(path: str | os.PathLike) -> dict:
    yaml = require("yaml", "reading PEtab YAML")
    if not Path(path).is_file():
        raise PetabError(f"PEtab problem file '{path}' does not exist")
    with open(path, encoding="utf-8") as fh:
        out = yaml.safe_load(fh)
    if not isinstance(out, dict):
        raise PetabError(f"{path}: not a PEtab problem YAML file (no mapping at the top)")
    return out


def format_version(path: str | os.PathLike, content: dict | None = None) -> int:
    """The major PEtab format version a problem's YAML file declares (1 when it does not);
    ``content``: the file's content when already read."""
    v = (_read_yaml(path) if content is None else content).get("format_version", 1)
    try:
        return int(str(v).split(".")[0])
    except ValueError:
        raise PetabError(f"{path}: format_version '{v}' is not a version number") from None


def _read_tables(base: Path, names, what: str, index: str | None) -> pd.DataFrame | None:
    """The concatenation of the TSV files ``names`` (relative to ``base``), or None."""
    if not names:
        return None
    if isinstance(names, str):
        names = [names]
    frames = []
    for n in names:
        p = base / str(n)
        if not p.is_file():
            raise PetabError(f"{what} file '{p}' does not exist")
        # ids stay strings; empty cells are NaN
        frames.append(pd.read_csv(p, sep="\t", dtype={"conditionId": str, "targetId": str,
                                                      "experimentId": str}))
    df = pd.concat(frames, ignore_index=True)
    if index is not None:
        if index not in df:
            raise PetabError(f"{what} table has no '{index}' column")
        df[index] = df[index].astype(str).str.strip()
        if df[index].duplicated().any():
            dup = df.loc[df[index].duplicated(), index].iloc[0]
            raise PetabError(f"{what} table lists '{dup}' twice")
        df = df.set_index(index)
    return df


@dataclass
class PetabV2Tables:
    """The files of a PEtab v2 problem, read but not interpreted.

    Attributes
    ----------
    directory : Path
        The YAML file's directory (table paths are relative to it).
    yaml : dict
        The YAML file's content.
    model_files : dict str -> Path
        Model id to its file (SBML).
    parameters, observables : DataFrame
        Indexed by ``parameterId`` / ``observableId``.
    measurements : DataFrame
    experiments, conditions, mapping : DataFrame or None
        Experiments (``experimentId``, ``time``, ``conditionId``), the long condition table
        (``conditionId``, ``targetId``, ``targetValue``) and the mapping table
        (``petabEntityId``, ``modelEntityId``).
    extensions : dict
        The YAML file's ``extensions`` section (e.g. ``sciml``).
    """

    directory: Path
    yaml: dict
    model_files: dict
    parameters: pd.DataFrame
    observables: pd.DataFrame
    measurements: pd.DataFrame
    experiments: pd.DataFrame | None = None
    conditions: pd.DataFrame | None = None
    mapping: pd.DataFrame | None = None
    extensions: dict = field(default_factory=dict)

    # the names a petab ``Problem`` gives its tables, for code written against petab's
    @property
    def measurement_df(self) -> pd.DataFrame:
        """The measurement table (petab's name for it)."""
        return self.measurements

    @property
    def parameter_df(self) -> pd.DataFrame:
        """The parameter table (petab's name for it)."""
        return self.parameters

    @property
    def observable_df(self) -> pd.DataFrame:
        """The observable table (petab's name for it)."""
        return self.observables

    @property
    def model_path(self) -> Path:
        """The problem's one SBML model file."""
        if len(self.model_files) != 1:
            raise PetabError(f"the problem has {len(self.model_files)} models; dynlearn "
                             "reads problems with exactly one")
        return next(iter(self.model_files.values()))


def read_v2(path: str | os.PathLike) -> PetabV2Tables:
    """Read a PEtab v2 problem's YAML file and its tables.

    Parameters
    ----------
    path : str or path-like
        The problem's YAML file (``format_version: 2``).

    Returns
    -------
    PetabV2Tables

    Raises
    ------
    PetabError
        A missing file or table, or a model that is not SBML.
    """
    path = Path(path)
    y = _read_yaml(path)
    base = path.parent
    problems = y.get("problems")
    if problems:     # the v2 draft's nested layout: one problem only
        if len(problems) != 1:
            raise PetabError(f"{path}: {len(problems)} problems in one file; dynlearn reads one")
        y = {**y, **problems[0]}
    models = {}
    for mid, spec in (y.get("model_files") or {}).items():
        lang = str(spec.get("language", "sbml")).lower()
        if lang != "sbml":
            raise PetabError(f"model '{mid}': language '{lang}' is not supported (SBML only)")
        models[str(mid)] = base / str(spec["location"])
    if not models:
        raise PetabError(f"{path}: no model_files")
    par = _read_tables(base, y.get("parameter_files") or y.get("parameter_file"), "parameter",
                       "parameterId")
    obs = _read_tables(base, y.get("observable_files"), "observable", "observableId")
    meas = _read_tables(base, y.get("measurement_files"), "measurement", None)
    for what, df in (("parameter", par), ("observable", obs), ("measurement", meas)):
        if df is None:
            raise PetabError(f"{path}: the problem has no {what} table")
    exps = _read_tables(base, y.get("experiment_files"), "experiment", None)
    conds = _read_tables(base, y.get("condition_files"), "condition", None)
    mapping = _read_tables(base, y.get("mapping_files"), "mapping", None)
    return PetabV2Tables(directory=base, yaml=y, model_files=models, parameters=par,
                         observables=obs, measurements=meas, experiments=exps,
                         conditions=conds, mapping=mapping,
                         extensions=dict(y.get("extensions") or {}))


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == ""


def is_estimated(v) -> bool:
    """A parameter table's ``estimate`` cell: ``true``/``1`` or ``false``/``0``."""
    s = str(v).strip().lower()
    if s in ("1", "1.0", "true"):
        return True
    if s in ("0", "0.0", "false"):
        return False
    raise PetabError(f"estimate must be true or false, got '{v}'")


def experiment_periods(tables: PetabV2Tables, experiment_id) -> list[tuple[float, list[str]]]:
    """An experiment's periods: ``(start time, condition ids applied then)`` in time order.

    A measurement without an experiment (empty ``experimentId``) has one period at
    ``t = 0`` with no conditions.
    """
    if _blank(experiment_id):
        return [(0.0, [])]
    eid = str(experiment_id).strip()
    ex = tables.experiments
    if ex is None:
        raise PetabError(f"experiment '{eid}' is used but the problem has no experiment table")
    rows = ex[ex["experimentId"].astype(str).str.strip() == eid]
    if rows.empty:
        raise PetabError(f"experiment '{eid}' is not in the experiment table")
    periods: dict[float, list[str]] = {}
    for t, c in zip(rows["time"], rows.get("conditionId", [np.nan] * len(rows))):
        t = float(t)
        periods.setdefault(t, [])
        if not _blank(c):
            periods[t].append(str(c).strip())
    return sorted(periods.items(), key=lambda kv: kv[0])


def condition_changes(tables: PetabV2Tables, condition_ids) -> dict:
    """The union of the changes of conditions ``condition_ids``: ``{targetId: targetValue}``
    (a number or an expression string).

    Raises
    ------
    PetabError
        A condition that is not in the table (an id the table does not list is accepted
        when the problem has no condition table at all: it then changes nothing), or two
        conditions setting one target.
    """
    out: dict = {}
    ct = tables.conditions
    for cid in condition_ids:
        if ct is None:
            continue
        rows = ct[ct["conditionId"].astype(str).str.strip() == cid]
        if rows.empty:
            raise PetabError(f"condition '{cid}' is not in the condition table")
        for tid, val in zip(rows["targetId"], rows["targetValue"]):
            tid = str(tid).strip()
            if tid in out:
                raise PetabError(f"conditions {list(condition_ids)} set '{tid}' twice")
            out[tid] = val
    return out


def has_time_courses(tables: PetabV2Tables) -> bool:
    """Whether an experiment applies conditions after its start (several periods after any
    preequilibration) or starts at a time other than 0: beyond what :func:`as_v1` views."""
    ex = tables.experiments
    if ex is None:
        return False
    for eid in dict.fromkeys(ex["experimentId"].astype(str).str.strip()):
        main = [t for t, _ in experiment_periods(tables, eid) if t != -np.inf]
        if len(main) > 1 or (main and main[0] != 0.0):
            return True
    return False


class _ModelView:
    """What :class:`PetabProblem` reads of a petab v1 model object: ``sbml_model`` (here the
    SBML file's path, which :func:`~dynlearn.petab.sbml.sbml_to_ode` reads) and
    ``model_id``."""

    def __init__(self, path: Path, model_id: str):
        self.sbml_model = str(path)
        self.model_id = model_id


@dataclass
class _V1View:
    """A v2 problem as the v1 tables :class:`PetabProblem` evaluates."""

    model: _ModelView
    parameter_df: pd.DataFrame
    observable_df: pd.DataFrame
    measurement_df: pd.DataFrame
    condition_df: pd.DataFrame


def as_v1(tables: PetabV2Tables) -> _V1View:
    """A v2 problem in the shape of a petab v1 ``Problem`` (``model.sbml_model``,
    ``parameter_df``, ``condition_df``, ``measurement_df``, ``observable_df``).

    Every experiment period becomes one wide v1 condition (named
    ``<experimentId>__<time>``): a preequilibration period (``time = -inf``) becomes the
    measurements' ``preequilibrationConditionId`` and the period at ``t = 0`` their
    ``simulationConditionId``.

    Raises
    ------
    PetabError
        An experiment with condition changes after its start (time courses with several
        periods), or one that starts at a time other than 0: not supported by this view.
    """
    if tables.mapping is not None and len(tables.mapping):
        raise PetabError("the problem has a mapping table: read it with "
                         "dynlearn.petab.sciml (PEtab SciML) instead")
    par = tables.parameters.copy()
    par["estimate"] = [1 if is_estimated(v) else 0 for v in par["estimate"]]
    if "parameterScale" not in par:
        par["parameterScale"] = "lin"
    for col, default in (("lowerBound", -np.inf), ("upperBound", np.inf)):
        if col not in par:
            par[col] = default
    if "priorDistribution" in par:
        # v2 priors (on the linear value) in the v1 columns that dynlearn.petab.priors reads
        par["objectivePriorType"] = [v if _blank(v) else V1_PRIOR_TYPES.get(str(v).strip(), v)
                                     for v in par["priorDistribution"]]
        if "priorParameters" in par:
            par["objectivePriorParameters"] = par["priorParameters"]
    meas = tables.measurements.copy()
    rows, sim_ids, pre_ids = {}, [], []
    eids = meas["experimentId"] if "experimentId" in meas else [np.nan] * len(meas)
    for eid in eids:
        periods = experiment_periods(tables, eid)
        name = "__none" if _blank(eid) else str(eid).strip()
        pre = [p for p in periods if p[0] == -np.inf]
        main = [p for p in periods if p[0] != -np.inf]
        if len(main) > 1:
            raise PetabError(f"experiment '{name}': condition changes at {len(main)} time "
                             "points; only a start at t = 0 (and a preequilibration) are "
                             "supported")
        if main and main[0][0] != 0.0:
            raise PetabError(f"experiment '{name}' starts at t = {main[0][0]}; only t = 0 "
                             "is supported")
        sid = f"{name}__0"
        rows[sid] = condition_changes(tables, main[0][1] if main else [])
        sim_ids.append(sid)
        if pre:
            pid = f"{name}__preeq"
            rows[pid] = condition_changes(tables, pre[0][1])
            pre_ids.append(pid)
        else:
            pre_ids.append(np.nan)
    cond = pd.DataFrame.from_dict(rows, orient="index")
    cond.index.name = "conditionId"
    meas["simulationConditionId"] = sim_ids
    meas["preequilibrationConditionId"] = pre_ids
    obs = tables.observables.copy()
    if "noiseDistribution" in obs:
        # v2 writes the transformation into the distribution's name
        dist = obs["noiseDistribution"].astype(str)
        logs = dist.isin(["log-normal", "log-laplace"])
        if logs.any():
            obs.loc[logs, "observableTransformation"] = "log"
            obs.loc[logs, "noiseDistribution"] = dist[logs].str.replace("log-", "")
    mid = next(iter(tables.model_files))
    return _V1View(model=_ModelView(tables.model_path, mid), parameter_df=par, observable_df=obs,
                   measurement_df=meas, condition_df=cond)
