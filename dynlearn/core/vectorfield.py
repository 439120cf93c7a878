"""The vector field of a model at fixed parameters: ``dy/dt = f(t, y; theta)``.

:class:`VectorField` binds a compiled model to one parameter vector and one input signal,
and provides everything the solvers and sensitivity methods ask for:

* ``fun(t, y)`` and ``jac(t, y)``: for ``solve_ivp`` (``jac`` is exact: the symbolic
  physics Jacobian plus the network's closed-form input Jacobian, by the chain rule
  ``f_y + f_z N_v g_y``);
* ``theta_jac(t, y)``: ``df/dtheta`` at one point, for forward sensitivities;
* batched versions over many points (``fun_batch``, ``jac_batch``, ``theta_vjp_batch``)
  used by adjoint sweeps to replace thousands of small calls by a few array operations;
* observables and their derivatives.
"""

from __future__ import annotations

import numpy as np

from dynlearn.errors import ModelError

__all__ = ["VectorField"]


class VectorField:
    """``f(t, y)`` of a model at parameters ``theta`` with input signal ``inputs``.

    Parameters
    ----------
    model : HybridModel
    theta : ndarray, shape (n_theta,)
        Free parameters in physical units then network weights (see ``model.theta0``).
    inputs : callable, optional
        ``inputs(t) -> array (n_inputs,)`` for scalar ``t`` and ``(m, n_inputs)`` for an
        array of ``m`` times (see :class:`dynlearn.data.InputSignal`). Required when the model
        declares inputs.
    """

    def __init__(self, model, theta, inputs=None):
        self.model = model
        self.c = c = model.compiled
        self.theta = theta = model.check_theta(theta)
        p, ws = model.split_theta(theta)
        self.p = p
        self.pl = p.tolist()
        self.ws = ws
        self.n = c.n
        self.n_theta = model.n_theta
        self.n_free = len(model.free_params)
        if c.nu and inputs is None:
            raise ModelError(f"the model has inputs {[u.name for u in model.inputs]}; pass their "
                             "values (a DataFrame with a time column, or data columns named "
                             "like the inputs)")
        self.inputs = inputs if c.nu else None
        self.nfev = 0
        self.njev = 0
        # theta index ranges of each network's weights
        off = self.n_free
        self._wslices = []
        for net in model.networks:
            self._wslices.append(slice(off, off + net.n_weights))
            off += net.n_weights
        self._point = [d["net"].point_function(w) for d, w in zip(c.nets, ws)]

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        """Discontinuities of the right-hand side in ``(t0, t1)`` (from the inputs)."""
        if self.inputs is None or not hasattr(self.inputs, "breakpoints"):
            return np.empty(0)
        return self.inputs.breakpoints(t0, t1)

    # --- single point ----------------------------------------------------------------
    def _u(self, t):
        return self.inputs(t).tolist() if self.inputs is not None else []

    def _net_input(self, d, y, tl, yl, ul):
        """A network's input vector at one point (plain states are read without a call)."""
        idx = d["state_index"]
        return y[idx] if idx is not None else d["g"](tl, yl, self.pl, [], ul)

    def fun(self, t, y):
        """dy/dt at one point; ``y`` has shape (n,)."""
        self.nfev += 1
        tl, yl, ul = [t], y.tolist(), self._u(t)
        zl = []
        for d, fwd in zip(self.c.nets, self._point):
            zl.extend(fwd(self._net_input(d, y, tl, yl, ul)).tolist())
        return self.c.f(tl, yl, self.pl, zl, ul)

    def _jac_parts(self, t, y):
        tl, yl, ul = [t], y.tolist(), self._u(t)
        c = self.c
        zl, parts = [], []
        for d, w in zip(c.nets, self.ws):
            v = self._net_input(d, y, tl, yl, ul)
            z, Nv = d["net"].forward_and_input_jacobian(w, v)
            zl.extend(z.tolist())
            parts.append((d, w, v, Nv))
        return tl, yl, ul, zl, parts

    def jac(self, t, y):
        """The exact Jacobian df/dy at one point, shape (n, n)."""
        self.njev += 1
        tl, yl, ul, zl, parts = self._jac_parts(t, y)
        c = self.c
        J = c.f_y(tl, yl, self.pl, zl, ul)
        if parts:
            Fz = c.f_z(tl, yl, self.pl, zl, ul)
            for d, _w, _v, Nv in parts:
                J += Fz[:, d["zslice"]] @ (Nv @ d["g_y"](tl, yl, self.pl, [], ul))
        return J

    def jac_and_theta_jac(self, t, y):
        """``(df/dy, df/dtheta)`` at one point, shapes (n, n) and (n, n_theta)."""
        tl, yl, ul, zl, parts = self._jac_parts(t, y)
        c = self.c
        J = c.f_y(tl, yl, self.pl, zl, ul)
        Jt = np.zeros((self.n, self.n_theta))
        if self.n_free:
            Jt[:, :self.n_free] = c.f_p(tl, yl, self.pl, zl, ul)[:, c.free]
        if parts:
            Fz = c.f_z(tl, yl, self.pl, zl, ul)
            for (d, w, v, Nv), ws in zip(parts, self._wslices):
                B = Fz[:, d["zslice"]]
                BN = B @ Nv
                J += BN @ d["g_y"](tl, yl, self.pl, [], ul)
                if self.n_free and not d["g_p"].is_zero:
                    Jt[:, :self.n_free] += BN @ d["g_p"](tl, yl, self.pl, [], ul)[:, c.free]
                Jt[:, ws] = B @ d["net"].weight_jacobian(w, v)
        return J, Jt

    # --- many points -------------------------------------------------------------------
    def _batch_args(self, T, Y):
        """Argument groups for ``m`` points: T (m,), Y (m, n)."""
        T = np.asarray(T, dtype=float)
        m = T.shape[0]
        U = self.inputs(T).T if self.inputs is not None else np.zeros((0, m))
        return m, [T], Y.T, self.pl, U

    def _batch_nets(self, m, Tg, Yg, U, with_jac: bool):
        c = self.c
        Z = np.empty((c.nz, m))
        parts = []
        for d, w in zip(c.nets, self.ws):
            V = d["g"].batch(m, Tg, Yg, self.pl, [], U).T            # (m, k)
            if with_jac:
                z, Nv = d["net"].forward_and_input_jacobian(w, V)     # (m, nz_k), (m, nz_k, k)
            else:
                z, Nv = d["net"].forward(w, V), None
            Z[d["zslice"]] = z.T
            parts.append((d, w, V, Nv))
        return Z, parts

    def fun_batch(self, T, Y):
        """dy/dt at many points: T (m,), Y (m, n) -> (m, n)."""
        m, Tg, Yg, p, U = self._batch_args(T, Y)
        Z, _ = self._batch_nets(m, Tg, Yg, U, with_jac=False)
        return self.c.f.batch(m, Tg, Yg, p, Z, U).T

    def jac_batch(self, T, Y):
        """df/dy at many points: (m, n, n). Also returns a context for :meth:`theta_vjp_batch`."""
        c = self.c
        m, Tg, Yg, p, U = self._batch_args(T, Y)
        Z, parts = self._batch_nets(m, Tg, Yg, U, with_jac=True)
        J = np.moveaxis(c.f_y.batch(m, Tg, Yg, p, Z, U), -1, 0)
        Fz = np.moveaxis(c.f_z.batch(m, Tg, Yg, p, Z, U), -1, 0) if parts else None
        for d, _w, _V, Nv in parts:
            Gy = np.moveaxis(d["g_y"].batch(m, Tg, Yg, p, [], U), -1, 0)   # (m, k, n)
            J += Fz[:, :, d["zslice"]] @ (Nv @ Gy)
        ctx = (m, Tg, Yg, U, Z, Fz, parts)
        return J, ctx

    def theta_jacobian_batch(self, T, Y):
        """``df/dy`` (m, n, n) and ``df/dtheta`` (m, n, n_theta) at many points.

        Built from :meth:`VectorField.jac_batch` and its context: the physics part from the
        compiled ``f_p``, each network's part as ``f_z N_w`` (closed-form weight Jacobian,
        batched), plus ``f_z N_v g_p`` when a network input depends on a parameter.
        """
        J, ctx = self.jac_batch(T, Y)
        m, Tg, Yg, U, Z, Fz, parts = ctx
        c = self.c
        Ft = np.zeros((m, self.n, self.n_theta))
        if self.n_free:
            Fp = c.f_p.batch(m, Tg, Yg, self.pl, Z, U)[:, c.free, :]          # (n, nf, m)
            Ft[:, :, :self.n_free] = np.moveaxis(Fp, -1, 0)
        for (d, w, V, Nv), ws in zip(parts, self._wslices):
            B = Fz[:, :, d["zslice"]]                                          # (m, n, nz_k)
            Ft[:, :, ws] = B @ d["net"].weight_jacobian(w, V)
            if self.n_free and not d["g_p"].is_zero:
                Gp = np.moveaxis(d["g_p"].batch(m, Tg, Yg, self.pl, [], U)[:, c.free, :], -1, 0)
                Ft[:, :, :self.n_free] += (B @ Nv) @ Gp
        return J, Ft

    def theta_vjp_batch(self, ctx, C):
        """sum_i C[i]^T df/dtheta(t_i, y_i), with ``ctx`` from :meth:`jac_batch`; C (m, n)."""
        m, Tg, Yg, U, Z, Fz, parts = ctx
        c = self.c
        g = np.zeros(self.n_theta)
        if self.n_free:
            Fp = c.f_p.batch(m, Tg, Yg, self.pl, Z, U)[:, c.free, :]        # (n, nf, m)
            g[:self.n_free] = np.einsum("ipm,mi->p", Fp, C)
        for (d, w, V, Nv), ws in zip(parts, self._wslices):
            cz = np.einsum("miz,mi->mz", Fz[:, :, d["zslice"]], C)           # (m, nz_k)
            g[ws] = d["net"].weight_vjp(w, V, cz)
            if self.n_free and not d["g_p"].is_zero:
                cv = np.einsum("mz,mzk->mk", cz, Nv)
                Gp = d["g_p"].batch(m, Tg, Yg, self.pl, [], U)[:, c.free, :]  # (k, nf, m)
                g[:self.n_free] += np.einsum("kpm,mk->p", Gp, cv)
        return g

    def theta_vjp_points(self, T, Y, C, chunk: int = 64) -> np.ndarray:
        """``sum_i C[i]^T df/dtheta(t_i, y_i)`` over many points without forming ``df/dy``
        (a quadrature of ``lambda^T df/dtheta``): T (m,), Y (m, n), C (m, n) -> (n_theta,).

        Evaluated in chunks of ``chunk`` points, so that memory stays bounded for large
        models (``df/dtheta`` is ``n x n_theta`` at each point).
        """
        T = np.asarray(T, dtype=float)
        Y = np.asarray(Y, dtype=float)
        C = np.asarray(C, dtype=float)
        g = np.zeros(self.n_theta)
        c = self.c
        for a in range(0, T.shape[0], chunk):
            sl = slice(a, a + chunk)
            if c.nets:
                _, ctx = self.jac_batch(T[sl], Y[sl])
            else:       # no network: theta_vjp_batch needs no df/dy, only its context
                m, Tg, Yg, _, U = self._batch_args(T[sl], Y[sl])
                ctx = (m, Tg, Yg, U, np.zeros((0, m)), None, [])
            g += self.theta_vjp_batch(ctx, C[sl])
        return g

    # --- observables ---------------------------------------------------------------------
    def observe_batch(self, T, Y, derivatives: bool = False):
        """Observables at many points: (m, n_obs); with ``derivatives`` also
        dh/dy (m, n_obs, n) and dh/dp_free (m, n_obs, n_free)."""
        c = self.c
        m, Tg, Yg, p, U = self._batch_args(T, Y)
        H = c.h.batch(m, Tg, Yg, p, [], U).T
        if not derivatives:
            return H
        Hy = np.moveaxis(c.h_y.batch(m, Tg, Yg, p, [], U), -1, 0)
        Hp = np.moveaxis(c.h_p.batch(m, Tg, Yg, p, [], U), -1, 0)[:, :, c.free]
        return H, Hy, Hp
