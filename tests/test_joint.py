"""A joint inversion of a field and three scalars: the parameter space is W = V x R x R x R (a
log-conductivity and three material constants, one Real space each), the prior a ProductPrior (BiLaplacian
on the field, one dense Gaussian on the three scalars together), bounds on both kinds of block.

Checked: gradient and Gauss–Newton action against pyadjoint on the same discrete program (the GN action at
zero residual, where it is the full Hessian pyadjoint computes), Taylor rates 2 and 3 (full Hessian),
dot test, GN symmetry, the Laplace variance and the scalars' covariance and cross-covariances against the
dense posterior, and a bounded MAP satisfying the KKT conditions with the bound active."""

import firedrake as fd
import numpy as np
import pytest
from firedrake.adjoint import Control, ReducedFunctional
from mpi4py import MPI

from pdeinv._tape import recording
from pdeinv.forward.stationary import StationaryModel
from pdeinv.linalg.arrays import local_values, set_local_values
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.observation import PointObservation
from pdeinv.prior import BiLaplacianPrior, ProductPrior, RealGaussianPrior
from pdeinv.prior.real import real_values
from pdeinv.problem import InverseProblem
from pdeinv.verify import dot_test, dual_pairing, symmetry_test, taylor_test

POINTS = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.4, 0.6], [0.9, 0.15], [0.3, 0.8], [0.75, 0.35]])
DX = fd.dx(degree=6)
SIGMA = 1e-3
THETA_COV = [[0.25, 0.05, 0.0], [0.05, 1.0, 0.2], [0.0, 0.2, 1.0]]


def joint_residual(u, m, v):
    k, a, b, c = fd.split(m)
    x, _ = fd.SpatialCoordinate(u.function_space().mesh())
    return (fd.exp(k) * fd.inner(fd.grad(u), fd.grad(v)) + a**2 * u * v - (b + c * x) * v) * DX


def joint_point(W, field, theta):
    m = fd.Function(W, name="m")
    m.subfunctions[0].interpolate(field)
    for part, value in zip(m.subfunctions[1:], theta, strict=True):
        part.dat.data[:] = value
    return m


def scalars_of(f):
    return np.array([float(part.dat.data_ro[0]) for part in f.subfunctions[1:]])


def joint_model(n=4):
    mesh = fd.UnitSquareMesh(n, n)
    Vs = fd.FunctionSpace(mesh, "CG", 1)
    R = fd.FunctionSpace(mesh, "R", 0)
    W = fd.FunctionSpace(mesh, "CG", 1) * R * R * R
    u, m, v = fd.Function(Vs), fd.Function(W), fd.TestFunction(Vs)
    model = StationaryModel(joint_residual(u, m, v), u, m, observation=PointObservation(Vs, POINTS),
                            bcs=[fd.DirichletBC(Vs, 0, "on_boundary")])
    x, y = fd.SpatialCoordinate(mesh)
    return model, joint_point(W, 0.3 * fd.sin(fd.pi * x) * y, [1.2, 2.0, -1.0]), (x, y)


def joint_prior(W, theta_mean=(1.0, 1.5, 0.0)):
    return ProductPrior(W, [BiLaplacianPrior(W.sub(0).collapse(), gamma=0.1, delta=1.0),
                            RealGaussianPrior(scalar_space(W), covariance=THETA_COV, mean=theta_mean)])


def scalar_space(W):
    R = W.sub(1).collapse()
    return R * R * R


def directions(W, xy):
    x, y = xy
    return (joint_point(W, fd.cos(2 * x) * y + 0.3, [0.3, -0.5, 0.7]),
            joint_point(W, x * x - y, [-0.2, 0.4, 0.1]))


def global_max(comm, a):
    return comm.allreduce(float(np.max(np.abs(a), initial=0.0)), op=MPI.MAX)


def pyadjoint_prediction(model, m):
    """pyadjoint's reduced functional m -> B u(m) (a Function at the observation points), taped from
    plain Firedrake: its tlm is J dm, its derivative with a data-space weight J^T w."""
    obs = model.observation
    P0 = fd.FunctionSpace(obs.vom, "DG", 0)
    with recording():
        control = m.copy(deepcopy=True)
        u = fd.Function(model.state_space)
        F = joint_residual(u, control, fd.TestFunction(model.state_space))
        fd.solve(F == 0, u, bcs=[fd.DirichletBC(model.state_space, 0, "on_boundary")],
                 solver_parameters={"snes_rtol": 1e-14, "snes_atol": 1e-15, "ksp_type": "preonly", "pc_type": "lu",
                                    "pc_factor_mat_solver_type": "mumps"})
        return ReducedFunctional(fd.assemble(fd.interpolate(u, P0)), Control(control)), P0


def weight(P0, values):
    w = fd.Cofunction(P0.dual())
    w.dat.data[:] = values
    return w


@pytest.mark.parallel(nprocs=[1, 2])
def test_joint_gradient_and_gauss_newton_equal_pyadjoint():
    model, m, xy = joint_model()
    W = model.parameter_space
    comm = W.mesh().comm
    dm, dm2 = directions(W, xy)
    truth = m.copy(deepcopy=True)
    truth += 0.5 * dm2
    noise = GaussianNoise(model.observation, SIGMA)
    misfit = Misfit(model, noise, model(truth).copy(deepcopy=True))
    rf, P0 = pyadjoint_prediction(model, m)
    predicted = rf(m)
    assert global_max(comm, predicted.dat.data_ro - model(m).dat.data_ro) <= 1e-12 * global_max(
        comm, predicted.dat.data_ro)
    jdm = rf.tlm(dm)  # pyadjoint's tangent, then its adjoint: the whole Gauss-Newton action is theirs
    pairs = ((misfit.gradient(m), rf.derivative(adj_input=weight(
                  P0, (predicted.dat.data_ro - misfit.data.dat.data_ro) / SIGMA**2))),
             (misfit.gauss_newton_action(m, dm), rf.derivative(adj_input=weight(P0, jdm.dat.data_ro / SIGMA**2))))
    for name, (ours, theirs) in zip(("gradient", "gauss-newton"), pairs, strict=True):
        scale = global_max(comm, local_values(theirs))
        err = global_max(comm, local_values(ours) - local_values(theirs))
        assert err <= 1e-10 * scale, (name, err / scale)
        # the three scalars' entries are among them (a field-only comparison would not see them)
        assert global_max(comm, scalars_of(theirs)) > 1e-6 * scale


@pytest.mark.parallel(nprocs=[1, 2])
def test_joint_taylor_dot_symmetry_and_full_hessian():
    model, m, xy = joint_model()
    W = model.parameter_space
    dm, dm2 = directions(W, xy)
    noise = GaussianNoise(model.observation, SIGMA)
    truth = m.copy(deepcopy=True)
    truth += 0.3 * dm2
    misfit = Misfit(model, noise, noise.sample(model(truth), seed=3))
    t = taylor_test(misfit, m, dm, derivative=misfit.gradient(m), hessian=misfit.hessian_action(m, dm),
                    epsilon0=1e-2)
    assert abs(t.rates1[-1] - 2.0) <= 0.05 and t.min_rate2 >= 2.9, str(t)
    dot = dot_test(model, m, dm, noise.gradient(model(m), misfit.data))
    assert dot.relative_error <= 1e-10, dot
    sym = symmetry_test(lambda v: misfit.gauss_newton_action(m, v), dm, dm2)
    assert sym.relative_error <= 1e-10, sym
    prior = joint_prior(W)
    problem = InverseProblem(misfit, prior)
    t = taylor_test(problem, m, dm, derivative=problem.gradient(m), epsilon0=1e-2)
    assert abs(t.rates1[-1] - 2.0) <= 0.05, str(t)


@pytest.mark.parallel(nprocs=[1, 2])
def test_product_and_real_priors():
    model, m, xy = joint_model()
    W = model.parameter_space
    prior = joint_prior(W)
    field, scalars = prior.blocks
    dm, dm2 = directions(W, xy)
    # cost and precision are the blocks' own; covariance inverts precision
    k = fd.Function(field.space)
    k.dat.data[:] = m.subfunctions[0].dat.data_ro
    theta = fd.Function(scalars.space)
    for part, value in zip(theta.subfunctions, scalars_of(m), strict=True):
        part.dat.data[:] = value
    assert np.isclose(prior(m), field(k) + scalars(theta), rtol=1e-12)
    back = prior.precision_action(prior.covariance_action(prior.precision_action(dm)))
    ref = prior.precision_action(dm)
    assert global_max(W.mesh().comm, local_values(back) - local_values(ref)) <= 1e-10 * global_max(
        W.mesh().comm, local_values(ref))
    assert np.allclose(scalars_of(prior.mean), [1.0, 1.5, 0.0])
    # the scalars' precision is Sigma^{-1} exactly
    assert np.allclose(scalars_of(prior.precision_action(dm)), np.linalg.solve(THETA_COV, scalars_of(dm)),
                       rtol=1e-12)
    # samples: the same on every partition for the scalars; empirical covariance close to Sigma
    draws = np.array([real_values(scalars.sample(seed=s)) for s in range(4000)])
    assert np.abs(np.cov(draws.T) - np.array(THETA_COV)).max() <= 0.1  # 4000 draws: standard error ~0.02
    s = prior.sample(seed=5, reproducible=True)
    assert np.all(np.isfinite(local_values(s)))


def test_real_prior_refusals_are_one_clear_error():
    mesh = fd.UnitSquareMesh(2, 2)
    R = fd.FunctionSpace(mesh, "R", 0)
    R3 = R * R * R
    with pytest.raises(ValueError, match="exactly one of covariance"):
        RealGaussianPrior(R3)
    with pytest.raises(ValueError, match="3 finite positive values"):
        RealGaussianPrior(R3, variance=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="positive definite"):
        RealGaussianPrior(R3, covariance=[[1, 2, 0], [2, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="symmetric"):
        RealGaussianPrior(R3, covariance=[[1, 0.5, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="expected FunctionSpace"):
        RealGaussianPrior(fd.FunctionSpace(mesh, "CG", 1), variance=[1.0])
    with pytest.raises(ValueError, match="one FunctionSpace.mesh, 'R', 0. per number"):
        RealGaussianPrior(fd.VectorFunctionSpace(mesh, "R", 0, dim=3), variance=[1.0, 1.0, 1.0])
    V = fd.FunctionSpace(mesh, "CG", 1)
    W = V * R * R * R
    with pytest.raises(ValueError, match="has 4 sub-spaces but the priors cover 1"):
        ProductPrior(W, [BiLaplacianPrior(V, gamma=1.0, delta=1.0)])
    with pytest.raises(ValueError, match="block 1's prior lives on"):
        ProductPrior(W, [BiLaplacianPrior(V, gamma=1.0, delta=1.0), BiLaplacianPrior(V, gamma=1.0, delta=1.0)])
    with pytest.raises(ValueError, match="a product parameter"):
        BiLaplacianPrior(W, gamma=1.0, delta=1.0)
    one = RealGaussianPrior(R, variance=2.0, mean=1.0)
    assert np.isclose(one(fd.Function(R).assign(3.0)), 0.5 * 4.0 / 2.0)


def dense_posterior(problem, m):
    """The Gauss–Newton posterior covariance at m, dense, in dof coordinates (serial)."""
    model, noise, prior = problem.misfit.map, problem.misfit.noise, problem.prior
    W = problem.parameter_space
    n = W.dim()
    e = fd.Function(W)
    J, R = np.zeros((model.observation.n_points, n)), np.zeros((n, n))
    for i in range(n):
        values = np.zeros(n)
        values[i] = 1.0
        set_local_values(e, values)
        J[:, i] = model.observation.to_array(model.jvp(m, e)).ravel()
        R[:, i] = local_values(prior.precision_action(e))
    return np.linalg.inv(J.T @ J / noise.sigma**2 + 0.5 * (R + R.T))


def test_joint_laplace_equals_the_dense_posterior():
    from pdeinv.linalg.arrays import subspace_indices
    from pdeinv.posterior import LaplaceApproximation

    model, m, xy = joint_model(3)
    W = model.parameter_space
    noise = GaussianNoise(model.observation, SIGMA)
    problem = InverseProblem(Misfit(model, noise, noise.sample(model(m), seed=2)), joint_prior(W))
    post = dense_posterior(problem, m)
    n = W.dim()
    la = LaplaceApproximation(problem, m, rank=n, oversampling=0)
    var = la.pointwise_variance(prior_variance=la.prior_variance(method="exact"))
    assert np.abs(local_values(var) - np.diag(post)).max() <= 1e-8 * np.diag(post).max()
    block = la.block_covariance([W.sub(1), W.sub(2), W.sub(3)])
    idx = np.concatenate([subspace_indices(W.sub(i)) for i in (1, 2, 3)])
    assert np.abs(block.matrix - post[np.ix_(idx, idx)]).max() <= 1e-8 * np.abs(post[np.ix_(idx, idx)]).max()
    cross = np.column_stack([local_values(c) for c in block.columns])
    assert np.abs(cross - post[:, idx]).max() <= 1e-8 * np.abs(post[:, idx]).max()
    assert np.allclose(np.diag(block.correlation), 1.0)
    # the data correlate the scalars with the field: the cross-covariance is not zero
    field = subspace_indices(W.sub(0))
    assert np.abs(post[np.ix_(field, idx)]).max() > 1e-3 * np.abs(post[np.ix_(idx, idx)]).max()


@pytest.mark.parallel(nprocs=[1, 2])
def test_joint_bounded_inversion_meets_the_kkt_conditions():
    from pdeinv.optimize import Bounds, NewtonCGOptions, projected_newton_cg

    model, m, xy = joint_model(6)
    W = model.parameter_space
    x, y = xy
    truth = joint_point(W, 0.4 * fd.sin(fd.pi * x) * fd.cos(fd.pi * y), [0.6, 2.0, -1.0])
    noise = GaussianNoise(model.observation, 1e-2)
    problem = InverseProblem(Misfit(model, noise, noise.sample(model(truth), seed=7)), joint_prior(W))
    # theta_0 >= 1 keeps the truth (0.6) out: that bound must end active; the field in [-0.5, 0.5]
    bounds = Bounds.on(W, lower=[-0.5, 1.0, None, None], upper=[0.5, None, None, None])
    m0 = joint_point(W, 0.0, [1.5, 1.0, 0.0])
    res = projected_newton_cg(problem, m0, bounds,
                              options=NewtonCGOptions(gradient_rtol=1e-9, max_iterations=40, quiet=True))
    assert res.converged, res.reason
    assert bounds.contains(res.m)
    assert scalars_of(res.m)[0] == 1.0  # on the bound, exactly
    g = problem.gradient(res.m)
    assert scalars_of(g)[0] > 0  # its multiplier: positive
    P = problem.preconditioner
    pg, first = bounds.projected_gradient(res.m, g), bounds.projected_gradient(m0, problem.gradient(m0))
    assert np.sqrt(dual_pairing(pg, P(pg)) / dual_pairing(first, P(first))) <= 1e-8
