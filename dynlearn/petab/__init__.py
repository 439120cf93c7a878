"""PEtab import: load a PEtab (v1, v2, or PEtab SciML) problem, evaluate its negative
log-likelihood and gradient.

>>> import dynlearn as dl                                   # doctest: +SKIP
>>> prob = dl.petab.load("problem.yaml")                    # doctest: +SKIP
>>> prob.loss_and_grad(prob.x_nominal)                      # doctest: +SKIP

Needs the optional extra ``dynlearn[petab]`` (petab, python-libsbml, sbmlmath).
"""

from dynlearn.petab.export import save
from dynlearn.petab.problem import (
    GradientSwitchWarning,
    PetabFit,
    PetabProblem,
    SensitivityCrawlError,
    load,
)
from dynlearn.petab.sbml import SbmlOde, sbml_to_ode
from dynlearn.petab.sciml import SciMLProblem, load_sciml
from dynlearn.petab.v2 import PetabV2Tables, read_v2

__all__ = ["GradientSwitchWarning", "PetabFit", "PetabProblem", "PetabV2Tables", "SbmlOde",
           "SciMLProblem", "SensitivityCrawlError", "load", "load_sciml", "read_v2", "save",
           "sbml_to_ode"]
