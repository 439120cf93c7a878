"""How many threads the linear algebra of a fit may use.

A fit's matrices are small (a residual Jacobian of some hundred columns): a multi-threaded
BLAS gains nothing on them and loses much when its threads compete for the cores with each
other, with other processes or with Dask workers. Measured on the LV-UDE fit (89 weights,
42 residuals; 2-core machine at load 7): 34-39 s wall and 13-16 s CPU with OpenBLAS's default
threads, 6.6 s wall and 2.6-3.2 s CPU with one thread, the same iterates either way. Large
fits keep the library's threads, where they pay.
"""

from __future__ import annotations

import contextlib

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
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:      # pragma: no cover - a declared dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
