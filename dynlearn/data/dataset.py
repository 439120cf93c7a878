"""Measurements: experiments and datasets (the one CSV reader).

A :class:`Dataset` is a list of :class:`Experiment`\\ s, each a time grid with measured
columns (NaN = not measured). A dataset does not know any model; it is matched to one by
column names when a loss is evaluated: columns named like an observable are data, columns
named like an input drive the model (see :mod:`dynlearn.data.signals`).
"""

from __future__ import annotations

import csv
import difflib
import os
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from dynlearn.data.checks import check_times
from dynlearn.errors import DataError, DataTypeError, DataWarning
from dynlearn.files import read_head
from dynlearn.lazy import LazyModule, is_instance

pd = LazyModule("pandas")     # imported by the first function that reads or makes a table

__all__ = ["TIME_UNITS", "WHITESPACE", "Dataset", "Experiment", "as_dataset", "match_columns",
           "read_csv", "suggest_separator"]


@dataclass
class Experiment:
    """One experiment: a time grid and measured columns.

    Attributes
    ----------
    name : str
    t : ndarray, shape (m,)
        Increasing; a time may repeat (replicates: rows measured at the same time are
        separate measurements, each with its own residual).
    columns : dict name -> ndarray (m,)
        Measured values (NaN where not measured) and input samples.
    y0 : ndarray or None
        A known initial state, if given (at ``t0``).
    meta : dict
        Settings carried with the data (``input_kind``; ``t0`` when set, so that a saved
        result keeps it).
    t0 : float or None
        The start time: where the initial state is given and integration starts. ``None``
        (the default): the first data time. An explicit start (e.g. ``0`` for an
        experiment whose first measurement is at ``t = 1``) must not come after the first
        data time.
    """

    name: str
    t: np.ndarray
    columns: dict
    y0: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    t0: float | None = None

    def __post_init__(self):
        self.t = check_times(self.t, "t", f" in experiment '{self.name}'", repeats=True)
        if self.t0 is None:
            self.t0 = self.meta.get("t0")
        if self.t0 is not None:
            try:
                t0 = float(self.t0)
            except (TypeError, ValueError):
                raise DataError(f"the start time t0 of experiment '{self.name}' must be a "
                                f"number, got {self.t0!r}") from None
            if not np.isfinite(t0) or t0 > self.t[0]:
                raise DataError(f"the start time t0={t0:g} of experiment '{self.name}' must be "
                                f"finite and not after its first data time t={self.t[0]:g}")
            self.t0 = t0
            self.meta = {**self.meta, "t0": t0}
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

    @property
    def start(self) -> float:
        """Where integration starts: :attr:`t0` if set, else the first data time."""
        return float(self.t[0]) if self.t0 is None else self.t0

    def to_frame(self, time: str = "t"):
        """The experiment as a DataFrame: the time column (named ``time``), then its columns."""
        return pd.DataFrame({time: self.t, **self.columns})


def _column_name(name) -> str:
    """A column name as a model declares it: spaces stripped and Unicode normalised (NFKC,
    as :func:`dynlearn.core.expressions.normalize_name` does for declared names), so that a
    column written with the micro sign matches a state declared with the Greek mu."""
    name = str(name).strip()
    return name if name.isascii() else unicodedata.normalize("NFKC", name)


def _numeric_frame(df, cols, where: str, time: str | None = None):
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
                                f"number{_number_hint(str(s.iloc[r]), c == time)}")
        out[c] = num.to_numpy(dtype=float, na_value=np.nan)
    return out


_DATE_LIKE = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T].*)?|\d{1,2}:\d{2}(:\d{2})?.*")


def _number_hint(text: str, is_time: bool = False) -> str:
    """Why a cell may not have read as a number: a decimal comma, or (in the time column)
    a date."""
    text = text.strip()
    if re.fullmatch(r"[-+]?\d+,\d+", text):
        return (" (a decimal comma? pass decimal=',' (in a model file: decimal = \",\" in "
                "[data]))")
    if is_time and _DATE_LIKE.fullmatch(text):
        return (" (a date or time? give time_unit, e.g. time_unit='day', to read the time "
                "column as dates and times converted to elapsed time)")
    return ""


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



#: Values of ``sep`` besides a single character: any run of spaces and tabs.
WHITESPACE = "whitespace"
#: Separators tried when a file does not parse with the one given (in this order of
#: preference when several would work).
_CANDIDATE_SEPS = (",", ";", "\t", "|", WHITESPACE)


def _sep_name(sep: str) -> str:
    return {"\t": "a tab", WHITESPACE: "whitespace", " ": "a space"}.get(sep, f"'{sep}'")


def _sep_option(sep: str, comma: bool = False) -> str:
    """How to ask for ``sep`` (and a decimal comma) in Python and in a model file."""
    py = {"\t": r"'\t'"}.get(sep, repr(sep))
    toml = {"\t": r'"\t"'}.get(sep, f'"{sep}"')
    if comma:
        return (f"sep={py} and decimal=',' (in a model file: sep = {toml} and decimal = "
                '"," in [data])')
    return f"sep={py} (in a model file: sep = {toml} in [data])"


def _split_line(line: str, sep: str) -> list[str]:
    if sep == WHITESPACE:
        return line.split()
    return next(csv.reader([line], delimiter=sep))


def suggest_separator(path, exclude: str | None = None, skip_rows: int = 0) -> str | None:
    """The column separator a CSV file seems to use, or None when none fits.

    A candidate (``,``, ``;``, tab, ``|``, whitespace) fits when it splits every one of the
    first lines into the same number (two or more) of fields; of those that fit, the one
    giving the most columns wins. Quoted fields are respected.

    Parameters
    ----------
    path : str or pathlib.Path
    exclude : str, optional
        A separator already tried (not suggested again).
    skip_rows : int
        Lines before the header that are not part of the table.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = []
            for no, line in enumerate(fh):
                if len(lines) >= 50:
                    break
                if no >= skip_rows and line.strip():
                    lines.append(line.rstrip("\r\n"))
    except OSError:
        return None
    if len(lines) < 2:
        return None
    best, best_n = None, 1
    for sep in _CANDIDATE_SEPS:
        if sep == exclude:
            continue
        try:
            counts = {len(_split_line(line, sep)) for line in lines}
        except csv.Error:
            continue
        if len(counts) == 1 and (n := counts.pop()) > best_n:
            best, best_n = sep, n
    return best


def _decimal_comma(path, sep: str) -> bool:
    """Whether the file's numbers are written with a decimal comma (when split at ``sep``)."""
    if sep == ",":
        return False
    head = read_head(path, 4000)
    if head is None:
        return False
    cells = [c for line in head.splitlines()[1:] for c in _split_line(line, sep)]
    return any(re.fullmatch(r"\s*[-+]?\d+,\d+\s*", c) for c in cells)


def _separator_hint(path, sep: str | None, skip_rows: int = 0) -> str:
    """``; it looks separated by ';': pass sep=';' ...`` when another separator would work."""
    if not isinstance(path, (str, os.PathLike)):
        return ""
    other = suggest_separator(path, exclude=sep or ",", skip_rows=skip_rows)
    if other is None:
        return ""
    return (f"; the file looks separated by {_sep_name(other)}: pass "
            f"{_sep_option(other, _decimal_comma(path, other))}")


def read_csv(path, sep: str | None = None, decimal: str = ".", skip_rows: int = 0,
             unit_rows: int = 0, **kwargs):
    """Read a CSV file into a DataFrame: the one place dynlearn reads CSV text.

    Parameters
    ----------
    path : str or pathlib.Path
    sep : str, optional
        The column separator: one character (``","``, the default, ``";"``, ``"\t"``, ...)
        or ``"whitespace"`` (any run of spaces and tabs).
    decimal : {".", ","}
        The decimal mark of numbers (``","``: a decimal comma, usually with ``sep=";"``).
    skip_rows : int
        Lines before the header to skip (an instrument's preamble).
    unit_rows : int
        Rows right after the header to skip (e.g. a second header line with units).
    **kwargs
        Passed to ``pandas.read_csv``.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    DataError
        Naming the file (and the line, when pandas reports one) for a missing file, a
        directory, an empty file, text that does not parse as CSV, or a binary file. When
        the file reads as one column, or as rows with more fields than the header, and
        another separator would split it evenly, the message names that separator.
    """
    for k, v in (("skip_rows", skip_rows), ("unit_rows", unit_rows)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise DataError(f"{k} must be a non-negative integer, got {v!r}")
    if decimal not in (".", ","):
        raise DataError(f"decimal must be '.' or ',', got {decimal!r}")
    if sep is not None and (not isinstance(sep, str) or
                            (len(sep) != 1 and sep != WHITESPACE)):
        raise DataError(f"sep must be one character or {WHITESPACE!r}, got {sep!r}")
    if (sep or ",") == decimal:
        raise DataError(f"the separator and the decimal mark are both {decimal!r}; with a "
                        "decimal comma, columns are usually separated by ';': pass sep=';'")
    if sep is not None:
        kwargs["sep"] = r"\s+" if sep == WHITESPACE else sep
    if decimal != ".":
        kwargs["decimal"] = decimal
    if skip_rows or unit_rows:
        # line numbers (0-based) of the preamble and of the rows after the header
        kwargs["skiprows"] = [*range(skip_rows),
                              *range(skip_rows + 1, skip_rows + 1 + unit_rows)]
    if int(pd.__version__.split(".")[0]) < 3 and kwargs.get("engine") in (None, "c"):
        # pandas < 3 parses decimals with a fast routine that can be one ulp off the value
        # written; pandas 3 is exact by default (and deprecates the option).
        kwargs = {"float_precision": "round_trip", **kwargs}
    # pandas would take the first fields of rows longer than the header as an index,
    # reading every value one column to the left of its name: refuse instead (a trailing
    # separator on every data row, with nothing after it, is still read)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Length of header",
                                    category=pd.errors.ParserWarning)
            df = pd.read_csv(path, **{"index_col": False, **kwargs})
        _check_raw_header(path, df, kwargs)
    except pd.errors.ParserWarning:
        raise DataError(f"{path}: rows have more fields than the header has names (read with "
                        f"{_sep_name(sep or ',')} as separator)"
                        f"{_separator_hint(path, sep, skip_rows)}") from None
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
        raise DataError(f"{path}{at}: cannot read as CSV: {msg}"
                        f"{_separator_hint(path, sep, skip_rows)}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV file ({exc.reason} at byte {exc.start})"
                        ) from None
    if len(df.columns) == 1:
        hint = _separator_hint(path, sep, skip_rows)
        if hint:
            raise DataError(f"{path}: read with {_sep_name(sep or ',')} as separator, the file "
                            f"has one column {str(df.columns[0])!r}{hint}")
    return df


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


def match_columns(columns, observables, inputs=(), states=(), where: str = "",
                  warn: bool = False) -> tuple[list[str], dict[str, str]]:
    """Sort data columns into those a model reads and those it ignores.

    A model reads a column named exactly like one of its observables, its inputs or
    ``<observable>_sigma`` (a noise level). Any other column is not used: a
    :class:`~dynlearn.errors.DataWarning` names each one with the closest model name, so
    that no data is dropped without a word.

    Parameters
    ----------
    columns : list of str
        The data columns (not time or group).
    observables, inputs : list of str
        The model's names.
    states : list of str
        The model's states: a column named like a state that is not an observable is
        reported as such.
    where : str
        Prefix of messages (the file, ``"data.csv: "``).
    warn : bool
        Warn about the columns that are not used (:func:`warn_ignored_columns`).

    Returns
    -------
    used : list of str
        The columns the model reads, in table order.
    ignored : dict
        Column -> why it is not used.

    Raises
    ------
    DataError
        A column whose name differs from a model name only by case (``Predator`` for
        ``predator``), when no column has the exact name: names are case-sensitive, and
        silently dropping such a column would fit half the data. The message names both and
        how to rename the column.
    """
    obs = [str(o) for o in observables]
    ins = [str(u) for u in inputs]
    known = [*obs, *ins, *(f"{o}_sigma" for o in obs)]
    known_set = set(known)
    cols = [str(c) for c in columns]
    present = set(cols)
    lower: dict[str, str] = {}
    for k in known:
        lower.setdefault(k.lower(), k)
    used, ignored = [], {}
    for c in cols:
        if c in known_set:
            used.append(c)
            continue
        k = lower.get(c.lower())
        if k is not None and k not in present:
            role = "input" if k in ins else "observable" if k in obs else "noise-level column"
            raise DataError(f"{where}column '{c}' differs from the model's {role} '{k}' only "
                            "by case; names are case-sensitive, so it would not be used. "
                            f"Rename the column to '{k}', or map it: rename={{'{c}': '{k}'}} "
                            f"(in a model file: rename = {{ \"{c}\" = \"{k}\" }} in [data])")
        if c in states:
            ignored[c] = "is a state, but not an observable of the model"
        else:
            ignored[c] = ("matches no observable, input or noise-level column"
                          + _did_you_mean(c, known))
    if warn:
        warn_ignored_columns(ignored, obs, ins, where)
    return used, ignored


def warn_ignored_columns(ignored: Mapping[str, str], observables, inputs=(), where: str = "",
                         stacklevel: int = 4) -> None:
    """Warn (:class:`~dynlearn.errors.DataWarning`) about data columns a model does not use.

    Parameters
    ----------
    ignored : dict
        Column -> why it is not used (as :func:`match_columns` returns it); nothing is said
        when empty.
    observables, inputs : list of str
        The model's names, listed in the message.
    where : str
        Prefix of the message.
    stacklevel : int
        Passed to :func:`warnings.warn`.
    """
    if not ignored:
        return
    listed = "; ".join(f"'{c}' {why}" for c, why in ignored.items())
    many = len(ignored) > 1
    ins = list(inputs)
    warnings.warn(f"{where}column{'s' if many else ''} not used: {listed}. The model reads "
                  f"columns named like its observables {list(observables)}"
                  + (f", inputs {ins}" if ins else "")
                  + " or <observable>_sigma. Rename a column to use it (rename=...), or name "
                  "the columns to read (columns=[...]) to leave the others out without this "
                  "warning (in a model file: rename and columns in [data])",
                  DataWarning, stacklevel=stacklevel)


_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0, "day": 86400.0, "week": 604800.0,
            "year": 365.25 * 86400.0}
#: Units of elapsed time a column of dates can be converted to: name -> seconds. ``year`` is
#: the Julian year (365.25 days); the spelled-out and plural names are aliases.
TIME_UNITS: dict[str, float] = {
    **_SECONDS, "second": 1.0, "seconds": 1.0, "minute": 60.0, "minutes": 60.0,
    "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "days": 86400.0, "weeks": 604800.0,
    "years": _SECONDS["year"]}


def _dates_to_elapsed(df, time: str, unit: str, fmt: str | None, where: str):
    """The table with its time column of dates converted to the time elapsed since the
    earliest, in ``unit``; and that earliest time (None for a numeric column, kept as is)."""
    if unit not in TIME_UNITS:
        raise DataError(f"{where}time_unit {unit!r} is not one of {list(TIME_UNITS)}"
                        + _did_you_mean(unit, TIME_UNITS))
    col = df[time]
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return df, None
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        stamps = col
    else:
        text = col.astype("string").str.strip()
        given = text.notna() & (text != "")
        # without a format: ISO 8601 in any precision (dates with and without a time of
        # day mixed), else the format pandas infers from the first date
        for f in ([fmt] if fmt is not None else ["ISO8601", None]):
            try:
                stamps = pd.to_datetime(text, format=f, errors="coerce")
            except (ValueError, TypeError) as exc:    # a format pandas cannot use, mixed zones
                raise DataError(f"{where}time column '{time}': cannot read as dates and "
                                f"times: {exc}") from None
            if not (stamps.isna() & given).any():
                break
        bad = np.flatnonzero((stamps.isna() & given).to_numpy())
        if bad.size:
            r = int(bad[0])
            how = (f"the format {fmt!r}" if fmt is not None else
                   "the format of the first dates; give time_format, e.g. '%d.%m.%Y %H:%M'")
            raise DataError(f"{where}time column '{time}', row {r + 1}: {col.iloc[r]!r} is not "
                            f"a date and time in {how}")
    if stamps.isna().all():
        raise DataError(f"{where}time column '{time}' has no dates")
    origin = stamps.min()
    elapsed = (stamps - origin).dt.total_seconds().to_numpy(dtype=float, na_value=np.nan)
    return df.assign(**{time: elapsed / TIME_UNITS[unit]}), origin


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
    val = _numeric_frame(df, [value], where)[value]
    cols = {value: val}
    if sigma in df.columns:
        cols[sigma] = _numeric_frame(df, [sigma], where)[sigma]
    tv = _numeric_frame(df, [time], where, time)[time]
    if np.isnan(tv).any():
        r = int(np.flatnonzero(np.isnan(tv))[0])
        raise DataError(f"{where}time column '{time}' is empty at row {r + 1}")
    work = pd.DataFrame({"_t": tv, "_o": names.astype(str).map(_column_name), **cols})
    work["_g"] = df[group].astype(str).to_numpy() if group else "data"
    # replicates: the k-th measurement of a quantity at one time goes to that time's k-th row
    work["_r"] = work.groupby(["_g", "_t", "_o"], sort=False).cumcount()
    wide = work.pivot(index=["_g", "_t", "_r"], columns="_o", values=value)
    wide.columns = [str(c) for c in wide.columns]
    if sigma in df.columns:
        sg = work.pivot(index=["_g", "_t", "_r"], columns="_o", values=sigma)
        for c in sg.columns:
            if sg[c].notna().any():
                wide[f"{c}_sigma"] = sg[c]
    # keep the groups in order of first appearance
    order = {g: i for i, g in enumerate(dict.fromkeys(work["_g"]))}
    wide = wide.reset_index()
    wide["_order"] = wide["_g"].map(order)
    wide = wide.sort_values(["_order", "_t", "_r"], kind="stable").drop(columns=["_order",
                                                                                 "_r"])
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
        #: Columns of the table read that are not data of the model: column -> why
        #: (filled by :meth:`from_frame` when it knows the model's names).
        self.ignored_columns: dict[str, str] = {}
        #: The unit of time, when the table stated one (``time_unit``).
        self.time_unit: str | None = None
        #: The date and time that is t = 0, when times were read as dates.
        self.time_origin = None

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
                   origin: Mapping[str, str] | None = None, states: Sequence[str] = (),
                   time_unit: str | None = None,
                   time_format: str | None = None) -> Dataset:
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
            of read: data columns (quantities, in long format) that are neither an
            observable, an input nor ``<observable>_sigma`` are left out with a
            :class:`~dynlearn.errors.DataWarning` naming each and the closest model name
            (no warning for those left out by ``columns``), and a column that differs from a
            model name only by case is a :class:`~dynlearn.errors.DataError` (see
            :func:`match_columns`); in long format, columns other than time, group,
            quantity, value and noise level are dropped. The columns left out are in
            :attr:`ignored_columns`.
        origin : dict, optional
            Where options were given (option name -> text, e.g. ``{"time": "model.toml,
            line 12"}``), named in error messages instead of the keyword-argument hint.
        states : list of str, optional
            The model's states, to say so when a column is a state that is not observed.
        time_unit : str, optional
            Read the time column as dates and times (text such as ``2024-03-01`` or
            ``2024-03-01 14:30``) and convert them to the time elapsed since the earliest,
            in this unit: one of :data:`TIME_UNITS` (``"s"``, ``"min"``, ``"h"``, ``"day"``,
            ``"week"``, ``"year"`` = 365.25 days, ...). The earliest time is kept as
            :attr:`time_origin`. A numeric time column is read as it is (the unit is then
            only recorded, in :attr:`time_unit`).
        time_format : str, optional
            The ``strftime`` format of the dates (e.g. ``"%d.%m.%Y %H:%M"``); by default
            pandas infers it (ISO 8601 always works). Needs ``time_unit``.

        Notes
        -----
        Empty cells and NaN are "not measured" and are not fitted. A column named
        ``<name>_sigma`` gives the noise standard deviation of ``<name>`` row by row.

        Times increase within each experiment; a time may repeat. Rows at the same time are
        replicates: each is a measurement of its own (its own residual; the model is solved
        once per distinct time). In long format the k-th measurement of a quantity at a time
        goes to the k-th row of that time. Decreasing times are an error, not sorted: they
        usually mean experiments stacked without a ``group`` column.
        """
        where = f"{source}: " if source else ""
        origin = dict(origin or {})
        if not isinstance(df, pd.DataFrame):
            raise DataTypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
        if format not in ("auto", "wide", "long"):
            raise DataError(f"format must be 'auto', 'wide' or 'long', got {format!r}")
        if input_kind not in ("zoh", "linear"):
            raise DataError(f"input_kind must be 'zoh' or 'linear', got {input_kind!r}")
        # names given here are matched in the form the header is read in
        rename = {_column_name(k): v for k, v in dict(rename or {}).items()}
        sigma_columns = {k: _column_name(v) for k, v in dict(sigma_columns or {}).items()}
        if columns is not None and not isinstance(columns, str):
            columns = [_column_name(c) for c in columns]
        time = _column_name(time)
        group = None if group is None else _column_name(group)
        df = df.rename(columns=_column_name)
        _check_unique_names(df.columns, where)
        for col, option, role in ((time, "time", "the time"), (group, "group", "the groups")):
            if col is not None and col not in df.columns:
                raise _no_column(where, [col], df.columns, role, option, origin)
        if len(df) == 0:
            raise DataError(f"{where}the table has no rows")
        time_origin = None
        if time_format is not None and time_unit is None:
            raise DataError(f"{where}time_format needs time_unit: the unit of the elapsed time "
                            "the dates are converted to (e.g. time_unit='day')")
        if time_unit is not None:
            df, time_origin = _dates_to_elapsed(df, time, time_unit, time_format, where)
        table_columns = [str(c) for c in df.columns]
        long = format == "long" or (format == "auto" and observable in df.columns
                                    and value in df.columns)
        ignored: dict[str, str] = {}
        chosen = columns is not None and not long
        if chosen:
            keys = {time, group, *sigma_columns.values()}
            ignored = {c: "is not among the columns to read (columns=[...])"
                       for c in table_columns if c not in keys and c not in columns}
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
        if observables is not None:
            used, unused = match_columns(columns, observables, inputs, states, where)
            if not long and not any(c in observables for c in used):
                hint = (f"map table columns to model names with `rename` ({origin['rename']})"
                        if "rename" in origin else "pass rename={column: observable}")
                raise DataError(f"{where}no column matches an observable of the model "
                                f"{list(observables)}; the columns are {table_columns}: {hint}")
            if not chosen:
                # not chosen by `columns`: what the model does not read is dropped, with a
                # word; chosen columns are kept (and fitting warns about them)
                warn_ignored_columns(unused, observables, inputs, where, stacklevel=4)
                columns = used
            ignored.update(unused)
        if not columns:
            raise DataError(f"{where}no data columns besides '{time}'")
        tvals = _numeric_frame(df, [time], where, time)[time]
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
            # a repeated time is a replicate; a decreasing one is refused rather than sorted:
            # it usually means experiments stacked without a group column
            d = np.diff(t)
            if np.any(d < 0):
                i = int(np.flatnonzero(d < 0)[0])
                raise DataError(f"{where}decreasing time in experiment '{name}': "
                                f"{time}={t[i + 1]} at row {idx[i + 1] + 1} follows "
                                f"{time}={t[i]} at row {idx[i] + 1}; times must increase within "
                                "each experiment (a time may repeat: replicates)"
                                + ("" if group else " (several experiments? pass group=)"))
            cols = {c: v[idx] for c, v in data.items()}
            measured = [c for c in cols if not c.endswith("_sigma")]
            if measured and all(np.isnan(cols[c]).all() for c in measured):
                raise DataError(f"{where}experiment '{name}' has no measured values (every cell "
                                "is empty); drop its rows")
            exps.append(Experiment(name, t, cols, meta={"input_kind": input_kind}))
        out = cls(exps, time_name=time)
        out.ignored_columns = ignored
        out.time_unit, out.time_origin = time_unit, time_origin
        return out

    @classmethod
    def from_csv(cls, path, time: str = "t", group: str | None = None, format: str = "auto",
                 observable: str = "observable", value: str = "value", sigma: str = "sigma",
                 input_kind: str = "linear", columns: Sequence[str] | None = None,
                 rename: Mapping[str, str] | None = None,
                 sigma_columns: Mapping[str, str] | None = None,
                 observables: Sequence[str] | None = None, inputs: Sequence[str] = (),
                 origin: Mapping[str, str] | None = None, states: Sequence[str] = (),
                 sep: str | None = None, decimal: str = ".", skip_rows: int = 0,
                 unit_rows: int = 0, time_unit: str | None = None,
                 time_format: str | None = None, **kwargs) -> Dataset:
        """Read a CSV file in wide or long format (see :meth:`from_frame` for the options).

        The dialect (``sep``, ``decimal``, ``skip_rows``, ``unit_rows``) is that of
        :func:`read_csv`, e.g. ``sep=";", decimal=","`` for a file written with a decimal
        comma, ``unit_rows=1`` for a second header line of units. Dates in the time column
        are converted to elapsed time with ``time_unit`` (see :meth:`from_frame`). Extra
        keyword arguments go to ``pandas.read_csv``. Row numbers in error messages count
        data rows from 1 (the header is row 0).
        """
        frame = read_csv(path, sep=sep, decimal=decimal, skip_rows=skip_rows,
                         unit_rows=unit_rows, **kwargs)
        return cls.from_frame(frame, time=time, group=group,
                              columns=columns, source=str(path), format=format,
                              observable=observable, value=value, sigma=sigma,
                              input_kind=input_kind, rename=rename, sigma_columns=sigma_columns,
                              observables=observables, inputs=inputs, origin=origin,
                              states=states, time_unit=time_unit, time_format=time_format)

    def columns_summary(self) -> str:
        """One line naming the data columns read and those left out (with why), e.g.
        ``columns used: hare, lynx; not used: date (matches no observable, ...)``."""
        used = [c for c in dict.fromkeys(c for e in self for c in e.columns)
                if c not in self.ignored_columns]
        text = f"columns used: {', '.join(used) if used else 'none'}"
        if self.ignored_columns:
            text += "; not used: " + ", ".join(f"{c} ({why})"
                                               for c, why in self.ignored_columns.items())
        return text

    def with_start(self, t0) -> Dataset:
        """A copy whose experiments start at ``t0`` (see :attr:`Experiment.t0`).

        Parameters
        ----------
        t0 : float, dict or None
            One start time for every experiment, or ``{experiment: t0}`` (experiments not
            named keep theirs); ``None`` returns the dataset itself.

        Returns
        -------
        Dataset

        Raises
        ------
        DataError
            A start after an experiment's first data time, or an unknown experiment name.
        """
        if t0 is None:
            return self
        names = [e.name for e in self]
        if isinstance(t0, Mapping):
            unknown = sorted(set(map(str, t0)) - set(names))
            if unknown:
                raise DataError(f"t0 names experiment(s) {unknown} that the data do not have; "
                                f"experiments: {names}")
            starts = {str(k): v for k, v in t0.items()}
        else:
            starts = dict.fromkeys(names, t0)
        exps = [e if e.name not in starts else
                replace(e, meta={k: v for k, v in e.meta.items() if k != "t0"},
                        t0=starts[e.name], columns=dict(e.columns))
                for e in self]
        out = Dataset(exps, time_name=self.time_name)
        out.ignored_columns = dict(self.ignored_columns)
        out.time_unit, out.time_origin = self.time_unit, self.time_origin
        return out

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
    if is_instance(data, "pandas", "DataFrame"):
        return Dataset.from_frame(data, time=data.columns[0])
    raise DataTypeError(f"expected a dl.Dataset (or a DataFrame whose first column is time), "
                        f"got {type(data).__name__}")
