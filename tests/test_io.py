"""Model files: parsing, checks with file and line in every message, data mapping."""

from pathlib import Path

import numpy as np
import pytest

import dynlearn as dl
from dynlearn.io.model_file import load_model_file, parse_model_text, parse_time_grid

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "models"

LV = """\
[model]
states = ["hare", "lynx"]
equations = { hare = "alpha*hare - beta*hare*lynx", lynx = "delta*hare*lynx - gamma*lynx" }

[model.params]
alpha = { value = 0.5, min = 0.0, transform = "log" }
beta  = 0.02
gamma = { value = 0.8, fixed = false }
delta = { value = 0.02, fixed = true }

[data]
time = "year"

[fit]
loss = "log"
"""


def write(tmp_path, text, name="model.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_issue_example_parses(tmp_path):
    mf = load_model_file(write(tmp_path, LV))
    m = mf.model
    assert [s.name for s in m.states] == ["hare", "lynx"]
    assert [s.name for s in m.free_params] == ["alpha", "beta", "gamma"]
    alpha = m.param_symbols[0]
    assert m.params[alpha].transform == "log" and m.params[alpha].min == 0.0
    assert mf.fit == {"loss": "log"}
    assert mf.data["time"] == "year"
    assert mf.y0() == "first"
    assert m.name == "model"


@pytest.mark.parametrize("name", ["lynx_hare", "sir_influenza", "lv_ude"])
def test_examples_parse_and_simulate(name):
    mf = load_model_file(EXAMPLES / f"{name}.toml")
    y0 = [mf.simulate["y0"][s.name] for s in mf.model.states]
    sol = dl.simulate(mf.model, mf.simulate["t"][:20], y0)
    assert np.all(np.isfinite(sol.y))


def test_network_table(tmp_path):
    text = """
[model]
states = ["x", "y"]
equations = { x = "a*x + nn[0]", y = "-y + nn[1]*exp(-t)" }
params = { a = 1.0 }
[model.networks.nn]
inputs = ["x/10", "y**3"]
outputs = 2
hidden = [4]
activation = "rbf"
seed = 3
"""
    mf = load_model_file(write(tmp_path, text))
    nn = mf.networks["nn"]
    assert nn.hidden == (4,) and nn.activation == "rbf" and nn.seed == 3
    assert mf.model.networks == (nn,)
    assert mf.model.n_theta == 1 + nn.n_weights
    # a network without a seed is seeded (0 by default, or default_seed)
    text2 = text.replace("seed = 3\n", "")
    assert load_model_file(write(tmp_path, text2)).networks["nn"].seed == 0
    assert load_model_file(write(tmp_path, text2), default_seed=7).networks["nn"].seed == 7


def test_observables_initial_noise(tmp_path):
    text = """
[model]
states = ["S", "I", "R"]
equations = { S = "-beta*S*I/N", I = "beta*S*I/N - gamma*I", R = "gamma*I" }
params = { beta = 1.0, gamma = 0.5, N = { value = 763, fixed = true } }
observables = { in_bed = "I", total = "S + I + R" }
[initial]
values = { S = 760, I = 3, R = 0 }
[noise]
sigma = { in_bed = 5.0 }
[data]
time = "day"
rename = { bed = "in_bed" }
"""
    mf = load_model_file(write(tmp_path, text))
    assert mf.model.observable_names == ("in_bed", "total")
    np.testing.assert_array_equal(mf.y0(), [760.0, 3.0, 0.0])
    assert mf.noise["sigma"] == {"in_bed": 5.0}
    csv = write(tmp_path, "date,day,bed,other\n2020-01-01,1,3,x\n2020-01-02,2,8,y\n", "d.csv")
    with pytest.warns(dl.errors.DataWarning, match=r"columns not used: 'date' .*'other'"):
        data = mf.read_data(csv)
    e = data.experiments[0]
    assert list(e.columns) == ["in_bed"]           # date and unknown columns dropped
    assert set(data.ignored_columns) == {"date", "other"}
    np.testing.assert_array_equal(e.t, [1.0, 2.0])


def test_data_file_relative_to_model_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "t,x\n0,1\n1,2\n", "sub/data.csv")
    text = '[model]\nstates=["x"]\nequations={x="-k*x"}\nparams={k=1.0}\n[data]\nfile="data.csv"\n'
    mf = load_model_file(write(tmp_path, text, "sub/m.toml"))
    assert len(mf.read_data().experiments[0]) == 2


def test_keyword_parameter_name(tmp_path):
    text = '[model]\nstates=["x"]\nequations={x="-lambda*x"}\nparams={lambda=1.0}\n'
    mf = load_model_file(write(tmp_path, text))
    assert mf.model.param_symbols[0].name == "lambda"


# --- errors, each naming file and line ------------------------------------------------------
@pytest.mark.parametrize("text, match", [
    ("[model\nstates = []", r"line 1, column \d+: malformed TOML"),
    ("[model]\nstates = [\"x\"]\nequations = { x = \"-k*x\" \n",
     r"line 3, column \d+: malformed TOML"),
    ("[model]\nstates = [\"x\"]\n", r"model\.toml, line 1: \[model\] needs `equations`"),
    ("[modle]\n", r"line 1: modle: unknown table"),
    ("[fit]\nloss='log'\n", r"no \[model\] table"),
    ('[model]\nstates = ["x"]\nequations = { x = "-k*x" }\n',
     r"line 3: equation of 'x': unknown name 'k'; declared names are \['t', 'x'\]"),
    ('[model]\nstates = ["x"]\nequation = { x = "-x" }\n',
     r"line 3: \[model\] equation: unknown key 'equation'"),
    ('[model]\nstates = ["x"]\n\nequations = { x = "x.__class__" }\n',
     r"line 4: equation of 'x': attribute access"),
    ('[model]\nstates = ["x"]\nequations = { x = "__import__(\'os\').system(\'ls\')" }\n',
     r"line 3: equation of 'x': attribute access \('\.system'\)"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x", y = "1" }\n',
     r"line 3: .*equation for 'y', which is not a state"),
    ('[model]\nstates = ["x", "y"]\nequations = { x = "-x" }\n',
     r"line 3: .*no equation for state\(s\) \['y'\]"),
    ('[model]\nstates = "x"\nequations = { x = "-x" }\n',
     r"line 2: \[model\] states: expected a list of strings"),
    ('[model]\nstates = ["x"]\nequations = { x = "-k*x" }\n[model.params]\nk = "fast"\n',
     r"line 5: \[model.params\] k: expected a number, got a string"),
    (('[model]\nstates = ["x"]\nequations = { x = "-k*x" }\n[model.params]\n'
     'k = { value = -1, transform = "log" }\n'),
     r"line 5: .*log-transformed parameter must be positive"),
    (('[model]\nstates = ["x"]\nequations = { x = "-k*x" }\n[model.params]\n'
     'k = { value = 1, transform = "sqrt" }\n'), r"line 5: .*'sqrt' is not one of"),
    (('[model]\nstates = ["x"]\nequations = { x = "-k*x" }\n[model.params]\n'
     'k = { value = 1, lower = 0 }\n'), r"line 5: .*unknown key 'lower'"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[model.params]\nx = 1.0\n',
     r"line 5: .*'x' is declared twice, as state and as parameter"),
    (('[model]\nstates = ["x"]\nequations = { x = "-x + nn[0]" }\n[model.networks.nn]\n'
     'inputs = ["x"]\n'), r"line 4: .*a network needs `outputs`"),
    (('[model]\nstates = ["x"]\nequations = { x = "-x + nn[2]" }\n[model.networks.nn]\n'
     'inputs = ["x"]\noutputs = 1\n'), r"line 3: .*index 2 is out of range"),
    (('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[model.networks.nn]\n'
     'inputs = ["x"]\noutputs = 1\n'), r"line 4: .*network 'nn' is not used"),
    (('[model]\nstates = ["x"]\nequations = { x = "-x + nn[0]" }\n[model.networks.nn]\n'
     'inputs = ["x", "q"]\noutputs = 1\n'), r"line 5: input of network 'nn': unknown name 'q'"),
    (('[model]\nstates = ["x"]\nequations = { x = "-x + nn[0]" }\n[model.networks.nn]\n'
     'inputs = ["x"]\noutputs = 1\nactivation = "magic"\n'), r"line 4: .*unknown activation"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[fit]\nloss = "l1"\n',
     r"line 5: \[fit\] loss: 'l1' is not one of \['ls', 'gaussian', 'log'\]"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[fit]\nmaxiter = 0\n',
     r"line 5: .*must be positive"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[fit]\nl2 = "automatic"\n',
     r"line 5: \[fit\] l2: 'automatic' is not one of \['auto', 'gcv'\]"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[fit]\nl2 = -0.1\n',
     r"line 5: \[fit\] l2: must be >= 0, \"auto\" or \"gcv\", got -0.1"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[initial]\nvalues = { y = 1 }\n',
     r"line 5: .*'y' is not a state"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[noise]\nsigma = { z = 1 }\n',
     r"line 5: .*'z' is not an observable"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\n[simulate]\nt = "0:x:1"\n',
     r"line 5: \[simulate\] t: '0:x:1' is not a time grid"),
    ('[model]\nstates = ["x"]\nequations = { x = "-x" }\nobservables = { o = "x.imag" }\n',
     r"line 4: observable 'o': attribute access"),
    ('[model]\nstates = ["1x"]\nequations = { 1x = "-1" }\n', r"line 2: .*not a valid name"),
])
def test_errors_name_file_and_line(tmp_path, text, match):
    with pytest.raises(dl.DynlearnError, match=match) as info:
        load_model_file(write(tmp_path, text))
    assert str(info.value).startswith(str(tmp_path / "model.toml"))
    assert "\n" not in str(info.value)


def test_l2_auto_in_the_model_file_reaches_dl_fit(tmp_path):
    """``l2 = "auto"`` / ``"gcv"`` in [fit] are dl.fit's rules choosing the strength from the
    data; a number stays a number."""
    from types import SimpleNamespace

    from dynlearn.cli import fit_arguments
    from dynlearn.fitting.regularisation import AUTO, GCV, check_l2
    args = SimpleNamespace(quiet=True, resume=False, maxiter=None, loss=None, method=None,
                           seed=None, max_time=None, workers=None, n_starts=None)
    head = '[model]\nstates = ["x"]\nequations = { x = "-x" }\n[fit]\n'
    for value, expected in (('"auto"', AUTO), ('"gcv"', GCV), ("0", 0.0), ("0.25", 0.25)):
        mf = load_model_file(write(tmp_path, head + f"l2 = {value}\n"))
        kw = fit_arguments(mf, args, tmp_path)
        assert check_l2(kw["l2"]) == expected


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(dl.ModelError, match=r"nope\.toml: no such file"):
        load_model_file(tmp_path / "nope.toml")
    with pytest.raises(dl.ModelError, match="is a directory"):
        load_model_file(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(dl.ModelError, match="not a UTF-8 text file"):
        load_model_file(tmp_path / "bin.toml")


@pytest.mark.parametrize("csv, match", [
    (None, r"no such file"),
    ("", r"the file is empty"),
    ("year,hare,lynx\n1900,1,2\n1901,x,3\n", r"column 'hare', row 2: 'x' is not a number"),
    ("year,hare,lynx\n1901,1,2\n1900,2,3\n", r"decreasing time .*row 2"),
    ("yr,hare,lynx\n1900,1,2\n", r"no column 'year'"),
    ("year,rabbit\n1900,1\n", r"no column matches an observable"),
    ('year,hare,lynx\n1900,1,2\n1901,"2,3\n', r"cannot read as CSV"),
])
def test_csv_errors(tmp_path, csv, match):
    mf = load_model_file(write(tmp_path, LV))
    path = tmp_path / "data.csv"
    if csv is not None:
        path.write_text(csv)
    with pytest.raises(dl.DataError, match=match):
        mf.read_data(path)


def test_no_data_file(tmp_path):
    mf = load_model_file(write(tmp_path, LV))
    with pytest.raises(dl.DataError, match="no data file"):
        mf.read_data()


@pytest.mark.parametrize("spec, expected", [
    ("0:1:0.25", [0, 0.25, 0.5, 0.75, 1.0]),
    ("0:0.3:0.1", [0, 0.1, 0.2, 0.3]),
    ([0, 2, 5], [0, 2, 5]),
    ({"start": 0, "stop": 1, "n": 3}, [0, 0.5, 1]),
])
def test_time_grid(spec, expected):
    np.testing.assert_allclose(parse_time_grid(spec), expected)


@pytest.mark.parametrize("spec", ["1:0:0.1", "0:1:-1", "0:1:0", "a:b", "0", [3, 1], "0:1e12:1e-6"])
def test_time_grid_errors(spec):
    with pytest.raises(dl.OptionError):
        parse_time_grid(spec, "--t")


def test_parse_model_text_without_file():
    mf = parse_model_text('[model]\nstates=["x"]\nequations={x="-x"}\n')
    assert mf.path is None and mf.source == "<model file>"


def test_long_format_with_rename_and_sigma(tmp_path):
    text = LV + '\n'.join(['', '[model.observables]', 'hare = "hare"', 'lynx = "lynx"'])
    text = text.replace('[data]\ntime = "year"',
                        '[data]\ntime = "year"\nformat = "long"\nrename = { H = "hare" }\n'
                        'observable = "what"\nvalue = "count"')
    mf = load_model_file(write(tmp_path, text))
    csv = write(tmp_path, "year,what,count,sigma\n1900,H,30,3\n1900,lynx,4,1\n1901,H,47,\n"
                          "1901,lynx,6,1\n", "long.csv")
    e = mf.read_data(csv).experiments[0]
    np.testing.assert_array_equal(e.t, [1900, 1901])
    np.testing.assert_array_equal(e.columns["hare"], [30, 47])
    assert "hare_sigma" in e.columns


def test_sigma_columns_and_partial_initial_guess(tmp_path):
    text = LV.replace('[data]', '[noise]\nsigma_columns = { hare = "hare_sd" }\n\n'
                                '[initial]\nestimate = true\nvalues = { hare = 31.0 }\n\n[data]')
    mf = load_model_file(write(tmp_path, text))
    assert mf.y0() == "estimate" and mf.y0_init() == {"hare": 31.0}
    csv = write(tmp_path, "year,hare,lynx,hare_sd\n1900,30,4,2\n1901,47,6,3\n", "d.csv")
    e = mf.read_data(csv).experiments[0]
    np.testing.assert_array_equal(e.columns["hare_sigma"], [2, 3])
    with pytest.raises(dl.ModelError, match="give a value for every state"):
        load_model_file(write(tmp_path, LV.replace('[data]', '[initial]\nvalues = { hare = 1 }'
                                                             '\n[data]')))


def test_optimizer_settings(tmp_path):
    text = LV.replace('loss = "log"', 'loss = "log"\noptimizer = "lbfgs"\nmaxiter = 7')
    opt = load_model_file(write(tmp_path, text)).optimizer()
    assert isinstance(opt, dl.LBFGSB) and opt.max_iter == 7
    staged = LV + ('\n[[fit.stages]]\noptimizer = "adam"\nmaxiter = 5\nlr = 0.1\n'
                   '[[fit.stages]]\noptimizer = "lm"\noptions = { ftol = 1e-8 }\n')
    opt = load_model_file(write(tmp_path, staged)).optimizer(maxiter=3)
    assert isinstance(opt, dl.Staged)
    adam, lm = opt.stages()
    assert adam.iterations == 3 and adam.lr == 0.1 and lm.max_iter == 3
    with pytest.raises(dl.DynlearnError, match=r"line 16: \[fit\] optimizer: 'bfgs' is not"):
        load_model_file(write(tmp_path, LV.replace('loss = "log"',
                                                   'loss = "log"\noptimizer = "bfgs"')))
    bad = LV.replace('loss = "log"', 'loss = "log"\noptimizer = "lm"\nlr = 0.1')
    with pytest.raises(dl.OptionError, match="lr is the learning rate of the 'adam'"):
        load_model_file(write(tmp_path, bad)).optimizer()
    assert load_model_file(write(tmp_path, LV)).optimizer() is None


def test_model_to_toml_round_trip(tmp_path):
    from dynlearn.io.model_file import model_to_toml
    for name in ("lynx_hare", "sir_influenza", "lv_ude", "cascaded_tanks"):
        m = load_model_file(EXAMPLES / f"{name}.toml").model
        text = model_to_toml(m, {"data": {"time": "t"}}, comment="round trip")
        m2 = parse_model_text(text).model
        assert [str(e) for e in m2.rhs] == [str(e) for e in m.rhs]
        assert m2.params == m.params
        assert [str(e) for e in m2.observables.values()] == [str(e) for e in m.observables.values()]
        assert m2.inputs == m.inputs


def test_model_file_round_trip_keeps_initial_weights():
    # seed and scale are written, so a model file describes the initial weights exactly
    import sympy as sp

    from dynlearn.io.model_file import model_to_toml
    x, y, a = sp.symbols("x y a")
    nn = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[5], seed=3, scale=0.1)
    m = dl.HybridModel(states=[x, y], params={a: 0.5}, rhs={x: a * x + nn[0], y: -y + nn[1]})
    text = model_to_toml(m)
    assert "scale = 0.1" in text and "seed = 3" in text
    np.testing.assert_array_equal(parse_model_text(text).model.theta0, m.theta0)
    # a fitted model's file describes where the fit started (weights are not written)
    fitted = m.with_theta(m.theta0 + 1.0)
    np.testing.assert_array_equal(parse_model_text(model_to_toml(fitted)).model.theta0[1:],
                                  m.theta0[1:])


def test_csv_errors_name_the_model_file_line(tmp_path):
    mf = load_model_file(write(tmp_path, LV.replace('time = "year"', 'time = "Year"')))
    csv = write(tmp_path, "year,hare,lynx\n1900,1,2\n", "data.csv")
    line = LV.replace('time = "year"', 'time = "Year"').splitlines().index('time = "Year"') + 1
    with pytest.raises(dl.DataError, match=rf"data\.csv: no column 'Year' for the time \(did you "
                       rf"mean 'year'\? names are case-sensitive\), named in .*model\.toml, "
                       rf"line {line};"):
        mf.read_data(csv)
    bad = LV.replace('[data]', '[noise]\nsigma_columns = { hare = "hare_sd" }\n\n[data]')
    mf = load_model_file(write(tmp_path, bad))
    line = bad.splitlines().index('sigma_columns = { hare = "hare_sd" }') + 1
    with pytest.raises(dl.DataError, match=rf"no column 'hare_sd' for noise levels .*, named in "
                                           rf".*model\.toml, line {line};"):
        mf.read_data(csv)


def test_documented_layout_parses(tmp_path):
    import dynlearn.io.model_file as dio
    doc = dio.__doc__
    block = doc.split(".. code-block:: toml")[1].split("\n\n``lr")[0]
    text = "\n".join(line[4:] for line in block.splitlines())
    mf = load_model_file(write(tmp_path, text))
    assert mf.model.observable_names == ("hare", "lynx")
    assert mf.optimizer().max_iter == 200


# --- CSV dialects in [data] (issue 13) --------------------------------------------------------
DECAY_HEAD = """\
[model]
states = ["x"]
equations = { x = "-k*x" }
[model.params]
k = 0.5
"""


def test_data_dialect_keys_read_the_csv(tmp_path):
    csv = write(tmp_path, "# logger 7\nWhen;x;y\n;mV;mV\n01.03.2024 00:00;1,5;2\n"
                          "01.03.2024 06:00;2,5;3\n", "d.csv")
    mf = load_model_file(write(tmp_path, DECAY_HEAD + """\
[data]
file = "d.csv"
time = "When"
columns = ["x"]
sep = ";"
decimal = ","
skip_rows = 1
unit_rows = 1
time_unit = "h"
time_format = "%d.%m.%Y %H:%M"
"""))
    assert mf.data["sep"] == ";" and mf.data["time_unit"] == "h"
    d = mf.read_data()
    np.testing.assert_array_equal(d[0].t, [0.0, 6.0])
    np.testing.assert_array_equal(d[0].columns["x"], [1.5, 2.5])
    assert d.ignored_columns == {"y": "is not among the columns to read (columns=[...])"}
    assert str(csv.name) == "d.csv"


@pytest.mark.parametrize("data, match", [
    ('sep = ";;"', r"line 7: \[data\] sep: expected one character"),
    ('decimal = ","', r"line 7: \[data\] decimal: the separator and the decimal mark are both "
                      r"','; .*sep = \";\""),
    ('decimal = ";"', r"\[data\] decimal: ';' is not one of \['\.', ','\]"),
    ("unit_rows = -1", r"\[data\] unit_rows: must be 0 or more"),
    ("skip_rows = 1.5", r"\[data\] skip_rows: expected an integer"),
    ('time_unit = "fortnight"', r"\[data\] time_unit: 'fortnight' is not one of \['s', 'min'"),
    ('time_format = "%Y"', r"\[data\] time_format: time_format needs time_unit"),
])
def test_data_dialect_errors(tmp_path, data, match):
    with pytest.raises(dl.ModelError, match=match):
        load_model_file(write(tmp_path, DECAY_HEAD + "[data]\n" + data + "\n"))


def test_a_file_read_with_the_wrong_separator_names_the_right_one(tmp_path):
    write(tmp_path, "t;x\n0;1,5\n1;2,5\n", "d.csv")
    mf = load_model_file(write(tmp_path, DECAY_HEAD + '[data]\nfile = "d.csv"\n'))
    with pytest.raises(dl.DataError, match=r"looks separated by ';': pass sep=';' and "
                                           r"decimal=',' \(in a model file: sep = \";\" and "
                                           r"decimal = \",\" in \[data\]\)"):
        mf.read_data()


def test_a_csv_given_as_model_file(tmp_path):
    from dynlearn.io import looks_like_csv
    csv = write(tmp_path, "t,x\n0,1\n", "data.txt")
    assert looks_like_csv(csv) and looks_like_csv(tmp_path / "nothing.csv")
    assert not looks_like_csv(write(tmp_path, DECAY_HEAD))
    with pytest.raises(dl.ModelError, match=r"data\.txt: this looks like a CSV file \(a table "
                                            r"of data\), not a TOML model file"):
        load_model_file(csv)


# --- docs/model-files.md cannot rot -------------------------------------------------------------
DOC = ROOT / "docs" / "model-files.md"


def _toml_blocks(text):
    import re
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_doc_names_every_key_the_parser_accepts():
    from dynlearn.io import MODEL_FILE_KEYS
    doc = DOC.read_text()
    missing = []
    for table, keys in MODEL_FILE_KEYS.items():
        if not table:               # the top-level tables: a section each
            missing += [f"[{k}]" for k in sorted(keys) if f"## `[{k}]`" not in doc]
            continue
        if keys is None:            # a table of names the file chooses: its key is named
            keys = {table.split(".")[-1]}
        missing += [f"{table}: {k}" for k in sorted(keys) if f"`{k}`" not in doc]
    assert not missing, f"docs/model-files.md does not describe {missing}"
    # the values a choice accepts are listed
    from dynlearn.core.neural import ACTIVATIONS
    from dynlearn.data.dataset import TIME_UNITS
    from dynlearn.objective.losses import LOSS_NAMES
    from dynlearn.optimizers import OPTIMIZERS
    from dynlearn.solve import METHODS
    for value in [*ACTIVATIONS, *TIME_UNITS, *LOSS_NAMES, *OPTIMIZERS, *METHODS]:
        assert f'"{value}"' in doc, value


def test_doc_toml_examples_parse(tmp_path):
    """Every ```toml block parses: one with a [model] table on its own, the others added to
    the first (the complete file), as the page says."""
    blocks = _toml_blocks(DOC.read_text())
    assert len(blocks) >= 20 and "[model]" in blocks[0]
    tables = set()
    for i, block in enumerate(blocks):
        text = block if "[model]" in block else blocks[0] + "\n" + block
        try:
            mf = parse_model_text(text, source=tmp_path / "doc.toml")
        except dl.DynlearnError as exc:
            raise AssertionError(f"block {i + 1} of docs/model-files.md: {exc}\n{block}") \
                from None
        tables |= set(mf.raw)
        if "[[fit.stages]]" in block or "optimizer =" in block:
            assert mf.optimizer() is not None
    assert tables == {"model", "initial", "data", "noise", "fit", "simulate"}


# --- the shipped examples ----------------------------------------------------------------------
def test_every_shipped_example_loads_its_data():
    from dynlearn.io.examples import example_files, example_names
    names = example_names()
    assert {"lynx_hare", "sir_influenza", "lv_ude", "cascaded_tanks"} <= set(names)
    for name in names:
        files = example_files(name)
        assert files[0].name == f"{name}.toml" and files[1].name == f"{name}.csv"
        mf = load_model_file(files[0])
        assert mf.data["file"] == files[1]
        data = mf.read_data()
        assert sum(len(e) for e in data) > 5


@pytest.mark.parametrize("name, time, state", [("lynx_hare", "year", "thousand pelts"),
                                               ("sir_influenza", "day", "boys"),
                                               ("cascaded_tanks", "s", "V")])
def test_shipped_examples_carry_units(name, time, state):
    """The measured examples label their time, states, observables and parameters."""
    from dynlearn.io.examples import example_files
    model = load_model_file(example_files(name)[0]).model
    assert model.unit(model.time.name) == time
    assert {model.unit(s.name) for s in model.states} == {state}
    assert {model.unit(o) for o in model.observables} == {state}
    assert all(model.unit(p.name) for p in model.params)


@pytest.mark.parametrize("name", ["lynx_hare", "sir_influenza", "lv_ude", "cascaded_tanks"])
def test_repository_examples_agree_with_the_shipped_ones(name):
    """examples/models/ and dynlearn/bundled/models/ describe the same problems: the same
    tables and keys (comments aside) and the same data, byte for byte; only the data file's
    path differs (the shipped one sits beside its model file)."""
    from dynlearn.io.examples import example_files
    shipped = load_model_file(example_files(name)[0])
    repo = load_model_file(EXAMPLES / f"{name}.toml")
    a = {**shipped.raw, "data": {k: v for k, v in shipped.raw["data"].items() if k != "file"}}
    b = {**repo.raw, "data": {k: v for k, v in repo.raw["data"].items() if k != "file"}}
    assert a == b
    assert shipped.data["file"].read_bytes() == repo.data["file"].read_bytes()


def test_write_example(tmp_path):
    from dynlearn.io.examples import write_example
    written = write_example("Lynx-Hare", tmp_path / "new")
    assert [p.name for p in written] == ["lynx_hare.toml", "lynx_hare.csv"]
    assert load_model_file(written[0]).read_data()[0].t[0] == 1900
    with pytest.raises(dl.OptionError, match=r"lynx_hare\.toml, .*lynx_hare\.csv already "
                                             r"exist; pass --force"):
        write_example("lynx_hare", tmp_path / "new")
    written[1].write_text("changed")
    write_example("lynx_hare", tmp_path / "new", force=True)
    assert written[1].read_text().startswith("year,hare,lynx")
    with pytest.raises(dl.OptionError, match=r"no example named 'nope'; the examples are "
                                             r"\['cascaded_tanks'"):
        write_example("nope", tmp_path)
