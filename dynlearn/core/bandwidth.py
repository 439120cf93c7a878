"""Banded Jacobians for large stiff models: the structural bandwidth of ``df/dy``, a
reordering of the states that narrows it, and the rule that chooses LSODA's Jacobian layout.

LSODA's Fortran core factors its Newton matrix ``I - h gamma J`` as a dense or as a banded
matrix, never as a sparse one. Dense, a model of ``n`` states costs ``n^3/3`` operations per
factorisation and ``n^2`` per solve with it; banded with lower and upper bandwidths ``l`` and
``u``, about ``n l (l + u)`` and ``n (2 l + u)``. A reaction network's Jacobian is sparse,
but its band in the declared state order can be as wide as the matrix (the SBML file lists
species in any order). A reverse Cuthill-McKee ordering of the states (a breadth-first
ordering of the graph "``f_i`` depends on ``y_j``", which keeps connected states close)
narrows the band when the network is chain- or grid-like: the system is then solved in the
reordered states ``z = y[perm]`` (:class:`StateOrder`), and everything a caller sees (the
outputs, the dense interpolant) is mapped back.

The rule (:func:`lsoda_layout`, the one place choosing the layout; the solve layer and the
forward sensitivities ask it):

* a system of stacked copies of the state (forward sensitivities, ``blocks > 1``): always
  banded (its Jacobian ``I (x) J`` has ``J``'s bandwidth and ``N = n blocks`` rows), in the
  reordered states when that narrows the band and the model has at least
  :data:`REORDER_MIN_STATES` states;
* the state alone (``blocks == 1``): banded when it has at least :data:`BANDED_MIN_STATES`
  states and the banded factorisation needs at most :data:`BANDED_MAX_COST` of the dense
  one's operations; below that size the LU is a small part of a step and the reordering's
  copies cost as much as it saves.

Measured by ``benchmarks/large_jacobian.py`` (rtol = atol = 1e-12, one BLAS thread, side by
side on a shared machine): the plain solve of a 300-state reaction chain 1.04-1.15x faster
banded, 1.0x at 100 states, 0.7-0.9x at 30 (hence the size limit); forward sensitivities
(10 directions) of the same chains declared in a random order 2.2x (100 states) and 10.6x
(300 states) faster reordered than with the declared order's band, and unchanged for a
chain declared in order. The large PEtab models measured have Jacobians that no reordering
makes narrow (Chen_MSB2009: 500 states, band 490 declared, 206 reordered; Lang_
PLOSComputBiol2024: 124 states, 118 and 100): their plain solves stay dense (banded measured
0.8-1.0x), their forward sensitivities gain from the narrower band. Small models keep their
declared order: reordering costs two copies of the system's vector per right-hand side,
and the LU it narrows is a few microseconds; the Fisher information of Bruno_JExpBot2016
(7 states) and Fiedler_BMCSystBiol2016 (6) took 0.87x and 0.90x the time without it
(session 10, same points, alternating).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sps
from scipy.sparse.csgraph import reverse_cuthill_mckee

__all__ = ["BANDED_MAX_COST", "BANDED_MIN_STATES", "REORDER_MIN_STATES", "StateOrder",
           "band_ordering", "bandwidth", "lsoda_layout", "lsoda_pads_band"]

#: fewest states for which a plain LSODA solve takes a banded Jacobian (see the module notes)
BANDED_MIN_STATES = 100

#: most operations of the banded LU, as a fraction of the dense LU's, for a plain solve
BANDED_MAX_COST = 0.1

#: fewest states for which stacked copies of the state are solved in reordered states (see
#: the module notes)
REORDER_MIN_STATES = 20


def bandwidth(pattern: np.ndarray) -> tuple[int, int]:
    """``(lower, upper)`` of a square boolean pattern: ``pattern[i, j]`` is False unless
    ``-lower <= j - i <= upper``.

    Parameters
    ----------
    pattern : ndarray of bool, shape (n, n)

    Returns
    -------
    tuple of int
    """
    i, j = np.nonzero(pattern)
    if i.size == 0:
        return 0, 0
    return int(max(0, np.max(i - j))), int(max(0, np.max(j - i)))


def band_ordering(pattern: np.ndarray) -> np.ndarray:
    """A reordering ``perm`` of the states that narrows the band of ``pattern``: reverse
    Cuthill-McKee on the symmetrised pattern, kept only when it makes the wider of the two
    bandwidths smaller (else the identity, so that a model already in a good order is left
    alone).

    Parameters
    ----------
    pattern : ndarray of bool, shape (n, n)
        Where ``df_i/dy_j`` can be non-zero.

    Returns
    -------
    ndarray of int, shape (n,)
        The reordered system's state ``k`` is the model's state ``perm[k]``.
    """
    pattern = np.asarray(pattern, dtype=bool)
    n = pattern.shape[0]
    ident = np.arange(n)
    if n < 3:
        return ident
    sym = sps.csr_matrix(pattern | pattern.T | np.eye(n, dtype=bool))
    perm = np.asarray(reverse_cuthill_mckee(sym, symmetric_mode=True), dtype=np.intp)
    if max(bandwidth(pattern[np.ix_(perm, perm)])) < max(bandwidth(pattern)):
        return perm
    return ident


@functools.cache
def lsoda_pads_band() -> bool:
    """Whether this scipy's LSODA wants a banded Jacobian with ``lband`` extra zero rows
    (``2 lband + uband + 1`` in all) rather than the ``lband + uband + 1`` its documentation
    states: the Fortran wrapper of scipy before its C port did. Found out once, by a tiny
    solve."""
    from scipy.integrate import solve_ivp

    def jac(t, y):      # y' = -1e4 y, stiff so that LSODA switches to BDF and calls jac
        return np.array([[0.0, 0.0], [-1e4, -1e4], [0.0, 0.0]])
    # the old wrapper prints its complaint from C to file descriptor 2: silence it here
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                solve_ivp(lambda t, y: -1e4 * y, (0.0, 1.0), [1.0, 1.0], method="LSODA",
                          jac=jac, lband=1, uband=1)
            except ValueError:
                return True
            return False
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _MappedSolution:
    """A dense solution of the reordered system, evaluated in the model's state order."""

    def __init__(self, sol, inv: np.ndarray):
        self._sol = sol
        self._inv = inv

    def __call__(self, t):
        return np.asarray(self._sol(t))[self._inv]

    def __getattr__(self, name: str) -> Any:     # ts, t_min, t_max, ... of the solution
        return getattr(self._sol, name)


class StateOrder:
    """A system of ``blocks`` stacked copies of the state (``[y, S_1, ..., S_q]``) solved
    in reordered states ``z = y[perm]`` (each block reordered alike), with LSODA's banded
    Jacobian of the reordered system.

    Parameters
    ----------
    pattern : ndarray of bool, shape (n, n)
        Where ``df_i/dy_j`` can be non-zero, in the model's order.
    perm : ndarray of int, shape (n,)
        The reordering (:func:`band_ordering`); the identity solves the system as declared.
    blocks : int
        Copies of the state in the system.

    Attributes
    ----------
    lband, uband : int
        The bandwidths of the reordered ``J``.
    reordered : bool
        Whether ``perm`` is not the identity.
    """

    def __init__(self, pattern: np.ndarray, perm: np.ndarray, blocks: int = 1):
        pattern = np.asarray(pattern, dtype=bool)
        n = pattern.shape[0]
        self.n, self.blocks = n, int(blocks)
        self.perm = np.asarray(perm, dtype=np.intp)
        self.reordered = bool(np.any(self.perm != np.arange(n)))
        self.inv = np.empty(n, dtype=np.intp)
        self.inv[self.perm] = np.arange(n)
        offsets = n * np.arange(self.blocks)[:, None]
        self._full = (offsets + self.perm[None, :]).ravel()      # z = x[_full]
        self._full_inv = (offsets + self.inv[None, :]).ravel()   # x = z[_full_inv]
        pz = pattern[np.ix_(self.perm, self.perm)]
        self.lband, self.uband = bandwidth(pz)
        self._rows, self._cols = np.nonzero(pz)

    def to_solver(self, x: np.ndarray) -> np.ndarray:
        """The reordered system's vector (or rows of vectors: first axis) from the
        model-order one."""
        return np.asarray(x)[self._full] if self.reordered else np.asarray(x)

    def from_solver(self, z: np.ndarray) -> np.ndarray:
        """The model-order vector (or rows of vectors: first axis) from the reordered
        system's."""
        return np.asarray(z)[self._full_inv] if self.reordered else np.asarray(z)

    def tolerance(self, atol):
        """An absolute tolerance for the reordered system: a per-component array
        reordered, a scalar as it is."""
        if np.ndim(atol) and self.reordered:
            return self.to_solver(np.broadcast_to(atol, (self.n * self.blocks,)))
        return atol

    def names(self, names: Sequence[str] | None) -> list[str] | None:
        """State names in the reordered system's order (for a guard's messages)."""
        if names is None:
            return None
        names = list(names)
        return [names[i] for i in self.perm] if len(names) == self.n else names

    def wrap_fun(self, fun: Callable) -> Callable:
        """``fun(t, x)`` of the model-order system as the reordered system's."""
        if not self.reordered:
            return fun
        full, full_inv = self._full, self._full_inv

        def reordered(t, z):
            return np.asarray(fun(t, z[full_inv]))[full]
        return reordered

    def lsoda_options(self, state_jac: Callable) -> dict:
        """``{"jac": ..., "lband": l, "uband": u}`` for ``solve_ivp(method="LSODA")`` on the
        reordered system: ``jac(t, z)`` returns ``I (x) J`` in LAPACK's banded storage, ``J
        = state_jac(t, y)`` (dense, model order) at the system's first block ``y``.

        ``packed[u + i - j, j] = J[i, j]`` (``scipy.linalg.solve_banded``'s layout), the
        same for every block, so one scatter per call fills all blocks at once; an older
        scipy wants ``l`` more (zero) rows below, LINPACK's room for fill-in
        (:func:`lsoda_pads_band`)."""
        n, blocks, lo, up = self.n, self.blocks, self.lband, self.uband
        rows, cols = self._rows, self._cols
        band = up + rows - cols
        src_r, src_c = self.perm[rows], self.perm[cols]
        height = lo + up + 1 + (lo if lsoda_pads_band() else 0)
        packed = np.zeros((height, blocks, n))
        inv, reordered = self.inv, self.reordered

        def jac(t, z):
            y = z[:n][inv] if reordered else z[:n]
            J = state_jac(t, y)
            packed[band, :, cols] = J[src_r, src_c][:, None]
            return packed.reshape(height, blocks * n).copy()
        return {"jac": jac, "lband": lo, "uband": up}

    def prepare(self, fun: Callable, start, kw: dict, state_jac: Callable, names=None):
        """Everything ``solve_ivp(method="LSODA")`` needs for the reordered system:
        ``(fun, start, names)`` mapped (:meth:`wrap_fun`, :meth:`to_solver`,
        :meth:`names`), and in ``kw`` its ``atol`` (:meth:`tolerance`) and banded ``jac``,
        ``lband``, ``uband`` (:meth:`lsoda_options`). Map the result back with
        :meth:`restore`."""
        if "atol" in kw:
            kw["atol"] = self.tolerance(kw["atol"])
        kw.update(self.lsoda_options(state_jac))
        return self.wrap_fun(fun), self.to_solver(start), self.names(names)

    def restore(self, res):
        """Map a ``solve_ivp``-like result of the reordered system back in place: its
        ``y`` (rows) and its dense ``sol``. Returns ``res``."""
        if self.reordered:
            res.y = self.from_solver(res.y)
            if getattr(res, "sol", None) is not None:
                res.sol = _MappedSolution(res.sol, self._full_inv)
        return res


def lsoda_layout(pattern: np.ndarray, blocks: int = 1) -> StateOrder | None:
    """How LSODA should get the Jacobian of a system of ``blocks`` stacked copies of the
    state (see the module notes): a :class:`StateOrder` for a banded Jacobian (in reordered
    states when that narrows the band), or ``None`` for the dense one.

    Parameters
    ----------
    pattern : ndarray of bool, shape (n, n)
        Where ``df_i/dy_j`` can be non-zero (``CompiledModel.jacobian_pattern()``).
    blocks : int
        ``1`` for the state alone, ``q + 1`` for the state and ``q`` sensitivities.

    Returns
    -------
    StateOrder or None
    """
    n = np.shape(pattern)[0]
    if blocks == 1 and n < BANDED_MIN_STATES:
        return None
    key = (id(pattern), int(blocks))
    with _LOCK:
        hit = _LAYOUTS.get(key)
    # a compiled model keeps its pattern, so its id names it while the entry holds it
    if hit is not None and hit[0] is pattern:
        return hit[1]
    perm = band_ordering(pattern) if n >= REORDER_MIN_STATES else np.arange(n)
    order: StateOrder | None = StateOrder(pattern, perm, blocks)
    if blocks == 1:
        lo, up = order.lband, order.uband
        # banded LU ~ n l (l + u) operations against the dense n^3 / 3
        if n * lo * (lo + up + 1) > BANDED_MAX_COST * n**3 / 3:
            order = None
    with _LOCK:
        if len(_LAYOUTS) >= _LAYOUT_CACHE:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        _LAYOUTS[key] = (pattern, order)
    return order


_LOCK = threading.Lock()
# (pattern, layout) by (id(pattern), blocks): RCM and the index maps take ~10 ms at 500
# states, against solves that a PEtab evaluation repeats for every condition
_LAYOUTS: dict[tuple[int, int], tuple[np.ndarray, StateOrder | None]] = {}
_LAYOUT_CACHE = 64
