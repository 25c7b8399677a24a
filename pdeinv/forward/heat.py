r"""The heat equation as a parameter-to-observable map, with hand-written tangent and adjoint sweeps.

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

Parameter (``parameter=``)
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

Cost
    :math:`A` is factorised once (once per new :math:`m` for the log-conductivity) and reused by the
    forward, tangent and adjoint sweeps; every step is one matrix-vector product and one pair of
    triangular solves, on PETSc objects, with no form assembly.  A JVP or VJP therefore costs about
    one forward run, a Gauss–Newton action about two.  Memory: the log-conductivity derivatives
    keep the whole trajectory (:math:`(N+1)\times` dofs numbers); the other two parameters keep none.
"""

from __future__ import annotations

import math

import numpy as np

from pdeinv.forward._linear import DirichletOperator
from pdeinv.forward.boundary import Dirichlet, as_coefficient, split_boundary_conditions
from pdeinv.maps import ParameterToObservable
from pdeinv.observation import PointObservation

__all__ = ["HeatModel", "HEAT_PARAMETERS"]

HEAT_PARAMETERS = ("initial_condition", "source", "log_conductivity")


class HeatModel(ParameterToObservable):
    """Heat equation map :math:`m \\mapsto (u_n(x_i))_{i, n \\in \\text{obs}}`.

    Parameters
    ----------
    mesh : firedrake.MeshGeometry
        2D or 3D mesh.
    parameter : {"initial_condition", "source", "log_conductivity"}
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
    """

    def __init__(self, mesh, *, parameter: str, end_time: float, steps: int, observation_points,
                 observation_times=None, theta: float = 1.0, degree: int = 1, parameter_space=None,
                 conductivity=1.0, source=0.0, initial_condition=0.0,
                 boundary=None, solver_parameters=None):
        import firedrake as fd

        if parameter not in HEAT_PARAMETERS:
            raise ValueError(f"HeatModel: parameter must be one of {HEAT_PARAMETERS}, got {parameter!r}")
        if not (end_time > 0 and math.isfinite(end_time)):
            raise ValueError(f"HeatModel: end_time must be positive, got {end_time}")
        if not (isinstance(steps, (int, np.integer)) and steps >= 1):
            raise ValueError(f"HeatModel: steps must be a positive integer, got {steps!r}")
        if not (0.5 <= theta <= 1.0):
            raise ValueError(f"HeatModel: theta must be in [0.5, 1] (unconditionally stable), got {theta}")
        self.parameter = parameter
        self.steps = int(steps)
        self.dt = end_time / self.steps
        self.end_time = float(end_time)
        self.theta = float(theta)
        V = fd.FunctionSpace(mesh, "CG", degree)
        self.state_space = V
        Vm = V if parameter_space is None else parameter_space
        if Vm.mesh() is not mesh:
            raise ValueError("HeatModel: parameter_space must be on the model's mesh")
        if parameter == "initial_condition" and Vm != V:
            raise ValueError("HeatModel: for parameter='initial_condition' the parameter space must be "
                             f"the state space {V}")
        self.obs_steps = self._observation_steps(observation_times)
        observation = PointObservation(V, observation_points, channels=len(self.obs_steps))
        super().__init__(Vm, observation)
        self._channel_of_step = {n: k for k, n in enumerate(self.obs_steps)}
        self.is_linear = parameter != "log_conductivity"  # F'' = 0: full Newton = Gauss-Newton

        # --- forms ---------------------------------------------------------------------------------
        u, v = fd.TrialFunction(V), fd.TestFunction(V)
        self._m = fd.Function(Vm, name="m")  # current parameter value (the forms refer to it)
        kappa = fd.exp(self._m) if parameter == "log_conductivity" else conductivity
        f = self._m if parameter == "source" else as_coefficient(source)
        if boundary is None:
            boundary = (Dirichlet("on_boundary", 0.0),)
        bcs, a_bdy, L_bdy = split_boundary_conditions(V, boundary)
        stiffness = kappa * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
        if a_bdy is not None:
            stiffness = stiffness + a_bdy
        mass = u * v * fd.dx
        dt, th = fd.Constant(self.dt), fd.Constant(self.theta)
        self._a = mass + th * dt * stiffness
        self._b = mass - (1 - th) * dt * stiffness
        load = f * v * fd.dx
        if L_bdy is not None:
            load = load + L_bdy
        self._load_form = load
        self._A = DirichletOperator(self._a, bcs, solver_parameters=solver_parameters, symmetric=True)
        self._B_matrix = fd.assemble(self._b, mat_type="aij")
        self._B = self._B_matrix.petscmat
        self._load = fd.assemble(load)
        if parameter == "source":
            # M_f: V_m -> V*, the load of the source; the rest of the load is fixed.
            self._Mf = fd.assemble(fd.TrialFunction(Vm) * v * fd.dx, mat_type="aij").petscmat
        if parameter != "initial_condition":
            self._u0 = fd.Function(V).interpolate(initial_condition)
        if parameter == "log_conductivity":
            # K'[dm] w = int e^m dm grad(w).grad(v): a matrix per JVP direction (trial = w);
            # its transpose in the parameter: int e^m psi grad(w).grad(lam) for psi in V_m.
            self._dm = fd.Function(Vm)
            self._w = fd.Function(V)
            self._lam = fd.Function(V)
            self._dK_form = fd.exp(self._m) * self._dm * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
            psi = fd.TestFunction(Vm)
            self._dK_adj_form = fd.exp(self._m) * psi * fd.inner(fd.grad(self._w), fd.grad(self._lam)) * fd.dx
            # P1 state on an affine mesh: grad w and grad lambda are constant per cell, so
            # sum_n grad(w_n).grad(lambda_n) accumulates in a DG0 field G with two sparse products per
            # step (D: V -> DG0^d, the cellwise gradient), and the adjoint needs one assembly of
            # int e^m psi G dx in all instead of one per step.
            self._grad_accumulate = degree == 1 and mesh.coordinates.function_space().ufl_element().degree() == 1
            if self._grad_accumulate:
                Q = fd.VectorFunctionSpace(mesh, "DG", 0)
                self._D = fd.assemble(fd.interpolate(fd.grad(u), Q)).petscmat
                self._G = fd.Function(fd.FunctionSpace(mesh, "DG", 0))
                self._dK_adj_accumulated = fd.exp(self._m) * psi * self._G * fd.dx
            self._dK_matrix = None
        self._trajectory = None  # list of PETSc Vecs u_0..u_N (log-conductivity only)

    # ------------------------------------------------------------------------------------ helpers
    def _observation_steps(self, times):
        if times is None:
            return list(range(1, self.steps + 1))
        steps = []
        for t in np.atleast_1d(np.asarray(times, dtype=float)):
            n = round(t / self.dt)
            if not (0 <= n <= self.steps) or abs(n * self.dt - t) > 1e-9 * max(1.0, self.end_time):
                raise ValueError(f"HeatModel: observation time {t} is not a time step in [0, {self.end_time}] "
                                 f"(dt = {self.dt})")
            steps.append(n)
        if len(set(steps)) != len(steps) or steps != sorted(steps):
            raise ValueError("HeatModel: observation_times must be strictly increasing")
        return steps

    @property
    def observation_times(self):
        return tuple(n * self.dt for n in self.obs_steps)

    def _vec(self):
        return self._B.createVecRight()

    def _observe(self, n, x_vec, data):
        k = self._channel_of_step.get(n)
        if k is not None:
            self.observation.observe(x_vec, data, k)

    def _linear_solve_counts(self):
        self.counts["linear_solves"] = self._A.solves
        self.counts["factorisations"] = self._A.factorisations

    def _theta_average(self, n, work):
        """:math:`\theta u_n + (1-\theta) u_{n-1}` from the stored trajectory (no copy for θ = 1)."""
        if self.theta == 1.0:
            return self._trajectory[n]
        self._trajectory[n].copy(work)
        work.scale(self.theta)
        work.axpy(1.0 - self.theta, self._trajectory[n - 1])
        return work

    # ------------------------------------------------------------------------------------- forward
    def _solve(self, m, prediction):
        self._m.assign(m)
        import firedrake as fd

        if self.parameter == "log_conductivity":
            # A and B depend on kappa = e^m: one re-assembly (and one factorisation) per new m.
            self._A.reassemble()
            fd.assemble(self._b, mat_type="aij", tensor=self._B_matrix)
        elif self.parameter == "source":
            fd.assemble(self._load_form, tensor=self._load)
        keep = self.parameter == "log_conductivity"
        x = self._vec()
        src = m if self.parameter == "initial_condition" else self._u0
        with src.dat.vec_ro as s:
            s.copy(x)
        self._trajectory = [x.copy()] if keep else None
        self._observe(0, x, prediction)
        rhs, x_new = self._vec(), self._vec()
        with self._load.dat.vec_ro as load:
            for n in range(self.steps):
                self._B.mult(x, rhs)
                rhs.axpy(self.dt, load)
                self._A.solve(rhs, x_new)
                x, x_new = x_new, x
                if keep:
                    self._trajectory.append(x.copy())
                self._observe(n + 1, x, prediction)
        self._final = x.copy()
        self._linear_solve_counts()

    def state_at_end(self, m):
        """The state :math:`u_N` at the end time, as a Function (runs the forward model if needed)."""
        import firedrake as fd

        self._linearise(m)
        out = fd.Function(self.state_space, name="u_end")
        with out.dat.vec_wo as o:
            self._final.copy(o)
        return out

    # ------------------------------------------------------------------------------------- tangent
    def _jvp(self, dm):
        import firedrake as fd

        out = self.observation.zero_data(name="jvp")
        x, rhs, x_new = self._vec(), self._vec(), self._vec()
        extra = None
        if self.parameter == "initial_condition":
            with dm.dat.vec_ro as d:
                d.copy(x)
        else:
            x.zeroEntries()
        if self.parameter == "source":
            extra = self._vec()
            with dm.dat.vec_ro as d:
                self._Mf.mult(d, extra)
            extra.scale(self.dt)
        elif self.parameter == "log_conductivity":
            # K'[dm] as one matrix per direction: the time loop then needs matrix-vector products only.
            self._dm.assign(dm)
            if self._dK_matrix is None:
                self._dK_matrix = fd.assemble(self._dK_form, mat_type="aij")
            else:
                fd.assemble(self._dK_form, mat_type="aij", tensor=self._dK_matrix)
            dK = self._dK_matrix.petscmat
            w, kw = self._vec(), self._vec()
        self._observe(0, x, out)
        for n in range(self.steps):
            self._B.mult(x, rhs)
            if extra is not None:
                rhs.axpy(1.0, extra)
            if self.parameter == "log_conductivity":
                # w = θ u_{n+1} + (1-θ) u_n ;  rhs -= dt K'[dm] w
                dK.mult(self._theta_average(n + 1, w), kw)
                rhs.axpy(-self.dt, kw)
            self._A.solve_homogeneous(rhs, x_new)
            x, x_new = x_new, x
            self._observe(n + 1, x, out)
        self._linear_solve_counts()
        return out

    # ------------------------------------------------------------------------------------- adjoint
    def _vjp(self, w):
        import firedrake as fd

        Vm = self.parameter_space
        result = fd.Cofunction(Vm.dual(), name="vjp")
        lam, lam_next, rhs = self._vec(), self._vec(), self._vec()
        lam_next.zeroEntries()
        if self.parameter == "source":
            lam_sum = self._vec()
            lam_sum.zeroEntries()
        if self.parameter == "log_conductivity":
            tmp = fd.Cofunction(Vm.dual())
            wn = self._vec()
            if self._grad_accumulate:
                gw, gl, gprod = (self._D.createVecLeft() for _ in range(3))
                gsum = self._D.createVecLeft()  # sum_n grad(w_n) * grad(lambda_n), componentwise
                gsum.zeroEntries()
                gdim = self.state_space.mesh().geometric_dimension
        for n in range(self.steps, 0, -1):
            if n < self.steps:
                self._B.multTranspose(lam_next, rhs)
            else:
                rhs.zeroEntries()
            k = self._channel_of_step.get(n)
            if k is not None:
                self.observation.observe_transpose_add(w, k, rhs)
            self._A.solve_transpose(rhs, lam)
            # lam is lambda_n
            if self.parameter == "source":
                lam_sum.axpy(1.0, lam)
            elif self.parameter == "log_conductivity":
                # -dt * int e^m psi grad(θ u_n + (1-θ) u_{n-1}) . grad(lambda_n)
                wavg = self._theta_average(n, wn)
                if self._grad_accumulate:
                    self._D.mult(wavg, gw)
                    self._D.mult(lam, gl)
                    gprod.pointwiseMult(gw, gl)
                    gsum.axpy(1.0, gprod)
                else:
                    with self._w.dat.vec_wo as wv:
                        wavg.copy(wv)
                    with self._lam.dat.vec_wo as lv:
                        lam.copy(lv)
                    fd.assemble(self._dK_adj_form, tensor=tmp)
                    result.dat.data[:] -= self.dt * tmp.dat.data_ro
            lam, lam_next = lam_next, lam
        if self.parameter == "log_conductivity" and self._grad_accumulate:
            self._G.dat.data[:] = gsum.array_r.reshape(-1, gdim).sum(axis=1)  # the dot product, once
            fd.assemble(self._dK_adj_accumulated, tensor=tmp)
            result.dat.data[:] -= self.dt * tmp.dat.data_ro
        # lam_next now holds lambda_1
        with result.dat.vec as r:
            if self.parameter == "initial_condition":
                self._B.multTranspose(lam_next, r)
                k = self._channel_of_step.get(0)
                if k is not None:
                    self.observation.observe_transpose_add(w, k, r)
            elif self.parameter == "source":
                self._Mf.multTranspose(lam_sum, r)
                r.scale(self.dt)
        self._linear_solve_counts()
        return result

