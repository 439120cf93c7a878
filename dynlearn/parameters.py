"""Named physical parameters with bounds and transforms (in the spirit of lmfit)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ParameterError

__all__ = ["Parameter"]

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

    Examples
    --------
    >>> Parameter(0.5, min=0.0, transform="log")
    Parameter(value=0.5, min=0.0, max=inf, fixed=False, transform='log')
    """

    value: float
    min: float = -math.inf
    max: float = math.inf
    fixed: bool = False
    transform: str = "identity"

    def __post_init__(self):
        for field in ("value", "min", "max"):
            v = getattr(self, field)
            try:
                object.__setattr__(self, field, float(v))
            except (TypeError, ValueError) as exc:
                raise ParameterError(f"Parameter {field} must be a number, got {v!r}") from exc
        if self.transform is None:
            object.__setattr__(self, "transform", "identity")
        if self.transform not in _TRANSFORMS:
            raise ParameterError(f"unknown transform {self.transform!r}; use one of {_TRANSFORMS}")
        if math.isnan(self.value) or math.isinf(self.value):
            raise ParameterError(f"Parameter value must be finite, got {self.value}")
        if not self.min <= self.value <= self.max:
            raise ParameterError(f"Parameter value {self.value} lies outside its bounds "
                                 f"[{self.min}, {self.max}]")
        if self.transform == "log" and self.value <= 0:
            raise ParameterError(f"a log-transformed parameter must be positive, got {self.value}")
        if self.transform == "log" and self.min < 0:
            object.__setattr__(self, "min", 0.0)

    def replace(self, **changes) -> Parameter:
        """A copy with some fields changed."""
        fields = {k: getattr(self, k) for k in ("value", "min", "max", "fixed", "transform")}
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
            except TypeError as exc:
                raise ParameterError(f"parameter '{name}': {exc}") from exc
        try:
            return cls(float(spec))
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"parameter '{name}' must be a number, a dict or a dl.Parameter, "
                                 f"got {spec!r}") from exc
