"""Validation of time grids and initial states, shared by data, solve and everything above.

Time-grid checks belong to the data layer: a dataset, an input signal and a simulation all
need the same rule (finite, increasing), and the data layer sits below the solver. The
times of measurements may repeat (replicates: several measurements at one time); output
times of a simulation and the samples of an input signal may not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dynlearn.errors import DataError

__all__ = ["check_times", "check_y0"]


def check_times(t, what: str = "t", where: str = "", repeats: bool = False) -> np.ndarray:
    """A 1-D, finite, strictly increasing (with ``repeats``: non-decreasing) float array, or
    a DataError saying what is wrong.

    Parameters
    ----------
    t : array_like
        The times.
    what : str
        The name of the times in messages (``"t"``, ``"input time"``).
    where : str
        Appended to the name in messages, e.g. ``" in experiment 'a'"``.
    repeats : bool
        Allow a time to repeat (non-decreasing times): measurement times, where repeated
        times are replicates. Decreasing times are refused all the same.

    Returns
    -------
    ndarray, shape (m,)

    Raises
    ------
    DataError
        When ``t`` is not numeric, not 1-D and non-empty, not finite or not strictly
        increasing (non-decreasing with ``repeats``; the message names the first offending
        entry).
    """
    try:
        t = np.asarray(t, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"`{what}`{where} must be numeric: {exc}") from None
    if t.ndim != 1 or t.size < 1:
        raise DataError(f"`{what}`{where} must be a non-empty 1-D array of times, "
                        f"got shape {t.shape}")
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise DataError(f"`{what}`{where} must be finite; {what}[{bad[0]}]={t[bad[0]]}")
    d = np.diff(t)
    bad = d < 0 if repeats else d <= 0
    if repeats and np.any(bad):
        i = int(np.flatnonzero(bad)[0]) + 1
        raise DataError(f"`{what}`{where} must be increasing (a time may repeat); {what}[{i}]="
                        f"{t[i]} < {what}[{i - 1}]={t[i - 1]}. Sort the times.")
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0]) + 1
        raise DataError(f"`{what}`{where} must be strictly increasing; {what}[{i}]={t[i]} <= "
                        f"{what}[{i - 1}]={t[i - 1]}. Sort the times and remove duplicates.")
    return t


def check_y0(y0, n: int, names: Sequence[str] | None = None, where: str = "") -> np.ndarray:
    """An initial state of ``n`` finite values, or a DataError saying what is wrong.

    Parameters
    ----------
    y0 : array_like
        The initial state.
    n : int
        The number of states.
    names : sequence of str, optional
        The state names, for messages.
    where : str
        Appended to ``y0`` in messages, e.g. ``" of experiment 'a'"``.

    Returns
    -------
    ndarray, shape (n,)
    """
    try:
        y0 = np.asarray(y0, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"`y0`{where} must be numeric: {exc}") from None
    if y0.shape != (n,):
        raise DataError(f"`y0`{where} must have shape ({n},), one value per state "
                        f"{list(names) if names else ''}; got shape {y0.shape}")
    bad = np.flatnonzero(~np.isfinite(y0))
    if bad.size:
        label = f" ({names[bad[0]]})" if names else ""
        raise DataError(f"`y0`{where} must be finite; y0[{bad[0]}]{label} = {y0[bad[0]]}")
    return y0
