"""Models for the multistep / initial-condition tests: each written once for pdeinv (a residual) and once
as the same discrete program in plain Firedrake, recorded by pyadjoint (the reference)."""

from dataclasses import dataclass

import firedrake as fd
import numpy as np

from pdeinv.forward.timestepping import TimeSteppingModel
from pdeinv.observation import PointObservation

RECEIVERS = np.array([[0.3, 0.3], [0.7, 0.4], [0.5, 0.8], [0.2, 0.7]])
TIGHT = {"snes_type": "newtonls", "snes_linesearch_type": "basic", "snes_rtol": 1e-14, "snes_atol": 1e-15,
         "snes_stol": 0.0, "snes_max_it": 50, "ksp_type": "preonly", "pc_type": "lu",
         "pc_factor_mat_solver_type": "mumps"}


@dataclass
class Case:
    """A pdeinv model, the truth, and ``program(m) -> list of observed Functions`` in plain Firedrake."""

    model: object
    truth: object
    program: object  # callable(m) -> list (one Function per observation time, on P0 of the observation's VOM)


def observe(u, P0s):
    """The point values of u on each component's P0 space of the observation's VOM (taped)."""
    return [fd.assemble(fd.interpolate(u if len(P0s) == 1 else u[c], P0)) for c, P0 in enumerate(P0s)]


def _p0(obs):
    return [fd.FunctionSpace(obs.vom, "DG", 0)] * obs.components


def leapfrog_wave(n=8, steps=12, *, checkpointing=None):
    r"""Leapfrog for :math:`u_{tt} = \nabla\cdot(c^2\nabla u) + f`, KMV elements with the lumped mass, a
    Ricker-like source, the velocity :math:`c` (P1) the parameter, receivers at every step."""
    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "KMV", 1)
    Vm = fd.FunctionSpace(mesh, "CG", 1)
    dt, x = 0.02, fd.SpatialCoordinate(mesh)
    t = fd.Constant(0.0)
    dxl = fd.dx(scheme="KMV", degree=1)

    def source(time):
        tau = time - 0.08
        return 50 * (1 - 200 * tau**2) * fd.exp(-100 * tau**2) * fd.exp(-((x[0] - 0.45)**2 + (x[1] - 0.55)**2) / 0.01)

    def residual(u, un, unm1, c, v, time):
        return ((u - 2 * un + unm1) / dt**2 * v * dxl + c**2 * fd.inner(fd.grad(un), fd.grad(v)) * fd.dx
                - source(time - dt) * v * fd.dx)  # explicit: the source at t_n

    u, un, unm1, c, v = fd.Function(V), fd.Function(V), fd.Function(V), fd.Function(Vm), fd.TestFunction(V)
    obs = PointObservation(V, RECEIVERS, channels=steps)
    model = TimeSteppingModel(residual(u, un, unm1, c, v, t), u, (un, unm1), c, steps=steps, dt=dt,
                              observation=obs, initial_condition=0.0, time=t, checkpointing=checkpointing)
    truth = fd.Function(Vm).interpolate(1.0 + 0.3 * fd.exp(-((x[0] - 0.6)**2 + (x[1] - 0.4)**2) / 0.05))

    def program(m):
        a, b, uu, tt = fd.Function(V), fd.Function(V), fd.Function(V), fd.Constant(0.0)
        F = residual(uu, a, b, m, fd.TestFunction(V), tt)
        solver = fd.LinearVariationalSolver(
            fd.LinearVariationalProblem(fd.lhs(fd.replace(F, {uu: fd.TrialFunction(V)})),
                                        fd.rhs(fd.replace(F, {uu: fd.TrialFunction(V)})), uu),
            solver_parameters={"ksp_type": "preonly", "pc_type": "jacobi"})
        out = []
        for k in range(steps):
            tt.assign((k + 1) * dt)
            solver.solve()
            b.assign(a)
            a.assign(uu)
            out.append(observe(uu, _p0(obs)))
        return out

    return Case(model, truth, program)


def bdf2_nonlinear_diffusion(n=6, steps=6, *, vector=False, checkpointing=None, mesh=None):
    r"""BDF2 for :math:`u_t = \nabla\cdot((1+|u|^2)e^m\nabla u) + f` (scalar, or a 2-vector with the
    condition on one component only), history at rest from a fixed :math:`u_0`, the log-diffusivity
    :math:`m` the parameter, point observations at three times."""
    mesh = fd.UnitSquareMesh(n, n) if mesh is None else mesh
    V = fd.VectorFunctionSpace(mesh, "CG", 1) if vector else fd.FunctionSpace(mesh, "CG", 1)
    Vm = fd.FunctionSpace(mesh, "CG", 1)
    dt, x = 0.05, fd.SpatialCoordinate(mesh)
    bump = fd.sin(fd.pi * x[0]) * fd.sin(fd.pi * x[1])
    u0 = fd.as_vector([bump, 0.5 * bump + 0.2 * x[0]]) if vector else bump
    f = fd.as_vector([1.0, fd.cos(x[1])]) if vector else fd.Constant(1.0)

    def residual(u, un, unm1, m, v):
        return (fd.inner((1.5 * u - 2 * un + 0.5 * unm1) / dt, v) * fd.dx
                + (1 + fd.inner(u, u)) * fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
                - fd.inner(f, v) * fd.dx)

    def bcs_on(W):
        return [fd.DirichletBC(W.sub(0) if vector else W, 0.0, "on_boundary")]

    u, un, unm1, m, v = fd.Function(V), fd.Function(V), fd.Function(V), fd.Function(Vm), fd.TestFunction(V)
    times = [2 * dt, 4 * dt, steps * dt]
    obs = PointObservation(V, RECEIVERS, channels=len(times))
    model = TimeSteppingModel(residual(u, un, unm1, m, v), u, (un, unm1), m, steps=steps, dt=dt, observation=obs,
                              observation_times=times, initial_condition=(u0, u0), bcs=bcs_on(V),
                              solver_parameters=TIGHT, checkpointing=checkpointing)
    truth = fd.Function(Vm).interpolate(0.3 * fd.cos(2 * x[0]) * x[1])

    def program(m):
        a, b, uu = fd.Function(V).interpolate(u0), fd.Function(V).interpolate(u0), fd.Function(V)
        F = residual(uu, a, b, m, fd.TestFunction(V))
        solver = fd.NonlinearVariationalSolver(fd.NonlinearVariationalProblem(F, uu, bcs=bcs_on(V)),
                                               solver_parameters=TIGHT)
        out = []
        for k in range(steps):
            uu.assign(a)
            solver.solve()
            b.assign(a)
            a.assign(uu)
            if (k + 1) in (2, 4, steps):
                out.append(observe(uu, _p0(obs)))
        return out

    return Case(model, truth, program)


def mapped_initial_condition(n=6, steps=4):
    r"""Heat on P2 with :math:`u_0 = \Pi_{P2}(m + m^2/2)` from a P1 parameter (a nonlinear map from a
    coarser space); the parameter also in the source."""
    mesh = fd.UnitSquareMesh(n, n)
    V, Vm = fd.FunctionSpace(mesh, "CG", 2), fd.FunctionSpace(mesh, "CG", 1)
    dt, x = 0.02, fd.SpatialCoordinate(mesh)

    def residual(u, uo, m, v):
        return ((u - uo) / dt * v + fd.inner(fd.grad(u), fd.grad(v)) - (1 + 0.5 * m) * v) * fd.dx

    u, uo, m, v = fd.Function(V), fd.Function(V), fd.Function(Vm), fd.TestFunction(V)
    obs = PointObservation(V, RECEIVERS, channels=steps + 1)
    bcs = [fd.DirichletBC(V, 0.0, "on_boundary")]
    model = TimeSteppingModel(residual(u, uo, m, v), u, uo, m, steps=steps, dt=dt, observation=obs,
                              observation_times=[k * dt for k in range(steps + 1)],
                              initial_condition=m + 0.5 * m**2, bcs=bcs)
    truth = fd.Function(Vm).interpolate(fd.sin(fd.pi * x[0]) * x[1])

    def program(m):
        a, uu = fd.Function(V).interpolate(m + 0.5 * m**2), fd.Function(V)
        out = [observe(a, _p0(obs))]
        F = residual(uu, a, m, fd.TestFunction(V))
        solver = fd.NonlinearVariationalSolver(fd.NonlinearVariationalProblem(F, uu, bcs=bcs),
                                               solver_parameters={**TIGHT, "snes_type": "ksponly"})
        for _ in range(steps):
            solver.solve()
            a.assign(uu)
            out.append(observe(uu, _p0(obs)))
        return out

    return Case(model, truth, program)
