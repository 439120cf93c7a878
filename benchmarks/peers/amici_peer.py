"""AMICI peer: one PEtab problem's likelihood, gradient and multi-start fit with AMICI
(CVODES, compiled C++ per model) and pyPESTO + fides, for benchmarks/petab_vs_amici.py.

Runs under AMICI's own virtualenv (``pip install swig "amici[petab]" pypesto fides``, the
PyPI ``swig``'s ``bin/`` on PATH), never in dynlearn's::

    /work/amici-venv/bin/python amici_peer.py PROBLEM.yaml [--name NAME]
        [--models-dir /tmp/amici_models] [--force-compile] [--compile-only]
        [--tols 1e-12 1e-8] [--repeats 3] [--no-adjoint] [--no-forward]
        [--fit N [--starts starts.json] [--fit-rtol 1e-8 --fit-atol 1e-12]
         [--fit-time 1800] [--seed 0]] [--no-evals]

What it does:

* imports the PEtab problem and compiles the model (``compile_s``: the wall time of
  ``import_petab_problem``, code generation and C++ compilation, or ``null`` when the
  model was already compiled in ``--models-dir/NAME`` and ``--force-compile`` is not
  given: ``cached_compile_s`` then repeats the time recorded when it was compiled);
* at the PEtab nominal parameters and for every rtol = atol of ``--tols``: one likelihood
  (``eval_ms``), one likelihood + gradient with forward sensitivities
  (``grad_forward_ms``) and with adjoint sensitivities (``grad_adjoint_ms``), each the
  median of ``--repeats`` calls after one warm-up call, through ``simulate_petab`` with the
  ExpData objects and the parameter mapping built once (so AMICI's Python overhead per
  call is included, as in a fit); ``nllh`` and the gradients ``d nllh / d x`` (x on the
  parameters' PEtab scales, as dicts by parameter id);
* ``--fit N``: an N-start fit with pyPESTO and fides (the benchmark collection's default:
  ``FidesOptimizer()`` on pyPESTO's AMICI objective with forward sensitivities and the
  Fisher information), from the starts of ``--starts`` (a JSON file ``{"x_names": [...],
  "starts": [[...], ...]}`` on the PEtab scales: the same starts dynlearn gets) or drawn
  uniformly within the bounds; the whole fit stops starting new starts after
  ``--fit-time`` seconds and gives the running start the time left (fides' ``maxtime``).
  Reports ``wall_s`` (the fit alone, the model already compiled), ``setup_s`` (building
  the pyPESTO problem), ``best``, ``n_at_best`` (starts within 0.1 of the best), the
  starts' exit messages and, per start, ``n_fval``/``n_grad`` (pyPESTO's counts: fides
  evaluates every trial point with its gradient and Fisher information, so these count its
  trial points, each one solve with forward sensitivities) and ``time``.

Steady-state sensitivities of preequilibrated problems are integrated
(``SteadyStateSensitivityMode.integrationOnly``), as the collection's references were
made. Prints exactly one JSON line on stdout (everything else goes to stderr): ``peer``,
``problem``, ``versions``, and the results above, or ``error``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer_common import JsonStdout, versions  # noqa: E402

PACKAGES = ("amici", "pypesto", "fides", "petab", "numpy")


def quiet() -> None:
    """AMICI's and pyPESTO's loggers (each sets its own level) to warnings only."""
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("amici", "pypesto", "petab", "fides"):
            logging.getLogger(name).setLevel(logging.WARNING)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("yaml", help="the PEtab problem's YAML file")
    ap.add_argument("--name", help="model name (default: the YAML's folder name)")
    ap.add_argument("--models-dir", default="/tmp/amici_models",
                    help="where compiled models are kept (one folder per name)")
    ap.add_argument("--force-compile", action="store_true",
                    help="compile even when a compiled model exists (to time it)")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-12, 1e-8],
                    help="rtol = atol values of the evaluations")
    ap.add_argument("--repeats", type=int, default=3,
                    help="calls per timing after a warm-up call (0: one call, no warm-up)")
    ap.add_argument("--no-adjoint", action="store_true")
    ap.add_argument("--no-forward", action="store_true",
                    help="no forward-sensitivity gradient (for large models' references)")
    ap.add_argument("--no-evals", action="store_true", help="only the fit")
    ap.add_argument("--max-steps", type=int, default=500_000)
    ap.add_argument("--fit", type=int, default=0, help="number of starts of a fit")
    ap.add_argument("--starts", help="JSON file of the starts (see the notes)")
    ap.add_argument("--fit-rtol", type=float, default=1e-8)
    ap.add_argument("--fit-atol", type=float, default=1e-12)
    ap.add_argument("--fit-time", type=float, default=1800.0)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def model_name(args) -> str:
    name = args.name or Path(args.yaml).resolve().parent.name
    # a Python module name
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


class Session:
    """The PEtab problem, the compiled AMICI model and what simulate_petab needs."""

    def __init__(self, args, out: dict):
        # a compiled model's module refers to amici.sim.sundials without importing it
        import amici.sim.sundials  # noqa: F401
        import petab.v1 as petab
        from amici.importers.petab.v1 import import_petab_problem
        from petab.v1.lint import measurement_table_has_timepoint_specific_mappings

        quiet()
        self.args = args
        pp = petab.Problem.from_yaml(str(args.yaml))
        if measurement_table_has_timepoint_specific_mappings(pp.measurement_df):
            # as the references: AMICI needs them flattened (likelihood unchanged)
            petab.flatten_timepoint_specific_output_overrides(pp)
            out["flattened"] = True
        self.pp = pp
        name = model_name(args)
        mdir = Path(args.models_dir) / name
        stamp = mdir / "dynlearn_compile_time.json"
        compiled = stamp.exists() and not args.force_compile
        t0 = time.perf_counter()
        self.model = import_petab_problem(pp, output_dir=mdir, model_name=name,
                                          compile_=None if compiled else True)
        dt = time.perf_counter() - t0
        if compiled:
            out["compile_s"] = None
            out["cached_compile_s"] = json.loads(stamp.read_text())["compile_s"]
            out["load_s"] = dt
        else:
            out["compile_s"] = dt
            stamp.write_text(json.dumps({"compile_s": dt}))
        self.sim_conds = pp.get_simulation_conditions_from_measurement_df()
        col = petab.PREEQUILIBRATION_CONDITION_ID
        self.preeq = bool(col in self.sim_conds and self.sim_conds[col].notna().any())
        if self.preeq:
            from amici.sim.sundials import SteadyStateSensitivityMode

            self.model.set_steady_state_sensitivity_mode(
                SteadyStateSensitivityMode.integrationOnly)
        out["n_states"] = int(self.model.nx_rdata)
        out["x_names"] = list(pp.x_free_ids)
        out["preequilibration"] = self.preeq

    def solver(self, rtol: float, atol: float, sensi: str | None):
        from amici.sim.sundials import SensitivityMethod, SensitivityOrder

        s = self.model.create_solver()
        s.set_relative_tolerance(rtol)
        s.set_absolute_tolerance(atol)
        s.set_max_steps(self.args.max_steps)
        if sensi is None:
            s.set_sensitivity_order(SensitivityOrder.none)
        else:
            s.set_sensitivity_order(SensitivityOrder.first)
            s.set_sensitivity_method(SensitivityMethod.forward if sensi == "forward"
                                     else SensitivityMethod.adjoint)
        return s

    def evaluations(self, tols, repeats: int, adjoint: bool, forward: bool = True) -> dict:
        """nllh and gradients at the nominal parameters, timed (see the module notes)."""
        from amici.sim.sundials import simulation_status_to_str
        from amici.sim.sundials.petab.v1 import create_edatas, simulate_petab
        from amici.sim.sundials.petab.v1._parameter_mapping import create_parameter_mapping

        mapping = create_parameter_mapping(petab_problem=self.pp,
                                           simulation_conditions=self.sim_conds,
                                           scaled_parameters=True, amici_model=self.model)
        edatas = create_edatas(amici_model=self.model, petab_problem=self.pp,
                               simulation_conditions=self.sim_conds)
        free = set(self.pp.x_free_ids)
        quiet()

        def call(solver):
            r = simulate_petab(self.pp, amici_model=self.model, solver=solver,
                               edatas=edatas, parameter_mapping=mapping,
                               scaled_parameters=True, scaled_gradients=True)
            bad = sorted({simulation_status_to_str(rd.status) for rd in r["rdatas"]
                          if rd.status != 0})
            if bad:
                raise RuntimeError("AMICI simulation failed: " + ", ".join(bad))
            return r

        def timed(solver):
            if repeats > 0:
                call(solver)                   # warm-up
            ts, r = [], None
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                r = call(solver)
                ts.append(time.perf_counter() - t0)
            return 1e3 * statistics.median(ts), r

        out = {}
        for tol in tols:
            entry: dict = {}
            kinds = [("eval", None)] + ([("grad_forward", "forward")] if forward else [])
            if adjoint:
                kinds.append(("grad_adjoint", "adjoint"))
            for key, sensi in kinds:
                try:
                    ms, r = timed(self.solver(tol, tol, sensi))
                except Exception as exc:  # noqa: BLE001 - reported in the JSON
                    entry[f"{key}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    continue
                entry[f"{key}_ms"] = ms
                if sensi is None:
                    entry["nllh"] = -float(r["llh"])
                else:
                    entry[key] = {k: -float(v) for k, v in (r["sllh"] or {}).items()
                                  if k in free}
                    entry.setdefault("nllh", -float(r["llh"]))
            out[f"{tol:g}"] = entry
        return out

    def fit(self, n: int, starts_file: str | None, rtol: float, atol: float,
            fit_time: float, seed: int) -> dict:
        """An n-start pyPESTO + fides fit (see the module notes)."""
        import fides
        import numpy as np
        import pypesto
        import pypesto.optimize as optimize
        from pypesto.petab import PetabImporter

        t0 = time.perf_counter()
        importer = PetabImporter(self.pp, output_folder=str(Path(self.args.models_dir) /
                                                             model_name(self.args)),
                                 model_name=model_name(self.args))
        creator = importer.create_objective_creator()
        solver = self.solver(rtol, atol, "forward")
        objective = creator.create_objective(model=self.model, solver=solver)
        problem = importer.create_problem(objective)
        setup_s = time.perf_counter() - t0
        quiet()
        free_names = [problem.x_names[i] for i in problem.x_free_indices]
        if starts_file:
            spec = json.loads(Path(starts_file).read_text())
            order = [spec["x_names"].index(k) for k in free_names]
            starts = np.asarray(spec["starts"], float)[:n, order]
        else:
            rng = np.random.default_rng(seed)
            lo, hi = np.asarray(problem.lb, float), np.asarray(problem.ub, float)
            starts = lo + rng.random((n, lo.size)) * (hi - lo)
        runs = []
        t_start = time.perf_counter()
        for x0 in starts:
            left = fit_time - (time.perf_counter() - t_start)
            if left <= 0:
                runs.append({"fval": None, "message": "not run: fit time reached"})
                continue
            optimizer = optimize.FidesOptimizer(
                options={fides.Options.MAXTIME: left}, verbose=logging.WARNING)
            problem.set_x_guesses(problem.get_full_vector(x0)[None, :])
            res = optimize.minimize(problem, optimizer, n_starts=1, progress_bar=False,
                                    filename=None)
            r = res.optimize_result.list[0]
            runs.append({"fval": None if r.fval is None else float(r.fval),
                         "message": str(r.message)[:80], "exitflag": r.exitflag,
                         "n_fval": int(r.n_fval or 0), "n_grad": int(r.n_grad or 0),
                         "n_sres": int(r.n_sres or 0), "time": float(r.time or 0.0)})
        wall = time.perf_counter() - t_start
        fvals = [r["fval"] for r in runs if r["fval"] is not None and np.isfinite(r["fval"])]
        best = min(fvals) if fvals else None
        messages: dict = {}
        for r in runs:
            messages[r["message"]] = messages.get(r["message"], 0) + 1
        return {"wall_s": wall, "setup_s": setup_s, "best": best,
                "n_at_best": sum(1 for f in fvals if best is not None and f <= best + 0.1),
                "n_starts": int(n), "statuses": messages, "runs": runs,
                "rtol": rtol, "atol": atol, "pypesto_objective": type(objective).__name__,
                "pypesto": pypesto.__version__}


def main(argv=None) -> int:
    args = parse_args(argv)
    # AMICI's model build calls swig and cmake, installed next to the interpreter
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + \
        os.environ.get("PATH", "")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with JsonStdout() as out:
        res = {"peer": "amici", "problem": model_name(args), "versions": versions(*PACKAGES)}
        try:
            session = Session(args, res)
            if not args.compile_only and not args.no_evals:
                res["evals"] = session.evaluations(args.tols, args.repeats,
                                                   not args.no_adjoint, not args.no_forward)
            if args.fit and not args.compile_only:
                res.update(session.fit(args.fit, args.starts, args.fit_rtol, args.fit_atol,
                                       args.fit_time, args.seed))
        except Exception as exc:  # noqa: BLE001 - reported as JSON
            traceback.print_exc()
            out.emit({"error": f"{type(exc).__name__}: {str(exc)[:300]}", **res})
            return 1
        out.emit(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
