"""SBML events whose trigger depends on time only (``time >= t0``, ``t0`` an expression of
constants that may be estimated), with exact forward sensitivities across the jump.

Reading
-------
:func:`read_events` turns a libsbml model's events into :class:`SbmlEvent` objects (sympy
trigger and assignments). Delays are refused (an error naming the event); priorities are
accepted only where they cannot matter (no two events may then fire at the same time: that
is checked when the problem is simulated).

Simulating
----------
:class:`TimeEvents` compiles, for one problem, each event's firing time ``t_e(v)`` (``v``
the constants that vary with the condition or the estimated parameters) and its
assignments ``y+ = A(t_e, y-, v)`` with their derivatives. The simulation integrates
piecewise between firing times and applies the assignments at ``t_e``; the sensitivities
``S = dy/dP`` jump by

``S+ = A_y S- + A_v dv/dP + (A_y f- + A_t - f+) dt_e/dP``,

``f-``/``f+`` the right-hand side just before and after (so an event whose time does not
depend on ``P`` only maps ``S`` through ``A_y`` and ``A_v``). Events at one time are
applied in declaration order, each to the state the previous one left.

SBML semantics kept: an event fires when its trigger goes from false to true. A trigger
true at ``t = 0`` fires there only when its ``initialValue`` is false. A measurement at the
firing time sees the state after the event.

Not supported (a :class:`~dynlearn.errors.PetabError` naming the event and why): triggers
that depend on the state (they need root finding during integration), triggers that are
not one comparison linear in time, delays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from dynlearn.errors import PetabError

__all__ = ["SbmlEvent", "TimeEvents", "read_events"]


@dataclass
class SbmlEvent:
    """One SBML event in sympy.

    Attributes
    ----------
    id : str
        The event's id (its meta id or ``event_<k>`` without one).
    trigger : sympy.Basic
        The trigger condition.
    assignments : dict str -> sympy.Expr
        Target id -> new value, in the model's symbols (and time).
    initial_value : bool
        The trigger's value "before" ``t = 0`` (SBML ``initialValue``).
    priority : sympy.Expr or None
    """

    id: str
    trigger: sp.Basic
    assignments: dict = field(default_factory=dict)
    initial_value: bool = True
    priority: sp.Expr | None = None

    def replaced(self, subs: dict) -> SbmlEvent:
        """The event with ``subs`` applied to its trigger and assignments."""
        return SbmlEvent(self.id, self.trigger.xreplace(subs),
                         {k: sp.sympify(v).xreplace(subs) for k, v in self.assignments.items()},
                         self.initial_value, self.priority)


def read_events(model, math: Callable) -> list[SbmlEvent]:
    """The events of a libsbml ``Model``.

    Parameters
    ----------
    model : libsbml.Model
    math : callable
        ``math(obj, what, sid) -> sympy.Expr``: the SBML math of ``obj`` in sympy (time
        already the translation's time symbol).

    Raises
    ------
    PetabError
        An event with a delay, or without a trigger.
    """
    out = []
    for k, e in enumerate(model.getListOfEvents()):
        eid = e.getId() or e.getMetaId() or f"event_{k}"
        if e.isSetDelay():
            raise PetabError(f"unsupported SBML construct: event '{eid}' with a delay")
        tr = e.getTrigger()
        if tr is None or tr.getMath() is None:
            raise PetabError(f"SBML event '{eid}' has no trigger")
        trigger = math(tr, "trigger of event", eid)
        assignments = {a.getVariable(): math(a, f"assignment of event '{eid}' to",
                                             a.getVariable())
                       for a in e.getListOfEventAssignments()}
        priority = (math(e.getPriority(), "priority of event", eid)
                    if e.isSetPriority() and e.getPriority().getMath() is not None else None)
        out.append(SbmlEvent(eid, trigger, assignments,
                             bool(tr.getInitialValue()) if tr.isSetInitialValue() else True,
                             priority))
    return out


def _firing_time(ev: SbmlEvent, time: sp.Symbol, allowed: set):
    """``(tau, rising, strict)`` of a trigger ``h(t) > 0`` (or ``>=``) with ``h`` linear
    in time: ``rising`` if it turns true at ``tau`` (else it turns false there)."""
    trig = ev.trigger
    if not isinstance(trig, sp.core.relational.Relational) or isinstance(
            trig, (sp.Eq, sp.Ne)):
        raise PetabError(f"unsupported SBML construct: event '{ev.id}': trigger {trig} is not "
                         "one comparison (<, <=, >, >=) of time with constants")
    bad = trig.free_symbols - allowed - {time}
    if bad:
        raise PetabError(f"unsupported SBML construct: event '{ev.id}': its trigger {trig} "
                         f"depends on {', '.join(sorted(s.name for s in bad))}, not on time "
                         "and constants only (a state-dependent trigger needs root finding "
                         "during the integration, which is not supported)")
    g = trig.lhs - trig.rhs
    if isinstance(trig, (sp.LessThan, sp.StrictLessThan)):
        g = -g
    slope = sp.diff(g, time)
    if time not in g.free_symbols or slope.free_symbols or sp.diff(slope, time) != 0:
        raise PetabError(f"unsupported SBML construct: event '{ev.id}': trigger {trig} is not "
                         "linear in time with a constant slope")
    tau = sp.simplify(time - g / slope)
    strict = isinstance(trig, (sp.StrictGreaterThan, sp.StrictLessThan))
    return tau, bool(slope > 0), strict


class TimeEvents:
    """The time-triggered events of a problem, compiled.

    Parameters
    ----------
    events : list of SbmlEvent
        In the model's symbols, constants that do not vary already numbers.
    states : list of sympy.Symbol
    vsyms : list of sympy.Symbol
        The constants that vary (their values ``v`` are the functions' argument).
    time : sympy.Symbol
    """

    def __init__(self, events: list[SbmlEvent], states: list, vsyms: list, time: sp.Symbol):
        self.ids = [e.id for e in events]
        self.n = len(states)
        self._has_priority = any(e.priority is not None for e in events)
        index = {s.name: i for i, s in enumerate(states)}
        allowed = set(vsyms)
        taus, self._rising, self._strict, self._initial = [], [], [], []
        self._assign = []
        for ev in events:
            tau, rising, strict = _firing_time(ev, time, allowed)
            taus.append(tau)
            self._rising.append(rising)
            self._strict.append(strict)
            self._initial.append(ev.initial_value)
            targets, exprs = [], []
            for name, expr in ev.assignments.items():
                if name not in index:
                    raise PetabError(f"unsupported SBML construct: event '{ev.id}' assigns "
                                     f"'{name}', which is not a state of the model")
                targets.append(index[name])
                exprs.append(sp.sympify(expr))
            args = [time, *states, *vsyms]
            M = sp.Matrix(exprs) if exprs else sp.zeros(0, 1)
            fns = dict(
                targets=np.array(targets, dtype=int),
                value=sp.lambdify(args, list(exprs), modules="numpy"),
                dy=sp.lambdify(args, M.jacobian(sp.Matrix(states)) if exprs else [],
                               modules="numpy"),
                dv=(sp.lambdify(args, M.jacobian(sp.Matrix(vsyms)), modules="numpy")
                    if exprs and vsyms else None),
                dt=sp.lambdify(args, [sp.diff(e, time) for e in exprs], modules="numpy"))
            self._assign.append(fns)
        self.nv = len(vsyms)
        self._tau = sp.lambdify([vsyms], taus, modules="numpy")
        Jt = sp.Matrix(taus).jacobian(sp.Matrix(vsyms)) if vsyms else sp.zeros(len(taus), 0)
        self._tau_jac = sp.lambdify([vsyms], Jt, modules="numpy")

    def __len__(self) -> int:
        return len(self.ids)

    def schedule(self, v, Dv, t_end: float) -> list[tuple[float, np.ndarray, list[int]]]:
        """The firing times in ``[0, t_end]`` for the constants ``v`` (``Dv = dv/dP``):
        ``(t_e, dt_e/dP, [event indices])``, in time order; an event firing at ``t = 0``
        has ``dt_e/dP = 0`` (it fires at the start whatever ``P``)."""
        tv = np.array(self._tau(v), dtype=float).reshape(-1)
        Jt = np.array(self._tau_jac(v), dtype=float).reshape(tv.size, -1) @ Dv
        fire = {}
        for i, tau in enumerate(tv):
            if self._rising[i]:
                true_at_0 = tau < 0 or (tau == 0 and not self._strict[i])
                if true_at_0:
                    at, d = (0.0, np.zeros(Dv.shape[1])) if not self._initial[i] else (None,
                                                                                        None)
                else:
                    at, d = float(tau), Jt[i]
            else:   # true until tau: fires only at the start
                true_at_0 = tau > 0 or (tau == 0 and not self._strict[i])
                at, d = ((0.0, np.zeros(Dv.shape[1])) if true_at_0 and not self._initial[i]
                         else (None, None))
            if at is None or at > t_end:
                continue
            key = next((t for t in fire if abs(t - at) <= 1e-12 * max(1.0, abs(at))), at)
            fire.setdefault(key, (d, []))[1].append(i)
        out = []
        for t in sorted(fire):
            d, idx = fire[t]
            if len(idx) > 1 and self._has_priority:
                raise PetabError("unsupported SBML construct: events "
                                 f"{', '.join(self.ids[i] for i in idx)} fire together at "
                                 f"t = {t:g} and have priorities")
            out.append((t, d, idx))
        return out

    def apply(self, indices, t: float, y, v, T=None, Dv=None, dt=None):
        """Apply events ``indices`` at time ``t`` to the state ``y``; with ``T`` (the total
        derivative ``dy/dP`` at the event, i.e. ``S- + f- dt_e/dP``) also return its image.

        Returns ``(y+, T+)`` (``T+`` None without ``T``)."""
        y = np.array(y, dtype=float)
        for i in indices:
            fn = self._assign[i]
            tg = fn["targets"]
            if tg.size == 0:
                continue
            args = (t, *y, *v)
            new = np.array(fn["value"](*args), dtype=float).reshape(-1)
            if T is not None:
                Ay = np.array(fn["dy"](*args), dtype=float).reshape(tg.size, self.n)
                rows = Ay @ T
                if fn["dv"] is not None:
                    Av = np.array(fn["dv"](*args), dtype=float).reshape(tg.size, self.nv)
                    rows += Av @ Dv
                At = np.array(fn["dt"](*args), dtype=float).reshape(-1)
                if np.any(At):
                    rows += np.outer(At, dt)
                T = T.copy()
                T[tg] = rows
            y[tg] = new
        return y, T
