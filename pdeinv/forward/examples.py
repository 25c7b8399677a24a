r"""Example user models on the generic engines — the models of ``docs/own-model.md``.

They are written exactly as a user would write them (plain UFL with their own Functions) and are
shared by the tests and ``benchmarks/own_model.py``:

- :func:`nonlinear_diffusion`: :math:`-\nabla\cdot((1+u^2)e^m\nabla u) = f`, :math:`u = 0` on
  :math:`\partial\Omega` (a :class:`StationaryModel`, or the same code as a :class:`TapedMap`);
- :func:`advection_diffusion`: :math:`\partial_t u + \mathbf w\cdot\nabla u - \kappa\Delta u = 0`
  with a given rotating wind, backward Euler, parameter :math:`u_0 = m` (a :class:`TimeSteppingModel`
  on the constant-operator engine), or the same time loop as a :class:`TapedMap`;
- :func:`nonlinear_heat`: :math:`\partial_t u - \nabla\cdot((1+u^2)e^m\nabla u) = f`, parameter the
  log-conductivity :math:`m` (the general engine: Newton per step, states stored or checkpointed).
"""

from __future__ import annotations

import numpy as np

__all__ = ["nonlinear_diffusion", "advection_diffusion", "nonlinear_heat", "grid_points"]


def grid_points(k: int, margin: float = 0.1) -> np.ndarray:
    """``k x k`` observation points on the unit square, ``margin`` away from the boundary."""
    t = np.linspace(margin, 1.0 - margin, k)
    return np.array([(a, b) for a in t for b in t])


def _source(mesh):
    import firedrake as fd

    x, y = fd.SpatialCoordinate(mesh)
    return 10.0 * fd.sin(fd.pi * x) * fd.sin(fd.pi * y)


def nonlinear_diffusion(mesh, *, observation=None, points=None, taped: bool = False, degree: int = 1,
                        solver_parameters=None, initial_guess: str = "previous"):
    """The steady nonlinear diffusion model (parameter: log-conductivity on P1).

    ``observation`` defaults to point values at ``points`` (default a 5 x 5 grid).  With
    ``taped=True`` the same physics is returned as a :class:`TapedMap` whose forward is plain
    ``firedrake.solve``.
    """
    import firedrake as fd

    from pdeinv.forward.stationary import StationaryModel
    from pdeinv.forward.taped import TapedMap
    from pdeinv.observation import PointObservation

    V = fd.FunctionSpace(mesh, "CG", degree)
    Vm = fd.FunctionSpace(mesh, "CG", 1)
    if observation is None:
        observation = PointObservation(V, grid_points(5) if points is None else points)
    f = _source(mesh)
    if taped:
        params = solver_parameters or {"snes_rtol": 1e-11, "snes_atol": 1e-13, "ksp_type": "preonly",
                                       "pc_type": "lu"}

        def forward(m):
            u, v = fd.Function(V), fd.TestFunction(V)
            F = (1 + u**2) * fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - f * v * fd.dx
            fd.solve(F == 0, u, bcs=[fd.DirichletBC(V, 0.0, "on_boundary")], solver_parameters=params)
            return u

        return TapedMap(forward, Vm, observation)
    u, m, v = fd.Function(V, name="u"), fd.Function(Vm, name="m"), fd.TestFunction(V)
    F = (1 + u**2) * fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - f * v * fd.dx
    return StationaryModel(F, u, m, observation=observation, bcs=[fd.DirichletBC(V, 0.0, "on_boundary")],
                           solver_parameters=solver_parameters, initial_guess=initial_guess)


def _wind(mesh):
    import firedrake as fd

    x, y = fd.SpatialCoordinate(mesh)
    return fd.as_vector((-(y - 0.5), x - 0.5)) * 2.0


def advection_diffusion(mesh, *, steps: int = 20, end_time: float = 0.5, kappa: float = 0.01,
                        points=None, observation_times=None, taped: bool = False, checkpointing=None):
    r"""Advection–diffusion with parameter :math:`u_0 = m` (P1), backward Euler, :math:`u = 0` on the
    boundary, observed at ``points`` (default 5 x 5) at ``observation_times`` (default the last
    half of the steps)."""
    import firedrake as fd

    from pdeinv.forward.taped import TapedMap
    from pdeinv.forward.timestepping import TimeSteppingModel
    from pdeinv.observation import PointObservation

    V = fd.FunctionSpace(mesh, "CG", 1)
    dt = end_time / steps
    if observation_times is None:
        observation_times = [n * dt for n in range(steps // 2, steps + 1)]
    points = grid_points(5) if points is None else points
    w = _wind(mesh)
    k = fd.Constant(kappa)
    bcs = [fd.DirichletBC(V, 0.0, "on_boundary")]

    def step_form(u, u_old, v):
        return ((u - u_old) / dt * v + fd.inner(w, fd.grad(u)) * v + k * fd.inner(fd.grad(u), fd.grad(v))) * fd.dx

    obs_steps = [round(t / dt) for t in observation_times]
    if taped:
        # The same loop in plain Firedrake, returning the states at the observation times (copies: the
        # loop overwrites u)
        obs = PointObservation(V, points, channels=len(observation_times))

        def forward(m):
            u_old, u, v = m.copy(deepcopy=True), fd.Function(V), fd.TestFunction(V)
            problem = fd.LinearVariationalProblem(fd.lhs(step_form(fd.TrialFunction(V), u_old, v)),
                                                  fd.rhs(step_form(fd.TrialFunction(V), u_old, v)), u, bcs=bcs,
                                                  constant_jacobian=True)
            solver = fd.LinearVariationalSolver(problem, solver_parameters={"ksp_type": "preonly", "pc_type": "lu"})
            states = [m.copy(deepcopy=True)] if 0 in obs_steps else []
            for n in range(1, steps + 1):
                solver.solve()
                u_old.assign(u)
                if n in obs_steps:
                    states.append(u.copy(deepcopy=True))
            return states

        return TapedMap(forward, V, obs)
    u, u_old, m, v = fd.Function(V, name="u"), fd.Function(V, name="u_old"), fd.Function(V, name="m"), \
        fd.TestFunction(V)
    obs = PointObservation(V, points, channels=len(observation_times))
    return TimeSteppingModel(step_form(u, u_old, v), u, u_old, m, steps=steps, dt=dt, observation=obs,
                             observation_times=observation_times, initial_condition="parameter", bcs=bcs,
                             checkpointing=checkpointing)


def nonlinear_heat(mesh, *, steps: int = 10, end_time: float = 0.1, points=None, observation_times=None,
                   checkpointing=None, solver_parameters=None):
    r"""Nonlinear heat equation with log-conductivity parameter :math:`m` (P1), backward Euler,
    :math:`u_0 = 0`, source :math:`f`, :math:`u = 0` on the boundary."""
    import firedrake as fd

    from pdeinv.forward.timestepping import TimeSteppingModel
    from pdeinv.observation import PointObservation

    V = fd.FunctionSpace(mesh, "CG", 1)
    Vm = fd.FunctionSpace(mesh, "CG", 1)
    dt = end_time / steps
    times = observation_times if observation_times is not None else [n * dt for n in range(1, steps + 1)]
    u, u_old, m, v = fd.Function(V, name="u"), fd.Function(V, name="u_old"), fd.Function(Vm, name="m"), \
        fd.TestFunction(V)
    f = _source(mesh)
    F = ((u - u_old) / dt * v + (1 + u**2) * fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) - f * v) * fd.dx
    obs = PointObservation(V, grid_points(4) if points is None else points, channels=len(times))
    return TimeSteppingModel(F, u, u_old, m, steps=steps, dt=dt, observation=obs, observation_times=times,
                             initial_condition=0.0, bcs=[fd.DirichletBC(V, 0.0, "on_boundary")],
                             checkpointing=checkpointing, solver_parameters=solver_parameters)
