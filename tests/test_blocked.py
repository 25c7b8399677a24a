"""Blocked derivatives (#10): several directions through one pass of the solvers (PETSc KSPMatSolve on
dense blocks) give the same numbers as one action at a time, on 1 and 2 ranks."""

import firedrake as fd
import numpy as np
import pytest
from mpi4py import MPI

from pdeinv.forward.examples import nonlinear_diffusion
from pdeinv.forward.poisson import PoissonModel
from pdeinv.linalg.multivector import MultiFunction, random_multifunction
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.prior import BiLaplacianPrior
from pdeinv.problem import InverseProblem
from pdeinv.verify import dual_pairing

POINTS = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.4, 0.6], [0.9, 0.1], [0.3, 0.9]])


def max_rel_diff(a, b):
    comm = a.function_space().mesh().comm
    d = comm.allreduce(float(np.max(np.abs(a.dat.data_ro - b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    s = comm.allreduce(float(np.max(np.abs(b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    return d / max(s, 1e-300)


def setup(make):
    model = make(fd.UnitSquareMesh(10, 10))
    Vm = model.parameter_space
    x, y = fd.SpatialCoordinate(Vm.mesh())
    m = fd.Function(Vm).interpolate(0.3 * fd.sin(fd.pi * x) * fd.cos(y))
    noise = GaussianNoise(model.observation, 0.01)
    data = noise.sample(model(m), seed=1)
    return model, m, noise, data


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("make", [lambda mesh: PoissonModel(mesh, observation_points=POINTS), nonlinear_diffusion],
                         ids=["poisson", "nonlinear"])
def test_block_jvp_vjp_equal_columnwise(make):
    model, m, noise, data = setup(make)
    dms = random_multifunction(model.parameter_space, 5, seed=3).functions
    solves = model.counts["linear_solves"]
    blocked = model.jvp_block(m, dms)
    assert model.counts["linear_solves"] - solves == 5  # one solve per column, all in one KSPMatSolve
    for b, dm in zip(blocked, dms, strict=True):
        assert max_rel_diff(b, model.jvp(m, dm)) <= 1e-12
    ws = [noise.gauss_newton_weight(model.prediction(m), data, j) for j in blocked]
    for b, w in zip(model.vjp_block(m, ws), ws, strict=True):
        assert max_rel_diff(b, model.vjp(m, w)) <= 1e-12
    misfit = Misfit(model, noise, data)
    for b, dm in zip(misfit.gauss_newton_action_block(m, dms), dms, strict=True):
        assert max_rel_diff(b, misfit.gauss_newton_action(m, dm)) <= 1e-12


def linear_model(mesh, kind):
    """-div grad u = m with u = 0 on the boundary, observed at points, as a field or by two integrals."""
    from pdeinv.forward.stationary import StationaryModel
    from pdeinv.observation import FieldObservation, IntegralObservation, PointObservation

    V = fd.FunctionSpace(mesh, "CG", 1)
    u, m, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    x, y = fd.SpatialCoordinate(mesh)
    obs = {"points": lambda: PointObservation(V, POINTS),
           "field": lambda: FieldObservation(V),
           "integrals": lambda: IntegralObservation(V, [lambda w: w * fd.dx, lambda w: x * y * w * fd.dx])}[kind]()
    F = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - m * v * fd.dx
    return StationaryModel(F, u, m, observation=obs, bcs=[fd.DirichletBC(V, 0, "on_boundary")])


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("kind", ["points", "field", "integrals"])
def test_block_jvp_vjp_every_observation_kind(kind):
    """The observation's own block versions (one sparse product for points, column by column for fields
    and integrals) give what one action at a time gives."""
    model = linear_model(fd.UnitSquareMesh(8, 8), kind)
    V = model.parameter_space
    m = fd.Function(V)
    dms = random_multifunction(V, 3, seed=5).functions
    blocked = model.jvp_block(m, dms)
    for b, dm in zip(blocked, dms, strict=True):
        assert max_rel_diff(b, model.jvp(m, dm)) <= 1e-12
    ws = [fd.Cofunction(model.data_space.dual(), val=j.dat) for j in blocked]
    for b, w in zip(model.vjp_block(m, ws), ws, strict=True):
        assert max_rel_diff(b, model.vjp(m, w)) <= 1e-12


@pytest.mark.parallel(nprocs=[1, 2])
def test_block_covariance_and_pair():
    V = fd.FunctionSpace(fd.UnitSquareMesh(10, 10), "CG", 1)
    prior = BiLaplacianPrior.from_correlation(V, correlation_length=0.3, variance=1.0)
    xs = random_multifunction(V, 4, seed=7)
    cs = [prior.precision_action(x) for x in xs]
    for b, c in zip(prior.covariance_action_block(cs), cs, strict=True):
        assert max_rel_diff(b, prior.covariance_action(c)) <= 1e-10
    G = xs.pair(cs)  # one local product + one allreduce
    G_ref = np.array([[dual_pairing(c, x) for x in xs.functions] for c in cs])
    assert np.max(np.abs(G - G_ref)) <= 1e-12 * np.max(np.abs(G_ref))
    assert MultiFunction(V, []).pair(cs).shape == (4, 0)


@pytest.mark.parallel(nprocs=[1, 2])
def test_laplace_blocked_equals_one_action_at_a_time():
    """The randomized eigensolver with blocked Hessian and covariance actions gives the eigenvalues of the
    column-by-column run (same random block) to 1e-10."""
    from pdeinv.linalg.randomized import double_pass
    from pdeinv.posterior import LaplaceApproximation

    model, m, noise, data = setup(lambda mesh: PoissonModel(mesh, observation_points=POINTS))
    prior = BiLaplacianPrior.from_correlation(model.parameter_space, correlation_length=0.3, variance=1.0)
    problem = InverseProblem(Misfit(model, noise, data), prior)
    la = LaplaceApproximation(problem, m, rank=3, oversampling=2)  # 5 <= 6 observations: no column dropped
    ref = double_pass(lambda v: problem.hessian_action(m, v, misfit_only=True), prior.precision_action,
                      prior.covariance_action, model.parameter_space, k=3, p=2)
    assert la.hessian_actions == ref.hessian_actions == 10
    np.testing.assert_allclose(la.eigenvalues, np.maximum(ref.eigenvalues, 0), rtol=1e-10)
