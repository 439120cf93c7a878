"""An SIR model fitted to the 1978 influenza outbreak in a boarding school (N = 763).

One boy was infected at day 0 (S = 762, I = 1, R = 0); the data count the boys confined
to bed on days 1 to 14, taken as the infectious compartment I. The transmission rate
``beta`` and recovery rate ``gamma`` are fitted with a Gaussian likelihood whose noise
level is estimated; the basic reproduction number is ``R0 = beta / gamma``.
"""

import numpy as np
import pandas as pd
import sympy as sp
from _common import DATASETS, quick

import dynlearn as dl

S, I, R = sp.symbols("S I R")
beta, gamma = sp.symbols("beta gamma")
N = 763

model = dl.HybridModel(
    states=[S, I, R],
    rhs={S: -beta * S * I / N, I: beta * S * I / N - gamma * I, R: gamma * I},
    params={beta: dl.Parameter(1.0, min=0, transform="log"),    # contacts x infectivity, 1/day
            gamma: dl.Parameter(0.3, min=0, transform="log")},  # recovery rate, 1/day
    observables={"in_bed": I},
    name="SIR (boarding school influenza)",
)

table = pd.read_csv(DATASETS / "boarding_school_influenza_1978.csv")
# day 0: the first case, nobody measured yet (NaN = not fitted); the state is known there
table = pd.concat([pd.DataFrame({"day": [0], "in_bed": [np.nan]}), table], ignore_index=True)
data = dl.Dataset.from_frame(table, time="day", columns=["in_bed"])

result = dl.fit(model, data, loss="gaussian", y0=[N - 1, 1, 0], progress=False,
                optimizer=dl.LevenbergMarquardt(max_iter=3 if quick() else 200))
print(result.summary())
b, g = result.params.loc[["beta", "gamma"], "value"]
cov = result.covariance.loc[["beta", "gamma"], ["beta", "gamma"]].to_numpy()
grad = np.array([1 / g, -b / g ** 2])                 # delta method for R0 = beta / gamma
print(f"\nR0 = {b / g:.2f} +- {np.sqrt(grad @ cov @ grad):.2f}; "
      f"infectious period 1/gamma = {1 / g:.2f} days")

if not quick():
    pred = result.predict(np.arange(0, 15.0))
    print("\nday  in bed  fitted I  95% band")
    for d in range(1, 15):
        row = pred.iloc[d]
        print(f"{d:3d}  {table['in_bed'][d]:6.0f}  {row['I']:8.1f}  "
              f"[{row['in_bed_lower']:.1f}, {row['in_bed_upper']:.1f}]")
