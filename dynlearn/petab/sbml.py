"""SBML models as sympy equations.

An SBML model becomes an :class:`SbmlOde`: the state variables (species and other quantities
that change by reactions or rate rules), their right-hand sides, their initial values, and
the constant quantities (parameters, compartments, constant species) with their values.
Assignment rules and the initial assignments of constants are substituted, so every
expression is written in states, constants and time only.

SBML semantics that matter here
-------------------------------
* A species without ``hasOnlySubstanceUnits`` is a *concentration* in math (its symbol means
  amount / compartment size); a reaction's kinetic law is an amount per time, so
  ``d[S]/dt = sum(stoichiometry * rate) / size``. A species with ``hasOnlySubstanceUnits``
  is an amount and receives ``sum(stoichiometry * rate)``.
* Boundary-condition species are not changed by reactions; constant species never change.
* Function definitions are expanded by libsbml's converter before translation.

Events are read (:mod:`dynlearn.petab.events`; a parameter an event assigns becomes a state
whose rate is 0). Constructs that change the meaning of a simulation and are not supported
(algebraic rules, delays, fast reactions, variable stoichiometry, ``rateOf``, compartments
that change) raise :class:`~dynlearn.errors.PetabError` naming the construct and its id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from dynlearn.errors import PetabError
from dynlearn.petab.events import SbmlEvent, read_events
from dynlearn.petab.extra import require

__all__ = ["SbmlOde", "sbml_to_ode", "TIME"]

#: The time symbol of every translated expression (a name no SBML model of the collection
#: uses).
TIME = sp.Symbol("time__sbml")

_AVOGADRO = 6.02214076e23


@dataclass
class SbmlOde:
    """An SBML model as ordinary differential equations in sympy.

    Attributes
    ----------
    states : list of str
        Ids of the state variables, in SBML declaration order (species first).
    rhs : dict str -> sympy.Expr
        ``d state/dt`` in states, constants and :data:`TIME`.
    initial : dict str -> sympy.Expr
        Every state's initial value, in constants (and :data:`TIME`, which is 0 at the start).
    constants : dict str -> float
        Every constant quantity (parameters, compartments, constant species, local
        parameters renamed ``reaction.parameter``) with its SBML value.
    derived : dict str -> sympy.Expr
        Quantities fixed by assignment rules or by the initial assignment of a constant,
        in states, constants and time (an observable may name them).
    symbols : dict str -> sympy.Symbol
        The symbol of every id used in the expressions.
    compartment_of : dict str -> str
        The compartment of every species.
    events : list of SbmlEvent
        The model's events (:mod:`dynlearn.petab.events`), in states, constants and time.
        A parameter an event assigns is a state (its rate is 0).
    """

    states: list[str]
    rhs: dict[str, sp.Expr]
    initial: dict[str, sp.Expr]
    constants: dict[str, float]
    derived: dict[str, sp.Expr] = field(default_factory=dict)
    symbols: dict[str, sp.Symbol] = field(default_factory=dict)
    compartment_of: dict[str, str] = field(default_factory=dict)
    events: list[SbmlEvent] = field(default_factory=list)

    def expand(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` with every derived quantity replaced by its expression."""
        subs = {self.symbols[k]: v for k, v in self.derived.items()}
        return sp.sympify(expr).xreplace(subs) if subs else sp.sympify(expr)


def _unsupported(what: str, sid: str) -> PetabError:
    return PetabError(f"unsupported SBML construct: {what} '{sid}'")


def _math(sbmlmath, obj, what: str, sid: str) -> sp.Expr:
    """SBML math of ``obj`` as sympy, with time, Avogadro and unsupported csymbols handled."""
    if obj.getMath() is None:
        raise PetabError(f"SBML {what} '{sid}' has no math")
    try:
        e = sbmlmath.sbml_math_to_sympy(obj)
    except Exception as exc:   # sbmlmath raises plain exceptions on unknown MathML
        raise PetabError(f"cannot translate the math of SBML {what} '{sid}': {exc}") from None
    if e.has(sbmlmath.Delay):
        raise _unsupported(f"delay in {what}", sid)
    if e.has(sbmlmath.RateOf):
        raise _unsupported(f"rateOf in {what}", sid)
    reps = {}
    for s in e.atoms(sp.Symbol):
        if isinstance(s, sbmlmath.TimeSymbol):
            reps[s] = TIME
        elif isinstance(s, sbmlmath.CSymbol) and "avogadro" in str(s).lower():
            reps[s] = sp.Float(_AVOGADRO)
        elif isinstance(s, sbmlmath.CSymbol):
            raise _unsupported(f"csymbol {s} in {what}", sid)
    # sbmlmath returns symbols named by the SBML ids, without assumptions
    if reps:
        e = e.xreplace(reps)
    return e


def _substitute_fixpoint(exprs: dict[str, sp.Expr], symbols: dict[str, sp.Symbol],
                         what: str) -> dict[str, sp.Expr]:
    """Resolve rules that refer to other rules (assignment rules form a DAG in SBML)."""
    out = dict(exprs)
    for _ in range(len(out) + 1):
        subs = {symbols[k]: v for k, v in out.items()}
        new = {k: v.xreplace(subs) for k, v in out.items()}
        if all(new[k] == out[k] for k in out):
            return new
        out = new
    cyclic = sorted(k for k, v in out.items() if v.free_symbols & {symbols[j] for j in out})
    raise PetabError(f"SBML {what} are cyclic: {cyclic}")


def sbml_to_ode(model) -> SbmlOde:
    """Translate a libsbml ``Model`` (or a path to an SBML file) to an :class:`SbmlOde`.

    Parameters
    ----------
    model : libsbml.Model or str or os.PathLike

    Raises
    ------
    PetabError
        A construct that is not supported, named with its id, or a model that cannot be read.
    """
    libsbml, sbmlmath = (require("libsbml", "reading SBML"),
                         require("sbmlmath", "reading SBML"))
    if not isinstance(model, libsbml.Model):
        doc = libsbml.readSBMLFromFile(str(model))
        if doc.getNumErrors(libsbml.LIBSBML_SEV_ERROR) + doc.getNumErrors(
                libsbml.LIBSBML_SEV_FATAL):
            raise PetabError(f"cannot read SBML file {model}: {doc.getErrorLog().toString()}")
        model = doc.getModel()
    else:
        # expand function definitions on a copy: the caller's document stays as it was
        doc = model.getSBMLDocument().clone()
        model = doc.getModel()
    if model.getNumFunctionDefinitions():
        props = libsbml.ConversionProperties()
        props.addOption("expandFunctionDefinitions", True)
        if doc.convert(props) != libsbml.LIBSBML_OPERATION_SUCCESS:
            raise PetabError("libsbml could not expand the model's function definitions")
        model = doc.getModel()

    events = read_events(model, lambda obj, what, sid: _math(sbmlmath, obj, what, sid))
    event_targets = {k for e in events for k in e.assignments}
    for r in model.getListOfRules():
        if r.isAlgebraic():
            raise _unsupported("algebraic rule", r.getMetaId() or "(no id)")

    symbols: dict[str, sp.Symbol] = {}

    def sym(sid: str) -> sp.Symbol:
        if sid not in symbols:
            symbols[sid] = sp.Symbol(sid)
        return symbols[sid]

    assignment = {r.getVariable(): _math(sbmlmath, r, "assignment rule", r.getVariable())
                  for r in model.getListOfRules() if r.isAssignment()}
    rate_rules = {r.getVariable(): _math(sbmlmath, r, "rate rule", r.getVariable())
                  for r in model.getListOfRules() if r.isRate()}
    init_assign = {a.getSymbol(): _math(sbmlmath, a, "initial assignment", a.getSymbol())
                   for a in model.getListOfInitialAssignments()}

    constants: dict[str, float] = {}
    states: list[str] = []
    initial: dict[str, sp.Expr] = {}
    compartment_of: dict[str, str] = {}
    amount_species: set[str] = set()

    for c in model.getListOfCompartments():
        cid = c.getId()
        sym(cid)
        if cid in rate_rules:
            raise _unsupported("compartment whose size changes (rate rule)", cid)
        if cid in event_targets:
            raise _unsupported("compartment whose size changes (event assignment)", cid)
        if cid in assignment:
            continue
        constants[cid] = float(c.getSize()) if c.isSetSize() else 1.0
    for p in model.getListOfParameters():
        pid = p.getId()
        sym(pid)
        if pid in assignment:
            continue
        value = float(p.getValue()) if p.isSetValue() else float("nan")
        if pid in rate_rules or pid in event_targets:
            states.append(pid)
            initial[pid] = sp.Float(value) if pid not in init_assign else init_assign[pid]
        else:
            constants[pid] = value
    species_order = []
    for s in model.getListOfSpecies():
        sid = s.getId()
        sym(sid)
        comp = s.getCompartment()
        compartment_of[sid] = comp
        if s.getHasOnlySubstanceUnits():
            amount_species.add(sid)
        if s.isSetConversionFactor():
            raise _unsupported("species conversion factor", sid)
        if sid in assignment:
            continue
        vol = sym(comp)
        if sid in init_assign:
            x0 = init_assign[sid]
        elif s.isSetInitialConcentration():
            conc = sp.Float(s.getInitialConcentration())
            x0 = conc * vol if sid in amount_species else conc
        elif s.isSetInitialAmount():
            amt = sp.Float(s.getInitialAmount())
            x0 = amt if sid in amount_species else amt / vol
        else:
            x0 = sp.nan
        if s.getConstant() and sid not in rate_rules:
            # a constant species is a constant with its initial value (an expression)
            constants[sid] = float("nan")
            init_assign.setdefault(sid, x0)
            continue
        species_order.append(sid)
        initial[sid] = x0
    if model.isSetConversionFactor():
        raise _unsupported("model conversion factor", model.getConversionFactor())

    # reactions
    flux: dict[str, sp.Expr] = {sid: sp.Integer(0) for sid in species_order}
    for r in model.getListOfReactions():
        rid = r.getId()
        if r.isSetFast() and r.getFast():
            raise _unsupported("fast reaction", rid)
        kl = r.getKineticLaw()
        if kl is None:
            raise PetabError(f"SBML reaction '{rid}' has no kinetic law")
        rate = _math(sbmlmath, kl, "kinetic law of reaction", rid)
        local = {}
        for lp in list(kl.getListOfParameters()) + list(kl.getListOfLocalParameters()):
            name = f"{rid}.{lp.getId()}"
            constants[name] = float(lp.getValue())
            local[sp.Symbol(lp.getId())] = sym(name)
        if local:
            rate = rate.xreplace(local)
        for refs, sign in ((r.getListOfReactants(), -1), (r.getListOfProducts(), 1)):
            for ref in refs:
                sid = ref.getSpecies()
                if ref.isSetStoichiometryMath() or (ref.isSetId() and (
                        ref.getId() in assignment or ref.getId() in rate_rules
                        or ref.getId() in init_assign)):
                    raise _unsupported("variable stoichiometry of species reference",
                                       ref.getId() or sid)
                st = ref.getStoichiometry() if ref.isSetStoichiometry() else 1.0
                sp_obj = model.getSpecies(sid)
                if sp_obj.getBoundaryCondition() or sp_obj.getConstant():
                    continue
                if sid in rate_rules or sid in assignment:
                    raise PetabError(f"SBML species '{sid}' is changed by reaction '{rid}' "
                                     "and by a rule")
                flux[sid] = flux[sid] + sign * sp.Float(st) * rate
    rhs: dict[str, sp.Expr] = {}
    for sid in species_order:
        if sid in rate_rules:
            rhs[sid] = rate_rules[sid]
        elif sid in amount_species:
            rhs[sid] = flux[sid]
        else:
            rhs[sid] = flux[sid] / sym(compartment_of[sid])
    for pid in states:
        rhs[pid] = rate_rules.get(pid, sp.Integer(0))
    for v in rate_rules:
        if v not in rhs:
            raise _unsupported("rate rule on a quantity that is not a parameter or species", v)
    all_states = species_order + states

    # initial assignments of constants become derived quantities (they may use other
    # constants, which conditions can override); assignment rules too
    derived_src = dict(assignment)
    for k, e in init_assign.items():
        if k in constants and not sp.sympify(e).free_symbols and k not in derived_src:
            # a number: the constant's value, which a PEtab condition may override
            constants[k] = float(e)
        elif k in constants:
            derived_src[k] = e
            del constants[k]
        elif k not in initial and k not in assignment:
            raise _unsupported("initial assignment to a non-constant quantity", k)
    for k in derived_src:
        sym(k)
    derived = _substitute_fixpoint(derived_src, symbols, "assignment rules")
    moving = {symbols[k] for k in all_states} | {TIME}
    for c in model.getListOfCompartments():
        if c.getId() in derived and derived[c.getId()].free_symbols & moving:
            raise _unsupported("compartment whose size changes (assignment rule in time or "
                               "states)", c.getId())
    dsubs = {symbols[k]: v for k, v in derived.items()}
    rhs = {k: sp.sympify(v).xreplace(dsubs) for k, v in rhs.items()}
    for k in all_states:
        if k in init_assign:
            initial[k] = init_assign[k]
    initial = {k: sp.sympify(v).xreplace(dsubs) for k, v in initial.items()}
    state_syms = {symbols[k] for k in all_states}
    for k, v in initial.items():
        if v.has(sp.nan):
            raise PetabError(f"SBML quantity '{k}' has no initial value")
        if v.free_symbols & state_syms:
            # initial values defined by other states' initial values
            initial[k] = v.xreplace({symbols[j]: initial[j] for j in all_states})
    for k, v in constants.items():
        if v != v:
            raise PetabError(f"SBML quantity '{k}' has no value")
    return SbmlOde(states=all_states, rhs=rhs, initial=initial, constants=constants,
                   derived=derived, symbols=symbols, compartment_of=compartment_of,
                   events=[e.replaced(dsubs) for e in events])
