"""Heat model: closed-form decay, convergence in space and time, derivatives for every parameter."""

import math

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import assert_derivatives_ok, run_checks

from pdeinv.forward.boundary import Dirichlet, Neumann, Robin
from pdeinv.forward.heat import HEAT_PARAMETERS, HeatModel
from pdeinv.noise import GaussianNoise

POINTS = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.4, 0.6], [0.85, 0.15]])


def decay_error(n, steps, theta, degree, T=0.05, kappa=1.0):
    """L2 error at T of the decaying mode u0 = sin(pi x) sin(pi y), u = exp(-2 pi^2 kappa t) u0."""
    mesh = fd.UnitSquareMesh(n, n)
    model = HeatModel(mesh, unknown="initial_condition", end_time=T, steps=steps, theta=theta,
                      degree=degree, conductivity=kappa, observation_points=POINTS, observation_times=[T])
    x, y = fd.SpatialCoordinate(mesh)
    u0 = fd.sin(fd.pi * x) * fd.sin(fd.pi * y)
    m = fd.Function(model.parameter_space).interpolate(u0)
    uT = model.state_at_end(m)
    exact = math.exp(-2 * math.pi**2 * kappa * T) * u0
    return math.sqrt(fd.assemble((uT - exact) ** 2 * fd.dx(degree=degree + 4)))


def rates(errors):
    return [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]


@pytest.mark.parallel(nprocs=[1, 2])
def test_space_convergence_p1_rate_2():
    # Crank-Nicolson with small steps: the spatial error dominates.
    errs = [decay_error(n, 64, 0.5, 1) for n in (8, 16, 32)]
    assert all(1.8 < r < 2.3 for r in rates(errs)), (errs, rates(errs))


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("theta, order", [(1.0, 1), (0.5, 2)])
def test_time_convergence_backward_euler_1_crank_nicolson_2(theta, order):
    # P2 on a fine-enough mesh: the time error dominates.
    errs = [decay_error(24, steps, theta, 2) for steps in (4, 8, 16)]
    r = rates(errs)
    assert all(order - 0.2 < q < order + 0.3 for q in r), (errs, r)


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("parameter", HEAT_PARAMETERS)
@pytest.mark.parametrize("theta", [1.0, 0.5])
def test_derivatives(parameter, theta):
    mesh = fd.UnitSquareMesh(6, 6)
    model = HeatModel(mesh, unknown=parameter, end_time=0.1, steps=8, theta=theta,
                      observation_points=POINTS, observation_times=[0.025, 0.05, 0.1],
                      initial_condition=fd.Constant(0.5), source=1.0,
                      boundary=[Robin(1, 2.0, 0.3), Neumann(2, 0.5), Dirichlet((3, 4), 0.2)])
    x, y = fd.SpatialCoordinate(mesh)
    m_true = fd.Function(model.parameter_space).interpolate(0.5 + 0.3 * fd.sin(fd.pi * x) * y)
    checks = run_checks(model, m_true, GaussianNoise(model.observation, 0.01))
    assert_derivatives_ok(checks)


@pytest.mark.parallel(nprocs=[1, 2])
def test_3d_log_conductivity_derivatives():
    mesh = fd.UnitCubeMesh(3, 3, 3)
    pts = np.array([[0.3, 0.4, 0.5], [0.6, 0.5, 0.4]])
    model = HeatModel(mesh, unknown="log_conductivity", end_time=0.1, steps=4,
                      observation_points=pts, initial_condition=fd.Constant(1.0), source=1.0)
    x = fd.SpatialCoordinate(mesh)
    m_true = fd.Function(model.parameter_space).interpolate(0.2 * x[0] * x[2])
    assert_derivatives_ok(run_checks(model, m_true, GaussianNoise(model.observation, 0.01)))


def test_solver_built_once_for_linear_parameters():
    mesh = fd.UnitSquareMesh(4, 4)
    model = HeatModel(mesh, unknown="initial_condition", end_time=0.1, steps=5, observation_points=POINTS)
    V = model.parameter_space
    m = fd.Function(V).assign(1.0)
    dm = fd.Function(V).assign(0.5)
    model(m)
    model.jvp(m, dm)
    model.vjp(m, fd.Cofunction(model.data_space.dual()))
    m.assign(2.0)
    model(m)
    assert model.counts["factorisations"] == 1
    assert model.counts["forward"] == 2
    assert model.counts["linear_solves"] == 4 * 5


@pytest.mark.parametrize("kwargs, match", [
    ({"unknown": "kappa"}, "unknown must be one of 'initial_condition', 'source', 'log_conductivity'"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"theta": 0.2}, "theta must be in"),
    ({"observation_times": [0.033]}, "not a time step"),
    ({"observation_points": [[0.5, 1.5]]}, "outside the mesh"),
])
def test_bad_input_gives_one_clear_error(kwargs, match):
    mesh = fd.UnitSquareMesh(4, 4)
    args = {"unknown": "initial_condition", "end_time": 0.1, "steps": 5, "observation_points": POINTS}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        HeatModel(mesh, **args)


def test_the_former_keyword_parameter_still_works_with_a_warning():
    """``HeatModel(parameter=...)`` (its name before ``unknown=``) builds the same model, with a
    DeprecationWarning; both at once, or neither, is a TypeError."""
    from pdeinv.forward.heat import HeatUnknown

    mesh = fd.UnitSquareMesh(4, 4)
    kw = {"end_time": 0.1, "steps": 2, "observation_points": POINTS}
    with pytest.warns(DeprecationWarning, match="now called unknown="):
        old = HeatModel(mesh, parameter="log_conductivity", **kw)
    assert old.unknown is HeatUnknown.LOG_CONDUCTIVITY
    assert HeatModel(mesh, unknown=HeatUnknown.LOG_CONDUCTIVITY, **kw).unknown == "log_conductivity"
    with pytest.raises(TypeError, match="unknown= only"):
        HeatModel(mesh, unknown="source", parameter="source", **kw)
    with pytest.raises(TypeError, match="unknown is required"):
        HeatModel(mesh, **kw)
