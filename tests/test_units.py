"""Unit labels: on parameters, states, inputs, observables and time; through model files,
serialisation, result save/load, params.csv, the summary and the axes of every plot."""

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import dynlearn as dl
from dynlearn.core.serialise import model_from_dict, model_to_dict
from dynlearn.errors import ModelError, ParameterTypeError
from dynlearn.io.model_file import model_to_toml, parse_model_text

UNITS_TOML = """
[model]
name = "decay"
states = ["x"]
equations = { x = "-k*x" }

[model.params]
k = { value = 0.5, min = 0.0, transform = "log", unit = "1/s" }

[model.observables]
v = "x"

[model.units]
t = "s"
x = "mV"
"""


def decay_model():
    return dl.HybridModel(["x"], {"x": "-k*x"}, params={"k": dl.Parameter(0.5, unit="1/s")},
                          units={"x": "mV", "t": "s"}, name="decay")


def decay_data():
    t = np.linspace(0.0, 4.0, 9)
    rng = np.random.default_rng(0)
    x = np.exp(-0.8 * t) * (1 + 0.01 * rng.standard_normal(9))
    return dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": x}), time="t")


@pytest.fixture(scope="module")
def unit_fit():
    return dl.fit(decay_model(), decay_data(), progress=False)


def test_parameter_unit():
    p = dl.Parameter(0.2, min=0.0, unit=" 1/day ")
    assert p.unit == "1/day"                                  # stripped
    assert p.replace(value=0.3).unit == "1/day"
    assert "unit='1/day'" in repr(p)
    assert "unit" not in repr(dl.Parameter(0.2))              # unit-less prints as before
    assert dl.Parameter.coerce({"value": 1.0, "unit": "m"}).unit == "m"
    with pytest.raises(ParameterTypeError, match="unit must be a string"):
        dl.Parameter(1.0, unit=3)


def test_model_units():
    x, k = sp.symbols("x k")
    m = dl.HybridModel([x], {x: -k * x}, params={k: 1.0}, units={x: "V", "t": "s", "k": "1/s"},
                       observables={"x": x, "y2": 2 * x})
    assert m.units == {"x": "V", "t": "s", "k": "1/s"}
    assert m.params[k].unit == "1/s"                          # units= reaches the Parameter
    assert m.unit("x") == "V" and m.unit("y0[x]@run2") == "V" and m.unit("y2") == ""
    assert m.label("x") == "x [V]" and m.label("y2") == "y2"
    assert m.with_theta([2.0]).units == m.units
    assert m.with_params(k=dl.Parameter(3.0)).params[k].unit == "1/s"   # the label stays
    # an observable that is a state, without a label of its own, takes the state's
    m2 = dl.HybridModel([x], {x: -k * x}, params={k: 1.0}, units={x: "V"},
                        observables={"level": x})
    assert m2.unit("level") == "V"
    with pytest.raises(ModelError, match="a unit is given for 'q'"):
        dl.HybridModel([x], {x: -k * x}, params={k: 1.0}, units={"q": "V"})
    with pytest.raises(ModelError, match="two units"):
        dl.HybridModel([x], {x: -k * x}, params={k: dl.Parameter(1.0, unit="1/s")},
                       units={"k": "1/min"})


def test_units_round_trip_serialisation_and_model_file():
    m = parse_model_text(UNITS_TOML).model
    assert m.units == {"t": "s", "x": "mV", "k": "1/s"}
    assert m.unit("v") == "mV"
    assert model_from_dict(model_to_dict(m)).units == m.units
    text = model_to_toml(m)
    assert "[model.units]" in text and 'unit = "1/s"' in text
    assert parse_model_text(text).model.units == m.units
    with pytest.raises(ModelError, match=r"\[model.units\] q: a unit for 'q'"):
        parse_model_text(UNITS_TOML + 'q = "s"\n')


def test_units_in_result_tables_summary_and_files(unit_fit, tmp_path):
    r = unit_fit
    assert r.params.loc["k", "unit"] == "1/s"
    s = r.summary()
    assert "units: t [s], x [mV]" in s
    head = next(line for line in s.splitlines() if line.strip().startswith("name"))
    assert head.split()[:3] == ["name", "value", "unit"]
    row = next(line for line in s.splitlines() if line.strip().startswith("k "))
    assert row.split()[2] == "1/s"
    r.save(tmp_path / "res")
    r2 = dl.load_result(tmp_path / "res")
    assert r2.model0.units == r.model0.units
    assert r2.params.loc["k", "unit"] == "1/s"
    pytest.importorskip("matplotlib")
    r.report(tmp_path / "rep", plots=False)
    params = pd.read_csv(tmp_path / "rep" / "params.csv", index_col=0)
    assert params.loc["k", "unit"] == "1/s"


def test_summary_without_units_has_no_unit_column():
    m = dl.HybridModel(["x"], {"x": "-k*x"}, params={"k": 0.5}, name="decay")
    s = dl.fit(m, decay_data(), progress=False).summary()
    assert "units:" not in s
    head = next(line for line in s.splitlines() if line.strip().startswith("name"))
    assert "unit" not in head.split()


def test_units_on_plot_axes(unit_fit):
    pytest.importorskip("matplotlib")
    ax = unit_fit.plot("fit")
    assert ax.get_xlabel() == "t [s]" and ax.get_ylabel() == "x [mV]"
    ax = unit_fit.plot("residuals")
    assert ax.get_xlabel() == "t [s]" and "x [mV]" in ax.get_ylabel()


def test_network_output_takes_the_rate_unit_of_its_state():
    x, y, k = sp.symbols("x y k")
    nn = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[3], seed=0)
    m = dl.HybridModel([x, y], {x: -k * x + 0.5 * nn[0], y: nn[1] * x}, params={k: 1.0},
                       units={x: "V", y: "A", "t": "1/s"})
    assert m.unit("nn[0]") == "V/(1/s)" and m.label("nn[0]") == "nn[0] [V/(1/s)]"
    assert m.unit("nn[1]") == ""            # a factor, not a term: its unit is not known
    nn1 = dl.MLP("nn", inputs=[x], outputs=2, hidden=[3], seed=0)
    m2 = dl.HybridModel([x], {x: -k * x + nn1[0] + nn1[1]}, params={k: 1.0},
                        units={x: "V", "t": "s"})
    assert m2.unit("nn[1]") == "V/s"


def test_units_on_learned_term_axes():
    pytest.importorskip("matplotlib")
    from dynlearn.report.figures import learned_terms_figure
    x, k = sp.symbols("x k")
    nn = dl.MLP("nn", inputs=[x], outputs=1, hidden=[4], seed=0, scale=0.1)
    m = dl.HybridModel([x], {x: -k * x + nn[0]}, params={k: 0.5}, units={x: "mV", "t": "s"})
    traj = dl.simulate(m, np.linspace(0, 2, 20), [1.0]).to_frame()
    labels = {n: m.label(n) for n in ("x", "nn[0]")}
    ax = learned_terms_figure(m, m.theta0, traj, labels=labels).axes[0]
    assert ax.get_xlabel() == "x [mV]" and ax.get_ylabel() == "nn[0] [mV/s]"


def test_time_axis_falls_back_on_the_datas_time_unit():
    """Dates read with time_unit= label the time axis when the model gives time no unit."""
    pytest.importorskip("matplotlib")
    data = decay_data()
    data.time_unit = "day"
    m = dl.HybridModel(["x"], {"x": "-k*x"}, params={"k": 0.5})
    r = dl.fit(m, data, progress=False)
    assert r.plot("fit").get_xlabel() == "t [day]"
