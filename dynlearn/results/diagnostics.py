"""Diagnostics of a fit: what the data determine, parameters at bounds, goodness of fit.

:func:`diagnose` is called once by :meth:`FitResult.from_fit
<dynlearn.results.result.FitResult.from_fit>` with the residuals and the residual Jacobian
the optimizer left at the optimum (no further solve); the result keeps the
:class:`Diagnostics` as ``result.diagnostics``, ``result.summary()`` prints them, and they are
saved with the result.

Identifiability
---------------
The residual Jacobian ``J`` (in the optimizer's coordinates ``x``: log of log-transformed
parameters) is scaled to unit columns, so that the answer does not depend on the units of
the parameters. Its numerical rank counts the singular values above :data:`RANK_RTOL` times
the largest; a direction ``u`` with ``J u ~ 0`` is a combination of parameters the data
cannot determine. The combinations are named from that null space (a sparse basis of it, by
pivoted QR). In relative terms (``d log p``, i.e. ``dp / p`` for a plain parameter) a null
vector ``(1, -1, 2, 2)`` of ``(k1, k2, k4, y0)`` says that ``k1 c, k2 / c, k4 c^2, y0 c^2``
fit alike for every ``c > 0`` (to first order): the four "can be scaled together without
changing the fit". When the parameters involved are all plain (untransformed) and the
relative exponents are not whole numbers, the combination is given as additive steps
instead (``a + d, b - d``).

Network weights are not named (a network has many redundant weight directions, which is
harmless). The physical parameters and initial states are analysed after projecting out
what the weights can do: the projected columns ``(I - P_W) J_k`` (``P_W`` the projector on
the span of the weights' columns) show what the data determine *given that the network may
adjust*. A null direction there that the weights must compensate is a parameter (or a
combination) whose term the network can reproduce exactly; and the share of a parameter's
column the weights can reproduce, ``R_k^2 = 1 - |(I - P_W) J_k|^2 / |J_k|^2`` (the squared
multiple correlation of its sensitivity with the weights' sensitivities), names the
parameters whose term the network is absorbing (``R_k >`` :data:`NETWORK_CORRELATION`).

Parameters at a bound
---------------------
A free entry of ``x`` within :data:`BOUND_RTOL` of a finite bound (relative to the width of
the box, or to the magnitude of the bound and of the starting value for a one-sided box) is
flagged ``at_bound`` in the parameter table. Intervals are **clipped** to the bounds (for
every parameter, at a bound or not): for a parameter at its lower bound the 95 % interval
becomes ``[min, value + q se]``, which is a one-sided interval of level 97.5 %, so the
clipped interval is conservative. The Wald interval is only approximate at a bound, where the
estimate's distribution is a half-normal mixture, which is why the flag is shown.

Goodness of fit
---------------
Per observable: the root-mean-square residual (the residual standard deviation), ``R^2 = 1 -
SS_res / SS_tot`` (about the observable's mean over all experiments) and its share of the
chi-square. Everything is on the loss's residual scale: data units for ``"ls"`` and
``"gaussian"``, log units for ``"log"``; observation weights are left out. The chi-square
``sum (residual / sigma)^2`` uses the known noise levels (``sigma=`` or ``<obs>_sigma``
columns) where there are some, else a noise level estimated **from the data alone**
(:func:`noise_from_differences`): never the fit's own estimate (``loss="gaussian"``), which
makes the chi-square equal the number of data by construction. The reduced chi-square divides
by ``n - p`` (``p`` the fitted values; not defined when ``p >= n``).

The noise estimate from the data uses third differences of neighbouring points (weights that
cancel any quadratic through four consecutive samples, scaled so that white noise keeps its
variance), with the largest quarter of the squared differences left out (the signal's
curvature shows up as a few large values there, at peaks) and the rest rescaled for the
trimming. It needs no model, so it can tell when a model fits *better* than the noise allows;
it overestimates the noise when the data are sampled coarsely for the dynamics (fewer than
about ten points per oscillation or time constant): pass ``sigma=`` when the noise level is
known.

A network model that fits well below that noise level is fitting the noise: a
:class:`FitWarning` is issued and the summary says so. "Well below" is two conditions:
``F = chi^2 / (n - d)`` is below :data:`BELOW_NOISE`, and ``log F`` is significantly below
0 (one-sided, level :data:`BELOW_NOISE_LEVEL`) given how uncertain both are: ``var(log F) ~
2 / (n - d) + sum_k w_k^2 c / m_k``, with ``w_k`` observable ``k``'s share of the
chi-square, ``m_k`` the number of third differences its noise level was estimated from
(none for a known level) and ``c = 7`` (``var(log sigma_hat^2) ~ 7 / m`` for white noise,
measured). The count ``d`` of what the fit spends on the data is:

* for a fit with an L2 penalty (``l2 > 0``, chosen from the data or given), the fit's
  effective degrees of freedom ``df``: the trace of the hat matrix ``J (J^T J + l2 P)^-1
  J^T`` at its strength, the physics' fitted values plus the network's share, counted as
  generalised cross-validation counts them. The fitting layer records them in
  ``result.config["effective_dof"]`` (the count GCV made for the strength it chose, else
  :func:`~dynlearn.fitting.regularisation.penalised_dof` from the Jacobian at the optimum)
  and hands the number to :func:`diagnose`. A penalised network that leaves ``chi^2``
  near ``n - df`` is honest for its effective size, and the rule that chose the penalty
  judged it so; dividing by ``n - k`` instead warned about the default's own choice (the
  README's Lotka-Volterra UDE: ``chi^2 / (n - k) = 0.20``, ``chi^2 / (n - df) = 0.41``
  with ``df = 26.4`` of 50 data at GCV's ``l2 = 0.0084``, ``z = -1.8``: no warning).
  The count is a property of the Jacobian at the strength, not of how far training moved
  along each direction: a penalty too weak to change the fit (an early-stopped one, say)
  lowers it all the same. So where the rule that chose the strength started from an
  unpenalised fit (``result.config["unpenalised_cost"]``, its data cost), the count is
  used only if the penalty raised the chi-square by at least :data:`RELEASED_MIN` (one
  unit: what each freed degree of freedom costs on average) over that fit's (the README's:
  2.4); else ``n - k``, saying why;
* with no penalty, ``k``, the fitted values other than network weights (so that a fit of
  the physics alone gives about 1). Without a penalty the effective degrees of freedom
  are the rank of the residual Jacobian, which hinges on a singular-value cutoff and
  reaches ``n`` where an over-parameterised network can interpolate (on the LV-UDE, 40-41
  of 42 data for all six starts of ``benchmarks/bench_fit.py --robustness``, which would
  make every over-fit look 4-8 times *above* the noise): ``n - k`` is what flags such a
  fit. ``k`` is also used when the count is not known or leaves no data over
  (``df >= n``).

:attr:`Diagnostics.below_noise_basis` says which count was used, and the summary prints it.
:attr:`Diagnostics.fit_to_noise` keeps ``chi^2 / (n - k)`` for every fit (the discrepancy
principle, ``l2="auto"``, judges its path by it). With two observables of 21 points each and
noise levels estimated from the data, ``F`` must be below about 0.3 for the warning; with
40 data and known noise levels, below 0.5; the fewer residual degrees of freedom ``n - df``
a penalised fit leaves, the further below 1 it must be to be significantly below it. A third
condition keeps noise-free data out: the residuals must look like noise, their own
third-difference noise level being at least :data:`ROUGHNESS` times their standard
deviation (:attr:`ObservableFit.roughness`, weighted by the shares of the chi-square).
Residuals of a model that fits smooth data closely are smooth (ratio near 0); white
residuals give about 1, and those of a network that follows the noise more (it takes the
slow part of the noise and leaves the fast part).

A reduced chi-square above :data:`MISFIT` is reported as a systematic misfit (the model
misses part of the dynamics; the standard errors, which assume it does not, are too small).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from dynlearn.core.parameters import ParameterSpace
from dynlearn.data.dataset import as_dataset
from dynlearn.data.noise import noise_level
from dynlearn.objective.binding import initial_states
from dynlearn.objective.objective import FitObjective

__all__ = [
    "BELOW_NOISE",
    "BELOW_NOISE_LEVEL",
    "RELEASED_MIN",
    "BOUND_RTOL",
    "CORRELATION_THRESHOLD",
    "MISFIT",
    "NETWORK_CORRELATION",
    "RANK_RTOL",
    "ROUGHNESS",
    "Combination",
    "Diagnostics",
    "FitWarning",
    "ObservableFit",
    "bound_flags",
    "count_fitted_values",
    "describe_counts",
    "diagnose",
    "fitted_value_counts",
    "noise_from_differences",
]

#: singular values of the column-scaled residual Jacobian at or below this fraction of the
#: largest count as zero (the data cannot determine that direction)
RANK_RTOL = 1e-8
#: an entry of a (max-normalised) null direction counts as involved above this size
INVOLVED = 1e-3
#: multiple correlation with the network weights above which a parameter is named as
#: absorbed by the network
NETWORK_CORRELATION = 0.95
#: pairwise correlations above this magnitude are listed in the summary
CORRELATION_THRESHOLD = 0.9
#: a network model with ``chi^2 / (n - d)`` below this fits below the noise level (``d``:
#: ``k`` or the effective degrees of freedom, see the module notes)
BELOW_NOISE = 0.5
#: a penalised fit's effective degrees of freedom count in the below-noise warning only if
#: the penalty raised the chi-square by at least this above the unpenalised fit's (each
#: degree of freedom a penalty frees costs one chi-square unit on average)
RELEASED_MIN = 1.0
#: a reduced chi-square above this is a systematic misfit (a loose threshold: the noise level
#: may be estimated from the data)
MISFIT = 10.0
#: one-sided significance level of the below-noise warning (see the module notes)
BELOW_NOISE_LEVEL = 0.01
#: ``m var(log sigma_hat^2)`` of the noise estimate from ``m`` third differences of white noise
NOISE_LOGVAR = 7.0
#: residuals whose own noise level (third differences) is below this fraction of their
#: standard deviation are smooth: no below-noise warning (see the module notes)
ROUGHNESS = 0.5
#: relative distance to a bound that counts as "at the bound"
BOUND_RTOL = 1e-6
#: fewest third differences (over all experiments) for a noise estimate from the data
MIN_NOISE_DIFFERENCES = 8


class FitWarning(UserWarning):
    """A fit finished but its outcome needs care (e.g. a network fitting the noise)."""


# --- counting what is fitted -------------------------------------------------------------------
def fitted_value_counts(space, n_noise: int = 0) -> dict[str, int]:
    """What a fit estimates, by kind.

    Parameters
    ----------
    space : ParameterSpace
        The fit's layout of ``x``.
    n_noise : int
        Noise levels the fit estimates (``loss="gaussian"``).

    Returns
    -------
    dict
        ``physical``, ``weights``, ``initial`` (initial states) and ``noise``; their sum is
        what the summary calls the fitted values.
    """
    kinds = list(space.kinds)
    return {"physical": kinds.count("param"), "weights": kinds.count("weight"),
            "initial": kinds.count("y0"), "noise": int(n_noise)}


def describe_counts(counts: dict[str, int]) -> str:
    """``"6 fitted values (4 physical parameters, 2 initial states)"``: the words used by the
    summary and by the command line's progress line."""
    words = (("physical", "physical parameter"), ("weights", "network weight"),
             ("initial", "initial state"), ("noise", "noise level"))
    parts = [f"{counts[k]} {w}{'s' if counts[k] != 1 else ''}" for k, w in words
             if counts.get(k)]
    total = sum(counts.values())
    return f"{total} fitted value{'s' if total != 1 else ''} ({', '.join(parts)})"


def count_fitted_values(model, data, y0="first", y0_init=None, loss="ls", sigma=None,
                        input_kind: str | None = None,
                        sigma_by: str | None = None, noise_params=None) -> dict[str, int]:
    """:func:`fitted_value_counts` of the fit ``dynlearn.fit(model, data, ...)`` would make
    with these settings, without fitting (the command line announces a fit with it).

    Parameters
    ----------
    model : HybridModel
    data : Dataset or DataFrame
    y0, y0_init, loss, sigma, input_kind, sigma_by, noise_params
        As in :func:`dynlearn.fit`.
    """
    dataset = as_dataset(data)
    strategy = initial_states(y0, model, y0_init)
    bound = strategy.bind(model, dataset, input_kind)
    space = ParameterSpace(model, strategy.parameters(model, dataset, bound),
                           [e.name for e in dataset])
    obj = FitObjective(model, bound, space, loss, sigma, sigma_by=sigma_by,
                       noise_params=noise_params)
    return fitted_value_counts(space, int(obj.estimated.sum()) if obj.estimates_noise else 0)


# --- bounds ------------------------------------------------------------------------------------
def bound_flags(space, x) -> list[str]:
    """Per entry of ``x``: ``"lower"`` or ``"upper"`` when it sits at that bound (within
    :data:`BOUND_RTOL`, see the module notes), else ``""``."""
    x = np.asarray(x, dtype=float)
    out = []
    for k in range(space.size):
        lo, hi = space.lower[k], space.upper[k]
        if np.isfinite(lo) and np.isfinite(hi):
            scale = hi - lo
        else:
            b = lo if np.isfinite(lo) else hi
            scale = max(abs(b), abs(space.x0[k]), abs(x[k]))
        tol = BOUND_RTOL * scale
        if np.isfinite(lo) and x[k] - lo <= tol:
            out.append("lower")
        elif np.isfinite(hi) and hi - x[k] <= tol:
            out.append("upper")
        else:
            out.append("")
    return out


# --- noise from the data -------------------------------------------------------------------------
def noise_from_differences(series) -> tuple[float, int]:
    """The noise level of one observable estimated from the data alone: the ``"trimmed"``
    statistic of third differences of :func:`dynlearn.data.noise.noise_level` (see the
    module notes there and here).

    Parameters
    ----------
    series : iterable of (t, values)
        One increasing time vector and its observed values per experiment.

    Returns
    -------
    sigma : float
        NaN when there are fewer than :data:`MIN_NOISE_DIFFERENCES` differences.
    n : int
        The number of third differences used.
    """
    return noise_level(series, order=3, statistic="trimmed", min_count=MIN_NOISE_DIFFERENCES)


# --- the outcome ---------------------------------------------------------------------------------
def _fmt_exponent(e: float) -> str:
    for den in (1, 2, 3, 4):
        num = e * den
        if abs(num - round(num)) < 0.02 * max(1.0, abs(num)):
            n = int(round(num))
            return str(n) if den == 1 else f"({n}/{den})"
    return f"{e:.3g}"


def _join(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass
class Combination:
    """A combination of parameters the data cannot determine (a null direction of the
    residual Jacobian, see the module notes).

    Attributes
    ----------
    names : list of str
        The parameters involved.
    coefficients : list of float
        ``kind="scaling"``: exponents ``e_k``: ``name_k * c**e_k`` fit alike for any ``c > 0``
        (to first order). ``kind="additive"``: steps ``name_k + coefficient_k * d`` fit alike.
    kind : {"scaling", "additive"}
    network : bool
        The network weights must change along with them (the network can reproduce the
        combination's effect); ``False``: the fit does not change at all.
    """

    names: list
    coefficients: list
    kind: str = "scaling"
    network: bool = False

    def describe(self) -> str:
        """One sentence naming the combination."""
        nm = _join(self.names)
        if len(self.names) == 1:
            if self.network:
                return (f"{nm} cannot be determined: the network can reproduce its effect "
                        "(the network is absorbing its term)")
            return f"{nm} cannot be determined: changing it does not change the fit"
        if self.kind == "scaling":
            terms = []
            for n, e in zip(self.names, self.coefficients):
                f = _fmt_exponent(abs(e))
                terms.append(f"{n}*c" if f == "1" and e > 0 else f"{n}/c" if f == "1"
                             else f"{n}*c^{f}" if e > 0 else f"{n}/c^{f}")
            alike = f"{', '.join(terms)} fit alike for any c > 0"
            how = "scaled"
        else:
            terms = [f"{n} {'+' if c >= 0 else '-'} {_fmt_exponent(abs(c))}*d"
                     .replace(" 1*d", " d") for n, c in zip(self.names, self.coefficients)]
            alike = f"{', '.join(terms)} fit alike for any small d"
            how = "changed"
        if self.network:
            return (f"{nm} cannot be determined beside the network: {alike}, the network "
                    "weights compensating (the network is absorbing part of their terms)")
        return f"{nm} can be {how} together without changing the fit: {alike}"

    def to_dict(self) -> dict:
        """A JSON-able dict (:meth:`Diagnostics.from_dict` reads it back)."""
        return asdict(self)


@dataclass
class ObservableFit:
    """Goodness of fit of one observable (on the loss's residual scale).

    Attributes
    ----------
    name : str
    n : int
        Observed values.
    rms : float
        Root-mean-square residual: the residual standard deviation.
    r2 : float
        ``1 - SS_res / SS_tot`` (NaN when the data are constant).
    sigma : float
        The noise level used by the chi-square (the median where it varies); NaN when none
        is known and none could be estimated.
    sigma_source : str
        ``"known"``, ``"data"`` (estimated from the data, see :func:`noise_from_differences`),
        ``"known+data"`` or ``""``.
    chi2 : float
        This observable's share of the chi-square (NaN without a noise level).
    noise_n : int
        The number of third differences the noise level was estimated from (0 when known).
    roughness : float
        The residuals' own noise level (:func:`noise_from_differences` of the residuals)
        over their standard deviation: about 1 for white residuals, near 0 for smooth ones,
        above 1 when a model follows the slow part of the noise. NaN with too few data.
    """

    name: str
    n: int
    rms: float
    r2: float
    sigma: float
    sigma_source: str
    chi2: float
    noise_n: int = 0
    roughness: float = math.nan

    def to_dict(self) -> dict:
        """A JSON-able dict (:meth:`Diagnostics.from_dict` reads it back)."""
        return asdict(self)


@dataclass
class Diagnostics:
    """What :func:`diagnose` found (``result.diagnostics``); see the module notes.

    Attributes
    ----------
    counts : dict
        :func:`fitted_value_counts`.
    n_data : int
    rank : int or None
        Numerical rank of the column-scaled residual Jacobian (``None``: no Jacobian).
    n_columns : int
        Its columns (the entries of ``x``).
    combinations : list of Combination
        What the data cannot determine, named.
    network_correlation : dict
        Physical parameter -> multiple correlation with the network weights, for those above
        :data:`NETWORK_CORRELATION` (network models only; initial states are not listed).
    at_bound : dict
        Parameter -> ``"lower"`` or ``"upper"``.
    observables : list of ObservableFit
    chi2, reduced_chi2 : float
        NaN when not available (no noise level; ``p >= n`` for the reduced one).
    dof : int
        ``n - p``.
    fit_to_noise : float
        ``chi2 / (n - k)`` (``k``: fitted values other than network weights); NaN when not
        available.
    fit_to_noise_z : float
        ``log(fit_to_noise)`` over its standard deviation (see the module notes).
    below_noise_ratio, below_noise_z : float
        The below-noise warning's statistic ``F = chi2 / below_noise_dof`` and ``log F`` in
        its standard deviations: :attr:`fit_to_noise` and :attr:`fit_to_noise_z` unless the
        network's effective degrees of freedom are counted (see the module notes).
    below_noise_dof : float
        The warning's denominator: ``n - df`` (``df`` = :attr:`effective_dof`) for a
        penalised fit whose effective degrees of freedom are known, else ``n - k``.
    effective_dof : float
        The fit's effective degrees of freedom (the trace of the hat matrix at the fit's L2
        strength: the physics' fitted values plus the network's share) when the warning
        counts them; NaN when it does not (no penalty, or not known).
    below_noise_basis : str
        Which denominator the warning used and why, in words (the summary prints it).
    uncertainty : str
        Why no standard errors could be computed at all ("" when they could).
    notes : dict
        Parameter -> why its standard error is n/a, or what to know about it.
    warnings : list of str
        What the summary prints under "warnings".
    noise_warning : str
        The warning that a network model fits well below the noise level (also in
        :attr:`warnings`, and issued as a :class:`FitWarning` by the fit); "" when it does
        not.
    """

    counts: dict
    n_data: int
    rank: int | None = None
    n_columns: int = 0
    combinations: list = field(default_factory=list)
    network_correlation: dict = field(default_factory=dict)
    at_bound: dict = field(default_factory=dict)
    observables: list = field(default_factory=list)
    chi2: float = math.nan
    dof: int = 0
    reduced_chi2: float = math.nan
    fit_to_noise: float = math.nan
    fit_to_noise_z: float = math.nan
    below_noise_ratio: float = math.nan
    below_noise_z: float = math.nan
    below_noise_dof: float = math.nan
    effective_dof: float = math.nan
    below_noise_basis: str = ""
    uncertainty: str = ""
    notes: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    noise_warning: str = ""

    # --- text -----------------------------------------------------------------------------
    def lines(self) -> list[str]:
        """Goodness of fit and identifiability as ``result.summary()`` prints them before
        the parameter table (indented by two spaces)."""
        out = []
        if self.observables:
            src = {o.sigma_source for o in self.observables} - {""}
            how = {"known": "known noise levels", "data": "noise levels estimated from the "
                   "data (third differences of neighbouring points)",
                   "known+data": "known noise levels, else estimated from the data"}
            if np.isfinite(self.chi2):
                red = (f"{self.reduced_chi2:.4g}" if np.isfinite(self.reduced_chi2) else
                       "n/a (more fitted values than data)")
                out.append(f"  chi-square = {self.chi2:.6g}, reduced chi-square = {red} "
                           f"(n - p = {self.dof})")
                out.append("    against " + " / ".join(how[s] for s in sorted(src)))
                if self.counts.get("weights") and np.isfinite(self.below_noise_ratio):
                    label = "n - df" if np.isfinite(self.effective_dof) else "n - k"
                    out.append(f"  network model: chi-square / ({label}) = "
                               f"{self.below_noise_ratio:.4g} with {self.below_noise_basis}; "
                               f"about 1 for an honest fit")
            else:
                out.append("  chi-square: n/a (no noise level known, and none could be "
                           "estimated from the data: too few points, or no scatter)")
            out.append(f"  {'observable':<14} {'n':>6} {'residual sd':>12} {'R^2':>9} "
                       f"{'noise sd':>10} source")
            for o in self.observables:
                r2 = f"{o.r2:.4f}" if np.isfinite(o.r2) else "n/a"
                sg = f"{o.sigma:.4g}" if np.isfinite(o.sigma) else "n/a"
                out.append(f"  {o.name:<14} {o.n:>6} {o.rms:>12.4g} {r2:>9} {sg:>10} "
                           f"{o.sigma_source or '':<10}".rstrip())
        if self.rank is not None:
            out.append(f"  identifiability: residual Jacobian rank {self.rank} of "
                       f"{self.n_columns} (column-scaled; singular values below "
                       f"{RANK_RTOL:g} of the largest count as zero)"
                       + ("; redundant network-weight directions are not listed"
                          if self.counts.get("weights") and self.rank < self.n_columns
                          else ""))
        for i, c in enumerate(self.combinations, 1):
            out.append(f"    [{i}] {c.describe()}")
        absorbed = {k: v for k, v in self.network_correlation.items()
                    if not any(k in c.names for c in self.combinations)}
        if absorbed:
            out.append(f"    {_join(absorbed)} {'is' if len(absorbed) == 1 else 'are'} strongly "
                       "correlated with the network weights ("
                       + ", ".join(f"R = {v:.3f}" for v in absorbed.values())
                       + "): the network is absorbing "
                       + ("its term" if len(absorbed) == 1 else "their terms"))
        return out

    def closing_lines(self) -> list[str]:
        """Why standard errors are n/a, and the warnings, as ``result.summary()`` prints
        them after the parameter table."""
        out = []
        if self.uncertainty:
            out.append(f"  standard errors n/a: {self.uncertainty}")
        elif self.notes:
            groups: dict[str, list[str]] = {}
            for name, why in self.notes.items():
                groups.setdefault(why, []).append(name)
            out += [f"  standard errors n/a for {', '.join(names)}: {why}"
                    for why, names in groups.items()]
        if self.warnings:
            out.append("  warnings:")
            out += [f"    - {w}" for w in self.warnings]
        return out

    def note(self, name: str) -> str:
        """A short flag for the parameter table: at a bound, not determined (``[i]``: the
        combination), absorbed by the network."""
        flags = []
        if name in self.at_bound:
            flags.append(f"at {self.at_bound[name]} bound")
        refs = [str(i) for i, c in enumerate(self.combinations, 1) if name in c.names]
        if refs:
            flags.append("not determined [" + ",".join(refs) + "]")
        elif name in self.network_correlation:
            flags.append(f"network R={self.network_correlation[name]:.3f}")
        return "; ".join(flags)

    # --- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-able dict (non-finite numbers are encoded by the writer)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Diagnostics | None:
        """The inverse of :meth:`to_dict` (``None`` for results saved without diagnostics)."""
        if not d:
            return None
        # Every entry is checked, so that a damaged or tampered file fails here, naming the
        # entry (a ValueError, which read_result reports as a damaged file), rather than
        # load and crash later in result.summary() or a report.
        _kind(d, dict, "diagnostics")
        d = dict(d)
        d["combinations"] = [
            Combination(names=_list(c.get("names"), str, f"combinations[{i}].names"),
                        coefficients=_list(c.get("coefficients"), float,
                                           f"combinations[{i}].coefficients"),
                        kind=_choice(c.get("kind", "scaling"), ("scaling", "additive"),
                                     f"combinations[{i}].kind"),
                        network=_kind(c.get("network", False), bool,
                                      f"combinations[{i}].network"))
            for i, c in enumerate(_list(d.get("combinations", []), dict, "combinations"))]
        for i, c in enumerate(d["combinations"]):
            if len(c.names) != len(c.coefficients):
                raise ValueError(f"diagnostics entry combinations[{i}]: {len(c.names)} names "
                                 f"but {len(c.coefficients)} coefficients")
        fits = []
        for i, o in enumerate(_list(d.get("observables", []), dict, "observables")):
            w = f"observables[{i}]"
            fits.append(ObservableFit(
                name=_kind(o.get("name"), str, f"{w}.name"), n=_int(o.get("n"), f"{w}.n"),
                rms=_float(o.get("rms"), f"{w}.rms"), r2=_float(o.get("r2"), f"{w}.r2"),
                sigma=_float(o.get("sigma"), f"{w}.sigma"),
                sigma_source=_kind(o.get("sigma_source", ""), str, f"{w}.sigma_source"),
                chi2=_float(o.get("chi2"), f"{w}.chi2"),
                noise_n=_int(o.get("noise_n", 0), f"{w}.noise_n"),
                roughness=_float(o.get("roughness", math.nan), f"{w}.roughness")))
        d["observables"] = fits
        for k in ("chi2", "reduced_chi2", "fit_to_noise", "fit_to_noise_z",
                  "below_noise_ratio", "below_noise_z", "below_noise_dof", "effective_dof"):
            d[k] = _float(d.get(k, math.nan), k)
        for k in ("n_data", "n_columns", "dof"):
            d[k] = _int(d.get(k, 0), k)
        if d.get("rank") is not None:
            d["rank"] = _int(d["rank"], "rank")
        d["counts"] = {k: _int(v, f"counts.{k}") for k, v in
                       _kind(d.get("counts", {}), dict, "counts").items()}
        d["network_correlation"] = {
            k: _float(v, f"network_correlation.{k}")
            for k, v in _kind(d.get("network_correlation", {}), dict,
                              "network_correlation").items()}
        d["at_bound"] = {k: _choice(v, ("lower", "upper"), f"at_bound.{k}") for k, v in
                         _kind(d.get("at_bound", {}), dict, "at_bound").items()}
        d["notes"] = {k: _kind(v, str, f"notes.{k}") for k, v in
                      _kind(d.get("notes", {}), dict, "notes").items()}
        d["warnings"] = _list(d.get("warnings", []), str, "warnings")
        for k in ("uncertainty", "noise_warning", "below_noise_basis"):
            d[k] = _kind(d.get(k, ""), str, k)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def _num(v):
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def _kind(v, kind, where: str):
    """``v`` if it is a ``kind`` (never a bool for a number), else a ValueError naming the
    diagnostics entry."""
    if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
        name = getattr(kind, "__name__", "number")
        raise ValueError(f"diagnostics entry {where}: expected {name}, got {v!r}"[:200])
    return v


def _float(v, where: str) -> float:
    v = _num(v)
    v = float(_kind(v, (int, float), where)) if not isinstance(v, float) else v
    # the one NaN object, so that a loaded Diagnostics compares equal to the saved one
    # (dataclass equality compares fields as tuples: identical objects first)
    return math.nan if math.isnan(v) else v


def _int(v, where: str) -> int:
    return _kind(v, int, where)


def _choice(v, choices, where: str) -> str:
    if v not in choices:
        raise ValueError(f"diagnostics entry {where}: expected one of {list(choices)}, got "
                         f"{v!r}"[:200])
    return v


def _list(v, kind, where: str) -> list:
    _kind(v, list, where)
    if kind is float:
        return [_float(x, f"{where}[{i}]") for i, x in enumerate(v)]
    return [_kind(x, kind, f"{where}[{i}]") for i, x in enumerate(v)]


# --- the analysis ------------------------------------------------------------------------------
def _small_factor(A: np.ndarray) -> np.ndarray:
    """A matrix with the same ``A^T A`` and at most ``p`` rows."""
    A = np.asarray(A, dtype=float)
    if A.shape[0] > A.shape[1]:
        return np.linalg.qr(A, mode="r")
    return A


def _null_basis(M: np.ndarray, cutoff: float) -> np.ndarray:
    """Rows: an orthonormal basis of the directions ``u`` with ``|M u|`` at or below the
    singular-value ``cutoff`` (shape ``(k, M.shape[1])``)."""
    m = M.shape[1]
    if m == 0:
        return np.zeros((0, 0))
    _, s, Vt = np.linalg.svd(M, full_matrices=True)
    r = int(np.sum(s > cutoff))
    return Vt[r:]


def _sparse_rows(N: np.ndarray) -> np.ndarray:
    """A basis of the row space of ``N`` with few non-zeros per row: pivoted QR picks one
    leading entry per row, the rows are then combined to be 1 there and 0 at the others."""
    if N.shape[0] <= 1:
        return N
    from scipy.linalg import qr
    _, _, piv = qr(N, pivoting=True, mode="economic")
    lead = piv[:N.shape[0]]
    return np.linalg.solve(N[:, lead], N)


def _combination(u, norms, idx, space, x, network: bool) -> Combination | None:
    """Name the null direction ``u`` (in the column-scaled coordinates of the columns
    ``idx``, whose norms are ``norms``)."""
    u = np.asarray(u, dtype=float)
    big = np.max(np.abs(u))
    if big == 0:
        return None
    inv = np.abs(u) > INVOLVED * big           # judged where every column has unit length
    ks = [idx[j] for j in np.flatnonzero(inv)]
    v = u[inv] / norms[inv]                    # the same direction as steps in x
    vals = space.physical(x)[ks]
    is_log = space.is_log[ks]
    names = [space.names[k] for k in ks]
    rel_ok = np.all(is_log | (vals != 0))
    if rel_ok:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(is_log, v, v / np.where(vals != 0, vals, 1.0))
        expo = rel / np.min(np.abs(rel))
        integral = np.all(np.abs(expo - np.round(expo)) < 0.02 * np.maximum(1, np.abs(expo)))
        if np.any(is_log) or integral:
            if expo[_leading(expo)] < 0:
                expo = -expo
            return Combination(names, [float(e) for e in expo], "scaling", network)
    dphys = space.dphysical(x)[ks] * v
    coef = dphys / dphys[_leading(dphys)]
    return Combination(names, [float(c) for c in coef], "additive", network)


def _leading(v: np.ndarray) -> int:
    """The first entry of largest magnitude, ties (to 1e-6) going to the earlier parameter:
    a null vector's sign is arbitrary (it differs between BLAS builds), so the named
    combination is made positive in that entry."""
    a = np.abs(v)
    return int(np.flatnonzero(a >= (1 - 1e-6) * a.max())[0])


def _identifiability(space, x, A):
    """``(rank, combinations, network correlations)`` from a Jacobian factor ``A``."""
    A = _small_factor(A)
    norms = np.linalg.norm(A, axis=0)
    safe = np.where(norms > 0, norms, 1.0)
    As = A / safe
    s = np.linalg.svd(As, compute_uv=False) if As.size else np.zeros(0)
    smax = float(s[0]) if s.size and s[0] > 0 else 1.0
    cut = RANK_RTOL * smax
    rank = int(np.sum(s > cut))
    phys = np.flatnonzero(space.kinds != "weight")
    wts = np.flatnonzero(space.kinds == "weight")
    AP = As[:, phys]
    corr = {}
    if wts.size:
        U, sw, _ = np.linalg.svd(As[:, wts], full_matrices=False)
        Uw = U[:, sw > cut]
        B = AP - Uw @ (Uw.T @ AP)
        for j, k in enumerate(phys):
            # an initial state is no term of the equations for the network to absorb; a
            # network can always bend the first stretch of a trajectory, so initial states
            # correlate with the weights in every such fit (their indeterminacy, if any,
            # shows as a combination below)
            if norms[k] > 0 and space.kinds[k] == "param":
                r2 = 1.0 - float(B[:, j] @ B[:, j])
                R = math.sqrt(min(max(r2, 0.0), 1.0))
                if R > NETWORK_CORRELATION:
                    corr[space.names[k]] = R
    else:
        B = AP
    combos = []
    N = _null_basis(B, cut)
    if N.shape[0]:
        for u in _sparse_rows(N):
            network = bool(wts.size) and float(np.linalg.norm(AP @ u)) > 10 * cut * max(
                1.0, float(np.linalg.norm(u)))
            c = _combination(u, safe[phys], list(phys), space, x, network)
            if c is not None:
                combos.append(c)
    return rank, combos, corr


def _goodness(obj, r_data):
    """Per observable :class:`ObservableFit` and the totals (chi2, points with a sigma)."""
    loss = obj.loss
    no = len(obj.obs)
    raw = [[] for _ in range(no)]
    dat = [[] for _ in range(no)]
    sig = [[] for _ in range(no)]
    series = [[] for _ in range(no)]
    rseries = [[] for _ in range(no)]
    off = 0
    for b, sc, S in zip(obj.bound, obj.scales, obj.known):
        mask = b.mask
        m = int(mask.sum())
        ri = np.asarray(r_data[off:off + m], dtype=float)
        off += m
        gD = loss.g(np.where(mask, b.Y, 1.0), mask)
        _, cols = np.nonzero(mask)
        scale = sc[mask]
        with np.errstate(divide="ignore", invalid="ignore"):
            res = np.where(scale != 0, ri / np.where(scale != 0, scale, 1.0), np.nan)
        for k in range(no):
            sel = cols == k
            raw[k].append(res[sel])
            dat[k].append(gD[mask][sel])
            sig[k].append(S[mask][sel])
            series[k].append((b.t[mask[:, k]], gD[mask[:, k], k]))
            rseries[k].append((b.t[mask[:, k]], res[sel]))
    out = []
    chi2_total, complete = 0.0, True
    for k, name in enumerate(obj.obs):
        e = np.concatenate(raw[k]) if raw[k] else np.zeros(0)
        d = np.concatenate(dat[k]) if dat[k] else np.zeros(0)
        s = np.concatenate(sig[k]) if sig[k] else np.zeros(0)
        ok = np.isfinite(e)
        e, d, s = e[ok], d[ok], s[ok]
        if e.size == 0:
            continue
        ss = float(e @ e)
        tot = float(np.sum((d - d.mean()) ** 2))
        r2 = 1.0 - ss / tot if tot > 0 else math.nan
        known = np.isfinite(s)
        source, sd, m = "", math.nan, 0
        if known.all():
            source = "known"
        else:
            est, m = noise_from_differences(series[k])
            if np.isfinite(est) and est > 0:
                s = np.where(known, s, est)
                source = "known+data" if known.any() else "data"
            elif known.any():
                complete = False
        if source:
            chi2 = float(np.sum((e / s) ** 2))
            sd = float(np.median(s))
            chi2_total += chi2
        else:
            chi2, complete = math.nan, False
        rms = math.sqrt(ss / e.size)
        rough = noise_from_differences(rseries[k])[0] / rms if rms > 0 else math.nan
        out.append(ObservableFit(name, int(e.size), rms, r2, sd, source, chi2,
                                 m if source in ("data", "known+data") else 0, rough))
    return out, (chi2_total if complete and out else math.nan)


def _fit_to_noise(diag: Diagnostics, left: float) -> tuple[float, float]:
    """``F = chi^2 / left`` and ``log F`` in its standard deviations, ``var(log F) ~ 2 /
    left`` plus the noise estimates' share (see the module notes); NaN when not defined."""
    if not (np.isfinite(diag.chi2) and diag.chi2 > 0 and left > 0):
        return math.nan, math.nan
    f = diag.chi2 / left
    var = 2.0 / left + sum((o.chi2 / diag.chi2) ** 2 * NOISE_LOGVAR / o.noise_n
                           for o in diag.observables if o.noise_n)
    return f, math.log(f) / math.sqrt(var)


def _below_noise_basis(diag: Diagnostics, obj, k: int, effective_dof,
                       released: float = math.inf) -> None:
    """Set the below-noise warning's denominator (``n - df`` or ``n - k``) and say why;
    ``released``: how much the penalty raised the chi-square above the unpenalised fit's
    (``inf`` when not known)."""
    n = int(obj.n_data)
    diag.below_noise_dof = float(n - k)
    if not diag.counts["weights"]:
        diag.below_noise_basis = f"n - k = {n - k} (the fitted values)"
        return
    df = math.nan if effective_dof is None else float(effective_dof)
    if obj.l2 <= 0:
        # with no penalty an over-parameterised network's effective degrees of freedom are
        # the rank of its Jacobian, which hinges on a singular-value cutoff and reaches n
        # where it can interpolate: n - k is the count that flags such a fit
        diag.below_noise_basis = (f"n - k = {n - k} (k: fitted values other than "
                                  "network weights; no L2 penalty, so the network's effective "
                                  "degrees of freedom are not counted)")
    elif not np.isfinite(df):
        diag.below_noise_basis = (f"n - k = {n - k} (k: fitted values other than "
                                  "network weights; the network's effective degrees of "
                                  f"freedom at l2 = {obj.l2:.3g} are not known)")
    elif n - df <= 0:
        diag.below_noise_basis = (f"n - k = {n - k} (k: fitted values other than "
                                  f"network weights; the effective degrees of freedom at "
                                  f"l2 = {obj.l2:.3g}, df = {df:.1f}, leave none of the {n} "
                                  "data over)")
    elif released < RELEASED_MIN:
        # the count is a property of the Jacobian at the strength, not of how far training
        # moved: a penalty too weak to change the fit (an early-stopped one, say) lowers it
        # all the same, and would hide a fit through the noise
        diag.below_noise_basis = (f"n - k = {n - k} (k: fitted values other than "
                                  f"network weights; the penalty l2 = {obj.l2:.3g} raised the "
                                  f"chi-square by only {released:.2g} above the unpenalised "
                                  "fit's, so it freed none of the degrees of freedom it "
                                  f"counts, df = {df:.1f})")
    else:
        diag.effective_dof = df
        diag.below_noise_dof = n - df
        diag.below_noise_basis = (f"n - df = {n - df:.1f} (df = {df:.1f}: the physics' "
                                  "fitted values and the network's effective degrees of "
                                  f"freedom at l2 = {obj.l2:.3g})")


def diagnose(obj, x, r, A, cov_x, params, effective_dof: float | None = None,
             unpenalised_cost: float | None = None) -> Diagnostics:
    """The diagnostics of a fit at its optimum ``x`` (see the module notes).

    Parameters
    ----------
    obj : FitObjective
        The fit's objective (its data, loss, noise levels and parameter layout).
    x : ndarray
        The optimum in the optimizer's coordinates.
    r, A : ndarray or None
        The residuals and a Jacobian factor (``A^T A = J^T J``) at ``x``, as left by the
        optimizer; ``None`` when they could not be computed (the solver failed at ``x``).
    cov_x : ndarray or None
        The covariance of ``x`` (:func:`~dynlearn.results.covariance.parameter_covariance`).
    params : pandas.DataFrame
        The parameter table (:func:`~dynlearn.results.covariance.params_table`).
    effective_dof : float, optional
        The fit's effective degrees of freedom at its L2 strength ``obj.l2`` (the trace of
        the hat matrix: the physics' fitted values plus the network's share), as the fitting
        layer measured it (``result.config["effective_dof"]``). For a network model with
        ``obj.l2 > 0`` the below-noise warning then divides by ``n - df`` instead of
        ``n - k`` (see the module notes); ignored without a penalty.
    unpenalised_cost : float, optional
        The data cost of the unpenalised fit that the rule choosing the strength started
        from (``result.config["unpenalised_cost"]``). When given, the effective degrees of
        freedom count only if the penalty raised the chi-square by at least
        :data:`RELEASED_MIN` above it (scaled by the two data costs).

    Returns
    -------
    Diagnostics
    """
    space = obj.space
    n_noise = int(obj.estimated.sum()) if obj.estimates_noise else 0
    counts = fitted_value_counts(space, n_noise)
    diag = Diagnostics(counts=counts, n_data=int(obj.n_data), n_columns=int(space.size),
                       dof=int(obj.n_data - space.size))
    flags = bound_flags(space, x)
    diag.at_bound = {space.names[k]: f for k, f in enumerate(flags)
                     if f and space.kinds[k] != "weight"}
    if A is not None:
        diag.rank, diag.combinations, diag.network_correlation = _identifiability(space, x, A)
    if r is not None:
        diag.observables, diag.chi2 = _goodness(obj, np.asarray(r)[:obj.n_data])
        if np.isfinite(diag.chi2) and diag.dof > 0:
            diag.reduced_chi2 = diag.chi2 / diag.dof
        k = space.size - counts["weights"]
        diag.fit_to_noise, diag.fit_to_noise_z = _fit_to_noise(diag, obj.n_data - k)
        released = math.inf
        if unpenalised_cost is not None and np.isfinite(diag.chi2):
            r_data = np.asarray(r, dtype=float)[:obj.n_data]
            cost = float(r_data @ r_data)
            if cost > 0:
                released = diag.chi2 * (1.0 - float(unpenalised_cost) / cost)
        _below_noise_basis(diag, obj, k, effective_dof, released)
        diag.below_noise_ratio, diag.below_noise_z = _fit_to_noise(diag, diag.below_noise_dof)
    # why standard errors are n/a
    if A is None:
        diag.uncertainty = ("the residual Jacobian could not be computed at the optimum (the "
                            "solver failed there)")
    elif cov_x is None:
        diag.uncertainty = (f"no noise level is known and no degrees of freedom are left to "
                            f"estimate one ({obj.n_data} data, {space.size} fitted values); "
                            "pass sigma= (or <observable>_sigma data columns)")
    for name, row in params.iterrows():
        if row.get("fixed", False) or np.isfinite(row.get("stderr", np.nan)):
            continue
        if diag.uncertainty:
            continue
        refs = [i for i, c in enumerate(diag.combinations, 1) if name in c.names]
        if refs:
            diag.notes[name] = ("not determined by the data (identifiability "
                                + ", ".join(f"[{i}]" for i in refs) + ")")
        elif name in diag.network_correlation:
            diag.notes[name] = ("not determined by the data: the network weights can "
                                "reproduce its effect")
        else:
            diag.notes[name] = ("its direction is singular to working precision in the "
                                "unscaled Jacobian (parameters of very different scales)")
    # warnings
    penalty = ("an L2 penalty (l2=)" if not obj.l2 else
               f"a stronger L2 penalty (l2 > {obj.l2:g})")
    own = [n for n in space.names if any(n in c.names for c in diag.combinations
                                         if not c.network)]
    if own:
        diag.warnings.append(f"the data cannot determine {_join(own)} (see identifiability): "
                             f"fix {'it' if len(own) == 1 else 'some of them'} to known "
                             "values, or add data that separates them")
    netc = [n for n in space.names if n not in own and any(
        n in c.names for c in diag.combinations if c.network)]
    if netc:
        diag.warnings.append(f"the network can reproduce the term of {_join(netc)}, so the "
                             f"data cannot determine {'it' if len(netc) == 1 else 'them'} "
                             f"(see identifiability): fix {'it' if len(netc) == 1 else 'them'} "
                             f"if known, or give the network fewer inputs or {penalty}")
    absorbed = [k for k in diag.network_correlation
                if not any(k in c.names for c in diag.combinations)]
    if absorbed:
        diag.warnings.append(f"the network is absorbing the term of {_join(absorbed)}: fix "
                             f"{'it' if len(absorbed) == 1 else 'them'} if known, or give the "
                             f"network fewer inputs or {penalty}")
    if diag.at_bound:
        diag.warnings.append(
            "at a bound: " + ", ".join(f"{k} ({v})" for k, v in diag.at_bound.items())
            + "; its interval is clipped to the bound and only approximate: widen the bound "
              "if it is not a physical limit")
    if np.isfinite(diag.reduced_chi2) and diag.reduced_chi2 > MISFIT:
        worst = max(diag.observables, key=lambda o: o.chi2 if np.isfinite(o.chi2) else 0)
        diag.warnings.append(
            f"the model misses part of the dynamics: reduced chi-square = "
            f"{diag.reduced_chi2:.3g} (residual sd {worst.rms:.3g} against a noise level of "
            f"{worst.sigma:.3g} for {worst.name}); the standard errors assume the model is "
            "right and are too small")
    from scipy import special
    rough = [(o.chi2 / diag.chi2, o.roughness) for o in diag.observables
             if np.isfinite(o.roughness)] if np.isfinite(diag.chi2) and diag.chi2 > 0 else []
    noisy = bool(rough) and math.sqrt(sum(w * q * q for w, q in rough)
                                      / sum(w for w, _ in rough)) >= ROUGHNESS
    if (counts["weights"] and np.isfinite(diag.below_noise_ratio)
            and diag.below_noise_ratio < BELOW_NOISE
            and diag.below_noise_z < special.ndtri(BELOW_NOISE_LEVEL) and noisy):
        srcs = {o.sigma_source for o in diag.observables}
        label = "n - df" if np.isfinite(diag.effective_dof) else "n - k"
        how = ("the known noise levels" if srcs == {"known"} else
               "noise levels estimated from the data (" + ", ".join(
                   f"{o.name}: {o.sigma:.3g}" for o in diag.observables) + ")")
        diag.noise_warning = (
            f"the network model fits well below the noise level: chi-square / ({label}) = "
            f"{diag.below_noise_ratio:.3g} with {diag.below_noise_basis}, against {how}, "
            "where an honest fit gives about 1. The "
            "network is probably fitting the noise: use the L2 penalty that brings the fit to "
            "the noise level (l2=\"auto\" in dl.fit, l2 = \"auto\" in a model file's [fit]), "
            f"{penalty}, a smaller network, or fewer iterations"
            + ("" if srcs == {"known"} else "; pass sigma= if the noise level is known "
               "(the estimate from the data is too high when the data are sampled coarsely)"))
        diag.warnings.append(diag.noise_warning)
    return diag
