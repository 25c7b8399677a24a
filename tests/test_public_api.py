"""Public API that no other test exercised (found by review): map invalidation, the Laplace
approximation's precision action and report, TransportModel.states, reproducible prior samples across
partitions, GaussianPlus and the autoregressive prior in Newton + Laplace, L-BFGS's target cost, FISTA
with a TV smooth part."""

import firedrake as fd
import numpy as np
import pytest
from mpi4py import MPI

from pdeinv.forward.examples import grid_points
from pdeinv.forward.stationary import StationaryModel
from pdeinv.forward.transport import TransportModel, boundary_detectors
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.observation import PointObservation
from pdeinv.optimize import FISTAOptions, LBFGSOptions, NewtonCGOptions, fista, lbfgs, newton_cg
from pdeinv.posterior import LaplaceApproximation
from pdeinv.prior import L1, AutoregressivePrior, BiLaplacianPrior, GaussianPlus, TotalVariation
from pdeinv.problem import InverseProblem
from pdeinv.verify import dual_pairing


def source_model(n=8):
    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, m, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    c = fd.Constant(1.0)
    F = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - (m + c) * v * fd.dx
    model = StationaryModel(F, u, m, observation=PointObservation(V, grid_points(4)),
                            bcs=[fd.DirichletBC(V, 0, "on_boundary")])
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(V).interpolate(fd.sin(3 * x) * fd.cos(2 * y))
    noise = GaussianNoise(model.observation, 0.01)
    return model, c, truth, Misfit(model, noise, noise.sample(model(truth), seed=1))


def gmax(f):
    return f.function_space().mesh().comm.allreduce(float(np.max(np.abs(f.dat.data_ro), initial=0.0)), op=MPI.MAX)


@pytest.mark.parallel(nprocs=[1, 2])
def test_invalidate_forgets_the_stored_solution():
    model, c, truth, _ = source_model()
    before = model(truth)
    c.assign(2.0)  # a fixed input changed in place: the stored state is stale until invalidated
    stale = model(truth)
    assert gmax(fd.Function(stale).assign(stale - before)) == 0.0
    model.invalidate()
    fresh = model(truth)
    assert gmax(fd.Function(fresh).assign(fresh - before)) > 1e-3


@pytest.mark.parallel(nprocs=[1, 2])
def test_laplace_precision_inverts_covariance_and_report():
    model, _, truth, misfit = source_model()
    prior = BiLaplacianPrior.from_correlation(model.parameter_space, correlation_length=0.3, variance=1.0)
    problem = InverseProblem(misfit, prior)
    m = newton_cg(problem, fd.Function(model.parameter_space), options=NewtonCGOptions(quiet=True)).m
    lap = LaplaceApproximation(problem, m, rank=8, oversampling=5)
    x, y = fd.SpatialCoordinate(model.parameter_space.mesh())
    f = fd.Function(model.parameter_space).interpolate(x * y + fd.sin(4 * y))
    back = lap.covariance_action(lap.precision_action(f))  # Sherman-Morrison-Woodbury: exact inverses
    assert gmax(fd.Function(f).assign(back - f)) <= 1e-9 * gmax(f)
    rep = lap.report()
    assert rep["rank"] == 8 and len(rep["eigenvalues"]) == 8
    assert rep["expected_information_gain"] > 0 and rep["kl_divergence_from_prior"] > 0
    assert rep["data_informed_dim"] == int(np.sum(np.array(rep["eigenvalues"]) > 1))


@pytest.mark.parallel(nprocs=[1, 2])
def test_transport_states_are_the_directions_fields():
    mesh = fd.UnitSquareMesh(9, 9)
    model = TransportModel(mesh, directions=[[1, 0], [0, 1], [1, 1]], detectors=boundary_detectors(4),
                           unknown="log_absorption")
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(model.parameter_space).interpolate(0.3 * x * y)
    states = model.states(m)
    assert len(states) == 3
    for s in states:
        assert np.all(np.isfinite(s.dat.data_ro)) and gmax(s) > 0
    states[0].dat.data[:] = 0.0  # copies: the model's stored state is unaffected
    assert gmax(model.states(m)[0]) > 0


@pytest.mark.parallel(nprocs=[2])
def test_reproducible_prior_sample_is_partition_independent():
    """The same seed gives the same field on 2 ranks as on one (a serial copy of the mesh on each rank),
    compared at points."""
    pts = grid_points(5)
    samples = []
    for comm in (MPI.COMM_WORLD, MPI.COMM_SELF):
        mesh = fd.UnitSquareMesh(10, 10, comm=comm)
        V = fd.FunctionSpace(mesh, "CG", 1)
        prior = BiLaplacianPrior.from_correlation(V, correlation_length=0.2, variance=1.0)
        s = prior.sample_centered(seed=5, reproducible=True)
        obs = PointObservation(V, pts)
        d = obs.zero_data()
        with s.dat.vec_ro as sv:
            obs.observe(sv, d, 0)
        samples.append(obs.to_array(d))
    assert np.allclose(samples[0], samples[1], rtol=1e-10, atol=1e-12)
    assert np.max(np.abs(samples[0])) > 0.1


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("prior_kind", ["gaussian_plus_tv", "autoregressive"])
def test_newton_and_laplace_with_gaussian_plus_and_autoregressive_priors(prior_kind):
    model, _, truth, misfit = source_model()
    V = model.parameter_space
    if prior_kind == "gaussian_plus_tv":
        prior = GaussianPlus(BiLaplacianPrior.from_correlation(V, correlation_length=0.3, variance=1.0),
                             TotalVariation(V, alpha=1e-3, epsilon=0.1))
    else:
        prior = AutoregressivePrior(V, length_scale=0.3, sigma=1.0)
    problem = InverseProblem(misfit, prior)
    res = newton_cg(problem, fd.Function(V), options=NewtonCGOptions(quiet=True, gradient_rtol=1e-8))
    assert res.converged
    lap = LaplaceApproximation(problem, res.m, rank=6, oversampling=5)
    assert np.all(lap.eigenvalues > 0) and np.all(np.diff(lap.eigenvalues) <= 1e-12 * lap.eigenvalues[0])
    c = fd.assemble(fd.TestFunction(V) * fd.dx)
    # the posterior variance of the mean value is below the prior's
    assert 0 < dual_pairing(c, lap.covariance_action(c)) < dual_pairing(c, prior_covariance(prior)(c))


def prior_covariance(prior):
    return prior.gaussian.covariance_action if isinstance(prior, GaussianPlus) else prior.covariance_action


@pytest.mark.parallel(nprocs=[1, 2])
def test_lbfgs_target_cost_and_fista_with_tv():
    model, _, truth, misfit = source_model()
    V = model.parameter_space
    prior = BiLaplacianPrior.from_correlation(V, correlation_length=0.3, variance=1.0)
    problem = InverseProblem(misfit, prior)
    start = problem(fd.Function(V))
    res = lbfgs(problem, fd.Function(V), options=LBFGSOptions(target_cost=0.5 * start, quiet=True))
    assert res.reason == "target cost reached" and res.cost.total <= 0.5 * start
    assert res.iterations < lbfgs(problem, fd.Function(V), options=LBFGSOptions(quiet=True)).iterations
    smooth = InverseProblem(misfit, TotalVariation(V, alpha=1e-3, epsilon=0.05))
    out = fista(smooth, L1(V, alpha=1e-4), fd.Function(V), options=FISTAOptions(max_iterations=60, quiet=True))
    costs = [h["cost"] for h in out.history]
    assert costs[-1] < 0.1 * costs[0] and out.cost.regularization > 0


def test_numeric_arguments_and_spaces_give_one_clear_error():
    """Numbers given as strings, non-finite numbers, priors on vector spaces and wrong spaces are one
    clear error naming the input (and spaces readably, not as Firedrake reprs)."""
    from pdeinv.prior import TikhonovL2

    mesh = fd.UnitSquareMesh(4, 4, name="coarse")
    V = fd.FunctionSpace(mesh, "CG", 1)
    obs = PointObservation(V, grid_points(2))
    with pytest.raises(TypeError, match="sigma must be a number"):
        GaussianNoise(obs, "0.1")
    with pytest.raises(TypeError, match="sigma must be a number"):
        GaussianNoise(obs, np.array(["0.1"] * 4))
    with pytest.raises(TypeError, match="alpha must be a number"):
        TikhonovL2(V, alpha="1")
    with pytest.raises(ValueError, match="epsilon must be finite"):
        TotalVariation(V, alpha=1.0, epsilon=float("inf"))
    with pytest.raises(ValueError, match="gamma must be > 0"):
        BiLaplacianPrior(V, gamma=-1.0, delta=1.0)
    BiLaplacianPrior(fd.VectorFunctionSpace(mesh, "CG", 1), gamma=1.0, delta=1.0)  # a vector field: accepted
    with pytest.raises(ValueError, match="expected the space of one field, got a mixed space"):
        BiLaplacianPrior(V * V, gamma=1.0, delta=1.0)
    prior = BiLaplacianPrior(V, gamma=1.0, delta=1.0)
    W = fd.FunctionSpace(mesh, "CG", 2)
    with pytest.raises(ValueError) as err:
        prior(fd.Function(W))
    text = str(err.value)
    assert "Lagrange degree 1 on mesh 'coarse'" in text and "Lagrange degree 2" in text
    assert "WithGeometry" not in text and text.count("\n") == 0


def test_init_petsc_keeps_a_scripts_own_options_from_petsc(tmp_path):
    """A user script with its own argparse options calls pdeinv.init_petsc() before Firedrake: PETSc
    neither sees nor reports them; bad argv is one clear error."""
    import subprocess
    import sys

    script = tmp_path / "user.py"
    script.write_text("import argparse\nimport pdeinv\npdeinv.init_petsc()\n"
                      "a = argparse.ArgumentParser()\na.add_argument('--mine', type=int)\nargs = a.parse_args()\n"
                      "import firedrake as fd\nfd.UnitSquareMesh(2, 2)\nprint('mine', args.mine)\n")
    p = subprocess.run([sys.executable, str(script), "--mine", "3"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "mine 3" in p.stdout, p.stderr
    assert "not used" not in p.stdout + p.stderr
    import pdeinv

    with pytest.raises(TypeError, match="list of strings"):
        pdeinv.init_petsc("-log_view")


def test_unused_solver_options():
    """Misspelt PETSc options are found before any real solve; unknown types and bad values are one
    ValueError naming the argument; multigrid level and MUMPS options count as read."""
    import pdeinv

    assert pdeinv.unused_solver_options({"ksp_type": "cg", "pc_type": "gamg", "mg_levels_ksp_type": "chebyshev",
                                         "ksp_rtol": 1e-8, "ksp_monitor": None}) == []
    assert pdeinv.unused_solver_options({"pc_type": "lu", "pc_factor_mat_solver_type": "mumps",
                                         "mat_mumps_icntl_14": 40}) == []
    assert pdeinv.unused_solver_options({"ksp_type": "cg", "ksp_rtoll": 1e-8, "snes_type": "newtonls"}) == [
        "ksp_rtoll", "snes_type"]
    with pytest.raises(ValueError, match="my_solver: PETSc rejected .*unknown type"):
        pdeinv.unused_solver_options({"ksp_type": "no_such_krylov"}, name="my_solver")
    with pytest.raises(TypeError, match="expected a dict"):
        pdeinv.unused_solver_options("ksp_type=cg")
