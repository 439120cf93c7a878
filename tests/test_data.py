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
    d = dl.Dataset.from_frame(frame, time="day", rename={"H": "hare", "pump": "u"},
                              sigma_columns={"hare": "H_sd"}, observables=["hare", "lynx"],
                              inputs=["u"])
    e = d[0]
    # what the model does not read (a date, a note) is dropped instead of parsed
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


def test_duplicate_time():
    with pytest.raises(dl.DataError, match=r"duplicate time in experiment 'data': t=1.0 at row 3 "
                                           r"follows t=1.0 at row 2"):
        dl.Dataset.from_csv(csv("t,x\n0,1\n1,2\n1,3\n"))


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
    with pytest.raises(dl.DataError, match=r"duplicate measurement at row 2: 'x' at t=0"):
        dl.Dataset.from_frame(pd.DataFrame({"t": [0, 0], "observable": ["x", "x"],
                                            "value": [1, 2]}))
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
                                           r"\['y'\]"):
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
