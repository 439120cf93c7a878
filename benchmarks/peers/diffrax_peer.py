"""diffrax (JAX) peer: forward/gradient timings and a fit for the dynlearn benchmarks.

Run with the peer venv, e.g.::

    python diffrax_peer.py --problem lv_ude --input lv_ude.npz
"""

import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _peer_common import layers, median_ms, run

jax.config.update("jax_enable_x64", True)  # before any array is created

MAX_STEPS = 4096  # diffrax's default


def block(tree):
    """Wait until every array in ``tree`` is computed."""
    return jax.block_until_ready(tree)


def flat(tree):
    """Concatenate the leaves of a parameter list in order (C-ordered ravel)."""
    return np.concatenate(
        [np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)]
    )


def initial_params(problem, data):
    """Parameter list: [alpha, delta, W0, b0, W1, b1, ...] (lv) or [W0, b0, ...]."""
    params = []
    if problem.startswith("lv_ude"):
        params += [jnp.asarray(data["alpha"]), jnp.asarray(data["delta"])]
    for w, b in layers(data):
        params += [jnp.asarray(w), jnp.asarray(b)]
    return params


def mlp(weights, a, act):
    """Network with ``act`` on hidden layers and a linear output layer."""
    n = len(weights) // 2
    for i in range(n):
        a = a @ weights[2 * i] + weights[2 * i + 1]
        if i < n - 1:
            a = act(a)
    return a


def rhs_lv(t, y, params):
    """Lotka-Volterra UDE: known linear terms plus an rbf network."""
    alpha, delta = params[0], params[1]
    out = mlp(params[2:], y, lambda z: jnp.exp(-z * z))
    return jnp.stack((alpha * y[0] + out[0], -delta * y[1] + out[1]))


def rhs_spiral(t, y, params):
    """Cubic spiral: tanh network applied to ``y**3``."""
    return mlp(params, y**3, jnp.tanh)


def rhs_robertson(t, y, logk):
    """Robertson kinetics with rate constants ``exp(logk)``."""
    k1, k2, k3 = jnp.exp(logk)
    r1, r2, r3 = k1 * y[0], k2 * y[1] ** 2, k3 * y[1] * y[2]
    return jnp.stack((-r1 + r3, r1 - r3 - r2, r2))


def make_loss(data, rhs, solver, adjoint, t0=None, throw=True):
    """Return ``loss(params) -> (loss, (num_steps, result))``."""
    t = jnp.asarray(data["t"])
    y0 = jnp.asarray(data["y0"])
    yobs = jnp.asarray(data["yobs"])
    t0 = float(data["t"][0]) if t0 is None else t0
    controller = diffrax.PIDController(
        rtol=float(data["rtol"]), atol=float(data["atol"])
    )

    def loss(params):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rhs),
            solver,
            t0=t0,
            t1=float(data["t"][-1]),
            dt0=None,
            y0=y0,
            args=params,
            saveat=diffrax.SaveAt(ts=t),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=MAX_STEPS,
            throw=throw,
        )
        return jnp.sum((sol.ys - yobs) ** 2), (sol.stats["num_steps"], sol.result)

    return loss


def gradients(data, args):
    """lv_ude and spiral: Dopri5 forward, checkpointed and backsolve gradients."""
    rhs = rhs_spiral if args.problem == "spiral" else rhs_lv
    params = block(initial_params(args.problem, data))
    solver = diffrax.Dopri5()
    loss_rc = make_loss(data, rhs, solver, diffrax.RecursiveCheckpointAdjoint())
    loss_bs = make_loss(data, rhs, solver, diffrax.BacksolveAdjoint())

    grad_rc = jax.jit(jax.value_and_grad(loss_rc, has_aux=True))
    start = time.perf_counter()
    block(grad_rc(params))
    first_grad_s = time.perf_counter() - start
    grad_ms, ((_, _), grad) = median_ms(lambda: block(grad_rc(params)), args.repeats)

    forward = jax.jit(loss_rc)
    forward_ms, (value, (num_steps, _)) = median_ms(
        lambda: block(forward(params)), args.repeats
    )

    grad_bs = jax.jit(jax.value_and_grad(loss_bs, has_aux=True))
    start = time.perf_counter()
    block(grad_bs(params))
    first_backsolve_s = time.perf_counter() - start
    backsolve_ms, (_, grad_backsolve) = median_ms(
        lambda: block(grad_bs(params)), args.slow_repeats, warmup=False
    )
    return {
        "loss": float(value),
        "forward_ms": forward_ms,
        "first_grad_s": first_grad_s,
        "grad_ms": grad_ms,
        "first_backsolve_s": first_backsolve_s,
        "grad_backsolve_ms": backsolve_ms,
        "num_steps": int(num_steps),
        "max_steps": MAX_STEPS,
        "repeats": args.repeats,
        "slow_repeats": args.slow_repeats,
        "grad": flat(grad),
        "grad_backsolve": flat(grad_backsolve),
    }


def robertson(data, args):
    """robertson: Kvaerno5 + PID controller, gradient by forward mode (jacfwd)."""
    logk = block(jnp.asarray(data["logk"]))
    t0 = float(data.get("t0", 0.0))
    loss = make_loss(
        data,
        rhs_robertson,
        diffrax.Kvaerno5(),
        diffrax.ForwardMode(),
        t0=t0,
        throw=False,
    )

    grad_fn = jax.jit(jax.jacfwd(loss, has_aux=True))
    start = time.perf_counter()
    _, (_, result) = block(grad_fn(logk))
    first_grad_s = time.perf_counter() - start
    out = {"first_grad_s": first_grad_s, "max_steps": MAX_STEPS}
    if result != diffrax.RESULTS.successful:
        status = (
            "max_steps_reached"
            if result == diffrax.RESULTS.max_steps_reached
            else "solver_failed"
        )
        return {**out, "failed": status}

    grad_ms, (grad, _) = median_ms(lambda: block(grad_fn(logk)), args.repeats)
    forward = jax.jit(loss)
    forward_ms, (value, (num_steps, _)) = median_ms(
        lambda: block(forward(logk)), args.repeats
    )
    return {
        **out,
        "loss": float(value),
        "forward_ms": forward_ms,
        "grad_ms": grad_ms,
        "num_steps": int(num_steps),
        "repeats": args.repeats,
        "grad": np.asarray(grad),
    }


def fit(data, args):
    """lv_ude_fit: 200 Adam steps (lr 0.01), then 300 L-BFGS steps (optax, jitted)."""
    params = block(initial_params("lv_ude", data))
    loss_aux = make_loss(
        data, rhs_lv, diffrax.Dopri5(), diffrax.RecursiveCheckpointAdjoint()
    )

    def loss(p):
        return loss_aux(p)[0]

    adam = optax.adam(0.01)
    lbfgs = optax.lbfgs()  # memory 10, zoom linesearch
    value_and_grad = optax.value_and_grad_from_state(loss)

    def adam_step(p, state):
        value, grad = jax.value_and_grad(loss)(p)
        updates, state = adam.update(grad, state, p)
        return optax.apply_updates(p, updates), state, value

    def lbfgs_step(p, state):
        value, grad = value_and_grad(p, state=state)
        updates, state = lbfgs.update(
            grad, state, p, value=value, grad=grad, value_fn=loss
        )
        n_ls = optax.tree.get(state, "num_linesearch_steps")
        return optax.apply_updates(p, updates), state, value, n_ls

    start = time.perf_counter()
    adam_state = adam.init(params)
    lbfgs_state = lbfgs.init(params)
    adam_c = jax.jit(adam_step).lower(params, adam_state).compile()
    lbfgs_c = jax.jit(lbfgs_step).lower(params, lbfgs_state).compile()
    compile_s = time.perf_counter() - start

    for _ in range(200):
        params, adam_state, _ = adam_c(params, adam_state)
    n_ls_total = 0
    first_value = None
    for _ in range(300):
        params, lbfgs_state, value, n_ls = lbfgs_c(params, lbfgs_state)
        n_ls_total += int(n_ls)  # also synchronises each step
        if first_value is None:
            first_value = float(value)
    block(params)
    total_s = time.perf_counter() - start

    final = float(jax.jit(loss)(params))
    lbfgs_evals = 1 + n_ls_total
    return {
        "total_s": total_s,
        "compile_s": compile_s,
        "n_evals": 200 + lbfgs_evals,
        "lbfgs_iters": 300,
        "lbfgs_evals": lbfgs_evals,
        "loss_after_adam": first_value,
        "final_loss": final,
    }


def main():
    """Dispatch on ``--problem``."""
    solvers = {
        "lv_ude": gradients,
        "spiral": gradients,
        "robertson": robertson,
        "lv_ude_fit": fit,
    }
    packages = ["jax", "jaxlib", "diffrax", "equinox", "optax"]
    return run(__doc__.splitlines()[0], solvers, "diffrax", packages)


if __name__ == "__main__":
    raise SystemExit(main())
