"""The cascaded tanks benchmark: Torricelli physics plus a network for what it misses.

A pump (voltage ``u``) fills an upper tank that drains into a lower tank; the lower tank's
level ``y`` (volts) is measured every 4 s. Torricelli's law gives the known part:

    dx1/dt = -k1 sqrt(x1) + k4 u
    dx2/dt =  k2 sqrt(x1) - k3 sqrt(x2),   y = x2

It misses the overflow of the upper tank at large inputs (water partly falls into the lower
tank) and the sensor's saturation at 10 V. The hybrid model adds a small network of
``(x1, x2, u)`` to both equations. Saturated samples (y = 10.0) are left out of the fit
(censored), and predictions are clipped at 10 V as the sensor does.

Protocol (Schoukens et al., 4TU.ResearchData, DOI 10.4121/12960104; data CC BY-SA 4.0): fit
on the estimation record only, then simulate the test record from its input, starting
from the initial state estimated on the estimation record (both records start from the same
state), and report the RMSE in volts over all 1024 test samples. The test record is never
used for tuning.

Measured: physics only, test RMSE 0.695 V; hybrid (50 network weights, L2 1e-3, 150
Levenberg-Marquardt iterations, ~10 minutes on a busy 2-core machine), estimation RMS error
0.085 V and test RMSE 0.239 V. Published for orientation (Forgione & Piga 2021 and works
cited there): best linear approximation 0.75, neural continuous-time models 0.33-0.40,
grey-box with a physical overflow model 0.18.

Not dynlearn's defaults, on purpose: this script reproduces a benchmark result, so it keeps
the settings that result was measured with (a one-layer network of scaled inputs, L2 1e-3,
150 iterations). With the defaults (16-16 tanh network of (x1, x2, u), y0 estimated) the
test RMSE was 0.366 V (issue 11); for a first contact with hybrid models and recovery, start
from ``examples/lv_ude_recovery.py`` or the README, which use the defaults.
"""

import numpy as np
import pandas as pd
import sympy as sp
from _common import DATASETS, quick

import dynlearn as dl

x1, x2, u = sp.symbols("x1 x2 u")
k1, k2, k3, k4 = sp.symbols("k1 k2 k3 k4")
SAT = 10.0


def load(name, n=None):
    df = pd.read_csv(DATASETS / "cascaded_tanks" / f"cascaded_tanks_{name}.csv")
    return df.iloc[:n] if n else df


def physics_model():
    pos = dict(min=0.0, transform="log")
    return dl.HybridModel(
        states=[x1, x2], inputs=[u],
        rhs={x1: -k1 * sp.sqrt(x1) + k4 * u, x2: k2 * sp.sqrt(x1) - k3 * sp.sqrt(x2)},
        # only the lower level is measured, so the upper level's scale is free: fixing the
        # pump gain k4 fixes it (otherwise k1, k2, k4 and x1(0) are not identifiable)
        params={k1: dl.Parameter(0.05, **pos), k2: dl.Parameter(0.05, **pos),
                k3: dl.Parameter(0.05, **pos), k4: dl.Parameter(0.04, fixed=True)},
        observables={"y": x2}, name="cascaded tanks (Torricelli)")


def hybrid_model(physics: dl.FitResult):
    nn = dl.MLP("nn", inputs=[x1 / 10, x2 / 10, u / 10], outputs=2, hidden=[8],
                activation="tanh", seed=0, scale=0.01)
    vals = physics.params["value"]
    pos = dict(min=0.0, transform="log")
    return dl.HybridModel(
        states=[x1, x2], inputs=[u],
        rhs={x1: -k1 * sp.sqrt(x1) + k4 * u + nn[0] / 10,
             x2: k2 * sp.sqrt(x1) - k3 * sp.sqrt(x2) + nn[1] / 10},
        params={**{k: dl.Parameter(float(vals[k.name]), **pos) for k in (k1, k2, k3)},
                k4: dl.Parameter(float(vals["k4"]), fixed=True)},
        observables={"y": x2}, name="cascaded tanks (hybrid)")


def test_rmse(result, test):
    """Simulate the test record from its input and the estimated initial state."""
    t = test["t"].to_numpy(float)
    pred = result.predict(t, y0=result.y0["data"], inputs=test[["t", "u"]], bands=False)
    yhat = np.minimum(pred["x2"].to_numpy(), SAT)
    return float(np.sqrt(np.mean((yhat - test["y"].to_numpy()) ** 2)))


def main():
    n = 120 if quick() else None
    est, test = load("estimation", n), load("test", n)
    fit_frame = est.assign(y=est["y"].where(est["y"] < SAT))      # censored samples: not fitted
    data = dl.Dataset.from_frame(fit_frame, time="t", input_kind="zoh")
    common = dict(y0="estimate", y0_init={"x1": 5.0}, method="RK45", rtol=1e-6, atol=1e-6,
                  progress=False)
    physics = dl.fit(physics_model(), data,
                     optimizer=dl.LevenbergMarquardt(max_iter=3 if quick() else 100), **common)
    print(physics.summary())
    print(f"physics only: test RMSE {test_rmse(physics, test):.3f} V")
    opt = dl.LevenbergMarquardt(max_iter=3 if quick() else 150)
    hybrid = dl.fit(hybrid_model(physics), data, optimizer=opt, l2=1e-3,
                    **{**common, "y0_init": dict(zip(["x1", "x2"], physics.y0["data"]))})
    print(hybrid.summary())
    rmse = test_rmse(hybrid, test)
    print(f"hybrid: estimation RMS error "
          f"{np.sqrt(np.mean(hybrid.residuals()['residual'] ** 2)):.3f} V, "
          f"test RMSE {rmse:.3f} V  (published: linear 0.75, neural ODE 0.33-0.40, "
          "grey-box with overflow model 0.18)")
    return physics, hybrid, rmse


if __name__ == "__main__":
    main()
