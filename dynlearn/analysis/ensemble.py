"""Ensembles: fits of one model from differently initialised networks.

The members are independent fits: they run through the executor of the ``client=``
argument (:func:`dynlearn.distributed.executor.resolve_executor`), one task per member on
Dask, one after another otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynlearn.analysis.checks import check_count
from dynlearn.core.model import HybridModel
from dynlearn.core.neural import MLP
from dynlearn.data.dataset import as_dataset
from dynlearn.distributed.executor import resolve_executor
from dynlearn.errors import OptionError
from dynlearn.fitting.fitter import fit

__all__ = ["Ensemble", "ensemble"]


# --- ensembles ---------------------------------------------------------------------------------
@dataclass
class Ensemble:
    """Fits of one model from differently initialised networks.

    Attributes
    ----------
    members : list of FitResult
        One fit per member, in member order.
    table : pandas.DataFrame
        One row per member (index ``member``): ``loss``, ``success``, ``nfev``, then the
        fitted physical parameters.
    """

    members: list
    table: Any
    seed: int | None = None

    @property
    def best(self):
        """The member with the lowest loss."""
        return min(self.members, key=lambda r: (not np.isfinite(r.loss), r.loss))

    def predict(self, t, experiment: str | None = None, y0=None, inputs=None,
                level: float = 0.9, successful_only: bool = True):
        """The members' predictions: mean, standard deviation and a central interval.

        Parameters
        ----------
        t, experiment, y0, inputs
            As in :meth:`FitResult.predict`.
        level : float
            Probability of the central interval across members.
        successful_only : bool
            Use only members whose fit converged (all when none did).

        Returns
        -------
        pandas.DataFrame
            The time column, then for every state and observable ``<name>_mean``,
            ``<name>_std``, ``<name>_lower`` and ``<name>_upper``.
        """
        import pandas as pd
        if not 0 < level < 1:
            raise OptionError(f"level must be between 0 and 1, got {level}")
        use = [r for r in self.members if r.success] if successful_only else list(self.members)
        use = use or list(self.members)
        frames = [r.predict(t, y0=y0, inputs=inputs, experiment=experiment, bands=False)
                  for r in use]
        tname = frames[0].columns[0]
        out = {tname: frames[0][tname].to_numpy()}
        q = [(1 - level) / 2, (1 + level) / 2]
        for c in frames[0].columns[1:]:
            A = np.stack([f[c].to_numpy() for f in frames])
            out[f"{c}_mean"] = A.mean(axis=0)
            out[f"{c}_std"] = A.std(axis=0, ddof=1) if len(A) > 1 else np.zeros(A.shape[1])
            lo, hi = np.quantile(A, q, axis=0)
            out[f"{c}_lower"], out[f"{c}_upper"] = lo, hi
        return pd.DataFrame(out)

    def __repr__(self) -> str:
        ok = sum(bool(r.success) for r in self.members)
        return f"Ensemble({len(self.members)} members, {ok} converged)"


def _redraw_weights(model, rng) -> np.ndarray:
    """The model's theta with every network's weights drawn afresh.

    MLPs are re-initialised with their own scheme (Glorot uniform, zero biases), keeping the
    root-mean-square size of the given output layer (relative to Glorot's) so that a network
    built with a small output ``scale`` (a model that starts close to its physics) gives
    members that do too. Other networks get their weights scaled by ``1 + 0.5 N(0, 1)``.
    """
    theta = model.theta0
    slices = model.theta_slices()
    for net in model.networks:
        w = theta[slices[net.name]]
        if isinstance(net, MLP):
            W = net.unflatten(w)[-1][0]
            n_in, n_out = W.shape
            glorot_rms = math.sqrt(6.0 / (n_in + n_out)) / math.sqrt(3.0)
            scale = min(1.0, float(np.sqrt(np.mean(W * W))) / glorot_rms)
            fresh = MLP(net.name, net.inputs, net.n_outputs, hidden=net.hidden,
                        activation=net.activation, seed=rng, scale=scale)
            theta[slices[net.name]] = fresh.weights
        else:
            theta[slices[net.name]] = w * (1 + 0.5 * rng.standard_normal(w.shape))
    return theta


def _member_task(item, model, data, fit_kwargs):
    _, theta = item
    return fit(model.with_theta(theta), data, progress=False, **fit_kwargs)


def ensemble(model, data, n: int = 5, *, seed: int | None = 0, client=None,
             progress: bool = True, **fit_kwargs) -> Ensemble:
    """Fit ``n`` copies of a hybrid model whose networks start from different weights.

    The spread of the members' predictions away from the data shows how much the data pin
    down the learned terms. Each member is an independent task: with a Dask ``client`` (or
    inside :func:`parallel`) they run on the cluster, otherwise one after another; the same
    ``seed`` gives the same members either way.

    Parameters
    ----------
    model : HybridModel
        Must contain at least one network. Physical parameters start from the model's
        values in every member.
    data : Dataset or DataFrame
    n : int
        Number of members.
    seed : int or None
        Seed of the weight initialisations.
    client : dask.distributed.Client or Parallel, optional
    progress : bool
    **fit_kwargs
        Passed to :func:`dynlearn.fit` for every member (loss, l2, optimizer, ...).

    Returns
    -------
    Ensemble

    Examples
    --------
    >>> ens = dl.ensemble(model, data, n=8, l2=1e-4, client=client)    # doctest: +SKIP
    >>> band = ens.predict(np.linspace(0, 10, 200))                      # doctest: +SKIP
    """
    import pandas as pd
    n = check_count(n, "n")
    if not isinstance(model, HybridModel):
        raise OptionError(f"model must be a dl.HybridModel, got {type(model).__name__}")
    if not model.networks:
        raise OptionError("ensemble() varies the initial network weights, but this model has "
                          "no network; use dl.fit(..., n_starts=N) or dl.bootstrap instead")
    for bad in ("n_starts", "checkpoint", "resume"):
        if bad in fit_kwargs:
            raise OptionError(f"{bad}= is not supported by ensemble(): every member is one fit")
    dataset = as_dataset(data)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    items = [(i, _redraw_weights(model, rng)) for i, rng in enumerate(rngs)]
    members = resolve_executor(client).map(
        _member_task, items, [f"ensemble member {i}" for i in range(n)],
        {"model": model, "data": dataset, "fit_kwargs": dict(fit_kwargs)},
        progress=progress, desc="ensemble")
    rows = []
    for i, r in enumerate(members):
        row = {"member": i, "loss": float(r.loss), "success": bool(r.success),
               "nfev": int(r.nfev + r.njev + r.ngev)}
        p = r.params
        row.update({nm: float(v) for nm, v, fixed in zip(p.index, p["value"], p["fixed"])
                    if not fixed})
        rows.append(row)
    return Ensemble(members, pd.DataFrame(rows).set_index("member"), seed)
