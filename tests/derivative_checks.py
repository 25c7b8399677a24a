"""Shared derivative checks: Taylor test of the misfit gradient, dot test of the JVP/VJP pair and
symmetry of the Gauss-Newton Hessian, all at a point away from the truth."""

from dataclasses import dataclass

import firedrake as fd

from pdeinv.maps import Misfit
from pdeinv.verify import dot_test, symmetry_test, taylor_test

TAYLOR_MIN_RATE = 1.9
DOT_TOL = 1e-10
SYMMETRY_TOL = 1e-10


@dataclass
class Checks:
    taylor: object
    dot: object
    symmetry: object
    misfit: float
    gradient_norm: float


def directions(V):
    x = fd.SpatialCoordinate(V.mesh())
    dm = fd.Function(V, name="dm").interpolate(fd.cos(2 * x[0]) * x[1] + 0.3)
    dm2 = fd.Function(V, name="dm2").interpolate(x[0] * x[0] - x[1])
    return dm, dm2


def run_checks(model, m_true, noise, *, seed=7, epsilon0=1e-2) -> Checks:
    """Synthetic data at ``m_true``, then all three checks at ``m_true + 0.1 dm2``."""
    V = model.parameter_space
    dm, dm2 = directions(V)
    data = noise.sample(model(m_true), seed=seed)
    misfit = Misfit(model, noise, data)
    m = fd.Function(V).interpolate(m_true + 0.1 * dm2)
    g = misfit.gradient(m)
    taylor = taylor_test(misfit, m, dm, derivative=g, epsilon0=epsilon0)
    w = noise.gradient(model(m), data)
    dot = dot_test(model, m, dm, w)
    sym = symmetry_test(lambda v: misfit.gauss_newton_action(m, v), dm, dm2)
    riesz = g.riesz_representation("l2")
    with riesz.dat.vec_ro as r:
        gnorm = r.norm()
    return Checks(taylor, dot, sym, misfit(m), gnorm)


def assert_derivatives_ok(c: Checks):
    assert c.taylor.min_rate >= TAYLOR_MIN_RATE, str(c.taylor)
    assert c.dot.relative_error <= DOT_TOL, c.dot
    assert c.symmetry.relative_error <= SYMMETRY_TOL, c.symmetry
