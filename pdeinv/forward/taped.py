r"""Any user model written in plain Firedrake, differentiated by pyadjoint on a private tape.

:class:`TapedMap` wraps a callable ``forward(m) -> u`` (a state Function) and an observation
operator :math:`B`.  At each new parameter value it runs ``forward`` while recording on a *private*
tape (:func:`pdeinv._tape.recording`: the caller's tape and annotation state are restored
afterwards), and builds a pyadjoint ``ReducedFunctional`` of the state.  Then

- JVP: :math:`B\,\dot u` with :math:`\dot u` from pyadjoint's tangent-linear model (``tlm``);
- VJP: pyadjoint's adjoint with the seed :math:`B^T w` (``derivative(adj_input=...)``);
- second order: pyadjoint's Hessian action after the adjoint with that seed.

This is the universal route — any Firedrake code pyadjoint can record — and the slowest: every
derivative replays the tape block by block (see ``docs/own-model.md`` for measured costs).  Use
:class:`~pdeinv.forward.stationary.StationaryModel` or
:class:`~pdeinv.forward.timestepping.TimeSteppingModel` when the model fits them.

Re-recording at each new :math:`m` costs about one plain forward run (pyadjoint's annotation
overhead is small), less than a replay of the old tape.
"""

from __future__ import annotations

from pdeinv._tape import recording
from pdeinv.maps import ParameterToObservable, check_function

__all__ = ["TapedMap"]


class TapedMap(ParameterToObservable):
    """Parameter-to-observable map of a user's Firedrake callable, derivatives by pyadjoint.

    Parameters
    ----------
    forward : callable
        ``forward(m) -> u``: plain Firedrake code computing a state Function on
        ``observation.state_space`` from the parameter Function ``m``.  It must not switch annotation
        off internally (pdeinv switches it on, on a private tape, around the call).
    parameter_space : firedrake.FunctionSpace
    observation : observation operator
        On the state space, one channel (for time series, return the observed quantities from
        ``forward`` or use :class:`~pdeinv.forward.timestepping.TimeSteppingModel`).
    """

    def __init__(self, forward, parameter_space, observation):
        if not callable(forward):
            raise TypeError(f"TapedMap: forward must be a callable m -> state Function, got {type(forward).__name__}")
        if observation.channels != 1:
            raise ValueError("TapedMap: the observation must have one channel")
        super().__init__(parameter_space, observation)
        self.forward = forward
        self.state_space = observation.state_space
        self._rf = None
        self._u = None

    def _solve(self, m, prediction):
        from firedrake.adjoint import Control, ReducedFunctional

        self._rf = None
        with recording() as tape:
            control = m.copy(deepcopy=True)
            # the Control is made *before* forward runs: a forward that modifies its argument in place
            # (m.assign(2*m)) is then differentiated from the value it was given, not from the modified one
            ctrl = Control(control)
            u = self.forward(control)
            check_function(u, self.state_space, "TapedMap: the value returned by forward")
            rf = ReducedFunctional(u, ctrl, tape=tape)
        self._rf, self._u, self._tape = rf, u, tape
        with u.dat.vec_ro as x:
            self.observation.observe(x, prediction, 0)

    def state(self, m):
        """The state ``forward(m)`` (a new Function)."""
        self._linearise(m)
        return self._u.copy(deepcopy=True)

    def _seed(self, w):
        import firedrake as fd

        seed = fd.Cofunction(self.state_space.dual())
        with seed.dat.vec_wo as b:
            b.zeroEntries()
            self.observation.observe_transpose_add(w, 0, b)
        return seed

    def _jvp(self, dm):
        du = self._rf.tlm(dm)
        out = self.observation.zero_data(name="jvp")
        with du.dat.vec_ro as x:
            self.observation.observe(x, out, 0)
        return out

    def _vjp(self, w):
        return self._rf.derivative(adj_input=self._seed(w))

    def _second_order_vjp(self, w, dm):
        self._rf.derivative(adj_input=self._seed(w))  # adjoint values for this w on the tape
        return self._rf.hessian(dm)
