"""Forward (variational) sensitivities.

How it works
------------
Alongside the state, integrate its derivatives with respect to the parameters,
``S = dy/dtheta`` (and, on request, ``dy/dy0``):

.. math:: \\dot S = J(t, y)\\, S + \\partial f/\\partial\\theta, \\qquad S(t_0) = 0
          \\;(\\text{or } I \\text{ for } y_0).

The augmented system has ``n (1 + p)`` components and is solved by the same ``solve_ivp``
method as the state, every component inside the error control, so sensitivities are exact
to the solver's tolerance.

How it is evaluated (the speed of stiff fits depends on it; measurements in
``docs/solvers.md``):

* up to ``SENSITIVITY_SYSTEM_LIMIT`` (80) components, physics-only models: the whole system
  compiled as one symbolic function, and its exact Jacobian for the stiff methods;
* larger physics-only systems: ``f``, ``df/dy`` and ``df/dtheta`` from one compiled call,
  gathered through fixed index maps, ``J S + (df/dtheta) W`` as one fixed-pattern sparse
  product of ``[J | df/dtheta]`` when ``J`` is sparse and the system large, one dense
  product otherwise (:func:`compiled_sensitivity_rhs`);
* models with networks: the vector field's Jacobians, network derivatives in closed form.

Stiff methods beyond the symbolic system receive the block-diagonal Jacobian ``I (x) J``
(the coupling block is omitted: it only affects Newton convergence, not the solution):
sparse for Radau and BDF, banded for LSODA (:func:`dynlearn.core.bandwidth.lsoda_layout`),
whose Fortran core takes no sparse matrix.

:meth:`ForwardSensitivity.directional` integrates the derivatives along given directions
of an outer parameter vector instead (``dy/dx = dy/dtheta Dtheta + dy/dy0 D0``), one column
per direction that moves anything: what dl.petab needs, with far fewer components than
``dy/dtheta`` and ``dy/dy0`` in full.

Use it when parameters are few (cost grows with ``p``) or when the full Jacobian of the
residuals is wanted (Gauss-Newton / Levenberg-Marquardt fits, Fisher information). For
many parameters (networks) prefer :class:`~dynlearn.Adjoint`.

References
----------
.. [1] E. Hairer, S. P. Norsett, G. Wanner, "Solving Ordinary Differential Equations I",
       Sec. I.14 (the variational equation).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sps

from dynlearn.core.bandwidth import lsoda_layout
from dynlearn.core.model import SENSITIVITY_SYSTEM_LIMIT
from dynlearn.errors import OptionError, SolveError
from dynlearn.sensitivity.base import (
    Problem,
    Sensitivity,
    check_gradient_finite,
    observation_cotangents,
)
from dynlearn.solve import STIFF_METHODS, failure_point, integrate

__all__ = ["PRODUCTS", "ForwardSensitivity", "compiled_sensitivity_rhs",
           "jacobian_product", "moving_directions"]

#: how :func:`compiled_sensitivity_rhs` may form ``J S + (df/dtheta) W``
PRODUCTS = ("auto", "dense", "sparse")
#: ``"auto"`` forms the product densely up to this many multiplications (``q m n``: columns,
#: ``n`` + moving parameters, states), whatever ``J``'s sparsity: a few microseconds for
#: numpy's one call, below the scipy.sparse product's own overhead, and single-threaded in
#: OpenBLAS (whose threads made larger products slow on a busy machine)
DENSE_PRODUCT_LIMIT = 100_000


def moving_directions(Dtheta: np.ndarray, D0: np.ndarray | None = None) -> np.ndarray:
    """Which of the directions (columns of ``Dtheta``, shape (n_theta, k), and of ``D0``,
    shape (n, k), when given) move the parameters or the initial state at all: only those
    have sensitivities that are not zero at all times (:meth:`ForwardSensitivity.directional`
    integrates only them)."""
    moves = np.any(np.asarray(Dtheta) != 0, axis=0)
    if D0 is not None:
        moves |= np.any(np.asarray(D0) != 0, axis=0)
    return moves


def _check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise OptionError(f"product must be 'auto', 'dense' or 'sparse', not {product!r}")


def jacobian_product(pattern: np.ndarray):
    """A function ``(J, ST) -> ST @ J.T`` for Jacobians ``J`` with the structural
    ``pattern`` (shape (n, n)).

    A Jacobian with at most a quarter of its entries structurally non-zero (a reaction
    network's) is multiplied as a sparse matrix of fixed pattern: fewer operations, and no
    BLAS call, whose threads, on a machine busier than its cores, made a 100 x 100 product
    cost 1.6 ms instead of 0.05 ms (the gradient of benchmarks/bench_stiff.py's 100-state
    chain went from 24 s to 1.3 s). Denser Jacobians use the dense product.
    """
    n = pattern.shape[0]
    rows, cols = np.nonzero(pattern)
    if 4 * rows.size > n * n:
        return lambda J, ST: ST @ J.T
    # CSR of the pattern, with the position of every stored entry in (rows, cols)
    Js = sps.csr_matrix((np.arange(1.0, rows.size + 1), (rows, cols)), shape=(n, n))
    order = Js.data.astype(np.intp) - 1
    r, c = rows[order], cols[order]

    def product(J, ST):
        Js.data[:] = J[r, c]
        return (Js @ ST.T).T
    return product


def compiled_sensitivity_rhs(vf, q: int, W: np.ndarray | None, product: str = "auto"):
    """The right-hand side ``z -> [f, J S + (df/dtheta) W]`` of the forward-sensitivity
    system of a physics-only model, ``z = [y, S_1, ..., S_q]``, from one compiled call of
    ``[f, df/dy, df/dtheta]`` (:meth:`~dynlearn.core.model.CompiledModel.rhs_and_jacobians`).

    How the per-call work is kept small (a stiff gradient makes some 10^4-10^6 calls):
    the compiled entries (:meth:`~dynlearn.core.symbolic.CompiledExprs.values`) are
    gathered through index maps made once, with no full ``[f, J, df/dtheta]`` array built
    and split, into

    * ``"sparse"``: a matrix ``A = [J | df/dtheta_u]`` of fixed sparse pattern, ``u`` the
      parameters ``W`` moves, and one product ``A [S; W_u]``, the constant block ``W_u``
      kept in a preallocated buffer;
    * ``"dense"``: ``A^T`` as a dense array and one product ``[S^T | W_u^T] A^T`` written
      into the output.

    ``"auto"`` takes the dense form for Jacobians with more than a quarter of their
    entries structurally non-zero (:func:`jacobian_product`'s rule) and for products of at
    most :data:`DENSE_PRODUCT_LIMIT` multiplications, else the sparse one. Side by side
    (``benchmarks/forward_rhs.py``, session 13): 9.1 instead of 12.1 us a call on
    Elowitz_Nature2000 (8 states, 18 directions), 8.6 instead of 11.8 on
    Raia_CancerResearch2011, 19.4 instead of 22.1 on a 30-state chain, and the sparse
    product's 72 us where the dense one took 125 (a 100-state chain). The two sum in
    another order, so the adaptive solver's steps, and the gradient, differ at the
    level of the solver's error (2.6e-6 relative on Elowitz at rtol 1e-8).

    Parameters
    ----------
    vf : VectorField
        Of a model without networks.
    q : int
        Number of sensitivity columns.
    W : ndarray, shape (n_theta, q), or None
        ``dtheta/d(column)``; ``None``: the identity on the first ``n_theta`` columns and
        nothing on the others (``dy/d[theta, y0]``; ``q >= n_theta``).
    product : {"auto", "dense", "sparse"}
        How to form the product (``"auto"``: see above).

    Returns
    -------
    callable
        ``fun(t, z)`` returning a new array of ``n (1 + q)`` components.
    """
    _check_product(product)
    n, P = vf.n, vf.n_theta
    fjp = vf.c.rhs_and_jacobians()
    nz = fjp.nonzero
    nc = nz.size
    # where every output of [f, J, df/dtheta] sits among the compiled values (nc: nowhere,
    # a structural zero)
    pos = np.full(fjp.size, nc, dtype=np.intp)
    pos[nz] = np.arange(nc)
    fpos = pos[:n]
    Jpos = pos[n:n + n * n].reshape(n, n)
    Gpos = pos[n + n * n:].reshape(n, -1)
    if W is None and q < P:
        raise OptionError(f"W=None needs q >= n_theta = {P} columns, not {q}")
    Wm = np.eye(P, q) if W is None else np.asarray(W, dtype=float)
    used = np.flatnonzero(np.any(Wm != 0, axis=1))
    m = n + used.size
    Apos = np.concatenate([Jpos, Gpos[:, used]], axis=1)
    Jpat = vf.c.jacobian_pattern()
    pattern = Apos < nc
    pattern[:, :n] &= Jpat
    rows, cols = np.nonzero(pattern)
    nnz = rows.size
    if product == "auto":
        dense = (4 * int(np.count_nonzero(Jpat)) > n * n
                 or q * m * n <= DENSE_PRODUCT_LIMIT)
    else:
        dense = product == "dense"
    f_all = bool(np.all(fpos < nc))
    f_rows = np.flatnonzero(fpos < nc)
    f_src = fpos[f_rows]
    size = n * (q + 1)
    args = (vf.pl, [])
    inputs = vf.inputs

    def values(t, y):
        return fjp.values([t], y.tolist(), *args, inputs(t).tolist() if inputs else [])

    def start(vals):
        out = np.empty(size)
        if f_all:
            out[:n] = vals[fpos]
        else:
            out[:n] = 0.0
            out[f_rows] = vals[f_src]
        return out

    if dense:
        # A^T = [J | df/dtheta_u]^T as a dense array filled through its compiled entries, and
        # dS^T = [S^T | W_u^T] A^T as one product into the output
        At = np.zeros((m, n))
        At_flat = At.reshape(-1)
        t_pos = cols * n + rows
        t_src = Apos[rows, cols]
        Xt = np.zeros((q, m))       # [S^T | W_u^T], the constant block kept
        Xt[:, n:] = Wm[used].T

        def fun(t, z):
            vf.nfev += 1
            vals = values(t, z[:n])
            out = start(vals)
            At_flat[t_pos] = vals[t_src]
            Xt[:, :n] = z[n:].reshape(q, n)
            np.matmul(Xt, At, out=out[n:].reshape(q, n))
            return out
        return fun

    # CSR of the pattern, with the position of every stored entry among the compiled values
    As = sps.csr_matrix((np.arange(1.0, nnz + 1), (rows, cols)), shape=(n, m))
    order = As.data.astype(np.intp) - 1
    gather = Apos[rows[order], cols[order]]
    X = np.zeros((m, q))        # [S; W_u], contiguous as the sparse product wants it
    X[n:] = Wm[used]
    data = As.data

    def fun(t, z):
        vf.nfev += 1
        vals = values(t, z[:n])
        out = start(vals)
        data[:] = vals[gather]
        X[:n] = z[n:].reshape(q, n).T
        out[n:].reshape(q, n)[:] = (As @ X).T
        return out
    return fun


class ForwardSensitivity(Sensitivity):
    """Gradients from forward sensitivity equations (exact to solver tolerance).

    Parameters
    ----------
    sparse_jacobian : bool or None
        For Radau and BDF, give the augmented Jacobian as a sparse matrix (default: when the
        augmented system has more than 60 components). LSODA, whose Fortran core takes no
        sparse matrix, gets it in banded storage, in reordered states where that narrows
        the band (:func:`dynlearn.core.bandwidth.lsoda_layout`).
    product : {"auto", "dense", "sparse"}
        How physics-only models beyond the symbolic system form ``J S + (df/dtheta) W``
        each step (:func:`compiled_sensitivity_rhs`); the same values to rounding.
    """

    def __init__(self, sparse_jacobian: bool | None = None, product: str = "auto"):
        _check_product(product)
        self.sparse_jacobian = sparse_jacobian
        self.product = product

    def trajectories(self, prob: Problem, wrt_y0: bool = False):
        """States and sensitivities at the observation times.

        Returns
        -------
        Y : ndarray, shape (m, n)
        S : ndarray, shape (m, n, q)
            dy/d[theta, y0] with ``q = n_theta (+ n when wrt_y0)``.
        """
        return self._trajectories(prob, wrt_y0)

    def _trajectories(self, prob: Problem, wrt_y0: bool, weights: np.ndarray | None = None):
        vf = prob.vf
        n, P = vf.n, vf.n_theta
        q = P + (n if wrt_y0 else 0)
        S0 = np.zeros((q, n))
        if wrt_y0:
            S0[P:] = np.eye(n)
        # small systems: one symbolic function with its exact Jacobian (see the limit's notes)
        symbolic = not vf.c.nets and n * (q + 1) <= SENSITIVITY_SYSTEM_LIMIT
        return self._integrate(prob, S0, None, symbolic=symbolic, wrt_y0=wrt_y0,
                               weights=weights)

    def directional(self, prob: Problem, Dtheta: np.ndarray, D0: np.ndarray | None = None):
        """States and their derivatives along ``k`` directions of an outer parameter vector
        ``x``, given ``dtheta/dx`` and ``dy0/dx``: ``S = dy/dtheta Dtheta + dy/dy0 D0``.

        Integrates ``S' = J S + (df/dtheta) Dtheta`` with ``S(t0) = D0`` directly: ``n (1 +
        k')`` components, ``k'`` the directions that move ``theta`` or ``y0`` at all,
        instead of ``n (1 + n_theta + n)`` for all of ``dy/dtheta`` and ``dy/dy0`` followed
        by the chain rule. The result is the same to the solver's tolerance (a linear
        combination of the same linear equations).

        Parameters
        ----------
        prob : Problem
        Dtheta : ndarray, shape (n_theta, k)
            ``dtheta/dx``.
        D0 : ndarray, shape (n, k), optional
            ``dy0/dx`` (zero when omitted).

        Returns
        -------
        Y : ndarray, shape (m, n)
        S : ndarray, shape (m, n, k)
            ``dy/dx`` at the observation times.
        """
        vf = prob.vf
        n, P = vf.n, vf.n_theta
        Dtheta = np.asarray(Dtheta, dtype=float).reshape(P, -1)
        k = Dtheta.shape[1]
        wrt_y0 = D0 is not None
        if not vf.c.nets and n * (P + (n if wrt_y0 else 0) + 1) <= SENSITIVITY_SYSTEM_LIMIT:
            # small enough for the whole system compiled with its exact Jacobian: faster
            # than fewer components evaluated with numpy (see the module notes). Each
            # column dy/dtheta_j (dy/dy0_i) is held to the tolerance in the directions'
            # units: atol divided by the largest |dtheta_j/dx| (|dy0_i/dx|), as if the
            # directions themselves were integrated (1 where nothing moves it)
            w = np.abs(Dtheta).max(axis=1, initial=0.0)
            if wrt_y0:
                w = np.concatenate([w, np.abs(np.asarray(D0, dtype=float).reshape(n, k))
                                    .max(axis=1, initial=0.0)])
            w = np.where((w > 0) & np.isfinite(w), w, 1.0)
            Y, S = self._trajectories(prob, wrt_y0, w)
            out = S[:, :, :P] @ Dtheta
            if wrt_y0:
                out += S[:, :, P:] @ np.asarray(D0, dtype=float).reshape(n, k)
            return Y, out
        if D0 is not None:
            D0 = np.asarray(D0, dtype=float).reshape(n, k)
        cols = np.flatnonzero(moving_directions(Dtheta, D0))
        # a direction that moves neither theta nor y0 has S = 0 at all times: not integrated
        S0 = np.zeros((cols.size, n)) if D0 is None else np.ascontiguousarray(D0[:, cols].T)
        Y, Sk = self._integrate(prob, S0, np.ascontiguousarray(Dtheta[:, cols]),
                                symbolic=False, wrt_y0=False)
        S = np.zeros((Y.shape[0], n, k))
        S[:, :, cols] = Sk
        return Y, S

    def _integrate(self, prob: Problem, S0: np.ndarray, W: np.ndarray | None, symbolic: bool,
                   wrt_y0: bool, weights: np.ndarray | None = None):
        """Integrate ``[y, S]`` with ``S' = J S + (df/dtheta) W`` from ``S(t0) = S0`` (shape
        (q, n), one row per column of ``S``). ``W`` is ``dtheta/d(column)``, shape
        (n_theta, q); ``None`` means the identity on the first ``n_theta`` columns and
        nothing on the others (``dy/d[theta, y0]``), the only case the ``symbolic`` system
        (compiled for ``wrt_y0``) implements. ``weights`` (q,): column ``j`` gets the
        states' ``atol`` divided by ``weights[j]`` (default 1)."""
        vf = prob.vf
        n, P = vf.n, vf.n_theta
        q = S0.shape[0]
        t_obs, t0 = prob.t_obs, prob.t0
        m = t_obs.size
        z0 = np.concatenate([prob.y0, S0.ravel()])
        if t_obs[-1] == t0:
            return np.tile(prob.y0, (m, 1)), np.broadcast_to(S0.T, (m, n, q)).copy()

        def forcing(dST, Jt):
            # dST (q, n) += ((df/dtheta) W).T
            if W is None:
                dST[:P] += Jt.T
            else:
                dST += (Jt @ W).T
            return dST

        if symbolic:
            fsym, jsym, _ = vf.c.sensitivity_system(wrt_y0)
            pl, inputs = vf.pl, vf.inputs

            def fun(t, z):
                return fsym([t], z.tolist(), pl, [], inputs(t).tolist() if inputs else [])
        elif not vf.c.nets:
            # f, J and df/dtheta from one compiled call (shared subexpressions once), then
            # one product (see compiled_sensitivity_rhs)
            fun = compiled_sensitivity_rhs(vf, q, W, self.product)
        else:
            product = jacobian_product(vf.c.jacobian_pattern())

            def fun(t, z):
                y = z[:n]
                J, Jt = vf.jac_and_theta_jac(t, y)
                dST = forcing(product(J, z[n:].reshape(q, n)), Jt)
                return np.concatenate([vf.fun(t, y), dST.ravel()])

        kw = dict(method=prob.method, rtol=prob.rtol, **prob.options)
        atol = np.asarray(prob.atol, dtype=float)
        # dy_i/dtheta_k shares the absolute tolerance of y_i (over the column's weight)
        if weights is not None:
            base = np.broadcast_to(atol, (n,))
            kw["atol"] = np.concatenate([base, (base / np.reshape(weights, (q, 1))).ravel()])
        else:
            kw["atol"] = np.tile(atol, q + 1) if atol.ndim else float(atol)
        jsym = vf.c.sensitivity_system(wrt_y0)[1] if symbolic else None
        order = None
        if prob.method in STIFF_METHODS and jsym is not None:
            def jac(t, z):
                return jsym([t], z.tolist(), pl, [], inputs(t).tolist() if inputs else [])
            kw["jac"] = jac
        elif prob.method == "LSODA":
            # banded I (x) J, in reordered states where that narrows J's band
            order = lsoda_layout(vf.c.jacobian_pattern(), q + 1)
        elif prob.method in STIFF_METHODS:
            sparse = self.sparse_jacobian if self.sparse_jacobian is not None else n * (q + 1) > 60
            eye = sps.identity(q + 1, format="csc") if sparse else np.eye(q + 1)

            def jac(t, z):
                J = vf.jac(t, z[:n])
                return sps.kron(eye, J, format="csc") if sparse else np.kron(eye, J)
            kw["jac"] = jac
        names = [s.name for s in vf.model.states]
        if order is not None:
            fun, z0, names = order.prepare(fun, z0, kw, vf.jac, names)
        res = integrate(fun, (t0, t_obs[-1]), z0, t_obs, vf.breakpoints(t0, t_obs[-1]),
                        where=prob.where, names=names, **kw)
        if order is not None:
            order.restore(res)
        if res.status != 0:
            raise SolveError(f"the {prob.method} solver failed{prob.where} while integrating "
                             f"sensitivities {failure_point(res, t0)}: {res.message}",
                             status=res.status, solver_message=res.message)
        Z = res.y.T
        return Z[:, :n], np.swapaxes(Z[:, n:].reshape(m, q, n), 1, 2)

    def observable_jacobian(self, prob: Problem, wrt_y0: bool = False):
        """Observables at ``t_obs`` and their derivatives.

        Returns
        -------
        H : ndarray, shape (m, n_obs)
        dH : ndarray, shape (m, n_obs, q)
            d observables / d[theta, y0].
        """
        vf = prob.vf
        Y, S = self.trajectories(prob, wrt_y0)
        H, Hy, Hp = vf.observe_batch(prob.t_obs, Y, derivatives=True)
        dH = Hy @ S
        if vf.n_free:
            dH[:, :, :vf.n_free] += Hp
        return H, dH

    def loss_and_grad(self, prob: Problem, wrt_y0: bool = False):
        """``(value, dL/dtheta, dL/dy0 or None)`` for one experiment."""
        vf = prob.vf
        Y, S = self.trajectories(prob, wrt_y0)
        with np.errstate(all="ignore"):     # a non-finite gradient is refused below
            value, Gy, g = observation_cotangents(vf, prob.t_obs, Y, prob.obs_loss)
            full = np.einsum("mn,mnq->q", Gy, S)
            g = g + full[:vf.n_theta]
        gy0 = full[vf.n_theta:] if wrt_y0 else None
        check_gradient_finite(prob, "forward sensitivity", g, gy0)
        return value, g, gy0
