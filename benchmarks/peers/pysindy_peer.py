"""PySINDy on one case of the discovery battery (run in the peers' virtualenv).

Reads a CSV (first column time, then every state), fits the whole right-hand side with a
polynomial library by three PySINDy methods at PySINDy's default settings (STLSQ with
threshold 0.1 and alpha 0.05, the differentiation method named), and prints one JSON line:
``{"methods": {name: {"equations": {state: {term: coefficient}}, "time": seconds}}}``
(``{"error": text}`` for a method that failed). Terms are spelt like sympy (``x*y``,
``x**2``, ``1``).

* ``sindy``: SINDy on derivatives by smoothed finite differences (Savitzky-Golay);
* ``ensemble``: ensemble SINDy (bagging, 20 models, median coefficients), same derivatives;
* ``weak``: weak-form SINDy (integral formulation on 100 subdomains, no derivatives).

Usage::

    python pysindy_peer.py --data case.csv --degree 2 --seed 0
"""

import argparse
import json
import re
import time
import traceback
import warnings

import numpy as np
import pandas as pd
import pysindy as ps


def sympy_name(name: str) -> str:
    """PySINDy's feature name ('x y^2', '1') in sympy's spelling ('x*y**2')."""
    name = name.strip()
    if name in ("", "1"):
        return "1"
    factors = [re.sub(r"\^(\d+)", r"**\1", f) for f in name.split()]
    return "*".join(factors)


def equations(model, states) -> dict:
    coef = np.asarray(model.coefficients())
    names = [sympy_name(n) for n in model.get_feature_names()]
    return {s: {n: float(c) for n, c in zip(names, coef[i]) if c != 0}
            for i, s in enumerate(states)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--degree", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frame = pd.read_csv(args.data)
    t = frame.iloc[:, 0].to_numpy(float)
    states = list(frame.columns[1:])
    X = frame[states].to_numpy(float)

    def smoothed():
        return ps.SINDy(feature_library=ps.PolynomialLibrary(degree=args.degree),
                        optimizer=ps.STLSQ(),
                        differentiation_method=ps.SmoothedFiniteDifference())

    def ensemble():
        return ps.SINDy(feature_library=ps.PolynomialLibrary(degree=args.degree),
                        optimizer=ps.EnsembleOptimizer(opt=ps.STLSQ(), bagging=True),
                        differentiation_method=ps.SmoothedFiniteDifference())

    def weak():
        library = ps.WeakPDELibrary(
            function_library=ps.PolynomialLibrary(degree=args.degree, include_bias=False),
            spatiotemporal_grid=t, include_bias=True)
        return ps.SINDy(feature_library=library, optimizer=ps.STLSQ())

    out = {}
    for name, make in (("sindy", smoothed), ("ensemble", ensemble), ("weak", weak)):
        np.random.seed(args.seed)          # bagging and the weak subdomains draw from it
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = make()
                model.fit(X, t=t, feature_names=states)
            out[name] = {"equations": equations(model, states),
                         "time": time.perf_counter() - t0}
        except Exception as exc:       # noqa: BLE001  (report any failure of the peer)
            out[name] = {"error": f"{type(exc).__name__}: {exc}",
                         "trace": traceback.format_exc(limit=3)}
    print(json.dumps({"methods": out, "pysindy": ps.__version__}))


if __name__ == "__main__":
    main()
