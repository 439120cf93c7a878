"""Loss objects: how residuals are formed from data and predictions, and what the loss reports.

A fit's residual of observation ``i`` of observable ``k`` is

.. math:: r_{ik} = \\sqrt{w_k}\\,\\frac{g_k(h_{ik}) - g_k(d_{ik})}{\\sigma_{ik}},

and its cost ``sum r^2`` (plus the L2 rows of network weights). A :class:`Loss` owns what
differs between losses: the transform ``g_k`` of each observable (``"lin"``: the identity,
``"log"``, ``"log10"``; see :data:`TRANSFORMS`) and its derivative, which data it accepts,
whether it estimates the noise levels ``sigma``, the value it reports from the cost, and the
deviance of a likelihood profile. :func:`loss_from_name` turns the names used in
:func:`dynlearn.fit`, result files and model files (``"ls"``, ``"gaussian"``, ``"log"``, with
an optional ``transform=`` per observable) into loss objects.

One implementation for every transform
--------------------------------------
The arrays a loss works on have one column per observable, so every method acts column by
column from a per-column factor ``c_k`` (0 for ``"lin"``, 1 for ``"log"``, ``1/ln 10`` for
``"log10"``): ``g_k(y) = c_k ln y`` on the log columns, ``y`` elsewhere. A loss made with a
``transform`` per observable is bound to the fit's observables (:meth:`Loss.bind`) by the
objective; until then, and for a transform given for every observable (``loss="log"``), the
same factor applies to every column.
"""

from __future__ import annotations

import math

import numpy as np

from dynlearn.errors import DataError, OptionError

__all__ = [
    "LOSS_NAMES",
    "TRANSFORMS",
    "Gaussian",
    "LeastSquares",
    "LogLeastSquares",
    "Loss",
    "Rejected",
    "loss_from_config",
    "loss_from_name",
    "transformed",
]

#: The residual transforms of an observable (PEtab's ``observableTransformation``).
TRANSFORMS = ("lin", "log", "log10")
#: ``g(y) = factor * ln(y)`` for the log transforms (0: the identity)
_FACTOR = {"lin": 0.0, "log": 1.0, "log10": 1.0 / math.log(10.0)}


def transformed(values, transform: str) -> np.ndarray:
    """``values`` on the scale of ``transform`` (one of :data:`TRANSFORMS`), NaN where a value
    lies outside its domain (for residual tables and plots)."""
    values = np.asarray(values, dtype=float)
    if _FACTOR[transform] == 0.0:
        return values
    ok = values > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, _FACTOR[transform] * np.log(np.where(ok, values, 1.0)), np.nan)


def _check_transform(spec, default: str):
    """``spec`` (None, a transform name, or a dict observable -> name) checked: a name, or
    a non-empty dict without the entries equal to ``default``; and the observables it
    names."""
    if spec is None:
        return default, ()
    if isinstance(spec, str):
        if spec not in TRANSFORMS:
            raise OptionError(f"transform={spec!r}: an unknown transform; use one of "
                              f"{list(TRANSFORMS)}")
        return spec, ()
    if not isinstance(spec, dict):
        raise OptionError(f"transform={spec!r}: give a transform name {list(TRANSFORMS)} or "
                          "a dict {observable: transform}")
    bad = {k: v for k, v in spec.items() if not isinstance(v, str) or v not in TRANSFORMS}
    if bad:
        raise OptionError(f"transform={bad}: unknown transforms; use one of {list(TRANSFORMS)}")
    out = {str(k): v for k, v in spec.items() if v != default}
    return out or default, tuple(str(k) for k in spec)


class Rejected(Exception):
    """A trial point at which the residuals cannot be computed (solver failure, a
    non-positive prediction of an observable on a log scale). Optimizers reject the point
    and back off."""


class Loss:
    """Base class of the losses of a fit (see the module notes).

    Parameters
    ----------
    transform : None, str or dict observable -> str, optional
        The residual transform of each observable (:data:`TRANSFORMS`): one name for every
        observable, or a dict (observables not named: the loss's default, ``"lin"``).

    Attributes
    ----------
    name : str
        The name used by :func:`dynlearn.fit` (``loss=``), in result and model files.
    default_transform : str
        The transform of an observable not given one.
    estimates_noise : bool
        Whether the noise level of each observable without a known sigma is estimated (in
        closed form, ``sigma_k^2 = SSR_k / n_k``, on the observable's residual scale) and
        enters the reported value.
    observables : tuple of str or None
        The observables the loss is bound to (:meth:`bind`), else None.
    """

    name = ""
    default_transform = "lin"
    estimates_noise = False
    # (class defaults too: a subclass written before transforms existed may not call
    # Loss.__init__)
    _spec: str | dict = "lin"
    _named: tuple = ()
    observables = None
    _factor = None

    def __init__(self, transform=None):
        self._spec, self._named = _check_transform(transform, self.default_transform)
        self.observables: tuple[str, ...] | None = None
        self._factor = None        # per column, once bound

    # --- the transforms ----------------------------------------------------------------------
    def bind(self, observables) -> Loss:
        """This loss for a fit with these observables (in column order): a copy whose
        methods apply each observable's own transform.

        Raises
        ------
        OptionError
            When the transform names an observable that is not one.
        """
        observables = tuple(observables)
        unknown = [k for k in self._named if k not in observables]
        if unknown:
            raise OptionError(f"transform names {unknown}, which are not observables; "
                              f"observables are {list(observables)}")
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.observables = observables
        out._factor = np.array([_FACTOR[out.transform_of(o)] for o in observables])
        return out

    def transform_of(self, observable) -> str:
        """The transform of ``observable`` (a name, or a column index of a bound loss)."""
        if isinstance(self._spec, str):
            return self._spec
        if not isinstance(observable, str):
            observable = self.observables[int(observable)]
        return self._spec.get(observable, self.default_transform)

    def log_factor(self, observable) -> float:
        """``c`` of ``g(y) = c ln y`` for ``observable`` on a log scale (1 for ``"log"``,
        ``1/ln 10`` for ``"log10"``), 0 on the linear scale."""
        return _FACTOR[self.transform_of(observable)]

    @property
    def transforms(self) -> dict[str, str]:
        """The transform of every observable of a bound loss (empty when unbound)."""
        return {o: self.transform_of(o) for o in (self.observables or ())}

    @property
    def transform(self) -> str:
        """``"identity"`` when every observable is on the linear scale, ``"log"`` or
        ``"log10"`` when every one is on that scale, ``"mixed"`` otherwise (unbound, with a
        transform for some observables: ``"mixed"`` unless one is named for all)."""
        if isinstance(self._spec, str):
            names = {self._spec}
        elif self.observables is not None:
            names = set(self.transforms.values()) or {self.default_transform}
        else:
            names = set(self._spec.values()) | {self.default_transform}
        if len(names) > 1:
            return "mixed"
        name = names.pop()
        return "identity" if name == "lin" else name

    @property
    def transform_spec(self):
        """The ``transform=`` that rebuilds this loss with :func:`loss_from_name` from its
        name: None when every observable has the loss's default, else a transform name or
        a dict observable -> transform (without the entries equal to the default)."""
        if self._spec == self.default_transform:
            return None
        return dict(self._spec) if isinstance(self._spec, dict) else self._spec

    def _columns(self, values):
        """The factor ``c_k`` of each column of ``values`` (or one for all)."""
        if self._factor is not None:
            return self._factor
        if isinstance(self._spec, str):
            return np.full(np.shape(values)[-1] if np.ndim(values) else 1, _FACTOR[self._spec])
        raise OptionError("a loss with a transform per observable must be bound to the "
                          "observables first (Loss.bind)")

    def _what(self, k: int) -> str:
        """How an error names the transform of column ``k``."""
        if type(self).name == "log" and self._spec == "log":
            return "loss='log'"
        t = self.transform_of(k)
        obs = f" of {self.observables[k]!r}" if self.observables is not None else ""
        return f"transform {t!r}{obs}"

    # --- the residual transform ------------------------------------------------------------
    def g(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``g(values)`` at the observed entries (``mask``); other entries are never read.

        Raises :class:`Rejected` when a prediction lies outside the domain of ``g``.
        """
        c = self._columns(values)
        if not c.any():
            return values
        logs = mask & (c > 0)
        if np.any(values[logs] <= 0):
            k = int(np.argwhere(logs & (values <= 0))[0][-1])
            raise Rejected(f"non-positive prediction under {self._what(k)}")
        with np.errstate(divide="ignore", invalid="ignore"):
            lg = c * np.log(np.where(logs, values, 1.0))
        return np.where(c > 0, lg, values)

    def g_or_nan(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``g(values)`` for reporting: NaN where a value lies outside the domain of ``g``
        (a fit's residual table must show such a point, not fail on it)."""
        c = self._columns(values)
        ok = mask & (values > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lg = np.where(ok, c * np.log(np.where(ok, values, 1.0)), np.nan)
        return np.where(c > 0, lg, values)

    def chain(self, d: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``d * g'(values)``: derivatives with respect to ``g(values)`` carried back to
        ``values`` (entries outside ``mask`` are never read)."""
        c = self._columns(values)
        if not c.any():
            return d
        return np.where(c > 0, d * c / np.where(mask & (c > 0), values, 1.0), d)

    def dg(self, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``g'(values)`` at the observed entries."""
        return self.chain(np.ones(np.shape(values)), values, mask)

    def shifted(self, values: np.ndarray, step: np.ndarray) -> np.ndarray:
        """``g^{-1}(g(values) + step)``: values moved by ``step`` on the residual scale (a
        resampled residual added to a prediction, a confidence band around it)."""
        c = self._columns(values)
        if not c.any():
            return values + step
        with np.errstate(over="ignore", invalid="ignore"):
            return np.where(c > 0, values * np.exp(step / np.where(c > 0, c, 1.0)),
                            values + step)

    def log_jacobian(self, values: np.ndarray, mask: np.ndarray) -> float:
        """``-sum log g'(values)`` over the observed entries: what the negative
        log-likelihood of data on their own scale adds to that of their transforms
        (``sum log y`` over log observables, ``sum log(y ln 10)`` over log10 ones; 0 on the
        linear scale)."""
        c = self._columns(values)
        logs = mask & (c > 0)
        if not logs.any():
            return 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(-np.log(self.dg(values, mask)[logs]).sum())

    # --- data --------------------------------------------------------------------------------
    def check_data(self, bound, observables) -> None:
        """Raise :class:`~dynlearn.DataError` if a bound experiment has data the loss
        cannot use (``bound``: a :class:`~dynlearn.objective.binding.BoundExperiment`).

        An observable on a log scale needs positive data. The loss is a sum of squares: an
        observed value so large that the squares of the experiment's values overflow
        (``1e155``, a typo or a unit far too small) would make the loss infinite at every
        point, so it is refused here, naming it.
        """
        c = self._columns(bound.Y)
        bad = bound.mask & (c > 0) & (bound.Y <= 0)
        if bad.any():
            i, k = np.argwhere(bad)[0]
            raise DataError(f"{self._what(k)} needs positive data; experiment "
                            f"'{bound.name}' has {observables[k]}={bound.Y[i, k]} at "
                            f"t={bound.t[i]} (row {i + 1}). Use the linear scale for it, or "
                            "drop/blank that value")
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
        ``penalty`` (used by losses that estimate noise: ``2 sum log sigma`` over the data
        plus twice their :meth:`log_jacobian`)."""
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

    def _key(self):
        spec = self._spec if isinstance(self._spec, str) else tuple(sorted(self._spec.items()))
        return type(self), spec

    def __eq__(self, other) -> bool:
        return isinstance(other, Loss) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        spec = self.transform_spec
        return f"{type(self).__name__}({'' if spec is None else f'transform={spec!r}'})"


class LeastSquares(Loss):
    """(Weighted) least squares: noise levels as given (default 1); each observable on its
    transform's scale (default ``"lin"``)."""

    name = "ls"


class Gaussian(Loss):
    """The Gaussian likelihood: least squares with the noise level of every observable
    without a known sigma estimated in closed form (on the observable's residual scale, so
    a log observable's sigma is that of its log, as in PEtab's log-normal noise). The
    reported value is the negative log-likelihood of the data on their own scale,
    ``cost / 2 + sum log sigma + n/2 log(2 pi)`` plus the :meth:`~Loss.log_jacobian` of
    the data of log observables."""

    name = "gaussian"
    estimates_noise = True

    def value(self, cost: float, penalty: float, n_data: int) -> float:
        return 0.5 * cost + 0.5 * penalty + 0.5 * n_data * math.log(2 * math.pi)

    def gradient(self, grad_cost):
        return 0.5 * grad_cost

    def deviance(self, losses, best: float, n_data: int, known_sigma: bool) -> np.ndarray:
        return 2.0 * (np.asarray(losses, dtype=float) - best)


class LogLeastSquares(LeastSquares):
    """Least squares on the log scale, the usual error model for positive counts such as
    populations: ``g = log`` for every observable (``loss="log"``, the shorthand of
    ``loss="ls"`` with ``transform="log"``); data must be positive, and a non-positive
    prediction rejects the trial point."""

    name = "log"
    default_transform = "log"
    _spec = "log"

    def __init__(self, transform=None):
        spec, _ = _check_transform(transform, "log")
        if spec != "log":
            other = spec if isinstance(spec, str) else {k: transform[k] for k in spec}
            raise OptionError(f"loss='log' puts every observable on the log scale, but "
                              f"transform={other!r} asks otherwise; use loss='ls' (or "
                              "'gaussian') with transform= per observable")
        super().__init__(transform)


_BY_NAME = {cls.name: cls for cls in (LeastSquares, Gaussian, LogLeastSquares)}
LOSS_NAMES = tuple(_BY_NAME)   # ("ls", "gaussian", "log")


def loss_from_name(loss, transform=None) -> Loss:
    """The :class:`Loss` for ``loss``: a name (``"ls"``, ``"gaussian"``, ``"log"``) or a
    :class:`Loss` object (returned as is when no ``transform`` is given).

    Parameters
    ----------
    loss : str or Loss
    transform : None, str or dict observable -> str
        The residual transform per observable (:data:`TRANSFORMS`; see :class:`Loss`).

    Raises
    ------
    OptionError
        For anything else, unknown transforms, or a transform contradicting the loss
        (``loss="log"`` with an observable on another scale).
    """
    if isinstance(loss, Loss):
        if transform is None:
            return loss
        try:
            new = type(loss)(transform)
        except TypeError:
            raise OptionError(f"transform={transform!r}: the loss {loss!r} takes no "
                              "transform (its class has no transform= argument)") from None
        if loss.transform_spec is not None and new != loss:
            raise OptionError(f"transform={transform!r} given with a loss object that has "
                              f"another transform, {loss.transform_spec!r}")
        return new
    if isinstance(loss, str) and loss in _BY_NAME:
        return _BY_NAME[loss](transform)
    raise OptionError(f"loss={loss!r}: use one of {list(LOSS_NAMES)} or a "
                      "dynlearn.objective.losses.Loss object")


def loss_from_config(config) -> Loss:
    """The loss of a fit from its ``result.config`` (``loss`` and, when a transform per
    observable was given, ``transform``); results saved before transforms existed have
    none."""
    return loss_from_name(config.get("loss", "ls"), config.get("transform"))
