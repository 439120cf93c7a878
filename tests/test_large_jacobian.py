"""Large stiff models: LSODA's banded Jacobian in reordered states (issue 15, sparse
Jacobians for large networks of reactions; dynlearn.core.bandwidth)."""

import functools

import numpy as np
import sympy as sp
from scipy.optimize import OptimizeResult

import dynlearn as dl
import dynlearn.sensitivity.forward as forward_module
import dynlearn.solve as solve_module
from dynlearn.core.bandwidth import (
    BANDED_MIN_STATES,
    REORDER_MIN_STATES,
    StateOrder,
    band_ordering,
    bandwidth,
    lsoda_layout,
)
from dynlearn.testing import relative_error


@functools.cache
def _chain(n: int, shuffled: bool, n_rates: int = 3):
    """A stiff mass-action chain ``A_0 -> ... -> A_{n-1}`` with a bimolecular back
    reaction, its ``n_rates`` forward log-rates used in turn along the chain (rates over
    three decades). Declared in chain order (``J`` tridiagonal), or ``shuffled``: the
    same equations with the states listed in a random order (``J``'s band as wide as the
    matrix). Returns (model, times, y0)."""
    y = sp.symbols(f"y0:{n}")
    lk = sp.symbols(f"lk0:{n_rates}")
    lb = sp.Symbol("lb")
    rhs = {s: sp.S.Zero for s in y}
    for i in range(n - 1):
        r = sp.exp(lk[i % n_rates]) * y[i] - sp.exp(lb) * y[i + 1] ** 2
        rhs[y[i]] -= r
        rhs[y[i + 1]] += r
    params = {s: float(v) for s, v in zip(lk, np.log(10.0) * np.linspace(3.0, 0.0, n_rates))}
    params[lb] = float(np.log(0.5))
    order = np.random.default_rng(1).permutation(n) if shuffled else np.arange(n)
    states = [y[i] for i in order]
    model = dl.HybridModel(states=states, params=params, rhs={s: rhs[s] for s in states})
    y0 = np.array([1.0 if s is y[0] else 0.0 for s in states])
    return model, np.concatenate([[0.0], np.logspace(-2, 1, 12)]), y0


def _by_name(model, Y):
    """Columns of ``Y`` (model order) in chain order ``y0, y1, ...``."""
    idx = {s.name: k for k, s in enumerate(model.states)}
    return Y[:, [idx[f"y{i}"] for i in range(len(model.states))]]


def _normwise(A, B):
    return float(np.max(np.linalg.norm(A - B, axis=1) / np.linalg.norm(B, axis=1)))


def _tridiagonal(n):
    i = np.arange(n)
    return np.abs(i[:, None] - i[None, :]) <= 1


def test_bandwidth_and_reverse_cuthill_mckee_ordering():
    """RCM finds the chain's order back from a shuffled declaration (band 1); a model
    already in a narrow order, and one that no ordering narrows, are left alone."""
    n = 40
    perm = np.random.default_rng(0).permutation(n)
    shuffled = _tridiagonal(n)[np.ix_(perm, perm)]
    assert max(bandwidth(shuffled)) > 10
    order = band_ordering(shuffled)
    assert sorted(order) == list(range(n))
    assert bandwidth(shuffled[np.ix_(order, order)]) == (1, 1)
    assert np.array_equal(band_ordering(_tridiagonal(n)), np.arange(n))
    dense = np.ones((n, n), dtype=bool)
    assert np.array_equal(band_ordering(dense), np.arange(n))
    # lower and upper counted apart
    assert bandwidth(np.tril(dense, 0) & np.triu(dense, -3)) == (3, 0)


def test_layout_rule_picks_banded_only_where_it_pays():
    """The plain solve: dense below BANDED_MIN_STATES states and where even the reordered
    band is wide (a dense Jacobian, a hub species coupled to all others); banded, in
    reordered states, for a large shuffled chain. Stacked copies (sensitivities): always
    banded, reordered where that narrows the band."""
    n = BANDED_MIN_STATES + 20
    assert lsoda_layout(_tridiagonal(BANDED_MIN_STATES - 1)) is None
    assert lsoda_layout(np.ones((n, n), dtype=bool)) is None
    hub = _tridiagonal(n)
    hub[0, :] = hub[:, 0] = True
    assert lsoda_layout(hub) is None
    in_order = lsoda_layout(_tridiagonal(n))
    assert in_order is not None and not in_order.reordered
    assert (in_order.lband, in_order.uband) == (1, 1)
    perm = np.random.default_rng(3).permutation(n)
    order = lsoda_layout(_tridiagonal(n)[np.ix_(perm, perm)])
    assert order is not None and order.reordered and (order.lband, order.uband) == (1, 1)
    m = REORDER_MIN_STATES
    mid = _tridiagonal(m)[np.ix_(perm[perm < m], perm[perm < m])]
    blocks = lsoda_layout(mid, blocks=4)
    assert blocks is not None and blocks.blocks == 4 and (blocks.lband, blocks.uband) == (1, 1)
    # below REORDER_MIN_STATES states: banded in the declared order
    small = _tridiagonal(m - 1)[np.ix_(perm[perm < m - 1], perm[perm < m - 1])]
    blocks = lsoda_layout(small, blocks=4)
    assert blocks is not None and not blocks.reordered
    assert (blocks.lband, blocks.uband) == bandwidth(small) and max(bandwidth(small)) > 1


def test_state_order_maps_vectors_tolerances_and_dense_solutions_back():
    n, blocks = 6, 3
    perm = np.array([3, 0, 5, 1, 4, 2])
    order = StateOrder(_tridiagonal(n)[np.ix_(perm, perm)], perm, blocks)
    x = np.arange(n * blocks, dtype=float)
    z = order.to_solver(x)
    assert np.array_equal(z[:n], x[perm]) and np.array_equal(z[n:2 * n], x[n + perm])
    assert np.array_equal(order.from_solver(z), x)
    atol = np.linspace(1.0, 2.0, n * blocks)
    assert np.array_equal(order.tolerance(atol), atol[order.to_solver(np.arange(n * blocks))])
    assert order.tolerance(1e-8) == 1e-8

    def sol(t):         # a dense solution of the reordered system: z(t) = z t
        return np.multiply.outer(z, np.atleast_1d(t)).squeeze()
    res = order.restore(OptimizeResult(y=np.stack([z, 2 * z], axis=1), sol=sol))
    assert np.array_equal(res.y, np.stack([x, 2 * x], axis=1))
    assert np.array_equal(res.sol(2.0), 2 * x)
    assert np.array_equal(res.sol(np.array([1.0, 3.0])), np.stack([x, 3 * x], axis=1))


def test_plain_lsoda_solve_in_reordered_states_matches_the_dense_path(monkeypatch):
    """A 120-state chain declared in a random order: the plain LSODA solve takes the banded
    path in reordered states, and gives the dense path's solution, and the solution of the
    same chain declared in order, to 1e-10."""
    n = BANDED_MIN_STATES + 20
    model, t, y0 = _chain(n, shuffled=True)
    taken = []

    def recording(pattern, blocks=1):
        order = lsoda_layout(pattern, blocks)
        taken.append(order)
        return order
    monkeypatch.setattr(solve_module, "lsoda_layout", recording)
    kw = dict(method="LSODA", rtol=1e-12, atol=1e-14)
    banded = dl.simulate(model, t, y0, **kw).y
    assert len(taken) == 1 and taken[0] is not None and taken[0].reordered
    assert (taken[0].lband, taken[0].uband) == (1, 1)
    monkeypatch.setattr(solve_module, "lsoda_layout", lambda pattern, blocks=1: None)
    dense = dl.simulate(model, t, y0, **kw).y
    err = _normwise(banded, dense)
    print(f"plain: {err:.1e} against the dense path")
    assert err < 1e-10, err
    ordered_model, _, ordered_y0 = _chain(n, shuffled=False)
    ordered = dl.simulate(ordered_model, t, ordered_y0, **kw).y
    err = _normwise(_by_name(model, banded), _by_name(ordered_model, ordered))
    assert err < 1e-10, err


def test_forward_sensitivities_in_reordered_states_match_the_declared_order(monkeypatch):
    """Forward sensitivities of a shuffled 30-state chain (4 parameters: 150 components,
    past the symbolic system): LSODA's banded block Jacobian in reordered states (band 1)
    gives the gradient of the declared order's band (as wide as the matrix) and of Radau."""
    model, t, y0 = _chain(30, shuffled=True)
    sol = dl.simulate(model, t, y0, method="Radau", rtol=1e-12, atol=1e-14)
    data = dl.Dataset.from_frame(sol.to_frame(), time=sol.time_name)
    theta = model.theta0 + 0.2 * np.cos(np.arange(model.theta0.size))
    taken = []

    def recording(pattern, blocks=1):
        order = lsoda_layout(pattern, blocks)
        taken.append(order)
        return order
    monkeypatch.setattr(forward_module, "lsoda_layout", recording)
    kw = dict(method="LSODA", rtol=1e-11, atol=1e-13, y0=y0,
              sensitivity=dl.ForwardSensitivity())
    value, g = dl.loss_and_grad(model, data, theta, **kw)
    assert taken and all(o.reordered and (o.lband, o.uband) == (1, 1) for o in taken)

    def declared(pattern, blocks=1):
        return StateOrder(pattern, np.arange(pattern.shape[0]), blocks)
    monkeypatch.setattr(forward_module, "lsoda_layout", declared)
    value_d, g_d = dl.loss_and_grad(model, data, theta, **kw)
    assert max(bandwidth(model.compiled.jacobian_pattern())) > 10
    assert abs(value - value_d) <= 1e-8 * abs(value_d)
    ref = dl.loss_and_grad(model, data, theta, **{**kw, "method": "Radau"})[1]
    print(f"forward: {relative_error(g, g_d):.1e} against the declared order, "
          f"{relative_error(g, ref):.1e} against Radau")
    assert relative_error(g, g_d) < 1e-9, relative_error(g, g_d)
    assert relative_error(g, ref) < 1e-8, relative_error(g, ref)


def test_continuous_adjoint_with_a_reordered_forward_pass(monkeypatch):
    """The continuous adjoint's forward pass (dense interpolant mapped back from the
    reordered states) gives the gradient of the dense forward pass and of forward
    sensitivities."""
    model, t, y0 = _chain(BANDED_MIN_STATES + 20, shuffled=True)
    sol = dl.simulate(model, t, y0, method="LSODA", rtol=1e-12, atol=1e-14)
    data = dl.Dataset.from_frame(sol.to_frame(), time=sol.time_name)
    theta = model.theta0 + 0.2 * np.cos(np.arange(model.theta0.size))
    kw = dict(method="LSODA", rtol=1e-10, atol=1e-12, y0=y0)
    g = dl.loss_and_grad(model, data, theta, sensitivity=dl.Adjoint(kind="continuous"),
                         **kw)[1]
    ref = dl.loss_and_grad(model, data, theta, sensitivity=dl.ForwardSensitivity(), **kw)[1]
    monkeypatch.setattr(solve_module, "lsoda_layout", lambda pattern, blocks=1: None)
    g_dense = dl.loss_and_grad(model, data, theta, sensitivity=dl.Adjoint(kind="continuous"),
                               **kw)[1]
    print(f"adjoint: {relative_error(g, g_dense):.1e} against the dense forward pass, "
          f"{relative_error(g, ref):.1e} against forward sensitivities")
    assert relative_error(g, g_dense) < 1e-8, relative_error(g, g_dense)
    assert relative_error(g, ref) < 1e-7, relative_error(g, ref)
