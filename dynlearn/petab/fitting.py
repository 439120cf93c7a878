"""Multi-start fits of a PEtab problem: the driver behind :meth:`PetabProblem.fit
<dynlearn.petab.PetabProblem.fit>`.

Two optimizers, both within the parameter table's bounds, on the parameters' PEtab scales:

``"fisher"`` (the default)
    A trust-region Levenberg-Marquardt method on the exact gradient and the Fisher
    information matrix of the likelihood as its Hessian (what fides does for pyPESTO). For
    normal noise with fixed sigma the negative log-likelihood is ``0.5 |r|^2 + const`` with
    the weighted residuals ``r = (h - m) / sigma``, and the Fisher information is the
    Gauss-Newton matrix ``J^T J`` of their Jacobian, which the forward sensitivities give at
    no extra cost; estimated noise parameters and Laplace noise add their own expected
    curvature (:meth:`PetabProblem.fisher_system
    <dynlearn.petab.PetabProblem.fisher_system>`). Normal and log-normal priors add their
    curvature, every prior its gradient. Each iteration costs one solve with
    sensitivities, each trial point one solve without. Where the residuals are large the
    Fisher information misses their own curvature; a structured secant update (NL2SOL's)
    adds it from the gradient changes along the steps.
``"lbfgsb"``
    scipy's L-BFGS-B on the exact gradient (the method before this module).

Noise parameters profiled out (``FisherSettings.profile_noise``, off by default, both
methods): the parameters that enter only noise formulas (:attr:`PetabProblem.noise_only
<dynlearn.petab.PetabProblem.noise_only>`) do not move the simulation, so every evaluation
sets them to their optimum given its simulation (:mod:`dynlearn.petab.hierarchical`: closed
form where sigma is a noise parameter times a factor free of the others, else a few Newton
steps; no solve) and returns that point. The optimizer sees the profiled objective
``min_z f(x, z)``: its gradient is the full one in the other parameters (envelope theorem),
and the Fisher method's curvature is the Schur complement of the Fisher information over
the profiled parameters inside their bounds; the method steps in the other parameters
only. From random starts the noise parameters are often orders of magnitude below the
residuals, and unprofiled the steps spend their iterations raising them. Off by default:
measured start by start (benchmarks/README.md, "Noise parameters profiled out") it halved
the iterations on Fiedler_BMCSystBiol2016 but led its starts to worse local optima (best
of 19: -29.22 against -49.50), while on Elowitz_Nature2000 it found far better ones (best
of 6: -60.37 against -2.50); which basin a start reaches changes with the path, and two
problems are no ground for a default either way.

``"auto"`` takes ``"fisher"`` when the problem offers ``fisher_system`` (every
:class:`~dynlearn.petab.PetabProblem`) and all its noise is normal (:func:`choose_optimizer`),
else ``"lbfgsb"``: Laplace noise puts minima on kinks of the likelihood, where a quadratic
model with the expected curvature misleads the steps (measured on the test suite's
problem, whose Laplace observable puts the minimum on such a kink).

The step of the Fisher method: with ``H`` the Fisher information (plus the priors'
curvature and, once switched on, the secant correction; made positive semidefinite) and
``g`` the gradient, the step minimises ``g.d + d.H.d / 2 + lam |D d|^2 / 2`` over the
parameters not held at a bound (a parameter on its bound with the gradient pushing outward
stays there), and a parameter it would carry past a bound is set on the bound and the
others solved again. How ``lam`` and ``D`` are chosen (``FisherSettings.trust_region``):

``"radius"`` (the default)
    A trust region of radius ``Delta`` in the parameters' own (PEtab) scales, ``D = I``
    (so a decade of a log10 parameter weighs as much as a decade of another): ``lam`` is
    the smallest damping whose step is no longer than ``Delta`` (Newton's method on the
    secular equation, More and Sorensen 1983; the unconstrained step when it is shorter).
    ``Delta`` starts at the first accepted step's length (that step damped by ``damping``
    relative to the largest curvature), becomes a quarter of a rejected step's length,
    half of an accepted step's after a poor gain ratio (below 0.25), and twice it after a
    good one (above 0.75): the radius rules of Nocedal and Wright (2006, Alg. 4.1) and of
    fides, which pyPESTO runs on AMICI's Fisher information.
``"damping"``
    The former rule: column scales ``D`` (square roots of the diagonal of ``H``, kept at
    their running maximum as MINPACK does; floored at ``scale_floor`` times the largest)
    and Nielsen's damping update, as in :class:`dynlearn.optimizers.LevenbergMarquardt`:
    after an accepted step with gain ratio ``rho`` ``lam`` is multiplied by ``max(1/3, 1 -
    (2 rho - 1)^3)``, after a rejected one by 2, 4, 8, ...

Why the radius: side by side on the same 20 starts (benchmarks/README.md, "Fisher method:
trust radius"), the damping rule took 2-4x the sensitivity solves of fides on the same
problems, crawling along curved valleys with steps of 1e-4 of the parameters' ranges (its
damping, grown by a few rejections, shrinks by at most 3x per accepted step, and its
running-maximum scales, set where the residuals are huge, keep the steps of the
parameters that were stiff there short long after). The structured secant correction
(NL2SOL's) enters the model only after ``secant_after`` accepted iterations in a row
without a change of the radius (a model that keeps predicting moderately well: the Fisher
information misses the residuals' own curvature there), and stays in from then on, as
fides switches from the Fisher information to BFGS (its ``HybridFixed``); in the model from
the start it lengthened the fits (Bruno_JExpBot2016: 74 against 16 iterations on one start)
while without it some starts crawled to the iteration limit (Armistead_CellDeathDis2024).

A point where the model cannot be solved is a rejected trial. A trust region on the
parameters' ranges bounds the steps besides: the first step moves no
parameter by more than ``step_bound`` (0.1) of its range, the damping raised until it fits,
and the region doubles after every step it limited that the model predicted well (gain
ratio above 0.75). Without it, from a start far from the data the barely damped first step
pinned most parameters on their bounds at once (:class:`FisherSettings`). A trial point
whose solve without sensitivities fails is solved once more with them before it counts as
rejected (LSODA's error control then takes other steps; near some starts of
Elowitz_Nature2000 every plain solve failed where those with sensitivities did not). A
start that converges by ``gtol`` takes one more step at the current damping when it is
below ``sqrt(gtol)`` of every range, kept if it lowers the objective (a polish: the test
passes up to ``gtol`` from the optimum).

A failed LSODA solve is tried again with the problem's ``fallback_method`` (BDF) at a
start's first point only: later, a point LSODA cannot solve is a rejected trial. Where
LSODA fails, the fallback's pure-Python steps are slow: Fiedler_BMCSystBiol2016's start 0,
with the fallback at every point, spent its 600 s on 53 iterations (32 of its 55 solves with
sensitivities falling back) without converging, where failing fast leaves the time to
the other starts. (That start's LSODA failures came before the first output time, from
LSODA's own first step; since session 10 such a solve is tried once more from a tiny first
step, :data:`dynlearn.solve.LSODA_RETRY_FIRST_STEP`, and the start converges in 13 s at
rtol 1e-8.)

Where the forward sensitivities crawl (they take more than the problem's ``crawl_factor``
times their states' right-hand-side evaluations, as on Smith_BMCSystBiol2013, where one
Fisher system took over 900 s), the Fisher information cannot be had from the adjoint,
which gives the gradient alone. (A crawl must cost work too,
:data:`dynlearn.petab.problem.CRAWL_WORK`: on random starts of Fiedler_BMCSystBiol2016, 42
of 2,497 Fisher systems took 6,500-20,000 evaluations where the states took 55, a fraction
of a second each.) At a trial point the crawl rejects the trial, as a failed solve would.
At the start or at an accepted point
the start goes on from its best point with the same trust-region method on a BFGS matrix
updated from the adjoint's gradients (Powell's damped update; no structured secant
correction); its ``optimizer`` then reads :data:`FISHER_THEN_SECANT` and its message says
why. Each start begins with the Fisher information again: a crawl at one start's points
says little about another's. (Each start evaluates its own copy of the problem,
``PetabProblem.copy``, so with L-BFGS-B too one start's switch to the adjoint is not the
next start's, starts on threads keep their state apart, and the caller's problem is left
as it was.) Not L-BFGS-B: on a test problem (a 9-step reaction chain,
``tests/test_petab_crawl.py``) its first line search ran to the box's edge from 5 of 6
starts and stopped there, on a plateau at 618.8 (the trust region's optimum: 408.4).

How a start ends (:class:`dynlearn.optimizers.Status`): ``CONVERGED_GTOL`` when the
decrease the quadratic model still promises, ``g.H^-1.g / 2`` on the free parameters, is
below ``gtol max(1, |f|)``; ``CONVERGED_FTOL`` when two accepted steps in a row lowered the
objective by less than ``ftol (1 + |f|)`` each;
``CONVERGED_XTOL`` when the step is below ``xtol`` relative to the point. The last two only
where that promised decrease (near-null directions capped, ``FisherSettings.ptol``) is below
``ptol max(1, |f|)`` too, a first-order test: steps made short by a large damping while the
model still promises a decrease are no optimum, and end ``STALLED``. ``STALLED`` also when
the damping grew past 1e16 with every trial rejected (the gradient promises a decrease
the objective does not show: solver noise or an inaccurate gradient); ``MAX_ITER``;
``MAX_TIME`` (the fit's ``max_time`` passed, between iterations or inside a solve, which
stops within a few hundred right-hand-side evaluations: :func:`fit_one_start`);
``FAILED`` (no finite objective at the start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import time
from dataclasses import dataclass

import numpy as np

from dynlearn.distributed.dask import share_compiled
from dynlearn.distributed.executor import resolve_executor
from dynlearn.errors import OptionError, SolveError, TimeLimitError
from dynlearn.optimizers import Status
from dynlearn.optimizers.base import TrialPolicy, small_step
from dynlearn.optimizers.levenberg_marquardt import MAX_DAMPING
from dynlearn.petab.hierarchical import interior, schur_complement
from dynlearn.petab.problem import PetabFit, SensitivityCrawlError
from dynlearn.solve import deadline as solve_deadline

__all__ = ["FISHER_THEN_SECANT", "FIT_OPTIMIZERS", "TRUST_REGIONS", "FisherSettings",
           "available_optimizers", "choose_optimizer", "draw_starts", "fit_one_start",
           "fit_petab"]

#: the optimizers :func:`fit_petab` knows, besides ``"auto"``
FIT_OPTIMIZERS = ("fisher", "lbfgsb")
#: a start's ``optimizer`` when the Fisher method's forward sensitivities crawled and the
#: start went on with BFGS updates of the adjoint gradient (see the module notes)
FISHER_THEN_SECANT = "fisher, then bfgs"

#: how the Fisher method chooses its damping (:class:`FisherSettings`, the module notes)
TRUST_REGIONS = ("radius", "damping")

#: the prior types whose curvature the Fisher method adds (the others are flat, or have a
#: kink where a curvature would mislead the step)
_CURVED_PRIORS = ("normal", "logNormal", "parameterScaleNormal")


@dataclass
class FisherSettings:
    """Tolerances of the Fisher trust-region method (see the module notes).

    Attributes
    ----------
    gtol : float
        Converged when the model's promised decrease is below ``gtol max(1, |f|)``.
    ftol : float
        Converged when two accepted steps in a row lowered the objective by less than
        ``ftol (1 + |f|)`` each.
    xtol : float
        Converged when the step is below ``xtol (xtol + |x|)``.
    ptol : float
        An ``ftol`` or ``xtol`` stop is convergence only where the decrease the undamped
        model still promises (its curvature floored at ``scale_floor ** 2`` times the
        largest, so that the gradient's noise along near-null directions does not count)
        is below ``ptol max(1, |f|)``; above it the steps were short because the damping
        was large, not because the point is an optimum, and the start ends ``STALLED``
        (not converged).
    scale_floor : float
        (With ``trust_region="damping"``; with ``"radius"`` it caps the near-null
        directions of the ``ptol`` test only.) The column scales ``D`` are kept at least
        ``scale_floor`` times their largest, so that the scaled Hessian's condition stays
        below ``scale_floor ** -2``: a parameter the data barely inform (curvature ~0)
        otherwise has ``D ~ 0``, the damping does not shorten its step, every trial
        carries it from bound to bound and is rejected, and the damping grown by those
        rejections stops the steps of all the others.
    damping : float
        Initial damping relative to the largest eigenvalue of the scaled Hessian (with
        ``"radius"``: of the first step only, whose length then sets the radius).
    sensitivities_at_trial : bool
        Solve the first trial point of an iteration with its sensitivities while more
        than half of the first trials are accepted (an accepted step then costs one solve
        with sensitivities instead of that and a solve without). Off by default: the
        likelihood of a solve with sensitivities differs from one without by ~1e-7
        relatively, which in flat valleys tips acceptances and lengthened the fits
        (Bertozzi_PNAS2020, 5 starts: 1.4-1.7 s a start with it, 0.8-1.1 s without).
    trust_region : str
        ``"radius"`` (default): a trust radius in the parameters' scales; ``"damping"``:
        the former Levenberg-Marquardt damping with MINPACK's column scales (see the
        module notes). ``FisherSettings(trust_region="damping", secant_after=0)`` is the
        method before the radius.
    secant_after : int or None
        The secant correction enters the model after this many accepted iterations in a
        row in which the trust radius did not change (with ``"damping"``: whose gain ratio
        was between 0.25 and 0.75), and stays; 0: from the first step; ``None``: never.
    step_bound : float or None
        A trust region on the parameters' ranges: the first step moves no parameter by
        more than ``step_bound`` times its range (upper minus lower bound; the damping is
        raised until the step fits), and the bound doubles after every accepted step it
        limited whose gain ratio exceeded 0.75 (a model that predicts well earns longer
        steps; from a bound of 1 on it limits nothing). ``None``: no bound (the method
        before issue #15's fit measurements). Why: from a start far from the data the
        barely damped Gauss-Newton step points far outside the box; cut at the bounds, it
        pinned most parameters on them at once (Fiedler_BMCSystBiol2016, starts at nllh
        1e13-1e14: 16-19 of 22 parameters on a bound after the first step), a decrease
        of ten orders of magnitude that the gain ratio accepts, after which the start
        crawled along the bounds for hundreds of iterations to a poor local optimum.
    profile_noise : bool
        Profile the noise-only parameters out (:attr:`PetabProblem.noise_only
        <dynlearn.petab.PetabProblem.noise_only>`, :mod:`dynlearn.petab.hierarchical`):
        every evaluation sets them to their optimum given its simulation (no extra solve)
        and the method steps in the other parameters only, on the profiled objective's
        Fisher information (the Schur complement). Also used by ``"lbfgsb"``. Why: from
        random starts the noise parameters are often orders of magnitude below the
        residuals (Fiedler_BMCSystBiol2016: nllh 1e13-1e14 at the starts), and the steps
        then spend their iterations raising them. Off (the default): they are ordinary
        parameters; on changes which local optimum a start reaches, for better or worse
        (see the module notes).
    """

    gtol: float = 1e-9
    ftol: float = 1e-10
    xtol: float = 1e-10
    ptol: float = 1e-3
    scale_floor: float = 1e-3
    damping: float = 1e-3
    sensitivities_at_trial: bool = False
    step_bound: float | None = 0.1
    profile_noise: bool = False
    trust_region: str = "radius"
    secant_after: int | None = 20

    def __post_init__(self):
        if self.trust_region not in TRUST_REGIONS:
            raise OptionError(f"FisherSettings: trust_region must be one of {TRUST_REGIONS}, "
                              f"got {self.trust_region!r}")
        if self.secant_after is not None and not (
                isinstance(self.secant_after, int | np.integer) and self.secant_after >= 0):
            raise OptionError("FisherSettings: secant_after must be a non-negative integer or "
                              f"None, got {self.secant_after!r}")


def choose_optimizer(problem) -> str:
    """The optimizer ``"auto"`` means for ``problem``: ``"fisher"`` when it has
    ``fisher_system`` and every observable of its table has normal noise, else
    ``"lbfgsb"`` (see the module notes)."""
    if not hasattr(problem, "fisher_system"):
        return "lbfgsb"
    table = getattr(getattr(problem, "petab_problem", None), "observable_df", None)
    if table is not None and "noiseDistribution" in table:
        if any(str(v) not in ("normal", "nan", "") for v in table["noiseDistribution"]):
            return "lbfgsb"
    return "fisher"


def available_optimizers(problem) -> tuple[str, ...]:
    """The optimizers of :data:`FIT_OPTIMIZERS` that :func:`fit_petab` can run on
    ``problem``: ``"fisher"`` needs its ``fisher_system`` (a
    :class:`~dynlearn.petab.PetabProblem` has one, a PEtab SciML problem not)."""
    return tuple(o for o in FIT_OPTIMIZERS if o != "fisher" or hasattr(problem, "fisher_system"))


def draw_starts(problem, n_starts: int, seed: int | None = 0, x0=None) -> np.ndarray:
    """``n_starts`` starting points drawn uniformly on the parameters' scales within the
    bounds (``x0``, clipped to the bounds, replaces the first)."""
    lo, hi = np.asarray(problem.lower, float), np.asarray(problem.upper, float)
    rng = np.random.default_rng(seed)
    starts = lo + rng.random((int(n_starts), lo.size)) * (hi - lo)
    if x0 is not None and len(starts):
        starts[0] = np.clip(np.asarray(x0, dtype=float), lo, hi)
    return starts


class _Budget:
    """The wall-clock deadline of a whole fit (``time.time()``: the starts may run in other
    processes)."""

    def __init__(self, max_time, deadline=None):
        self.max_time = max_time
        self.deadline = deadline

    def over(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline


class _Objective:
    """The objective of one start (likelihood, plus the priors when ``posterior``), its
    gradient and its Fisher information, counting evaluations and keeping the best point
    evaluated.

    Every solve of an evaluation runs under the fit's ``deadline`` (``time.time()``; see
    :func:`dynlearn.solve.deadline`): past it, the solve raises
    :class:`~dynlearn.errors.TimeLimitError` within a few hundred right-hand-side
    evaluations, which ends the start (:func:`fit_one_start`). With ``free_first`` the first
    evaluation has no deadline, so that the fit has a point to report.

    With ``profile`` (and a problem with :attr:`~dynlearn.petab.PetabProblem.noise_only`
    parameters) every evaluation profiles them out (:mod:`dynlearn.petab.hierarchical`):
    :meth:`value` and :meth:`system` return the profiled point with their results, the
    gradient's entries of those parameters are zero and the Fisher information is the
    Schur complement over them; ``fixed`` marks them (the optimizer does not move them).
    """

    def __init__(self, problem, posterior: bool, deadline: float | None = None,
                 free_first: bool = False, profile: bool = False):
        self.problem = problem
        z = tuple(getattr(problem, "noise_only", ())) if profile else ()
        self.z = np.array(z, dtype=int)
        self.fixed = np.zeros(len(problem.x_names), dtype=bool)
        self.fixed[self.z] = True
        self._points: dict = {}     # evaluated point -> its profiled point (a few last)
        self.priors = problem.priors if posterior else None
        # whether the Fisher system can be asked to give up when its forward sensitivities
        # crawl (PetabProblem.fisher_system(watch=True); other problems may lack it)
        fs = getattr(problem, "fisher_system", None)
        self._watch = fs is not None and "watch" in inspect.signature(fs).parameters
        self.deadline = deadline
        self.free_first = free_first
        self.n_eval = 0
        self.n_sens = 0           # evaluations with sensitivities (``system``)
        # the curvature from BFGS updates of the gradient, not the Fisher information
        # (set when the Fisher system's forward sensitivities crawl: see secant_mode)
        self.secant = False
        self._B = None            # the BFGS matrix, None before the first curvature pair
        self._last = None         # (x, g) of the last evaluation with a gradient
        self.nit = 0              # iterations completed, kept by the optimizer's loop
        self.best_x, self.best_f = None, math.inf
        self.curved = []
        if self.priors is not None:
            names = list(problem.x_names)
            self.curved = [names.index(n) for n, k in zip(self.priors.names, self.priors.kinds)
                           if k in _CURVED_PRIORS]

    @contextlib.contextmanager
    def _limit(self):
        """Count an evaluation; the deadline its solves run under, and whether a failed
        LSODA solve is tried again with the problem's ``fallback_method`` (at the start's
        first point only: see the module notes)."""
        self.n_eval += 1
        first = self.n_eval == 1
        limit = (contextlib.nullcontext() if self.deadline is None    # (an enclosing one
                 else solve_deadline(None if self.free_first and first else self.deadline))
        keep = getattr(self.problem, "fallback_method", None)
        if not first and keep is not None:
            self.problem.fallback_method = None
        try:
            with limit:
                yield
        finally:
            if keep is not None:
                self.problem.fallback_method = keep

    def _keep(self, x, f: float) -> None:
        if f < self.best_f:
            self.best_x, self.best_f = np.array(x, dtype=float), f

    def _remember(self, x, xp) -> None:
        """Keep ``xp``, the profiled point of ``x`` (for :meth:`profiled_point`)."""
        if len(self._points) >= 8:
            self._points.pop(next(iter(self._points)))
        self._points[np.asarray(x, dtype=float).tobytes()] = np.array(xp, dtype=float)

    def profiled_point(self, x) -> np.ndarray:
        """The profiled point of ``x`` (``x`` itself without profiling): remembered from
        its evaluation, else one solve without sensitivities."""
        x = np.asarray(x, dtype=float)
        if not self.z.size:
            return x
        xp = self._points.get(x.tobytes())
        if xp is None:
            try:
                xp = self.value(x)[1]
            except TimeLimitError:
                xp = x
        return xp

    def value(self, x) -> tuple[float, np.ndarray]:
        """``(f, x)``: the objective and the (profiled) point."""
        try:
            with self._limit():
                if self.z.size:
                    f, xp = self.problem.profiled_nllh(x, prior=self.priors is not None)
                    f = float(f)
                    self._remember(x, xp)
                    x = xp
                else:
                    f = float(self.problem.nllh(x))
        except SolveError:
            return math.inf, np.asarray(x, dtype=float)
        if self.priors is not None:
            f += self.priors.value_and_grad(x)[0]
        f = f if np.isfinite(f) else math.inf
        self._keep(x, f)
        return f, np.asarray(x, dtype=float)

    def value_and_grad(self, x):
        """``(f, g)`` (L-BFGS-B's objective); profiled: ``g`` zero for the noise-only
        parameters (the profiled point: :meth:`profiled_point`)."""
        self.n_sens += 1
        prior = self.priors is not None
        try:
            with self._limit():
                if self.z.size:
                    f, g, xp = self.problem.profiled_loss_and_grad(x, prior=prior)
                    self._remember(x, xp)
                    if prior:
                        fp, gp = self.priors.value_and_grad(xp)
                        f, g = f + fp, g + gp
                    g = np.array(g, dtype=float)
                    g[self.z] = 0.0
                    x = xp
                else:
                    f, g = self.problem.objective(x, prior=prior)
        except SolveError:
            return math.inf, np.zeros_like(x)
        self._keep(x, float(f) if np.isfinite(f) else math.inf)
        return float(f), np.asarray(g, dtype=float)

    def secant_mode(self) -> None:
        """From now on :meth:`system` gives the curvature from BFGS updates along the
        gradients it evaluated (by the adjoint, where the forward sensitivities crawl)."""
        self.secant = True

    def _secant_system(self, x):
        """:meth:`system` in :meth:`secant_mode`: the gradient of :meth:`value_and_grad`
        and a BFGS matrix updated with the pair from the last point with a gradient
        (Powell's damping keeps it positive definite; scaled by ``y.y / s.y`` at the first
        pair, Nocedal and Wright 2006, eq. 6.20). Before the first pair: ``|g| I``, whose
        step the fit's trust region bounds."""
        f, g = self.value_and_grad(x)
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            return None
        x = self.profiled_point(x)
        moving = ~self.fixed
        if self._last is not None:
            s_, y_ = (x - self._last[0]) * moving, (g - self._last[1]) * moving
            sy = float(s_ @ y_)
            if self._B is None and sy > 0:
                self._B = np.eye(x.size) * float(y_ @ y_) / sy
            if self._B is not None:
                self._B = _damped_bfgs_update(self._B, s_, y_)
        self._last = (x.copy(), np.array(g, dtype=float))
        H = (np.eye(x.size) * max(float(np.linalg.norm(g)), 1e-12) if self._B is None
             else self._B.copy())
        return float(f), np.asarray(g, dtype=float), H, x

    def system(self, x, trial: bool = False):
        """``(f, g, H, x)`` with ``x`` the (profiled) point, or None where the model
        cannot be solved. Where the Fisher system's forward sensitivities crawl, a
        ``trial`` point is rejected (None) as one that cannot be solved; at any other (the
        start, an accepted point) :class:`~dynlearn.petab.problem.SensitivityCrawlError`
        is raised, and the start goes on with :meth:`secant_mode`."""
        if self.secant:
            return self._secant_system(x)
        self.n_sens += 1
        watch = {"watch": True} if self._watch else {}
        try:
            with self._limit():
                if self.z.size:
                    f, g, A, _, x = self.problem.profiled_fisher_system(
                        x, prior=self.priors is not None, **watch)
                else:
                    f, g, A, _ = self.problem.fisher_system(x, **watch)
        except SensitivityCrawlError:
            if trial:
                return None
            raise
        except SolveError:
            return None
        x = np.asarray(x, dtype=float)
        H = A.T @ A
        if self.priors is not None:
            fp, gp = self.priors.value_and_grad(x)
            f, g = f + fp, g + gp
            for i in self.curved:    # the prior's own curvature (central differences)
                h = 1e-5 * (1.0 + abs(x[i]))
                e = np.zeros_like(x)
                e[i] = h
                c = (self.priors.value_and_grad(x + e)[1][i]
                     - self.priors.value_and_grad(x - e)[1][i]) / (2 * h)
                if np.isfinite(c) and c > 0:
                    H[i, i] += c
        if self.z.size:
            # the profiled objective: its gradient is the full one in the other parameters
            # (envelope theorem), its Fisher information the Schur complement over the
            # noise parameters inside their bounds
            lo = np.asarray(self.problem.lower, dtype=float)[self.z]
            hi = np.asarray(self.problem.upper, dtype=float)[self.z]
            if np.all(np.isfinite(H)):
                H = schur_complement(H, self.z, interior(x[self.z], lo, hi))
            g = np.array(g, dtype=float)
            g[self.z] = 0.0
        if not (np.isfinite(f) and np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
            return None
        self._keep(x, float(f))
        return float(f), g, H, x

    def nllh_part(self, x, f: float) -> float:
        """The likelihood part of the objective value ``f`` at ``x``."""
        if self.priors is None or not np.isfinite(f):
            return f
        return f - self.priors.value_and_grad(x)[0]


def _bounded_step(Hs, gs, lo, hi, free, lam: float) -> np.ndarray:
    """The damped step ``s`` minimising ``gs.s + s.Hs.s / 2 + lam |s|^2 / 2`` (scaled
    coordinates) over the ``free`` entries, within ``lo <= s <= hi``: an entry the step
    would carry past its bound is set on it and the others are solved again (an active
    set), so that a bound met on the way does not shorten the whole step."""
    n = gs.size
    s = np.zeros(n)
    free = free.copy()
    for _ in range(n):
        idx = np.nonzero(free)[0]
        if idx.size == 0:
            break
        fixed = ~free
        ge = gs[idx] + Hs[np.ix_(idx, fixed)] @ s[fixed]
        M = Hs[np.ix_(idx, idx)] + lam * np.eye(idx.size)
        try:
            s[idx] = -np.linalg.solve(M, ge)
        except np.linalg.LinAlgError:
            s[idx] = -np.linalg.lstsq(M, ge, rcond=None)[0]
        out = idx[(s[idx] < lo[idx]) | (s[idx] > hi[idx])]
        if out.size == 0:
            break
        s[out] = np.clip(s[out], lo[out], hi[out])
        free[out] = False
    return s


def _secant_update(S, F, s, y):
    """The structured secant update of NL2SOL (Dennis, Gay and Welsch 1981): ``S`` models
    the part of the Hessian the Fisher information ``F`` misses (the residuals' own
    curvature, large where the residuals are), so that ``F + S`` satisfies the secant
    equation ``(F + S) s = y`` for the step ``s`` and the gradient change ``y``. ``S`` is
    first sized down by ``min(1, |s.y#| / |s.S.s|)`` as NL2SOL does."""
    ys = float(y @ s)
    if not ys > 0 or not np.all(np.isfinite(y)):
        return S
    y_sharp = y - F @ s
    sSs = float(s @ S @ s)
    if sSs != 0:
        S = S * min(1.0, abs(float(s @ y_sharp)) / abs(sSs))
    u = y_sharp - S @ s
    S = S + (np.outer(u, y) + np.outer(y, u)) / ys - float(u @ s) * np.outer(y, y) / ys ** 2
    return 0.5 * (S + S.T)


def _damped_bfgs_update(B, s, y):
    """The BFGS update of the Hessian model ``B`` for the step ``s`` and the gradient change
    ``y``, with Powell's damping (Nocedal and Wright 2006, Procedure 18.2): where ``s.y`` is
    below ``0.2 s.B.s``, ``y`` is moved towards ``B s`` so that ``B`` stays positive
    definite. ``B`` unchanged where ``s.B.s`` is not positive (no step)."""
    Bs = B @ s
    sBs = float(s @ Bs)
    if not sBs > 0:
        return B
    sy = float(s @ y)
    theta = 1.0 if sy >= 0.2 * sBs else 0.8 * sBs / (sBs - sy)
    r = theta * y + (1.0 - theta) * Bs
    return B - np.outer(Bs, Bs) / sBs + np.outer(r, r) / float(s @ r)


def _damping_for_radius(w, c, radius: float, lam_min: float) -> float:
    """The smallest damping ``lam >= lam_min`` whose step ``-c / (w + lam)`` (in the
    eigenbasis ``w`` of the model's Hessian, ``c`` the gradient there) is no longer than
    ``radius``: Newton's method on ``1 / |s(lam)| - 1 / radius``, nearly linear in ``lam``
    and concave, so that it converges from below in a few iterations (More and Sorensen
    1983)."""
    c2 = c * c
    lam = lam_min
    for _ in range(60):
        q = w + lam
        s2 = float(np.sum(c2 / q ** 2))
        sn = math.sqrt(s2)
        if sn <= radius * (1.0 + 1e-3):
            break
        slope = float(np.sum(c2 / q ** 3)) / s2 ** 1.5      # d(1/|s|)/dlam
        lam = max(lam - (1.0 / sn - 1.0 / radius) / slope, lam_min)
    return lam


def _damped_stop(what: str, promised: float, lam_rel: float) -> str:
    """The message of a stop by ``ftol``/``xtol`` that is not convergence."""
    return (f"stalled: {what}, but the quadratic model still promises a decrease of "
            f"{promised:.3g} (the steps were shortened by a relative damping of "
            f"{lam_rel:.3g}); not converged")


def _fisher_run(obj: _Objective, x0, lo, hi, maxiter: int, st: FisherSettings,
                budget: _Budget):
    """One start of the Fisher trust-region method: ``(x, f, Status, message, nit)``."""
    x = np.clip(np.asarray(x0, dtype=float), lo, hi)
    sys_ = obj.system(x)
    if sys_ is None:
        return x, math.inf, Status.FAILED, "the model cannot be solved at the start", 0
    f, g, F, x = sys_
    # parameters the method does not move: the noise parameters profiled out (each
    # evaluation returns them at their optimum with the point)
    fixed = obj.fixed
    moving = (~fixed).astype(float)
    S = np.zeros_like(F)      # the secant correction to the Fisher information
    d = np.zeros(x.size)
    lam_rel, nu = st.damping, 2.0
    # the trust radius (FisherSettings.trust_region="radius"; None until the first
    # accepted step sets it)
    by_radius = st.trust_region == "radius"
    radius = None
    # the secant correction in the model: from the start, or once the model has kept
    # predicting only moderately well (FisherSettings.secant_after)
    with_secant, unchanged = st.secant_after == 0, 0
    it = slow = 0
    # the trust region on the parameters' scales (FisherSettings.step_bound), as a
    # fraction of each parameter's range
    width = np.where(hi - lo > 0, hi - lo, math.inf)
    delta = math.inf if st.step_bound is None else float(st.step_bound)
    # whether a first trial is evaluated with its sensitivities: LM's rule, by counts
    policy = TrialPolicy(st.sensitivities_at_trial, obj)
    status, message = Status.MAX_ITER, f"maximum number of iterations ({maxiter}) reached"
    while it < maxiter:
        obj.nit = it
        if budget.over():
            return x, f, Status.MAX_TIME, f"stopped: max_time={budget.max_time} s reached", it
        it += 1
        # parameters on a bound that the gradient pushes outward stay there
        held = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)) | fixed
        free = np.nonzero(~held)[0]
        if free.size == 0:
            status, message = Status.CONVERGED_GTOL, "converged: every parameter is held " \
                "at a bound by the gradient or profiled out"
            break
        if by_radius:
            ds = np.ones(x.size)
        else:
            d = np.maximum(d, np.sqrt(np.maximum(np.diag(F), 0.0)))
            # (a floor relative to the largest scale: see FisherSettings.scale_floor)
            ds = np.maximum(d, st.scale_floor * d.max())
            ds = np.where(ds > 0, ds, 1.0)
        # the model's Hessian, made positive semidefinite (the secant part may not be)
        wa, Va = np.linalg.eigh(((F + S) if with_secant else F) / np.outer(ds, ds))
        Hs = (Va * np.maximum(wa, 0.0)) @ Va.T
        H = Hs * np.outer(ds, ds)
        gs = g / ds
        w, V = np.linalg.eigh(Hs[np.ix_(free, free)])
        w = np.maximum(w, 0.0)
        # the scale of the damping: the largest curvature among the free parameters
        wmax = float(w[-1]) if w.size and w[-1] > 0 else 1.0
        c = V.T @ gs[free]
        # the decrease the (barely damped) model still promises
        promised = 0.5 * float(np.sum(c * c / (w + 1e-10 * wmax)))
        # ... and with no direction flatter than the floored scales allow (the first-order
        # test of the ftol/xtol stops): along near-null directions the barely damped model
        # turns the gradient's solver noise into large promises
        left = 0.5 * float(np.sum(c * c / (w + max(1e-10, st.scale_floor ** 2) * wmax)))
        if promised <= st.gtol * max(1.0, abs(f)):
            status, message = Status.CONVERGED_GTOL, ("converged: the decrease the "
                                                      "quadratic model promises is below gtol")
            # one more step at the current damping polishes the point (kept only if it
            # lowers the objective): the test passes up to gtol away from the optimum,
            # the step takes it most of the rest of the way. With sensitivities, so that
            # the value reported is the one the gradients were computed with (a solve
            # without them differs by the solver's tolerance). Only a step at the scale
            # of that tolerance (at most sqrt(gtol) of each range) is a polish: a longer
            # one goes along a direction the data barely inform, where the gradient is
            # ~0 and the model no guide
            step = _bounded_step(Hs, gs, (lo - x) * ds, (hi - x) * ds, ~held,
                                 lam_rel * wmax) / ds
            xn = np.clip(x + step, lo, hi)
            if (not small_step(xn - x, x, st.xtol)
                    and np.max(np.abs(xn - x) / width) <= math.sqrt(st.gtol)):
                polished = obj.system(xn, trial=True)
                if polished is not None and polished[0] < f:
                    x, f = polished[3], polished[0]
            break
        accepted = tiny = False
        tries, trial_sys = 0, None
        while True:
            tries += 1
            if budget.over():
                return x, f, Status.MAX_TIME, f"stopped: max_time={budget.max_time} s reached", \
                    it - 1
            # the damped step; more damping while it leaves the trust region (cheap: no
            # solve of the model)
            lam, limited = lam_rel * wmax, False
            if by_radius and radius is not None:
                lam = _damping_for_radius(w, c, radius, 1e-12 * wmax)
            for _ in range(200):
                step = _bounded_step(Hs, gs, (lo - x) * ds, (hi - x) * ds, ~held, lam) / ds
                if np.max(np.abs(step) / width) > delta:
                    lam, limited = 4.0 * lam, True
                elif by_radius and radius is not None and \
                        float(np.linalg.norm(step)) > radius * (1.0 + 1e-3):
                    # a bound met on the way (the others solved again without the bounded
                    # parameters' part) lengthened the step past the radius: without more
                    # damping, the same step would be tried again after every rejection
                    lam *= 4.0
                else:
                    break
            xn = np.clip(x + step, lo, hi)
            step = xn - x
            if small_step(step, x, st.xtol):
                tiny = True
                break
            pred = -(float(g @ step) + 0.5 * float(step @ H @ step))
            # the first trial of an iteration comes with its sensitivities while most first
            # trials are accepted (counted with a prior of one accepted, one rejected): an
            # accepted step then costs one solve with sensitivities instead of two solves
            with_sys = tries == 1 and policy.choose()
            if with_sys:
                trial_sys = obj.system(xn, trial=True)
                fn = math.inf if trial_sys is None else trial_sys[0]
            else:
                fn = obj.value(xn)[0]
                if not np.isfinite(fn):
                    # a solve without sensitivities can fail where one with them does
                    # not (their error control takes other steps: measured on
                    # Elowitz_Nature2000, every trial near a start failed so): try once
                    # more with them before rejecting the point
                    with_sys = True
                    trial_sys = obj.system(xn, trial=True)
                    fn = math.inf if trial_sys is None else trial_sys[0]
            rho = (f - fn) / pred if pred > 0 and np.isfinite(fn) else -1.0
            if tries == 1:
                policy.count(rho > 1e-4)
            if rho > 1e-4:
                accepted = True
                break
            unchanged = 0
            if by_radius:
                # a quarter of the step the model mispredicted
                radius = 0.25 * float(np.linalg.norm(step))
                lam_rel = lam / wmax
            else:
                # (from the damping the step had: raised by the trust region, a smaller
                # increase would give the same step again)
                lam_rel = max(lam_rel, lam / wmax) * nu
                nu *= 2.0
            if lam_rel > MAX_DAMPING:
                break
        if not accepted:
            if tiny and left > st.ptol * max(1.0, abs(f)):
                status, message = Status.STALLED, _damped_stop("the step fell below xtol",
                                                               left, lam_rel)
            elif tiny:
                status, message = Status.CONVERGED_XTOL, ("converged: no step reduces the "
                                                          "objective (step below xtol)")
            else:
                status, message = Status.STALLED, (
                    "stalled: no step reduces the objective although the damping grew past "
                    f"{MAX_DAMPING:.0e} (the gradient promises a decrease the objective does "
                    "not show: try tighter solver tolerances)")
            break
        sys_ = trial_sys if with_sys else obj.system(xn)
        if sys_ is None:       # solved without sensitivities but not with: a failed trial
            if by_radius:
                radius = 0.25 * float(np.linalg.norm(step))
            lam_rel *= nu
            nu *= 2.0
            unchanged = 0
            continue
        x_old, f_old, g_old = x, f, g
        f, g, F, x = sys_
        # (the step in the parameters the method moves: the profiled ones follow)
        if st.secant_after is not None:
            # (kept up to date before it enters the model, as fides's BFGS is)
            S = _secant_update(S, F, (x - x_old) * moving, g - g_old)
        if limited and rho > 0.75:
            delta *= 2.0      # the model predicted well up to the trust region's edge
        if by_radius:
            length = float(np.linalg.norm(step))
            before = length if radius is None else radius
            radius = before
            if rho < 0.25:
                radius = 0.5 * length
            elif rho > 0.75:
                radius = max(radius, 2.0 * length)
            unchanged = unchanged + 1 if radius == before else 0
            lam_rel = lam / wmax
        else:
            lam_rel = max(lam_rel * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), 1e-15)
            unchanged = unchanged + 1 if 0.25 <= rho <= 0.75 else 0
        nu = 2.0
        if st.secant_after is not None and unchanged >= st.secant_after:
            with_secant = True
        # two accepted steps in a row that lower the objective by less than ftol: one
        # alone may be a step shortened by a large damping
        slow = slow + 1 if f_old - f <= st.ftol * (1.0 + abs(f_old)) else 0
        short = small_step((x - x_old) * moving, x, st.xtol)
        if (slow >= 2 or short) and left > st.ptol * max(1.0, abs(f_old)):
            # the steps are short because the damping is large, not because the model
            # sees an optimum: that is not convergence
            status, message = Status.STALLED, _damped_stop(
                "two steps in a row lowered the objective by less than ftol" if slow >= 2
                else "the step fell below xtol", left, lam_rel)
            break
        if slow >= 2:
            status, message = Status.CONVERGED_FTOL, "converged: relative objective " \
                "reduction below ftol in two steps in a row"
            break
        if short:
            status, message = Status.CONVERGED_XTOL, "converged: relative step below xtol"
            break
    return x, f, status, message, it


def _secant_settings(st: FisherSettings) -> FisherSettings:
    """The Fisher method's settings for its BFGS form: no structured secant correction
    (it corrects a Fisher information that is not there)."""
    return dataclasses.replace(st, secant_after=None)


def _lbfgsb_run(obj: _Objective, x0, lo, hi, maxiter: int, budget: _Budget):
    """One start of scipy's L-BFGS-B: ``(x, f, Status, message, nit)``."""
    from scipy.optimize import minimize

    def out_of_time(intermediate_result=None):
        obj.nit += 1
        if budget.over():
            raise StopIteration

    x0 = np.clip(np.asarray(x0, dtype=float), lo, hi)
    try:
        res = minimize(obj.value_and_grad, x0, jac=True, method="L-BFGS-B",
                       callback=out_of_time, bounds=list(zip(lo, hi)),
                       options=dict(maxiter=maxiter))
    except (SolveError, ValueError) as exc:
        return x0, math.inf, Status.FAILED, str(exc), 0
    # with noise parameters profiled out, L-BFGS-B's point holds their warm start: report
    # the profiled point (the value res.fun is its objective)
    res.x = obj.profiled_point(res.x)
    f = float(res.fun)
    if not np.isfinite(f):
        return res.x, math.inf, Status.FAILED, str(res.message), int(res.nit)
    if res.success:
        text = str(res.message).lower()
        status = Status.CONVERGED_GTOL if "pgtol" in text or "grad" in text \
            else Status.CONVERGED_FTOL
        return res.x, f, status, str(res.message), int(res.nit)
    if budget.over():
        return res.x, f, Status.MAX_TIME, f"stopped: max_time={budget.max_time} s reached", \
            int(res.nit)
    status = Status.MAX_ITER if res.nit >= maxiter else Status.STALLED
    return res.x, f, status, str(res.message), int(res.nit)


def _label(status: Status) -> str:
    """The short status of a start in :class:`PetabFit` runs (and ``starts.csv``)."""
    if status.converged:
        return "converged"
    if status is Status.MAX_TIME:
        return "max_time"
    if status is Status.FAILED:
        return "failed"
    return "not converged"


def fit_one_start(item, problem, optimizer: str, maxiter: int, settings: FisherSettings,
                  posterior: bool, max_time=None, deadline=None) -> dict:
    """One start of :func:`fit_petab` (module level, so that an executor can send it to
    another process): ``item`` is ``(index, start)``; returns the start's run (see
    :func:`fit_petab`).

    A start begun after ``deadline`` (``time.time()``) is not run. A solve running when the
    deadline passes stops (:class:`~dynlearn.errors.TimeLimitError`, raised inside the
    solver's right-hand side): the start ends with status ``"max_time"`` at the best point
    it evaluated. The first evaluation of the first start (index 0) runs without the
    deadline, so that the fit has a point to report."""
    k, s = item
    s = np.asarray(s, dtype=float)
    budget = _Budget(max_time, deadline)
    if k > 0 and budget.over():
        return dict(index=k, x=s, fun=math.inf, nllh=math.inf, start=s, nit=0,
                    message="not run: max_time reached", status="not run",
                    reason="not_run", success=False, optimizer=optimizer, n_eval=0, n_sens=0,
                    time=0.0)
    lo, hi = np.asarray(problem.lower, float), np.asarray(problem.upper, float)
    # each start evaluates a copy of its own (PetabProblem.copy): the state an evaluation
    # keeps on the problem (the crawl's yardstick, the fallback the objective turns off, a
    # switch to the adjoint) is then neither mixed between starts run on threads of one
    # process nor left changed on the caller's problem
    own = getattr(problem, "copy", None)
    problem = own() if callable(own) else problem
    # a process pool's map unpickles the problem for every start: the model's compiled
    # functions are then those this process keeps for its structure (compiled once per
    # process, as on a Dask worker; in this process the model keeps its own)
    share_compiled(problem)
    obj = _Objective(problem, posterior, deadline, free_first=k == 0,
                     profile=settings.profile_noise)
    t0 = time.perf_counter()
    used = optimizer
    try:
        if optimizer == "fisher":
            try:
                x, f, status, message, nit = _fisher_run(obj, s, lo, hi, maxiter, settings,
                                                         budget)
            except SensitivityCrawlError as exc:
                # the Fisher information is not to be had at the start or at an accepted
                # point: the same trust-region method on BFGS updates of the adjoint
                # gradient, from the start's best point
                done = obj.nit
                used = FISHER_THEN_SECANT
                obj.secant_mode()
                start = s if obj.best_x is None else obj.best_x
                x, f, status, message, nit = _fisher_run(
                    obj, start, lo, hi, max(maxiter - done, 1), _secant_settings(settings),
                    budget)
                nit += done
                message = (f"{message} (after {done} iterations on the Fisher information, "
                           f"on BFGS updates of the adjoint gradient: {exc})")
        else:
            x, f, status, message, nit = _lbfgsb_run(obj, s, lo, hi, maxiter, budget)
    except TimeLimitError as exc:
        # stopped inside a solve (by this fit's deadline, or an enclosing one)
        x, f, status, nit = np.clip(s, lo, hi), math.inf, Status.MAX_TIME, obj.nit
        limit = "the time limit" if max_time is None else f"max_time={max_time} s"
        message = f"stopped: {limit} reached during a solve ({exc})"
    if status is Status.MAX_TIME and obj.best_f < f:
        # out of time, the start's result is the best point it evaluated
        x, f = obj.best_x, obj.best_f
    return dict(index=k, x=np.asarray(x, dtype=float), fun=float(f),
                nllh=obj.nllh_part(x, f), start=s, nit=int(nit), message=message,
                status=_label(status), reason=status.value,
                success=status.converged and bool(np.isfinite(f)),
                optimizer=used, n_eval=obj.n_eval, n_sens=obj.n_sens,
                time=time.perf_counter() - t0)


def fit_petab(problem, n_starts: int = 10, seed: int | None = 0, x0=None,
              maxiter: int = 2000, starts=None, max_time: float | None = None,
              prior: bool = True, optimizer: str = "auto",
              settings: FisherSettings | None = None, client=None) -> PetabFit:
    """Multi-start fit of a PEtab problem within the bounds of its parameter table.

    Parameters
    ----------
    problem : PetabProblem
        Anything with ``x_names``, ``lower``, ``upper``, ``priors``, ``nllh``,
        ``objective`` (and ``fisher_system`` for the Fisher method).
    n_starts, seed, x0 : int, int or None, array-like
        Starts drawn by :func:`draw_starts` (``x0`` the first).
    maxiter : int
        Iterations per start.
    starts : array-like (k, n), optional
        Starts given explicitly (then ``n_starts``, ``seed`` and ``x0`` are not used).
    max_time : float, optional
        Wall-clock budget of the whole fit in seconds, checked between iterations and
        inside every solve (:func:`dynlearn.solve.deadline`): the running start stops at
        the best point it evaluated (status ``"max_time"``), the starts not begun are
        recorded as ``"not run"``. The first evaluation of the first start runs to its
        end, so that there is a point to report.
    prior : bool
        Minimise the negative log-posterior when the parameter table has priors.
    optimizer : {"auto", "fisher", "lbfgsb"}
        See the module notes.
    settings : FisherSettings, optional
        Tolerances of the Fisher method.
    client : None, executor, Dask client or map-like callable
        Where the starts run (:func:`dynlearn.distributed.resolve_executor`): by default
        one after the other in this process (or on the Dask client of an enclosing
        ``dl.parallel`` block); the problem is sent to each worker.

    Returns
    -------
    PetabFit
        Every start, best first. Each run's ``status`` is ``"converged"``, ``"not
        converged"``, ``"max_time"``, ``"failed"`` or ``"not run"``; ``reason`` is the
        :class:`~dynlearn.optimizers.Status` value behind it (e.g. ``"converged_ftol"``,
        ``"stalled"``, ``"max_iter"``), ``optimizer`` the method, ``n_eval`` the
        evaluations (solves), ``n_sens`` those of them with sensitivities and ``time`` the
        start's wall time in seconds.
    """
    if optimizer == "auto":
        optimizer = choose_optimizer(problem)
    if optimizer not in FIT_OPTIMIZERS:
        raise OptionError(f"optimizer={optimizer!r}: use 'auto' or one of {FIT_OPTIMIZERS}")
    if optimizer not in available_optimizers(problem):
        raise OptionError(f"optimizer={optimizer!r} needs the problem's Fisher information "
                          f"(fisher_system), which a {type(problem).__name__} does not have: "
                          f"use one of {('auto', *available_optimizers(problem))}")
    settings = FisherSettings() if settings is None else settings
    if starts is None:
        starts = draw_starts(problem, n_starts, seed, x0)
    starts = np.atleast_2d(np.asarray(starts, dtype=float))
    posterior = bool(prior and problem.priors is not None)
    deadline = None if max_time is None else time.time() + float(max_time)
    shared = dict(problem=problem, optimizer=optimizer, maxiter=int(maxiter),
                  settings=settings, posterior=posterior, max_time=max_time, deadline=deadline)
    executor = resolve_executor(client)
    runs = executor.map(fit_one_start, list(enumerate(starts)),
                        [f"start {k + 1}" for k in range(len(starts))], shared)
    runs.sort(key=lambda r: (r["fun"], r["index"]))
    return PetabFit(x=runs[0]["x"], fun=runs[0]["fun"], x_names=list(problem.x_names),
                    runs=runs, posterior=posterior)
