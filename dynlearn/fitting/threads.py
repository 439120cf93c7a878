"""How many threads the linear algebra of a fit may use.

A fit's matrices are small (a residual Jacobian of some hundred columns): a multi-threaded
BLAS gains nothing on them and loses much when its threads compete for the cores with each
other, with other processes or with Dask workers. Measured on the LV-UDE fit (89 weights,
42 residuals; 2-core machine at load 7): 34-39 s wall and 13-16 s CPU with OpenBLAS's default
threads, 6.6 s wall and 2.6-3.2 s CPU with one thread, the same iterates either way. Large
fits keep the library's threads, where they pay.

The same holds for the stiff solvers' dense LU of a few hundred rows (LSODA's Newton
matrices): a PEtab likelihood runs on one thread up to :data:`SINGLE_THREAD_MAX` states
(:class:`dynlearn.petab.PetabProblem`). The PEtab adjoint of a 100-state chain with its
quadratures in LSODA's state (200 rows) took 3.2 s on one thread and 13.4 s on OpenBLAS's two
at a load of 2.7; py-spy found 73 % of Lang_PLOSComputBiol2024's backward solve in
OpenBLAS's threads waiting for each other.
"""

from __future__ import annotations

import contextlib
import functools

__all__ = ["SINGLE_THREAD_MAX", "blas_threads_for"]

#: fits with at most this many fitted values run their linear algebra on one BLAS thread
SINGLE_THREAD_MAX = 500


def blas_threads_for(n_values: int):
    """A context in which BLAS uses one thread when a fit of ``n_values`` fitted values is
    small (see the module notes), and a no-op context otherwise (or without threadpoolctl).

    Parameters
    ----------
    n_values : int
        The number of fitted values.
    """
    if n_values > SINGLE_THREAD_MAX:
        return contextlib.nullcontext()
    controller = _controller()
    if controller is None:   # pragma: no cover - a declared dependency
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


@functools.cache
def _controller():
    """One ``threadpoolctl.ThreadpoolController`` per process: finding the loaded BLAS
    libraries costs ~0.4 ms, limiting them with a controller found once ~10 us (the PEtab
    evaluations enter this context once per likelihood)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    return ThreadpoolController()
