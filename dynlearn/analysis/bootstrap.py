"""Bootstrap refits: the spread of the estimates under resampled data.

The replicates are independent fits: they run through the executor of the ``client=``
argument (:func:`dynlearn.distributed.executor.resolve_executor`), one task per replicate on
Dask, one after another otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dynlearn.analysis.checks import check_count
from dynlearn.data.dataset import Dataset, as_dataset
from dynlearn.distributed.executor import resolve_executor
from dynlearn.errors import DataError, OptionError
from dynlearn.fitting.fitter import fit

# --- bootstrap ---------------------------------------------------------------------------------
_BASE_ONLY = ("n_starts", "callback", "checkpoint", "checkpoint_interval", "resume", "throw")

__all__ = ["Bootstrap", "bootstrap"]


@dataclass
class Bootstrap:
    """Bootstrap refits of a model: the spread of the estimates.

    Attributes
    ----------
    fit : FitResult
        The fit to the original data (the replicates start from it).
    estimates : pandas.DataFrame
        One row per replicate (index ``replicate``): ``loss``, ``success``, ``message``,
        ``nfev``, then the value of every fitted physical parameter (and initial state).
    thetas : ndarray, shape (n, n_theta)
        Every replicate's model parameters and network weights (``model.with_theta``).
    kind : str
        ``"experiments"`` or ``"residuals"``.
    """

    fit: Any
    estimates: Any
    thetas: np.ndarray
    kind: str
    seed: int | None = None

    @property
    def names(self) -> list[str]:
        skip = {"loss", "success", "message", "nfev"}
        return [c for c in self.estimates.columns if c not in skip]

    def summary(self, level: float = 0.95, successful_only: bool = True):
        """Per parameter: the fitted value, the bootstrap mean and standard deviation, and
        the percentile interval at ``level``.

        Returns
        -------
        pandas.DataFrame
            Index: parameter; columns ``value``, ``mean``, ``std``, ``ci_lower``,
            ``ci_upper``, ``n`` (replicates used).
        """
        import pandas as pd
        if not 0 < level < 1:
            raise OptionError(f"level must be between 0 and 1, got {level}")
        est = self.estimates
        if successful_only:
            est = est[est["success"] & np.isfinite(est["loss"].astype(float))]
        rows = {}
        q = [(1 - level) / 2, (1 + level) / 2]
        for name in self.names:
            v = est[name].astype(float).dropna().to_numpy()
            value = (float(self.fit.params.loc[name, "value"]) if name in self.fit.params.index
                     else np.nan)
            if v.size:
                lo, hi = np.quantile(v, q)
                rows[name] = dict(value=value, mean=v.mean(), std=v.std(ddof=1) if v.size > 1
                                  else np.nan, ci_lower=lo, ci_upper=hi, n=v.size)
            else:
                rows[name] = dict(value=value, mean=np.nan, std=np.nan, ci_lower=np.nan,
                                  ci_upper=np.nan, n=0)
        return pd.DataFrame.from_dict(rows, orient="index")

    def __repr__(self) -> str:
        ok = int(self.estimates["success"].sum())
        return (f"Bootstrap(kind={self.kind!r}, {len(self.estimates)} replicates, {ok} "
                f"converged)")


@dataclass
class _Replicate:
    index: int
    loss: float
    success: bool
    message: str
    nfev: int
    values: dict
    theta: np.ndarray


class _ExperimentResampler:
    """Draws experiments with replacement (repeats renamed ``name#2``, ``name#3``, ...)."""

    kind = "experiments"

    def __init__(self, dataset):
        self.dataset = dataset

    def draw(self, rng) -> np.ndarray:
        n = len(self.dataset)
        return rng.integers(0, n, size=n)

    def make(self, idx):
        seen: dict[str, int] = {}
        exps = []
        for i in idx:
            e = self.dataset[int(i)]
            seen[e.name] = seen.get(e.name, 0) + 1
            name = e.name if seen[e.name] == 1 else f"{e.name}#{seen[e.name]}"
            exps.append(replace(e, name=name, columns=dict(e.columns)))
        return Dataset(exps, self.dataset.time_name)

    def original_name(self, name: str) -> str:
        return name.split("#", 1)[0]


class _ResidualResampler:
    """Adds resampled residuals of the fit to its predictions.

    Residuals are taken on the scale the loss sees them (``(g(data) - g(fit)) * scale``,
    ``g`` each observable's transform: ``log`` or ``log10`` where ``transform`` says so),
    pooled per observable, drawn with replacement and mapped back through each point's own
    scale and transform, so noise levels, weights and multiplicative noise are respected.
    """

    kind = "residuals"

    def __init__(self, result):
        obj = result.objective()
        frame = result.residuals()
        self.dataset = result.data
        self.loss = obj.loss
        self.obs = list(obj.obs)
        self.fitted, self.scales, self.masks = [], [], []
        pos = 0
        pools: dict[int, list] = {k: [] for k in range(len(self.obs))}
        self.slots = []   # per experiment: (row, observable, position in the pool)
        for b, sc in zip(obj.bound, obj.scales):
            rows = np.argwhere(b.mask)
            H = np.full(b.Y.shape, np.nan)
            H[b.mask] = frame["fitted"].to_numpy()[pos:pos + len(rows)]
            scaled = frame["scaled"].to_numpy()[pos:pos + len(rows)]
            pos += len(rows)
            self.fitted.append(H)
            self.scales.append(np.asarray(sc, dtype=float))
            self.masks.append(b.mask)
            for (_, k), s in zip(rows, scaled):
                pools[int(k)].append(float(s))
        self.pools = [np.asarray(pools[k]) for k in range(len(self.obs))]

    def draw(self, rng) -> list[np.ndarray]:
        out = []
        for M in self.masks:
            draws = np.full(M.shape, np.nan)
            for k in range(len(self.obs)):
                m = M[:, k]
                if m.any():
                    draws[m, k] = self.pools[k][rng.integers(0, self.pools[k].size,
                                                             size=int(m.sum()))]
            out.append(draws)
        return out

    def make(self, draws):
        exps = []
        for e, H, sc, M, d in zip(self.dataset, self.fitted, self.scales, self.masks, draws):
            cols = dict(e.columns)
            with np.errstate(divide="ignore", invalid="ignore"):
                step = d / sc
                new = self.loss.shifted(H, step)
            for k, o in enumerate(self.obs):
                if o in cols:
                    cols[o] = np.where(M[:, k], new[:, k], np.nan)
            exps.append(replace(e, columns=cols))
        return Dataset(exps, self.dataset.time_name)

    def original_name(self, name: str) -> str:
        return name


def _refit_task(item, model, resampler, fit_kwargs):
    index, draw = item
    data = resampler.make(draw)
    kw = dict(fit_kwargs)
    y0 = kw.get("y0")
    if isinstance(y0, Mapping) and y0 and set(y0) <= {e.name for e in resampler.dataset}:
        kw["y0"] = {e.name: y0[resampler.original_name(e.name)] for e in data}
    r = fit(model, data, progress=False, **kw)
    values = {name: float(v) for name, v, fixed in
              zip(r.params.index, r.params["value"], r.params["fixed"]) if not fixed}
    return _Replicate(index, float(r.loss), bool(r.success), r.message,
                      int(r.nfev + r.njev + r.ngev), values, r.model.theta0)


def bootstrap(model, data, n: int = 100, *, kind: str = "auto", seed: int | None = 0,
              client=None, progress: bool = True, **fit_kwargs) -> Bootstrap:
    """Bootstrap the fit of a model: refit it to ``n`` resampled datasets.

    Every refit is an independent task: with a Dask ``client`` (or inside
    :func:`parallel`) they run on the cluster, otherwise one after another. The same
    ``seed`` gives the same replicates either way.

    Parameters
    ----------
    model : HybridModel
    data : Dataset or DataFrame
    n : int
        Number of replicates.
    kind : {"auto", "experiments", "residuals"}
        ``"experiments"``: resample whole experiments with replacement (the right choice when
        experiments are independent units: patients, batches, runs). ``"residuals"``: add
        resampled residuals of the fit to its predictions (for one or a few long
        experiments). ``"auto"``: experiments when there are at least 8, else residuals.
    seed : int or None
        Seed of the resampling (and of the random starts of the first fit).
    client : dask.distributed.Client or Parallel, optional
    progress : bool
        Progress bars for the first fit and the replicates.
    **fit_kwargs
        Passed to :func:`dynlearn.fit` (loss, y0, optimizer, sigma, l2, ...). ``n_starts``,
        ``callback``, ``checkpoint`` and ``resume`` apply to the first fit only; every refit
        starts from its optimum, with the L2 strength it used (the one it chose from the
        data by default).

    Returns
    -------
    Bootstrap

    Notes
    -----
    The percentile intervals of :meth:`Bootstrap.summary` need no linearisation of the
    model (unlike the standard errors of a fit), at the price of ``n`` fits.

    Examples
    --------
    >>> boot = dl.bootstrap(model, data, n=200, client=client)      # doctest: +SKIP
    >>> boot.summary()                                                # doctest: +SKIP
    """
    import pandas as pd
    n = check_count(n, "n")
    if kind not in ("auto", "experiments", "residuals"):
        raise OptionError(f"kind={kind!r}: use 'auto', 'experiments' or 'residuals'")
    dataset = as_dataset(data)
    if kind == "auto":
        kind = "experiments" if len(dataset) >= 8 else "residuals"
    if kind == "experiments" and len(dataset) < 2:
        raise DataError("kind='experiments' resamples experiments, but the data has only one; "
                        "use kind='residuals'")
    refit_kw = {k_: v for k_, v in fit_kwargs.items() if k_ not in _BASE_ONLY}
    executor = resolve_executor(client)
    base = fit(model, dataset, seed=seed, client=executor, progress=progress, **fit_kwargs)
    # replicates keep the L2 strength the first fit chose from the data (a rule's name would
    # run the rule again on every replicate: as many more fits, for a penalty that the
    # intervals are then conditional on anyway)
    refit_kw["l2"] = base.config.get("l2", 0.0)
    resampler = (_ExperimentResampler(dataset) if kind == "experiments"
                 else _ResidualResampler(base))
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    items = [(i, resampler.draw(rng)) for i, rng in enumerate(rngs)]
    reps = executor.map(_refit_task, items, [f"bootstrap replicate {i}" for i in range(n)],
                        {"model": base.model, "resampler": resampler, "fit_kwargs": refit_kw},
                        progress=progress, desc="bootstrap")
    names = [nm for nm, fixed in zip(base.params.index, base.params["fixed"]) if not fixed]
    rows = []
    for r in reps:
        row = {"replicate": r.index, "loss": r.loss, "success": r.success,
               "message": r.message, "nfev": r.nfev}
        row.update({nm: r.values.get(nm, np.nan) for nm in names})
        rows.append(row)
    estimates = pd.DataFrame(rows).set_index("replicate")
    return Bootstrap(base, estimates, np.array([r.theta for r in reps]), kind, seed)
