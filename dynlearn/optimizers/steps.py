"""The damped least-squares steps of Levenberg-Marquardt and Gauss-Newton.

Each solver factors the scaled Jacobian once per iteration; a step for any damping value
then costs little, so a rejected trial point costs a solve and almost no linear algebra.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

__all__ = ["BlockSteps", "DenseSteps", "step_solver"]


class DenseSteps:
    """Minimisers ``d`` of ``|b + A d|^2 + lam |ds * d|^2`` for any ``lam`` from one SVD of
    ``A / ds`` (each further ``lam`` costs no linear algebra).

    Parameters
    ----------
    A : ndarray (m, n)
        The Jacobian (or a matrix with the same normal equations).
    b : ndarray (m,)
        The residuals.
    ds : ndarray (n,)
        Positive column scales.

    Attributes
    ----------
    smax2 : float
        The largest squared singular value of ``A / ds`` (the scale of the damping).
    g : ndarray
        The scaled gradient ``(A / ds)^T b``.
    """

    def __init__(self, A, b, ds):
        As = A / ds
        self.U, self.s, self.Vt = np.linalg.svd(As, full_matrices=False)
        self.smax2 = float(self.s[0] ** 2) if self.s.size and self.s[0] > 0 else 1.0
        self.g = As.T @ b
        self.b, self.ds = b, ds

    def step(self, lam: float) -> np.ndarray:
        """The step for the damping ``lam``."""
        s = self.s
        return -(self.Vt.T @ (s / (s * s + lam) * (self.U.T @ self.b))) / self.ds


class BlockSteps:
    """The same steps as :class:`DenseSteps` when the rows of ``A`` fall into blocks that
    share the first ``p`` columns and each own a few more (multiple shooting: the segment
    states of one experiment), other rows using the shared columns only.

    Each block's own columns are eliminated by a QR factorisation (a Schur complement,
    done orthogonally), leaving a ``p``-column problem: ``O(rows (c + p)^2)`` work per
    damping value instead of an SVD of the whole matrix, ``O(rows n^2)`` with ``n``, all
    columns, far above ``p`` when there are many experiments. The largest singular value
    (the scale of the damping) is estimated by power iteration.

    Parameters
    ----------
    A, b, ds : ndarray
        As for :class:`DenseSteps`.
    p : int
        The number of shared (leading) columns.
    blocks : iterable of (rows, own)
        Each block's row indices (or mask) and the indices of the columns it owns.
    """

    def __init__(self, A, b, ds, p: int, blocks):
        As = A / ds
        self.p, self.ds, self.n = p, ds, A.shape[1]
        self.g = As.T @ b
        v = np.random.default_rng(0).standard_normal(self.n)
        for _ in range(12):   # power iteration on As^T As (no need for more accuracy)
            v = As.T @ (As @ v)
            nv = np.linalg.norm(v)
            if nv == 0:
                break
            v /= nv
        self.smax2 = float(np.linalg.norm(As @ v) ** 2) or 1.0
        used = np.zeros(A.shape[0], dtype=bool)
        self.blocks = []
        for rows, own in blocks:   # the undamped factor of each block's [S X b]
            used[rows] = True
            R0 = np.linalg.qr(np.hstack([As[rows][:, own], As[rows, :p], b[rows, None]]),
                              mode="r")
            self.blocks.append((own, R0))
        shared = np.hstack([As[~used][:, :p], b[~used, None]])
        self.shared = np.linalg.qr(shared, mode="r") if shared.shape[0] else shared

    def step(self, lam: float) -> np.ndarray:
        """The step for the damping ``lam``."""
        p, sl = self.p, np.sqrt(lam)
        reduced, backs = [self.shared], []
        for own, R0 in self.blocks:
            c = own.size
            if c == 0:                            # a block of one segment: nothing to own
                reduced.append(R0)
                continue
            damp = np.zeros((c, R0.shape[1]))
            damp[:, :c] = sl * np.eye(c)
            R = np.linalg.qr(np.vstack([R0, damp]), mode="r")
            backs.append((own, R[:c]))            # [R_c  T  t]: own columns from x's step
            reduced.append(R[c:, c:])              # [X~ b~]: what is left for the shared ones
        damp = np.zeros((p, p + 1))
        damp[:, :p] = sl * np.eye(p)
        Rr = np.linalg.qr(np.vstack([*reduced, damp]), mode="r")
        u = -solve_triangular(Rr[:p, :p], Rr[:p, p])
        d = np.zeros(self.n)
        d[:p] = u
        for own, top in backs:
            c = own.size
            d[own] = -solve_triangular(top[:, :c], top[:, c + p] + top[:, c:c + p] @ u)
        return d / self.ds


def step_solver(obj, A, b, ds) -> DenseSteps | BlockSteps:
    """The step solver for ``A``: by blocks where the objective has them (``obj.blocks()``
    and ``obj.n_shared``) and the matrix is wide enough for it to pay, else one dense SVD."""
    blocks = getattr(obj, "blocks", None)
    p = getattr(obj, "n_shared", None)
    if blocks is not None and p is not None and A.shape[1] > max(200, 3 * p):
        return BlockSteps(A, b, ds, p, blocks())
    return DenseSteps(A, b, ds)
