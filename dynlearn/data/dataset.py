"""Measurements: experiments, datasets and input signals.

A :class:`Dataset` is a list of :class:`Experiment`\\ s, each a time grid with measured
columns (NaN = not measured). A dataset does not know any model; it is matched to one by
column names when a loss is evaluated: columns named like an observable are data, columns
named like an input drive the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dynlearn.errors import DataError

__all__ = ["Dataset", "Experiment", "InputSignal"]


class InputSignal:
    """Input values between samples: zero-order hold or linear interpolation.

    Parameters
    ----------
    t : array_like, shape (m,)
        Sample times, strictly increasing.
    values : array_like, shape (m, n_inputs)
    kind : {"zoh", "linear"}
        ``"zoh"`` holds each sample until the next (what a digital controller does);
        ``"linear"`` interpolates. Outside the sampled range the end values are held.
    """

    def __init__(self, t, values, kind: str = "linear", names: Sequence[str] | None = None):
        from dynlearn.solve import check_times
        self.t = check_times(t, "input time")
        v = np.asarray(values, dtype=float)
        if v.ndim == 1:
            v = v[:, None]
        if v.shape[0] != self.t.size:
            raise DataError(f"input values have {v.shape[0]} rows but there are {self.t.size} "
                            "input times")
        bad = np.argwhere(~np.isfinite(v))
        if bad.size:
            r, c = bad[0]
            label = names[c] if names else c
            raise DataError(f"input '{label}' is not finite at t={self.t[r]} (row {r}); inputs "
                            "must be known at every sample (fill or drop the row)")
        if kind not in ("zoh", "linear"):
            raise DataError(f"input interpolation kind must be 'zoh' or 'linear', got {kind!r}")
        self.values = v
        self.kind = kind
        self.names = list(names) if names is not None else None
        self.n_inputs = v.shape[1]
        self._slopes = (np.diff(v, axis=0) / np.diff(self.t)[:, None]) if self.t.size > 1 else None

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        """Times in ``(t0, t1)`` where the signal jumps (zero-order hold samples), at which
        the solvers restart instead of stepping across a discontinuous right-hand side."""
        if self.kind != "zoh":
            return np.empty(0)
        jumps = self.t[1:][np.any(np.diff(self.values, axis=0) != 0, axis=1)]
        return jumps[(jumps > t0) & (jumps < t1)]

    def __call__(self, t):
        scalar = np.ndim(t) == 0
        tt = np.atleast_1d(np.asarray(t, dtype=float))
        i = np.clip(np.searchsorted(self.t, tt, side="right") - 1, 0, self.t.size - 1)
        out = self.values[i]
        if self.kind == "linear" and self._slopes is not None:
            inside = (tt > self.t[0]) & (tt < self.t[-1])
            j = np.minimum(i, self.t.size - 2)
            lin = self.values[j] + (tt - self.t[j])[:, None] * self._slopes[j]
            out = np.where(inside[:, None], lin, out)
        return out[0] if scalar else out


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
        from dynlearn.solve import check_times
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
        import pandas as pd
        return pd.DataFrame({time: self.t, **self.columns})


def _numeric_frame(df, cols, where: str):
    import pandas as pd
    out = {}
    for c in cols:
        s = df[c]
        num = pd.to_numeric(s, errors="coerce")
        bad = num.isna() & s.notna() & (s.astype(str).str.strip() != "")
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{where}column '{c}', row {r + 1}: {s.iloc[r]!r} is not a number")
        out[c] = num.to_numpy(dtype=float)
    return out


def _did_you_mean(name: str, choices) -> str:
    import difflib
    choices = [str(c) for c in choices]
    low = {c.lower(): c for c in choices}
    if name.lower() in low:
        return f" (did you mean '{low[name.lower()]}'? names are case-sensitive)"
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _long_to_wide(df, time, group, observable, value, sigma, where):
    """Pivot a long table (time, observable, value[, sigma]) into wide columns."""
    import pandas as pd
    for col, role in ((observable, "observable"), (value, "value")):
        if col not in df.columns:
            raise DataError(f"{where}long format needs a '{col}' column ({role} name)"
                            f"{_did_you_mean(col, df.columns)}; columns are {list(df.columns)}. "
                            f"Pass {role}=<column name>")
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
        names = [e.name for e in experiments]
        dup = {n for n in names if names.count(n) > 1}
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
                   sigma: str = "sigma", input_kind: str = "linear") -> Dataset:
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
            Wide format: the columns to keep (default: all but time and group).
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

        Notes
        -----
        Empty cells and NaN are "not measured" and are not fitted. A column named
        ``<name>_sigma`` gives the noise standard deviation of ``<name>`` row by row.
        """
        import pandas as pd
        where = f"{source}: " if source else ""
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"expected a pandas DataFrame, got {type(df).__name__}")
        if format not in ("auto", "wide", "long"):
            raise DataError(f"format must be 'auto', 'wide' or 'long', got {format!r}")
        if input_kind not in ("zoh", "linear"):
            raise DataError(f"input_kind must be 'zoh' or 'linear', got {input_kind!r}")
        df = df.rename(columns=lambda c: str(c).strip())
        for col, role in ((time, "time"), (group, "group")):
            if col is not None and col not in df.columns:
                raise DataError(f"{where}no {role} column '{col}'{_did_you_mean(col, df.columns)}; "
                                f"columns are {list(df.columns)}. Pass {role}=<column name>")
        if len(df) == 0:
            raise DataError(f"{where}the table has no rows")
        long = format == "long" or (format == "auto" and observable in df.columns
                                    and value in df.columns)
        if long:
            df = _long_to_wide(df, time, group, observable, value, sigma, where)
            columns = None
        if columns is None:
            columns = [c for c in df.columns if c not in (time, group)]
        else:
            missing = [c for c in columns if c not in df.columns]
            if missing:
                hints = "".join(_did_you_mean(c, df.columns) for c in missing)
                raise DataError(f"{where}columns {missing} not found{hints}; columns are "
                                f"{list(df.columns)}")
        columns = [str(c) for c in columns]
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
            keys = gcol.astype(str).to_numpy()
            groups = [(k, np.flatnonzero(keys == k)) for k in dict.fromkeys(keys)]
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
                 **kwargs) -> Dataset:
        """Read a CSV file in wide or long format (see :meth:`from_frame`).

        Extra keyword arguments go to ``pandas.read_csv``. Row numbers in error messages
        count data rows from 1 (the header is row 0).
        """
        import pandas as pd
        try:
            df = pd.read_csv(path, **kwargs)
        except FileNotFoundError:
            raise DataError(f"no such file: {path}") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot parse as CSV: {exc}") from None
        return cls.from_frame(df, time=time, group=group, columns=columns, source=str(path),
                              format=format, observable=observable, value=value, sigma=sigma,
                              input_kind=input_kind)

    def to_frame(self):
        import pandas as pd
        frames = []
        for e in self:
            f = e.to_frame(self.time_name)
            if len(self) > 1:
                f.insert(0, "experiment", e.name)
            frames.append(f)
        return pd.concat(frames, ignore_index=True)


def as_dataset(data) -> Dataset:
    import pandas as pd
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Experiment):
        return Dataset([data])
    if isinstance(data, pd.DataFrame):
        return Dataset.from_frame(data, time=data.columns[0])
    raise DataError(f"expected a dl.Dataset (or a DataFrame whose first column is time), got "
                    f"{type(data).__name__}")


def as_input_signal(inputs, model, kind: str = "linear") -> InputSignal:
    """An InputSignal for the model's inputs from a signal, a DataFrame (time first) or an
    Experiment whose columns include the inputs."""
    import pandas as pd
    names = [u.name for u in model.inputs]
    if isinstance(inputs, InputSignal):
        if inputs.n_inputs != len(names):
            raise DataError(f"the input signal has {inputs.n_inputs} inputs; the model has "
                            f"{names}")
        return inputs
    if isinstance(inputs, pd.DataFrame):
        missing = [n for n in names if n not in inputs.columns]
        if missing:
            raise DataError(f"inputs frame lacks column(s) {missing}; it needs a time column "
                            f"first, then {names}")
        return InputSignal(inputs.iloc[:, 0].to_numpy(float), inputs[names].to_numpy(float),
                           kind=kind, names=names)
    if isinstance(inputs, Experiment):
        missing = [n for n in names if n not in inputs.columns]
        if missing:
            raise DataError(f"experiment '{inputs.name}' has no column(s) {missing} for the "
                            "model's inputs")
        return InputSignal(inputs.t, np.column_stack([inputs.columns[n] for n in names]),
                           kind=kind, names=names)
    raise DataError(f"the model has inputs {names}; pass inputs= as a DataFrame (time column "
                    "first, then one column per input)")
