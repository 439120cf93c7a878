"""Equations recovered from learned terms: the :class:`Recovery` result and :func:`recover`.

:func:`recover` reads the networks of a fitted hybrid model at samples along and around its
trajectories (:mod:`~dynlearn.discovery.sampling`), regresses them onto a library of
candidate terms (:mod:`~dynlearn.discovery.libraries`, :mod:`~dynlearn.discovery.regression`)
and, by default, chooses the terms through the ODE: the structures along the regression's
sparsity path are refitted to the data and the best by an information criterion is kept
(:mod:`~dynlearn.discovery.selection`; the older pruning of the regression's own choice is
:mod:`~dynlearn.discovery.refit`). :func:`sparse_regression` runs the same
regression on given samples and targets, and :func:`regress` is the step the three
front ends share (:func:`recover`, :func:`sparse_regression` and
:func:`~dynlearn.discovery.sindy_baseline`): regression plus diagnostics, as a
:class:`Recovery`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sympy as sp

from dynlearn.core.model import HybridModel
from dynlearn.core.neural import NetworkOutput
from dynlearn.core.parameters import Parameter
from dynlearn.discovery.diagnostics import DiscoveryWarning, condition_number, score_table
from dynlearn.discovery.libraries import (
    Library,
    as_library,
    check_variables,
    evaluate_terms,
    library_terms,
)
from dynlearn.discovery.refit import refit_recovery
from dynlearn.discovery.regression import STLSQ, as_optimizer
from dynlearn.discovery.sampling import (
    REGIONS,
    network_outputs,
    sample_states,
    simulate_trajectories,
)
from dynlearn.discovery.selection import CRITERIA, select_structure
from dynlearn.errors import DataError, DiscoveryError, ModelError, OptionError

__all__ = ["Recovery", "recover", "sparse_regression", "regress", "term_tag"]


# =====================================================================================
# Names and formatting
# =====================================================================================
def term_tag(term: sp.Expr) -> str:
    """A short identifier fragment naming a library term, for coefficient names.

    Monomials of plain symbols list the symbols in name order with their powers, run
    together when every name is one letter (``x*y -> 'xy'``, ``x**2*y -> 'x2y'``),
    otherwise joined by ``_`` with ``p`` before a power (``a1*a2**2 -> 'a1_a2p2'``). Other
    terms spell their text with the operators replaced (``sin(2*x) -> 'sin_2x'``,
    ``exp(-x) -> 'exp_mx'``).

    Parameters
    ----------
    term : sympy.Expr

    Returns
    -------
    str
        Letters, digits and ``_`` only; ``'1'`` for the constant term.
    """
    if term == 1:
        return "1"
    powers = term.as_powers_dict()
    if all(isinstance(b, sp.Symbol) and isinstance(e, sp.Integer) and e > 0
           for b, e in powers.items()) and sp.Mul(*(b**e for b, e in powers.items())) == term:
        items = sorted(powers.items(), key=lambda be: be[0].name)
        short = all(len(b.name) == 1 for b, _ in items)
        parts = [b.name + ("" if e == 1 else (str(e) if short else f"p{e}")) for b, e in items]
        return ("" if short else "_").join(parts)
    text = str(term)
    for a, b in (("**", "p"), ("*", ""), ("/", "_over_"), ("-", "m"), ("+", "_plus_"),
                 (".", "d"), (" ", ""), ("(", "_"), (")", ""), (",", "_")):
        text = text.replace(a, b)
    text = re.sub(r"\W", "", text)
    return re.sub(r"_+", "_", text).strip("_") or "term"


def _output_tag(name: str) -> str:
    """'nn[0]' -> 'nn0', 'dx/dt' -> 'dx'."""
    name = re.sub(r"^(d\w+)/d\w+$", r"\1", name)
    return re.sub(r"_+", "_", re.sub(r"\W", "", name.replace("/", "_")))


def _format_number(c: float, precision: int) -> str:
    return f"{c:.{precision}g}"


def _format_sum(terms, coefs, precision: int) -> str:
    parts = []
    for term, c in zip(terms, coefs):
        if c == 0:
            continue
        mag = _format_number(abs(c), precision)
        body = mag if term == 1 else f"{mag}*{term}" if not isinstance(term, sp.Add) \
            else f"{mag}*({term})"
        if not parts:
            parts.append(("-" if c < 0 else "") + body)
        else:
            parts.append(("- " if c < 0 else "+ ") + body)
    return " ".join(parts) if parts else "0"


# =====================================================================================
# The result
# =====================================================================================
@dataclass
class Recovery:
    """Equations recovered from learned terms (or from data, for :func:`sindy_baseline`).

    Attributes
    ----------
    outputs : list of str
        The regressed quantities: network outputs (``"nn[0]"``) or derivatives (``"dx/dt"``).
    terms : list of sympy.Expr
        The candidate terms, in library order.
    coef : ndarray, shape (n_terms, n_outputs)
        Coefficients; zero for dropped terms.
    thresholds : ndarray, shape (n_outputs,)
        The threshold used for each output (chosen, when automatic).
    score : pandas.DataFrame
        Fit quality per output: ``r2`` (coefficient of determination on every sample),
        ``rmse``, ``nrmse`` (RMSE over the RMS of the target), ``r2_trajectory`` (on the
        trajectory samples only), ``n_terms``, ``threshold`` and ``stable`` (whether the
        trajectory samples alone select the same terms; always true without region
        samples).
    path : pandas.DataFrame
        The threshold path: per output and threshold, the number of kept terms, the scaled
        mean squared residual, the criterion and which was selected.
    samples : pandas.DataFrame
        Where the terms were evaluated: time, variables, the targets and ``source``
        (``"trajectory"`` or ``"region"``).
    condition_number : float
        Of the column-scaled library at the samples; above ~1e6 the columns are nearly
        collinear and the choice between them is arbitrary.
    model : HybridModel or None
        The fitted hybrid model the terms came from.
    data : Dataset or None
        The data of the fit the terms came from (the default for :meth:`refit`).
    stderr : ndarray or None, shape (n_terms, n_outputs)
        Standard errors of the coefficients, after :meth:`refit` (NaN for dropped terms).
    fit : FitResult or None
        The final refit, after :meth:`refit`.
    dropped : list of dict
        Terms removed by :meth:`refit`: output, term, value, stderr (before removal) and
        reason (``"not significant"``, ``"negligible"``, ``"bic"`` or ``"aic"``).
    regression : Recovery or None
        After :meth:`select` (which :func:`recover` runs by default) or :meth:`refit`, the
        sparse regression of the network before the refit: what the network alone says.
    candidates : pandas.DataFrame or None
        After :meth:`select`: every candidate structure refitted to the data, best first:
        ``terms`` (per output, the kept terms), ``n_coefficients``, ``loss`` (of the fit to
        the data), ``criterion`` (its AICc or BIC, named in ``candidates.attrs
        ["criterion"]``), ``delta`` (criterion minus the lowest), ``weight`` (the Akaike
        or Schwarz weight ``exp(-delta/2)``, normalised), ``chosen``, ``source`` (where
        the candidate came from: ``"path"``, ``"path of fit i"``, ``"swap"``,
        ``"backward"``, ``"exchange"``) and ``status`` (the refit's).
    inclusion : pandas.DataFrame or None
        After :meth:`select`: one row per (output, term) that some candidate or network fit
        holds: ``chosen``, ``weight`` (the summed weights of the candidates holding it: how
        strongly the data support the term), ``refits`` (the fraction of refitted
        candidates holding it) and ``members`` (the fraction of the network fits whose
        regression keeps it; one fit unless :func:`recover` got several).
    """

    outputs: list
    terms: list
    coef: np.ndarray
    thresholds: np.ndarray
    score: object
    path: object
    samples: object
    condition_number: float
    model: HybridModel | None = None
    output_symbols: list = field(default_factory=list)
    states: list = field(default_factory=list)   # for derivative targets (SINDy)
    optimizer: STLSQ | None = None
    library: Library | None = None
    kind: str = "network"                         # "network" or "derivative"
    data: object = None
    fit_settings: dict = field(default_factory=dict)
    stderr: np.ndarray | None = None
    fit: object = None
    dropped: list = field(default_factory=list)
    regression: Recovery | None = field(default=None, repr=False)
    hybrid_loss: float | None = field(default=None, repr=False)
    # the initial states of the trajectories the network was read along (recover's y0)
    trajectory_y0: object = field(default=None, repr=False)
    # relative size of each term on the samples: rms(theta_i) / rms(target_j), (k, q)
    scale: np.ndarray | None = field(default=None, repr=False)
    # (library at the samples, targets, trajectory-sample mask), to rescore refits
    arrays: tuple | None = field(default=None, repr=False)
    candidates: pd.DataFrame | None = field(default=None, repr=False)
    inclusion: pd.DataFrame | None = field(default=None, repr=False)

    # --- views ---------------------------------------------------------------------------
    @property
    def expressions(self) -> dict[str, sp.Expr]:
        """``{output name: sympy expression}`` in the model's symbols, float coefficients."""
        out = {}
        for j, name in enumerate(self.outputs):
            out[name] = sp.Add(*(sp.Float(float(c)) * t if t != 1 else sp.Float(float(c))
                                 for t, c in zip(self.terms, self.coef[:, j]) if c != 0))
        return out

    @property
    def coefficients(self) -> pd.DataFrame:
        """Coefficients as a DataFrame: one row per term (named by ``str(term)``), one column
        per output; zero where a term was dropped."""
        return pd.DataFrame(self.coef, index=[str(t) for t in self.terms],
                            columns=list(self.outputs))

    def support(self) -> dict[str, list[str]]:
        """The kept terms per output, as strings."""
        return {name: [str(t) for t, c in zip(self.terms, self.coef[:, j]) if c != 0]
                for j, name in enumerate(self.outputs)}

    def equations(self, precision: int = 3, uncertainty: bool = False) -> list[str]:
        """Readable equations, e.g. ``['nn[0] = -0.901*x*y', 'nn[1] = 0.802*x*y']``.

        Parameters
        ----------
        precision : int
            Significant digits of the coefficients.
        uncertainty : bool
            After :meth:`refit`, write each coefficient with its standard error:
            ``nn[0] = (-0.9 ± 0.0018)*x*y``.
        """
        if uncertainty and self.stderr is None:
            raise OptionError("no standard errors yet: call rec.refit(...) first")
        out = []
        for j, name in enumerate(self.outputs):
            if not uncertainty:
                out.append(f"{name} = {_format_sum(self.terms, self.coef[:, j], precision)}")
                continue
            parts = [f"({_format_number(c, precision)} ± {_format_number(se, 2)})"
                     + ("" if t == 1 else f"*{t}")
                     for t, c, se in zip(self.terms, self.coef[:, j], self.stderr[:, j]) if c != 0]
            out.append(f"{name} = " + (" + ".join(parts) if parts else "0"))
        return out

    def print(self, precision: int = 3) -> None:
        """Print the equations, one per line (PySINDy's ``model.print()``)."""
        for line in self.equations(precision):
            print(line)

    def __repr__(self) -> str:
        eqs = "; ".join(self.equations())
        r2 = ", ".join(f"{o}: {v:.4g}" for o, v in zip(self.outputs, self.score["r2"]))
        return f"Recovery({eqs}; R^2 {r2})"

    def predict(self, samples) -> np.ndarray:
        """Evaluate the recovered expressions at new samples.

        Parameters
        ----------
        samples : DataFrame or mapping name -> array
            Columns named like the symbols the terms use.

        Returns
        -------
        ndarray, shape (m, n_outputs)
        """
        syms = sorted({s for t in self.terms for s in t.free_symbols}, key=lambda s: s.name)
        cols = {str(k): np.asarray(v, float) for k, v in dict(samples).items()}
        missing = [s.name for s in syms if s.name not in cols]
        if missing:
            raise DataError(f"samples lack column(s) {missing} used by the recovered terms")
        m = len(next(iter(cols.values()))) if cols else 1
        Theta = evaluate_terms(self.terms, [syms], [np.array([cols[s.name] for s in syms])], m)
        return Theta @ self.coef

    # --- models -------------------------------------------------------------------------
    @property
    def refitted(self) -> bool:
        """Whether these coefficients were refitted to the data (:meth:`select`, which
        :func:`recover` runs by default, or :meth:`refit`). If not, they are the
        regression's reading of the network and the physical parameters are the hybrid
        fit's."""
        return self.fitted_model is not None

    @property
    def fitted_model(self) -> HybridModel | None:
        """The model of the refit at its fitted values (``fit.model``: the known physics
        plus these terms, physical parameters re-estimated with the coefficients), or None
        without a refit."""
        model = getattr(self.fit, "model", None)
        return model if isinstance(model, HybridModel) else None

    @property
    def y0(self) -> dict | None:
        """Initial states of the recovered model, ``{experiment: array}``: those of the
        refit (estimated again with the coefficients when the original fit estimated
        them), else those the network was read along (the hybrid fit's); None when
        unknown."""
        fitted = getattr(self.fit, "y0", None)
        if self.refitted and isinstance(fitted, Mapping):
            return {k: np.asarray(v, float) for k, v in fitted.items()}
        if isinstance(self.trajectory_y0, Mapping):
            return {k: np.asarray(v, float) for k, v in self.trajectory_y0.items()}
        return None

    def parameter_names(self, prefix: str = "c") -> dict[tuple[str, str], str]:
        """The parameter name of every kept coefficient, ``{(output, term): name}``, e.g.
        ``('nn[0]', 'x*y') -> 'c_nn0_xy'``."""
        taken = set()
        if self.model is not None:
            m = self.model
            taken |= {s.name for s in (*m.states, *m.param_symbols, *m.inputs, m.time)}
            taken |= {n.name for n in m.networks}
        else:
            taken |= {s.name for s in self.states}
            taken |= {s.name for t in self.terms for s in t.free_symbols}
        out = {}
        for j, o in enumerate(self.outputs):
            for t, c in zip(self.terms, self.coef[:, j]):
                if c == 0:
                    continue
                base = f"{prefix}_{_output_tag(o)}_{term_tag(t)}"
                name, i = base, 2
                while name in taken:
                    name, i = f"{base}_{i}", i + 1
                taken.add(name)
                out[(o, str(t))] = name
        return out

    def _parametrised(self, prefix: str):
        names = self.parameter_names(prefix)
        exprs, params = {}, {}
        for j, o in enumerate(self.outputs):
            acc = []
            for t, c in zip(self.terms, self.coef[:, j]):
                if c == 0:
                    continue
                s = sp.Symbol(names[(o, str(t))])
                params[s] = Parameter(float(c))
                acc.append(s * t)
            exprs[o] = sp.Add(*acc)
        return exprs, params

    def to_model(self, name: str | None = None, prefix: str = "c") -> HybridModel:
        """The model with every recovered network output replaced by its recovered terms.

        Each kept coefficient becomes a new free parameter named
        ``{prefix}_{output}_{term}`` (``c_nn0_xy``), at its recovered value; the physical
        parameters keep their bounds and ``fixed`` flags. After a refit (:attr:`refitted`:
        :func:`recover`'s default, :meth:`select`, :meth:`refit`) every value is the
        refit's: the coefficients and the physical parameters estimated with them (and
        the weights of networks left in place), so the model is the one the refit fitted
        (its initial states are :attr:`y0`). Without a refit (``recover(...,
        refit=False)``) the coefficients are the regression's reading of the network and
        the physical parameters the hybrid fit's, a pairing no fit has checked: refit it
        with :func:`dynlearn.fit` to refine them together and get standard errors.

        For a :func:`sindy_baseline` recovery, returns the pure SINDy model
        ``d state/dt = recovered terms``.

        Parameters
        ----------
        name : str, optional
            Model name (default: the original's with ``-recovered``).
        prefix : str
            Prefix of the coefficient names.

        Returns
        -------
        HybridModel
            Without the replaced networks (pure symbolic when all outputs were recovered).
        """
        if not isinstance(prefix, str) or not prefix.isidentifier():
            raise ModelError(f"prefix must be an identifier such as 'c', got {prefix!r}")
        exprs, new_params = self._parametrised(prefix)
        if self.kind == "derivative":
            return HybridModel(states=list(self.states), params=new_params,
                               rhs={s: exprs[o] for s, o in zip(self.states, self.outputs)},
                               name=name or "sindy")
        m = self.model
        if m is None:
            raise ModelError("this recovery has no model (it came from sparse_regression); "
                             "build the model yourself from rec.expressions")
        subs = {sym: exprs[o] for sym, o in zip(self.output_symbols, self.outputs)}
        rhs = {s: e.xreplace(subs) for s, e in zip(m.states, m.rhs)}
        # the physical parameters and the networks left in place come from the candidate's
        # own refit when there is one: the refit re-estimated them together with the
        # coefficients, and the hybrid fit's values belong to another model (the network
        # may have absorbed part of a physical term there)
        source = self.fitted_model or m
        by_name = {s.name: v for s, v in source.params.items()}
        params = {s: by_name.get(s.name, v) for s, v in m.params.items()}
        params.update(new_params)
        new = HybridModel(states=m.states, rhs=rhs, params=params, inputs=m.inputs,
                          observables=m.observables, time=m.time,
                          name=name or f"{m.name}-recovered")
        # networks left in place (outputs not recovered) keep their fitted weights
        kept = {n.name for n in new.networks}
        nets = {n.name: n for n in m.networks}
        nets.update({n.name: n for n in source.networks if n.name in nets})
        return new.with_networks([n for name_, n in nets.items() if name_ in kept])

    def refit(self, data=None, *, prune: bool = True, z: float = 2.0,
              min_contribution: float | None = None, criterion: str | None = "bic",
              max_rounds: int = 20, **fit_kwargs) -> Recovery:
        """Refit the recovered model to the data, dropping the terms the data do not support.

        Fits :meth:`to_model` with :func:`dynlearn.fit`, then, with ``prune``, eliminates
        terms backwards, one per refit:

        1. a kept term is *weak* when its coefficient is not significant,
           :math:`|c| < z\\,\\mathrm{se}(c)`, or its refitted contribution to the learned
           term is negligible (below ``min_contribution`` of its size, measured on the
           recovery's samples as in :func:`stlsq`); the weak term with the smallest
           :math:`|c|/\\mathrm{se}(c)` is dropped;
        2. when no term is weak, the sparser supports that the regression met along its
           threshold path (per output, subsets of the current one) are refitted from the
           regression's coefficients, and the one that most improves the refit's
           information ``criterion`` (the fit result's BIC or AIC) is accepted. This
           removes groups of spurious terms that compensate one another (each looks
           significant, so step 1 keeps them); removing one term at a time would not,
           since for a single term the criterion agrees with the t test.

        The regression reads the network, which carries its own errors: a network trained
        on few noisy samples hands over terms that fit those errors. Against the data they
        come out indistinguishable from zero, too small to matter, or (when several
        spurious terms compensate one another and each looks significant) not worth their
        parameters.

        Parameters
        ----------
        data : Dataset or DataFrame, optional
            Default: the data of the fit the recovery came from.
        prune : bool
            Eliminate terms (default) or just refit once.
        z : float
            Significance: ``|value| >= z * stderr`` keeps a term in step 1 (2 ~ 95 %).
        min_contribution : float, optional
            Smallest relative contribution kept (default: the optimizer's
            ``min_threshold``, 1 %).
        criterion : {"bic", "aic"} or None
            For step 2; None skips it.
        max_rounds : int
            At most this many terms are dropped.
        **fit_kwargs
            Passed to :func:`dynlearn.fit`. Defaults follow the original fit when the
            recovery came from a fit result (``loss``, ``method``, ``rtol``, ``atol``, and
            ``y0``: estimated again if it was estimated, otherwise the initial states it
            used); ``progress=False``; the optimizer is ``dl.MultipleShooting(segments=4)``
            from the regression's coefficients, the fit's default from a previous refit.

        Returns
        -------
        Recovery
            With the refitted coefficients, their standard errors (:attr:`stderr`), the
            final fit result (:attr:`fit`), the dropped terms (:attr:`dropped`, each with
            the ``reason``) and the bare regression (:attr:`regression`).

        Notes
        -----
        The refit starts from the regression's coefficients, which can be a few percent
        off. On an oscillating system that is enough to put a single-shooting simulation
        out of phase with the data (the Lotka-Volterra example starts at 10^4 times the
        noise floor in one of our runs, and Levenberg-Marquardt stops in a wrong minimum),
        hence multiple shooting by default. When the recovery came from a fit result, a
        first refit that fits the data more than 10 times worse than the hybrid model
        is reported and not pruned: the terms are incomplete or the refit is stuck.

        The machinery is :func:`dynlearn.discovery.refit.refit_recovery`.

        Examples
        --------
        >>> refined = rec.refit()                           # doctest: +SKIP
        >>> refined.equations(uncertainty=True)             # doctest: +SKIP
        ['nn[0] = (-0.9 ± 0.0018)*x*y', 'nn[1] = (0.802 ± 0.0037)*x*y']
        >>> refined.fit.params.loc["c_nn0_xy", ["value", "stderr"]]   # doctest: +SKIP
        """
        return refit_recovery(self, data, prune=prune, z=z, min_contribution=min_contribution,
                              criterion=criterion, max_rounds=max_rounds, **fit_kwargs)

    def select(self, data=None, *, criterion: str = "bic", members: Sequence[Recovery] = (),
               max_refits: int = 200, parsimony: float = 0.0, **fit_kwargs) -> Recovery:
        """Choose the structure through the ODE: candidates refitted to the data.

        Every support the regression meets along its sparsity path (one threshold for
        every output; on all samples and on the trajectory samples alone) is a candidate.
        Each is refitted to the data with :func:`dynlearn.fit` (the known physics plus its
        terms, started from the regression's coefficients, initial states as in the
        original fit) and scored by an information criterion of that fit. The best is
        then improved by replacing one output's support by another of its path, by
        dropping one term, and by exchanging one term for another, while the criterion
        improves. See :mod:`dynlearn.discovery.selection`.

        Parameters
        ----------
        data : Dataset or DataFrame, optional
            Default: the data of the fit the recovery came from.
        criterion : {"bic", "aicc"}
            BIC (default) or AICc of each refit's fit to the data. BIC is consistent (it
            picks the true structure with a probability that tends to one as the data
            grow) where AIC and AICc keep a spurious term with a fixed probability; and
            the candidates come from a network fitted to the same noise, so each
            spurious one arrives already fitted to it. Measured on the discovery
            battery (docs/discovery.md), BIC recovered the exact structure more often.
        members : sequence of Recovery
            Regressions of other network fits of the same data (:func:`recover` passes
            them when given several fit results or an ensemble): their paths add
            candidates and their kept terms count in :attr:`inclusion`.
        max_refits : int
            At most this many candidate refits.
        parsimony : float
            Keep the sparsest candidate whose criterion is within this of the lowest
            (0: the lowest).
        **fit_kwargs
            Passed to :func:`dynlearn.fit`. Defaults follow the original fit (``loss``,
            ``method``, ``rtol``, ``atol``, ``y0``); the optimizer is
            ``dl.MultipleShooting(segments=4)`` from the regression's coefficients, the
            fit's default from a previous refit.

        Returns
        -------
        Recovery
            The chosen candidate's refitted coefficients, standard errors (:attr:`stderr`)
            and fit (:attr:`fit`); every candidate (:attr:`candidates`), the support of
            each term (:attr:`inclusion`), the regression's terms left out
            (:attr:`dropped`, reason the criterion) and the bare regression
            (:attr:`regression`).

        Examples
        --------
        >>> chosen = rec.select(criterion="bic")                 # doctest: +SKIP
        >>> chosen.candidates[["terms", "n_coefficients", "criterion", "chosen"]].head()
        ... # doctest: +SKIP
        """
        return select_structure(self, data, criterion=criterion, members=members,
                                max_refits=max_refits, parsimony=parsimony, **fit_kwargs)


# =====================================================================================
# From samples to a Recovery
# =====================================================================================
def regress(Theta: np.ndarray, Z: np.ndarray, terms: Sequence[sp.Expr], names: Sequence[str],
            optimizer: STLSQ, n_effective: float, samples: pd.DataFrame,
            on_trajectory: np.ndarray, check_stability: bool = False,
            warn_unstable: bool = True, stacklevel: int = 3, **extra) -> Recovery:
    """Sparse regression of sampled targets onto an evaluated library, with diagnostics.

    The step shared by :func:`recover`, :func:`sparse_regression` and
    :func:`~dynlearn.discovery.sindy_baseline`. Warns (:class:`DiscoveryWarning`, pointing
    at the caller of those functions) when the samples are fewer than the terms, when the
    terms recovered depend on the region samples, when an expression explains less than
    90 % of the variance of its target, and when the scaled library is nearly singular.

    Parameters
    ----------
    Theta : ndarray, shape (m, k)
        The library at the samples (:func:`~dynlearn.discovery.libraries.evaluate_terms`).
    Z : ndarray, shape (m, q)
        The targets at the samples.
    terms : sequence of sympy.Expr, length k
    names : sequence of str, length q
        The outputs' names.
    optimizer : STLSQ
    n_effective : float
        Sample size of the information criteria.
    samples : pandas.DataFrame
        Kept as :attr:`Recovery.samples`.
    on_trajectory : ndarray of bool, shape (m,)
        Which samples lie on the trajectories.
    check_stability : bool
        Also regress the trajectory samples alone and flag (``score.stable``) outputs whose
        kept terms differ.
    warn_unstable : bool
        Warn about those outputs too.
    stacklevel : int
        Of the warnings: 3 points at the caller of the function that called ``regress``.
    **extra
        Further :class:`Recovery` fields (``model``, ``data``, ``kind``, ...).

    Returns
    -------
    Recovery
    """
    m = Theta.shape[0]
    recovering = extra.get("model") is not None     # recover(), which has a command
    if m <= len(terms):
        warnings.warn(f"only {m} samples for {len(terms)} candidate terms; the regression is "
                      "underdetermined. Use a smaller library ("
                      + ("Python: library=dl.polynomial_library(2); command line: --library "
                         "poly2" if recovering else "library=...") + ")",
                      DiscoveryWarning, stacklevel=stacklevel)
    res = optimizer.fit(Theta, Z, n_effective=n_effective)
    coef = res["coef"]
    stable = np.ones(len(names), bool)
    if check_stability and on_trajectory.sum() > len(terms):
        # the same regression on the trajectory samples alone: if the kept terms differ,
        # the answer depends on where the network is sampled and should not be trusted
        alone = optimizer.fit(Theta[on_trajectory], Z[on_trajectory],
                              n_effective=n_effective)["coef"]
        stable = np.all((alone != 0) == (coef != 0), axis=0)
        for j in np.flatnonzero(~stable) if warn_unstable else ():
            other = [str(t) for t, c in zip(terms, alone[:, j]) if c != 0]
            warnings.warn(f"the terms recovered for {names[j]} depend on where the network is "
                          f"sampled: the trajectories alone give {other or ['nothing']}. The "
                          "network is probably extrapolating off its trajectories, or the "
                          "library columns are nearly collinear there. Let the data choose "
                          "between them (Python: select='ode', the default of recover; "
                          "command line: --select ode, the default) or sample only "
                          "the trajectories (Python: region='trajectory'; command line: "
                          "--region trajectory)", DiscoveryWarning, stacklevel=stacklevel)
    cond = condition_number(Theta)
    score = score_table(Theta, Z, coef, on_trajectory, names, res["thresholds"], stable)
    for name, r2 in zip(names, score["r2"]):
        if r2 < 0.9:
            what = "learned term" if recovering else "target"
            warnings.warn(f"the recovered expression for {name} explains only R^2 = {r2:.3f} of "
                          f"the {what}: the library lacks the right terms"
                          + (", or the network has not learned a clean term (check that the "
                             "hybrid fit reaches the noise level: result.loss against the "
                             "sum of squared noise)" if recovering else "")
                          + ". Try a larger library ("
                          + ("Python: library=dl.polynomial_library(3); command line: "
                             "--library poly3" if recovering else "library=...") + ")",
                          DiscoveryWarning, stacklevel=stacklevel)
    if cond > 1e6:
        warnings.warn(f"the library columns are nearly collinear on the samples (condition "
                      f"number {cond:.2g}): terms can stand in for each other and the selected "
                      "ones may be arbitrary. "
                      + ("Spread the samples (Python: radius=0.05; command line: --radius "
                         "0.05), measure more experiments, or shrink the library (Python: "
                         "library=dl.polynomial_library(1); command line: --library poly1)"
                         if recovering else "Add experiments or shrink the library"),
                      DiscoveryWarning, stacklevel=stacklevel)
    s = np.sqrt(np.einsum("ij,ij->j", Theta, Theta) / m)
    zrms = np.sqrt(np.mean(Z * Z, axis=0))
    scale = s[:, None] / np.where(zrms > 0, zrms, 1.0)[None, :]
    path = pd.DataFrame([dict(output=name, **row) for name, p in zip(names, res["path"])
                         for row in p])
    return Recovery(outputs=list(names), terms=list(terms), coef=coef,
                    thresholds=np.asarray(res["thresholds"]), score=score, path=path,
                    samples=samples, condition_number=cond, optimizer=optimizer, scale=scale,
                    arrays=(Theta, Z, on_trajectory), **extra)


def sparse_regression(samples, targets, library=None, *, variables: Sequence | None = None,
                      optimizer: STLSQ | None = None,
                      n_effective: float | None = None) -> Recovery:
    """Sparse regression of given targets onto a library: the core of :func:`recover`.

    Parameters
    ----------
    samples : DataFrame or mapping name -> array, each of shape (m,)
        Values of the variables.
    targets : DataFrame, mapping name -> array (m,), or array (m,) / (m, q)
        What to explain; named ``"z"`` / ``"z0", "z1", ...`` when unnamed.
    library : Library or list of sympy expressions, optional
        Default ``polynomial_library(2)`` of ``variables``.
    variables : sequence of sympy.Symbol or str, optional
        The symbols of the sample columns (default: every column, as ``Symbol(name)``).
    optimizer : STLSQ, optional
    n_effective : float, optional
        Sample size for the information criteria (default ``m``).

    Returns
    -------
    Recovery
        Without a model (``to_model`` is not available).
    """
    if isinstance(samples, pd.DataFrame):
        cols = {str(c): samples[c].to_numpy(float) for c in samples.columns}
    elif isinstance(samples, Mapping):
        cols = {str(k): np.asarray(v, float) for k, v in samples.items()}
    else:
        raise DataError("samples must be a DataFrame or a dict {name: values}")
    if variables is None:
        variables = [sp.Symbol(c) for c in cols]
    variables = check_variables(variables, "sparse_regression") or []
    missing = [v.name for v in variables if v.name not in cols]
    if missing:
        raise DataError(f"samples lack column(s) {missing}")
    X = np.array([cols[v.name] for v in variables])
    if X.ndim != 2:
        raise DataError("sample columns must be 1-D arrays of equal length")
    m = X.shape[1]
    if isinstance(targets, pd.DataFrame):
        names, Z = [str(c) for c in targets.columns], targets.to_numpy(float)
    elif isinstance(targets, Mapping):
        names = [str(k) for k in targets]
        Z = np.column_stack([np.asarray(v, float) for v in targets.values()])
    else:
        Z = np.asarray(targets, float)
        Z = Z[:, None] if Z.ndim == 1 else Z
        names = ["z"] if Z.shape[1] == 1 else [f"z{i}" for i in range(Z.shape[1])]
    if Z.shape[0] != m:
        raise DataError(f"targets have {Z.shape[0]} rows but samples have {m}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Z))):
        raise DataError("samples and targets must be finite (drop rows with NaN)")
    terms = library_terms(library, variables, {v.name: v for v in variables},
                          "the sample variables")
    Theta = evaluate_terms(terms, [variables], [X], m)
    frame = pd.DataFrame({**{v.name: X[i] for i, v in enumerate(variables)},
                          **{n: Z[:, i] for i, n in enumerate(names)}})
    return regress(Theta, Z, terms, names, as_optimizer(optimizer),
                   m if n_effective is None else n_effective, frame, np.ones(m, bool),
                   library=as_library(library))


# =====================================================================================
# recover()
# =====================================================================================
def _source_parts(source, data, y0):
    """(model, data, y0) from a FitResult-like object or a HybridModel."""
    if isinstance(source, HybridModel):
        return source, data, y0
    model = None
    for attr in ("model", "fitted_model"):
        cand = getattr(source, attr, None)
        if isinstance(cand, HybridModel):
            model = cand
            break
    if model is None:
        raise ModelError(f"recover() needs a fit result (from dl.fit) or a dl.HybridModel, got "
                         f"{type(source).__name__}")
    if data is None:
        data = getattr(source, "data", None)
    if y0 is None:
        y0 = getattr(source, "y0", None)
    return model, data, y0


def _as_float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fit_settings(source, y0) -> dict:
    """Defaults for the refits (Recovery.select, Recovery.refit): the original fit's loss
    (and residual transforms), solver and initial states."""
    cfg = getattr(source, "config", None)
    out = {}
    if isinstance(cfg, Mapping):
        out = {k: cfg[k] for k in ("loss", "transform", "method", "rtol", "atol")
               if cfg.get(k) is not None}
        if isinstance(cfg.get("y0"), str) and cfg["y0"] == "estimate":
            out["y0"] = "estimate"
            # start the refits' initial states from the fit's estimates (one experiment:
            # y0_init is one value per state for every experiment)
            if isinstance(y0, Mapping) and len(y0) == 1:
                out["y0_init"] = np.asarray(next(iter(y0.values())), float)
        elif y0 is not None:
            out["y0"] = y0
    elif y0 is not None:
        out["y0"] = y0
    return out


def _default_variables(model, outputs) -> list[sp.Symbol]:
    """States, inputs and time (in that order) appearing in the inputs of the networks."""
    used = set()
    for o in outputs:
        for v in o.network.inputs:
            used |= v.free_symbols
    order = [*model.states, *model.inputs, model.time]
    return [s for s in order if s in used] or list(model.states)


def _select_outputs(model, outputs) -> list[NetworkOutput]:
    every = [o for net in model.networks for o in net.outputs]
    if outputs is None:
        return every
    if isinstance(outputs, (str, sp.Symbol)):
        outputs = [outputs]
    by_name = {o.name: o for o in every}
    chosen = []
    for o in outputs:
        key = o.name if isinstance(o, sp.Symbol) else str(o)
        if key in by_name:
            chosen.append(by_name[key])
            continue
        nets = [n for n in model.networks if n.name == key]
        if nets:
            chosen += list(nets[0].outputs)
            continue
        raise ModelError(f"outputs: {key!r} is not a network output of the model; outputs are "
                         f"{sorted(by_name)}")
    return list(dict.fromkeys(chosen))


def _members(source) -> list | None:
    """The fit results of an ensemble (``.members``) or of a list of fit results; None for
    one fit or a model."""
    if isinstance(source, (list, tuple)):
        members = list(source)
    elif isinstance(getattr(source, "members", None), (list, tuple)):
        members = list(source.members)
    else:
        return None
    if not members:
        raise ModelError("recover() got an empty list of fit results")
    for r in members:
        if not isinstance(getattr(r, "model", None), HybridModel):
            raise ModelError(f"recover() needs fit results (from dl.fit) in a list or an "
                             f"ensemble, got {type(r).__name__}")
    return members


def recover(source, library=None, *, optimizer: STLSQ | None = None, data=None, t=None,
            y0=None, inputs=None, outputs=None, region: str = "tube", radius: float = 0.02,
            n_trajectory: int = 200, n_region: int = 200, n_effective: float | None = None,
            refit: bool = True, select: str = "ode", criterion: str = "bic",
            z: float = 2.0, seed: int | None = 0, method: str = "RK45", rtol: float = 1e-8,
            atol: float = 1e-10) -> Recovery:
    """Recover equations for the learned network terms of a fitted hybrid model.

    Parameters
    ----------
    source : FitResult, list of FitResult, Ensemble or HybridModel
        A result of :func:`dynlearn.fit` (its fitted model and data are used), several
        fits of the same model and data (a list, or a :func:`dynlearn.ensemble`: the one
        with the lowest loss is read, every one adds candidate structures and counts in
        ``rec.inclusion``), or a model whose ``theta0`` holds trained weights (then pass
        ``data=`` or ``t=`` and ``y0=``).
    library : Library or list of sympy expressions, optional
        Candidate terms (default ``polynomial_library(2)`` of the variables the networks
        see). Terms may use the model's states, inputs, time and parameters (evaluated at
        their fitted values).
    optimizer : STLSQ or float, optional
        Sparse regression settings; default ``STLSQ(threshold="auto", criterion="bic")``. A
        number is a fixed threshold.
    data : Dataset or DataFrame, optional
        Experiments whose time spans and initial states define the trajectories (default:
        the fit result's data).
    t : array_like, optional
        Instead of ``data``: the times of one trajectory (then ``y0`` is required).
    y0 : array_like or dict, optional
        Initial state of that trajectory; with ``data``, the initial state of every
        experiment or a dict per experiment (default: the fit result's initial states, else
        each experiment's first row).
    inputs : InputSignal or DataFrame, optional
        Input values for a model with inputs, when ``t`` is given.
    outputs : list of str, optional
        Only these network outputs (``"nn[0]"``) or networks (``"nn"``); default all.
    region : {"tube", "hull", "box", "trajectory"}
        Where to add samples besides the trajectories. Samples along a few trajectories can
        make nearly collinear library columns (on a circular orbit ``1``, ``x**2`` and
        ``y**2`` are exactly dependent), which invites spurious terms; points off the
        trajectories break such dependencies. But a network is only trained on the states
        its trajectories visit: off them it extrapolates, and its values there are not the
        missing physics. ``"tube"`` (default) samples within ``radius`` of the
        trajectories, ``"hull"`` inside their convex hull, ``"box"`` inside their bounding
        box (both dangerous for networks trained on one orbit), ``"trajectory"`` nowhere
        else.
    radius : float
        Half-width of the tube, as a fraction of each variable's range.
    n_trajectory : int
        Samples per trajectory (evenly spaced in time).
    n_region : int
        Samples spread over the region (Latin hypercube, rejected outside it).
    n_effective : float, optional
        Sample size of the regression's information criteria; default the number of
        measured time points, since that is how much information the network learned from.
    refit : bool
        When the data are known (a fit result, or ``data=``), refit recovered terms to the
        data (as ``select`` says). ``refit=False`` returns the regression of the network
        alone.
    select : {"ode", "prune"}
        How the refit chooses the terms. ``"ode"`` (default): every structure the
        regression meets along its sparsity path is refitted to the data through the ODE
        solver and the best by ``criterion`` is kept (:meth:`Recovery.select`; the
        candidates are in ``rec.candidates``). ``"prune"``: the regression's own choice
        is refitted and its insignificant terms dropped (:meth:`Recovery.refit`, with
        significance ``z``). The regression reads the network, which carries its own
        errors (an over-fitted network hands over small spurious terms); the refit asks
        the data. The bare regression stays available as ``rec.regression``.
    criterion : {"bic", "aicc"}
        The information criterion of ``select="ode"``: BIC (default), or AICc (more
        permissive: it keeps more terms). See :meth:`Recovery.select`.
    z : float
        Significance for ``select="prune"``: terms with ``|value| < z * stderr`` are
        dropped.
    seed : int, optional
        Seeds the region samples.
    method, rtol, atol
        Solver settings for the trajectories.

    Returns
    -------
    Recovery

    Raises
    ------
    ModelError
        The model has no networks, the library is empty, or a term uses an unknown symbol.

    Warns
    -----
    DiscoveryWarning
        When the scaled library is nearly singular on the samples, a recovered expression
        explains less than 90 % of the variance of the learned term, or the refitted
        equations fit the data far worse than the hybrid model.

    Notes
    -----
    For every network output :math:`z_i = N_i(g(t, y, u; p); w)` the samples
    :math:`(X_s, z_i(X_s))` are regressed onto the library :math:`\\Theta(X_s)` with STLSQ
    (see :mod:`dynlearn.discovery.regression` for the scaling). The samples are the fitted
    trajectories at ``n_trajectory`` times per experiment plus ``n_region`` points of the
    chosen region (Latin hypercube in the scaled bounding box, rejected outside the tube or
    the convex hull); for those points time is drawn uniformly over the data's span. Then,
    with ``refit``, the structure is chosen by refits to the data
    (:mod:`dynlearn.discovery.selection`).

    Examples
    --------
    >>> rec = dl.recover(result, library=dl.polynomial_library(degree=2))  # doctest: +SKIP
    >>> rec.equations(uncertainty=True)                                     # doctest: +SKIP
    ['nn[0] = (-0.9 ± 0.0018)*x*y', 'nn[1] = (0.802 ± 0.0037)*x*y']
    >>> rec.candidates[["terms", "n_coefficients", "criterion", "chosen"]]  # doctest: +SKIP
    >>> rec.regression.equations()        # the network alone               # doctest: +SKIP
    ['nn[0] = -0.945*x*y', 'nn[1] = 0.839*x*y']
    >>> refit = dl.fit(rec.to_model(), result.data)                        # doctest: +SKIP
    """
    members = _members(source)
    if members is not None:
        source = min(members, key=lambda r: (not np.isfinite(r.loss), r.loss))
    model, data, y0 = _source_parts(source, data, y0)
    settings = _fit_settings(source, y0)
    if not model.networks:
        raise ModelError(f"model '{model.name}' has no networks: there is no learned term to "
                         "recover. recover() turns a fitted network back into equations; for "
                         "equations straight from data use dl.sindy_baseline(data, library)")
    opt = as_optimizer(optimizer)
    if region not in REGIONS:
        raise OptionError(f"region must be one of {list(REGIONS)}, got {region!r}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        raise OptionError(f"radius must be a number > 0 (a fraction of each variable's range), "
                          f"got {radius!r}")
    for name, v, lo in (("n_trajectory", n_trajectory, 2), ("n_region", n_region, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise OptionError(f"{name} must be an integer >= {lo}, got {v!r}")
    if select not in SELECTIONS:
        raise OptionError(f"select must be one of {list(SELECTIONS)}, got {select!r}")
    if criterion not in CRITERIA:
        raise OptionError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    sampling = dict(library=library, optimizer=opt, t=t, inputs=inputs, outputs=outputs,
                    region=region, radius=radius, n_trajectory=n_trajectory,
                    n_region=n_region, n_effective=n_effective, seed=seed, method=method,
                    rtol=rtol, atol=atol)
    # selecting through the ODE refits the candidates of the trajectory samples too: a
    # regression that depends on where the network is sampled is no reason to warn then
    by_ode = refit and data is not None and select == "ode"
    sampling["warn_unstable"] = not by_ode
    rec = _regression(model, data, y0, **sampling, data_settings=settings,
                      hybrid_loss=None if isinstance(source, HybridModel) else
                      _as_float(getattr(source, "loss", None)))
    others = []
    if members is not None:
        for r in members:
            if r is source:
                continue
            m_model, _, m_y0 = _source_parts(r, data, None)
            with warnings.catch_warnings():     # the warnings of the best fit suffice
                warnings.simplefilter("ignore", DiscoveryWarning)
                others.append(_regression(m_model, data, m_y0, **sampling,
                                          data_settings=settings, hybrid_loss=None))
    if refit and data is not None:
        if by_ode:
            rec = rec.select(criterion=criterion, members=others)
        elif rec.coef.any():
            rec = rec.refit(z=z)
    return rec


#: The values of ``recover(select=...)``.
SELECTIONS = ("ode", "prune")


def _regression(model, data, y0, *, library, optimizer, t, inputs, outputs, region, radius,
                n_trajectory, n_region, n_effective, seed, method, rtol, atol,
                data_settings, hybrid_loss, warn_unstable) -> Recovery:
    """The sparse regression of one fitted model's networks (the first step of recover)."""
    outs = _select_outputs(model, outputs)
    variables = _default_variables(model, outs)
    allowed = {s.name: s for s in (*model.states, *model.inputs, model.time,
                                   *model.param_symbols)}
    terms = library_terms(library, variables, allowed,
                          "the model's states, inputs, time and parameters")

    trajs, n_rows = simulate_trajectories(model, data, t, y0, inputs, n_trajectory, method,
                                          rtol, atol)
    nu = len(model.inputs)
    T, Y, U, source_tag = sample_states(trajs, model.n_states, nu, region, n_region, radius,
                                        seed)
    m = T.size
    Z_all = network_outputs(model, T, Y, U)
    every = [o for net in model.networks for o in net.outputs]
    Z = Z_all[:, [every.index(o) for o in outs]]
    if not np.all(np.isfinite(Z)):
        raise DiscoveryError("the network outputs are not finite at some samples; check the "
                             "fitted weights")
    p = model.split_theta(model.theta0)[0]
    groups = [[model.time], list(model.states), list(model.param_symbols), list(model.inputs)]
    values = [T[None, :], Y.T, np.tile(p[:, None], (1, m)),
              U.T if nu else np.zeros((0, m))]
    Theta = evaluate_terms(terms, groups, values, m)

    cols = {model.time.name: T}
    cols.update({s.name: Y[:, i] for i, s in enumerate(model.states)})
    if nu:
        cols.update({u.name: U[:, i] for i, u in enumerate(model.inputs)})
    cols.update({o.name: Z[:, i] for i, o in enumerate(outs)})
    cols["source"] = source_tag
    samples = pd.DataFrame(cols)
    n_eff = n_rows if n_effective is None else float(n_effective)
    # warnings point at the caller of recover(): regress <- _regression <- recover
    return regress(Theta, Z, terms, [o.name for o in outs], optimizer, n_eff, samples,
                   source_tag == "trajectory", model=model, output_symbols=list(outs),
                   library=as_library(library), check_stability=region != "trajectory",
                   warn_unstable=warn_unstable, stacklevel=4, data=data,
                   fit_settings=data_settings, hybrid_loss=hybrid_loss, trajectory_y0=y0)
