"""A neural ODE: the spiral of Chen et al. (2018), learned by a pure network.

True system: dy/dt = (y**3) A with A = [[-0.1, 2], [-2, -0.1]], y0 = [2, 0], observed at
1000 times in [0, 25] (torchdiffeq's ``ode_demo``). The model is a network of ``y**3``
(2-50-2, tanh), as in that demo, with no physics at all. Fitted by multiple shooting
(many short segments, the counterpart of the demo's random mini-batches of time windows)
with Levenberg-Marquardt, then polished on the whole trajectory.

Measured (2-core machine under load): RMS error 1e-4 over the 1000 points after about 500
Levenberg-Marquardt iterations (~4 minutes); with 25 segments and 60 iterations per
continuity weight the fit stalls at an RMS error of 0.26, so the many short pieces matter.

Not dynlearn's defaults, on purpose: the network (2-50-2 of ``y**3``, small initial weights)
is torchdiffeq's demo's, to compare with it, and 1000 points of a long spiral need the many
short segments above.
"""

import numpy as np
import pandas as pd
import sympy as sp
from _common import quick

import dynlearn as dl

y1, y2 = sp.symbols("y1 y2")
A = np.array([[-0.1, 2.0], [-2.0, -0.1]])


def make_data(n: int = 1000):
    truth = dl.HybridModel(states=[y1, y2],
                           rhs={y1: float(A[0, 0]) * y1 ** 3 + float(A[1, 0]) * y2 ** 3,
                                y2: float(A[0, 1]) * y1 ** 3 + float(A[1, 1]) * y2 ** 3})
    t = np.linspace(0.0, 25.0, n)
    sol = dl.simulate(truth, t, [2.0, 0.0], rtol=1e-10, atol=1e-10)
    return dl.Dataset.from_frame(pd.DataFrame({"t": t, "y1": sol.y[:, 0], "y2": sol.y[:, 1]}))


def main():
    n = 100 if quick() else 1000
    data = make_data(n)
    nn = dl.MLP("f", inputs=[y1 ** 3, y2 ** 3], outputs=2, hidden=[50], activation="tanh",
                seed=0, scale=0.1)
    model = dl.HybridModel(states=[y1, y2], rhs={y1: nn[0], y2: nn[1]}, name="spiral NODE")
    if quick():
        opt = dl.MultipleShooting(segments=5, max_iter=2, polish=dl.LevenbergMarquardt(max_iter=2))
    else:
        opt = dl.MultipleShooting(segments=50, max_iter=100,
                                  polish=dl.LevenbergMarquardt(max_iter=300, patience=20,
                                                               ptol=0.01))
    res = dl.fit(model, data, y0=[2.0, 0.0], optimizer=opt, rtol=1e-7, atol=1e-9,
                 progress=not quick())
    print(res.summary())
    r = res.residuals()
    print(f"\nRMS error over the {n} points: {np.sqrt(np.mean(r['residual'] ** 2)):.4f}")
    return res


if __name__ == "__main__":
    main()
