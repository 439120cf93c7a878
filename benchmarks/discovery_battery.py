"""Discovery battery (issue 11): default equation recovery on problems nobody tuned it for.

Every case is a hybrid model, known physics plus a default network (``dl.MLP``: 16-16 tanh,
Glorot initialisation) for the unknown term, fitted and recovered with default settings
only::

    result = dl.fit(model, data, y0="estimate")
    rec = dl.recover(result, library=dl.polynomial_library(2))

A case is a system, a time window, a sampling interval and a noise level; it runs once per
noise seed (the network's initialisation seed is the noise seed). Noise is Gaussian, with a
standard deviation of ``noise`` times each state's standard deviation over the window. A run
succeeds when the recovered structure is exact (the true monomials and no others, in every
network output) and every recovered coefficient is within 10 % of the truth. For
reference, every run also refits the true structure itself to the data (the known physics
plus the true terms with free coefficients): where even that misses a coefficient by more
than 10 %, the noise realisation does not determine it, and no recovery can succeed.

Systems (the known physics stays in the model, with its parameters fixed; the network sees
the states listed):

* ``lv``: Lotka-Volterra; ``alpha*x`` and ``-delta*y`` known, nn(x, y) for ``-0.9*x*y`` and
  ``0.8*x*y`` (the UDE paper's setup).
* ``oscillator``: damped linear oscillator ``x' = v``; nn(x, v) for the whole force
  ``-4*x - 0.4*v``.
* ``sir``: epidemic in population fractions; recovery ``0.4*I`` known, nn(S, I) for the
  incidence ``1.5*S*I`` (``S' = -nn``, ``I' = nn - 0.4*I``, ``R' = 0.4*I``).
* ``abc``: consecutive reactions A -> B -> C; ``1.0*A`` known, nn(A, B) for the second rate
  ``0.6*B``.
* ``fhn``: FitzHugh-Nagumo; ``v - v**3/3 + 0.5`` known, nn(v, w) for ``-w`` and
  ``0.08*v + 0.056 - 0.064*w``.
* ``brusselator``: the autocatalytic step ``x**2*y`` known, nn(x, y) for the feed and
  conversion ``1 - 3.5*x`` and ``2.5*x``.

Usage::

    python benchmarks/discovery_battery.py            # every case, seeds 0, 1, 2
    python benchmarks/discovery_battery.py --quick    # one seed of every second case
    python benchmarks/discovery_battery.py --cases lv-paper,sir-long --seeds 0,1
    python benchmarks/discovery_battery.py --peers /work/peers-venv/bin/python

``--cache DIR`` keeps the fitted hybrid models (the slow part, independent of the recovery)
and reuses them. ``--peers PYTHON`` also runs PySINDy (SINDy with smoothed finite
differences, ensemble SINDy, weak-form SINDy; each on the whole right-hand side, with a
polynomial library of the truth's degree and PySINDy's default threshold) on the same data,
with that interpreter (a virtualenv with ``pysindy`` and ``pandas``: ``python3 -m venv
/work/peers-venv && /work/peers-venv/bin/pip install pysindy pandas``), through
``benchmarks/peers/pysindy_peer.py``. ``--compare`` also runs the alternatives to the
default recovery on each fitted hybrid model (selection through the ODE by AICc instead of
BIC; the network's regression pruned by significance tests, ``select="prune"``; the
regression alone), to measure the default against them.
"""

from __future__ import annotations

import os

# small matrices: OpenBLAS threads only add synchronisation on a busy machine
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sympy as sp  # noqa: E402
from _table import print_table  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import dynlearn as dl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEER_SCRIPT = ROOT / "benchmarks" / "peers" / "pysindy_peer.py"
TOLERANCE = 0.10


# =====================================================================================
# Systems
# =====================================================================================
@dataclass(frozen=True)
class System:
    """A system: its states, the true right-hand side, the hybrid model's known part and
    the network's true terms."""

    name: str
    states: tuple            # state names
    y0: tuple
    rhs: str                 # the truth, one expression per state, ';'-separated
    known: str               # the hybrid model: the known part with nn[i] for the unknown
    inputs: tuple            # what the network sees
    nn_truth: tuple          # per network output {term: coefficient}
    params: dict             # known parameter values (fixed in the hybrid model)

    def symbols(self):
        return {n: sp.Symbol(n) for n in (*self.states, *self.params)}

    def truth_model(self) -> dl.HybridModel:
        syms = self.symbols()
        exprs = [sp.sympify(e, locals=syms) for e in self.rhs.split(";")]
        return dl.HybridModel(states=[syms[s] for s in self.states],
                              params={syms[k]: v for k, v in self.params.items()},
                              rhs=dict(zip([syms[s] for s in self.states], exprs)),
                              name=f"{self.name}-truth")

    def hybrid_model(self, seed: int) -> dl.HybridModel:
        syms = self.symbols()
        nn = dl.MLP("nn", inputs=[syms[v] for v in self.inputs], outputs=len(self.nn_truth),
                    seed=seed)
        slots = {f"nn{i}": sp.Symbol(f"nn{i}") for i in range(len(self.nn_truth))}
        subs = {slots[f"nn{i}"]: nn[i] for i in range(len(self.nn_truth))}
        exprs = [sp.sympify(e.replace("nn[", "nn").replace("]", ""), locals=dict(syms, **slots))
                 .xreplace(subs) for e in self.known.split(";")]
        return dl.HybridModel(states=[syms[s] for s in self.states],
                              params={syms[k]: dl.Parameter(v, fixed=True)
                                      for k, v in self.params.items()},
                              rhs=dict(zip([syms[s] for s in self.states], exprs)),
                              name=f"{self.name}-hybrid")

    def oracle_model(self) -> tuple[dl.HybridModel, list[dict]]:
        """The known physics plus the true terms with free coefficients (started at the
        truth), and per output {term: parameter name}: the best any recovery can do."""
        syms = self.symbols()
        names, subs = [], {}
        for i, terms in enumerate(self.nn_truth):
            names.append({t: f"c{i}_{j}" for j, t in enumerate(terms)})
            subs[sp.Symbol(f"nn{i}")] = sp.Add(*(sp.Symbol(names[i][t]) * sp.sympify(
                t, locals=syms) for t in terms))
        exprs = [sp.sympify(e.replace("nn[", "nn").replace("]", ""), locals=syms).xreplace(subs)
                 for e in self.known.split(";")]
        params = {syms[k]: dl.Parameter(v, fixed=True) for k, v in self.params.items()}
        params.update({sp.Symbol(names[i][t]): float(c)
                       for i, terms in enumerate(self.nn_truth) for t, c in terms.items()})
        model = dl.HybridModel(states=[syms[s] for s in self.states], params=params,
                               rhs=dict(zip([syms[s] for s in self.states], exprs)),
                               name=f"{self.name}-oracle")
        return model, names

    def true_rhs(self) -> dict:
        """{state: {monomial: coefficient}} of the whole right-hand side (for the peers)."""
        syms = self.symbols()
        out = {}
        for s, e in zip(self.states, self.rhs.split(";")):
            expr = sp.expand(sp.sympify(e, locals=syms).subs(
                {syms[k]: v for k, v in self.params.items()}))
            poly = sp.Poly(expr, *[syms[v] for v in self.states])
            out[s] = {str(sp.Mul(*[syms[v] ** p for v, p in zip(self.states, mon)])): float(c)
                      for mon, c in zip(poly.monoms(), poly.coeffs())}
        return out


SYSTEMS = {s.name: s for s in [
    System("lv", ("x", "y"), (0.44249296, 4.6280594),
           "alpha*x - 0.9*x*y; -delta*y + 0.8*x*y", "alpha*x + nn[0]; -delta*y + nn[1]",
           ("x", "y"), ({"x*y": -0.9}, {"x*y": 0.8}), {"alpha": 1.3, "delta": 1.8}),
    System("oscillator", ("x", "v"), (2.0, 0.0),
           "v; -4*x - 0.4*v", "v; nn[0]",
           ("x", "v"), ({"x": -4.0, "v": -0.4},), {}),
    System("sir", ("S", "I", "R"), (0.99, 0.01, 0.0),
           "-1.5*S*I; 1.5*S*I - gamma*I; gamma*I", "-nn[0]; nn[0] - gamma*I; gamma*I",
           ("S", "I"), ({"I*S": 1.5},), {"gamma": 0.4}),
    System("abc", ("A", "B", "C"), (1.0, 0.0, 0.0),
           "-k1*A; k1*A - 0.6*B; 0.6*B", "-k1*A; k1*A - nn[0]; nn[0]",
           ("A", "B"), ({"B": 0.6},), {"k1": 1.0}),
    System("fhn", ("v", "w"), (-1.0, 1.0),
           "v - v**3/3 - w + 0.5; 0.08*v + 0.056 - 0.064*w",
           "v - v**3/3 + 0.5 + nn[0]; nn[1]",
           ("v", "w"), ({"w": -1.0}, {"v": 0.08, "1": 0.056, "w": -0.064}), {}),
    System("brusselator", ("x", "y"), (1.0, 1.0),
           "1 - 3.5*x + x**2*y; 2.5*x - x**2*y", "x**2*y + nn[0]; -x**2*y + nn[1]",
           ("x", "y"), ({"1": 1.0, "x": -3.5}, {"x": 2.5}), {}),
]}


@dataclass(frozen=True)
class Case:
    """A system on a time window [0, t_end], sampled every dt, with relative noise."""

    name: str
    system: str
    t_end: float
    dt: float
    noise: float


CASES = {c.name: c for c in [
    Case("lv-paper", "lv", 3.0, 0.1, 0.05),
    Case("lv-long", "lv", 6.0, 0.25, 0.05),
    Case("lv-noisy", "lv", 4.0, 0.1, 0.10),
    Case("oscillator-short", "oscillator", 5.0, 0.1, 0.05),
    Case("oscillator-long", "oscillator", 12.0, 0.25, 0.02),
    Case("sir-peak", "sir", 12.0, 0.4, 0.05),
    Case("sir-long", "sir", 30.0, 1.0, 0.02),
    Case("abc-dense", "abc", 6.0, 0.1, 0.05),
    Case("abc-sparse", "abc", 8.0, 0.4, 0.10),
    Case("fhn-cycle", "fhn", 40.0, 0.5, 0.05),
    Case("fhn-long", "fhn", 80.0, 1.0, 0.02),
    Case("brusselator-cycle", "brusselator", 10.0, 0.1, 0.05),
    Case("brusselator-noisy", "brusselator", 15.0, 0.25, 0.10),
]}


def case_data(case: Case, seed: int) -> pd.DataFrame:
    """The noisy measurements of a case: time, then every state."""
    system = SYSTEMS[case.system]
    t = np.round(np.arange(0.0, case.t_end + case.dt / 2, case.dt), 10)
    sol = dl.simulate(system.truth_model(), t, system.y0, method="DOP853", rtol=1e-11,
                      atol=1e-12)
    Y = np.asarray(sol.y, float)
    rng = np.random.default_rng(seed)
    Y = Y + case.noise * Y.std(axis=0) * rng.standard_normal(Y.shape)
    return pd.DataFrame({"t": t, **{s: Y[:, i] for i, s in enumerate(system.states)}})


# =====================================================================================
# Scoring
# =====================================================================================
def _term_key(term: str, symbols: dict) -> str:
    """A canonical spelling of a monomial (so 'S*I' and 'I*S' compare equal)."""
    return str(sp.sympify(term, locals=symbols))


def score(found: list[dict], truth: list[dict], symbols: dict) -> dict:
    """Exact structure and the worst relative coefficient error.

    ``found`` and ``truth``: per output ``{term: coefficient}`` (found: non-zero only).
    """
    exact, worst = True, 0.0
    spurious, missing = [], []
    for j, (f, t) in enumerate(zip(found, truth)):
        f = {_term_key(k, symbols): v for k, v in f.items()}
        t = {_term_key(k, symbols): v for k, v in t.items()}
        spurious += [f"{j}:{k}" for k in f if k not in t]
        missing += [f"{j}:{k}" for k in t if k not in f]
        for k, v in t.items():
            if k in f:
                worst = max(worst, abs(f[k] - v) / abs(v))
    exact = not spurious and not missing
    return dict(exact=exact, worst=worst, success=exact and worst <= TOLERANCE,
                spurious=spurious, missing=missing)


def recovered_terms(rec) -> list[dict]:
    """Per network output {term: coefficient} of a Recovery (non-zero terms)."""
    c = rec.coefficients
    return [{str(t): float(v) for t, v in c[o].items() if v != 0} for o in rec.outputs]


def describe(found: list[dict]) -> str:
    return "; ".join(" ".join(f"{v:+.3g}*{k}" if k != "1" else f"{v:+.3g}"
                              for k, v in f.items()) or "0" for f in found)


# =====================================================================================
# One run
# =====================================================================================
VARIANTS = {
    # name: what the variant does with the default recovery's bare regression
    "default": None,                                   # dl.recover(result, library=...)
    "aicc": lambda reg: reg.select(criterion="aicc"),  # selection through the ODE by AICc
    "prune": lambda reg: reg.refit(),                  # the regression, pruned by t tests
    "regression": lambda reg: reg,                     # the network's regression alone
}


def run(case: Case, seed: int, compare: bool = False, peer_python: str | None = None,
        cache: Path | None = None) -> dict:
    """Fit, recover and score one case at one seed (and the peers, if asked)."""
    system = SYSTEMS[case.system]
    data = case_data(case, seed)
    symbols = system.symbols()
    out = dict(case=case.name, seed=seed)
    result = _fitted(case, seed, data, cache, out)
    floor = _noise_floor(case, seed)
    # the data cost, without the L2 penalty the default chooses (result.loss includes it)
    data_cost = float((result.residuals()["residual"] ** 2).sum())
    out["loss_over_floor"] = data_cost / floor if floor > 0 else np.nan
    out["l2"] = float(result.config.get("l2", 0.0))
    out["oracle"] = oracle_error(case, data)
    regression = None
    for name, variant in VARIANTS.items():
        if name != "default" and not compare:
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", dl.DiscoveryWarning)
            try:
                if variant is None:
                    rec = dl.recover(result, library=dl.polynomial_library(2))
                    regression = rec.regression if rec.regression is not None else rec
                else:
                    rec = variant(regression)
            except dl.DynlearnError as exc:
                out[name] = dict(error=str(exc), success=False, exact=False, worst=np.inf,
                                 time=time.perf_counter() - t0, found="error")
                continue
        found = recovered_terms(rec)
        s = score(found, list(system.nn_truth), symbols)
        s.update(time=time.perf_counter() - t0, found=describe(found),
                 warnings=len([w for w in caught if issubclass(w.category,
                                                               dl.DiscoveryWarning)]))
        if getattr(rec, "candidates", None) is not None:
            s["n_candidates"] = len(rec.candidates)
        out[name] = s
    if peer_python:
        out["peers"] = run_peers(case, seed, data, peer_python)
    return out


def _fitted(case: Case, seed: int, data: pd.DataFrame, cache: Path | None, out: dict):
    """The default hybrid fit of a case (from the cache folder when it holds it)."""
    path = cache / f"{case.name}-{seed}.pkl" if cache is not None else None
    if path is not None and path.exists():
        with open(path, "rb") as fh:
            result = pickle.load(fh)
        out.update(fit_time=result.elapsed, fit_status=result.status.value, cached=True)
        return result
    model = SYSTEMS[case.system].hybrid_model(seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dl.fit(model, data, y0="estimate", progress=False)
    out.update(fit_time=time.perf_counter() - t0, fit_status=result.status.value)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:   # without the refit closure, which does not pickle
            pickle.dump(dataclasses.replace(result, refitter=None), fh)
    return result


def oracle_error(case: Case, data: pd.DataFrame) -> float:
    """The worst relative coefficient error of the true structure refitted to the data
    (initial states estimated): above 10 %, no recovery can succeed on this noise."""
    system = SYSTEMS[case.system]
    model, names = system.oracle_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = dl.fit(model, data, y0="estimate", progress=False)
    values = fit.params["value"]
    return max(abs(values[names[i][t]] - c) / abs(c)
               for i, terms in enumerate(system.nn_truth) for t, c in terms.items())


def _noise_floor(case: Case, seed: int) -> float:
    """Sum of squares of the added noise."""
    system = SYSTEMS[case.system]
    clean = case_data(Case(case.name, case.system, case.t_end, case.dt, 0.0), seed)
    noisy = case_data(case, seed)
    cols = list(system.states)
    return float(((noisy[cols].to_numpy() - clean[cols].to_numpy()) ** 2).sum())


# =====================================================================================
# PySINDy peers
# =====================================================================================
def run_peers(case: Case, seed: int, data: pd.DataFrame, python: str) -> dict:
    """Run benchmarks/peers/pysindy_peer.py on the case's data; score each method."""
    system = SYSTEMS[case.system]
    symbols = system.symbols()
    truth = system.true_rhs()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{case.name}-{seed}.csv"
        data.to_csv(path, index=False)
        # the peers regress the whole right-hand side: their library must hold its terms
        degree = max(2, max(sp.total_degree(sp.sympify(t, locals=symbols))
                            for eq in truth.values() for t in eq))
        cmd = [python, str(PEER_SCRIPT), "--data", str(path), "--degree", str(degree),
               "--seed", str(seed)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {}
    for method, res in reply["methods"].items():
        if "error" in res:
            out[method] = dict(success=False, exact=False, worst=np.inf, found="error",
                               error=res["error"])
            continue
        found = [{k: v for k, v in res["equations"][s].items() if v != 0}
                 for s in system.states]
        s = score(found, [truth[st] for st in system.states], symbols)
        s.update(found=describe(found), time=res.get("time", np.nan))
        out[method] = s
    out["_time"] = elapsed
    return out


# =====================================================================================
# Main
# =====================================================================================
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one seed (0) of every second case")
    parser.add_argument("--cases", default=None,
                        help=f"comma-separated case names (default all: {', '.join(CASES)})")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated noise seeds")
    parser.add_argument("--peers", default=None, metavar="PYTHON",
                        help="a python with pysindy and pandas: run the PySINDy peers too")
    parser.add_argument("--compare", action="store_true",
                        help="also run the alternatives to the default recovery")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="keep the fitted hybrid models in DIR and reuse them (the fits "
                             "are the slow part and do not depend on the recovery)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write every run's record to FILE (JSON lines, appended)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)

    if args.cases:
        names = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            parser.error(f"unknown case(s) {unknown}; cases are {list(CASES)}")
    else:
        names = list(CASES)[::2] if args.quick else list(CASES)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]

    records = []
    for name in names:
        for seed in seeds:
            rec = run(CASES[name], seed, compare=args.compare, peer_python=args.peers,
                      cache=Path(args.cache) if args.cache else None)
            records.append(rec)
            d = rec["default"]
            print(f"# {name} seed {seed}: {'ok ' if d['success'] else 'FAIL'} "
                  f"{d['found']}  (fit {rec['fit_time']:.0f} s, "
                  f"data cost/floor {rec['loss_over_floor']:.2f}, l2 {rec.get('l2', 0):.2g}, "
                  f"recover {d['time']:.0f} s)",
                  flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(rec, default=_jsonable) + "\n")
    report(records, args.markdown, args.compare, bool(args.peers))
    return 0


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.bool_):
        return bool(v)
    return str(v)


def report(records: list[dict], markdown: bool, compare: bool, peers: bool) -> None:
    """Per-run table, then success rates per method."""
    header = ["case", "seed", "data cost/floor", "recovered", "exact", "worst coef err",
              "true terms refitted: worst err", "result"]
    rows = [[r["case"], str(r["seed"]), f"{r['loss_over_floor']:.2f}", r["default"]["found"],
             "yes" if r["default"]["exact"] else "no",
             f"{100 * r['default']['worst']:.1f} %" if np.isfinite(r["default"]["worst"])
             else "-", f"{100 * r['oracle']:.1f} %",
             "ok" if r["default"]["success"] else "FAIL"] for r in records]
    print()
    print_table(header, rows, markdown)
    methods = [m for m in VARIANTS if compare or m == "default"]
    rates = [[f"dynlearn {m}", *_rate(records, lambda r, m=m: r[m])] for m in methods]
    if peers:
        names = [k for k in records[0].get("peers", {}) if not k.startswith("_")]
        rates += [[f"pysindy {m}", *_rate(records, lambda r, m=m: r["peers"].get(m, {}))]
                  for m in names]
    print()
    print_table(["method", "exact structure", "structure and coefficients within 10 %",
                 "the same where the true terms refitted are within 10 %"], rates, markdown)


def _rate(records, get) -> list[str]:
    def frac(k, n):
        return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "-"
    n = len(records)
    exact = sum(bool(get(r).get("exact")) for r in records)
    ok = sum(bool(get(r).get("success")) for r in records)
    possible = [r for r in records if r["oracle"] <= TOLERANCE]
    ok_possible = sum(bool(get(r).get("success")) for r in possible)
    return [frac(exact, n), frac(ok, n), frac(ok_possible, len(possible))]


if __name__ == "__main__":
    sys.exit(main())
