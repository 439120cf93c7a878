"""Objective priors of a PEtab (v1) parameter table, as a negative log density with its
gradient on the parameters' PEtab scales.

The parameter table's ``objectivePriorType`` and ``objectivePriorParameters`` columns give
one prior per estimated parameter:

=========================  ===================  =======================================
type                       parameters (a; b)    density of
=========================  ===================  =======================================
``uniform``                lower; upper         the linear value ``p``
``normal``                 mean; std            ``p``
``laplace``                location; scale      ``p``
``logNormal``              mean; std of ln p    ``p`` (``ln p`` is normal)
``logLaplace``             location; scale      ``p`` (``ln p`` is Laplace)
``parameterScaleUniform``  lower; upper         ``x``, the value on its parameterScale
``parameterScaleNormal``   mean; std            ``x``
``parameterScaleLaplace``  location; scale      ``x``
=========================  ===================  =======================================

Every density includes its normalisation constant. A prior on the linear value is
evaluated at ``p(x)`` without the Jacobian of the change of scale (the convention of
pyPESTO's PEtab import), so that the posterior's mode does not depend on the
``parameterScale`` chosen. A parameter without a prior (an empty cell, or no column)
contributes nothing; PEtab's default ``parameterScaleUniform`` within the bounds is
"equivalent to no prior".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dynlearn.errors import PetabError

__all__ = ["PRIOR_TYPES", "Priors", "parameter_priors"]

#: The objective prior types of PEtab v1.
PRIOR_TYPES = ("uniform", "normal", "laplace", "logNormal", "logLaplace",
               "parameterScaleUniform", "parameterScaleNormal", "parameterScaleLaplace")

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class _Prior:
    index: int        # position in x
    kind: str         # one of PRIOR_TYPES
    a: float
    b: float


def _neg_log_density(kind: str, z: float, a: float, b: float) -> tuple[float, float]:
    """``-log density`` of a uniform/normal/Laplace law in ``z`` and its derivative."""
    if kind == "uniform":
        if not a <= z <= b:
            return math.inf, 0.0
        return math.log(b - a), 0.0
    if kind == "normal":
        r = (z - a) / b
        return 0.5 * _LOG_2PI + math.log(b) + 0.5 * r * r, r / b
    # laplace; at z == a the derivative is taken as 0 (a subgradient)
    d = z - a
    return math.log(2.0 * b) + abs(d) / b, math.copysign(1.0, d) / b if d else 0.0


class Priors:
    """The objective priors of the estimated parameters.

    Made by :func:`parameter_priors`; :meth:`PetabProblem.objective
    <dynlearn.petab.PetabProblem.objective>` adds :meth:`value_and_grad` to the negative
    log-likelihood.

    Attributes
    ----------
    names : list of str
        The parameters that have a prior.
    kinds : list of str
        Their prior types.
    """

    def __init__(self, priors: list[_Prior], x_names: list[str], x_scales: list[str]):
        self._priors = priors
        self._scales = list(x_scales)
        self.names = [x_names[p.index] for p in priors]
        self.kinds = [p.kind for p in priors]

    def __len__(self) -> int:
        return len(self._priors)

    def value_and_grad(self, x) -> tuple[float, np.ndarray]:
        """The negative log prior density at ``x`` (estimated parameters on their PEtab
        scales) and its gradient with respect to ``x``; ``inf`` outside a uniform prior's
        support."""
        x = np.asarray(x, dtype=float)
        total, g = 0.0, np.zeros_like(x)
        for p in self._priors:
            xi, scale = float(x[p.index]), self._scales[p.index]
            if p.kind.startswith("parameterScale"):
                kind = p.kind[len("parameterScale"):].lower()
                v, d = _neg_log_density(kind, xi, p.a, p.b)
            else:
                # the linear value and dp/dx
                if scale == "log":
                    lin = math.exp(xi)
                    dlin = lin
                elif scale == "log10":
                    lin = 10.0 ** xi
                    dlin = lin * math.log(10.0)
                else:
                    lin, dlin = xi, 1.0
                if p.kind in ("logNormal", "logLaplace"):
                    if lin <= 0:
                        return math.inf, g
                    kind = "normal" if p.kind == "logNormal" else "laplace"
                    # density of p: density of ln p, divided by p
                    v, d = _neg_log_density(kind, math.log(lin), p.a, p.b)
                    v += math.log(lin)
                    d = (d + 1.0) / lin
                else:
                    v, d = _neg_log_density(p.kind, lin, p.a, p.b)
                d *= dlin
            total += v
            g[p.index] += d
        return total, g


def _prior_parameters(cell, pid: str) -> tuple[float, float]:
    parts = [s.strip() for s in str(cell).split(";") if s.strip()]
    try:
        a, b = (float(s) for s in parts)
    except ValueError:
        raise PetabError(f"parameter '{pid}': objectivePriorParameters {cell!r} must be two "
                         "numbers separated by ';'") from None
    return a, b


def parameter_priors(parameter_df, x_names: list[str], x_scales: list[str]
                     ) -> Priors | None:
    """The objective priors of a PEtab parameter table, or ``None`` when it defines none.

    Parameters
    ----------
    parameter_df : pandas.DataFrame
        The parameter table, indexed by ``parameterId``.
    x_names, x_scales : list of str
        The estimated parameters and their scales (``PetabProblem.x_names``,
        ``x_scales``).

    Raises
    ------
    PetabError
        An unknown prior type, or parameters that are not two numbers (a positive scale or
        standard deviation, an upper bound above the lower one).
    """
    if "objectivePriorType" not in parameter_df:
        return None
    types = parameter_df["objectivePriorType"]
    params = (parameter_df["objectivePriorParameters"]
              if "objectivePriorParameters" in parameter_df else None)
    index = {k: i for i, k in enumerate(x_names)}
    priors = []
    for pid, kind in types.items():
        pid = str(pid)
        if not isinstance(kind, str) or not kind.strip():
            continue                       # no prior (an empty cell reads as NaN)
        kind = kind.strip()
        if kind not in PRIOR_TYPES:
            raise PetabError(f"parameter '{pid}': unknown objectivePriorType '{kind}'; "
                             f"PEtab v1 has {', '.join(PRIOR_TYPES)}")
        if pid not in index:
            continue                       # a fixed parameter: its prior is a constant
        cell = params.loc[pid] if params is not None else None
        if cell is None or (isinstance(cell, float) and cell != cell):
            raise PetabError(f"parameter '{pid}': objectivePriorType '{kind}' needs "
                             "objectivePriorParameters")
        a, b = _prior_parameters(cell, pid)
        if "niform" in kind and not b > a:
            raise PetabError(f"parameter '{pid}': uniform prior needs lower < upper, got "
                             f"{a}; {b}")
        if "niform" not in kind and not b > 0:
            raise PetabError(f"parameter '{pid}': the scale of a {kind} prior must be "
                             f"positive, got {b}")
        priors.append(_Prior(index[pid], kind, a, b))
    if not priors:
        return None
    return Priors(priors, x_names, x_scales)
