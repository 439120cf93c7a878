"""Input signals: the values of a model's exogenous inputs between their samples.

An :class:`InputSignal` interpolates sampled input values (zero-order hold or linear);
:func:`as_input_signal` builds one for a model from a DataFrame, an experiment's columns or
a signal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dynlearn.data.checks import check_times
from dynlearn.data.dataset import Experiment
from dynlearn.errors import DataError
from dynlearn.lazy import is_instance

__all__ = ["InputSignal", "as_input_signal"]


class InputSignal:
    """Input values between samples: zero-order hold or linear interpolation.

    Parameters
    ----------
    t : array_like, shape (m,)
        Sample times, strictly increasing.
    values : array_like, shape (m, n_inputs)
    kind : {"zoh", "linear"}
        ``"zoh"`` holds each sample until the next (what a digital controller does);
        ``"linear"`` interpolates. Outside the sampled range the end values are held.
    names : sequence of str, optional
        The inputs' names, for messages.

    Notes
    -----
    The solvers restart at every jump of a zero-order hold (:meth:`breakpoints`) but step
    across the kinks of a linear interpolation, where the right-hand side is continuous but
    not smooth. Inside a step that straddles a kink the solver's error estimate does not
    hold, so at tight tolerances the accuracy reached is below the tolerance asked for
    (gradients at ``rtol=1e-10`` agree with a tight reference to ~1e-6 instead of ~1e-9),
    and which steps straddle a kink can change with the last bits of the arithmetic.
    Restarting at the kinks would cost at least one step per sample, much more than
    stepping across them when a smooth input is sampled densely.
    """

    def __init__(self, t, values, kind: str = "linear", names: Sequence[str] | None = None):
        self.t = check_times(t, "input time")
        v = np.asarray(values, dtype=float)
        if v.ndim == 1:
            v = v[:, None]
        if v.shape[0] != self.t.size:
            raise DataError(f"input values have {v.shape[0]} rows but there are {self.t.size} "
                            "input times")
        bad = np.argwhere(~np.isfinite(v))
        if bad.size:
            r, c = bad[0]
            label = names[c] if names else c
            raise DataError(f"input '{label}' is not finite at t={self.t[r]} (row {r}); inputs "
                            "must be known at every sample (fill or drop the row)")
        if kind not in ("zoh", "linear"):
            raise DataError(f"input interpolation kind must be 'zoh' or 'linear', got {kind!r}")
        self.values = v
        self.kind = kind
        self.names = list(names) if names is not None else None
        self.n_inputs = v.shape[1]
        self._slopes = (np.diff(v, axis=0) / np.diff(self.t)[:, None]) if self.t.size > 1 else None

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        """Times in ``(t0, t1)`` where the signal jumps (zero-order hold samples), at which
        the solvers restart instead of stepping across a discontinuous right-hand side."""
        if self.kind != "zoh":
            return np.empty(0)
        jumps = self.t[1:][np.any(np.diff(self.values, axis=0) != 0, axis=1)]
        return jumps[(jumps > t0) & (jumps < t1)]

    def __call__(self, t):
        scalar = np.ndim(t) == 0
        tt = np.atleast_1d(np.asarray(t, dtype=float))
        i = np.clip(np.searchsorted(self.t, tt, side="right") - 1, 0, self.t.size - 1)
        out = self.values[i]
        if self.kind == "linear" and self._slopes is not None:
            inside = (tt > self.t[0]) & (tt < self.t[-1])
            j = np.minimum(i, self.t.size - 2)
            lin = self.values[j] + (tt - self.t[j])[:, None] * self._slopes[j]
            out = np.where(inside[:, None], lin, out)
        return out[0] if scalar else out


def as_input_signal(inputs, model, kind: str = "linear") -> InputSignal:
    """An InputSignal for the model's inputs from a signal, a DataFrame (time first) or an
    Experiment whose columns include the inputs."""
    names = [u.name for u in model.inputs]
    if isinstance(inputs, InputSignal):
        if inputs.n_inputs != len(names):
            raise DataError(f"the input signal has {inputs.n_inputs} inputs; the model has "
                            f"{names}")
        return inputs
    if is_instance(inputs, "pandas", "DataFrame"):
        missing = [n for n in names if n not in inputs.columns]
        if missing:
            raise DataError(f"inputs frame lacks column(s) {missing}; it needs a time column "
                            f"first, then {names}")
        return InputSignal(inputs.iloc[:, 0].to_numpy(float), inputs[names].to_numpy(float),
                           kind=kind, names=names)
    if isinstance(inputs, Experiment):
        missing = [n for n in names if n not in inputs.columns]
        if missing:
            raise DataError(f"experiment '{inputs.name}' has no column(s) {missing} for the "
                            "model's inputs")
        return InputSignal(inputs.t, np.column_stack([inputs.columns[n] for n in names]),
                           kind=kind, names=names)
    raise DataError(f"the model has inputs {names}; pass inputs= as a DataFrame (time column "
                    "first, then one column per input)")
