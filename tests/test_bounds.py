"""Bound constraints: projected Newton–CG on a box-constrained quadratic whose solution is known exactly.

The quadratic is a real inverse problem — a linear PDE, point data, a BiLaplacian prior — with its prior
mean chosen so that a given ``m*`` is the constrained minimiser: ``m*`` = clip(s) for a smooth s, at the
lower bound where s < 0 and at the upper where s > 1, and

    grad J(m*) = mu,   mu_i = kappa * w_i * rho_i   (w the lumped mass, rho = +1 / -1 / 0 on the lower /
                                                     upper / free dofs),

i.e. the KKT conditions with strictly positive multipliers: m* is the unique minimiser (J strictly convex)
and its active set is strict.  The mean that does it: mbar = m* + C (Phi'(m*) - mu), C the prior covariance.
"""

import firedrake as fd
import numpy as np
import pytest

from pdeinv.forward.stationary import StationaryModel
from pdeinv.linalg.arrays import local_values, set_local_values
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.observation import PointObservation
from pdeinv.optimize import Bounds, NewtonCGOptions, projected_newton_cg
from pdeinv.prior import BiLaplacianPrior
from pdeinv.problem import InverseProblem
from pdeinv.verify import dual_pairing

GRID = np.array([[x, y] for x in np.linspace(0.1, 0.9, 5) for y in np.linspace(0.1, 0.9, 5)])
KAPPA = 0.5
# gamma -> 0 makes the prior precision delta^2 M (an L2-type prior: a control-constrained problem, the class on
# which active-set Newton methods are mesh independent, Hintermueller & Ulbrich 2004).  With a smoothing prior
# (gamma = 0.05, an H2-obstacle-like problem) the multipliers concentrate and the count grows: measured 4, 5, 5
# Newton and 47, 123, 297 CG iterations on 8, 16, 32 (docs/own-model.md says so).
GAMMA = 1e-6


def box_quadratic(n):
    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    u, m, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = (fd.inner(fd.grad(u), fd.grad(v)) + u * v - m * v) * fd.dx
    model = StationaryModel(F, u, m, observation=PointObservation(V, GRID),
                            bcs=[fd.DirichletBC(V, 0, "on_boundary")])
    s = local_values(fd.Function(V).interpolate(0.5 + 1.2 * fd.sin(2 * fd.pi * x) * fd.sin(fd.pi * y)))
    lower, upper = s < 0.0, s > 1.0
    m_star = fd.Function(V)
    set_local_values(m_star, np.clip(s, 0.0, 1.0))
    noise = GaussianNoise(model.observation, 0.05)
    data = model(fd.Function(V).interpolate(0.3 + x * y))
    misfit = Misfit(model, noise, data)
    w = local_values(fd.assemble(v * fd.dx))
    mu = fd.Cofunction(V.dual())
    set_local_values(mu, KAPPA * w * np.where(lower, 1.0, np.where(upper, -1.0, 0.0)))
    base = BiLaplacianPrior(V, gamma=GAMMA, delta=1.0)
    c = misfit.gradient(m_star)
    c -= mu
    mean = fd.Function(V).assign(m_star + base.covariance_action(c))
    problem = InverseProblem(misfit, BiLaplacianPrior(V, gamma=GAMMA, delta=1.0, mean=mean))
    return problem, m_star, lower, upper


@pytest.mark.parallel(nprocs=[1, 2])
def test_box_constrained_quadratic_exact_active_set_and_flat_iterations():
    iterations = []
    for n in (8, 16, 32):
        problem, m_star, lower, upper = box_quadratic(n)
        V = problem.parameter_space
        comm = V.mesh().comm
        bounds = Bounds.on(V, lower=0.0, upper=1.0)
        g_star = problem.gradient(m_star)
        assert np.abs(local_values(bounds.projected_gradient(m_star, g_star))).max(initial=0) <= 1e-9  # KKT
        opts = NewtonCGOptions(gradient_rtol=1e-10, max_iterations=40, quiet=True)
        res = projected_newton_cg(problem, fd.Function(V).assign(0.5), bounds, options=opts)
        assert res.converged, res.reason
        at_lo, at_hi = bounds.active(res.m)
        assert comm.allreduce(int(np.sum(at_lo != lower))) == 0  # the exact active set
        assert comm.allreduce(int(np.sum(at_hi != upper))) == 0
        assert comm.allreduce(int(np.sum(lower))) > 0 and comm.allreduce(int(np.sum(upper))) > 0
        g = problem.gradient(res.m)
        pg = bounds.projected_gradient(res.m, g)
        first = bounds.projected_gradient(fd.Function(V).assign(0.5), problem.gradient(fd.Function(V).assign(0.5)))
        P = problem.preconditioner
        rel = np.sqrt(dual_pairing(pg, P(pg)) / dual_pairing(first, P(first)))
        assert rel <= 1e-8, rel
        err = comm.allreduce(float(np.abs(local_values(res.m) - local_values(m_star)).max(initial=0)), op=_max())
        assert err <= 1e-6, err
        assert bounds.contains(res.m)
        iterations.append(res.iterations)
    assert max(iterations) <= 1.1 * min(iterations), iterations


def _max():
    from mpi4py import MPI

    return MPI.MAX


def test_bounds_refusals_are_one_clear_error():
    mesh = fd.UnitSquareMesh(2, 2)
    V = fd.FunctionSpace(mesh, "CG", 1)
    with pytest.raises(ValueError, match="lower bound exceeds the upper bound at 9 dof"):
        Bounds.on(V, lower=1.0, upper=0.0)
    with pytest.raises(ValueError, match="NaN"):
        Bounds.on(V, lower=float("nan"))
    with pytest.raises(ValueError, match="one such entry per block"):
        Bounds.on(V, lower=[0.0, 1.0])
    W = V * fd.FunctionSpace(mesh, "R", 0)
    b = Bounds.on(W, lower=[None, 0.5], upper=[1.0, None])
    f = fd.Function(W)
    f.subfunctions[0].dat.data[:] = 3.0
    b.project(f)
    assert np.allclose(f.subfunctions[0].dat.data_ro, 1.0) and np.allclose(f.subfunctions[1].dat.data_ro, 0.5)
