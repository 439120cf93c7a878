"""Named physical parameters with bounds and transforms (in the spirit of lmfit)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dynlearn.errors import ParameterError, ParameterTypeError

__all__ = ["Parameter", "ParameterSpace"]

_TRANSFORMS = ("identity", "log")


@dataclass(frozen=True)
class Parameter:
    """A physical parameter: initial value, bounds, fixed or free, and transform.

    Parameters
    ----------
    value : float
        Initial (or, when ``fixed``, known) value in physical units.
    min, max : float
        Bounds in physical units (``-inf``/``inf`` when absent).
    fixed : bool
        A known constant that is not fitted.
    transform : {"identity", "log"}
        Space in which optimizers move the parameter. ``"log"`` suits positive rate
        constants: steps are relative and the bound at zero is never crossed. Values and
        gradients exchanged with the user stay in physical units.
    unit : str
        A unit label (e.g. ``"1/day"``) shown in tables, summaries and reports. It is a
        label only: nothing is converted. ``""`` (the default) for none.

    Examples
    --------
    >>> Parameter(0.5, min=0.0, transform="log")
    Parameter(value=0.5, min=0.0, max=inf, fixed=False, transform='log')
    >>> Parameter(0.2, unit="1/day").unit
    '1/day'
    """

    value: float
    min: float = -math.inf
    max: float = math.inf
    fixed: bool = False
    transform: str = "identity"
    unit: str = ""

    def __repr__(self) -> str:
        # the unit only when there is one, so unit-less parameters print as they always did
        unit = f", unit={self.unit!r}" if self.unit else ""
        return (f"Parameter(value={self.value!r}, min={self.min!r}, max={self.max!r}, "
                f"fixed={self.fixed!r}, transform={self.transform!r}{unit})")

    def __post_init__(self):
        for field in ("value", "min", "max"):
            v = getattr(self, field)
            try:
                object.__setattr__(self, field, float(v))
            except (TypeError, ValueError) as exc:
                raise ParameterTypeError(f"Parameter {field} must be a number, got {v!r}"
                                         ) from exc
        if self.transform is None:
            object.__setattr__(self, "transform", "identity")
        if self.unit is None:
            object.__setattr__(self, "unit", "")
        if not isinstance(self.unit, str):
            raise ParameterTypeError(f"Parameter unit must be a string label, got {self.unit!r}")
        object.__setattr__(self, "unit", self.unit.strip())
        if self.transform not in _TRANSFORMS:
            raise ParameterError(f"unknown transform {self.transform!r}; use one of {_TRANSFORMS}")
        if math.isnan(self.value) or math.isinf(self.value):
            raise ParameterError(f"Parameter value must be finite, got {self.value}")
        for field in ("min", "max"):
            if math.isnan(getattr(self, field)):
                raise ParameterError(f"Parameter {field} must be a number, got nan")
        if self.min > self.max:
            raise ParameterError(f"Parameter min {self.min:g} is greater than its max "
                                 f"{self.max:g}")
        if not self.min <= self.value <= self.max:
            raise ParameterError(f"Parameter value {self.value} lies outside its bounds "
                                 f"[{self.min}, {self.max}]")
        if self.transform == "log" and self.value <= 0:
            raise ParameterError(f"a log-transformed parameter must be positive, got {self.value}")
        if self.transform == "log" and self.min < 0:
            object.__setattr__(self, "min", 0.0)

    # --- optimizer space ---------------------------------------------------------------
    def to_internal(self, value: float) -> float:
        """The optimizer's coordinate of a physical value (``log(value)`` for log)."""
        return math.log(value) if self.transform == "log" else float(value)

    def from_internal(self, z: float) -> float:
        """The physical value of an optimizer coordinate."""
        return math.exp(z) if self.transform == "log" else float(z)

    def internal_bounds(self) -> tuple[float, float]:
        """Bounds in the optimizer's coordinate (``(-inf, inf)`` when unbounded)."""
        if self.transform == "log":
            lo = math.log(self.min) if self.min > 0 else -math.inf
            hi = math.log(self.max) if math.isfinite(self.max) else math.inf
            return lo, hi
        return self.min, self.max

    def replace(self, **changes) -> Parameter:
        """A copy with some fields changed."""
        fields = {k: getattr(self, k)
                  for k in ("value", "min", "max", "fixed", "transform", "unit")}
        fields.update(changes)
        return Parameter(**fields)

    @classmethod
    def coerce(cls, spec, name: str = "?") -> Parameter:
        """A Parameter from a Parameter, a bare number (free, untransformed) or a dict."""
        if isinstance(spec, Parameter):
            return spec
        if isinstance(spec, dict):
            try:
                return cls(**spec)
            except TypeError as exc:    # an unknown field
                raise ParameterTypeError(f"parameter '{name}': {exc}") from exc
        try:
            return cls(float(spec))
        except (TypeError, ValueError) as exc:
            raise ParameterTypeError(f"parameter '{name}' must be a number, a dict or a "
                                     f"dl.Parameter, got {spec!r}") from exc


class ParameterSpace:
    """The optimizer's vector ``x`` and its map to physical values.

    ``x`` holds, in order: the model's free physical parameters (in their transformed
    coordinate, e.g. ``log(k)``), every network weight (untransformed), then the free
    initial states of every experiment. Optimizers only see ``x`` and box bounds on it;
    everything reported to users is mapped back to physical units.

    Parameters
    ----------
    model : HybridModel
    y0 : list of list of Parameter
        Per experiment, one :class:`Parameter` per state; ``fixed`` ones are known.
    experiments : list of str
        Experiment names (used in the names of initial states).

    Attributes
    ----------
    names : list of str
        Free-parameter names in ``x`` order; initial states read ``y0[<state>]``, or
        ``y0[<state>]@<experiment>`` with several experiments.
    n_theta : int
        Length of the model's theta (the first entries of ``x``).
    """

    def __init__(self, model, y0: list, experiments: list):
        self.model = model
        self.experiments = list(experiments)
        self.y0 = [list(row) for row in y0]
        self.n_theta = model.n_theta
        states = [s.name for s in model.states]
        entries = [(s.name, model.params[s], "param") for s in model.free_params]
        n_phys = len(entries)
        entries += [(nm, None, "weight") for nm in model.theta_names[n_phys:]]
        multi = len(self.experiments) > 1
        self.y0_index = []  # per experiment: (state index, x index) of free states
        for name, row in zip(self.experiments, self.y0):
            idx = []
            for i, p in enumerate(row):
                if not p.fixed:
                    idx.append((i, len(entries)))
                    label = f"y0[{states[i]}]" + (f"@{name}" if multi else "")
                    entries.append((label, p, "y0"))
            self.y0_index.append(idx)
        self.names = [e[0] for e in entries]
        self.kinds = np.array([e[2] for e in entries], dtype=str)   # str also when empty
        self.params = [e[1] for e in entries]
        self.size = len(entries)
        self.is_log = np.array([p is not None and p.transform == "log" for p in self.params],
                               dtype=bool)
        theta0 = model.theta0
        x0 = np.empty(self.size)
        lo = np.full(self.size, -np.inf)
        hi = np.full(self.size, np.inf)
        for k, p in enumerate(self.params):
            if p is None:
                x0[k] = theta0[k]
            else:
                x0[k] = p.to_internal(p.value)
                lo[k], hi[k] = p.internal_bounds()
        self.x0, self.lower, self.upper = x0, lo, hi
        self.is_weight = self.kinds == "weight"
        # physical bounds: exp(log(min)) can land one ulp below min, and a fitted value
        # outside its bounds would fail validation when the fitted model is built. A log
        # parameter stays a positive finite number: an optimizer that drives it towards 0
        # (a rate the data cannot tell from 0) reaches log values whose exp underflows to
        # 0.0, which no log parameter may hold, so it ends at the smallest positive float
        tiny, huge = np.finfo(float).tiny, np.finfo(float).max
        self._pmin = np.array([-np.inf if p is None else
                               max(p.min, tiny) if p.transform == "log" else p.min
                               for p in self.params])
        self._pmax = np.array([np.inf if p is None else
                               min(p.max, huge) if p.transform == "log" else p.max
                               for p in self.params])

    def physical(self, x):
        """Physical values of all entries of ``x``, within the parameters' bounds (the
        inverse of the log transform at a bound is clipped onto it)."""
        x = np.asarray(x, dtype=float)
        with np.errstate(over="ignore"):
            v = np.where(self.is_log, np.exp(np.where(self.is_log, x, 0.0)), x)
        return np.clip(v, self._pmin, self._pmax)

    def dphysical(self, x):
        """``d physical / d x`` (the transform is elementwise, so this is a diagonal)."""
        x = np.asarray(x, dtype=float)
        with np.errstate(over="ignore"):
            return np.where(self.is_log, np.exp(np.where(self.is_log, x, 0.0)), 1.0)

    def internal(self, values):
        """``x`` from physical values (inverse of :meth:`physical`)."""
        v = np.asarray(values, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.is_log, np.log(np.where(self.is_log, v, 1.0)), v)

    def clip(self, x):
        """``x`` clipped to the box bounds."""
        return np.clip(x, self.lower, self.upper)

    def unpack(self, x):
        """``(theta, [y0 per experiment])`` in physical units."""
        v = self.physical(x)
        theta = v[:self.n_theta]
        y0s = []
        for row, idx in zip(self.y0, self.y0_index):
            y = np.array([p.value for p in row], dtype=float)
            for i, k in idx:
                y[i] = v[k]
            y0s.append(y)
        return theta, y0s
