"""Lotka-Volterra fitted to the Hudson's Bay Company lynx and hare pelts, 1900-1920.

The populations are positive counts whose errors grow with their size, so the fit uses
residuals on the log scale (``loss="log"``), the standard error model for such data. The
initial populations are estimated with the rates. Run ``python examples/lynx_hare.py``.
"""

import sympy as sp
from _common import DATASETS, quick

import dynlearn as dl

hare, lynx = sp.symbols("hare lynx")
alpha, beta, gamma, delta = sp.symbols("alpha beta gamma delta")

positive = dict(min=0.0, transform="log")
model = dl.HybridModel(
    states=[hare, lynx],
    rhs={hare: alpha * hare - beta * hare * lynx,
         lynx: -gamma * lynx + delta * hare * lynx},
    params={alpha: dl.Parameter(0.5, **positive),     # hare birth rate, 1/year
            beta: dl.Parameter(0.02, **positive),     # predation, 1/(year * thousand lynx)
            gamma: dl.Parameter(0.8, **positive),     # lynx death rate, 1/year
            delta: dl.Parameter(0.02, **positive)},   # lynx growth per hare eaten
    name="Lotka-Volterra (lynx-hare)",
)

data = dl.Dataset.from_csv(DATASETS / "hudson_bay_lynx_hare.csv", time="year")
optimizer = dl.LevenbergMarquardt(max_iter=3 if quick() else 200)
result = dl.fit(model, data, loss="log", y0="estimate", optimizer=optimizer, progress=False,
                n_starts=1 if quick() else 4, seed=0)
print(result.summary())

if __name__ == "__main__" and not quick():
    import numpy as np
    pred = result.predict(np.arange(1900, 1921, 1.0))
    obs = data[0].to_frame("year")
    print("\nyear   hare (data, fit [95% band])         lynx (data, fit)")
    for i in range(0, 21, 4):
        r = pred.iloc[i]
        print(f"{int(r.iloc[0])}  {obs['hare'][i]:6.1f} {r['hare']:6.1f} "
              f"[{r['hare_lower']:5.1f}, {r['hare_upper']:5.1f}]   "
              f"{obs['lynx'][i]:6.1f} {r['lynx']:6.1f}")
