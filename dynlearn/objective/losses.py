"""Loss objects: how residuals are formed from data and predictions, and what the loss reports.

A fit's residual of observation ``i`` of observable ``k`` is

.. math:: r_{ik} = \\sqrt{w_k}\\,\\frac{g(h_{ik}) - g(d_{ik})}{\\sigma_{ik}},

and its cost ``sum r^2`` (plus the L2 rows of network weights). A :class:`Loss` owns what
differs between losses: the transform ``g`` and its derivative, which data it accepts,
whether it estimates the noise levels ``sigma``, the value it reports from the cost, and the
deviance of a likelihood profile. :func:`loss_from_name` turns the names used in
:func:`dynlearn.fit`, result files and model files (``"ls"``, ``"gaussian"``, ``"log"``) into
loss objects.
"""

from __future__ import annotations

import math

import numpy as np

from dynlearn.errors import DataError, OptionError

__all__ = [
    "LOSS_NAMES",
    "Gaussian",
    "LeastSquares",
    "LogLeastSquares",
    "Loss",
    "Rejected",
    "loss_from_name",
]


class Rejected(Exception):
    """A trial point at which the residuals cannot be computed (solver failure, a
    non-positive prediction under the log loss). Optimizers reject the point and back off."""


class Loss:
    """Base class of the losses of a fit (see the module notes).

    Attributes
    ----------
    name : str
        The name used by :func:`dynlearn.fit` (``loss=``), in result and model files.
    transform : {"identity", "log"}
        The residual transform ``g``: residuals, their bootstrap resamples and confidence
        bands live on this scale.
    estimates_noise : bool
        Whether the noise level of each observable without a known sigma is estimated (in
        closed form, ``sigma_k^2 = SSR_k / n_k``) and enters the reported value.
    """

    name = ""
    transform = "identity"
    estimates_noise = False

    # --- the residual transform ------------------------------------------------------------
    def g(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``g(values)`` at the observed entries (``mask``); other entries are never read.

        Raises :class:`Rejected` when a prediction lies outside the domain of ``g``.
        """
        return values

    def g_or_nan(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``g(values)`` for reporting: NaN where a value lies outside the domain of ``g``
        (a fit's residual table must show such a point, not fail on it)."""
        return self.g(values, mask)

    def chain(self, d: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``d * g'(values)``: derivatives with respect to ``g(values)`` carried back to
        ``values`` (entries outside ``mask`` are never read)."""
        return d

    def dg(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``g'(values)`` at the observed entries."""
        return self.chain(np.ones(np.shape(values)), values, mask)

    def shifted(self, values: np.ndarray, step: np.ndarray) -> np.ndarray:
        """``g^{-1}(g(values) + step)``: values moved by ``step`` on the residual scale (a
        resampled residual added to a prediction, a confidence band around it)."""
        return values + step

    # --- data --------------------------------------------------------------------------------
    def check_data(self, bound, observables) -> None:
        """Raise :class:`~dynlearn.DataError` if a bound experiment has data the loss
        cannot use (``bound``: a :class:`~dynlearn.objective.binding.BoundExperiment`).

        The loss is a sum of squares: an observed value so large that the squares of the
        experiment's values overflow (``1e155``, a typo or a unit far too small) would make
        the loss infinite at every point, so it is refused here, naming it.
        """
        values = np.abs(self.g(np.where(bound.mask, bound.Y, 1.0), bound.mask))
        limit = math.sqrt(np.finfo(float).max / max(int(bound.mask.sum()), 1)) / 2
        bad = bound.mask & ~(values <= limit)
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise DataError(f"experiment '{bound.name}' has {observables[k]}="
                            f"{bound.Y[i, k]:g} at t={bound.t[i]:g} (row {i + 1}): too large "
                            f"for a sum of squares (at most {limit:.3g} here); rescale the "
                            "data (other units)")

    # --- what the loss reports -----------------------------------------------------------
    def value(self, cost: float, penalty: float, n_data: int) -> float:
        """The loss reported for a point from its cost ``sum r^2`` (L2 rows included) and
        ``penalty = 2 sum log sigma`` over the data (used by losses that estimate noise)."""
        return float(cost)

    def gradient(self, grad_cost: np.ndarray) -> np.ndarray:
        """The gradient of :meth:`value` from the gradient of the cost (with estimated noise
        levels set to their estimates at the point, where the value is stationary in them)."""
        return grad_cost

    def profiles_variance(self, known_sigma: bool) -> bool:
        """Whether a common unknown noise variance is profiled out of the likelihood (it
        scales the covariance by ``s^2 = SSR / (n - p)``): no noise level is known and the
        loss does not estimate any."""
        return not self.estimates_noise and not known_sigma

    def deviance(self, losses, best: float, n_data: int, known_sigma: bool) -> np.ndarray:
        """Twice the log-likelihood drop from the optimum (reported loss ``best``) at the
        reported ``losses`` of a likelihood profile."""
        losses = np.asarray(losses, dtype=float)
        if not self.profiles_variance(known_sigma):
            return losses - best
        with np.errstate(divide="ignore", invalid="ignore"):
            return n_data * np.log(losses / best)

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LeastSquares(Loss):
    """(Weighted) least squares: ``g`` is the identity, noise levels as given (default 1)."""

    name = "ls"


class Gaussian(Loss):
    """The Gaussian likelihood: least squares with the noise level of every observable
    without a known sigma estimated in closed form. The reported value is the negative
    log-likelihood ``cost / 2 + sum log sigma + n/2 log(2 pi)``."""

    name = "gaussian"
    estimates_noise = True

    def value(self, cost: float, penalty: float, n_data: int) -> float:
        return 0.5 * cost + 0.5 * penalty + 0.5 * n_data * math.log(2 * math.pi)

    def gradient(self, grad_cost):
        return 0.5 * grad_cost

    def deviance(self, losses, best: float, n_data: int, known_sigma: bool) -> np.ndarray:
        return 2.0 * (np.asarray(losses, dtype=float) - best)


class LogLeastSquares(Loss):
    """Least squares on the log scale, the usual error model for positive counts such as
    populations: ``g = log``; data must be positive, and a non-positive prediction rejects
    the trial point."""

    name = "log"
    transform = "log"

    def g(self, values, mask):
        if np.any(values[mask] <= 0):
            raise Rejected("non-positive prediction under loss='log'")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.where(mask, values, 1.0))

    def g_or_nan(self, values, mask):
        ok = mask & (values > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ok, np.log(np.where(ok, values, 1.0)), np.nan)

    def chain(self, d, values, mask):
        return d / np.where(mask, values, 1.0)

    def shifted(self, values, step):
        return values * np.exp(step)

    def check_data(self, bound, observables) -> None:
        bad = bound.mask & (bound.Y <= 0)
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise DataError(f"loss='log' needs positive data; experiment '{bound.name}' has "
                            f"{observables[k]}={bound.Y[i, k]} at t={bound.t[i]} (row {i + 1}). "
                            "Use loss='ls', or drop/blank that value")


_BY_NAME = {cls.name: cls for cls in (LeastSquares, Gaussian, LogLeastSquares)}
LOSS_NAMES = tuple(_BY_NAME)   # ("ls", "gaussian", "log")


def loss_from_name(loss) -> Loss:
    """The :class:`Loss` for ``loss``: a name (``"ls"``, ``"gaussian"``, ``"log"``) or a
    :class:`Loss` object (returned as is).

    Raises
    ------
    OptionError
        For anything else.
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _BY_NAME:
        return _BY_NAME[loss]()
    raise OptionError(f"loss={loss!r}: use one of {list(LOSS_NAMES)} or a "
                      "dynlearn.objective.losses.Loss object")
