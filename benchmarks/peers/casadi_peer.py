"""CasADi/CVODES peer: Robertson loss and sensitivity timings for dynlearn benchmarks.

Run with the peer venv, e.g.::

    python casadi_peer.py --problem robertson --input robertson.npz
"""

import casadi as ca
import numpy as np
from _peer_common import median_ms, run


def robertson(data, args):
    """Loss and d(loss)/d(logk) by CVODES (BDF) forward and adjoint sensitivities."""
    t = np.asarray(data["t"])
    t0 = float(data.get("t0", 0.0))
    yobs = np.asarray(data["yobs"])
    logk = np.asarray(data["logk"])

    x = ca.SX.sym("x", 3)
    p = ca.SX.sym("p", 3)
    k = ca.exp(p)
    r1, r2, r3 = k[0] * x[0], k[1] * x[1] ** 2, k[2] * x[1] * x[2]
    dae = {"x": x, "p": p, "ode": ca.vertcat(-r1 + r3, r1 - r3 - r2, r2)}
    opts = {
        "abstol": float(data["atol"]),
        "reltol": float(data["rtol"]),
        "linear_multistep_method": "bdf",
        "nonlinear_solver_iteration": "newton",
        "max_num_steps": 100000,
    }
    integrator = ca.integrator("F", "cvodes", dae, t0, t.tolist(), opts)

    logk_sym = ca.MX.sym("logk", 3)
    states = integrator(x0=ca.DM(data["y0"]), p=logk_sym)["xf"]  # 3 x len(t)
    loss = ca.sumsqr(states - ca.DM(yobs.T))
    loss_fn = ca.Function("loss", [logk_sym], [loss])
    # J v with v = I (3 forward directions) and J^T 1 (one adjoint direction).
    grad_fwd_fn = ca.Function(
        "grad_fwd", [logk_sym], [ca.jtimes(loss, logk_sym, ca.DM.eye(3), False)]
    )
    grad_adj_fn = ca.Function(
        "grad_adj", [logk_sym], [ca.jtimes(loss, logk_sym, ca.DM.ones(1, 1), True)]
    )

    forward_ms, value = median_ms(lambda: loss_fn(logk), args.repeats)
    grad_ms, grad = median_ms(lambda: grad_fwd_fn(logk), args.repeats)
    adj_ms, grad_adj = median_ms(lambda: grad_adj_fn(logk), args.repeats)
    return {
        "loss": float(value),
        "forward_ms": forward_ms,
        "grad_ms": grad_ms,
        "grad_adjoint_ms": adj_ms,
        "repeats": args.repeats,
        "grad": np.asarray(grad).ravel(),
        "grad_adjoint": np.asarray(grad_adj).ravel(),
    }


def main():
    """Dispatch on ``--problem``."""
    return run(__doc__.splitlines()[0], {"robertson": robertson}, "casadi", ["casadi"])


if __name__ == "__main__":
    raise SystemExit(main())
