"""How far to trust a recovered equation: fit quality, conditioning, and the warning class.

:class:`DiscoveryWarning` is what the regression, the sampling and the refit warn with when
a recovered equation may not be trustworthy; :func:`score_table` and
:func:`condition_number` are the numbers behind those warnings, kept on the
:class:`~dynlearn.discovery.Recovery` (``rec.score``, ``rec.condition_number``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["DiscoveryWarning", "score_table", "condition_number"]


class DiscoveryWarning(UserWarning):
    """A recovered equation may not be trustworthy (collinear library, poor fit)."""


def _r2(z, zh) -> float:
    ss = float(np.sum((z - z.mean()) ** 2))
    res = float(np.sum((z - zh) ** 2))
    if ss == 0:
        return 1.0 if res == 0 else 0.0
    return 1.0 - res / ss


def score_table(Theta: np.ndarray, Z: np.ndarray, coef: np.ndarray, on_trajectory: np.ndarray,
                names: Sequence[str], thresholds: Sequence[float],
                stable: Sequence[bool]) -> pd.DataFrame:
    """Fit quality per output of ``Theta @ coef`` against the sampled targets ``Z``.

    Parameters
    ----------
    Theta : ndarray, shape (m, k)
        The library at the samples.
    Z : ndarray, shape (m, q)
        The targets at the samples.
    coef : ndarray, shape (k, q)
    on_trajectory : ndarray of bool, shape (m,)
        Which samples lie on the trajectories (for ``r2_trajectory``).
    names : sequence of str, length q
        The outputs, the index of the table.
    thresholds : sequence of float, length q
    stable : sequence of bool, length q
        Copied to the table.

    Returns
    -------
    pandas.DataFrame
        Columns ``r2``, ``rmse``, ``nrmse`` (RMSE over the RMS of the target),
        ``r2_trajectory`` (NaN without trajectory samples), ``n_terms``, ``threshold`` and
        ``stable``; one row per output.
    """
    pred = Theta @ coef
    rows = []
    for j in range(len(names)):
        z, zh = Z[:, j], pred[:, j]
        rms = float(np.sqrt(np.mean(z * z)))
        rmse = float(np.sqrt(np.mean((z - zh) ** 2)))
        rows.append(dict(r2=_r2(z, zh), rmse=rmse, nrmse=rmse / rms if rms > 0 else 0.0,
                         r2_trajectory=_r2(z[on_trajectory], zh[on_trajectory])
                         if on_trajectory.any() else np.nan,
                         n_terms=int(np.count_nonzero(coef[:, j])),
                         threshold=float(thresholds[j]), stable=bool(stable[j])))
    return pd.DataFrame(rows, index=pd.Index(list(names), name="output"))


def condition_number(Theta: np.ndarray) -> float:
    """Condition number of the library with its columns scaled to unit root-mean-square.

    Columns that vanish at every sample are left out. Above ~1e6 the columns are nearly
    collinear on the samples and the choice between them is arbitrary.

    Parameters
    ----------
    Theta : ndarray, shape (m, k)

    Returns
    -------
    float
        ``inf`` when the scaled columns are exactly dependent.
    """
    s = np.sqrt(np.einsum("ij,ij->j", Theta, Theta) / Theta.shape[0])
    live = s > 0
    sv = np.linalg.svd(Theta[:, live] / s[live], compute_uv=False) if live.any() else [1.0]
    return float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf
