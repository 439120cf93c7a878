"""The SINDy baseline: equations regressed on finite-difference derivatives of the data.

Plain SINDy (Brunton et al. 2016) runs the same sparse regression as
:func:`~dynlearn.discovery.recover` on derivatives estimated from the data alone; it is the
baseline the universal differential equation workflow improves on.

References
----------
.. [1] S. L. Brunton, J. L. Proctor, J. N. Kutz, "Discovering governing equations from data
   by sparse identification of nonlinear dynamical systems", PNAS 113, 3932 (2016).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import sympy as sp

from dynlearn.data import as_dataset
from dynlearn.discovery.libraries import (
    as_library,
    check_variables,
    evaluate_terms,
    library_terms,
)
from dynlearn.discovery.recovery import Recovery, regress
from dynlearn.discovery.regression import STLSQ, as_optimizer
from dynlearn.errors import DataError

__all__ = ["sindy_baseline"]


def sindy_baseline(data, library=None, *, states: Sequence | None = None,
                   optimizer: STLSQ | None = None) -> Recovery:
    """Plain SINDy: regress finite-difference derivatives of the data onto a library.

    This is the baseline the UDE workflow is measured against: with noisy, sparse
    samples the derivatives are poor and so are the recovered equations.

    Parameters
    ----------
    data : Dataset or DataFrame
        Every state measured at every time (first column time for a DataFrame).
    library : Library or list of sympy expressions, optional
        Default ``polynomial_library(2)`` of the states.
    states : sequence of sympy.Symbol or str, optional
        The state symbols (pass ``model.states`` so that the expressions use the model's
        symbols); default every data column.
    optimizer : STLSQ, optional

    Returns
    -------
    Recovery
        Outputs ``"dx/dt"``, ...; ``to_model()`` gives the SINDy model.

    Notes
    -----
    Derivatives are second-order central differences (one-sided at the ends; non-uniform
    grids allowed), per experiment: :math:`\\dot x_i \\approx (x_{i+1} - x_{i-1}) /
    (t_{i+1} - t_{i-1})` on a uniform grid. Noise of size :math:`\\sigma` on samples
    :math:`h` apart gives derivative errors of size :math:`\\sigma/(\\sqrt 2 h)`.
    """
    data = as_dataset(data)
    if states is None:
        names = list(dict.fromkeys(c for e in data for c in e.columns))
        states = [sp.Symbol(c) for c in names]
    states = check_variables(states, "sindy_baseline") or []
    X, dX, T = [], [], []
    for e in data:
        missing = [s.name for s in states if s.name not in e.columns]
        if missing:
            raise DataError(f"experiment '{e.name}' lacks column(s) {missing}; SINDy needs every "
                            "state measured")
        Xe = np.column_stack([e.columns[s.name] for s in states])
        if not np.all(np.isfinite(Xe)):
            raise DataError(f"experiment '{e.name}' has missing values; SINDy needs every state "
                            "at every time (interpolate or drop rows first)")
        if Xe.shape[0] < 3:
            raise DataError(f"experiment '{e.name}' has {Xe.shape[0]} rows; finite differences "
                            "need at least 3")
        if np.any(np.diff(e.t) == 0):
            raise DataError(f"experiment '{e.name}' repeats a time (replicates); finite "
                            "differences need distinct times: average the replicates first")
        X.append(Xe)
        dX.append(np.gradient(Xe, e.t, axis=0, edge_order=2))
        T.append(e.t)
    X, dX, T = np.concatenate(X), np.concatenate(dX), np.concatenate(T)
    m = X.shape[0]
    terms = library_terms(library, states, {s.name: s for s in states}, "the states")
    Theta = evaluate_terms(terms, [states], [X.T], m)
    outs = [f"d{s.name}/dt" for s in states]
    frame = pd.DataFrame({data.time_name: T, **{s.name: X[:, i] for i, s in enumerate(states)},
                          **{o: dX[:, i] for i, o in enumerate(outs)}})
    return regress(Theta, dX, terms, outs, as_optimizer(optimizer), m, frame,
                   np.ones(m, bool), states=list(states), kind="derivative",
                   library=as_library(library))
