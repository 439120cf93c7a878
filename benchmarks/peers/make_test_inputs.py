"""Write small test inputs (``*.npz``) for the peer scripts.

The real inputs are written by dynlearn's benchmark driver; this generator
only mimics the format so the peers can be run on their own::

    python make_test_inputs.py --outdir /tmp/peer_inputs
"""

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp


def init_mlp(rng, sizes, scale=0.1):
    """Random weights ``{W0, b0, W1, b1, ...}`` with ``W_l`` of shape (n_in, n_out)."""
    out = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        out[f"W{i}"] = scale * rng.standard_normal((n_in, n_out))
        out[f"b{i}"] = scale * rng.standard_normal(n_out)
    return out


def lotka_volterra(noise, rng):
    """Lotka-Volterra data on [0, 3] and a 2-5-5-5-2 network."""
    a, b, c, d = 1.3, 0.9, 0.8, 1.8
    y0 = np.array([0.44249296, 4.6280594])
    t = np.linspace(0.0, 3.0, 31)

    def rhs(_, y):
        return [a * y[0] - b * y[0] * y[1], c * y[0] * y[1] - d * y[1]]

    sol = solve_ivp(rhs, (t[0], t[-1]), y0, t_eval=t, rtol=1e-10, atol=1e-10)
    yobs = sol.y.T
    if noise:
        yobs = yobs + noise * np.mean(yobs, axis=0) * rng.standard_normal(yobs.shape)
    return {
        "t": t,
        "y0": y0,
        "yobs": yobs,
        "rtol": 1e-6,
        "atol": 1e-6,
        "alpha": a,
        "delta": d,
        **init_mlp(rng, [2, 5, 5, 5, 2]),
    }


def spiral(rng):
    """Cubic spiral data on [0, 25] (1000 points) and a 2-50-2 network."""
    a_true = np.array([[-0.1, 2.0], [-2.0, -0.1]])
    y0 = np.array([2.0, 0.0])
    t = np.linspace(0.0, 25.0, 1000)
    sol = solve_ivp(
        lambda _, y: (y**3) @ a_true,
        (t[0], t[-1]),
        y0,
        t_eval=t,
        rtol=1e-10,
        atol=1e-10,
    )
    return {
        "t": t,
        "y0": y0,
        "yobs": sol.y.T,
        "rtol": 1e-7,
        "atol": 1e-9,
        **init_mlp(rng, [2, 50, 2]),
    }


def robertson(rng):
    """Robertson kinetics observed on a log grid, loss point near the truth."""
    logk_true = np.log([0.04, 3e7, 1e4])
    k1, k2, k3 = np.exp(logk_true)

    def rhs(_, y):
        return [
            -k1 * y[0] + k3 * y[1] * y[2],
            k1 * y[0] - k3 * y[1] * y[2] - k2 * y[1] ** 2,
            k2 * y[1] ** 2,
        ]

    t = np.logspace(-4, 5, 40)
    y0 = np.array([1.0, 0.0, 0.0])
    sol = solve_ivp(
        rhs, (0.0, t[-1]), y0, t_eval=t, method="Radau", rtol=1e-10, atol=1e-14
    )
    logk = logk_true + 0.1 * rng.standard_normal(3)
    return {
        "t": t,
        "t0": 0.0,
        "y0": y0,
        "yobs": sol.y.T,
        "rtol": 1e-6,
        "atol": 1e-10,
        "logk": logk,
    }


def main():
    """Write lv_ude, lv_ude_fit, spiral and robertson inputs to ``--outdir``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=Path("."))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    problems = {
        "lv_ude": lotka_volterra(0.0, rng),
        "lv_ude_fit": lotka_volterra(0.05, rng),
        "spiral": spiral(rng),
        "robertson": robertson(rng),
    }
    for name, data in problems.items():
        path = args.outdir / f"{name}.npz"
        np.savez(path, **{k: np.asarray(v, dtype=np.float64) for k, v in data.items()})
        print(path)


if __name__ == "__main__":
    main()
