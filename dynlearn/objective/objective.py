"""The objective of a fit over a dataset: residuals, Jacobians, losses and their gradients.

:class:`FitObjective` is the one implementation of a fit's loss (see
:mod:`dynlearn.objective.losses` for the residual formula). It is what :func:`dynlearn.fit`
minimises, and :func:`loss`, :func:`loss_and_grad` and :class:`Objective` are front-ends to
it in the model's own parameters ``theta``, so that ``dl.loss(result.model, data, ...)``
equals ``result.loss`` for the same settings.

The default loss is the sum of squared residuals over every observed value (NaN = not
observed), summed over experiments. Each experiment starts from its first data row unless an
initial state is given.

Evaluated by experiment
-----------------------
Experiments are independent given ``x``: everything a fit computes is a sum (costs,
gradients, noise statistics) or a stack (residuals, Jacobian rows) over experiments plus the
L2 rows of network weights. The per-experiment methods (``experiment_residuals``,
``experiment_jacobian``, ``experiment_cost_and_grad``, ``experiment_noise_statistics``,
``experiment_prediction``) are what an objective evaluated elsewhere (on Dask:
:class:`dynlearn.distributed.fanned.FannedObjective`) or in pieces (multiple shooting:
:class:`dynlearn.objective.shooting.ShootingObjective`) builds on.
"""

from __future__ import annotations

import numpy as np

from dynlearn.core.parameters import Parameter, ParameterSpace
from dynlearn.core.vectorfield import VectorField
from dynlearn.data.dataset import Dataset, as_dataset
from dynlearn.errors import OptionError, ParameterError, SolveError
from dynlearn.objective.binding import BoundExperiment, bind_data
from dynlearn.objective.losses import LOSS_NAMES, Loss, Rejected, loss_from_name
from dynlearn.objective.noise import NoiseFormulas, split_noise_formulas
from dynlearn.sensitivity import Problem, Sensitivity
from dynlearn.sensitivity.choice import (
    cheap_jacobian,
    choose_method_for,
    default_sensitivity,
    observable_jacobian,
)
from dynlearn.solve import AUTO_METHOD, MethodChoice, check_method, check_options, solve_observed

__all__ = [
    "L2_AUTO",
    "L2_GCV",
    "LOSS_NAMES",
    "SOLVE_FAILURES",
    "BoundExperiment",
    "FitObjective",
    "LeastSquaresProblem",
    "Objective",
    "Rejected",
    "bind_data",
    "loss",
    "loss_and_grad",
    "parse_sigma",
    "probe_method",
]

#: the value of ``l2=`` that asks for the L2 strength of the discrepancy principle (resolved
#: by :mod:`dynlearn.fitting.regularisation` before an objective is built; model files
#: accept it and the one below too)
L2_AUTO = "auto"
#: the value of ``l2=`` that asks for the strength minimising generalised cross-validation,
#: the default
L2_GCV = "gcv"

#: What a solve that fails at a trial point raises (a solver failure, parameters that
#: cannot be used); the objectives turn these into :class:`Rejected`. Anything else is a bug
#: (in the model's code or dynlearn's) and propagates.
SOLVE_FAILURES = (SolveError, ParameterError)


# --- front-ends in the model's parameters ------------------------------------------------
class Objective:
    """A loss over a dataset in the model's parameters ``theta``, evaluated with a chosen
    solver and gradient method: the objective of :func:`dynlearn.fit` (same loss, noise
    levels, weights and L2 term), with every initial state known.

    Parameters
    ----------
    model : HybridModel
    data : Dataset
    y0 : see :func:`~dynlearn.objective.binding.bind_data`
    method, rtol, atol : solver settings
        ``method="auto"``: RK45 or LSODA as a stiffness probe at ``auto_theta`` decides
        (see :func:`dynlearn.solve.choose_method`); :attr:`method_choice` says which and why.
    sensitivity : Sensitivity, optional
        Default: :func:`~dynlearn.sensitivity.choice.default_sensitivity` (the adjoint;
        forward sensitivities with a stiff method and at most 100 parameters).
    loss : {"ls", "gaussian", "log"} or Loss
        As in :func:`dynlearn.fit`. For ``"gaussian"`` the noise levels not given are
        estimated at each ``theta`` (in closed form), and the value is the negative
        log-likelihood.
    transform, sigma, weights, l2, sigma_by, noise_params : as in :func:`dynlearn.fit`
        ``<obs>_sigma`` data columns give noise levels too.
    input_kind : {"linear", "zoh"}, optional
        How inputs are interpolated between samples (default: the dataset's setting, else
        linear). With ``"zoh"`` the solvers restart at every input jump.
    auto_theta : array_like, optional
        Where ``method="auto"`` probes the problem's stiffness (default ``model.theta0``).
    **options : solver options
    """

    def __init__(self, model, data, y0=None, method: str = "RK45", rtol: float = 1e-6,
                 atol: float = 1e-8, sensitivity: Sensitivity | None = None, *,
                 loss: str | Loss = "ls", sigma=None, weights=None, l2: float = 0.0,
                 input_kind: str | None = None, auto_theta=None, sigma_by: str | None = None,
                 transform=None, noise_params=None, **options):
        method = check_method(method, auto=True)
        options = check_options(options, "loss")
        if sensitivity is not None and not isinstance(sensitivity, Sensitivity):
            raise OptionError(f"sensitivity must be dl.ForwardSensitivity(), dl.Adjoint() or "
                              f"dl.FiniteDifference(), got {sensitivity!r}")
        self.data = as_dataset(data) if not isinstance(data, Dataset) else data
        self.bound = bind_data(model, self.data, y0, input_kind)
        space = ParameterSpace(model, [[Parameter(float(v), fixed=True) for v in b.y0]
                                       for b in self.bound], [e.name for e in self.data])
        choice = None
        if method == AUTO_METHOD:
            choice = probe_method(model, self.bound, model.check_theta(auto_theta),
                                  [b.y0 for b in self.bound], rtol, atol, options)
        self.fit_objective = FitObjective(model, self.bound, space, loss, sigma, weights,
                                          l2, method, rtol, atol, options, sensitivity,
                                          method_choice=choice, sigma_by=sigma_by,
                                          transform=transform, noise_params=noise_params)

    @property
    def model(self):
        return self.fit_objective.model

    @property
    def sensitivity(self) -> Sensitivity:
        return self.fit_objective.sensitivity

    @property
    def method(self) -> str:
        return self.fit_objective.method

    @property
    def method_choice(self) -> MethodChoice | None:
        """With ``method="auto"``: the solver chosen and why (else None)."""
        return self.fit_objective.method_choice

    @property
    def rtol(self) -> float:
        return self.fit_objective.rtol

    @property
    def atol(self) -> float:
        return self.fit_objective.atol

    @property
    def options(self) -> dict:
        return self.fit_objective.options

    def _theta_y0s(self, theta, y0s):
        theta = self.model.check_theta(theta)
        return theta, [b.y0 for b in self.bound] if y0s is None else list(y0s)

    def _estimate_noise(self, predictions) -> None:
        """Set the noise levels at the point of ``predictions`` (one array of observables
        per experiment) for a loss that estimates them (else nothing)."""
        fo = self.fit_objective
        if not fo.estimates_noise:
            return
        fo.set_sigma(fo.estimate_noise(predictions), predictions=predictions)

    def _predictions(self, theta, y0s):
        for i, y0 in enumerate(y0s):
            p = self.fit_objective.experiment_problem(i, theta, y0)
            Y, _ = solve_observed(p.vf, p.t0, p.t_obs, p.y0, p.method, p.rtol, p.atol,
                                  p.options, where=p.where)
            yield p.vf.observe_batch(p.t_obs, Y)

    def problems(self, theta=None, y0s=None) -> list[Problem]:
        """One :class:`~dynlearn.sensitivity.Problem` per experiment, whose ``obs_loss`` is
        the experiment's data term (noise levels estimated at ``theta`` first, if the loss
        does)."""
        theta, y0s = self._theta_y0s(theta, y0s)
        if self.fit_objective.estimates_noise:
            self._estimate_noise(list(self._predictions(theta, y0s)))
        # (noise formulas: the gradient follows their levels through the predictions)
        return [self.fit_objective.experiment_problem(i, theta, y0, through_sigma=True)
                for i, y0 in enumerate(y0s)]

    def value(self, theta=None, y0s=None) -> float:
        """The loss at ``theta`` (``y0s``: one initial state per experiment, default the
        bound ones)."""
        theta, y0s = self._theta_y0s(theta, y0s)
        fo = self.fit_objective
        Hs = list(self._predictions(theta, y0s))
        self._estimate_noise(Hs)
        total = 0.0
        for i, H in enumerate(Hs):
            total += fo.data_term(i)(H)[0]
        if fo.n_reg:
            total += fo.weight_penalty(theta[fo.space.is_weight[:fo.space.n_theta]])[0]
        return fo.loss.value(float(total), fo.penalty(), fo.n_data)

    def value_and_grad(self, theta=None, y0s=None, wrt_y0: bool = False):
        """``(value, d value / d theta)`` (and the gradients in each experiment's initial
        state with ``wrt_y0``), by the chosen sensitivity method."""
        fo = self.fit_objective
        problems = self.problems(theta, y0s)
        theta = self.model.check_theta(theta)
        total, grad, gy0 = 0.0, np.zeros(self.model.n_theta), []
        for p in problems:
            v, g, gy = fo.sensitivity.loss_and_grad(p, wrt_y0)
            total += v
            grad += g
            gy0.append(gy)
        if fo.n_reg:
            weight = fo.space.is_weight[:fo.space.n_theta]
            v, g = fo.weight_penalty(theta[weight])
            total += v
            grad[weight] += g
        value = fo.loss.value(float(total), fo.penalty(), fo.n_data)
        grad = fo.loss.gradient(grad)
        if not wrt_y0:
            return value, grad
        return value, grad, [None if g is None else fo.loss.gradient(g) for g in gy0]


def loss(model, data, theta=None, method: str = "RK45", rtol: float = 1e-6, atol: float = 1e-8,
         y0=None, *, loss: str | Loss = "ls", sigma=None, weights=None, l2: float = 0.0,
         input_kind: str | None = None, sigma_by: str | None = None, transform=None,
         noise_params=None, **options) -> float:
    """The loss of a model against data, as :func:`dynlearn.fit` measures it: one forward
    solve per experiment.

    With the defaults, the sum of squared residuals (divided by the noise levels of
    ``<obs>_sigma`` data columns where there are such columns).

    Parameters
    ----------
    model : HybridModel
    data : Dataset
    theta : array_like, optional
        Free parameters (physical units) then network weights; default ``model.theta0``.
    method : str
        Any ``solve_ivp`` method.
    rtol, atol : float
    y0 : see :func:`~dynlearn.objective.binding.bind_data`
    loss : {"ls", "gaussian", "log"} or Loss
        As in :func:`dynlearn.fit` (``"gaussian"``: the negative log-likelihood with the
        noise levels not given estimated at ``theta``).
    sigma, weights, l2, input_kind, sigma_by, transform, noise_params : as in
        :func:`dynlearn.fit` (noise parameters of formulas are estimated at ``theta``)
    **options : solver options (``max_step``, ``first_step``, ...)

    Returns
    -------
    float
        For a fitted model, ``result.loss`` (with the fit's settings).
    """
    return Objective(model, data, y0, method, rtol, atol, loss=loss, sigma=sigma,
                     weights=weights, l2=l2, input_kind=input_kind, auto_theta=theta,
                     sigma_by=sigma_by, transform=transform, noise_params=noise_params,
                     **options).value(theta)


def loss_and_grad(model, data, theta=None, sensitivity: Sensitivity | None = None,
                  method: str = "RK45", rtol: float = 1e-6, atol: float = 1e-8, y0=None, *,
                  loss: str | Loss = "ls", sigma=None, weights=None, l2: float = 0.0,
                  input_kind: str | None = None, sigma_by: str | None = None, transform=None,
                  noise_params=None, **options) -> tuple[float, np.ndarray]:
    """The loss (as :func:`loss`) and its gradient with respect to ``theta``.

    Parameters
    ----------
    sensitivity : Sensitivity, optional
        ``dl.Adjoint()``, ``dl.ForwardSensitivity()`` or ``dl.FiniteDifference()`` (default
        as :class:`Objective`).
    Other parameters as in :func:`loss`.

    Returns
    -------
    value : float
    grad : ndarray, shape (n_theta,)
        In physical units, in the order of ``model.theta_names``.
    """
    obj = Objective(model, data, y0, method, rtol, atol, sensitivity, loss=loss, sigma=sigma,
                    weights=weights, l2=l2, input_kind=input_kind, auto_theta=theta,
                    sigma_by=sigma_by, transform=transform, noise_params=noise_params,
                    **options)
    return obj.value_and_grad(theta)


def probe_method(model, bound, theta, y0s, rtol, atol, options) -> MethodChoice:
    """What ``method="auto"`` chooses for experiments ``bound`` started from ``y0s`` at
    parameters ``theta`` (physical): a stiffness probe of each experiment's solve
    (:func:`~dynlearn.sensitivity.choice.choose_method_for`), stopping at the first stiff
    one."""
    def problems():
        for b, y0 in zip(bound, y0s):
            yield Problem(VectorField(model, theta, b.inputs), b.t0, b.t,
                          np.asarray(y0, dtype=float), None, AUTO_METHOD, rtol, atol,
                          dict(options), b.name)
    try:
        return choose_method_for(problems())
    except ParameterError as exc:       # parameters the model cannot use: the fit says so
        return MethodChoice("LSODA", None, np.nan, f"the stiffness probe could not run "
                            f"({exc}); LSODA handles both stiff and non-stiff problems")


# --- least-squares problems with a memory ----------------------------------------------------
class LeastSquaresProblem:
    """Residuals and their Jacobian at ``x``, with a memory of the last point.

    :meth:`system` gives what a Gauss-Newton-type step needs: ``(r, A, b)`` with
    ``A^T A = J^T J``, ``A^T b = J^T r`` and ``|b + A s|^2 = |r + J s|^2 - c`` for every step
    ``s`` (``c`` constant). By default that is ``(r, J, r)``; an objective evaluated in
    pieces (on Dask) returns the triangular factor of a QR decomposition of ``[J r]``
    instead, which is far smaller than ``J``.

    An optimizer asks again for what it already has (the cost at the accepted trial point,
    the Jacobian there for the covariance), and each of those is a solve of every
    experiment: the last evaluation is remembered. Arrays handed out are read-only, so
    the remembered ones cannot change behind the memory's back.

    Subclasses implement :meth:`compute_residuals` and :meth:`compute_jacobian` (and may
    override :meth:`compute_system` and :meth:`count`), and call :meth:`forget` when
    anything but ``x`` changes what they compute.
    """

    _memo = None   # (x, residuals, A or None, b or None); A is the Jacobian when b is r

    # --- what subclasses implement ----------------------------------------------------------
    def compute_residuals(self, x) -> np.ndarray:  # pragma: no cover - interface
        """All residuals at ``x``, not remembered; raises :class:`Rejected`."""
        raise NotImplementedError

    def compute_jacobian(self, x):  # pragma: no cover - interface
        """``(residuals, d residuals / d x)`` at ``x``, not remembered; raises
        :class:`Rejected`."""
        raise NotImplementedError

    def compute_system(self, x):
        """``(r, A, b)`` at ``x`` (see the class notes), not remembered."""
        r, J = self.compute_jacobian(x)
        return r, J, r

    def count(self, kind: str) -> None:
        """Told of every evaluation: ``kind`` is ``"nfev"`` (residuals), ``"njev"``
        (Jacobian), ``"ngev"`` (gradient) or ``"rejected"`` (the point was rejected)."""

    # --- remembered evaluations ----------------------------------------------------------
    def forget(self) -> None:
        """Drop the remembered evaluation."""
        self._memo = None

    def _recall(self, x, need: str):
        """The memory at ``x`` if it holds what ``need`` asks: "r", "system" or "J"."""
        m = self._memo
        if m is None or not np.array_equal(m[0], x):
            return None
        if need == "system" and m[2] is None or need == "J" and m[3] is not m[1]:
            return None
        return m

    def _remember(self, x, r, A=None, b=None):
        for a in (r, A, b):
            if a is not None:
                a.setflags(write=False)
        self._memo = (np.array(x, dtype=float), r, A, b)

    def residuals(self, x) -> np.ndarray:
        """All residuals at ``x``; raises :class:`Rejected`."""
        m = self._recall(x, "r")
        if m is not None:
            return m[1]
        r = self._evaluated("nfev", self.compute_residuals, x)
        self._remember(x, r)
        return r

    def jacobian(self, x):
        """``(residuals, d residuals / d x)``; raises :class:`Rejected`."""
        m = self._recall(x, "J")
        if m is not None:
            return m[1], m[2]
        r, J = self._evaluated("njev", self.compute_jacobian, x)
        self._remember(x, r, J, r)
        return r, J

    def system(self, x):
        """``(r, A, b)`` at ``x`` (see the class notes); raises :class:`Rejected`."""
        m = self._recall(x, "system")
        if m is not None:
            return m[1], m[2], m[3]
        r, A, b = self._evaluated("njev", self.compute_system, x)
        self._remember(x, r, A, b)
        return r, A, b

    def last_system(self, x):
        """The remembered ``(residuals, A)`` at ``x`` (``A^T A = J^T J``), or ``None``."""
        m = self._recall(x, "system")
        return None if m is None else (m[1], m[2])

    def _evaluated(self, kind: str, f, x):
        self.count(kind)
        try:
            return f(x)
        except Rejected:
            self.count("rejected")
            raise


# --- the objective of a fit ---------------------------------------------------------------
class FitObjective(LeastSquaresProblem):
    """Residuals, Jacobians and gradients of a fit, in the optimizer's coordinates ``x``.

    The residuals are those of :mod:`dynlearn.objective.losses`, with ``sigma`` from
    ``<obs>_sigma`` data columns or the ``sigma`` argument (default 1; estimated per
    observable by losses that estimate noise), ``w`` optional weights. Network weights get
    an L2 penalty ``l2 * |w|^2``, added as extra residuals ``sqrt(l2) w`` so least-squares
    optimizers see it. ``cost = sum r^2``; :meth:`penalty` is the ``2 sum log sigma`` (plus
    the constant of the data's log transforms) that makes it ``2 x`` the negative
    log-likelihood (up to ``n log 2 pi``) for the Gaussian loss.

    Parameters
    ----------
    model : HybridModel
    bound : list of BoundExperiment
    space : ParameterSpace
    loss : {"ls", "gaussian", "log"} or Loss
        Bound to the model's observables (:meth:`~dynlearn.objective.losses.Loss.bind`).
    sigma : None, float, str or dict observable -> float or str
        Known noise levels (numbers), or names of estimated noise levels shared by the
        observables that give the same name (see :func:`parse_sigma`).
    weights : None or dict observable -> float
    l2 : float
    method, rtol, atol, options : solver settings
        ``method="auto"`` takes ``method_choice.method``, or probes the problem's stiffness
        at the starting point ``space.x0`` (:func:`probe_method`).
    sensitivity : Sensitivity, optional
        Gradient method of :meth:`cost_and_grad` (default:
        :func:`~dynlearn.sensitivity.choice.default_sensitivity`); a
        :class:`~dynlearn.ForwardSensitivity` also computes the Jacobians of methods
        without a discrete tangent (see :mod:`dynlearn.sensitivity.choice`).

    method_choice : MethodChoice, optional
        What ``method="auto"`` chose (kept for the result and checkpoints).
    sigma_by : {None, "experiment"}
        ``"experiment"``: every experiment gets noise levels of its own (each noise group
        is split by experiment, labelled ``<group>@<experiment>``).
    transform : None, str or dict observable -> str
        The residual transform per observable (``"lin"``, ``"log"``, ``"log10"``; see
        :func:`~dynlearn.objective.losses.loss_from_name`).
    noise_params : dict name -> start or (start, lower, upper), optional
        Starts and bounds of the noise parameters of ``sigma`` formulas (see
        :mod:`dynlearn.objective.noise`).

    Attributes
    ----------
    loss : Loss
    noise_groups : list of str
        The labels of the noise levels :attr:`sigma_hat` holds, in its order: by default
        the observables' names; a name given in ``sigma`` for a shared level; with
        ``sigma_by="experiment"``, ``<group>@<experiment>``; then the noise parameters of
        formulas.
    group_of : ndarray of int, shape (n_experiments, n_obs)
        The noise group (index into :attr:`noise_groups`) of each experiment's observable,
        used for its values without a known sigma.
    estimated : ndarray of bool, shape (n_groups,)
        Which noise groups the fit estimates (the loss does, and the group has data
        without a known sigma).
    sigma_hat : ndarray, shape (len(noise_groups),)
        The current estimates of the noise groups' levels, then of the formulas' noise
        parameters.
    n_groups : int
        How many of :attr:`noise_groups` are noise groups (the rest: noise parameters).
    noise_formulas : NoiseFormulas or None
        The ``sigma`` formulas (:class:`~dynlearn.objective.noise.NoiseFormulas`); their
        levels are taken at the predictions given to :meth:`set_sigma` and held there
        (iteratively reweighted least squares) until it is called again.
    formula_columns : ndarray of bool, shape (n_obs,)
        The observables whose unknown noise levels are formulas.
    log_jacobian : float
        ``-sum log g'(d)`` over the data (:meth:`~dynlearn.objective.losses.Loss.log_jacobian`):
        what the negative log-likelihood of the data adds to that of their transforms.
    method : str
        The ``solve_ivp`` method used (never ``"auto"``).
    method_choice : MethodChoice or None
    tracker : object or None
        Told of evaluations (:meth:`count`) and of evaluated points (:meth:`report`); a
        fit sets its :class:`~dynlearn.fitting.fitter.Tracker` here.
    """

    def __init__(self, model, bound, space, loss: str | Loss = "ls", sigma=None, weights=None,
                 l2: float = 0.0, method: str = "RK45", rtol: float = 1e-6,
                 atol: float = 1e-8, options: dict | None = None,
                 sensitivity: Sensitivity | None = None,
                 method_choice: MethodChoice | None = None, sigma_by: str | None = None,
                 transform=None, noise_params=None):
        obs = list(model.observable_names)
        loss = loss_from_name(loss, transform).bind(obs)
        self.model, self.bound, self.space, self.loss = model, bound, space, loss
        self.rtol, self.atol = rtol, atol
        self.options = dict(options or {})
        if method == AUTO_METHOD and method_choice is None:
            method_choice = probe_method(model, bound, *space.unpack(space.x0), rtol, atol,
                                         self.options)
        self.method_choice = method_choice
        self.method = method_choice.method if method == AUTO_METHOD else method
        self.sensitivity = (sensitivity if sensitivity is not None
                            else default_sensitivity(self.method, model.n_theta))
        self.l2 = float(l2)
        if self.l2 < 0:
            raise OptionError(f"l2 must be >= 0, got {l2}")
        self.obs = obs
        no = len(obs)
        formulas, sigma = split_noise_formulas(sigma, obs, noise_params)
        if (formulas or noise_params) and not loss.estimates_noise:
            raise OptionError(f"noise formulas (sigma={formulas or None}, noise_params="
                              f"{noise_params!r}) are estimated: use loss='gaussian' (got "
                              f"loss={loss.name!r})")
        if noise_params and not formulas:
            raise OptionError(f"noise_params={noise_params!r} given without a sigma formula "
                              "that uses them")
        if formulas and sigma_by is not None:
            raise OptionError("sigma_by= with noise formulas is not supported: a noise "
                              "formula's parameters are shared by every experiment")
        fixed_sigma, names = parse_sigma(sigma, obs)
        if sigma_by not in (None, "experiment"):
            raise OptionError(f"sigma_by={sigma_by!r}: use None or 'experiment'")
        if (sigma_by is not None or names != obs) and not loss.estimates_noise:
            raise OptionError(f"shared or per-experiment noise levels are estimated: use "
                              f"loss='gaussian' (got loss={loss.name!r})")
        self.sigma_by = sigma_by
        self.sigma_names = names
        w = _per_observable(weights, obs, "weights")
        w = np.where(np.isnan(w), 1.0, w)
        if np.any(w < 0):
            raise OptionError("weights must be >= 0")
        self.weights = w
        # per experiment: known sigma where given (data column, else the argument)
        self.known = []
        for b in bound:
            S = b.sigma if b.sigma is not None else np.full(b.Y.shape, np.nan)
            S = np.where(np.isnan(S), fixed_sigma[None, :], S)
            loss.check_data(b, obs)
            self.known.append(S)
        self.noise_formulas = None
        if formulas:
            self.noise_formulas = _noise_formulas(model, bound, loss, obs, formulas,
                                                  noise_params)
        # the observables whose unknown noise levels are formulas (not noise groups)
        self.formula_columns = (self.noise_formulas.columns if self.noise_formulas is not None
                                else np.zeros(no, dtype=bool))
        # the change of variables from the transformed data to the data, a constant of the
        # likelihood (0 unless an observable is on a log scale)
        self.log_jacobian = sum(loss.log_jacobian(np.where(b.mask, b.Y, 1.0), b.mask)
                                for b in bound)
        self.has_known_sigma = any(np.isfinite(S[b.mask]).any() for S, b in
                                   zip(self.known, bound))
        # the noise groups, whose levels are estimated where the loss does and some data
        # have no known sigma; by default one per observable, in the observables' order
        labels: dict[str, int] = {}
        self.group_of = np.zeros((len(bound), no), dtype=int)
        for i, b in enumerate(bound):
            for k in range(no):
                label = names[k] if sigma_by is None else f"{names[k]}@{b.name}"
                self.group_of[i, k] = labels.setdefault(label, len(labels))
        self.noise_groups = list(labels)
        self.n_groups = len(labels)
        self.estimated = np.zeros(len(labels), dtype=bool)
        if loss.estimates_noise:
            for i, (S, b) in enumerate(zip(self.known, bound)):
                free = (b.mask & np.isnan(S) & ~self.formula_columns[None, :]).any(axis=0)
                self.estimated[self.group_of[i][free]] = True
        self.sigma_hat = np.ones(len(labels))
        # the noise parameters of formulas follow the groups' levels in sigma_hat (and in
        # noise_groups), so results, checkpoints and outcomes carry them alike
        self._noise_H = None       # the predictions the formulas' levels are taken at
        if self.noise_formulas is not None:
            nf = self.noise_formulas
            clash = [n for n in nf.names if n in labels]
            if clash:
                raise OptionError(f"sigma: {clash} name both a noise group and a noise "
                                  "parameter of a formula; choose other names")
            self.noise_groups += nf.names
            self.estimated = np.r_[self.estimated, np.ones(nf.n_params, dtype=bool)]
            self.sigma_hat = np.r_[self.sigma_hat, nf.start]
        self.n_data = int(sum(b.mask.sum() for b in bound))
        self.n_reg = int(space.is_weight.sum()) if self.l2 > 0 else 0
        self._refresh_scales()
        self.tracker = None

    # --- settings --------------------------------------------------------------------------
    @property
    def n_experiments(self) -> int:
        """The number of experiments."""
        return len(self.bound)

    @property
    def cheap_jacobian(self) -> bool:
        """Whether a Jacobian costs about a forward solve (the discrete tangent of
        RK45/RK23; forward sensitivities cost far more)."""
        return cheap_jacobian(self.method)

    @property
    def estimates_noise(self) -> bool:
        """Whether this fit estimates the noise level of some observable (its loss does
        and some observed values have no known sigma)."""
        return bool(self.loss.estimates_noise and self.estimated.any())

    @property
    def profiled_variance(self) -> bool:
        """Whether a common unknown noise variance is profiled out (no sigma known, none
        estimated): covariances are then scaled by ``s^2 = SSR / (n - p)``."""
        return self.loss.profiles_variance(self.has_known_sigma)

    @property
    def n_residuals(self) -> int:
        return self.n_data + self.n_reg

    # --- noise levels ------------------------------------------------------------------------
    def sigma_points(self, i: int) -> np.ndarray:
        """The noise level of every value of experiment ``i`` (shape of its data): the
        known one, else its formula's at the reference predictions, else its group's."""
        S = self.known[i]
        sig = np.where(np.isnan(S), self.sigma_hat[self.group_of[i]][None, :], S)
        nf = self.noise_formulas
        if nf is not None:
            if self._noise_H is None:     # not yet evaluated at a point: a placeholder
                F = np.ones(S.shape)
            else:
                F = nf.sigma(self._noise_H[i], self.bound[i].t, self.sigma_hat[self.n_groups:])
            sig = np.where(np.isnan(S) & nf.columns[None, :], F, sig)
        return sig

    def _refresh_scales(self):
        self.scales = [np.sqrt(self.weights)[None, :] / self.sigma_points(i)
                       for i in range(len(self.known))]

    def set_sigma(self, sigma_hat, x=None, predictions=None) -> None:
        """Set the estimated noise levels (one per noise group, see :attr:`noise_groups`;
        used where no sigma is known, then the noise parameters of formulas) and forget
        the remembered evaluation.

        With noise formulas, their levels are taken at the predictions at ``x`` (or the
        ``predictions`` given, one array per experiment); without either, at the
        predictions they were last taken at (and are a placeholder of 1 until then).

        Raises
        ------
        OptionError
            For a wrong number of levels, or a formula not positive at an observed value.
        Rejected
            When the predictions at ``x`` cannot be computed.
        """
        sigma_hat = np.asarray(sigma_hat, dtype=float)
        if sigma_hat.shape != (len(self.noise_groups),):
            raise OptionError(f"{sigma_hat.size} noise levels given; this fit has "
                              f"{len(self.noise_groups)} noise groups {self.noise_groups}")
        nf = self.noise_formulas
        if nf is not None and (x is not None or predictions is not None):
            if predictions is None:
                predictions = self.noise_predictions(x)
            sig = [nf.sigma(H, b.t, sigma_hat[self.n_groups:])
                   for H, b in zip(predictions, self.bound)]
            nf.check_positive(sig, [b.mask & np.isnan(S) for b, S in
                                    zip(self.bound, self.known)],
                              [b.t for b in self.bound], sigma_hat[self.n_groups:],
                              "at the fit's predictions")
            self._noise_H = [np.array(H, dtype=float) for H in predictions]
        self.sigma_hat = sigma_hat
        self._refresh_scales()
        self.forget()

    _last_predictions = None

    def noise_predictions(self, x) -> list[np.ndarray]:
        """The predicted observables of every experiment at ``x`` (remembered for the
        last ``x``); raises :class:`Rejected`."""
        m = self._last_predictions
        if m is not None and np.array_equal(m[0], x):
            return m[1]
        theta, y0s = self.space.unpack(x)
        Hs = [self._observe(i, theta, y0) for i, y0 in enumerate(y0s)]
        self._last_predictions = (np.array(x, dtype=float), Hs)
        return Hs

    def estimate_sigma(self, x) -> np.ndarray:
        """Maximum-likelihood noise levels of the estimated noise groups at ``x``:
        ``sigma_g^2 = SSR_g / n_g`` on the unscaled (weighted) residuals of the group's data
        without a known sigma (the Gaussian likelihood's stationary point in ``sigma_g``);
        and the noise parameters of formulas minimising the likelihood of their values at
        the predictions at ``x`` (see :mod:`dynlearn.objective.noise`)."""
        if self.noise_formulas is not None:
            return self.estimate_noise(self.noise_predictions(x))
        return self.noise_levels(*self.noise_statistics(x))

    def estimate_noise(self, predictions) -> np.ndarray:
        """:meth:`estimate_sigma` from the predictions (one array per experiment)."""
        ssr, cnt = np.zeros(len(self.noise_groups)), np.zeros(len(self.noise_groups))
        for i, H in enumerate(predictions):
            a, c = self.noise_statistics_at(i, H)
            ssr += a
            cnt += c
        out = self.noise_levels(ssr, cnt)
        nf = self.noise_formulas
        if nf is not None:
            data = []
            for H, b, S in zip(predictions, self.bound, self.known):
                free = b.mask & np.isnan(S) & nf.columns[None, :]
                g = self.loss.g
                d = np.where(free, g(H, b.mask) - g(np.where(b.mask, b.Y, 1.0), b.mask), 0.0)
                data.append((H, b.t, d * d * self.weights[None, :], free))
            out[self.n_groups:] = nf.estimate(out[self.n_groups:], data)
        return out

    _through_sigma = False

    def exact_loss_and_grad(self, x):
        """The reported loss at ``x`` with every estimated noise level re-estimated there
        (noise groups in closed form, formulas' parameters by their inner optimisation) and
        its exact gradient in ``x``: for noise formulas, the levels followed through the
        predictions (the noise parameters' own derivative vanishes at their optimum).
        Leaves the noise levels set at ``x``; raises :class:`Rejected`."""
        Hs = self.noise_predictions(x)
        self.set_sigma(self.estimate_noise(Hs), predictions=Hs)
        self._through_sigma = True
        try:
            cost, g = self.compute_cost_and_grad(x)
        finally:
            self._through_sigma = False
        return (float(self.loss.value(cost, self.penalty(), self.n_data)),
                self.loss.gradient(g))

    def noise_change(self, new, x) -> float:
        """The largest relative change of a noise level from the current ones to ``new``
        (estimated at ``x``): of the groups' levels, and of the formulas' levels at the
        data (noise parameters themselves may be near 0)."""
        k = self.n_groups
        change = float(np.max(np.abs(new[:k] - self.sigma_hat[:k]) / self.sigma_hat[:k],
                              initial=0.0))
        nf = self.noise_formulas
        if nf is not None:
            Hs = self.noise_predictions(x)
            for i, (H, b, S) in enumerate(zip(Hs, self.bound, self.known)):
                free = b.mask & np.isnan(S) & nf.columns[None, :]
                if free.any():
                    s1 = nf.sigma(H, b.t, new[k:])[free]
                    s0 = self.sigma_points(i)[free]
                    change = max(change, float(np.max(np.abs(s1 - s0) / s0)))
        return change

    def noise_levels(self, ssr, cnt) -> np.ndarray:
        """Noise levels from the statistics of :meth:`noise_statistics` (the current
        levels where nothing is estimated)."""
        out = self.sigma_hat.copy()
        ok = self.estimated & (cnt > 0)
        out[ok] = np.sqrt(np.maximum(ssr[ok] / cnt[ok], 1e-300))
        return out

    def noise_statistics(self, x):
        """Per noise group: the weighted sum of squared unscaled residuals over the data
        whose noise is estimated, and how many such data there are (summed over
        experiments)."""
        ssr = np.zeros(len(self.noise_groups))
        cnt = np.zeros(len(self.noise_groups))
        theta, y0s = self.space.unpack(x)
        for i, y0 in enumerate(y0s):
            a, c = self.noise_statistics_at(i, self._observe(i, theta, y0))
            ssr += a
            cnt += c
        return ssr, cnt

    def experiment_noise_statistics(self, i: int, x):
        """:meth:`noise_statistics` of experiment ``i`` alone."""
        theta, y0s = self.space.unpack(x)
        return self.noise_statistics_at(i, self._observe(i, theta, y0s[i]))

    def noise_statistics_at(self, i: int, H):
        """:meth:`noise_statistics` of experiment ``i`` from its predicted observables
        ``H`` (shape ``(m, n_obs)``)."""
        b, S = self.bound[i], self.known[i]
        free = b.mask & np.isnan(S) & ~self.formula_columns[None, :]
        g = self.loss.g
        d = np.where(free, g(H, b.mask) - g(np.where(b.mask, b.Y, 1.0), b.mask), 0.0)
        n = len(self.noise_groups)
        return (np.bincount(self.group_of[i], (d * d).sum(axis=0) * self.weights, n),
                np.bincount(self.group_of[i], free.sum(axis=0).astype(float), n))

    def observable_noise(self) -> np.ndarray:
        """Per observable, the estimated noise level of its data without a known sigma,
        pooled over its noise groups (``sqrt(sum n_g sigma_g^2 / sum n_g)``, exactly its
        group's level when it has one); NaN where none is estimated."""
        var, cnt = np.zeros(len(self.obs)), np.zeros(len(self.obs))
        if self.loss.estimates_noise:
            for i, (S, b) in enumerate(zip(self.known, self.bound)):
                n = (b.mask & np.isnan(S) & ~self.formula_columns[None, :]).sum(axis=0)
                var += n * self.sigma_hat[self.group_of[i]] ** 2
                cnt += n
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, np.sqrt(var / np.maximum(cnt, 1)), np.nan)

    def noise_group_members(self) -> dict[str, list[str]]:
        """The estimated noise groups and the observables each covers (in observable
        order), then the noise parameters of formulas and the observables whose formulas
        use each."""
        out: dict[str, list[str]] = {}
        for i, (S, b) in enumerate(zip(self.known, self.bound)):
            free = (b.mask & np.isnan(S) & ~self.formula_columns[None, :]).any(axis=0)
            for k in np.flatnonzero(free):
                members = out.setdefault(self.noise_groups[self.group_of[i, k]], [])
                if self.obs[k] not in members:
                    members.append(self.obs[k])
        order = {g: j for j, g in enumerate(self.noise_groups)}
        out = {g: out[g] for g in sorted(out, key=order.get) if self.estimated[order[g]]}
        if self.noise_formulas is not None:
            out.update(self.noise_formulas.members())
        return out

    def sigma_spec(self) -> dict:
        """The ``sigma=`` argument that rebuilds this objective's noise model from its
        data: a known level given for an observable as one number, and the names of the
        shared noise levels (None when neither)."""
        out: dict = {}
        for S, b in zip(self.known, self.bound):
            for k, o in enumerate(self.obs):
                col = S[:, k][np.isfinite(S[:, k])]
                if col.size and np.all(col == col[0]) and b.sigma is not None and \
                        not np.isfinite(b.sigma[:, k]).any():
                    out[o] = float(col[0])
        for o, name in zip(self.obs, self.sigma_names):
            if name != o:
                out[o] = name
        if self.noise_formulas is not None:
            out.update(self.noise_formulas.texts)
        return out or None

    def noise_params_spec(self) -> dict | None:
        """The ``noise_params=`` that rebuilds this objective's noise formulas' parameters
        (``name: (start, lower, upper)``, an infinite bound as None, as JSON keeps it),
        None without formulas."""
        nf = self.noise_formulas
        if nf is None:
            return None

        def num(v):
            return float(v) if np.isfinite(v) else None
        return {n: (float(a), num(lo), num(hi))
                for n, a, lo, hi in zip(nf.names, nf.start, nf.lower, nf.upper)}

    def penalty(self) -> float:
        """``2 sum log sigma`` over the data plus twice :attr:`log_jacobian` (the data of
        observables on a log scale), for a loss that estimates noise (else 0)."""
        if not self.loss.estimates_noise:
            return 0.0
        tot = 2.0 * self.log_jacobian
        for i, b in enumerate(self.bound):
            tot += 2.0 * np.log(self.sigma_points(i)[b.mask]).sum()
        return float(tot)

    # --- one experiment in physical values ---------------------------------------------------
    def experiment_problem(self, i: int, theta, y0, t0: float | None = None,
                           t_obs=None, through_sigma: bool = False) -> Problem:
        """The solve of experiment ``i`` from ``y0`` at parameters ``theta`` (physical), with
        this objective's solver settings; its ``obs_loss`` is the experiment's data term
        (:meth:`data_term`, ``through_sigma`` passed on). ``t0`` and ``t_obs`` solve a
        piece of the experiment instead (then without ``obs_loss``).

        Raises :class:`Rejected` when ``y0`` is not finite; ``ParameterError`` from
        unusable ``theta``.
        """
        b = self.bound[i]
        if y0 is None or not np.all(np.isfinite(y0)):
            raise Rejected("initial state not finite")
        vf = VectorField(self.model, theta, b.inputs)
        whole = t0 is None and t_obs is None
        return Problem(vf, b.t0 if t0 is None else t0, b.t if t_obs is None else t_obs, y0,
                       self.data_term(i, through_sigma) if whole else None, self.method,
                       self.rtol,
                       self.atol, self.options, b.name)

    def _observe(self, i: int, theta, y0) -> np.ndarray:
        """Predicted observables of experiment ``i`` at its data times; raises Rejected."""
        b = self.bound[i]
        try:
            p = self.experiment_problem(i, theta, y0)
            with np.errstate(all="ignore"):
                Yh, _ = solve_observed(p.vf, p.t0, p.t_obs, p.y0, p.method, p.rtol, p.atol,
                                       p.options, where=p.where)
                H = p.vf.observe_batch(p.t_obs, Yh)
        except SOLVE_FAILURES as exc:
            raise Rejected(str(exc)) from None
        if not np.all(np.isfinite(H[b.mask])):
            raise Rejected("non-finite prediction")
        return H

    def _observe_jac(self, i: int, theta, y0, wrt_y0: bool = True):
        """Predicted observables of experiment ``i`` and their derivatives in
        ``[theta, y0]`` (in ``theta`` alone without ``wrt_y0``); raises Rejected."""
        b = self.bound[i]
        try:
            p = self.experiment_problem(i, theta, y0)
            with np.errstate(all="ignore"):
                H, dH = observable_jacobian(p, self.sensitivity, wrt_y0=wrt_y0)
        except SOLVE_FAILURES as exc:
            raise Rejected(str(exc)) from None
        if not (np.all(np.isfinite(H[b.mask])) and np.all(np.isfinite(dH[b.mask]))):
            raise Rejected("non-finite prediction or sensitivity")
        return H, dH

    def data_residuals(self, i: int, H, rows=slice(None)) -> np.ndarray:
        """The residuals of experiment ``i``'s observations in ``rows`` (its observed
        values, in row order) from the predicted observables ``H`` at those rows; raises
        :class:`Rejected` (a prediction outside the loss's domain)."""
        b = self.bound[i]
        mask = b.mask[rows]
        g = self.loss.g
        with np.errstate(over="ignore", invalid="ignore"):
            r = ((g(H, mask) - g(np.where(mask, b.Y[rows], 1.0), mask))
                 * self.scales[i][rows])[mask]
        # residuals whose squares, summed over all of them, could overflow: the cost would
        # be inf at a finite prediction, which no optimizer can step from
        if r.size and np.max(np.abs(r)) > self.max_residual:
            raise Rejected(f"experiment '{b.name}': residuals up to {np.max(np.abs(r)):.3g}; "
                           "their squares overflow")
        return r

    @property
    def max_residual(self) -> float:
        """The largest residual magnitude at which the sum of all squared residuals is
        still finite."""
        return float(np.sqrt(np.finfo(float).max / max(self.n_data + self.n_reg, 1)))

    def data_residual_jacobian(self, i: int, H, dH, rows=slice(None)) -> np.ndarray:
        """Derivatives of :meth:`data_residuals` from those of the predictions,
        ``dH`` (shape ``(m, n_obs, q)``): shape ``(n_residuals, q)``."""
        mask = self.bound[i].mask[rows]
        fac = self.loss.chain(self.scales[i][rows], H, mask)
        return (dH * fac[:, :, None])[mask]

    def data_term(self, i: int, through_sigma: bool = False):
        """Experiment ``i``'s share of the cost, ``sum r^2``, as a function of its predicted
        observables: ``obs_loss(H) -> (value, d value / dH)`` (the ``obs_loss`` of a
        :class:`~dynlearn.sensitivity.Problem`). Uses the noise levels set now.

        With ``through_sigma`` and noise formulas, the derivative is that of ``sum r^2 +
        2 sum log sigma`` with the formulas' levels following ``H`` (their noise
        parameters held): twice the exact gradient of the negative log-likelihood where
        the levels were set at ``H`` (``dl.loss_and_grad``). A fit's optimizer sees the
        levels as fixed within a noise round (see :mod:`dynlearn.objective.noise`)."""
        b, sc, loss = self.bound[i], self.scales[i], self.loss
        gD = loss.g(np.where(b.mask, b.Y, 1.0), b.mask)
        nf = self.noise_formulas if through_sigma else None
        if nf is not None:
            free = b.mask & np.isnan(self.known[i]) & nf.columns[None, :]
            p = self.sigma_hat[self.n_groups:]

        def obs_loss(H):
            with np.errstate(over="ignore", invalid="ignore"):
                r = np.where(b.mask, (loss.g(H, b.mask) - gD) * sc, 0.0)
                value = float(np.sum(r * r))
            if not np.isfinite(value):
                # finite predictions so far from the data that the squares overflow: never
                # returned as a loss (inside a fit, the trial point is rejected)
                raise SolveError(f"experiment '{b.name}': the loss is not finite (residuals "
                                 f"up to {np.max(np.abs(r)):.3g}: their squares overflow)",
                                 status=-1, solver_message="non-finite loss")
            grad = loss.chain(2.0 * r * sc, H, b.mask)
            if nf is not None:
                # d (r^2 + 2 log sigma) / d sigma = 2 (1 - r^2) / sigma, through d sigma / dH
                sig = nf.sigma(H, b.t, p)
                coef = np.where(free, 2.0 * (1.0 - r * r) / np.where(free, sig, 1.0), 0.0)
                for k, D in nf.sigma_jacobian(H, b.t, p).items():
                    grad = grad + coef[:, k:k + 1] * D
            return value, grad
        return obs_loss

    def _experiment_jacobian(self, i: int, theta, y0, y0idx):
        """Residuals of experiment ``i`` and their Jacobian in ``x`` before the transform
        to ``x`` (``d/d physical``), in full width."""
        sp_ = self.space
        P = sp_.n_theta
        # Sensitivities to the initial state only where one is estimated: they would make
        # the sensitivity system n(1 + p + n) instead of n(1 + p).
        H, dH = self._observe_jac(i, theta, y0, wrt_y0=bool(y0idx))
        r = self.data_residuals(i, H)
        dR = self.data_residual_jacobian(i, H, dH)        # (n_res, n_theta + n)
        J = np.zeros((r.size, sp_.size))
        J[:, :P] = dR[:, :P]
        for s, k in y0idx:
            J[:, k] = dR[:, P + s]
        return r, J

    def _experiment_cost_and_grad(self, i: int, theta, y0, y0idx):
        """``(sum r^2, gradient in physical values placed in x's columns)`` of experiment
        ``i``, through the chosen sensitivity."""
        P = self.space.n_theta
        g = np.zeros(self.space.size)
        try:
            p = self.experiment_problem(i, theta, y0, through_sigma=self._through_sigma)
            with np.errstate(all="ignore"):
                v, gt, gy = self.sensitivity.loss_and_grad(p, wrt_y0=bool(y0idx))
        except SOLVE_FAILURES as exc:
            raise Rejected(str(exc)) from None
        if not (np.isfinite(v) and np.all(np.isfinite(gt))):
            raise Rejected("non-finite loss or gradient")
        g[:P] += gt
        for s, k in y0idx:
            g[k] += gy[s]
        return v, g

    # --- one experiment in x ---------------------------------------------------------------
    def experiment_columns(self, i: int) -> np.ndarray:
        """Columns of ``x`` experiment ``i``'s residuals depend on: theta and its own free
        initial states (the rest of its Jacobian rows is zero)."""
        return np.r_[np.arange(self.space.n_theta),
                     np.array([k for _, k in self.space.y0_index[i]], dtype=int)].astype(int)

    def experiment_prediction(self, i: int, x) -> np.ndarray:
        """Predicted observables of experiment ``i`` at its data times, shape
        ``(m, n_obs)``; raises :class:`Rejected`."""
        theta, y0s = self.space.unpack(x)
        return self._observe(i, theta, y0s[i])

    def experiment_residuals(self, i: int, x) -> np.ndarray:
        """The data residuals of experiment ``i`` at ``x``; raises :class:`Rejected`."""
        theta, y0s = self.space.unpack(x)
        return self.data_residuals(i, self._observe(i, theta, y0s[i]))

    def experiment_jacobian(self, i: int, x):
        """``(residuals, d residuals / d x)`` of experiment ``i``, the Jacobian in full width
        (zero outside :meth:`experiment_columns`); raises :class:`Rejected`."""
        theta, y0s = self.space.unpack(x)
        r, J = self._experiment_jacobian(i, theta, y0s[i], self.space.y0_index[i])
        return r, J * self.space.dphysical(x)[None, :]

    def experiment_cost_and_grad(self, i: int, x):
        """``(sum r^2, gradient in x)`` of experiment ``i``'s data (no L2 term); raises
        :class:`Rejected`."""
        theta, y0s = self.space.unpack(x)
        v, g = self._experiment_cost_and_grad(i, theta, y0s[i], self.space.y0_index[i])
        return v, g * self.space.dphysical(x)

    # --- the L2 term of network weights ----------------------------------------------------
    def weight_penalty(self, w):
        """``(l2 |w|^2, its gradient)`` for network weights ``w``."""
        return self.l2 * float(w @ w), 2.0 * self.l2 * w

    def regularization(self, x) -> np.ndarray:
        """The L2 residuals ``sqrt(l2) w`` (none without an L2 term)."""
        return np.sqrt(self.l2) * x[self.space.is_weight] if self.n_reg else np.zeros(0)

    def regularization_jacobian(self, x) -> np.ndarray:
        """Derivatives of :meth:`regularization` in ``x``: shape ``(n_reg, size)``."""
        sp_ = self.space
        Jr = np.zeros((self.n_reg, sp_.size))
        if self.n_reg:        # (no rows without an L2 term, whatever the weights)
            Jr[np.arange(self.n_reg), np.flatnonzero(sp_.is_weight)] = (
                np.sqrt(self.l2) * sp_.dphysical(x)[sp_.is_weight])
        return Jr

    # --- all experiments ---------------------------------------------------------------------
    def compute_residuals(self, x) -> np.ndarray:
        theta, y0s = self.space.unpack(x)
        out = [self.data_residuals(i, self._observe(i, theta, y0)) for i, y0 in enumerate(y0s)]
        out.append(self.regularization(x))
        return np.concatenate(out)

    def compute_jacobian(self, x):
        sp_ = self.space
        theta, y0s = sp_.unpack(x)
        dphys = sp_.dphysical(x)
        rs, Js = [], []
        for i, (y0, idx) in enumerate(zip(y0s, sp_.y0_index)):
            r, J = self._experiment_jacobian(i, theta, y0, idx)
            rs.append(r)
            Js.append(J)
        rs.append(self.regularization(x))
        J = np.vstack([np.vstack(Js) * dphys[None, :], self.regularization_jacobian(x)])
        return np.concatenate(rs), J

    def cost(self, x) -> float:
        """``sum r^2`` at ``x`` (L2 rows included); raises :class:`Rejected`."""
        r = self.residuals(x)
        return float(r @ r)

    def cost_and_grad(self, x):
        """``(sum r^2, gradient in x)`` through the chosen sensitivity (adjoint by default);
        raises :class:`Rejected`."""
        self.count("ngev")
        try:
            return self.compute_cost_and_grad(x)
        except Rejected:
            self.count("rejected")
            raise

    def compute_cost_and_grad(self, x):
        """:meth:`cost_and_grad` without the bookkeeping."""
        sp_ = self.space
        theta, y0s = sp_.unpack(x)
        total = 0.0
        g = np.zeros(sp_.size)
        for i, (y0, idx) in enumerate(zip(y0s, sp_.y0_index)):
            v, gi = self._experiment_cost_and_grad(i, theta, y0, idx)
            total += v
            g += gi
        if self.n_reg:
            v, gw = self.weight_penalty(x[sp_.is_weight])
            total += v
            g[sp_.is_weight] += gw
        g = g * sp_.dphysical(x)
        return float(total), g

    def map_shooting(self, problem, z, jac: bool) -> list:
        """Per experiment, the rows of a multiple-shooting ``problem`` built on this
        objective (:meth:`~dynlearn.objective.shooting.ShootingObjective.experiment`); an
        objective evaluated elsewhere (on Dask) computes them there."""
        return [problem.experiment(i, z, jac) for i in range(self.n_experiments)]

    # --- progress reporting (delegated to the fit's tracker) ------------------------------
    def count(self, kind: str) -> None:
        if self.tracker is not None:
            self.tracker.count(kind)

    def report(self, x, cost, iteration: bool = False) -> None:
        """Tell the tracker about an evaluated point (``x=None``: an iteration ended)."""
        if self.tracker is not None:
            self.tracker.report(x, cost, iteration)
        elif x is not None and cost is not None and cost < self._best[1]:
            self._best = (np.array(x), float(cost))

    def report_stage(self, cost) -> None:
        """Tell the tracker the value of a stage's own objective where it is not this loss
        (multiple shooting's segment misfit plus continuity penalty), for the loss plot."""
        if self.tracker is not None and cost is not None and np.isfinite(cost):
            self.tracker.report_stage(float(cost))

    _best = (None, np.inf)

    @property
    def best_x(self):
        return self.tracker.best_x if self.tracker is not None else self._best[0]

    @property
    def best_cost(self) -> float:
        return self.tracker.best_cost if self.tracker is not None else self._best[1]


def parse_sigma(sigma, obs) -> tuple[np.ndarray, list[str]]:
    """The noise model of ``sigma=``: known levels and the names of estimated ones.

    Parameters
    ----------
    sigma : None, float, str or dict observable -> float or str
        A number is a known noise level (standard deviation); a string names a noise level
        estimated by the fit (``loss="gaussian"``), shared by every observable given the
        same name. A number or a string alone applies to every observable; an observable
        not named in a dict has a noise level of its own (named after it).
    obs : list of str
        The observables.

    Returns
    -------
    known : ndarray
        Per observable, its known level (NaN: not given).
    names : list of str
        Per observable, the name of its estimated noise level (its own name by default).

    Raises
    ------
    OptionError
        For an unknown observable, a non-positive level, an empty name, or a group named
        after an observable that is not in it.
    """
    names = list(obs)
    if isinstance(sigma, str):
        sigma = {o: sigma for o in obs}
    if isinstance(sigma, dict):
        named = {k: v for k, v in sigma.items() if isinstance(v, str)}
        sigma = {k: v for k, v in sigma.items() if not isinstance(v, str)}
        for k, v in named.items():
            if k not in obs:
                raise OptionError(f"sigma names {[k]}, which is not an observable; "
                                  f"observables are {obs}")
            if not v.strip():
                raise OptionError(f"sigma for {k!r}: an empty noise-level name")
            names[obs.index(k)] = v.strip()
        for k, v in enumerate(names):
            if v in obs and names[obs.index(v)] != v:
                raise OptionError(f"sigma: observable {obs[k]!r} shares the noise level "
                                  f"{v!r}, the name of another observable with its own level; "
                                  "choose another name")
        sigma = sigma or None
    return _per_observable(sigma, obs, "sigma"), names


def _per_observable(spec, obs, what: str) -> np.ndarray:
    """A value per observable (NaN = not given) from None, a number or a dict."""
    out = np.full(len(obs), np.nan)
    if spec is None:
        return out
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in obs]
        if unknown:
            raise OptionError(f"{what} names {unknown}, which are not observables; observables "
                              f"are {obs}")
        for k, v in spec.items():
            out[obs.index(k)] = float(v)
    else:
        try:
            out[:] = float(spec)
        except (TypeError, ValueError):
            raise OptionError(f"{what} must be a number or a dict {{observable: value}}, got "
                              f"{spec!r}") from None
    if what == "sigma" and np.any(out[np.isfinite(out)] <= 0):
        raise OptionError(f"sigma must be positive, got {spec!r}")
    return out


def _noise_formulas(model, bound, loss, obs, formulas, noise_params) -> NoiseFormulas:
    """The noise formulas of a fit: names that are the model's own refused, default starts
    from each observable's spread of data on its residual scale."""
    reserved = {s.name: "a state" for s in model.states}
    reserved.update({s.name: "a model parameter" for s in model.param_symbols})
    reserved.update({s.name: "an input" for s in model.inputs})
    for n in model.theta_names:
        reserved.setdefault(n, "a network weight")
    for o in obs:              # an observable named like a state is read as the observable
        reserved.pop(o, None)
    reserved.pop("t", None)
    spread = {}
    for k, o in enumerate(obs):
        vals = np.concatenate([loss.g(np.where(b.mask, b.Y, 1.0), b.mask)[:, k][b.mask[:, k]]
                               for b in bound])
        spread[o] = float(np.std(vals)) if vals.size > 1 else np.nan
    return NoiseFormulas(formulas, obs, reserved, noise_params, spread)
