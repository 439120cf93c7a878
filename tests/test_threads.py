"""BLAS threads inside a fit (dynlearn.fitting.threads)."""

import threadpoolctl

import dynlearn as dl
from dynlearn.fitting.threads import SINGLE_THREAD_MAX, blas_threads_for
from dynlearn.testing import lotka_volterra_problem


def _blas_threads():
    return {d["num_threads"] for d in threadpoolctl.threadpool_info()
            if d["user_api"] == "blas"}


def test_a_small_fit_runs_on_one_blas_thread_and_restores_the_setting():
    """Multi-threaded BLAS on a fit's small matrices cost 5x the CPU time under load."""
    model, data, _ = lotka_volterra_problem()
    before = _blas_threads()
    assert before, "threadpoolctl finds no BLAS library under numpy"
    seen = []
    dl.fit(model, data, progress=False, optimizer=dl.LevenbergMarquardt(max_iter=3),
           callback=lambda info: seen.append(_blas_threads()))
    assert seen and all(s <= {1} for s in seen)
    assert _blas_threads() == before


def test_a_large_fit_keeps_the_librarys_threads():
    before = _blas_threads()
    with blas_threads_for(SINGLE_THREAD_MAX + 1):
        assert _blas_threads() == before
    with blas_threads_for(SINGLE_THREAD_MAX):
        assert _blas_threads() <= {1}
