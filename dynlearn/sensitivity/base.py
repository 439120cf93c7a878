"""What every sensitivity method shares: the problem of one experiment, the observation
cotangents, and the base class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dynlearn.core.vectorfield import VectorField
from dynlearn.errors import SolveError

__all__ = ["Sensitivity", "Problem", "check_gradient_finite", "observation_cotangents"]


@dataclass
class Problem:
    """One experiment bound to a vector field, with the loss of its observations.

    Attributes
    ----------
    vf : VectorField
    t0 : float
        Start of integration; ``y0`` is the state there.
    t_obs : ndarray, shape (m,)
        Observation times (``t_obs[0] >= t0``).
    y0 : ndarray, shape (n,)
    obs_loss : callable
        ``obs_loss(H) -> (value, dvalue/dH)`` with ``H`` the observables at ``t_obs``,
        shape (m, n_obs).
    method, rtol, atol, options : solver settings
    name : str
        The experiment's name, for error messages.
    """

    vf: VectorField
    t0: float
    t_obs: np.ndarray
    y0: np.ndarray
    obs_loss: Callable
    method: str = "RK45"
    rtol: float = 1e-6
    atol: float | np.ndarray = 1e-8
    options: dict = field(default_factory=dict)
    name: str = "data"

    @property
    def where(self) -> str:
        """`` in experiment '<name>'``, for error messages."""
        return f" in experiment '{self.name}'"


def observation_cotangents(vf: VectorField, T, Y, obs_loss):
    """Loss of the observations and its derivatives.

    Returns
    -------
    value : float
    Gy : ndarray, shape (m, n)
        dL/dy at each observation time.
    gtheta : ndarray, shape (n_theta,)
        Direct dependence of L on theta through the observables (physical parameters only).
    """
    H, Hy, Hp = vf.observe_batch(T, Y, derivatives=True)
    value, dH = obs_loss(H)
    Gy = np.einsum("mo,mon->mn", dH, Hy)
    g = np.zeros(vf.n_theta)
    if vf.n_free:
        g[:vf.n_free] = np.einsum("mo,mop->p", dH, Hp)
    return float(value), Gy, g


def check_gradient_finite(prob: Problem, method: str, g: np.ndarray,
                          gy0: np.ndarray | None = None) -> None:
    """Raise SolveError when a gradient is not finite, naming the first such entry: a NaN
    gradient is never returned (inside a fit, the trial point is rejected instead).

    Parameters
    ----------
    prob : Problem
    method : str
        The sensitivity method, for the message (e.g. ``"the discrete adjoint"``).
    g : ndarray, shape (n_theta,)
    gy0 : ndarray, shape (n,), optional
    """
    if np.all(np.isfinite(g)) and (gy0 is None or np.all(np.isfinite(gy0))):
        return
    if not np.all(np.isfinite(g)):
        i = int(np.flatnonzero(~np.isfinite(g))[0])
        names = prob.vf.model.theta_names
        what = f"d loss / d {names[i] if i < len(names) else f'theta[{i}]'} = {g[i]}"
    else:
        i = int(np.flatnonzero(~np.isfinite(gy0))[0])
        what = f"d loss / d y0[{prob.vf.model.states[i].name}] = {gy0[i]}"
    raise SolveError(f"{method} gave a non-finite gradient{prob.where} ({what}): the "
                     "derivatives of the right-hand side are not finite along the solution "
                     "(e.g. sqrt or log at zero, a power of a negative number)", status=-1,
                     solver_message="non-finite gradient")


class Sensitivity:
    """Base class of the gradient methods.

    Subclasses implement :meth:`loss_and_grad` for one experiment.
    """

    def loss_and_grad(self, prob: Problem, wrt_y0: bool = False):  # pragma: no cover
        """``(value, dL/dtheta, dL/dy0 or None)`` for one experiment."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"
