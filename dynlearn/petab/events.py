"""SBML events, triggered by time or by the state, with exact forward sensitivities across
the jump.

Reading
-------
:func:`read_events` turns a libsbml model's events into :class:`SbmlEvent` objects (sympy
trigger and assignments). Delays are refused (an error naming the event); priorities are
accepted only where they cannot matter (no two events may then fire at the same time: that
is checked when the problem is simulated).

Simulating
----------
:class:`CompiledEvents` compiles, for one problem, every event's assignments ``y+ = A(t_e,
y-, v)`` with their derivatives (``v`` the constants that vary with the condition or the
estimated parameters), and its trigger:

* a *time trigger*, one comparison linear in time (``time >= t0``, ``t0`` an expression of
  constants), has a firing time ``t_e(v)`` known before the simulation
  (:meth:`CompiledEvents.schedule`): the simulation integrates piecewise between the
  firing times;
* any other trigger (``U < 1e-8``, ``x > k*y``, ``time > t0 && x < c``: comparisons of
  states, time and constants joined by and/or/not) is a *state trigger*: each comparison
  is a root function ``h(t, y, v)`` (positive where it holds) and
  :meth:`CompiledEvents.locate` steps the solver until one changes sign and the trigger
  goes from false to true; the firing time is the root of ``h`` on the step's dense output.
  Its derivative is ``dt_e/dP = -(h_y S- + h_v dv/dP) / (h_y f- + h_t)``
  (:meth:`CompiledEvents.firing_time_derivative`); a zero denominator (the solution grazes
  the surface ``h = 0``) is a :class:`~dynlearn.errors.SolveError` naming the event.

At a firing time the state and its sensitivities ``S = dy/dP`` jump by (one formula for
both kinds, :meth:`CompiledEvents.apply`)

``S+ = A_y S- + A_v dv/dP + (A_y f- + A_t - f+) dt_e/dP``,

``f-``/``f+`` the right-hand side just before and after (so an event whose time does not
depend on ``P`` only maps ``S`` through ``A_y`` and ``A_v``). Events at one time are
applied in declaration order, each to the state the previous one left. An assignment that
makes a state trigger true fires that event at the same time (a cascade).

SBML semantics kept: an event fires when its trigger goes from false to true. A trigger
true at ``t = 0`` fires there only when its ``initialValue`` is false. A measurement at the
firing time sees the state after the event. Without delays, the ``persistent`` flag cannot
matter (an event fires the moment its trigger turns true) and is ignored.

Loops: an event that keeps firing is stopped with a :class:`~dynlearn.errors.SolveError`
naming it: more than :data:`MAX_FIRINGS_AT_ONCE` firings at one time (assignments that
make each other's triggers true again), or more than :data:`MAX_FIRINGS` firings in one
simulation (a trigger that turns true again right after each firing).

Not supported (a :class:`~dynlearn.errors.PetabError` naming the event and why): triggers
with ``==``/``!=``, constant triggers, delays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.integrate
import sympy as sp
from scipy.optimize import brentq

from dynlearn.core.symbolic import Lambdified
from dynlearn.errors import PetabError, SolveError
from dynlearn.solve import STIFF_METHODS, SolveGuard

__all__ = ["MAX_FIRINGS", "MAX_FIRINGS_AT_ONCE", "CompiledEvents", "Firing", "SbmlEvent",
           "TriggerState", "read_events"]

#: firings of state-triggered events allowed in one simulation: more is taken for a loop
#: (a trigger that turns true again right after each firing) and stopped with a SolveError
MAX_FIRINGS = 1000
#: firings allowed at one time point (events whose assignments make each other's triggers,
#: or their own, true again at once)
MAX_FIRINGS_AT_ONCE = 100
# |h_y f + h_t| at most this times the sum of the magnitudes of its terms is zero to
# rounding: the solution grazes the trigger's surface and dt_e/dP does not exist
_GRAZING = 1e-12


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


def _time_firing(ev: SbmlEvent, time: sp.Symbol, allowed: set):
    """``(tau, rising, strict)`` of a trigger ``h(t) > 0`` (or ``>=``) that is one
    comparison linear in time with constant slope, free of states (``rising`` if it turns
    true at ``tau``, else it turns false there); ``None`` for any other trigger."""
    trig = ev.trigger
    if not isinstance(trig, sp.core.relational.Relational) or isinstance(
            trig, (sp.Eq, sp.Ne)):
        return None
    if trig.free_symbols - allowed - {time}:
        return None
    g = trig.lhs - trig.rhs
    if isinstance(trig, (sp.LessThan, sp.StrictLessThan)):
        g = -g
    slope = sp.diff(g, time)
    if time not in g.free_symbols or slope.free_symbols or sp.diff(slope, time) != 0:
        return None
    tau = sp.simplify(time - g / slope)
    strict = isinstance(trig, (sp.StrictGreaterThan, sp.StrictLessThan))
    return tau, bool(slope > 0), strict


def _root_function(rel) -> tuple[sp.Expr, bool]:
    """``(h, strict)`` with the comparison ``rel`` true where ``h > 0`` (``strict``) or
    ``h >= 0``."""
    h = rel.lhs - rel.rhs
    if isinstance(rel, (sp.LessThan, sp.StrictLessThan)):
        h = -h
    return h, isinstance(rel, (sp.StrictGreaterThan, sp.StrictLessThan))


@dataclass(frozen=True)
class _Truth:
    """A trigger as a function of its comparisons' truth values ``tr``: that of comparison
    ``index``, or the and (``every``) / or of ``parts``. (A class, not closures, so that a
    problem pickles.)"""

    index: int = -1
    parts: tuple = ()
    every: bool = True

    def __call__(self, tr) -> bool:
        if not self.parts:
            return bool(tr[self.index])
        if self.every:
            return all(p(tr) for p in self.parts)
        return any(p(tr) for p in self.parts)


def _trigger_function(ev: SbmlEvent, rel_index: Callable) -> Callable:
    """The trigger as a function of the truth values of its comparisons (their indices
    from ``rel_index``), after pushing negations into the comparisons (so that the trigger
    is an and/or of comparisons: it can only turn true when one of them does)."""
    expr = sp.logic.boolalg.to_nnf(ev.trigger, simplify=False)

    def build(e):
        if e in (sp.true, sp.false):
            raise PetabError(f"unsupported SBML construct: event '{ev.id}': its trigger "
                             f"{ev.trigger} is constant")
        if isinstance(e, (sp.Eq, sp.Ne)):
            raise PetabError(f"unsupported SBML construct: event '{ev.id}': trigger "
                             f"{ev.trigger} compares with == or != (a crossing has no "
                             "well-defined time)")
        if isinstance(e, sp.core.relational.Relational):
            return _Truth(index=rel_index(e))
        if isinstance(e, (sp.And, sp.Or)):
            return _Truth(parts=tuple(build(a) for a in e.args), every=isinstance(e, sp.And))
        raise PetabError(f"unsupported SBML construct: event '{ev.id}': trigger "
                         f"{ev.trigger} is not made of comparisons (<, <=, >, >=) joined by "
                         "and, or, not")
    return build(expr)


@dataclass
class TriggerState:
    """The state triggers during one simulation (made by :meth:`CompiledEvents.watch`).

    Attributes
    ----------
    rel : ndarray of bool
        The truth value of every comparison in a state trigger, as last seen.
    on : ndarray of bool
        Every event's trigger value as last seen (state-triggered events only).
    fired : ndarray of int
        Firings of every event so far.
    t_last : float
        The time of the last firing, ``at_once`` the firings at that time and
        ``fired_now`` those of every event.
    at_once : int
    fired_now : ndarray of int
    """

    rel: np.ndarray
    on: np.ndarray
    fired: np.ndarray
    t_last: float = float("nan")
    at_once: int = 0
    fired_now: np.ndarray | None = None


@dataclass(frozen=True)
class Firing:
    """State-triggered events found firing by :meth:`CompiledEvents.locate`.

    Attributes
    ----------
    t : float
        The firing time.
    indices : list of int
        The events firing, in declaration order.
    rel : int
        The comparison whose crossing fired them (its root function gives ``dt_e/dP``).
    """

    t: float
    indices: list
    rel: int


class CompiledEvents:
    """The SBML events of a problem, compiled: time triggers, state triggers and the
    assignments of both.

    Parameters
    ----------
    events : list of SbmlEvent
        In the model's symbols, constants that do not vary already numbers.
    states : list of sympy.Symbol
    vsyms : list of sympy.Symbol
        The constants that vary (their values ``v`` are the functions' argument).
    time : sympy.Symbol

    Attributes
    ----------
    ids : list of str
        The events' ids, in declaration order (the indices used by every method).
    time_indices, state_indices : list of int
        The events with a time trigger and with a state trigger.
    """

    def __init__(self, events: list[SbmlEvent], states: list, vsyms: list, time: sp.Symbol):
        self.ids = [e.id for e in events]
        self.n = len(states)
        self.nv = len(vsyms)
        self._has_priority = any(e.priority is not None for e in events)
        index = {s.name: i for i, s in enumerate(states)}
        allowed = set(vsyms)
        known = allowed | set(states) | {time}
        self._initial = [e.initial_value for e in events]
        self.time_indices, self.state_indices = [], []
        taus, self._rising, self._strict = [], [], []
        rels: list = []            # the comparisons of the state triggers, each once
        rel_of: dict = {}
        self._trigger: dict[int, Callable] = {}

        def rel_index(rel) -> int:
            if rel not in rel_of:
                rel_of[rel] = len(rels)
                rels.append(rel)
            return rel_of[rel]

        self._assign = []
        for i, ev in enumerate(events):
            fired = _time_firing(ev, time, allowed)
            if fired is not None:
                self.time_indices.append(i)
                taus.append(fired[0])
                self._rising.append(fired[1])
                self._strict.append(fired[2])
            else:
                bad = ev.trigger.free_symbols - known
                if bad:
                    raise PetabError(f"unsupported SBML construct: event '{ev.id}': its "
                                     f"trigger {ev.trigger} depends on "
                                     f"{', '.join(sorted(s.name for s in bad))}, which is "
                                     "neither a state, time nor a constant")
                self.state_indices.append(i)
                self._trigger[i] = _trigger_function(ev, rel_index)
            self._assign.append(self._compile_assignments(ev, index, states, vsyms, time))
        # time triggers: firing times and their derivatives
        self._tau = Lambdified([vsyms], taus)
        Jt = sp.Matrix(taus).jacobian(sp.Matrix(vsyms)) if vsyms and taus else sp.zeros(
            len(taus), len(vsyms))
        self._tau_jac = Lambdified([vsyms], Jt)
        # state triggers: root functions h (one per comparison) and their derivatives
        hs = [_root_function(r) for r in rels]
        self._rel_strict = np.array([s for _, s in hs], dtype=bool)
        self._h = self._h_y = self._h_t = self._h_v = None
        if hs:
            H = sp.Matrix([h for h, _ in hs])
            args = (time, states, vsyms)
            self._h = Lambdified(args, list(H))
            self._h_y = Lambdified(args, H.jacobian(sp.Matrix(states)))
            self._h_t = Lambdified(args, list(H.diff(time)))
            if vsyms:
                self._h_v = Lambdified(args, H.jacobian(sp.Matrix(vsyms)))
        # the states each comparison reads (re-evaluated when an assignment moves them)
        state_set = set(states)
        self._rel_states = [np.array(sorted(index[s.name] for s in h.free_symbols
                                            if s in state_set), dtype=int) for h, _ in hs]

    @staticmethod
    def _compile_assignments(ev: SbmlEvent, index, states, vsyms, time) -> dict:
        targets, exprs = [], []
        for name, expr in ev.assignments.items():
            if name not in index:
                raise PetabError(f"unsupported SBML construct: event '{ev.id}' assigns "
                                 f"'{name}', which is not a state of the model")
            targets.append(index[name])
            exprs.append(sp.sympify(expr))
        args = [time, *states, *vsyms]
        M = sp.Matrix(exprs) if exprs else sp.zeros(0, 1)
        return dict(
            targets=np.array(targets, dtype=int),
            value=Lambdified(args, list(exprs)),
            dy=Lambdified(args, M.jacobian(sp.Matrix(states)) if exprs else []),
            dv=(Lambdified(args, M.jacobian(sp.Matrix(vsyms)))
                if exprs and vsyms else None),
            dt=Lambdified(args, [sp.diff(e, time) for e in exprs]))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_state_events(self) -> bool:
        """Whether any event has a state trigger (the simulation must watch for it)."""
        return bool(self.state_indices)

    # --- time triggers --------------------------------------------------------------------
    def schedule(self, v, Dv, t_end: float) -> list[tuple[float, np.ndarray, list[int]]]:
        """The firing times of the time-triggered events in ``[0, t_end]`` for the
        constants ``v`` (``Dv = dv/dP``): ``(t_e, dt_e/dP, [event indices])``, in time
        order; an event firing at ``t = 0`` has ``dt_e/dP = 0`` (it fires at the start
        whatever ``P``)."""
        if not self.time_indices:
            return []
        tv = np.array(self._tau(v), dtype=float).reshape(-1)
        Jt = np.array(self._tau_jac(v), dtype=float).reshape(tv.size, -1) @ Dv
        fire = {}
        for k, tau in enumerate(tv):
            i = self.time_indices[k]
            if self._rising[k]:
                true_at_0 = tau < 0 or (tau == 0 and not self._strict[k])
                if true_at_0:
                    at, d = ((0.0, np.zeros(Dv.shape[1])) if not self._initial[i]
                             else (None, None))
                else:
                    at, d = float(tau), Jt[k]
            else:   # true until tau: fires only at the start
                true_at_0 = tau > 0 or (tau == 0 and not self._strict[k])
                at, d = ((0.0, np.zeros(Dv.shape[1])) if true_at_0 and not self._initial[i]
                         else (None, None))
            if at is None or at > t_end:
                continue
            key = next((t for t in fire if abs(t - at) <= 1e-12 * max(1.0, abs(at))), at)
            fire.setdefault(key, (d, []))[1].append(i)
        out = []
        for t in sorted(fire):
            d, idx = fire[t]
            self._check_priorities(idx, t)
            out.append((t, d, idx))
        return out

    def _check_priorities(self, idx, t):
        if len(idx) > 1 and self._has_priority:
            raise PetabError("unsupported SBML construct: events "
                             f"{', '.join(self.ids[i] for i in idx)} fire together at "
                             f"t = {t:g} and have priorities")

    # --- state triggers -------------------------------------------------------------------
    def _h_values(self, t, y, v) -> np.ndarray:
        return np.array(self._h(t, y, v), dtype=float).reshape(-1)

    def _truth(self, h) -> np.ndarray:
        return np.where(self._rel_strict, h > 0, h >= 0)

    def _update(self, st: TriggerState) -> list[int]:
        """Recompute the state triggers from ``st.rel``; the events that turned true."""
        fired = []
        for i in self.state_indices:
            now = self._trigger[i](st.rel)
            if now and not st.on[i]:
                fired.append(i)
            st.on[i] = now
        return fired

    def watch(self, t, y, v) -> tuple[TriggerState, list[int]]:
        """Start watching the state triggers at the start ``(t, y)`` of a simulation.

        Returns the :class:`TriggerState` and the events that fire at the start (their
        trigger true there and their ``initialValue`` false)."""
        st = TriggerState(rel=self._truth(self._h_values(t, y, v)),
                          on=np.zeros(len(self.ids), dtype=bool),
                          fired=np.zeros(len(self.ids), dtype=int))
        for i in self.state_indices:
            st.on[i] = self._initial[i]      # the trigger's value "before" the start
        return st, self._update(st)

    def locate(self, vf, method: str, rtol: float, atol: float, t0: float, t1: float, y0,
               v, st: TriggerState, where: str = "") -> Firing | None:
        """The first firing of a state-triggered event in ``(t0, t1]``, integrating the
        state (no sensitivities) from ``y0`` at ``t0``.

        Each step of the solver (``method``, scipy's, with the exact Jacobian for stiff
        methods) is checked for comparisons that changed their truth value; their crossing
        times are the roots of their ``h`` on the step's dense output, taken in time order
        and recorded in ``st`` until a trigger turns true. A comparison found on the other
        side of zero right after a restart (a rounding error at the last firing) is not a
        crossing.

        Returns
        -------
        Firing or None
            None when no event fires before ``t1`` (``st`` then holds the truth values at
            ``t1``).

        Raises
        ------
        SolveError
            The solver failed (or the guards of :class:`dynlearn.solve.SolveGuard`).
        """
        if not self.state_indices or not t1 > t0:
            return None
        solver_cls = getattr(scipy.integrate, method, None)
        if not (isinstance(solver_cls, type) and issubclass(solver_cls, scipy.integrate.
                                                            OdeSolver)):
            raise PetabError(f"state-triggered events need a scipy solver, not '{method}'")
        guard = SolveGuard(method, where=where, span=(t0, t1))
        kw = dict(rtol=rtol, atol=atol)
        if method in STIFF_METHODS:
            kw["jac"] = guard.wrap_jac(vf.jac)
        with guard.solver_failures():
            solver = solver_cls(guard.wrap_fun(vf.fun), t0, np.asarray(y0, dtype=float), t1,
                                **kw)
            t_old = t0
            while solver.status == "running":
                message = solver.step()
                if solver.status == "failed":
                    raise SolveError(f"the {method} solver failed{where} at t={solver.t:g} "
                                     f"while watching the event triggers: {message}",
                                     t=float(solver.t), solver_message=str(message))
                t_new = solver.t
                h_new = self._h_values(t_new, solver.y, v)
                now = self._truth(h_new)
                changed = np.flatnonzero(now != st.rel)
                if changed.size:
                    hit = self._crossings(solver.dense_output(), t_old, t_new, h_new, now,
                                          changed, v, st)
                    if hit is not None:
                        return hit
                t_old = t_new
        return None

    def _crossings(self, sol, t_old, t_new, h_new, now, changed, v, st) -> Firing | None:
        """Order the crossings of the comparisons ``changed`` in ``(t_old, t_new]`` and
        record them in ``st`` until a trigger turns true."""
        at = []
        for j in changed:
            def h(t, j=j):
                return self._h_values(t, sol(t), v)[j]
            h_old = h(t_old)
            if (h_old > 0 if self._rel_strict[j] else h_old >= 0) == bool(now[j]):
                tc = t_old        # already on the new side at the step's start
            elif h_new[j] == 0.0:
                tc = t_new
            else:
                tc = brentq(h, t_old, t_new, xtol=1e-15 * max(1.0, abs(t_new)),
                            rtol=4 * np.finfo(float).eps)
            at.append((tc, j))
        at.sort()
        for tc, j in at:
            st.rel[j] = now[j]
            fired = self._update(st)
            if fired:
                self._check_priorities(fired, tc)
                return Firing(float(tc), fired, int(j))
        return None

    def firing_time_derivative(self, hit: Firing, t: float, y, S, f, v, Dv) -> np.ndarray:
        """``dt_e/dP = -(h_y S- + h_v dv/dP) / (h_y f- + h_t)`` of a state-triggered firing
        (``h`` the root function of the comparison that crossed, ``S- = dy/dP`` and ``f-``
        the right-hand side just before the event).

        Raises
        ------
        SolveError
            The denominator is zero to rounding: the solution grazes the trigger's surface
            there, and the firing time has no derivative.
        """
        j = hit.rel
        hy = np.array(self._h_y(t, y, v), dtype=float).reshape(-1, self.n)[j]
        ht = float(np.array(self._h_t(t, y, v), dtype=float).reshape(-1)[j])
        terms = hy * np.asarray(f, dtype=float)
        den = float(np.sum(terms)) + ht
        scale = float(np.sum(np.abs(terms))) + abs(ht)
        if not np.isfinite(den) or abs(den) <= _GRAZING * scale or scale == 0.0:
            raise SolveError(f"event {', '.join(repr(self.ids[i]) for i in hit.indices)}: "
                             f"the solution grazes its trigger's surface at t={t:g} "
                             f"(dh/dt = {den:g}), so its firing time has no derivative")
        num = hy @ S
        if self._h_v is not None:
            hv = np.array(self._h_v(t, y, v), dtype=float).reshape(-1, self.nv)[j]
            num = num + hv @ Dv
        return -num / den

    def after_jump(self, st: TriggerState, t: float, y_before, y_after, v) -> list[int]:
        """Update the comparisons that read a state an assignment at ``t`` moved, and those
        left exactly on their boundary (``h = 0``: a state set to the threshold, whose
        value there is not the side it crossed to); the state-triggered events that this
        turns true (they fire at ``t`` too)."""
        if not self.state_indices:
            return []
        moved = np.asarray(y_after) != np.asarray(y_before)
        h = self._h_values(t, y_after, v)
        for j, idx in enumerate(self._rel_states):
            if h[j] == 0.0 or (idx.size and np.any(moved[idx])):
                st.rel[j] = h[j] > 0 if self._rel_strict[j] else h[j] >= 0
        fired = self._update(st)
        self._check_priorities(fired, t)
        return fired

    def record(self, st: TriggerState, indices, t: float) -> None:
        """Count the firings of ``indices`` at ``t``.

        Raises
        ------
        SolveError
            More than :data:`MAX_FIRINGS_AT_ONCE` firings at one time, or more than
            :data:`MAX_FIRINGS` in the simulation: the events loop.
        """
        if not indices:
            return
        if t != st.t_last:
            st.at_once, st.t_last = 0, t
            st.fired_now = np.zeros_like(st.fired)
        st.at_once += len(indices)
        st.fired[list(indices)] += 1
        st.fired_now[list(indices)] += 1
        if st.at_once > MAX_FIRINGS_AT_ONCE:
            names = ", ".join(f"'{self.ids[i]}' ({st.fired_now[i]} times)"
                              for i in np.argsort(-st.fired_now, kind="stable")
                              if st.fired_now[i])
            raise SolveError(f"events fired {st.at_once} times at t={t:g}: {names}; their "
                             "assignments make their own or each other's triggers true again "
                             "at once, a loop", t=float(t))
        total = int(st.fired.sum())
        if total > MAX_FIRINGS:
            worst = int(np.argmax(st.fired))
            raise SolveError(f"event '{self.ids[worst]}' fired {st.fired[worst]} times by "
                             f"t={t:g} ({total} firings in all, more than MAX_FIRINGS = "
                             f"{MAX_FIRINGS}): its trigger turns true again right after "
                             "each firing, a loop", t=float(t))

    # --- assignments (both kinds) ---------------------------------------------------------
    def apply(self, indices, t: float, y, v, T=None, Dv=None, dt=None):
        """Apply events ``indices`` at time ``t`` to the state ``y``; with ``T`` (the total
        derivative ``dy/dP`` at the event, i.e. ``S- + f- dt_e/dP``) also return its image
        ``A_y T + A_v dv/dP + A_t dt_e/dP`` (the caller subtracts ``f+ dt_e/dP``).

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
