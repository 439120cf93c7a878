"""Datasets: wide and long formats, groups, sigma columns, inputs, and every DataError."""

import io

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.objective.binding import bind_data


def csv(text):
    return io.StringIO(text)


def test_wide_csv_with_groups_and_nans():
    d = dl.Dataset.from_csv(csv("run,t,x,y\na,0,1,\na,1,2,3\nb,0,5,6\nb,2,,7\n"), group="run")
    assert [e.name for e in d] == ["a", "b"]
    a, b = d["a"], d["b"]
    np.testing.assert_array_equal(a.t, [0, 1])
    assert np.isnan(a.columns["y"][0]) and a.columns["y"][1] == 3
    np.testing.assert_array_equal(b.t, [0, 2])
    assert np.isnan(b.columns["x"][1])


def test_long_format_with_sigma_matches_wide():
    long = pd.DataFrame({"t": [0, 0, 1, 1, 2], "observable": ["x", "y", "x", "y", "x"],
                         "value": [1.0, 2.0, 3.0, 4.0, 5.0],
                         "sigma": [0.1, 0.2, 0.1, 0.2, 0.1]})
    d = dl.Dataset.from_frame(long)
    e = d[0]
    np.testing.assert_array_equal(e.t, [0, 1, 2])
    np.testing.assert_array_equal(e.columns["x"], [1, 3, 5])
    assert np.isnan(e.columns["y"][2])
    np.testing.assert_array_equal(e.columns["x_sigma"], [0.1, 0.1, 0.1])
    # the sigma columns reach the bound experiment in observable order
    x, y = sp.symbols("x y")
    m = dl.HybridModel(states=[x, y], rhs={x: -x, y: -y})
    b = bind_data(m, d)[0]
    np.testing.assert_array_equal(b.sigma[:2], [[0.1, 0.2], [0.1, 0.2]])


def test_long_format_groups_keep_order():
    long = pd.DataFrame({"exp": ["z", "z", "a"], "t": [1, 0, 0],
                         "observable": ["x", "x", "x"], "value": [2.0, 1.0, 3.0]})
    d = dl.Dataset.from_frame(long, group="exp")
    assert [e.name for e in d] == ["z", "a"]
    np.testing.assert_array_equal(d["z"].t, [0, 1])


def test_input_kind_is_kept():
    d = dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1, 2], "u": [0, 1, 0], "y": [1, 2, 3]}),
                              input_kind="zoh")
    x, u = sp.symbols("x u")
    m = dl.HybridModel(states=[x], rhs={x: u - x}, inputs=[u], observables={"y": x})
    b = bind_data(m, d)[0]
    assert b.inputs.kind == "zoh"
    assert b.inputs(0.5)[0] == 0.0
    assert bind_data(m, d, input_kind="linear")[0].inputs(0.5)[0] == 0.5


def test_rename_sigma_columns_and_model_names():
    frame = pd.DataFrame({"day": [0, 1], "date": ["mon", "tue"], "H": [1.0, 2.0],
                          "H_sd": [0.1, 0.2], "pump": [0.0, 1.0], "note": ["a", "b"]})
    with pytest.warns(dl.errors.DataWarning, match=r"columns not used: 'date' .*; 'note' "):
        d = dl.Dataset.from_frame(frame, time="day", rename={"H": "hare", "pump": "u"},
                                  sigma_columns={"hare": "H_sd"}, observables=["hare", "lynx"],
                                  inputs=["u"])
    e = d[0]
    # what the model does not read (a date, a note) is dropped (with a warning) instead of
    # parsed
    assert list(e.columns) == ["hare", "u", "hare_sigma"]
    np.testing.assert_array_equal(e.columns["hare_sigma"], [0.1, 0.2])
    # explicitly selected columns are kept, named or not
    d = dl.Dataset.from_frame(frame, time="day", columns=["H", "pump"], rename={"H": "hare"},
                              observables=["hare"])
    assert list(d[0].columns) == ["hare", "pump"]
    with pytest.raises(dl.DataError, match=r"no column matches an observable of the model "
                                           r"\['lynx'\]; the columns are \['day', 'date', "):
        dl.Dataset.from_frame(frame, time="day", observables=["lynx"])


def test_long_format_rename_and_selection():
    long = pd.DataFrame({"t": [0, 0, 1, 1], "observable": ["H", "L", "H", "L"],
                         "value": [1.0, 2.0, 3.0, 4.0], "comment": ["", "", "", ""]})
    d = dl.Dataset.from_frame(long, rename={"H": "hare"}, columns=["hare"],
                              observables=["hare"])
    assert list(d[0].columns) == ["hare"]
    np.testing.assert_array_equal(d[0].columns["hare"], [1.0, 3.0])
    with pytest.raises(dl.DataError, match=r"unexpected column\(s\) \['comment'\]"):
        dl.Dataset.from_frame(long)          # without the model's names, nothing is dropped


@pytest.mark.parametrize("content, match", [
    (None, r"nope\.csv: no such file"),
    ("", r"x\.csv: the file is empty"),
    (b"\xff\xfe\x00\x01", r"x\.csv: not a text CSV file \(invalid start byte at byte 0\)"),
    ('t,x\n0,1\n1,"2\n', r"x\.csv: cannot read as CSV: .*EOF inside string"),
])
def test_csv_files_that_cannot_be_read(tmp_path, content, match):
    path = tmp_path / ("nope.csv" if content is None else "x.csv")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(dl.DataError, match=match):
        dl.Dataset.from_csv(path)
    with pytest.raises(dl.DataError, match="is a directory, not a CSV file"):
        dl.Dataset.from_csv(tmp_path)


# --- every DataError, with its message --------------------------------------------------------
def test_missing_time_column_suggests_the_close_name():
    with pytest.raises(dl.DataError, match=r"no column 'year' for the time.*did you mean 'Year'"):
        dl.Dataset.from_csv(csv("Year,hare\n1900,1\n"), time="year")


def test_renamed_column_is_suggested():
    with pytest.raises(dl.DataError, match=r"no column 'hare' \(did you mean 'hares'"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1], "hares": [1, 2]}), columns=["hare"])


def test_missing_group_column():
    with pytest.raises(dl.DataError, match=r"no column 'run' for the groups"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1], "x": [1, 2]}), group="run")


def test_non_numeric_cell_names_row_and_column():
    with pytest.raises(dl.DataError, match=r"column 'x', row 2: 'abc' is not a number"):
        dl.Dataset.from_csv(csv("t,x\n0,1\n1,abc\n"))


def test_non_numeric_time():
    with pytest.raises(dl.DataError, match=r"column 't', row 1: 'zero' is not a number"):
        dl.Dataset.from_csv(csv("t,x\nzero,1\n1,2\n"))


def test_repeated_time_is_a_replicate():
    """A repeated time is a replicate (tests/test_replicates.py); a decreasing one is not."""
    d = dl.Dataset.from_csv(csv("t,x\n0,1\n1,2\n1,3\n"))
    assert d[0].t.tolist() == [0.0, 1.0, 1.0] and d[0].columns["x"].tolist() == [1, 2, 3]
    with pytest.raises(dl.DataError, match=r"decreasing time in experiment 'data': t=0.5 at row "
                                           r"3 follows t=1.0 at row 2"):
        dl.Dataset.from_csv(csv("t,x\n0,1\n1,2\n0.5,3\n"))


def test_decreasing_time_within_a_group():
    with pytest.raises(dl.DataError, match=r"decreasing time in experiment 'b'"):
        dl.Dataset.from_csv(csv("g,t,x\na,0,1\na,1,2\nb,2,1\nb,1,2\n"), group="g")


def test_empty_experiment():
    with pytest.raises(dl.DataError, match=r"experiment 'b' has no measured values"):
        dl.Dataset.from_csv(csv("g,t,x\na,0,1\nb,0,\nb,1,\n"), group="g")


def test_all_nan_column():
    with pytest.raises(dl.DataError, match=r"column 'y' has no values \(all empty/NaN\); drop it"):
        dl.Dataset.from_csv(csv("t,x,y\n0,1,\n1,2,\n"))


def test_empty_table_and_missing_file(tmp_path):
    with pytest.raises(dl.DataError, match="the table has no rows"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [], "x": []}))
    with pytest.raises(dl.DataError, match="no such file"):
        dl.Dataset.from_csv(tmp_path / "nope.csv")


def test_empty_time_cell():
    with pytest.raises(dl.DataError, match=r"time column 't' is empty at row 2"):
        dl.Dataset.from_csv(csv("t,x\n0,1\n,2\n"))


def test_nonpositive_sigma():
    with pytest.raises(dl.DataError, match=r"column 'x_sigma', row 2: noise level 0.0 must be "
                                           "positive"):
        dl.Dataset.from_csv(csv("t,x,x_sigma\n0,1,0.1\n1,2,0\n"))


def test_long_format_errors():
    with pytest.raises(dl.DataError, match=r"unexpected column\(s\) \['extra'\] in a long table"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0], "observable": ["x"], "value": [1],
                                            "extra": [0]}))
    with pytest.raises(dl.DataError, match=r"no column 'value' for the values \(long format\)"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0], "observable": ["x"], "val": [1]}),
                              format="long")
    with pytest.raises(dl.DataError, match=r"column 'value', row 1: 'a' is not a number"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0], "observable": ["x"], "value": ["a"]}))


def test_model_mismatch_errors():
    x, u = sp.symbols("x u")
    m = dl.HybridModel(states=[x], rhs={x: u - x}, inputs=[u], observables={"y": x})
    with pytest.raises(dl.DataError, match=r"no column named like an observable of the model "
                                           r"\['y'\]"), pytest.warns(dl.errors.DataWarning):
        bind_data(m, dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1], "z": [1, 2], "u": [0, 0]})))
    # differing only by case is not "no column": it names both
    with pytest.raises(dl.DataError, match=r"column 'Y' differs from the model's observable 'y' "
                                           r"only by case"):
        bind_data(m, dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1], "Y": [1, 2], "u": [0, 0]})))
    with pytest.raises(dl.DataError, match=r"lacks column\(s\) \['u'\] for the model's inputs"):
        bind_data(m, dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1], "y": [1, 2]})))
    with pytest.raises(dl.DataError, match=r"input 'u' is not finite at t=1.0 \(row 1\)"):
        bind_data(m, dl.Dataset.from_frame(pd.DataFrame({"t": [0, 1], "y": [1, 2],
                                                         "u": [0, np.nan]})))


def test_bad_format_and_input_kind():
    df = pd.DataFrame({"t": [0, 1], "x": [1, 2]})
    with pytest.raises(dl.DataError, match="format must be"):
        dl.Dataset.from_frame(df, format="tidy")
    with pytest.raises(dl.DataError, match="input_kind must be 'zoh' or 'linear'"):
        dl.Dataset.from_frame(df, input_kind="cubic")


# --- no silent data loss (issue 13) ------------------------------------------------------------
def _lv():
    hare, lynx, a = sp.symbols("hare lynx a")
    return dl.HybridModel(states=[hare, lynx], rhs={hare: -a * hare, lynx: -a * lynx},
                          params={a: 0.5})


def test_a_column_differing_only_by_case_is_an_error_naming_both():
    frame = pd.DataFrame({"t": [0, 1], "hare": [1.0, 2.0], "Lynx": [3.0, 4.0]})
    msg = r"column 'Lynx' differs from the model's observable 'lynx' only by case"
    with pytest.raises(dl.DataError, match=msg + r".*rename=\{'Lynx': 'lynx'\}"):
        dl.Dataset.from_frame(frame, observables=["hare", "lynx"])
    with pytest.raises(dl.DataError, match=msg):        # the Python path: at binding
        bind_data(_lv(), dl.Dataset.from_frame(frame))
    # inputs and noise-level columns too
    with pytest.raises(dl.DataError, match=r"'U' differs from the model's input 'u'"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0], "x": [1], "U": [0]}), observables=["x"],
                              inputs=["u"])
    with pytest.raises(dl.DataError, match=r"'X_Sigma' differs .* noise-level column 'x_sigma'"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0], "x": [1], "X_Sigma": [0.1]}),
                              observables=["x"])
    # with the exact name present too, the other spelling is merely not used
    both = frame.assign(lynx=[5.0, 6.0])
    with pytest.warns(dl.errors.DataWarning, match=r"'Lynx' .*did you mean 'lynx'"):
        d = dl.Dataset.from_frame(both, observables=["hare", "lynx"])
    assert sorted(d[0].columns) == ["hare", "lynx"]


def test_unused_columns_warn_with_the_closest_name_and_are_listed():
    frame = pd.DataFrame({"t": [0, 1], "hare": [1.0, 2.0], "lynxx": [3.0, 4.0],
                          "note": ["a", "b"]})
    with pytest.warns(dl.errors.DataWarning) as rec:
        d = dl.Dataset.from_frame(frame, observables=["hare", "lynx"], source="f.csv")
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert msg.startswith("f.csv: columns not used: 'lynxx' matches no observable")
    assert "(did you mean 'lynx'?)" in msg and "'note'" in msg
    assert list(d[0].columns) == ["hare"]
    assert set(d.ignored_columns) == {"lynxx", "note"}
    summary = d.columns_summary()
    assert summary.startswith("columns used: hare; not used: lynxx (matches no observable")
    # a state that is not an observable is said to be one
    with pytest.warns(dl.errors.DataWarning, match=r"'lynx' is a state, but not an observable"):
        dl.Dataset.from_frame(frame.rename(columns={"lynxx": "lynx"}), observables=["hare"],
                              states=["hare", "lynx"])
    # in Python, binding warns about the columns the model does not read (the Dataset does
    # not know the model)
    with pytest.warns(dl.errors.DataWarning, match=r"'lynxx' .*did you mean 'lynx'"):
        bind_data(_lv(), dl.Dataset.from_frame(frame.drop(columns="note")
                                               .assign(lynx=[3.0, 4.0])))


def test_columns_chosen_explicitly_are_read_without_a_warning():
    import warnings
    frame = pd.DataFrame({"t": [0, 1], "hare": [1.0, 2.0], "date": ["x", "y"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = dl.Dataset.from_frame(frame, columns=["hare"], observables=["hare"])
    assert list(d[0].columns) == ["hare"]
    assert d.ignored_columns == {"date": "is not among the columns to read (columns=[...])"}


# --- CSV dialects ------------------------------------------------------------------------------
def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_separator_decimal_comma_and_unit_rows(tmp_path):
    p = write(tmp_path, "eu.csv", "Zeit;x;y\ns;mV;mV\n0;1,5;-2,25\n1;2,5;3\n")
    d = dl.Dataset.from_csv(p, time="Zeit", sep=";", decimal=",", unit_rows=1)
    np.testing.assert_array_equal(d[0].t, [0, 1])
    np.testing.assert_array_equal(d[0].columns["x"], [1.5, 2.5])
    np.testing.assert_array_equal(d[0].columns["y"], [-2.25, 3.0])
    p = write(tmp_path, "logger.txt", "device 7\nrun 3\n\nt\tx\n0\t1\n1\t2\n")
    d = dl.Dataset.from_csv(p, sep="\t", skip_rows=3)
    np.testing.assert_array_equal(d[0].columns["x"], [1, 2])
    p = write(tmp_path, "ws.dat", "t   x    y\n0  1.0  2.0\n1\t3.0 4.0\n")
    d = dl.Dataset.from_csv(p, sep="whitespace")
    np.testing.assert_array_equal(d[0].columns["y"], [2.0, 4.0])
    # a trailing separator on each data row (spreadsheet exports) is still read
    d = dl.Dataset.from_csv(write(tmp_path, "trail.csv", "t,x\n0,1,\n1,2,\n"))
    np.testing.assert_array_equal(d[0].columns["x"], [1, 2])


@pytest.mark.parametrize("text, kw, match", [
    # one column: the separator that splits the file evenly is named
    ("t;x;y\n0;1;2\n1;2;3\n", {}, r"read with ',' as separator, the file has one column "
     r"'t;x;y'; the file looks separated by ';': pass sep=';' \(in a model file: "
     r"sep = \";\" in \[data\]\)"),
    ("t\tx\n0\t1\n1\t2\n", {"sep": ";"}, r"looks separated by a tab: pass sep='\\t'"),
    # decimal commas split by the comma: more fields than names; both options are named
    ("t;x\n0,5;1,5\n1,5;2,5\n", {}, r"rows have more fields than the header has names \(read "
     r"with ',' as separator\); the file looks separated by ';': pass sep=';' and "
     r"decimal=','"),
    # ragged rows that no separator fixes: pandas' message, no suggestion
    ("t,x\n0,1\n1,2,3\n2,3\n", {}, r"line 3: cannot read as CSV: .*Expected 2 fields.*saw 3$"),
    ("t;x\n0;1,5\n", {"sep": ";"}, r"column 'x', row 1: '1,5' is not a number \(a decimal "
     r"comma\? pass decimal=','"),
    ("date,x\n2024-03-01,1\n", {"time": "date"}, r"column 'date', row 1: '2024-03-01' is not "
     r"a number \(a date or time\? give time_unit"),
    ("t,x\n0,1\n", {"decimal": ","}, r"the separator and the decimal mark are both ','"),
    ("t,x\n0,1\n", {"sep": "ab"}, r"sep must be one character or 'whitespace'"),
    ("t,x\n0,1\n", {"unit_rows": -1}, r"unit_rows must be a non-negative integer"),
])
def test_dialect_errors_and_suggestions(tmp_path, text, kw, match):
    p = write(tmp_path, "d.csv", text)
    with pytest.raises(dl.DataError, match=match):
        dl.Dataset.from_csv(p, **kw)


def test_suggest_separator(tmp_path):
    from dynlearn.data.dataset import suggest_separator
    assert suggest_separator(write(tmp_path, "a", "a;b;c\n1;2;3\n")) == ";"
    assert suggest_separator(write(tmp_path, "b", "a|b\n1|2\n")) == "|"
    # quoted separators do not count
    assert suggest_separator(write(tmp_path, "c", 'a,b\n"1,5",2\n')) == ","
    assert suggest_separator(write(tmp_path, "c", 'a,b\n"1,5",2\n'), exclude=",") is None
    assert suggest_separator(write(tmp_path, "d", "abc\n")) is None


def test_dates_become_elapsed_time(tmp_path):
    p = write(tmp_path, "d.csv", "date,x\n2024-03-01,1\n2024-03-03 12:00,2\n2024-03-08,3\n")
    d = dl.Dataset.from_csv(p, time="date", time_unit="day")
    np.testing.assert_allclose(d[0].t, [0, 2.5, 7])
    assert d.time_unit == "day" and str(d.time_origin) == "2024-03-01 00:00:00"
    np.testing.assert_allclose(dl.Dataset.from_csv(p, time="date", time_unit="h")[0].t,
                               [0, 60, 168])
    # the origin is the earliest time of the whole table, so groups keep their offsets
    p = write(tmp_path, "g.csv", "run,when,x\nb,02.01.2024 06:00,1\nb,02.01.2024 07:30,2\n"
                                 "a,01.01.2024 00:00,3\na,01.01.2024 01:00,4\n")
    d = dl.Dataset.from_csv(p, time="when", group="run", time_unit="min",
                            time_format="%d.%m.%Y %H:%M")
    np.testing.assert_allclose(d["b"].t, [1800, 1890])
    np.testing.assert_allclose(d["a"].t, [0, 60])
    # a numeric time column is read as it is; the unit is recorded
    d = dl.Dataset.from_csv(write(tmp_path, "n.csv", "t,x\n0,1\n5,2\n"), time_unit="s")
    np.testing.assert_array_equal(d[0].t, [0, 5])
    assert d.time_unit == "s" and d.time_origin is None


@pytest.mark.parametrize("text, kw, match", [
    ("date,x\n2024-03-01,1\nsoon,2\n", {"time_unit": "day"},
     r"time column 'date', row 2: 'soon' is not a date and time in the format of the first "
     r"dates; give time_format"),
    ("date,x\n01.03.2024,1\n", {"time_unit": "day", "time_format": "%Y-%m-%d"},
     r"row 1: '01.03.2024' is not a date and time in the format '%Y-%m-%d'"),
    ("date,x\n2024-03-01,1\n", {"time_unit": "fortnight"},
     r"time_unit 'fortnight' is not one of \['s', 'min'"),
    ("date,x\n2024-03-01,1\n", {"time_unit": "Day"}, r"did you mean 'day'"),
    ("date,x\n2024-03-01,1\n", {"time_format": "%Y"}, r"time_format needs time_unit"),
])
def test_date_errors(tmp_path, text, kw, match):
    with pytest.raises(dl.DataError, match=match):
        dl.Dataset.from_csv(write(tmp_path, "d.csv", text), time="date", **kw)


def test_long_format_quantities_are_matched_like_columns():
    long = pd.DataFrame({"t": [0, 0, 1, 1], "observable": ["hare", "Lynx", "hare", "Lynx"],
                         "value": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(dl.DataError, match=r"'Lynx' differs from the model's observable 'lynx'"):
        dl.Dataset.from_frame(long, observables=["hare", "lynx"])
    with pytest.warns(dl.errors.DataWarning,
                      match=r"column not used: 'Lynx' matches no observable"):
        d = dl.Dataset.from_frame(long, observables=["hare"])
    assert list(d[0].columns) == ["hare"]
    # a column chosen by `columns` that the model does not read is kept (binding warns),
    # and counted as not used
    frame = pd.DataFrame({"t": [0, 1], "hare": [1.0, 2.0], "pump": [0.0, 1.0]})
    d = dl.Dataset.from_frame(frame, columns=["hare", "pump"], observables=["hare"])
    assert list(d[0].columns) == ["hare", "pump"]
    assert d.columns_summary().startswith("columns used: hare; not used: pump (matches no")
