"""Equations out: symbolic recovery of learned network terms.

After a hybrid model has been fitted, its networks stand for physics that was missing from
the equations. This package turns them back into equations, following the universal
differential equation (UDE) workflow of Rackauckas et al. (2020):

1. evaluate the learned terms ``nn[i]`` of the fitted model along its trajectories and on
   points spread over the state region the data cover, by default a narrow tube around
   the trajectories (:func:`recover`; :mod:`~dynlearn.discovery.sampling`);
2. regress them sparsely onto a library of sympy candidate terms (:class:`Library`,
   :func:`polynomial_library`, ...; :mod:`~dynlearn.discovery.libraries`) with sequentially
   thresholded least squares (:class:`STLSQ`; :mod:`~dynlearn.discovery.regression`), the
   threshold fixed or chosen by an information criterion or by cross-validation;
3. choose the terms through the ODE: every structure the regression meets along its
   sparsity path replaces the networks (:meth:`Recovery.to_model`: the coefficients become
   named free parameters), is refitted to the data with :func:`dynlearn.fit`, and the one
   with the best information criterion of its data fit (AICc, or BIC) is kept
   (:meth:`Recovery.select`, run by :func:`recover` by default;
   :mod:`~dynlearn.discovery.selection`; the older pruning of the regression's own choice
   is :meth:`Recovery.refit`, :mod:`~dynlearn.discovery.refit`): the coefficients come with
   standard errors, and ``rec.candidates`` lists every structure tried;
4. check that the recovered model extrapolates (:func:`compare_extrapolation`;
   :mod:`~dynlearn.discovery.extrapolation`).

:func:`sindy_baseline` (:mod:`~dynlearn.discovery.sindy`) runs the same regression on
finite-difference derivatives of the data alone (plain SINDy, Brunton et al. 2016), the
baseline the UDE workflow improves on. :mod:`~dynlearn.discovery.diagnostics` holds
:class:`DiscoveryWarning` and the fit-quality numbers behind it.

See ``docs/discovery.md`` for how to choose the library and the threshold, and for when a
recovered equation should not be trusted.

References
----------
.. [1] C. Rackauckas et al., "Universal Differential Equations for Scientific Machine
   Learning", arXiv:2001.04385 (2020).
.. [2] S. L. Brunton, J. L. Proctor, J. N. Kutz, "Discovering governing equations from data
   by sparse identification of nonlinear dynamical systems", PNAS 113, 3932 (2016).
.. [3] N. M. Mangan et al., "Model selection for dynamical systems via sparse regression and
   information criteria", Proc. R. Soc. A 473, 20170009 (2017).
"""

from dynlearn.discovery.diagnostics import DiscoveryWarning
from dynlearn.discovery.extrapolation import compare_extrapolation, physics_only
from dynlearn.discovery.libraries import (
    Library,
    exponential_library,
    polynomial_library,
    trigonometric_library,
)
from dynlearn.discovery.recovery import Recovery, recover, sparse_regression
from dynlearn.discovery.regression import STLSQ, stlsq
from dynlearn.discovery.sindy import sindy_baseline
from dynlearn.errors import DiscoveryError

__all__ = ["STLSQ", "DiscoveryError", "DiscoveryWarning", "Library", "Recovery",
           "compare_extrapolation", "exponential_library", "physics_only", "polynomial_library",
           "recover", "sindy_baseline", "sparse_regression", "stlsq", "trigonometric_library"]
