"""Poisson log-coefficient model: manufactured solution, derivatives."""

import math

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import assert_derivatives_ok, run_checks

from pdeinv.forward.boundary import Dirichlet
from pdeinv.forward.poisson import PoissonModel
from pdeinv.noise import GaussianNoise

POINTS = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.4, 0.6]])


def mms_error(n, degree, linear_coefficient=False):
    mesh = fd.UnitSquareMesh(n, n)
    x, y = fd.SpatialCoordinate(mesh)
    # m lives in P1: a linear m is represented exactly, a curved one with an O(h^2) error
    m_expr = 0.3 * x - 0.2 * y if linear_coefficient else 0.5 * fd.sin(2 * x) * y
    u_exact = fd.sin(fd.pi * x) * fd.cos(y) + x * y
    f = -fd.div(fd.exp(m_expr) * fd.grad(u_exact))
    model = PoissonModel(mesh, observation_points=POINTS, degree=degree, source=f,
                         boundary=[Dirichlet("on_boundary", u_exact)])
    m = fd.Function(model.parameter_space).interpolate(m_expr)
    u = model.state(m)
    return math.sqrt(fd.assemble((u - u_exact) ** 2 * fd.dx(degree=degree + 4)))


@pytest.mark.parallel(nprocs=[1, 2])
def test_manufactured_solution_p1_state_rate_2():
    errs = [mms_error(n, 1) for n in (8, 16, 32)]
    r = [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
    assert all(1.8 < q < 2.3 for q in r), (errs, r)


@pytest.mark.parallel(nprocs=[1, 2])
def test_manufactured_solution_p2_state_rate_3():
    errs = [mms_error(n, 2, linear_coefficient=True) for n in (4, 8, 16)]
    r = [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
    assert all(2.8 < q < 3.3 for q in r), (errs, r)


@pytest.mark.parallel(nprocs=[1, 2])
def test_derivatives_hippylib_setup():
    mesh = fd.UnitSquareMesh(8, 8)
    model = PoissonModel(mesh, observation_points=POINTS)
    x, y = fd.SpatialCoordinate(mesh)
    m_true = fd.Function(model.parameter_space).interpolate(0.5 * fd.sin(fd.pi * x) * fd.cos(y))
    assert_derivatives_ok(run_checks(model, m_true, GaussianNoise(model.observation, 0.01)))


def test_parameter_on_wrong_space_is_rejected():
    mesh = fd.UnitSquareMesh(4, 4)
    model = PoissonModel(mesh, observation_points=POINTS)
    wrong = fd.Function(fd.FunctionSpace(mesh, "DG", 0))
    with pytest.raises(ValueError, match="m: expected a Function on"):
        model(wrong)
    with pytest.raises(TypeError, match="expected a firedrake.Function"):
        model(np.zeros(3))
