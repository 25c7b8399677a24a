"""TapedMap with a time series (one state per observation channel), replayed at new points: equal to the
time-stepping engine on the same discrete program, full-Hessian Taylor rate 3, one recording."""

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import directions
from mpi4py import MPI

from pdeinv.forward.examples import advection_diffusion, grid_points, nonlinear_heat
from pdeinv.forward.taped import Recording, TapedMap
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.observation import PointObservation
from pdeinv.verify import taylor_test

STEPS = 5


def rel_diff(a, b):
    comm = a.function_space().mesh().comm
    err = comm.allreduce(float(np.max(np.abs(a.dat.data_ro - b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    scale = comm.allreduce(float(np.max(np.abs(b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    return err / scale


def taped_nonlinear_heat(mesh):
    """examples.nonlinear_heat's time loop in plain Firedrake, every state returned."""
    params = {"snes_type": "newtonls", "snes_linesearch_type": "basic", "snes_rtol": 1e-14, "snes_atol": 1e-15,
              "snes_stol": 0.0, "ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
    reference = nonlinear_heat(mesh, steps=STEPS, solver_parameters=params)
    V = reference.state_space
    dt = 0.1 / STEPS
    x, y = fd.SpatialCoordinate(mesh)
    f = 10.0 * fd.sin(fd.pi * x) * fd.sin(fd.pi * y)  # as in examples.nonlinear_heat

    def forward(m):
        u, u_old, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
        F = ((u - u_old) / dt * v + (1 + u**2) * fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) - f * v) * fd.dx
        solver = fd.NonlinearVariationalSolver(
            fd.NonlinearVariationalProblem(F, u, bcs=[fd.DirichletBC(V, 0.0, "on_boundary")]), solver_parameters=params)
        states = []
        for _ in range(STEPS):
            solver.solve()
            u_old.assign(u)
            states.append(u.copy(deepcopy=True))
        return states

    obs = PointObservation(V, grid_points(4), channels=STEPS)
    return TapedMap(forward, reference.parameter_space, obs), reference


def truth(V):
    x, y = fd.SpatialCoordinate(V.mesh())
    return fd.Function(V).interpolate(0.4 * fd.sin(3 * x) * y)


def as_dual(obs, values):
    w = fd.Cofunction(obs.space.dual())
    w.dat.data[:] = obs.from_array(values).dat.data_ro
    return w


@pytest.mark.parallel(nprocs=[1, 2])
def test_taped_time_series_equals_timestepping_engine():
    mesh = fd.UnitSquareMesh(6, 6)
    taped, ref = taped_nonlinear_heat(mesh)
    Vm = ref.parameter_space
    m = truth(Vm)
    dm, _ = directions(Vm)
    obs = taped.observation
    values = np.cos(np.arange(obs.n_points * obs.channels) + 0.5).reshape(obs.n_points, -1)
    for point in (m, fd.Function(Vm).interpolate(m + 0.2 * dm)):  # the second point: a replay
        assert np.max(np.abs(obs.to_array(taped(point)) - ref.observation.to_array(ref(point)))) <= 1e-10
        jt, jr = obs.to_array(taped.jvp(point, dm)), ref.observation.to_array(ref.jvp(point, dm))
        assert np.max(np.abs(jt - jr)) <= 1e-10 * np.max(np.abs(jr))
        assert rel_diff(taped.vjp(point, as_dual(obs, values)), ref.vjp(point, as_dual(ref.observation, values))) \
            <= 1e-10
    assert taped.recordings == 1


@pytest.mark.parallel(nprocs=[1, 2])
def test_taped_time_series_full_hessian_taylor_rate_3_and_replay_equals_recording():
    mesh = fd.UnitSquareMesh(6, 6)
    taped, _ = taped_nonlinear_heat(mesh)
    Vm = taped.parameter_space
    fresh = TapedMap(taped.forward, Vm, taped.observation, recording=Recording.EACH_POINT)
    noise = GaussianNoise(taped.observation, 0.01)
    data = noise.sample(taped(truth(Vm)), seed=2)
    dm, dm2 = directions(Vm)
    m = fd.Function(Vm).interpolate(truth(Vm) + 0.3 * dm2)
    misfit = Misfit(taped, noise, data)
    res = taylor_test(misfit, m, dm, derivative=misfit.gradient(m), hessian=misfit.hessian_action(m, dm),
                      epsilon0=0.05)
    assert res.min_rate >= 1.9, str(res)
    assert res.min_rate2 >= 2.9, res.rates2
    assert taped.recordings == 1  # every evaluation of the Taylor test was a replay
    other = Misfit(fresh, noise, data)
    assert rel_diff(misfit.gradient(m), other.gradient(m)) <= 1e-12
    assert rel_diff(misfit.hessian_action(m, dm), other.hessian_action(m, dm)) <= 1e-12
    fresh(truth(Vm))
    assert fresh.recordings == 2  # one per point


@pytest.mark.parallel(nprocs=[1, 2])
def test_taped_linear_time_series_equals_generic():
    mesh = fd.UnitSquareMesh(6, 6)
    generic = advection_diffusion(mesh, steps=6)
    taped = advection_diffusion(mesh, steps=6, taped=True)
    Vm = generic.parameter_space
    m, dm = truth(Vm), directions(Vm)[0]
    assert np.max(np.abs(taped.observation.to_array(taped.jvp(m, dm))
                         - generic.observation.to_array(generic.jvp(m, dm)))) <= 1e-10
    values = np.sin(np.arange(generic.observation.n_points * generic.observation.channels)).reshape(
        generic.observation.n_points, -1)
    assert rel_diff(taped.vjp(m, as_dual(taped.observation, values)),
                    generic.vjp(m, as_dual(generic.observation, values))) <= 1e-10


def test_taped_outputs_checked():
    mesh = fd.UnitSquareMesh(3, 3)
    V = fd.FunctionSpace(mesh, "CG", 1)
    obs = PointObservation(V, [[0.5, 0.5]], channels=2)

    def same_twice(m):
        u = fd.Function(V).assign(m)
        return [u, u]

    with pytest.raises(ValueError, match="one Function several times"):
        TapedMap(same_twice, V, obs)(fd.Function(V))
    with pytest.raises(ValueError, match="returned 1 states, the observation has 2"):
        TapedMap(lambda m: fd.Function(V).assign(m), V, obs)(fd.Function(V))
    with pytest.raises(ValueError, match="recording must be one of"):
        TapedMap(same_twice, V, obs, recording="sometimes")
