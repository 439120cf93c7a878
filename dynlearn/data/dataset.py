"""Measurements: experiments and datasets (the one CSV reader).

A :class:`Dataset` is a list of :class:`Experiment`\\ s, each a time grid with measured
columns (NaN = not measured). A dataset does not know any model; it is matched to one by
column names when a loss is evaluated: columns named like an observable are data, columns
named like an input drive the model (see :mod:`dynlearn.data.signals`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dynlearn.data.checks import check_times
from dynlearn.errors import DataError, DataTypeError

__all__ = ["Dataset", "Experiment", "as_dataset", "read_csv"]


@dataclass
class Experiment:
    """One experiment: a time grid and measured columns.

    Attributes
    ----------
    name : str
    t : ndarray, shape (m,)
    columns : dict name -> ndarray (m,)
        Measured values (NaN where not measured) and input samples.
    y0 : ndarray or None
        A known initial state, if given.
    """

    name: str
    t: np.ndarray
    columns: dict
    y0: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.t = check_times(self.t, "t", f" in experiment '{self.name}'")
        for k, v in self.columns.items():
            v = np.asarray(v, dtype=float)
            if v.shape != self.t.shape:
                raise DataError(f"column '{k}' of experiment '{self.name}' has {v.size} values but "
                                f"there are {self.t.size} times")
            bad = np.flatnonzero(np.isinf(v))
            if bad.size:
                raise DataError(f"column '{k}' of experiment '{self.name}' is infinite at "
                                f"t={self.t[bad[0]]} (row {bad[0]}); use NaN for a missing value")
            self.columns[k] = v

    def __len__(self) -> int:
        return self.t.size

    def to_frame(self, time: str = "t"):
        """The experiment as a DataFrame: the time column (named ``time``), then its columns."""
        return pd.DataFrame({time: self.t, **self.columns})


def _numeric_frame(df, cols, where: str):
    out = {}
    for c in cols:
        s = df[c]
        if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            out[c] = s.to_numpy(dtype=float, na_value=np.nan)
            continue
        num = pd.to_numeric(s, errors="coerce")
        # only the cells that did not convert are looked at as text (a blank cell is
        # "not measured", anything else is an error): on a numeric column nothing is
        suspect = np.flatnonzero((num.isna() & s.notna()).to_numpy())
        if suspect.size:
            text = s.iloc[suspect].astype(str).str.strip().to_numpy()
            bad = suspect[text != ""]
            if bad.size:
                r = int(bad[0])
                raise DataError(f"{where}column '{c}', row {r + 1}: {s.iloc[r]!r} is not a "
                                "number")
        out[c] = num.to_numpy(dtype=float, na_value=np.nan)
    return out


def _check_unique_names(columns, where: str) -> None:
    """A :class:`DataError` naming the columns whose names repeat (after stripping)."""
    counts = Counter(str(c) for c in columns)
    dup = [c for c, n in counts.items() if n > 1]
    if dup:
        raise DataError(f"{where}duplicate column name{'s' if len(dup) > 1 else ''} "
                        f"{', '.join(repr(c) for c in dup)} (spaces around names do not count); "
                        "every column needs a name of its own")


def _did_you_mean(name: str, choices) -> str:
    choices = [str(c) for c in choices]
    low = {c.lower(): c for c in choices}
    if name.lower() in low:
        return f" (did you mean '{low[name.lower()]}'? names are case-sensitive)"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_ROUND_TRIP = int(pd.__version__.split(".")[0]) < 3


def read_csv(path, **kwargs):
    """Read a CSV file into a DataFrame: the one place dynlearn reads CSV text.

    Parameters
    ----------
    path : str or pathlib.Path
    **kwargs
        Passed to ``pandas.read_csv``.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    DataError
        Naming the file (and the line, when pandas reports one) for a missing file, a
        directory, an empty file, text that does not parse as CSV, or a binary file.
    """
    if _ROUND_TRIP and kwargs.get("engine") in (None, "c"):
        # pandas < 3 parses decimals with a fast routine that can be one ulp off the value
        # written; pandas 3 is exact by default (and deprecates the option).
        kwargs = {"float_precision": "round_trip", **kwargs}
    try:
        df = pd.read_csv(path, **kwargs)
        _check_raw_header(path, df, kwargs)
        return df
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a CSV file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as exc:
        msg = str(exc).strip().splitlines()[-1]
        m = re.search(r"line (\d+)", msg)
        at = f", line {m.group(1)}" if m else ""
        raise DataError(f"{path}{at}: cannot read as CSV: {msg}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV file ({exc.reason} at byte {exc.start})"
                        ) from None


def _check_raw_header(path, df, kwargs) -> None:
    """Refuse a header that repeats a name: pandas renames the second ``x`` to ``x.1``, so a
    repeated column would otherwise be read under a name nobody wrote. Only a header that
    holds such a pair (``x`` and ``x.N``) is read again as written, to tell a repeat from a
    column genuinely named ``x.1``."""
    names = {str(c) for c in df.columns}
    stems = (re.fullmatch(r"(.+)\.\d+", c) for c in names)
    if not any(m is not None and m.group(1) in names for m in stems):
        return
    if not isinstance(path, (str, os.PathLike)) or \
            any(k in kwargs for k in ("header", "names", "usecols", "index_col")):
        return   # a stream cannot be read twice; a header the caller arranged is theirs
    raw = pd.read_csv(path, **{**kwargs, "header": None, "nrows": 1, "dtype": str})
    _check_unique_names([str(c).strip() for c in raw.iloc[0]], f"{path}: ")


def _no_column(where: str, missing, columns, role: str = "", option: str | None = None,
               origin: Mapping[str, str] | None = None) -> DataError:
    """The one message for columns a table lacks: which, what for, where they were named,
    the closest existing names and the table's columns."""
    names = ", ".join(f"'{c}'" for c in missing)
    msg = f"{where}no column{'s' if len(missing) > 1 else ''} {names}"
    if role:
        msg += f" for {role}"
    msg += "".join(_did_you_mean(c, columns) for c in missing)
    named = (origin or {}).get(option) if option else None
    if named:
        msg += f", named in {named}"
    msg += f"; the columns are {[str(c) for c in columns]}"
    if option in ("time", "group", "observable", "value") and not named:
        msg += f". Pass {option}=<column name>"
    return DataError(msg)


def _select_wide(df, time, group, columns, rename, sigma_columns, observables, inputs, where,
                 origin):
    """The data columns of a wide table: selected, noise-level columns attached as
    ``<observable>_sigma``, renamed, and (given the observables) what is not data dropped.
    Returns the frame and the data column names (None: every column but time and group)."""
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise _no_column(where, missing, df.columns, "", "columns", origin)
    missing = [c for c in rename if c not in df.columns]
    if missing:
        raise _no_column(where, missing, df.columns, "renaming", "rename", origin)
    missing = [c for c in sigma_columns.values() if c not in df.columns]
    if missing:
        raise _no_column(where, missing, df.columns, "noise levels", "sigma_columns", origin)
    if not (rename or sigma_columns or observables is not None):
        return df, columns
    keys = [c for c in (time, group) if c is not None]
    data = [c for c in (columns if columns is not None else df.columns) if c not in keys]
    sources = set(sigma_columns.values())
    data = [c for c in data if c not in sources]
    out = df[keys + data].rename(columns=rename)
    names = [rename.get(c, c) for c in data]
    if columns is None and observables is not None:
        known = set(observables) | set(inputs) | {f"{o}_sigma" for o in observables}
        names = [c for c in names if c in known]
    out = out[keys + names].copy()
    for o, c in sigma_columns.items():
        out[f"{o}_sigma"] = df[c].to_numpy()
        names = [n for n in names if n != f"{o}_sigma"] + [f"{o}_sigma"]
    return out, names


def _select_long(df, time, group, observable, value, sigma, columns, rename, drop_other, where,
                 origin):
    """A long table's rows and columns to read: quantities renamed and selected, and (with
    ``drop_other``) columns other than time, group, quantity, value and noise dropped."""
    if rename and observable in df.columns:
        names = df[observable]
        renamed = names.astype(str).str.strip().replace(rename)
        df = df.assign(**{observable: renamed.where(names.notna(), names)})
    if columns is not None and observable in df.columns:
        df = df[df[observable].astype(str).str.strip().isin(list(columns))]
    if drop_other:
        for col, option, role in ((observable, "observable", "the quantity names"),
                                  (value, "value", "the values")):
            if col not in df.columns:
                raise _no_column(where, [col], df.columns, f"{role} (long format)", option,
                                 origin)
        df = df[[c for c in (time, group, observable, value, sigma)
                 if c is not None and c in df.columns]]
    return df


def _long_to_wide(df, time, group, observable, value, sigma, where, origin=None):
    """Pivot a long table (time, observable, value[, sigma]) into wide columns."""
    for col, option, role in ((observable, "observable", "the quantity names"),
                              (value, "value", "the values")):
        if col not in df.columns:
            raise _no_column(where, [col], df.columns, f"{role} (long format)", option, origin)
    known = {time, group, observable, value, sigma}
    extra = [c for c in df.columns if c not in known]
    if extra:
        raise DataError(f"{where}unexpected column(s) {extra} in a long table; expected "
                        f"'{time}', '{observable}', '{value}'[, '{sigma}'"
                        f"{', ' + repr(group) if group else ''}]")
    names = df[observable]
    if names.isna().any():
        r = int(np.flatnonzero(names.isna().to_numpy())[0])
        raise DataError(f"{where}column '{observable}', row {r + 1}: the name is empty")
    keys = [time, observable] + ([group] if group else [])
    dup = df.duplicated(subset=keys, keep="first").to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        raise DataError(f"{where}duplicate measurement at row {r + 1}: '{df[observable].iloc[r]}' "
                        f"at {time}={df[time].iloc[r]} appears twice"
                        + (f" in group '{df[group].iloc[r]}'" if group else ""))
    val = _numeric_frame(df, [value], where)[value]
    cols = {value: val}
    if sigma in df.columns:
        cols[sigma] = _numeric_frame(df, [sigma], where)[sigma]
    tv = _numeric_frame(df, [time], where)[time]
    if np.isnan(tv).any():
        r = int(np.flatnonzero(np.isnan(tv))[0])
        raise DataError(f"{where}time column '{time}' is empty at row {r + 1}")
    work = pd.DataFrame({"_t": tv, "_o": names.astype(str).str.strip(), **cols})
    work["_g"] = df[group].astype(str).to_numpy() if group else "data"
    wide = work.pivot(index=["_g", "_t"], columns="_o", values=value)
    wide.columns = [str(c) for c in wide.columns]
    if sigma in df.columns:
        sg = work.pivot(index=["_g", "_t"], columns="_o", values=sigma)
        for c in sg.columns:
            if sg[c].notna().any():
                wide[f"{c}_sigma"] = sg[c]
    # keep the groups in order of first appearance
    order = {g: i for i, g in enumerate(dict.fromkeys(work["_g"]))}
    wide = wide.reset_index()
    wide["_order"] = wide["_g"].map(order)
    wide = wide.sort_values(["_order", "_t"], kind="stable").drop(columns="_order")
    wide = wide.rename(columns={"_t": time})
    if group:
        wide = wide.rename(columns={"_g": group})
    else:
        wide = wide.drop(columns="_g")
    return wide.reset_index(drop=True)


class Dataset:
    """A collection of experiments.

    Build one with :meth:`from_frame` or :meth:`from_csv`, or from a list of
    :class:`Experiment`.
    """

    def __init__(self, experiments: Sequence[Experiment], time_name: str = "t"):
        experiments = list(experiments)
        if not experiments:
            raise DataError("a dataset needs at least one experiment")
        counts = Counter(e.name for e in experiments)
        dup = {n for n, c in counts.items() if c > 1}
        if dup:
            raise DataError(f"experiment names must be unique; repeated: {sorted(dup)}")
        self.experiments = experiments
        self.time_name = time_name

    def __len__(self) -> int:
        return len(self.experiments)

    def __iter__(self):
        return iter(self.experiments)

    def __getitem__(self, key) -> Experiment:
        if isinstance(key, str):
            for e in self.experiments:
                if e.name == key:
                    return e
            raise KeyError(f"no experiment named {key!r}; experiments: {[e.name for e in self]}")
        return self.experiments[key]

    def __repr__(self) -> str:
        cols = sorted({c for e in self for c in e.columns})
        return (f"Dataset({len(self)} experiment(s), {sum(len(e) for e in self)} rows, "
                f"columns {cols})")

    @classmethod
    def from_frame(cls, df, time: str = "t", group: str | None = None,
                   columns: Sequence[str] | None = None, source: str = "",
                   format: str = "auto", observable: str = "observable", value: str = "value",
                   sigma: str = "sigma", input_kind: str = "linear",
                   rename: Mapping[str, str] | None = None,
                   sigma_columns: Mapping[str, str] | None = None,
                   observables: Sequence[str] | None = None, inputs: Sequence[str] = (),
                   origin: Mapping[str, str] | None = None) -> Dataset:
        """A dataset from a DataFrame in wide or long (tidy) format.

        Parameters
        ----------
        df : pandas.DataFrame
        time : str
            Name of the time column.
        group : str, optional
            Column whose values split rows into experiments (each with its own time grid,
            initial state and inputs).
        columns : list of str, optional
            Wide format: the columns to keep (default: all but time and group), named as in
            the table. Long format: the quantities to keep (after ``rename``).
        source : str
            Where the table came from (a file name), prefixed to error messages.
        format : {"auto", "wide", "long"}
            ``"wide"``: one column per measured quantity (observables, inputs, and optional
            noise levels ``<observable>_sigma``). ``"long"``: one row per measurement with
            columns ``time``, ``observable``, ``value`` and optionally ``sigma``; inputs in
            long format are rows like any other quantity. ``"auto"``: long when both the
            ``observable`` and ``value`` columns exist.
        observable, value, sigma : str
            Long format: names of the quantity, value and (optional) noise-level columns.
        input_kind : {"linear", "zoh"}
            How input columns are interpolated between samples (linear, or zero-order hold
            as produced by a digital controller). ``dl.fit(..., input_kind=...)`` overrides.
        rename : dict, optional
            Table name -> model name. Wide format: renames data columns; long format:
            renames quantities (values of the ``observable`` column).
        sigma_columns : dict, optional
            Wide format: observable -> column holding its noise level row by row (read as
            ``<observable>_sigma``; the column itself is not data).
        observables, inputs : list of str, optional
            The names a model will read. When ``observables`` is given, at least one data
            column must be named like an observable, and what is not data is dropped instead
            of read: in wide format (without ``columns``) the columns that are neither an
            observable, an input nor ``<observable>_sigma`` (a date, a comment); in long
            format the columns other than time, group, quantity, value and noise level.
        origin : dict, optional
            Where options were given (option name -> text, e.g. ``{"time": "model.toml,
            line 12"}``), named in error messages instead of the keyword-argument hint.

        Notes
        -----
        Empty cells and NaN are "not measured" and are not fitted. A column named
        ``<name>_sigma`` gives the noise standard deviation of ``<name>`` row by row.
        """
        where = f"{source}: " if source else ""
        origin = dict(origin or {})
        if not isinstance(df, pd.DataFrame):
            raise DataTypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
        if format not in ("auto", "wide", "long"):
            raise DataError(f"format must be 'auto', 'wide' or 'long', got {format!r}")
        if input_kind not in ("zoh", "linear"):
            raise DataError(f"input_kind must be 'zoh' or 'linear', got {input_kind!r}")
        rename = dict(rename or {})
        sigma_columns = dict(sigma_columns or {})
        df = df.rename(columns=lambda c: str(c).strip())
        _check_unique_names(df.columns, where)
        for col, option, role in ((time, "time", "the time"), (group, "group", "the groups")):
            if col is not None and col not in df.columns:
                raise _no_column(where, [col], df.columns, role, option, origin)
        if len(df) == 0:
            raise DataError(f"{where}the table has no rows")
        table_columns = [str(c) for c in df.columns]
        long = format == "long" or (format == "auto" and observable in df.columns
                                    and value in df.columns)
        if long:
            df = _select_long(df, time, group, observable, value, sigma, columns, rename,
                              observables is not None, where, origin)
            df = _long_to_wide(df, time, group, observable, value, sigma, where, origin)
            columns = None
        else:
            df, columns = _select_wide(df, time, group, columns, rename, sigma_columns,
                                       observables, inputs, where, origin)
        if columns is None:
            columns = [c for c in df.columns if c not in (time, group)]
        columns = [str(c) for c in columns]
        if observables is not None and not long \
                and not any(c in observables for c in columns):
            hint = (f"map table columns to model names with `rename` ({origin['rename']})"
                    if "rename" in origin else "pass rename={column: observable}")
            raise DataError(f"{where}no column matches an observable of the model "
                            f"{list(observables)}; the columns are {table_columns}: {hint}")
        if not columns:
            raise DataError(f"{where}no data columns besides '{time}'")
        tvals = _numeric_frame(df, [time], where)[time]
        if np.isnan(tvals).any():
            r = int(np.flatnonzero(np.isnan(tvals))[0])
            raise DataError(f"{where}time column '{time}' is empty at row {r + 1}")
        data = _numeric_frame(df, columns, where)
        for c, v in data.items():
            if np.isnan(v).all():
                raise DataError(f"{where}column '{c}' has no values (all empty/NaN); drop it")
            if c.endswith("_sigma"):
                bad = np.flatnonzero(v <= 0)
                if bad.size:
                    r = int(bad[0])
                    raise DataError(f"{where}column '{c}', row {r + 1}: noise level {v[r]} must "
                                    "be positive (leave the cell empty to use the default)")
        if group is None:
            groups = [("data", np.arange(len(df)))]
        else:
            gcol = df[group]
            if gcol.isna().any():
                r = int(np.flatnonzero(gcol.isna().to_numpy())[0])
                raise DataError(f"{where}group column '{group}' is empty at row {r + 1}")
            # one pass over the rows (pandas' factorize: codes in order of first appearance,
            # then a stable sort), not one comparison of every row per group
            codes, names = pd.factorize(gcol.astype(str), sort=False)
            order = np.argsort(codes, kind="stable")
            cuts = np.flatnonzero(np.diff(codes[order])) + 1
            groups = [(str(k), idx) for k, idx in zip(names, np.split(order, cuts))]
        exps = []
        for name, idx in groups:
            t = tvals[idx]
            d = np.diff(t)
            if np.any(d <= 0):
                i = int(np.flatnonzero(d <= 0)[0])
                what = "duplicate" if d[i] == 0 else "decreasing"
                raise DataError(f"{where}{what} time in experiment '{name}': "
                                f"{time}={t[i + 1]} at row {idx[i + 1] + 1} follows "
                                f"{time}={t[i]} at row {idx[i] + 1}; times must increase within "
                                "each experiment" + ("" if group else
                                                     " (several experiments? pass group=)"))
            cols = {c: v[idx] for c, v in data.items()}
            measured = [c for c in cols if not c.endswith("_sigma")]
            if measured and all(np.isnan(cols[c]).all() for c in measured):
                raise DataError(f"{where}experiment '{name}' has no measured values (every cell "
                                "is empty); drop its rows")
            exps.append(Experiment(name, t, cols, meta={"input_kind": input_kind}))
        return cls(exps, time_name=time)

    @classmethod
    def from_csv(cls, path, time: str = "t", group: str | None = None, format: str = "auto",
                 observable: str = "observable", value: str = "value", sigma: str = "sigma",
                 input_kind: str = "linear", columns: Sequence[str] | None = None,
                 rename: Mapping[str, str] | None = None,
                 sigma_columns: Mapping[str, str] | None = None,
                 observables: Sequence[str] | None = None, inputs: Sequence[str] = (),
                 origin: Mapping[str, str] | None = None, **kwargs) -> Dataset:
        """Read a CSV file in wide or long format (see :meth:`from_frame` for the options).

        Extra keyword arguments go to ``pandas.read_csv`` (through :func:`read_csv`). Row
        numbers in error messages count data rows from 1 (the header is row 0).
        """
        return cls.from_frame(read_csv(path, **kwargs), time=time, group=group,
                              columns=columns, source=str(path), format=format,
                              observable=observable, value=value, sigma=sigma,
                              input_kind=input_kind, rename=rename, sigma_columns=sigma_columns,
                              observables=observables, inputs=inputs, origin=origin)

    def to_frame(self):
        """All experiments in one DataFrame (with an ``experiment`` column when there are
        several), readable by :meth:`from_frame` with ``group="experiment"``."""
        frames = []
        for e in self:
            f = e.to_frame(self.time_name)
            if len(self) > 1:
                f.insert(0, "experiment", e.name)
            frames.append(f)
        return pd.concat(frames, ignore_index=True)


def as_dataset(data) -> Dataset:
    """A :class:`Dataset` from a Dataset, an Experiment or a DataFrame whose first column is
    time."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Experiment):
        return Dataset([data])
    if isinstance(data, pd.DataFrame):
        return Dataset.from_frame(data, time=data.columns[0])
    raise DataTypeError(f"expected a dl.Dataset (or a DataFrame whose first column is time), "
                        f"got {type(data).__name__}")
