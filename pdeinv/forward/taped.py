r"""Any user model written in plain Firedrake, differentiated by pyadjoint on a private tape.

:class:`TapedMap` wraps a callable ``forward(m) -> u`` (a state Function, or a sequence of them: one per
observation channel, e.g. the states at the observation times of a time loop) and an observation
operator :math:`B`.  It records ``forward`` once on a *private* tape (:func:`pdeinv._tape.recording`:
the caller's tape and annotation state are restored afterwards); at a new parameter value the tape is
*replayed* (its blocks recomputed, as pyadjoint's ``ReducedFunctional.__call__`` does), so the solvers
pyadjoint built for the blocks — forward, adjoint, tangent — are kept.  Then, with :math:`u_k` the
returned states,

- JVP: :math:`B_k\,\dot u_k` from one tangent-linear sweep of the tape;
- VJP: one adjoint sweep seeded with :math:`B_k^T w_k` on every output;
- second order: pyadjoint's second-order adjoint sweep after the tangent and the adjoint.

Replay is exact when the program's structure does not depend on :math:`m` (the same operations in the
same order: a fixed time loop, Newton solves inside one solve block).  A program whose control flow
depends on :math:`m` (adaptive time steps, an ``if`` on a computed value) must be recorded afresh at each
point: ``recording=Recording.EACH_POINT``, or :meth:`TapedMap.record_again` when the user knows it changed.

Inherited from pyadjoint (what it cannot differentiate, this map cannot either): operations outside
pyadjoint's overloaded types (NumPy on ``dat.data``, ``petsc4py`` calls, ``Function.dat`` writes) are
invisible to the tape; blocks without a tangent or second-order rule (some external operators, custom
blocks) make the JVP or Hessian fail with pyadjoint's own error; second derivatives of non-smooth
operations (``conditional``, ``abs``) are those of the branch taken.
"""

from __future__ import annotations

from pdeinv._checks import Choice, choice
from pdeinv._tape import recording
from pdeinv.maps import ParameterToObservable, check_function

__all__ = ["TapedMap", "Recording"]


class Recording(Choice):
    """When :class:`TapedMap` records the forward program."""

    REPLAY = "replay"  # record once, replay the tape at every new m (the program's structure is fixed)
    EACH_POINT = "each_point"  # record afresh at every new m (control flow that depends on m)


class TapedMap(ParameterToObservable):
    """Parameter-to-observable map of a user's Firedrake callable, derivatives by pyadjoint.

    Parameters
    ----------
    forward : callable
        ``forward(m) -> u`` or ``-> [u_0, ..., u_{K-1}]``: plain Firedrake code computing state
        Functions on ``observation.state_space`` from the parameter Function ``m``, one per observation
        channel (return copies — ``u.copy(deepcopy=True)`` — of a state that the loop overwrites).  It
        must not switch annotation off internally (pdeinv switches it on, on a private tape, around it).
    parameter_space : firedrake.FunctionSpace
    observation : observation operator
        On the state space, with as many channels as ``forward`` returns states.
    recording : Recording or {"replay", "each_point"}
        Record once and replay (default), or record at every new parameter value.
    """

    def __init__(self, forward, parameter_space, observation, *, recording: Recording | str = Recording.REPLAY):
        if not callable(forward):
            raise TypeError(f"TapedMap: forward must be a callable m -> state Function, got {type(forward).__name__}")
        self.recording = choice(Recording, recording, "TapedMap", "recording")
        super().__init__(parameter_space, observation)
        self.forward = forward
        self.state_space = observation.state_space
        self._tape = None
        self.recordings = 0

    def record_again(self) -> None:
        """Record the program afresh at the next evaluation (its structure changed)."""
        self._tape = None
        self.invalidate()

    def _outputs(self, u):
        """The states returned by ``forward`` as a list, checked: one per channel, distinct Functions."""
        outputs = list(u) if isinstance(u, (list, tuple)) else [u]
        if len(outputs) != self.observation.channels:
            raise ValueError(f"TapedMap: forward returned {len(outputs)} states, the observation has "
                             f"{self.observation.channels} channels")
        for k, y in enumerate(outputs):
            check_function(y, self.state_space, f"TapedMap: state {k} returned by forward")
        if len({id(y) for y in outputs}) != len(outputs):
            raise ValueError("TapedMap: forward returned one Function several times (a state the loop overwrites: "
                             "return u.copy(deepcopy=True) at each observation time)")
        return outputs

    def _record(self, m):
        from firedrake.adjoint import Control

        with recording() as tape:
            control = m.copy(deepcopy=True)
            # the Control is made *before* forward runs: a forward that modifies its argument in place
            # (m.assign(2*m)) is then differentiated from the value it was given, not from the modified one
            self._control = Control(control)
            self._outs = self._outputs(self.forward(control))
        self._tape = tape
        self.recordings += 1

    def _replay(self, m):
        from pyadjoint.tape import stop_annotating

        self._control.update(m.copy(deepcopy=True))
        self._tape.reset_blocks()
        self._control.mark_as_control()
        try:
            with stop_annotating():
                for block in self._tape.get_blocks():
                    block.recompute()
        finally:
            self._control.unmark_as_control()

    def _solve(self, m, prediction):
        if self._tape is None or self.recording is Recording.EACH_POINT:
            self._record(m)
        else:
            self._replay(m)
        for k, y in enumerate(self._states()):
            with y.dat.vec_ro as x:
                self.observation.observe(x, prediction, k)

    def _states(self):
        """The values of the outputs at the current m (after a replay: the recomputed ones)."""
        return [y.block_variable.saved_output for y in self._outs]

    def state(self, m):
        """The state(s) ``forward(m)`` (new Functions: one, or a list of one per channel)."""
        self._linearise(m)
        states = [y.copy(deepcopy=True) for y in self._states()]
        return states[0] if len(states) == 1 else states

    def _marked(self, stack, *, functional: bool):
        """Mark the tape's control dependents (and the outputs' dependencies) for a sweep."""
        tape = self._tape
        stack.enter_context(tape.marked_control_dependents([self._control]))
        if functional:
            for y in self._outs:
                stack.enter_context(tape.marked_functional_dependencies(y))

    def _jvp(self, dm):
        from contextlib import ExitStack

        from pyadjoint.tape import stop_annotating

        self._tape.reset_tlm_values()
        self._control.tlm_value = dm.copy(deepcopy=True)
        with stop_annotating(), ExitStack() as stack:
            self._marked(stack, functional=False)
            self._tape.evaluate_tlm(markings=True)
        out = self.observation.zero_data(name="jvp")
        for k, y in enumerate(self._outs):
            du = y.block_variable.tlm_value
            if du is not None:
                with du.dat.vec_ro as x:
                    self.observation.observe(x, out, k)
        return out

    def _adjoint(self, w):
        """One adjoint sweep seeded with B_k^T w_k on every output; the derivative (a Cofunction)."""
        from contextlib import ExitStack

        import firedrake as fd
        from pyadjoint.tape import stop_annotating

        self._tape.reset_variables()
        for k, y in enumerate(self._outs):
            seed = fd.Cofunction(self.state_space.dual())
            with seed.dat.vec_wo as b:
                b.zeroEntries()
                self.observation.observe_transpose_add(w, k, b)
            y.block_variable.adj_value = seed
        self._control.mark_as_control()
        try:
            with stop_annotating(), ExitStack() as stack:
                self._marked(stack, functional=True)
                self._tape.evaluate_adj(markings=True)
        finally:
            self._control.unmark_as_control()
        return self._control.get_derivative()

    def _vjp(self, w):
        return self._copy_or_zero(self._adjoint(w))

    def _second_order_vjp(self, w, dm):
        from contextlib import ExitStack

        from pyadjoint.tape import stop_annotating

        self._adjoint(w)  # adjoint values for this w on the tape
        self._jvp(dm)  # tangent values for dm
        self._tape.reset_hessian_values()
        for y in self._outs:
            y.block_variable.hessian_value = y.block_variable.output._ad_init_zero(dual=True)
        with stop_annotating(), ExitStack() as stack:
            self._marked(stack, functional=True)
            self._tape.evaluate_hessian(markings=True)
        return self._copy_or_zero(self._control.get_hessian())

    def _copy_or_zero(self, c):
        import firedrake as fd

        out = fd.Cofunction(self.parameter_space.dual())
        if c is not None:
            out.assign(c)
        return out
