"""torchdiffeq peer: forward/gradient timings and a fit for the dynlearn benchmarks.

Run with the peer venv, e.g.::

    python torchdiffeq_peer.py --problem lv_ude --input lv_ude.npz
"""

import time

import torch
from _peer_common import layers, median_ms, run
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

torch.set_default_dtype(torch.float64)


class Rhs(nn.Module):
    """Right-hand side ``f(t, y)`` of the lv_ude or spiral problem."""

    def __init__(self, problem, data):
        """Take the initial parameters from the loaded problem ``data``."""
        super().__init__()
        self.problem = problem
        params = []
        if problem.startswith("lv_ude"):
            params += [data["alpha"], data["delta"]]
        for w, b in layers(data):
            params += [w, b]
        self.params = nn.ParameterList(nn.Parameter(torch.tensor(p)) for p in params)
        self.n_layers = len(layers(data))
        self.nfe = 0

    def mlp(self, a):
        """Network: rbf hidden layers for lv_ude, tanh for spiral, linear output."""
        act = torch.tanh if self.problem == "spiral" else (lambda z: torch.exp(-z * z))
        offset = 0 if self.problem == "spiral" else 2
        for i in range(self.n_layers):
            w, b = self.params[offset + 2 * i], self.params[offset + 2 * i + 1]
            a = a @ w + b
            if i < self.n_layers - 1:
                a = act(a)
        return a

    def forward(self, t, y):
        """Evaluate ``dy/dt`` (counts evaluations in ``nfe``)."""
        self.nfe += 1
        if self.problem == "spiral":
            return self.mlp(y**3)
        alpha, delta = self.params[0], self.params[1]
        nn_out = self.mlp(y)
        return torch.stack((alpha * y[0] + nn_out[0], -delta * y[1] + nn_out[1]))

    def flat_grad(self):
        """Gradient in the order [alpha, delta, W0, b0, W1, b1, ...], C-ordered."""
        return torch.cat([p.grad.reshape(-1) for p in self.params]).tolist()


def make_loss(rhs, data, adjoint=False):
    """Return ``loss()``: sum of squared residuals over all observations."""
    t = torch.tensor(data["t"])
    y0 = torch.tensor(data["y0"])
    yobs = torch.tensor(data["yobs"])
    kw = {"rtol": float(data["rtol"]), "atol": float(data["atol"]), "method": "dopri5"}
    integrate = odeint_adjoint if adjoint else odeint

    def loss():
        ys = integrate(rhs, y0, t, **kw)
        return torch.sum((ys - yobs) ** 2)

    return loss


def value_and_grad(rhs, loss):
    """Evaluate the loss and fill ``.grad`` of the parameters."""
    rhs.zero_grad()
    value = loss()
    value.backward()
    return value.item()


def gradients(data, args):
    """lv_ude and spiral: forward, backprop gradient and adjoint gradient timings."""
    problem = args.problem
    rhs = Rhs(problem, data)
    loss = make_loss(rhs, data)
    loss_adj = make_loss(rhs, data, adjoint=True)

    def forward():
        with torch.no_grad():
            return loss().item()

    rhs.nfe = 0
    value = forward()  # doubles as warm-up
    nfe_forward = rhs.nfe
    forward_ms, _ = median_ms(forward, args.repeats, warmup=False)

    grad_ms, value_bp = median_ms(lambda: value_and_grad(rhs, loss), args.repeats)
    grad = rhs.flat_grad()

    rhs.nfe = 0
    value_and_grad(rhs, loss_adj)  # doubles as warm-up
    nfe_adjoint = rhs.nfe
    adj_ms, _ = median_ms(
        lambda: value_and_grad(rhs, loss_adj), args.slow_repeats, warmup=False
    )
    grad_adjoint = rhs.flat_grad()

    return {
        "loss": value,
        "loss_backprop": value_bp,  # same point, from the gradient run
        "forward_ms": forward_ms,
        "grad_ms": grad_ms,
        "grad_adjoint_ms": adj_ms,
        "nfe_forward": nfe_forward,
        "nfe_adjoint_total": nfe_adjoint,
        "repeats": args.repeats,
        "slow_repeats": args.slow_repeats,
        "grad": grad,
        "grad_adjoint": grad_adjoint,
    }


def fit(data, args):
    """lv_ude_fit: 200 Adam steps (lr 0.01), then one LBFGS call with max_iter=300."""
    rhs = Rhs("lv_ude", data)
    loss = make_loss(rhs, data)
    params = list(rhs.parameters())
    n_evals = 0

    start = time.perf_counter()
    adam = torch.optim.Adam(params, lr=0.01)
    for _ in range(200):
        adam.zero_grad()
        loss().backward()
        adam.step()
        n_evals += 1

    lbfgs = torch.optim.LBFGS(
        params, lr=1, history_size=100, line_search_fn="strong_wolfe", max_iter=300
    )
    seen = []

    def closure():
        lbfgs.zero_grad()
        value = loss()
        value.backward()
        seen.append(value.item())
        return value

    lbfgs.step(closure)
    total_s = time.perf_counter() - start
    state = lbfgs.state[lbfgs._params[0]]
    n_evals += len(seen)
    with torch.no_grad():
        final = loss().item()
    return {
        "total_s": total_s,
        "compile_s": 0.0,
        "n_evals": n_evals,
        "lbfgs_iters": state.get("n_iter"),
        "lbfgs_evals": len(seen),
        "loss_after_adam": seen[0],
        "final_loss": final,
    }


def main():
    """Dispatch on ``--problem``."""
    solvers = {"lv_ude": gradients, "spiral": gradients, "lv_ude_fit": fit}
    return run(
        __doc__.splitlines()[0], solvers, "torchdiffeq", ["torch", "torchdiffeq"]
    )


if __name__ == "__main__":
    raise SystemExit(main())
