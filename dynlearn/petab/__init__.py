"""PEtab import: load a PEtab (v1) problem, evaluate its negative log-likelihood and gradient.

>>> import dynlearn as dl                                   # doctest: +SKIP
>>> prob = dl.petab.load("problem.yaml")                    # doctest: +SKIP
>>> prob.loss_and_grad(prob.x_nominal)                      # doctest: +SKIP

Needs the optional extra ``dynlearn[petab]`` (petab, python-libsbml, sbmlmath).
"""

from dynlearn.petab.problem import PetabFit, PetabProblem, load
from dynlearn.petab.sbml import SbmlOde, sbml_to_ode

__all__ = ["PetabFit", "PetabProblem", "SbmlOde", "load", "sbml_to_ode"]
