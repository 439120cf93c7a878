"""Optimizer objects by name (model files, the command line) and the default for a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynlearn.errors import OptionError
from dynlearn.optimizers.adam import Adam
from dynlearn.optimizers.base import Optimizer
from dynlearn.optimizers.gauss_newton import GaussNewton
from dynlearn.optimizers.lbfgsb import LBFGSB
from dynlearn.optimizers.levenberg_marquardt import LevenbergMarquardt
from dynlearn.optimizers.multiple_shooting import MultipleShooting
from dynlearn.optimizers.restarts import Restarts
from dynlearn.optimizers.staged import Staged

if TYPE_CHECKING:
    from dynlearn.core.model import HybridModel

__all__ = ["OPTIMIZERS", "default_optimizer", "optimizer_from_name"]

#: optimizer names (as written in model files) -> optimizer classes
OPTIMIZERS: dict[str, type[Optimizer]] = {
    "lm": LevenbergMarquardt,
    "levenberg-marquardt": LevenbergMarquardt,
    "gauss-newton": GaussNewton,
    "lbfgs": LBFGSB,
    "l-bfgs-b": LBFGSB,
    "adam": Adam,
    "multiple-shooting": MultipleShooting,
}


def optimizer_from_name(name: str, max_iter: int | None = None, **options) -> Optimizer:
    """The optimizer called ``name`` in model files.

    Parameters
    ----------
    name : str
        A key of :data:`OPTIMIZERS` (``"lm"``, ``"gauss-newton"``, ``"lbfgs"``, ``"adam"``,
        ``"multiple-shooting"``, ...).
    max_iter : int, optional
        The iteration budget, whatever the optimizer's keyword for it (Adam's is
        ``iterations``); it overrides that keyword in ``options``.
    **options
        The optimizer's constructor arguments. An unknown one raises ``TypeError``, as the
        constructor does.

    Returns
    -------
    Optimizer

    Examples
    --------
    >>> optimizer_from_name("adam", max_iter=50, lr=0.1)
    Adam(iterations=50, lr=0.1, betas=(0.9, 0.999), eps=1e-08, gtol=None)
    """
    try:
        cls = OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise OptionError(f"unknown optimizer {name!r}: use one of {list(OPTIMIZERS)}") from None
    if max_iter is not None:
        options[cls.budget_option] = max_iter
    return cls(**options)


def default_optimizer(model: HybridModel) -> Optimizer:
    """The optimizer :func:`dynlearn.fit` uses when none is given.

    * No network: :class:`LevenbergMarquardt` on the exact residual Jacobian.
    * Networks (up to 2000 parameters): :class:`Restarts` around the training:
      :class:`MultipleShooting` over pieces of three observation times with a
      continuity-weight continuation 10 -> 100 -> 1000 (40 Levenberg-Marquardt iterations
      each), then a single-shooting Levenberg-Marquardt polish (at most 200 iterations; it
      stops once the cost falls by less than 5% in 10 iterations, since an
      over-parameterised network otherwise keeps fitting the noise). While a run ends above
      3 times the noise floor estimated from the data
      (:func:`~dynlearn.optimizers.restarts.noise_floor`), the training runs again from new
      network weights, at most 6 more times; if the best run is still above it, the fit
      reports :attr:`~dynlearn.optimizers.Status.STALLED`.
    * Larger networks: ``Staged([Adam(200, lr=0.01), LBFGSB(300)])`` on adjoint gradients
      (the residual Jacobian would be too large).

    Why, measured on the LV-UDE of ``benchmarks/bench_fit.py`` (89 parameters, 42
    residuals; see benchmarks/README.md): single shooting with LM from the initial network
    stalls in local minima (110x the noise floor after 900 evaluations), as Adam + L-BFGS
    does (the peers end at 27x-213x). One run of multiple shooting with the continuation
    reaches the noise floor from 4 of 10 Glorot seeds (0-9) and stalls at 38-115x from the
    others, and at ~400x from small weights (0.1 N(0, 1)); output layers scaled by 0.1 stall
    from all 8 seeds tried. Whether a run stalled is plain from the data: a stalled run
    ends 18-191x above the noise floor estimated from the data, a run at the noise level
    below 0.5x of it. Restarting while it stalls takes the six starts of the benchmark
    (small weights, Glorot seeds 0-4) to 0.35-0.74x the noise floor, after 1-5 runs (at
    most 940 evaluations); with 4 of 10 first runs and 3 of 9 restarted runs reaching the
    noise floor, 7 runs all stall with a probability of 3-6%, and then the fit says so. On
    a damped Duffing oscillator with a 16-16 tanh network (Glorot seeds 0-4, small
    weights) every first run reaches the noise floor and nothing changes. A warm start by
    collocation (smoothing splines, the network fitted to the derivative mismatch without
    solving) helped 3 of 6 starts and hurt 2: on 21 samples of an oscillation the
    smoothing splines' cross-validation nearly interpolates the noise. An iteration
    usually costs one exact residual Jacobian from the recorded Runge-Kutta steps,
    evaluated at the trial point (about 1.5-2 forward solves).
    """
    if not model.networks:
        return LevenbergMarquardt()
    if model.n_theta > 2000:
        return Staged([Adam(200, lr=0.01), LBFGSB(300)])
    return Restarts(MultipleShooting(points=3, max_iter=40,
                                     continuity_weight=(10.0, 100.0, 1000.0),
                                     polish=LevenbergMarquardt(max_iter=200, patience=10,
                                                               ptol=0.05)),
                    max_restarts=6, threshold=3.0)
