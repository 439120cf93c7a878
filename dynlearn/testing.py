"""Reference problems and gradient checks, shared by tests, benchmarks and examples.

Each ``*_problem`` function returns ``(model, data, theta)`` ready for :func:`dynlearn.loss`.
The small fitting problems (``decay_model``, ``hybrid_decay_model``,
``lotka_volterra_fit_model`` with their data sets) are the ones the test suite fits again
and again; their numbers are part of what the tests assert, so they never change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import sympy as sp

from dynlearn.core.model import HybridModel
from dynlearn.core.neural import MLP
from dynlearn.core.parameters import Parameter
from dynlearn.data.dataset import Dataset
from dynlearn.objective.objective import Objective
from dynlearn.sensitivity import FiniteDifference
from dynlearn.solve import simulate

__all__ = [
    "lotka_volterra_model", "lv_ude_problem", "lotka_volterra_problem", "spiral_problem",
    "robertson_problem", "check_gradient", "relative_error", "central_difference",
    "LV_TRUE", "LV_Y0",
    "decay_model", "hybrid_decay_model", "decay_experiments", "lotka_volterra_fit_model",
    "lotka_volterra_data", "lotka_volterra_experiments", "DECAY_TOML", "write_decay_files",
]

LV_TRUE = {"alpha": 1.3, "beta": 0.9, "gamma": 0.8, "delta": 1.8}
LV_Y0 = (0.44249296, 4.6280594)


def relative_error(a, b) -> float:
    """Norm-wise relative error ``|a - b| / |b|``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def lotka_volterra_model(params: dict | None = None) -> HybridModel:
    """The full Lotka-Volterra model ``x' = alpha x - beta x y``, ``y' = gamma x y - delta y``."""
    x, y = sp.symbols("x y")
    a, b, g, d = sp.symbols("alpha beta gamma delta")
    p = dict(LV_TRUE if params is None else params)
    return HybridModel(states=[x, y], params={a: p["alpha"], b: p["beta"], g: p["gamma"],
                                               d: p["delta"]},
                       rhs={x: a * x - b * x * y, y: g * x * y - d * y}, name="lotka-volterra")


def _simulated(model, t, y0, noise: float = 0.0, seed: int = 0, rtol=1e-10, atol=1e-10,
               t0=None) -> Dataset:
    sol = simulate(model, t, y0, rtol=rtol, atol=atol, t0=t0, method="Radau"
                   if model.name == "robertson" else "DOP853")
    df = sol.to_frame()
    if noise:
        rng = np.random.default_rng(seed)
        for s in sol.state_names:
            df[s] = df[s] + noise * df[s].abs().mean() * rng.standard_normal(len(df))
    return Dataset.from_frame(df, time=sol.time_name)


def lotka_volterra_problem(t=None, noise: float = 0.0, seed: int = 0):
    """Pure physics, 4 parameters; returns (model, data, theta) with theta perturbed 10%."""
    t = np.arange(0, 5.01, 0.25) if t is None else t
    model = lotka_volterra_model()
    data = _simulated(model, t, LV_Y0, noise, seed)
    return model, data, model.theta0 * np.array([1.1, 0.95, 1.05, 0.9])


def lv_ude_problem(t=None, noise: float = 0.0, seed: int = 0, hidden: Sequence[int] = (5, 5, 5),
                   net_seed: int = 0):
    """The LV-UDE of Rackauckas et al.: known ``alpha x``, ``-delta y``, a 2-5-5-5-2 rbf
    network for the rest (89 free parameters); data from the true Lotka-Volterra model."""
    t = np.arange(0, 5.01, 0.25) if t is None else t
    x, y = sp.symbols("x y")
    a, d = sp.symbols("alpha delta")
    nn = MLP("nn", inputs=[x, y], outputs=2, hidden=hidden, activation="rbf", seed=net_seed)
    model = HybridModel(states=[x, y], params={a: LV_TRUE["alpha"], d: LV_TRUE["delta"]},
                        rhs={x: a * x + nn[0], y: -d * y + nn[1]}, name="lv-ude")
    data = _simulated(lotka_volterra_model(), t, LV_Y0, noise, seed)
    return model, data, model.theta0


def spiral_problem(n_times: int = 1000, hidden: int = 50, seed: int = 0, t_end: float = 25.0):
    """Chen et al.'s spiral: data from ``y' = (y**3) A``, a pure neural ODE ``y' = N(y**3)``
    with a 2-``hidden``-2 tanh network initialised like torchdiffeq's demo (normal, std 0.1)."""
    y1, y2 = sp.symbols("y1 y2")
    A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
    true = HybridModel(states=[y1, y2], rhs={y1: A[0, 0] * y1**3 + A[1, 0] * y2**3,
                                             y2: A[0, 1] * y1**3 + A[1, 1] * y2**3},
                       name="spiral")
    t = np.linspace(0.0, t_end, n_times)
    data = _simulated(true, t, (2.0, 0.0))
    rng = np.random.default_rng(seed)
    probe = MLP("nn", inputs=[y1**3, y2**3], outputs=2, hidden=[hidden], activation="tanh")
    w = np.concatenate([np.concatenate([0.1 * rng.standard_normal(W.shape).ravel(),
                                        np.zeros(b.shape)])
                        for W, b in probe.unflatten(probe.weights)])
    nn = MLP("nn", inputs=[y1**3, y2**3], outputs=2, hidden=[hidden], activation="tanh", weights=w)
    model = HybridModel(states=[y1, y2], rhs={y1: nn[0], y2: nn[1]}, name="spiral-node")
    return model, data, model.theta0


def robertson_problem(n_times: int = 40, shift=(0.1, -0.1, 0.05)):
    """Robertson's stiff kinetics with log-rate parameters ``l_i = log k_i``
    (k = 0.04, 3e7, 1e4), observed at ``n_times`` log-spaced times in [1e-5, 1e5] from
    ``t0 = 0``. ``theta`` is the truth shifted by ``shift`` so the gradient is non-zero.
    The data carry ``y0 = [1, 0, 0]`` at ``t0 = 0`` as an explicit first row."""
    y1, y2, y3 = sp.symbols("y1 y2 y3")
    l1, l2, l3 = sp.symbols("l1 l2 l3")
    k1, k2, k3 = sp.exp(l1), sp.exp(l2), sp.exp(l3)
    model = HybridModel(
        states=[y1, y2, y3],
        params={l1: np.log(0.04), l2: np.log(3e7), l3: np.log(1e4)},
        rhs={y1: -k1 * y1 + k3 * y2 * y3, y2: k1 * y1 - k3 * y2 * y3 - k2 * y2**2,
             y3: k2 * y2**2},
        name="robertson")
    t = np.concatenate([[0.0], np.logspace(-5, 5, n_times)])
    data = _simulated(model, t, (1.0, 0.0, 0.0), rtol=1e-12, atol=1e-16)
    return model, data, model.theta0 + np.asarray(shift)


def check_gradient(model, data, theta, sensitivity, reference=None, method: str = "RK45",
                   rtol: float = 1e-10, atol: float = 1e-10, **kw) -> float:
    """Relative error of a gradient method against a reference method (default: 4th-order
    central finite differences at the same tolerances)."""
    g = Objective(model, data, method=method, rtol=rtol, atol=atol,
                  sensitivity=sensitivity, **kw).value_and_grad(theta)[1]
    ref = reference if reference is not None else FiniteDifference(order=4)
    g_ref = Objective(model, data, method=method, rtol=rtol, atol=atol,
                      sensitivity=ref, **kw).value_and_grad(theta)[1]
    return relative_error(g, g_ref)


def central_difference(f: Callable, x, step: float = 1e-6, relative: bool = True,
                       order: int = 2) -> np.ndarray:
    """Central finite differences of ``f`` at ``x``: its gradient, or its Jacobian when ``f``
    returns an array.

    The stencil and its weights are :meth:`dynlearn.FiniteDifference.derivatives`' own (the
    library's one implementation of finite differences, here without bounds or log steps);
    this adds the plain step the tests need and array-valued ``f``.

    Parameters
    ----------
    f : callable
        ``f(x)``, a float or an array of any (fixed) shape.
    x : array_like, shape (n,)
        The point.
    step : float
        The step: ``step * max(|x_i|, 1)`` along coordinate ``i`` when ``relative``, else
        ``step`` itself (``x +- step e_i``, to the bit).
    relative : bool
        Scale the step by the coordinate's size (see ``step``).
    order : {2, 4}
        Accuracy order of the central stencil (``x +- h e_i``; also ``x +- 2 h e_i``).

    Returns
    -------
    ndarray, shape ``np.shape(f(x)) + (n,)``
        ``df/dx_i`` in the last axis (the gradient, shape ``(n,)``, for a scalar ``f``).

    Notes
    -----
    ``f`` runs once at each stencil point, ``order * n`` times in all (never at ``x``, whose
    weight is zero), whatever the size of its value. For a directional derivative along the
    columns of ``D``, difference ``lambda s: f(x + D @ s)`` at ``s = 0`` with
    ``relative=False``.

    Examples
    --------
    >>> central_difference(lambda v: v[0] ** 3 + v[1] ** 2, [2.0, 5.0], step=1e-4,
    ...                    order=4).round(6).tolist()
    [12.0, 10.0]
    >>> central_difference(lambda v: np.array([v[0] * v[1], v[1]]), [2.0, 5.0]).round(6)
    array([[5., 2.],
           [0., 1.]])
    """
    x = np.asarray(x, dtype=float)
    # with an absolute step, difference u -> f(x + u) at u = 0, where the library's
    # relative step max(|u_i|, 1) * step is the step itself
    centre = x if relative else np.zeros_like(x)
    values: dict[bytes, np.ndarray] = {}

    def value(u: np.ndarray) -> np.ndarray:
        key = u.tobytes()
        if key not in values:
            # a copy: f may hand back a buffer it overwrites on its next call
            values[key] = np.array(f(u if relative else x + u), dtype=float)
        return values[key]

    fd = FiniteDifference(step=step, order=order)

    def row(k: int) -> np.ndarray:
        # the centre's weight is zero in a central stencil of the first derivative: f(x) is
        # never needed, so f runs only where a hand-written loop runs it (tests count solves)
        return fd.derivatives(lambda u: float(value(u).flat[k]), centre, f0=0.0)[1]

    # the library differences scalar functions: a Jacobian is taken row by row, every row
    # from the same (remembered) evaluations of f
    rows = [row(0)]
    shape = next(iter(values.values())).shape if values else ()
    rows += [row(k) for k in range(1, math.prod(shape))]
    return np.reshape(rows, shape + (x.size,))


# --- small fitting problems ---------------------------------------------------------------
def decay_model(k0: float = 0.5) -> HybridModel:
    """Exponential decay ``x' = -k x``; ``k`` positive, estimated on a log scale from ``k0``.

    Parameters
    ----------
    k0 : float
        The starting value of the rate ``k``.
    """
    x, k = sp.symbols("x k")
    return HybridModel(states=[x], rhs={x: -k * x},
                       params={k: Parameter(k0, min=0.0, transform="log")})


def hybrid_decay_model(seed: int = 0) -> HybridModel:
    """Decay plus a learned term: ``x' = -k x + nn(x)``, a 1-4-1 tanh network of small
    initial weights (``scale=0.1``) and ``k`` (from 0.5) on a log scale.

    Parameters
    ----------
    seed : int
        Seed of the network's initial weights.
    """
    x, k = sp.symbols("x k")
    nn = MLP("nn", inputs=[x], outputs=1, hidden=[4], seed=seed, scale=0.1)
    return HybridModel(states=[x], rhs={x: -k * x + nn[0]},
                       params={k: Parameter(0.5, min=0, transform="log")})


def decay_experiments(n_experiments: int = 2) -> Dataset:
    """Noise-free experiments ``d0, d1, ...`` (group column ``run``) of a decay with a
    small oscillation the plain decay cannot explain: ``x = (1 + i) exp(-0.8 t) +
    0.1 sin(3 t)`` at 15 times in [0, 4].

    Parameters
    ----------
    n_experiments : int
        How many experiments (``i = 0 .. n_experiments - 1``).
    """
    t = np.linspace(0, 4, 15)
    frames = [pd.DataFrame({"run": f"d{i}", "t": t, "x": (1.0 + i) * np.exp(-0.8 * t)
                            + 0.1 * np.sin(3 * t)}) for i in range(n_experiments)]
    return Dataset.from_frame(pd.concat(frames), group="run")


def lotka_volterra_fit_model(start: Sequence[float] = (1.0, 1.0, 1.0, 1.5)) -> HybridModel:
    """Lotka-Volterra ``x' = alpha x - beta x y``, ``y' = gamma x y - delta y`` set up for
    fitting: ``alpha`` (positive) and ``gamma`` on a log scale, ``beta`` and ``delta`` plain.

    Parameters
    ----------
    start : sequence of 4 floats
        Starting values of ``alpha, beta, gamma, delta`` (the truth is :data:`LV_TRUE`).
    """
    x, y = sp.symbols("x y")
    a, b, c, d = sp.symbols("alpha beta gamma delta")
    return HybridModel(states=[x, y], rhs={x: a * x - b * x * y, y: c * x * y - d * y},
                       params={a: Parameter(start[0], min=0, transform="log"), b: start[1],
                               c: Parameter(start[2], transform="log"), d: start[3]})


def lotka_volterra_data(noise: float = 0.05, seed: int = 0, t=None,
                        y0: Sequence[float] = (0.44, 4.6),
                        observed: Sequence[str] = ("x", "y")) -> Dataset:
    """One experiment of the true Lotka-Volterra system (:data:`LV_TRUE`), solved tightly
    (``rtol = atol = 1e-10``), with Gaussian noise of standard deviation ``noise`` added.

    Parameters
    ----------
    noise : float
        Standard deviation of the noise (absolute).
    seed : int
        Seed of the noise.
    t : array_like, optional
        Observation times; default 41 times in [0, 10].
    y0 : sequence of 2 floats
        The initial state at ``t[0]``.
    observed : sequence of str
        The states written as columns (``"x"``, ``"y"`` or both).
    """
    t = np.linspace(0, 10, 41) if t is None else t
    truth = lotka_volterra_fit_model().with_params(**LV_TRUE)
    sol = simulate(truth, t, y0, rtol=1e-10, atol=1e-10)
    rng = np.random.default_rng(seed)
    Y = sol.y + noise * rng.standard_normal(sol.y.shape)
    cols = {"t": t}
    for i, s in enumerate(("x", "y")):
        if s in observed:
            cols[s] = Y[:, i]
    return Dataset.from_frame(pd.DataFrame(cols))


def lotka_volterra_experiments(n_experiments: int = 3, seed: int = 0,
                               n_times: int = 25) -> Dataset:
    """Experiments ``r0, r1, ...`` (group column ``run``) of the true Lotka-Volterra system
    from random initial states in [0.3, 2] x [2, 5], at ``n_times`` times in [0, 6], solved
    at the default tolerances, with Gaussian noise of standard deviation 0.05.

    Parameters
    ----------
    n_experiments : int
        How many experiments.
    seed : int
        Seed of the initial states and the noise.
    n_times : int
        Observation times per experiment.
    """
    truth = lotka_volterra_fit_model().with_params(**LV_TRUE)
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 6, n_times)
    frames = []
    for i in range(n_experiments):
        y0 = rng.uniform([0.3, 2.0], [2.0, 5.0])
        Y = simulate(truth, t, y0).y
        Y = Y + 0.05 * rng.standard_normal(Y.shape)
        frames.append(pd.DataFrame({"run": f"r{i}", "t": t, "x": Y[:, 0], "y": Y[:, 1]}))
    return Dataset.from_frame(pd.concat(frames), group="run")


DECAY_TOML = """\
[model]
name = "decay"
states = ["x"]
equations = { x = "-k*x" }

[model.params]
k = { value = 0.5, min = 0.0, transform = "log" }

[data]
time = "t"

[fit]
loss = "ls"
maxiter = 20

[simulate]
t = "0:2:0.5"
y0 = { x = 1.0 }
"""
"""A model file (see ``examples/models/``) of the decay ``x' = -k x``, with a short fit
and a simulation grid: the command line's smallest complete input."""


def write_decay_files(folder) -> tuple[Path, Path]:
    """Write ``decay.toml`` (:data:`DECAY_TOML`) and ``decay.csv`` (9 times in [0, 4] of
    ``exp(-0.8 t)`` with 1% multiplicative noise, seed 0) into ``folder``.

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        The model file and the data file.
    """
    folder = Path(folder)
    model = folder / "decay.toml"
    model.write_text(DECAY_TOML)
    t = np.linspace(0.0, 4.0, 9)
    rng = np.random.default_rng(0)
    x = np.exp(-0.8 * t) * (1 + 0.01 * rng.standard_normal(t.size))
    csv = folder / "decay.csv"
    pd.DataFrame({"t": t, "x": x}).to_csv(csv, index=False)
    return model, csv
