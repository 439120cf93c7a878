"""Reference values from AMICI for collection problems the shared references leave out
(issue #14: Chen_MSB2009 has none, Lang_PLOSComputBiol2024 no gradient).

Reads the JSON lines of ``benchmarks/peers/amici_peer.py`` (run in AMICI's virtualenv,
adjoint gradients for these large models)::

    /work/amici-venv/bin/python benchmarks/peers/amici_peer.py \\
        COLLECTION/Chen_MSB2009/Chen_MSB2009.yaml --tols 1e-10 1e-12 \\
        --repeats 0 --no-forward > chen.json

and writes them in the format of the shared ``benchmark-references.tsv`` (``llh``/``nllh``,
``rtol``/``atol``) and ``benchmark-gradients.json`` (``d llh / d theta`` on the parameters'
scales, the sign of the peer's ``d nllh / d x`` flipped), one row per problem at the
tightest tolerance that gave a gradient, so that ``benchmarks/petab_collection.py
--references OUT.tsv --gradients OUT.json`` compares against them. The row's notes give
the change of the likelihood and the largest relative change of the gradient
(``|g_tight - g_loose| / max(1, |g_tight|)``, the shared references' measure) against the
next looser tolerance, when the peer computed one::

    python benchmarks/amici_references.py chen.json lang.json --out /tmp/ref/extra
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("problem", "n_estimated", "llh", "nllh", "chi2", "rtol", "atol", "t_import_s",
           "t_sim_ms", "t_grad_ms", "amici_version", "notes")


def reference_row(res: dict) -> tuple[list[str], dict]:
    """One references row and the gradient dict of one peer result."""
    evals = res.get("evals") or {}
    done = sorted(((float(tol), e) for tol, e in evals.items()
                   if "grad_adjoint" in e or "grad_forward" in e), key=lambda p: p[0])
    if not done:
        raise SystemExit(f"{res.get('problem')}: no gradient in the peer's output "
                         f"({res.get('error', 'no error reported')})")
    tol, best = done[0]
    kind = "grad_adjoint" if "grad_adjoint" in best else "grad_forward"
    grad = {k: -v for k, v in best[kind].items()}
    notes = [f"amici_peer.py, {kind[5:]} sensitivities"]
    if len(done) > 1:
        loose_tol, loose = done[1]
        gl = loose.get(kind, {})
        dg = max((abs(v - -gl[k]) / max(1.0, abs(v)) for k, v in grad.items() if k in gl),
                 default=float("nan"))
        notes.append(f"vs rtol=atol={loose_tol:g}: |dllh|={abs(best['nllh'] - loose['nllh']):.1e}"
                     f", max rel dgrad={dg:.1e}")
    row = [res["problem"], str(len(res.get("x_names", grad))), repr(-best["nllh"]),
           repr(best["nllh"]), "NA", f"{tol:g}", f"{tol:g}",
           f"{res.get('compile_s') or res.get('cached_compile_s') or float('nan'):.1f}",
           f"{best.get('eval_ms', float('nan')):.3g}", f"{best.get(kind + '_ms'):.3g}",
           res.get("versions", {}).get("amici", "?"), "; ".join(notes)]
    return row, grad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("peer_json", nargs="+", help="amici_peer.py outputs (one JSON line each)")
    ap.add_argument("--out", required=True, help="writes OUT.tsv and OUT.json")
    args = ap.parse_args(argv)
    rows, grads = [], {}
    for path in args.peer_json:
        res = json.loads(Path(path).read_text().strip().splitlines()[-1])
        row, grad = reference_row(res)
        rows.append(row)
        grads[row[0]] = grad
    out = Path(args.out)
    out.with_suffix(".tsv").write_text(
        "\n".join("\t".join(r) for r in [list(COLUMNS), *rows]) + "\n")
    out.with_suffix(".json").write_text(json.dumps(grads, indent=1))
    for r in rows:
        print("\t".join(r[:4] + r[5:6] + r[-1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
