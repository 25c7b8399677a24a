r"""Generic time-dependent models from a user's step residual
:math:`F(u_{n+1}, u_n, m; v) = 0`, :math:`n = 0, \dots, N-1` (or a multistep
:math:`F(u_{n+1}, u_n, \dots, u_{n-k+1}, m; v)`, written as the one-step residual of its history by
:mod:`pdeinv.forward.history`).

The user writes one step of any scheme (θ-schemes, IMEX, BDF2, leapfrog, ...) in UFL with their own
Functions ``state`` (:math:`u_{n+1}`), ``previous`` (:math:`u_n`, or the tuple of previous states) and
``parameter`` (:math:`m`); the initial condition :math:`u_0` is the parameter, a UFL map
:math:`\Pi_V P(m)` of it, or fixed.  Tangent, adjoint and second-order step forms are derived with UFL.
With :math:`A_n = \partial_{u_{n+1}}F`, :math:`C_n = \partial_{u_n}F`,
:math:`F^m_n = \partial_m F` at step :math:`n` and :math:`B` the observation at the observed steps:

- tangent: :math:`A_n\,\delta u_{n+1} = -C_n\,\delta u_n - F^m_n\,\delta m`,
  :math:`\delta u_0 = u_0'(m)\,\delta m`;
- adjoint, backwards from :math:`\mu_{N+1} = 0`:
  :math:`A_n^T\mu_{n+1} = B^T w_{n+1} - C_{n+1}^T\mu_{n+2}`, and
  :math:`J^T w = -\sum_n (F^m_n)^T\mu_{n+1} + u_0'(m)^T(B^T w_0 - C_0^T\mu_1)`;
- second order: the same backward recursion for :math:`\hat\mu` with the second derivatives of
  :math:`\ell_n = F_n(\cdot\,; \mu_{n+1})` in the direction :math:`(\delta u_{n+1}, \delta u_n, \delta m)`
  as its sources (see :meth:`TimeSteppingModel._second_order_forms`).

A diagonal step operator (a lumped mass: an explicit scheme) is applied as a pointwise scaling.

Two engines, chosen automatically from the form:

*Constant step operator*
    The PDE is linear in the state and the operators do not depend on time (e.g. heat,
    advection–diffusion–reaction with a fixed wind).  :math:`A` and :math:`C` are assembled once
    per new :math:`m` (once in all when they do not depend on :math:`m`), :math:`A` is factorised
    once, and every step of the forward, tangent and adjoint sweeps is a matrix–vector product and a
    pair of triangular solves on PETSc Vecs.  The parameter terms are assembled once per JVP as
    matrices in the state
    (:math:`\partial_{u}F^m[\delta m]`); in the adjoint they are accumulated as :math:`\sum_n\mu_n`
    and assembled once when they do not depend on the state, else assembled per step (a 1-form).

*General*
    Nonlinear in the state, or time-dependent operators.  The forward solves each step with
    Firedrake's nonlinear solver; tangent and adjoint assemble and factorise :math:`A_n` per step
    (reused by that step's solve), so they need the states :math:`u_n, u_{n+1}`.  Those come from
    the stored trajectory, or — with ``checkpointing`` — from a ``checkpoint_schedules`` multistage
    (binomial, Revolve-optimal) schedule that keeps at most ``snapshots_in_ram`` states in memory and
    ``snapshots_on_disk`` on disk and recomputes the rest.

The trajectory is kept only when the derivatives need it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from pdeinv.checkpointing import Checkpointing
from pdeinv.forward._forms import (
    at_zero,
    check_bcs,
    check_observation,
    check_parameter,
    check_state_space,
    depends_on,
    derive,
    homogeneous_bcs,
    is_symmetric_operator,
    is_zero,
    test_function_of,
)
from pdeinv.forward.history import HistoryObservation, Start, stack_history, start_entry
from pdeinv.linalg.arrays import axpy, local_values
from pdeinv.linalg.device import check_device, linear_parameters
from pdeinv.linalg.operator import DirichletOperator, petsc_nullspace
from pdeinv.maps import ParameterToObservable

__all__ = ["TimeSteppingModel", "Checkpointing", "observation_steps"]

_prefix = itertools.count()


def observation_steps(times, *, dt: float, steps: int, name: str) -> list[int]:
    """Step indices :math:`n` of observation times :math:`t = n\\Delta t` (default: every step
    :math:`1..N`); one clear error for times off the grid or not increasing."""
    if times is None:
        return list(range(1, steps + 1))
    end = steps * dt
    out = []
    for t in np.atleast_1d(np.asarray(times, dtype=float)):
        n = round(t / dt)
        if not (0 <= n <= steps) or abs(n * dt - t) > 1e-9 * max(1.0, end):
            raise ValueError(f"{name}: observation time {t} is not a time step in [0, {end}] (dt = {dt})")
        out.append(n)
    if len(set(out)) != len(out) or out != sorted(out):
        raise ValueError(f"{name}: observation_times must be strictly increasing")
    return out


def _check_functions(name, state, previous, parameter):
    """``previous`` as a list (one Function per previous state), each checked."""
    import firedrake as fd

    check_parameter(parameter, name)
    previous = list(previous) if isinstance(previous, (list, tuple)) else [previous]
    if not previous:
        raise ValueError(f"{name}: previous must be a Function u_n, or a sequence (u_n, u_(n-1), ...)")
    for key, f in [("state", state)] + [("previous", f) for f in previous]:
        if not isinstance(f, fd.Function):
            raise TypeError(f"{name}: {key} must be a firedrake.Function, got {type(f).__name__}")
    functions = [state, parameter, *previous]
    if len({id(f) for f in functions}) != len(functions):
        raise ValueError(f"{name}: state, previous and parameter must be different Functions (the same "
                         "Function passed twice would make a different model: u_(n+1) and u_n are two values)")
    if any(f.function_space() != state.function_space() for f in previous):
        raise ValueError(f"{name}: state and previous must live on the same space")
    return previous


def _check_inputs(name, residual, state, previous, parameter, *, steps, dt, observation, observation_times,
                  initial_condition, bcs, checkpointing):
    """One clear error for each malformed input; the previous states (a list), the test function, the
    checked conditions, the observed steps and the initial states (one entry per previous state)."""
    import ufl

    previous = _check_functions(name, state, previous, parameter)
    if not isinstance(residual, ufl.form.BaseForm):
        raise TypeError(f"{name}: residual must be a UFL Form, got {type(residual).__name__}")
    v = test_function_of(residual, name)
    if v.function_space() != state.function_space():
        raise ValueError(f"{name}: the residual's test function is not on the state space")
    if state not in residual.coefficients():
        raise ValueError(f"{name}: the residual does not depend on the state Function (u_{{n+1}})")
    if not (isinstance(steps, (int, np.integer)) and steps >= 1):
        raise ValueError(f"{name}: steps must be a positive integer, got {steps!r}")
    if not (isinstance(dt, (int, float, np.floating)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"{name}: dt must be a positive number, got {dt!r}")
    if checkpointing is not None and not isinstance(checkpointing, Checkpointing):
        raise TypeError(f"{name}: checkpointing must be a pdeinv Checkpointing, got {type(checkpointing).__name__}")
    check_observation(observation, state.function_space(), name)
    V = state.function_space()
    obs_steps = observation_steps(observation_times, dt=float(dt), steps=int(steps), name=name)
    if observation.channels != len(obs_steps):
        raise ValueError(f"{name}: the observation has {observation.channels} channels but there are "
                         f"{len(obs_steps)} observation times")
    starts = _starts(initial_condition, V, parameter, len(previous), name)
    if all(e.kind is Start.FIXED for e in starts) and parameter not in residual.coefficients():
        raise ValueError(f"{name}: the residual does not depend on the parameter and the initial condition "
                         "is fixed")
    bcs = check_bcs(bcs, V, name)
    check_state_space(V, name)
    return previous, v, bcs, obs_steps, starts


def _starts(initial_condition, V, parameter, k, name):
    """The initial states (u_0, ..., u_{1-k}) of a k-step scheme: a sequence of k values, or one value
    for all of them (a history at rest)."""
    values = list(initial_condition) if isinstance(initial_condition, (list, tuple)) else [initial_condition] * k
    if len(values) != k:
        raise ValueError(f"{name}: a {k}-step scheme needs {k} initial states (u_0, ..., u_(1-k)), "
                         f"got {len(values)}")
    return [start_entry(value, V, parameter, name) for value in values]


class TimeSteppingModel(ParameterToObservable):
    r"""Parameter-to-observable map of a time-dependent PDE given by its step residual.

    Parameters
    ----------
    residual : ufl.Form
        :math:`F(u_{n+1}, u_n, m; v)`, a 1-form written with the Functions ``state``, ``previous``,
        ``parameter`` (and ``time`` if given).
    state : firedrake.Function
        :math:`u_{n+1}` on the state space (the model assigns into it).
    previous : firedrake.Function or sequence of firedrake.Function
        :math:`u_n` — or :math:`(u_n, u_{n-1}, \dots, u_{n-k+1})` for a :math:`k`-step scheme — on the
        state space.
    parameter : firedrake.Function
        :math:`m` as used in the residual (or only the initial condition).
    steps : int
        :math:`N`.
    dt : float
        Step size (for observation times; the residual carries its own ``dt``).
    observation : observation operator on the state space
        With one channel per observation time.
    observation_times : sequence of float, optional
        Multiples of ``dt`` in :math:`[0, N\Delta t]`; default every step :math:`\Delta t..N\Delta t`.
    initial_condition : "parameter", number, UFL expression or Function, or a sequence of k of them
        :math:`u_0 = m` (the parameter space must be the state space), :math:`u_0 = \Pi_V P(m)` for a UFL
        expression :math:`P(m)` of the parameter (on another space of the same mesh too), or a fixed field;
        for a :math:`k`-step scheme :math:`(u_0, u_{-1}, \dots, u_{1-k})`, or one value for all.
    bcs : sequence of firedrake.DirichletBC, optional
        Conditions on :math:`u_{n+1}` (values must not depend on :math:`m`; on the constant-operator
        engine not on time either).
    time : firedrake.Constant, optional
        Set to :math:`t_{n+1}` before step :math:`n` (for time-dependent forcing).
    solver_parameters : dict, optional
        PETSc options of the forward step solve.
    linear_solver_parameters : dict, optional
        PETSc options of the tangent/adjoint solves (default direct).
    checkpointing : Checkpointing, optional
        Bound the memory of the derivatives (only used when they need the states).
    nullspace, transpose_nullspace : firedrake.VectorSpaceBasis or MixedVectorSpaceBasis, optional
        The nullspace of the step operator :math:`\partial_{u_{n+1}}F` (e.g. the constant pressure of an
        enclosed flow) and of its transpose (default: the same).  Every state is returned orthogonal to it
        (e.g. pressure of zero dof mean), and the derivatives are those of that gauge-fixed trajectory;
        the default linear solver is then MUMPS LU with null-pivot detection (one-step residuals only).
    keep_linearisations : bool
        Keep every step's factorised Jacobian at the current m (general engine): the JVPs and VJPs after
        the first at one m factorise nothing, at the price of N factorisations in memory.
    """

    def __init__(self, residual, state, previous, parameter, *, steps: int, dt: float, observation,
                 observation_times=None, initial_condition="parameter", bcs=(), time=None,
                 solver_parameters=None, linear_solver_parameters=None, checkpointing: Checkpointing | None = None,
                 nullspace=None, transpose_nullspace=None, keep_linearisations: bool = False):
        name = "TimeSteppingModel"
        previous, v, bcs, self.obs_steps, starts = _check_inputs(
            name, residual, state, previous, parameter, steps=steps, dt=dt, observation=observation,
            observation_times=observation_times, initial_condition=initial_condition, bcs=bcs,
            checkpointing=checkpointing)
        self.steps, self.dt = int(steps), float(dt)
        super().__init__(parameter.function_space(), observation)
        if len(previous) > 1 and (nullspace is not None or transpose_nullspace is not None):
            raise ValueError(f"{name}: a nullspace is not supported with a multistep residual")
        if not isinstance(keep_linearisations, bool):
            raise TypeError(f"{name}: keep_linearisations must be True or False, got {keep_linearisations!r}")
        residual, state, previous, v, bcs = self._set_up_history(residual, state, previous, v, bcs, name)
        V = state.function_space()
        ns, tns = (petsc_nullspace(b, V, name) for b in (nullspace, transpose_nullspace))
        self.state_space = V
        self._channel = {n: k for k, n in enumerate(self.obs_steps)}
        self._u, self._uo, self._m, self._v, self._time = state, previous, parameter, v, time
        self._bcs, self._hbcs = bcs, homogeneous_bcs(bcs)
        self._starts = starts
        self.checkpointing = checkpointing

        self.keep_linearisations = keep_linearisations
        self._kept, self._kept_counts = {}, [0, 0]
        self._derive_forms(residual)
        prefix = self._prefix = f"pdeinv_timestepping_{next(_prefix)}_"
        symmetric = is_symmetric_operator(self._A_form, self._hbcs, (state, previous, parameter))
        if self.constant_operator:
            params = solver_parameters if solver_parameters is not None else linear_solver_parameters
            self._set_up_constant_operator(residual, params, symmetric, prefix, ns, tns)
        else:
            self._set_up_nonlinear(residual, solver_parameters, linear_solver_parameters, symmetric, prefix, ns, tns,
                                   (nullspace, transpose_nullspace))
        self.linear_solver = self._A.solver_parameters
        self._trajectory = None
        self._work_vecs, self._work_mats = {}, {}
        self._d0 = self._rhs.copy(deepcopy=True)  # a zero Cofunction on V*
        self._step_rhs = self._vec()
        self.newton_iterations = 0
        self.recomputed_steps = 0
        self.peak_stored_states = 0

    def _set_up_history(self, residual, state, previous, v, bcs, name):
        """A multistep residual as the one-step residual of its history (:mod:`pdeinv.forward.history`):
        the residual, state, previous state, test function and conditions the engine works with."""
        self._history = None
        self._obs = self.observation  # what the sweeps observe: the state, or the first copy of a history
        if len(previous) == 1:
            return residual, state, previous[0], v, bcs
        h = self._history = stack_history(residual, state, previous, v, bcs, name)
        self._obs = HistoryObservation(self.observation, h)
        return h.residual, h.state, h.previous, test_function_of(h.residual, name), h.bcs

    def _derive_forms(self, residual):
        """Step operators A = dF/du_{n+1}, C = dF/du_n, the parameter terms and the adjoint forms (UFL)."""
        import firedrake as fd

        self._residual = residual
        self._so = None
        V, state, previous, parameter, time, v = (self.state_space, self._u, self._uo, self._m, self._time,
                                                  self._v)
        trial = fd.TrialFunction(V)
        self._A_form = derive(residual, state, trial)
        self._C_form = derive(residual, previous, trial)
        self._C_zero = is_zero(self._C_form)
        states = (state, previous)
        self.constant_operator = not (depends_on(self._A_form, *states, time)
                                      or depends_on(self._C_form, *states, time))
        self._dm = fd.Function(self.parameter_space, name="dm")
        # the parameter may enter only through the initial condition: then F_m = 0
        self._has_Fm = parameter in residual.coefficients() and not is_zero(derive(residual, parameter))
        self._Fm_dm = fd.action(derive(residual, parameter), self._dm) if self._has_Fm else None  # F_m dm
        self._mu = fd.Function(V, name="adjoint")
        L = fd.replace(residual, {v: self._mu})
        self._Lm = derive(L, parameter, fd.TestFunction(self.parameter_space)) if self._has_Fm else None
        v2 = fd.TestFunction(V)
        self._carry_form = None if self._C_zero else derive(L, previous, v2)  # C^T mu
        self._du_old = fd.Function(V)
        terms = [] if self._C_zero else [fd.action(derive(residual, previous), self._du_old)]
        terms += [self._Fm_dm] if self._has_Fm else []
        self._tangent_rhs_form = -sum(terms[1:], terms[0]) if terms else None
        self._Fm_state = self._has_Fm and depends_on(self._Fm_dm, *states)
        self._Fm_time = self._has_Fm and depends_on(self._Fm_dm, time)
        self.needs_states = (not self.constant_operator) or self._Fm_state
        self._operators_depend_on_m = depends_on(self._A_form, parameter) or depends_on(self._C_form, parameter)
        self.is_linear = self.constant_operator and not self._operators_depend_on_m and not (
            self._has_Fm and depends_on(self._Fm_dm, parameter, *states)) and all(e.affine for e in self._starts)
        self._rhs = fd.Cofunction(V.dual())
        self._zero = fd.Function(V)
        self._cof_m = fd.Cofunction(self.parameter_space.dual())

    def _set_up_constant_operator(self, residual, params, symmetric, prefix, ns, tns):
        """One factorised A for every step, C assembled once, the load and parameter terms as matrices."""
        import firedrake as fd

        V, state, previous, parameter, time = self.state_space, self._u, self._uo, self._m, self._time
        bcs, trial = self._bcs, fd.TrialFunction(V)
        self._A = DirichletOperator(self._A_form, bcs, solver_parameters=params, options_prefix=prefix,
                                    symmetric=symmetric, nullspace=ns, transpose_nullspace=tns)
        self._C = None if self._C_zero else fd.assemble(self._C_form, mat_type="aij")
        self._F0_form = at_zero(residual, state, previous)  # F(0, 0, m; v): the load
        self._F0_zero = is_zero(self._F0_form)
        self._F0_time = depends_on(self._F0_form, time)
        self._F0 = fd.Cofunction(V.dual())
        self._F0_m = depends_on(self._F0_form, parameter)
        self._f0_vec = self._vec()  # F0 as a plain Vec: no PyOP2 context per time step
        self._f0_vec.zeroEntries()
        self._assembled_for_m = False
        if self._has_Fm:  # the parameter terms of the tangent, as matrices in the state
            self._Dn_form = derive(self._Fm_dm, state, trial)
            self._Do_form = derive(self._Fm_dm, previous, trial)
            self._Dn_zero, self._Do_zero = is_zero(self._Dn_form), is_zero(self._Do_form)
            self._d0_form = at_zero(self._Fm_dm, state, previous)
            self._d0_zero = is_zero(self._d0_form)
            self._Dn = self._Do = None
        self._solver = None

    def _set_up_nonlinear(self, residual, solver_parameters, linear_solver_parameters, symmetric, prefix, ns, tns,
                          nullspaces):
        """Firedrake's nonlinear solver for each step and the linearised operator for the derivatives."""
        import firedrake as fd

        from pdeinv.forward.stationary import default_newton_parameters

        V, state, bcs = self.state_space, self._u, self._bcs
        nullspace, transpose_nullspace = nullspaces
        if solver_parameters is None:
            solver_parameters = default_newton_parameters(self.comm, space=V, singular=ns is not None)
            if not depends_on(self._A_form, state):
                solver_parameters = {**solver_parameters, "snes_type": "ksponly"}
        check_device(solver_parameters, self.comm, "solver_parameters")  # OffloadPC alone would run on the CPU
        if linear_solver_parameters is None:  # device Newton solves: device tangent and adjoint solves too
            linear_solver_parameters = linear_parameters(solver_parameters)
        problem = fd.NonlinearVariationalProblem(residual, state, bcs=bcs, J=self._A_form)
        self._solver = fd.NonlinearVariationalSolver(problem, solver_parameters=solver_parameters,
                                                     options_prefix=prefix + "forward_", nullspace=nullspace,
                                                     transpose_nullspace=transpose_nullspace)
        self._A = DirichletOperator(self._A_form, self._hbcs, solver_parameters=linear_solver_parameters,
                                    options_prefix=prefix + "linearised_", lift=False, symmetric=symmetric,
                                    nullspace=ns, transpose_nullspace=tns)

    # -------------------------------------------------------------------------------- utilities
    def _vec(self):
        with self._zero.dat.vec_ro as z:
            return z.duplicate()

    def _work(self, name):
        """A work Vec of the state space, allocated at the first use and reused by every sweep."""
        vec = self._work_vecs.get(name)
        if vec is None:
            vec = self._work_vecs[name] = self._vec()
        return vec

    def _assemble_matrix(self, name, form):
        """Assemble a bilinear form into a matrix kept between calls; its PETSc Mat."""
        import firedrake as fd

        mat = self._work_mats.get(name)
        self._work_mats[name] = mat = fd.assemble(form, mat_type="aij", tensor=mat)
        return mat.petscmat

    def _assemble_d0(self):
        """F_m[dm] at zero states (the state-independent parameter term) as a Vec."""
        import firedrake as fd

        fd.assemble(self._d0_form, tensor=self._d0)
        with self._d0.dat.vec_ro as a:
            a.copy(self._work("d0"))
        return self._work("d0")

    def _set(self, f, vec):
        with f.dat.vec_wo as x:
            vec.copy(x)

    def _set_time(self, n):
        """Time of the end of step n, t_{n+1}."""
        if self._time is not None:
            self._time.assign((n + 1) * self.dt)

    @property
    def diagonal_step(self) -> bool:
        """Whether the step operator is diagonal (a lumped mass: an explicit step), applied as a pointwise
        scaling in the forward, tangent and adjoint sweeps: no factorisation."""
        return self._A.diagonal

    def _counts(self):
        kept = list(self._kept.values())
        self.counts["linear_solves"] = self._A.solves + self._kept_counts[0] + sum(op.solves for op in kept)
        self.counts["factorisations"] = (self._A.factorisations + self._kept_counts[1]
                                         + sum(op.factorisations for op in kept))
        self.counts["krylov_iterations"] = self._A.iterations + sum(op.iterations for op in kept)
        self.counts["newton_iterations"] = self.newton_iterations
        self.counts["recomputed_steps"] = self.recomputed_steps

    def _initial_state(self, m=None):
        """:math:`u_0` (a multistep scheme's history :math:`z_0`) as a new Vec, at the parameter's value."""
        return self._from_copies([e.initial() for e in self._starts])

    def _initial_tangent(self, dm):
        """:math:`\\delta u_0` (or :math:`\\delta z_0`) for the direction ``dm``, as a new Vec."""
        return self._from_copies([e.tangent(dm) for e in self._starts])

    def _from_copies(self, functions):
        """A Vec of the state space from one Function on the user's space per copy (None: zero)."""
        x = self._vec()
        if self._history is None:
            if functions[0] is None:
                x.zeroEntries()
            else:
                with functions[0].dat.vec_ro as s:
                    s.copy(x)
            return x
        values = np.zeros(x.getLocalSize())
        for index, f in zip(self._history.index, functions, strict=True):
            if f is not None:
                values[index] = local_values(f)
        x.array[:] = values
        return x

    def _add_start_terms(self, lam, result, second_order=None):
        """Add the initial states' adjoint terms :math:`(\\partial u_0/\\partial m)^T\\lambda_0` to
        ``result`` (``lam``: a dual Vec of the state space)."""
        import firedrake as fd

        user_space = self.state_space if self._history is None else self._history.user_space
        indices = [slice(None)] if self._history is None else self._history.index
        for index, entry in zip(indices, self._starts, strict=True):
            if entry.kind is Start.FIXED:
                continue
            cof = fd.Cofunction(user_space.dual())
            with cof.dat.vec_wo as c:
                c.array[:] = lam.array_r[index]
            if second_order is None:
                entry.adjoint_add(cof, result)
            else:
                entry.second_order_add(cof, second_order, result)

    def _observe(self, n, x, data):
        k = self._channel.get(n)
        if k is not None:
            self._obs.observe(x, data, k)

    # ---------------------------------------------------------------------------------- forward
    def _prepare(self):
        """Assemble what depends on m (constant-operator engine)."""
        import firedrake as fd

        if not self.constant_operator:
            return
        if self._operators_depend_on_m or not self._assembled_for_m:
            self._A.reassemble()
            if self._C is not None:
                fd.assemble(self._C_form, mat_type="aij", tensor=self._C)
        if not self._F0_zero and not self._F0_time and (self._F0_m or not self._assembled_for_m):
            self._assemble_f0()
        self._assembled_for_m = True

    def _assemble_f0(self):
        import firedrake as fd

        fd.assemble(self._F0_form, tensor=self._F0)
        with self._F0.dat.vec_ro as f0:
            f0.copy(self._f0_vec)

    def _step(self, n, x, out):
        """u_{n+1} from u_n = x, into out (Vecs)."""

        self._set_time(n)
        if self.constant_operator:
            if self._F0_time and not self._F0_zero:
                self._assemble_f0()
            b = self._step_rhs
            if self._C is not None:
                self._C.petscmat.mult(x, b)
                b.axpy(1.0, self._f0_vec)
            else:
                self._f0_vec.copy(b)
            b.scale(-1.0)
            self._A.solve(b, out)
        else:
            self._set(self._uo, x)
            self._set(self._u, x)  # Newton starts from the previous state
            self._solver.solve()
            self.newton_iterations += self._solver.snes.getIterationNumber()
            with self._u.dat.vec_ro as u:
                u.copy(out)
            if self._A.nullspace is not None:  # the gauge the derivatives are taken in
                self._A.nullspace.remove(out)

    def _solve(self, m, prediction):
        self._forget_linearisations()
        self._m.assign(m)
        self._prepare()
        keep = self.needs_states and self.checkpointing is None
        self._trajectory = None
        x = self._initial_state(m)
        traj = [x.copy()] if keep else None
        self._observe(0, x, prediction)
        nxt = self._vec()
        for n in range(self.steps):
            self._step(n, x, nxt)
            x, nxt = nxt, x
            if keep:
                traj.append(x.copy())
            self._observe(n + 1, x, prediction)
        self._trajectory = traj
        if keep:
            self.peak_stored_states = max(self.peak_stored_states, len(traj))
        self._final = x.copy()
        self._counts()

    def state_at_end(self, m):
        """:math:`u_N` as a new Function."""
        import firedrake as fd

        self._linearise(m)
        if self._history is None:
            out = fd.Function(self.state_space, name="u_end")
            self._set(out, self._final)
            return out
        out = fd.Function(self._history.user_space, name="u_end")
        with out.dat.vec_wo as x:
            x.array[:] = self._final.array_r[self._history.index[0]]
        return out

    # --------------------------------------------------------------------------- linearisation
    def _set_step_states(self, n, un, un1):
        """Put the states of step n (and t_{n+1}) into the form's Functions; the operator :math:`A_n` to
        solve with: the shared one reassembled, or with ``keep_linearisations`` the one kept for step n
        at this m (assembled and factorised at its first use, then reused by every later sweep)."""
        self._set_time(n)
        if un is not None:
            self._set(self._uo, un)
            self._set(self._u, un1)
        if self.constant_operator:
            return self._A
        if not self.keep_linearisations:
            self._A.reassemble()
            return self._A
        op = self._kept.get(n)
        if op is None:
            self._A.reassemble()
            op = self._kept[n] = self._A.frozen_copy(f"{self._prefix}kept_{n}_")
        return op

    def _forget_linearisations(self):
        """A new m: the kept step operators are stale (their counts are kept)."""
        for op in self._kept.values():
            self._kept_counts[0] += op.solves
            self._kept_counts[1] += op.factorisations
        self._kept = {}

    def _states_forward(self, m):
        """Generator of (u_n, u_{n+1}) for n = 0..N-1: from the stored trajectory, or recomputed
        from the initial condition (checkpointed mode: memory O(1))."""
        if self._trajectory is not None:
            for n in range(self.steps):
                yield self._trajectory[n], self._trajectory[n + 1]
            return
        x, nxt = self._initial_state(m), self._vec()
        for n in range(self.steps):
            self._step(n, x, nxt)
            self.recomputed_steps += 1
            yield x, nxt
            x, nxt = nxt, x

    # ---------------------------------------------------------------------------------- tangent
    def _jvp(self, dm):
        out = self.observation.zero_data(name="jvp")
        self._dm.assign(dm)
        x = self._initial_tangent(self._dm)
        self._observe(0, x, out)
        nxt = self._work("jvp_next")
        self._begin_tangent()
        states = self._states_forward(self._m) if self.needs_states else ((None, None) for _ in range(self.steps))
        for n, (un, un1) in enumerate(states):
            self._tangent_step(n, un, un1, x, nxt)
            x, nxt = nxt, x
            self._observe(n + 1, x, out)
        self._counts()
        return out

    def _begin_tangent(self):
        """Before a tangent sweep in the direction ``self._dm`` (constant-operator engine): the parameter
        terms as matrices in the state, assembled once per direction into matrices kept between calls
        (the sparsity is built once)."""
        self._tangent_terms = (None, None, None)
        if self.constant_operator and self._has_Fm:
            Dn = None if self._Dn_zero else self._assemble_matrix("Dn", self._Dn_form)
            Do = None if self._Do_zero else self._assemble_matrix("Do", self._Do_form)
            d0 = self._assemble_d0() if not self._d0_zero and not self._Fm_time else None
            self._tangent_terms = (Dn, Do, d0)

    def _tangent_step(self, n, un, un1, x, nxt):
        """:math:`\\delta u_{n+1}` (into ``nxt``) from :math:`\\delta u_n` = ``x`` and the step's states."""
        import firedrake as fd

        if not self.constant_operator:
            op = self._set_step_states(n, un, un1)
            self._set(self._du_old, x)
            if self._tangent_rhs_form is None:
                self._rhs.zero()
            else:
                fd.assemble(self._tangent_rhs_form, tensor=self._rhs)
            with self._rhs.dat.vec as b:
                op.solve_homogeneous(b, nxt)
            return
        tmp, b = self._work("jvp_tmp"), self._work("jvp_rhs")
        self._set_time(n)
        if self._C is not None:
            self._C.petscmat.mult(x, b)
        else:
            b.zeroEntries()
        if self._has_Fm:
            Dn, Do, d0 = self._tangent_terms
            for mat, state in ((Dn, un1), (Do, un)):
                if mat is not None:
                    mat.mult(state, tmp)
                    b.axpy(1.0, tmp)
            if d0 is not None:
                b.axpy(1.0, d0)
            elif not self._d0_zero:  # time-dependent: once per step
                b.axpy(1.0, self._assemble_d0())
        b.scale(-1.0)
        self._A.solve_homogeneous(b, nxt)

    # ---------------------------------------------------------------------------------- adjoint
    def _vjp(self, w):
        import firedrake as fd

        result = fd.Cofunction(self.parameter_space.dual(), name="vjp")
        self._grad_vec = result
        self._carry = self._work("vjp_carry")
        self._carry.zeroEntries()
        self._mu_vec = self._work("vjp_mu")
        self._w = w
        accumulate = self._has_Fm and not (self._Fm_state or self._Fm_time or not self.constant_operator)
        self._mu_sum = self._work("vjp_mu_sum") if accumulate else None
        if accumulate:
            self._mu_sum.zeroEntries()
        self._begin_parameter_terms()
        if not self.needs_states:
            for n in range(self.steps - 1, -1, -1):
                self._reverse_step(n, None, None)
        elif self._trajectory is not None:
            for n in range(self.steps - 1, -1, -1):
                self._reverse_step(n, self._trajectory[n], self._trajectory[n + 1])
        else:
            self._run_schedule()
        if accumulate:
            self._set(self._mu, self._mu_sum)
            fd.assemble(self._Lm, tensor=self._cof_m)
            axpy(result, -1.0, self._cof_m)
        self._end_parameter_terms(result)
        if any(e.kind is not Start.FIXED for e in self._starts):
            # lambda_0 = B^T w_0 - C_0^T mu_1, on all dofs (u_0 need not satisfy the conditions)
            lam = self._work("vjp_lambda0")
            self._carry.copy(lam)
            lam.scale(-1.0)
            k = self._channel.get(0)
            if k is not None:
                self._obs.observe_transpose_add(w, k, lam)
            self._add_start_terms(lam, result)
        self._counts()
        return result

    def _reverse_step(self, n, un, un1):
        """mu_{n+1} from A_n^T mu_{n+1} = B^T w_{n+1} - C_{n+1}^T mu_{n+2}; gradient and carry terms."""
        import firedrake as fd

        rhs = self._carry  # holds C_{n+1}^T mu_{n+2}
        rhs.scale(-1.0)
        k = self._channel.get(n + 1)
        if k is not None:
            self._obs.observe_transpose_add(self._w, k, rhs)
        mu = self._mu_vec
        if self.constant_operator:
            self._set_time(n)
            self._A.solve_transpose(rhs, mu)
            if self._C is not None:
                self._C.petscmat.multTranspose(mu, self._carry)
            else:
                self._carry.zeroEntries()
            if self._has_Fm and self._mu_sum is None:
                self._parameter_term(n, un, un1, mu)
            elif self._mu_sum is not None:
                self._mu_sum.axpy(1.0, mu)
        else:
            self._set_step_states(n, un, un1).solve_transpose(rhs, mu)
            self._set(self._mu, mu)
            if self._C_zero:
                self._carry.zeroEntries()
            else:
                fd.assemble(self._carry_form, tensor=self._rhs)
                with self._rhs.dat.vec_ro as c:
                    c.copy(self._carry)
            if self._has_Fm:
                self._parameter_term(n, None, None, mu)  # the step's states are already in place

    # ------------------------------------------------------------------------- parameter terms
    # -sum_n (F^m_n)^T mu_{n+1}: by default one assembly of a 1-form on V_m per step.  A subclass that
    # knows more about its form may accumulate cheaper quantities instead (HeatModel: cellwise
    # products of gradients for P1) by overriding these three hooks.
    def _begin_parameter_terms(self) -> None:
        """Called before the reverse sweep of every VJP."""

    def _parameter_term(self, n, un, un1, mu) -> None:
        """Add :math:`-(F^m_n)^T\\mu_{n+1}` to the gradient (``un``, ``un1``: the step's states, or
        None when they are already in the form's Functions or not needed)."""
        import firedrake as fd

        if un is not None:
            self._set(self._uo, un)
            self._set(self._u, un1)
        self._set(self._mu, mu)
        fd.assemble(self._Lm, tensor=self._cof_m)
        axpy(self._grad_vec, -1.0, self._cof_m)

    def _end_parameter_terms(self, result) -> None:
        """Called after the reverse sweep with the gradient Cofunction."""

    # ---------------------------------------------------------------------------- second order
    # With l_n = F(u_{n+1}, u_n, m; mu_{n+1}) and D the derivative in the direction
    # (du_{n+1}, du_n, dm) of all three arguments, the second-order adjoint mu^ solves, backwards,
    #   A_n^T mu^_{n+1} = -C_{n+1}^T mu^_{n+2} - D d_{u_{n+1}} l_n - D d_{u_{n+1}} l_{n+1}
    # and  <w, J''[dm, .]> = -sum_n (F^m_n)^T mu^_{n+1} + D d_m l_n   (+ the initial states' terms).
    def _second_order_forms(self):
        """The UFL forms of the second-order sweep (derived once, at the first use)."""
        import firedrake as fd

        if self._so is not None:
            return self._so
        V, u, uo, m = self.state_space, self._u, self._uo, self._m
        du1, du0 = fd.Function(V), fd.Function(V)
        L = fd.replace(self._residual, {self._v: self._mu})
        v2, vm = fd.TestFunction(V), fd.TestFunction(self.parameter_space)

        def D(form):
            terms = [derive(form, f, d) for f, d in ((u, du1), (uo, du0), (m, self._dm))]
            terms = [t for t in terms if not is_zero(t)]
            return sum(terms[1:], terms[0]) if terms else None

        self._so = {"du1": du1, "du0": du0, "S": D(derive(L, u, v2)), "P": D(derive(L, uo, v2)),
                    "M": D(derive(L, m, vm)), "mu_hat": fd.Function(V)}
        return self._so

    def _assemble_vec(self, form, name):
        """A 1-form on V assembled into a work Vec (zero for None)."""
        import firedrake as fd

        out = self._work(name)
        if form is None:
            out.zeroEntries()
            return out
        fd.assemble(form, tensor=self._rhs)
        with self._rhs.dat.vec_ro as r:
            r.copy(out)
        return out

    def _hessian_vjp(self, w, weight, dm):
        """Fused: one tangent sweep for :math:`q = \\text{weight}(J\\delta m)`, then one reverse sweep of the
        first- and second-order adjoints with :math:`B^T q` added to the second-order one's seed."""
        if self.is_linear:  # no second-order term: the Gauss-Newton action
            return super()._hessian_vjp(w, weight, dm)
        self.counts["jvp"] += 1
        self.counts["second_order"] += 1
        return self._second_order_vjp(w, dm, extra=weight(self._jvp(dm)))

    def _second_order_vjp(self, w, dm, extra=None):
        import firedrake as fd

        if self.is_linear and extra is None:
            return fd.Cofunction(self.parameter_space.dual())
        so = self._second_order_forms()
        self._dm.assign(dm)
        result = fd.Cofunction(self.parameter_space.dual(), name="second_order_vjp")
        self._so_result, self._w, self._w2 = result, w, extra
        self._so_c1, self._so_c2 = self._work("so_c1"), self._work("so_c2")  # C^T mu and C^T mu^ + P
        self._so_c1.zeroEntries()
        self._so_c2.zeroEntries()
        self._begin_tangent()
        x0 = (self._initial_state(), self._initial_tangent(self._dm))
        if self._trajectory is not None:
            tangents = [x0[1]]
            for n in range(self.steps):
                self._tangent_step(n, self._trajectory[n], self._trajectory[n + 1], tangents[n], nxt := self._vec())
                tangents.append(nxt)
            for n in range(self.steps - 1, -1, -1):
                self._second_order_step(n, (self._trajectory[n], tangents[n]),
                                        (self._trajectory[n + 1], tangents[n + 1]))
        else:
            self._second_order_schedule(x0)
        self._second_order_start_terms(so, result)
        self._counts()
        return result

    def _second_order_schedule(self, x0):
        """The second-order reverse sweep over (state, tangent) pairs under the checkpointing schedule (all
        pairs kept without one): the forward and tangent steps recomputed together."""
        from pdeinv.checkpointing import SweepStatistics, reverse_sweep

        def advance(n, pair):
            u, du = pair
            nu, ndu = self._vec(), self._vec()
            self._step(n, u, nu)
            self._tangent_step(n, u, nu, du, ndu)
            return nu, ndu

        def from_array(a):
            half = a.size // 2
            u, du = self._vec(), self._vec()
            u.array, du.array = a[:half], a[half:]
            return u, du

        stats = SweepStatistics(self.recomputed_steps, self.peak_stored_states)
        reverse_sweep(self.steps, self.checkpointing, x0, advance=advance, reverse=self._second_order_step,
                      copy=lambda p: (p[0].copy(), p[1].copy()),
                      to_array=lambda p: np.concatenate([p[0].array_r, p[1].array_r]), from_array=from_array,
                      rank=self.comm.rank, stats=stats)
        self.recomputed_steps, self.peak_stored_states = stats.recomputed_steps, stats.peak_stored_states

    def _second_order_step(self, n, pair_n, pair_n1):
        """Reverse step n of the first- and second-order adjoints together (both carries updated)."""
        import firedrake as fd

        so = self._second_order_forms()
        (un, dun), (un1, dun1) = pair_n, pair_n1
        op = self._set_step_states(n, un, un1)
        mu, mu_hat = self._work("so_mu"), self._work("so_mu_hat")
        rhs = self._work("so_rhs")
        self._so_c1.copy(rhs)
        rhs.scale(-1.0)
        k = self._channel.get(n + 1)
        if k is not None:
            self._obs.observe_transpose_add(self._w, k, rhs)
        op.solve_transpose(rhs, mu)  # mu_{n+1}
        self._set(self._mu, mu)
        self._set(so["du1"], dun1)
        self._set(so["du0"], dun)
        rhs2 = self._assemble_vec(so["S"], "so_S")
        rhs2.axpy(1.0, self._so_c2)
        rhs2.scale(-1.0)
        if k is not None and self._w2 is not None:
            self._obs.observe_transpose_add(self._w2, k, rhs2)
        op.solve_transpose(rhs2, mu_hat)  # mu^_{n+1}
        # carries for step n-1 (C_n at this step's states), and this step's terms of the result
        self._assemble_vec(self._carry_form, "so_c1").copy(self._so_c1)
        self._assemble_vec(so["P"], "so_P").copy(self._so_c2)
        if so["M"] is not None:
            axpy(self._so_result, -1.0, fd.assemble(so["M"]))
        self._set(self._mu, mu_hat)
        self._so_c2.axpy(1.0, self._assemble_vec(self._carry_form, "so_cmh"))
        if self._has_Fm:
            fd.assemble(self._Lm, tensor=self._cof_m)
            axpy(self._so_result, -1.0, self._cof_m)

    def _second_order_start_terms(self, so, result):
        """The initial states' terms: P'^T lambda^_0 + (P''[dm])^T lambda_0, with lambda_0 = B^T w_0 -
        C_0^T mu_1 and lambda^_0 = -(C_0^T mu^_1 + D d_{u_0} l_0)."""
        if all(e.kind is Start.FIXED for e in self._starts):
            return
        lam = self._work("so_lambda0")
        self._so_c1.copy(lam)
        lam.scale(-1.0)
        k = self._channel.get(0)
        if k is not None:
            self._obs.observe_transpose_add(self._w, k, lam)
        lam_hat = self._work("so_lambda0_hat")
        self._so_c2.copy(lam_hat)
        lam_hat.scale(-1.0)
        if k is not None and self._w2 is not None:
            self._obs.observe_transpose_add(self._w2, k, lam_hat)
        self._add_start_terms(lam_hat, result)
        self._add_start_terms(lam, result, second_order=self._dm)

    # ----------------------------------------------------------------------------- checkpointing
    def _run_schedule(self):
        """The reverse sweep under the checkpointing schedule (:func:`pdeinv.checkpointing.reverse_sweep`):
        forward recomputation with snapshots in RAM / on disk, reverse steps with the two states each needs."""
        from pdeinv.checkpointing import SweepStatistics, reverse_sweep

        bufs = [self._vec(), self._vec()]

        def advance(n, x):
            out = bufs[1] if x is bufs[0] else bufs[0]
            self._step(n, x, out)
            return out

        def from_array(a):
            vec = self._vec()
            vec.array = a
            return vec

        stats = SweepStatistics(self.recomputed_steps, self.peak_stored_states)
        reverse_sweep(self.steps, self.checkpointing, self._initial_state(self._m), advance=advance,
                      reverse=self._reverse_step, copy=lambda v: v.copy(), to_array=lambda v: v.array_r,
                      from_array=from_array, rank=self.comm.rank, stats=stats)
        self.recomputed_steps, self.peak_stored_states = stats.recomputed_steps, stats.peak_stored_states
