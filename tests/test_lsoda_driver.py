"""dynlearn.core.lsoda: LSODA between output times inside the compiled solver takes the
steps ``solve_ivp``'s LSODA takes, and ``integrate`` uses it only where it applies."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from dynlearn.core.bandwidth import lsoda_pads_band
from dynlearn.core.lsoda import lsoda_applies, lsoda_at
from dynlearn.errors import SolveError
from dynlearn.solve import integrate


def counted(f):
    calls = [0]

    def g(t, y):
        calls[0] += 1
        return f(t, y)
    return g, calls


def robertson(t, y):
    return np.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                     0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                     3e7 * y[1] ** 2])


def robertson_jac(t, y):
    return np.array([[-0.04, 1e4 * y[2], 1e4 * y[1]],
                     [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
                     [0.0, 6e7 * y[1], 0.0]])


# An ERK cascade (the structure of Fiedler et al. 2016, BMC Syst. Biol., in the PEtab
# benchmark collection) at parameters of a random start of a fit: a stimulus that decays
# within microseconds, from a near-steady state, first output at t = 1. Asked for that
# output directly, LSODA sizes its first step from the distance to it, stays in its
# non-stiff mode and takes ~370,000 steps; solve_ivp's first step (towards the end of the
# span) has it switch to the stiff mode at once (57 evaluations).
ERK = dict(K1=1.246503489364764, K2=0.0014397719560836327, K3=2.127101390476929e-05,
           k10=1.4631079000331726e-05, k11=1357.3829570576422, k2=13413.921880292817,
           k3=11.650853936707454, k4=197.2266553499757, k5=2.7305486243378074,
           k6=22424.575878596122, tau1=2.8386688908351516e-08, tau2=9.739404960407512e-07,
           U=30.0)
ERK_Y0 = np.array([0.9999999989092621, 1.0907379315972336e-09, 0.9999999999355664,
                   6.443362486118699e-11, 0.9999999999999921, 7.845816440826652e-15])


def _erk_stimulus(t):
    p = ERK
    return p["k10"] - p["k11"] * np.expm1(-t / p["tau1"]) * np.exp(-t / p["tau2"])


def erk(t, y):
    p = ERK
    raf, praf, mek, pmek, erk_, perk = y
    a = p["K1"] * raf * _erk_stimulus(t) / (p["K1"] + perk) - p["k2"] * praf
    b = p["k3"] * mek * praf - p["k4"] * pmek
    c = p["K3"] * p["k5"] / (p["K3"] + p["U"]) * erk_ * pmek - p["k6"] * perk
    return np.array([-a, a, -b, b, -c, c])


def erk_jac(t, y):
    p = ERK
    raf, praf, mek, pmek, erk_, perk = y
    u, kc = _erk_stimulus(t), p["K3"] * p["k5"] / (p["K3"] + p["U"])
    da = [p["K1"] * u / (p["K1"] + perk), -p["k2"], 0, 0, 0,
          -p["K1"] * raf * u / (p["K1"] + perk) ** 2]
    db = [0, p["k3"] * mek, p["k3"] * praf, -p["k4"], 0, 0]
    dc = [0, 0, 0, kc * erk_, kc * pmek, -p["k6"]]
    da, db, dc = np.array(da), np.array(db), np.array(dc)
    return np.array([-da, da, -db, db, -dc, dc])


def _both(f, span, y0, te, **kw):
    g, calls = counted(f)
    ref = solve_ivp(g, span, y0, method="LSODA", t_eval=te, **kw)
    n_ref, calls[0] = calls[0], 0
    res = lsoda_at(g, span, y0, te, **kw)
    return ref, n_ref, res, calls[0]


@pytest.mark.parametrize("te", [np.logspace(-4, 5, 25), np.r_[0.0, np.logspace(-4, 5, 25)],
                                np.array([1e5])])
def test_same_steps_and_values_as_solve_ivp_on_robertson(te):
    ref, n_ref, res, n = _both(robertson, (0.0, 1e5), [1.0, 0.0, 0.0], te, rtol=1e-8,
                               atol=1e-12, jac=robertson_jac)
    assert res.status == 0 and res.success
    assert n == n_ref                     # the same steps, without the per-step returns
    np.testing.assert_array_equal(res.t, ref.t)
    # the same interpolating polynomial, evaluated by ODEPACK instead of in Python
    np.testing.assert_allclose(res.y, ref.y, rtol=1e-10, atol=1e-18)
    assert res.nfev == n and res.njev > 0


def test_first_step_as_solve_ivp_takes_it_from_a_near_steady_start():
    te = np.array([1.0, 5.5, 7.0, 8.5, 10.0])
    ref, n_ref, res, n = _both(erk, (0.0, 10.0), ERK_Y0, te, rtol=1e-9, atol=1e-12,
                               jac=erk_jac)
    assert n_ref < 200
    assert n == n_ref
    np.testing.assert_allclose(res.y, ref.y, rtol=1e-10, atol=1e-20)


def test_banded_jacobian():
    n = 40
    k = np.linspace(1.0, 1e4, n)

    def f(t, y):
        d = -k * y
        d[1:] += k[:-1] * y[:-1]
        return d

    # (asked before the solve: its probe is a solve, and LSODA's core is not re-entrant)
    height = 3 if lsoda_pads_band() else 2         # an older scipy wants lband more rows

    def band(t, y):          # solve_ivp's LSODA layout: row uband + i - j holds J[i, j]
        b = np.zeros((height, n))
        b[0] = -k
        b[1, :-1] = k[:-1]
        return b
    y0 = np.zeros(n)
    y0[0] = 1.0
    te = np.linspace(0.0, 2.0, 11)
    ref, n_ref, res, m = _both(f, (0.0, 2.0), y0, te, rtol=1e-9, atol=1e-14, jac=band,
                               lband=1, uband=0)
    assert m == n_ref
    np.testing.assert_allclose(res.y, ref.y, rtol=1e-10, atol=1e-20)


def test_failure_says_why_and_writes_what_solve_ivp_writes():
    # a zero error weight (atol = 0 and a component at zero) is refused at the first step
    f = lambda t, y: np.array([1.0, -y[1]])      # noqa: E731
    te = np.linspace(0.0, 1.0, 5)
    with pytest.warns(UserWarning):
        ref = solve_ivp(f, (0.0, 1.0), [0.0, 1.0], method="LSODA", t_eval=te, atol=0.0)
    with pytest.warns(UserWarning):
        res = lsoda_at(f, (0.0, 1.0), [0.0, 1.0], te, atol=0.0)
    assert ref.status == res.status == -1 and not res.success
    assert "LSODA failed" in res.message and "Illegal input" in res.message
    assert len(ref.t) == res.t.size == 0 and res.y.shape == (2, 0)
    # ... and, through integrate, so does dynlearn's error
    with pytest.warns(UserWarning):
        out = integrate(f, (0.0, 1.0), [0.0, 1.0], te, method="LSODA", atol=0.0)
    assert out.status == -1 and out.y.shape == (2, 0)


def test_an_exception_in_the_right_hand_side_propagates():
    class Stop(Exception):
        pass

    def f(t, y):
        if t > 0.5:
            raise Stop(t)
        return -y
    with pytest.raises(Stop):
        lsoda_at(f, (0.0, 1.0), [1.0], [0.25, 1.0])


@pytest.mark.parametrize("span, te, kw", [
    ((1.0, 0.0), [0.5], {}),                          # backward
    ((0.0, 1.0), [0.5, 0.25], {}),                     # unsorted
    ((0.0, 1.0), [0.5, 2.0], {}),                      # outside the span
    ((0.0, 1.0), None, {}),                            # no output times
    ((0.0, 1.0), [0.5], {"vectorized": False}),        # an option it does not take
    ((0.0, 1.0), [0.5], {"first_step": 2.0}),          # longer than the span
    ((0.0, 1.0), [0.5], {"first_step": 0.0}),
    ((0.0, 1.0), [0.5], {"rtol": 1e-17}),              # solve_ivp would raise it
])
def test_where_it_does_not_apply(span, te, kw):
    assert not lsoda_applies(span, te, kw)
    assert lsoda_at(lambda t, y: -y, span, [1.0], te, **kw) is None


def test_integrate_takes_it_and_falls_back_where_it_does_not_apply():
    te = np.logspace(-3, 5, 9)
    res = integrate(robertson, (0.0, 1e5), [1.0, 0.0, 0.0], te, method="LSODA", rtol=1e-8,
                    atol=1e-12, jac=robertson_jac)
    ref = solve_ivp(robertson, (0.0, 1e5), [1.0, 0.0, 0.0], method="LSODA", t_eval=te,
                    rtol=1e-8, atol=1e-12, jac=robertson_jac)
    np.testing.assert_allclose(res.y, ref.y, rtol=1e-10, atol=1e-18)
    assert res.nfev == ref.nfev
    # backward in time: solve_ivp's LSODA
    back = integrate(lambda t, y: -y, (1.0, 0.0), [np.exp(-1.0)], [0.5, 0.0],
                     method="LSODA", rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(back.y[0], np.exp(-np.array([0.5, 0.0])), rtol=1e-8)
    # restarts at breakpoints, and replicated output times
    brk = integrate(lambda t, y: -y, (0.0, 2.0), [1.0], [0.5, 1.0, 1.0, 2.0], breaks=[1.0],
                    method="LSODA", rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(brk.y[0], np.exp(-np.array([0.5, 1.0, 1.0, 2.0])), rtol=1e-8)


def test_the_guard_still_watches_the_right_hand_side():
    with pytest.raises(SolveError, match="not finite"):
        integrate(lambda t, y: np.array([np.nan]), (0.0, 1.0), [1.0], [0.5, 1.0],
                  method="LSODA")


def test_first_step_is_honoured():
    te = np.logspace(-4, 5, 10)
    kw = dict(rtol=1e-8, atol=1e-12, jac=robertson_jac)
    ref, n_ref, res, n = _both(robertson, (0.0, 1e5), [1.0, 0.0, 0.0], te, first_step=1e-10,
                               **kw)
    assert n == n_ref
    np.testing.assert_allclose(res.y, ref.y, rtol=1e-10, atol=1e-18)
    assert n != _both(robertson, (0.0, 1e5), [1.0, 0.0, 0.0], te, **kw)[3]


def test_a_failure_before_the_first_output_is_tried_again_from_a_tiny_first_step(
        monkeypatch):
    """(Seen on a collection problem's sensitivities at a fit's start: LSODA's own first
    step, sized from the derivative at the start, fails where a tiny one succeeds.) Here
    LSODA is made to fail whenever it chooses its first step itself."""
    import dynlearn.solve as solve_module
    calls = []

    def picky(fun, t_span, y0, t_eval, **options):
        calls.append(options.get("first_step"))
        if options.get("first_step") is None:
            return lsoda_at(fun, t_span, y0, t_eval, **{**options, "atol": 0.0,
                                                         "first_step": None})
        return lsoda_at(fun, t_span, y0, t_eval, **options)
    monkeypatch.setattr(solve_module, "lsoda_at", picky)
    with pytest.warns(UserWarning):
        res = integrate(lambda t, y: np.array([1.0, -y[1]]), (0.0, 2.0), [0.0, 1.0],
                        [1.0, 2.0], method="LSODA", rtol=1e-10, atol=1e-12)
    assert res.status == 0
    assert calls == [None, solve_module.LSODA_RETRY_FIRST_STEP * 2.0]
    np.testing.assert_allclose(res.y, [[1.0, 2.0], np.exp([-1.0, -2.0])], rtol=1e-8)
    # a failure after an output time is not tried again: it is not the first step's
    calls.clear()

    def late(fun, t_span, y0, t_eval, **options):
        calls.append(options.get("first_step"))
        res = lsoda_at(fun, t_span, y0, t_eval, **options)
        res.t, res.y, res.status = res.t[:1], res.y[:, :1], -1
        return res
    monkeypatch.setattr(solve_module, "lsoda_at", late)
    res = integrate(lambda t, y: -y, (0.0, 2.0), [1.0], [1.0, 2.0], method="LSODA")
    assert res.status == -1 and calls == [None]


@pytest.mark.parametrize("span, te, dense", [
    ((0.0, 2.0), [1.0, 2.0], True),            # a dense solve (the adjoint's forward pass)
    ((2.0, 0.0), [1.0, 0.0], False),           # a backward span (solve_ivp's path)
])
def test_solve_ivp_paths_get_the_same_second_try(monkeypatch, span, te, dense):
    """The LSODA solves that keep ``solve_ivp`` are tried again from a tiny first step too,
    in either direction; made to fail here whenever LSODA chooses its first step itself."""
    import dynlearn.solve as solve_module
    calls = []

    def picky(fun, t_span, y0, **kw):
        calls.append(kw.get("first_step"))
        if kw.get("first_step") is None:
            kw["atol"] = 0.0
        return solve_ivp(fun, t_span, y0, **kw)
    monkeypatch.setattr(solve_module, "solve_ivp", picky)

    def fun(t, y):
        return np.array([1.0, -y[1]])
    # (the first component starts at 0: with atol 0 its error weight is infinite)
    y0 = [0.0, np.exp(-span[0])]
    with pytest.warns(UserWarning):
        res = integrate(fun, span, y0, te, dense=dense, method="LSODA", rtol=1e-10,
                        atol=1e-12)
    assert res.status == 0
    assert calls == [None, solve_module.LSODA_RETRY_FIRST_STEP * 2.0]
    te = np.asarray(te)
    np.testing.assert_allclose(res.y, [te - span[0], np.exp(-te)], rtol=1e-7, atol=1e-12)
    if dense:
        np.testing.assert_allclose(res.sol(1.5), [1.5, np.exp(-1.5)], rtol=1e-7)
