r"""The heat equation as a parameter-to-observable map, declared on the generic time-stepping engine.

Model
    :math:`\partial_t u - \nabla\cdot(\kappa\nabla u) = f` in :math:`\Omega\times(0,T]`,
    :math:`u(0) = u_0`, with Dirichlet / Neumann / Robin conditions
    (:mod:`pdeinv.forward.boundary`), on any 2D or 3D mesh.

Discretisation
    Lagrange elements in space, the θ-scheme in time (θ = 1 backward Euler, θ = ½ Crank–Nicolson)
    with :math:`N` steps of size :math:`\Delta t`:

    .. math::

        \underbrace{(M + \theta\Delta t K)}_{A} u_{n+1}
            = \underbrace{(M - (1-\theta)\Delta t K)}_{B} u_n + \Delta t\, \ell,

    :math:`M` the mass matrix, :math:`K` the stiffness matrix of :math:`\kappa` (plus the Robin
    term), :math:`\ell` the load of :math:`f` and of the boundary data (constant in time).

Parameter (``unknown=``, a :class:`HeatUnknown`)
    ``"initial_condition"``: :math:`m = u_0`;  ``"source"``: :math:`m = f`;
    ``"log_conductivity"``: :math:`\kappa = e^m`.

Observations
    :math:`u_n(x_i)` at the observation points for each observation time :math:`t = n\Delta t`:
    channel :math:`k` of the data space holds time :math:`t_k`.

Derivatives (discrete, exact to round-off)
    *Tangent*:  :math:`A\,\delta u_{n+1} = B\,\delta u_n + \delta r_n` with
    :math:`\delta u_0 = \delta m` (initial condition), :math:`\delta r_n = \Delta t M_f\delta m`
    (source) or :math:`\delta r_n = -\Delta t K'[\delta m]\,(\theta u_{n+1} + (1-\theta) u_n)`
    (log-conductivity).

    *Adjoint*, backwards from :math:`\lambda_{N+1} = 0`:
    :math:`A^T\lambda_n = B^T\lambda_{n+1} + O^T w_n`, then
    :math:`J^T w = O^T w_0 + B^T\lambda_1` (initial condition),
    :math:`\Delta t M_f^T \sum_n \lambda_n` (source), or
    :math:`-\Delta t\sum_n K'[\cdot]^T(\theta u_{n+1} + (1-\theta)u_n, \lambda_{n+1})` (log-conductivity).

Implementation
    A declaration on the generic engine :class:`~pdeinv.forward.timestepping.TimeSteppingModel`: the
    θ-scheme step residual (divided by :math:`\Delta t`) is all that is written here; the tangent and
    adjoint step forms above are derived from it by UFL, and the engine's constant-operator path
    factorises :math:`A` once (once per new :math:`m` for the log-conductivity) and runs every step
    of the forward, tangent and adjoint sweeps as a matrix-vector product and a pair of triangular
    solves.

    One hand-written piece stays, for the log-conductivity with a P1 state on an affine mesh: the
    adjoint's parameter term :math:`\sum_n \int e^m\psi\,\nabla w_n\cdot\nabla\lambda_{n+1}`.
    The generic engine assembles it per step (a 1-form on :math:`V_m`); here the gradients are
    constant per cell, so :math:`\sum_n \nabla w_n\odot\nabla\lambda_{n+1}` accumulates in a DG0
    field with two sparse products per step and the form is assembled once per VJP
    (:meth:`_parameter_term`).  This is the structure UFL cannot see (the sum over steps of a
    product of two state-dependent fields); it halves the cost of the VJP.

Cost
    A JVP or VJP costs about one forward run, a Gauss–Newton action about two.  Memory: the
    log-conductivity derivatives keep the whole trajectory (:math:`(N+1)\times` dofs numbers, or a
    checkpointed subset with ``checkpointing=``); the other two parameters keep none.
"""

from __future__ import annotations

import math

import numpy as np

from pdeinv._checks import Choice, renamed_choice
from pdeinv.forward.boundary import Dirichlet, as_coefficient, split_boundary_conditions
from pdeinv.forward.timestepping import TimeSteppingModel, observation_steps
from pdeinv.observation import PointObservation

__all__ = ["HeatModel", "HeatUnknown", "HEAT_PARAMETERS"]


class HeatUnknown(Choice):
    """What the parameter :math:`m` of a :class:`HeatModel` is (strings accepted)."""

    INITIAL_CONDITION = "initial_condition"
    SOURCE = "source"
    LOG_CONDUCTIVITY = "log_conductivity"


HEAT_PARAMETERS = tuple(u.value for u in HeatUnknown)


class HeatModel(TimeSteppingModel):
    """Heat equation map :math:`m \\mapsto (u_n(x_i))_{i, n \\in \\text{obs}}`.

    Parameters
    ----------
    mesh : firedrake.MeshGeometry
        2D or 3D mesh.
    unknown : HeatUnknown or {"initial_condition", "source", "log_conductivity"}
        What :math:`m` is (formerly ``parameter=``, still accepted with a DeprecationWarning).
    end_time : float
        :math:`T > 0`.
    steps : int
        Number of time steps :math:`N`.
    observation_points : array_like, shape (P, gdim)
    observation_times : sequence of float, optional
        Times :math:`t_k \\in [0, T]` that are multiples of :math:`\\Delta t`; default every step.
    theta : float
        θ of the θ-scheme (1: backward Euler, 0.5: Crank–Nicolson); in [0.5, 1].
    degree : int
        Lagrange degree of the state.
    parameter_space : firedrake.FunctionSpace, optional
        Space of :math:`m`.  Default: the state space.  Must be the state space for the initial
        condition.
    conductivity, source, initial_condition : number or UFL expression
        The fixed inputs that are not the parameter.
    boundary : sequence of Dirichlet / Neumann / Robin, optional
        Default: :math:`u = 0` on the whole boundary.
    solver_parameters : dict, optional
        PETSc options for the linear solves (default: sparse Cholesky in serial, MUMPS in parallel).
    checkpointing : pdeinv.forward.timestepping.Checkpointing, optional
        Bounded memory for the log-conductivity derivatives.
    """

    def __init__(self, mesh, *, unknown: HeatUnknown | None = None, end_time: float, steps: int, observation_points,
                 observation_times=None, theta: float = 1.0, degree: int = 1, parameter_space=None,
                 conductivity=1.0, source=0.0, initial_condition=0.0,
                 boundary=None, solver_parameters=None, checkpointing=None, parameter=None):
        import firedrake as fd

        unknown = renamed_choice(HeatUnknown, unknown, parameter, "HeatModel", "unknown", "parameter")
        if not (end_time > 0 and math.isfinite(end_time)):
            raise ValueError(f"HeatModel: end_time must be positive, got {end_time}")
        if not (isinstance(steps, (int, np.integer)) and steps >= 1):
            raise ValueError(f"HeatModel: steps must be a positive integer, got {steps!r}")
        if not (0.5 <= theta <= 1.0):
            raise ValueError(f"HeatModel: theta must be in [0.5, 1] (unconditionally stable), got {theta}")
        self.unknown = unknown
        self.end_time = float(end_time)
        self.theta = float(theta)
        dt = self.end_time / int(steps)
        V = fd.FunctionSpace(mesh, "CG", degree)
        Vm = V if parameter_space is None else parameter_space
        if Vm.mesh() is not mesh:
            raise ValueError("HeatModel: parameter_space must be on the model's mesh")
        if unknown is HeatUnknown.INITIAL_CONDITION and Vm != V:
            raise ValueError("HeatModel: for unknown='initial_condition' the parameter space must be "
                             f"the state space {V}")
        n_obs = len(observation_steps(observation_times, dt=dt, steps=int(steps), name="HeatModel"))
        observation = PointObservation(V, observation_points, channels=n_obs)

        # --- the step residual: (u - u_old)/dt + K(theta u + (1 - theta) u_old) - f = 0 ------------------
        u, u_old, v = fd.Function(V, name="u"), fd.Function(V, name="u_old"), fd.TestFunction(V)
        m = fd.Function(Vm, name="m")
        kappa = fd.exp(m) if unknown is HeatUnknown.LOG_CONDUCTIVITY else as_coefficient(conductivity)
        f = m if unknown is HeatUnknown.SOURCE else as_coefficient(source)
        bcs, a_bdy, L_bdy = split_boundary_conditions(V, (Dirichlet("on_boundary", 0.0),) if boundary is None
                                                      else boundary)
        th = fd.Constant(self.theta)
        w = th * u + (1 - th) * u_old
        F = (u - u_old) / dt * v * fd.dx + kappa * fd.inner(fd.grad(w), fd.grad(v)) * fd.dx - f * v * fd.dx
        if a_bdy is not None:
            F = F + fd.replace(fd.action(a_bdy, u), {u: w})
        if L_bdy is not None:
            F = F - L_bdy
        ic = "parameter" if unknown is HeatUnknown.INITIAL_CONDITION else initial_condition
        super().__init__(F, u, u_old, m, steps=int(steps), dt=dt, observation=observation,
                         observation_times=observation_times, initial_condition=ic, bcs=bcs,
                         solver_parameters=solver_parameters, checkpointing=checkpointing)
        # Log-conductivity, P1 state on an affine mesh: grad w and grad lambda are constant per cell
        # (module docstring), so the adjoint's parameter term accumulates in DG0.
        self._grad_accumulate = (unknown is HeatUnknown.LOG_CONDUCTIVITY and degree == 1
                                 and mesh.coordinates.function_space().ufl_element().degree() == 1)
        if self._grad_accumulate:
            Q = fd.VectorFunctionSpace(mesh, "DG", 0)
            self._D = fd.assemble(fd.interpolate(fd.grad(fd.TrialFunction(V)), Q)).petscmat
            self._G = fd.Function(fd.FunctionSpace(mesh, "DG", 0))
            self._dK_adj_accumulated = fd.exp(m) * fd.TestFunction(Vm) * self._G * fd.dx
            self._gw, self._gl, self._gprod, self._gsum = (self._D.createVecLeft() for _ in range(4))
            self._wavg = self._vec()

    @property
    def observation_times(self):
        return tuple(n * self.dt for n in self.obs_steps)

    # ------------------------------------------------ log-conductivity: the DG0 accumulation (P1)
    def _begin_parameter_terms(self):
        if self._grad_accumulate:
            self._gsum.zeroEntries()

    def _parameter_term(self, n, un, un1, mu):
        if not self._grad_accumulate:
            return super()._parameter_term(n, un, un1, mu)
        w = un1
        if self.theta != 1.0:
            w = self._wavg
            un1.copy(w)
            w.scale(self.theta)
            w.axpy(1.0 - self.theta, un)
        self._D.mult(w, self._gw)
        self._D.mult(mu, self._gl)
        self._gprod.pointwiseMult(self._gw, self._gl)
        self._gsum.axpy(1.0, self._gprod)

    def _end_parameter_terms(self, result):
        import firedrake as fd

        if self._grad_accumulate:
            gdim = self.state_space.mesh().geometric_dimension
            self._G.dat.data[:] = self._gsum.array_r.reshape(-1, gdim).sum(axis=1)  # the dot product, once
            fd.assemble(self._dK_adj_accumulated, tensor=self._cof_m)
            result.dat.data[:] -= self._cof_m.dat.data_ro
