"""Small PEtab problems for the tests, written from scratch: an SBML model built with libsbml
(:class:`Sbml`), tables written as TSV (:func:`write_tsv`) and the problem's YAML file
(:func:`write_v1_yaml`, :func:`write_v2_yaml`), or a whole PEtab v1 problem at once
(:func:`write_v1_problem`).

The test modules import it as ``from petab_builders import ...`` (pytest puts ``tests/`` on
the path), after their own ``pytest.importorskip("libsbml")``: libsbml and yaml are imported
here only when a file is written.

>>> path = (Sbml("decay").species("x", 1.0).parameter("k", 0.5)       # doctest: +SKIP
...         .reaction("r", "k * x * cell", reactants=["x"]).write(d / "model.xml"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

__all__ = ["Sbml", "write_tsv", "write_v1_problem", "write_v1_yaml", "write_v2_yaml"]


class Sbml:
    """An SBML level 3 version 2 model with one compartment, built call by call (each
    returns the builder) and written by :meth:`write`.

    Parameters
    ----------
    model_id : str
    compartment : str
        The id of the model's one compartment (constant).
    size : float
        Its size.
    """

    def __init__(self, model_id: str, compartment: str = "cell", size: float = 1.0):
        self.model_id, self.compartment, self.size = model_id, compartment, float(size)
        self._items: list[tuple] = []

    def species(self, sid: str, value: float, amount: bool = False,
                compartment: str | None = None) -> Sbml:
        """A species (not constant, not a boundary condition): ``value`` is its initial
        concentration, or with ``amount`` its initial amount (``hasOnlySubstanceUnits``
        true, as for a rate rule on the amount)."""
        self._items.append(("species", sid, float(value), amount, compartment))
        return self

    def parameter(self, pid: str, value: float | None = None, constant: bool = True) -> Sbml:
        """A parameter; ``constant=False`` for one an assignment rule or event sets."""
        self._items.append(("parameter", pid, value, constant))
        return self

    def parameters(self, values: Mapping[str, float]) -> Sbml:
        """Constant parameters ``{id: value}``, in the mapping's order."""
        for pid, v in values.items():
            self.parameter(pid, v)
        return self

    def initial_assignment(self, symbol: str, formula: str) -> Sbml:
        self._items.append(("initial", symbol, formula))
        return self

    def reaction(self, rid: str, law: str, reactants: Sequence[str] = (),
                 products: Sequence[str] = ()) -> Sbml:
        """An irreversible reaction, stoichiometry 1 for each reactant and product, with the
        kinetic law ``law`` (an SBML L3 formula: an amount per time, so a concentration's
        rate times the compartment)."""
        self._items.append(("reaction", rid, law, tuple(reactants), tuple(products)))
        return self

    def rate_rule(self, variable: str, formula: str) -> Sbml:
        self._items.append(("rate", variable, formula))
        return self

    def assignment_rule(self, variable: str, formula: str) -> Sbml:
        """An assignment rule; a ``variable`` not declared yet becomes a non-constant
        parameter."""
        self._items.append(("assignment", variable, formula))
        return self

    def event(self, eid: str, trigger: str, assignments: Mapping[str, str],
              persistent: bool = True, initial_value: bool = False,
              use_values_from_trigger_time: bool = True) -> Sbml:
        """An event: ``trigger`` an SBML formula, ``assignments`` ``{variable: formula}``."""
        self._items.append(("event", eid, trigger, dict(assignments), persistent,
                            initial_value, use_values_from_trigger_time))
        return self

    def document(self):
        """The ``libsbml.SBMLDocument``."""
        import libsbml

        def math(text):
            ast = libsbml.parseL3Formula(text)
            if ast is None:
                raise ValueError(f"libsbml cannot parse {text!r}: "
                                 f"{libsbml.getLastParseL3Error()}")
            return ast

        doc = libsbml.SBMLDocument(3, 2)
        m = doc.createModel()
        m.setId(self.model_id)
        c = m.createCompartment()
        c.setId(self.compartment)
        c.setSize(self.size)
        c.setConstant(True)
        declared = set()
        for item in self._items:
            kind = item[0]
            if kind == "species":
                _, sid, value, amount, comp = item
                s = m.createSpecies()
                s.setId(sid)
                s.setCompartment(comp or self.compartment)
                if amount:
                    s.setInitialAmount(value)
                else:
                    s.setInitialConcentration(value)
                s.setHasOnlySubstanceUnits(amount)
                s.setBoundaryCondition(False)
                s.setConstant(False)
                declared.add(sid)
            elif kind == "parameter":
                _, pid, value, constant = item
                p = m.createParameter()
                p.setId(pid)
                if value is not None:
                    p.setValue(float(value))
                p.setConstant(constant)
                declared.add(pid)
            elif kind == "initial":
                ia = m.createInitialAssignment()
                ia.setSymbol(item[1])
                ia.setMath(math(item[2]))
            elif kind == "reaction":
                _, rid, law, reactants, products = item
                r = m.createReaction()
                r.setId(rid)
                r.setReversible(False)
                for sids, make in ((reactants, r.createReactant), (products, r.createProduct)):
                    for sid in sids:
                        ref = make()
                        ref.setSpecies(sid)
                        ref.setStoichiometry(1)
                        ref.setConstant(True)
                r.createKineticLaw().setMath(math(law))
            elif kind == "rate":
                rule = m.createRateRule()
                rule.setVariable(item[1])
                rule.setMath(math(item[2]))
            elif kind == "assignment":
                if item[1] not in declared:
                    p = m.createParameter()
                    p.setId(item[1])
                    p.setConstant(False)
                    declared.add(item[1])
                rule = m.createAssignmentRule()
                rule.setVariable(item[1])
                rule.setMath(math(item[2]))
            else:   # event
                _, eid, trigger, assignments, persistent, initial, from_trigger = item
                e = m.createEvent()
                e.setId(eid)
                e.setUseValuesFromTriggerTime(from_trigger)
                tr = e.createTrigger()
                tr.setInitialValue(initial)
                tr.setPersistent(persistent)
                tr.setMath(math(trigger))
                for var, formula in assignments.items():
                    a = e.createEventAssignment()
                    a.setVariable(var)
                    a.setMath(math(formula))
        return doc

    def write(self, path) -> Path:
        """Write the model to ``path`` (SBML XML); returns the path."""
        import libsbml

        path = Path(path)
        libsbml.writeSBMLToFile(self.document(), str(path))
        return path


def write_tsv(path, table, columns: Sequence[str] | None = None) -> Path:
    """Write a PEtab table: ``table`` a DataFrame, a dict of columns, or a list of rows
    with their ``columns``; returns the path."""
    if not isinstance(table, pd.DataFrame):
        table = pd.DataFrame(table, columns=columns)
    path = Path(path)
    table.to_csv(path, sep="\t", index=False)
    return path


def write_v1_yaml(d, sbml: str = "model.xml", conditions: str = "conditions.tsv",
                  measurements: str = "measurements.tsv",
                  observables: str = "observables.tsv",
                  parameters: str = "parameters.tsv") -> Path:
    """``d/problem.yaml`` of a PEtab v1 problem naming these files in ``d``."""
    path = Path(d) / "problem.yaml"
    path.write_text(
        f"format_version: 1\nparameter_file: {parameters}\nproblems:\n"
        f"- condition_files: [{conditions}]\n  measurement_files: [{measurements}]\n"
        f"  observable_files: [{observables}]\n  sbml_files: [{sbml}]\n")
    return path


def write_v1_problem(d, sbml: Sbml, conditions, observables, measurements,
                     parameters) -> Path:
    """A whole PEtab v1 problem in folder ``d``: ``model.xml`` from ``sbml`` and the four
    tables (each as :func:`write_tsv` takes it); returns ``d/problem.yaml``."""
    d = Path(d)
    sbml.write(d / "model.xml")
    for name, table in (("conditions", conditions), ("observables", observables),
                        ("measurements", measurements), ("parameters", parameters)):
        write_tsv(d / f"{name}.tsv", table)
    return write_v1_yaml(d)


def write_v2_yaml(d, model_id: str = "model", sbml: str = "model.xml",
                  mapping: str | None = None, conditions: bool = True,
                  extensions: Mapping | None = None) -> Path:
    """``d/problem.yaml`` of a PEtab v2 problem: ``measurements.tsv``, ``observables.tsv``,
    ``experiments.tsv``, ``parameters.tsv`` (and ``conditions.tsv``, a ``mapping`` file and
    ``extensions`` when given) in ``d``."""
    import yaml

    spec = {"format_version": 2,
            "model_files": {model_id: {"location": sbml, "language": "sbml"}},
            "measurement_files": ["measurements.tsv"], "observable_files": ["observables.tsv"],
            "experiment_files": ["experiments.tsv"]}
    if conditions:
        spec["condition_files"] = ["conditions.tsv"]
    spec["parameter_files"] = ["parameters.tsv"]
    if mapping:
        spec["mapping_files"] = [mapping]
    if extensions:
        spec["extensions"] = dict(extensions)
    path = Path(d) / "problem.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
