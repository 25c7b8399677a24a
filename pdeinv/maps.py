r"""Parameter-to-observable maps :math:`F = B \circ S` and their derivatives.

For a parameter :math:`m \in V_m` (a ``Function``), a map gives

- ``F(m)``: predicted data, a ``Function`` on the data space :math:`D`;
- ``jvp(m, dm)``: :math:`J\,\delta m = F'(m)\,\delta m \in D` (tangent-linear model);
- ``vjp(m, w)``: :math:`J^T w \in V_m^*` for a data-space ``Cofunction`` :math:`w` (adjoint model),
  returned as a ``Cofunction``; apply a Riesz map to get a gradient ``Function``.

The point of linearisation is always passed explicitly.  Each map keeps the state it computed at
the last point (the forward trajectory, factorised operators) and reuses it while ``m`` is unchanged,
so ``F(m)``, then ``vjp(m, .)`` and any number of ``jvp(m, .)`` cost one forward solve in all.

:class:`Misfit` combines a map, a noise model and data into
:math:`\Phi(m) = \phi(F(m); d)` with gradient :math:`J^T \partial_p\phi` and Gauss–Newton Hessian
action :math:`J^T W J\,\delta m`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter

import numpy as np

from pdeinv._tape import unannotated_methods
from pdeinv.errors import ForwardSolveError  # re-exported: pdeinv.maps.ForwardSolveError
from pdeinv.linalg.arrays import axpy, local_values

__all__ = ["ParameterToObservable", "MisfitTerm", "Misfit", "check_function", "ForwardSolveError", "check_finite"]



def check_finite(f, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless every value of the Function ``f`` is finite (on
    every rank: the check is collective)."""
    from mpi4py import MPI

    local = bool(np.all(np.isfinite(local_values(f))))
    if not f.function_space().mesh().comm.allreduce(local, op=MPI.LAND):
        raise ValueError(f"{name}: contains NaN or inf")


def check_function(f, space, name: str, *, dual: bool = False):
    """Raise one clear error unless ``f`` is a Function (or Cofunction if ``dual``) on ``space``."""
    import firedrake as fd

    kind = fd.Cofunction if dual else fd.Function
    want = space.dual() if dual else space
    from pdeinv._checks import describe_mismatch, describe_space

    if not isinstance(f, kind):
        raise TypeError(f"{name}: expected a firedrake.{kind.__name__} on {describe_space(want)}, "
                        f"got {type(f).__name__}")
    if f.function_space() != want:
        a, b = describe_mismatch(want, f.function_space())
        raise ValueError(f"{name}: expected a {kind.__name__} on {a}, got one on {b}")


@unannotated_methods
class ParameterToObservable(ABC):
    """Base class of parameter-to-observable maps.

    Subclasses implement :meth:`_solve` (forward solve at a new point, storing what the derivatives
    need and writing the prediction), :meth:`_jvp` and :meth:`_vjp`.

    Attributes
    ----------
    parameter_space : firedrake.FunctionSpace
    observation : pdeinv.observation.Observation
        A PointObservation, FieldObservation or IntegralObservation.
    data_space : firedrake.FunctionSpace
        ``observation.space``.
    counts : collections.Counter
        ``forward``, ``jvp``, ``vjp`` calls that did work, and ``linear_solves`` (factorised
        solves), ``factorisations`` and ``krylov_iterations`` (over all linear solves; one per solve
        for a direct solver) — the cost model in numbers.
    linear_solver : dict or None
        The PETSc options the state's linear solves run with, defaults resolved (what a run record
        reports); None for a map without one such solver.
    """

    linear_solver: dict | None = None
    is_linear: bool = False  # F'' = 0 (set by a model that knows): the full Hessian is the Gauss-Newton one

    def __init_subclass__(cls, **kwargs):
        # Every subclass (a user's too) runs its public methods with pyadjoint annotation off.
        super().__init_subclass__(**kwargs)
        unannotated_methods(cls)

    def __init__(self, parameter_space, observation):
        self.parameter_space = parameter_space
        self.observation = observation
        self.data_space = observation.space
        self.comm = parameter_space.mesh().comm
        self.counts: Counter = Counter()
        self._point = None  # copy of the m at which the stored state is valid
        self._prediction = None

    # ------------------------------------------------------------------------------ public interface
    def __call__(self, m):
        """Predicted data :math:`F(m)` (a new data-space Function)."""
        check_function(m, self.parameter_space, "m")
        self._linearise(m)
        return self._prediction.copy(deepcopy=True)

    def prediction(self, m):
        """:math:`F(m)` as the map's own stored Function (no copy; do not modify it).  For internal
        use on hot paths such as every Hessian action of a CG iteration; users call ``F(m)``."""
        check_function(m, self.parameter_space, "m")
        self._linearise(m)
        return self._prediction

    def jvp(self, m, dm):
        """Tangent-linear action :math:`F'(m)\\,\\delta m` (a data-space Function)."""
        check_function(m, self.parameter_space, "m")
        check_function(dm, self.parameter_space, "dm")
        self._linearise(m)
        self.counts["jvp"] += 1
        return self._jvp(dm)

    def vjp(self, m, w):
        """Adjoint action :math:`F'(m)^T w` for a data-space Cofunction ``w`` (a Cofunction on
        :math:`V_m^*`)."""
        check_function(m, self.parameter_space, "m")
        check_function(w, self.data_space, "w", dual=True)
        self._linearise(m)
        self.counts["vjp"] += 1
        return self._vjp(w)

    # ------------------------------------------------------------------------------- for subclasses
    @abstractmethod
    def _solve(self, m, prediction) -> None:
        """Forward solve at ``m``; store what jvp/vjp need; write F(m) into ``prediction``."""

    @abstractmethod
    def _jvp(self, dm): ...

    @abstractmethod
    def _vjp(self, w): ...

    def second_order_vjp(self, m, w, dm):
        r""":math:`\langle w, F''(m)[\delta m, \cdot]\rangle` as a Cofunction on :math:`V_m^*`: the term
        that full Newton adds to the Gauss–Newton Hessian.  Zero for maps linear in :math:`m`."""
        check_function(m, self.parameter_space, "m")
        check_function(dm, self.parameter_space, "dm")
        check_function(w, self.data_space, "w", dual=True)
        self._linearise(m)
        self.counts["second_order"] += 1
        return self._second_order_vjp(w, dm)

    def jvp_block(self, m, dms):
        """:meth:`jvp` of several directions at once (a list of data-space Functions).  Models with a
        blocked implementation solve all columns in one pass (PETSc ``KSPMatSolve``); the default loops."""
        check_function(m, self.parameter_space, "m")
        for i, dm in enumerate(dms):
            check_function(dm, self.parameter_space, f"dms[{i}]")
        self._linearise(m)
        self.counts["jvp"] += len(dms)
        return self._jvp_block(list(dms))

    def vjp_block(self, m, ws):
        """:meth:`vjp` of several data-space Cofunctions at once (a list of Cofunctions on :math:`V_m^*`)."""
        check_function(m, self.parameter_space, "m")
        for i, w in enumerate(ws):
            check_function(w, self.data_space, f"ws[{i}]", dual=True)
        self._linearise(m)
        self.counts["vjp"] += len(ws)
        return self._vjp_block(list(ws))

    def _jvp_block(self, dms):
        return [self._jvp(dm) for dm in dms]

    def _vjp_block(self, ws):
        return [self._vjp(w) for w in ws]

    def hessian_vjp(self, m, w, weight, dm):
        r"""The misfit's full Hessian action in one call:
        :math:`F'(m)^T\,\text{weight}(F'(m)\delta m) + \langle w, F''(m)[\delta m,\cdot]\rangle`, with
        :math:`w = \phi'(F(m))` and ``weight`` the map :math:`p \mapsto \phi''(F(m))\,p` (data-space
        Function -> Cofunction).  The default is :meth:`jvp` + :meth:`vjp` + :meth:`second_order_vjp`;
        models fuse them (a steady model needs 2 linear solves instead of 5)."""
        check_function(m, self.parameter_space, "m")
        check_function(dm, self.parameter_space, "dm")
        check_function(w, self.data_space, "w", dual=True)
        self._linearise(m)
        self.counts["hessian_vjp"] += 1
        return self._hessian_vjp(w, weight, dm)

    def hessian_vjp_block(self, m, w, weight, dms):
        """:meth:`hessian_vjp` of several directions at once (one ``w``, one ``weight``); models with a
        blocked implementation solve all tangents in one pass and all second-order adjoints in another
        (PETSc ``KSPMatSolve``); the default loops."""
        check_function(m, self.parameter_space, "m")
        for i, dm in enumerate(dms):
            check_function(dm, self.parameter_space, f"dms[{i}]")
        check_function(w, self.data_space, "w", dual=True)
        self._linearise(m)
        self.counts["hessian_vjp"] += len(dms)
        return self._hessian_vjp_block(w, weight, list(dms))

    def _hessian_vjp_block(self, w, weight, dms):
        return [self._hessian_vjp(w, weight, dm) for dm in dms]

    def _hessian_vjp(self, w, weight, dm):
        self.counts["jvp"] += 1
        self.counts["vjp"] += 1
        self.counts["second_order"] += 1
        h = self._vjp(weight(self._jvp(dm)))
        extra = self._second_order_vjp(w, dm)
        axpy(h, 1.0, extra)
        return h

    @property
    def second_derivatives(self) -> bool:
        """Whether the full Hessian (:meth:`second_order_vjp`) is available: the map is linear in m, or its
        class implements :meth:`_second_order_vjp` (StationaryModel, TimeSteppingModel, TapedMap)."""
        return self.is_linear or type(self)._second_order_vjp is not ParameterToObservable._second_order_vjp

    def _second_order_vjp(self, w, dm):
        if self.is_linear:
            import firedrake as fd

            return fd.Cofunction(self.parameter_space.dual())
        raise NotImplementedError(f"{type(self).__name__}: second derivatives (full Newton) are not implemented "
                                  "for this parameter; use the Gauss-Newton Hessian")

    def _linearise(self, m) -> None:
        if self._point is not None and _same_values(self._point, m):
            return
        check_finite(m, f"{type(self).__name__}: parameter m")
        if self._prediction is None:
            self._prediction = self.observation.zero_data(name="prediction")
        # Forget the old point first: a solve that fails half-way has already overwritten the stored
        # state, so nothing may be reused until a solve succeeds.
        self._point = None
        self.counts["forward"] += 1
        try:
            self._solve(m, self._prediction)
        except Exception as err:
            if isinstance(err, ForwardSolveError) or _is_solver_failure(err):
                raise ForwardSolveError(f"{type(self).__name__}: forward solve failed: {err}") from err
            raise
        local = bool(np.all(np.isfinite(local_values(self._prediction))))
        from mpi4py import MPI

        if not self.comm.allreduce(local, op=MPI.LAND):
            raise ForwardSolveError(f"{type(self).__name__}: the prediction contains NaN or inf "
                                    "(overflow in the model at this parameter?)")
        self._point = m.copy(deepcopy=True)

    def invalidate(self) -> None:
        """Forget the stored linearisation (call after changing the model's fixed inputs in place)."""
        self._point = None


# PETSc error codes that mean "the solve failed at this parameter": zero pivot in LU (71) or Cholesky (81),
# floating-point exception (72), KSP/SNES failed (82), not converged (91).  Every other code (an object in
# the wrong state, 73; out of memory, 55; a Python exception in a callback, 101, unless that exception is a
# solver failure itself) is a fault to report, not a rejected trial point.
_SOLVER_FAILURE_CODES = frozenset({71, 72, 81, 82, 91})
_PETSC_ERR_PYTHON = 101


def _is_solver_failure(err) -> bool:
    """Firedrake's ConvergenceError (nonlinear or linear solver diverged), a floating-point error, or a PETSc
    error whose code is a numerical failure of the solve (e.g. a zero pivot at an extreme coefficient)."""
    from firedrake.exceptions import ConvergenceError
    from petsc4py import PETSc

    if isinstance(err, (ConvergenceError, ArithmeticError, FloatingPointError)):
        return True
    if isinstance(err, PETSc.Error):
        if err.ierr == _PETSC_ERR_PYTHON:
            cause = err.__cause__ or err.__context__
            return cause is not None and not isinstance(cause, PETSc.Error) and _is_solver_failure(cause)
        return err.ierr in _SOLVER_FAILURE_CODES
    return False


def _same_values(a, b) -> bool:
    local = bool(np.array_equal(local_values(a), local_values(b)))
    from mpi4py import MPI

    return a.function_space().mesh().comm.allreduce(local, op=MPI.LAND)


class MisfitTerm(ABC):
    r"""The data term :math:`\Phi(m)` of a cost, as the solvers see it: value, gradient (a Cofunction),
    Gauss–Newton and full Hessian actions, and the forward map's work counters.

    :class:`Misfit` (one map, one noise model, one data set) and
    :class:`~pdeinv.ensemble.EnsembleMisfit` (a sum over experiments) are the library's; a user's own
    data term subclasses this and implements the abstract methods.
    """

    @property
    @abstractmethod
    def parameter_space(self):
        """The space of :math:`m`."""

    @abstractmethod
    def __call__(self, m) -> float:
        r""":math:`\Phi(m)`."""

    @abstractmethod
    def gradient(self, m):
        r""":math:`\Phi'(m)` as a Cofunction."""

    @abstractmethod
    def gauss_newton_action(self, m, dm):
        r""":math:`J^T W J\,\delta m` as a Cofunction."""

    def hessian_action(self, m, dm):
        """The full Hessian action (only where :attr:`second_derivatives`)."""
        raise NotImplementedError(f"{type(self).__name__} provides no full Hessian (second_derivatives is False)")

    def gauss_newton_action_block(self, m, dms):
        """:meth:`gauss_newton_action` of a list of directions (one at a time unless a subclass blocks them)."""
        return [self.gauss_newton_action(m, dm) for dm in dms]

    def hessian_action_block(self, m, dms):
        """:meth:`hessian_action` of a list of directions (one at a time unless a subclass blocks them)."""
        return [self.hessian_action(m, dm) for dm in dms]

    @property
    def second_derivatives(self) -> bool:
        """Whether :meth:`hessian_action` is available."""
        return False

    @property
    def counts(self) -> Counter:
        """Work counters of the forward solves behind the term (empty if it has none)."""
        return Counter()

    @property
    def scale(self) -> float:
        r"""The factor :math:`c` of a scaled term :math:`c\,\Phi` (1 for a plain misfit)."""
        return 1.0


@unannotated_methods
class Misfit(MisfitTerm):
    r"""Data misfit :math:`\Phi(m) = \phi(F(m); d)` of a map, a noise model and observed data.

    Parameters
    ----------
    forward_map : ParameterToObservable
    noise : pdeinv.noise.NoiseModel
        On the same observation as the map.
    data : firedrake.Function
        Observed data on the map's data space (e.g. from ``observation.from_array`` or
        ``noise.sample``).
    """

    def __init__(self, forward_map, noise, data):
        if noise.space != forward_map.data_space:
            raise ValueError("Misfit: the noise model and the map live on different data spaces")
        check_function(data, forward_map.data_space, "data")
        if not np.all(np.isfinite(local_values(data))):
            raise ValueError("Misfit: data contain NaN or inf")
        self.map = forward_map
        self.noise = noise
        self.data = data

    @property
    def parameter_space(self):
        return self.map.parameter_space

    @property
    def second_derivatives(self) -> bool:
        return self.map.second_derivatives

    @property
    def counts(self) -> Counter:
        return Counter(self.map.counts)

    def __call__(self, m) -> float:
        """:math:`\\Phi(m)`."""
        return self.noise.misfit(self.map.prediction(m), self.data)

    def gradient(self, m):
        """:math:`\\Phi'(m) = J^T \\partial_p\\phi` as a Cofunction (the VJP of the weighted residual)."""
        pred = self.map.prediction(m)
        return self.map.vjp(m, self.noise.gradient(pred, self.data))

    def gauss_newton_action(self, m, dm):
        """:math:`J^T W J\\,\\delta m` as a Cofunction (one JVP, one VJP)."""
        pred = self.map.prediction(m)
        jdm = self.map.jvp(m, dm)
        return self.map.vjp(m, self.noise.gauss_newton_weight(pred, self.data, jdm))

    def gauss_newton_action_block(self, m, dms):
        """:meth:`gauss_newton_action` for a list of directions, through the map's blocked JVP/VJP."""
        pred = self.map.prediction(m)
        jdms = self.map.jvp_block(m, dms)
        return self.map.vjp_block(m, [self.noise.gauss_newton_weight(pred, self.data, j) for j in jdms])

    def hessian_action(self, m, dm):
        """Full Hessian :math:`J^T \\phi'' J\\,\\delta m + \\langle\\phi', F''(m)[\\delta m,\\cdot]\\rangle`
        (for full Newton; may be indefinite away from the minimum)."""
        pred = self.map.prediction(m)
        return self.map.hessian_vjp(m, self.noise.gradient(pred, self.data),
                                    lambda jdm: self.noise.misfit_hessian(pred, self.data, jdm), dm)

    def hessian_action_block(self, m, dms):
        """:meth:`hessian_action` for a list of directions, through the map's blocked Hessian products."""
        pred = self.map.prediction(m)
        return self.map.hessian_vjp_block(m, self.noise.gradient(pred, self.data),
                                          lambda jdm: self.noise.misfit_hessian(pred, self.data, jdm), dms)
