"""A universal differential equation: Lotka-Volterra with the interaction terms learned.

Data: the Lotka-Volterra system (alpha=1.3, beta=0.9, gamma=0.8, delta=1.8) from
y0 = [0.44249296, 4.6280594], sampled at t = 0, 0.25, ..., 5 with 5% noise (as in
Rackauckas et al. 2020, "Universal differential equations for scientific machine
learning"). The hybrid model keeps the known terms ``alpha*x`` and ``-delta*y`` and lets a
2-5-5-5-2 rbf network learn the rest; the physics-only model has the interaction terms
missing. The hybrid model fits the data to the noise level and extrapolates far better.

The fit uses dynlearn's default optimizer for this model (multiple shooting with
Levenberg-Marquardt on the exact residual Jacobian, then a single-shooting polish).

Not dynlearn's defaults, on purpose: the network (2-5-5-5-2 rbf) and the known initial state
are the paper's, to compare with its figures. ``examples/lv_ude_recovery.py`` runs the same
problem with dynlearn's defaults (16-16 tanh network, initial states estimated) and recovers
the equations.
"""

import numpy as np
import pandas as pd
import sympy as sp
from _common import quick

import dynlearn as dl

x, y = sp.symbols("x y")
alpha, beta, gamma, delta = sp.symbols("alpha beta gamma delta")
Y0 = [0.44249296, 4.6280594]
TRUE = {alpha: 1.3, beta: 0.9, gamma: 0.8, delta: 1.8}


def make_data(seed: int = 0, noise: float = 0.05):
    """Noisy samples of the true system; returns the dataset and the noise floor."""
    truth = dl.HybridModel(states=[x, y], params=TRUE,
                           rhs={x: alpha * x - beta * x * y, y: gamma * x * y - delta * y})
    t = np.arange(0.0, 5.0 + 1e-9, 0.25)
    sol = dl.simulate(truth, t, Y0, rtol=1e-10, atol=1e-10)
    rng = np.random.default_rng(seed)
    err = noise * sol.y.mean(axis=0) * rng.standard_normal(sol.y.shape)
    Y = sol.y + err
    return dl.Dataset.from_frame(pd.DataFrame({"t": t, "x": Y[:, 0], "y": Y[:, 1]})), \
        float(np.sum(err ** 2)), truth


def hybrid_model(seed: int = 0, weights=None):
    """The UDE; ``weights`` (flat, MLP layout) overrides the seeded initialisation."""
    nn = dl.MLP("nn", inputs=[x, y], outputs=2, hidden=[5, 5, 5], activation="rbf", seed=seed,
                weights=weights)
    return dl.HybridModel(states=[x, y], params={alpha: 1.3, delta: 1.8},
                          rhs={x: alpha * x + nn[0], y: -delta * y + nn[1]}, name="LV-UDE")


def physics_only():
    return dl.HybridModel(states=[x, y], params={alpha: 1.3, delta: 1.8},
                          rhs={x: alpha * x, y: -delta * y}, name="LV without interactions")


def main():
    data, floor, truth = make_data()
    settings = dict(y0=Y0, rtol=1e-6, atol=1e-6, progress=False)
    optimizer = dl.LevenbergMarquardt(max_iter=2) if quick() else None
    hybrid = dl.fit(hybrid_model(), data, optimizer=optimizer, **settings)
    physics = dl.fit(physics_only(), data,
                     optimizer=dl.LevenbergMarquardt(max_iter=2 if quick() else 100), **settings)
    print(hybrid.summary())
    print(f"\nnoise floor (sum of squares of the added noise): {floor:.4f}")
    print(f"hybrid:       loss {hybrid.loss:.4f} = {hybrid.loss / floor:.2f} x noise floor "
          f"({hybrid.nfev + hybrid.njev} evaluations, {hybrid.elapsed:.2f} s)")
    print(f"physics only: loss {physics.loss:.4f} = {physics.loss / floor:.1f} x noise floor")
    # extrapolation beyond the training window [0, 5]
    t_ext = np.linspace(5.0, 8.0, 31)
    ref = dl.simulate(truth, np.r_[0.0, t_ext], Y0, rtol=1e-10, atol=1e-10).y[1:]
    for name, res in (("hybrid", hybrid), ("physics only", physics)):
        try:
            p = res.predict(np.r_[0.0, t_ext], bands=False)[["x", "y"]].to_numpy()[1:]
            rmse = float(np.sqrt(np.mean((p - ref) ** 2)))
        except dl.SolveError:
            rmse = float("inf")
        print(f"extrapolation RMSE on t in [5, 8], {name:>12}: {rmse:.3f}")
    return hybrid, physics, floor


if __name__ == "__main__":
    main()
