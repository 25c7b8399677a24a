"""Ensemble parallelism over experiments (#10): the misfit of several experiments summed over
firedrake.Ensemble members gives the same values and the same MAP as all experiments on one member."""

import firedrake as fd
import numpy as np
import pytest
from mpi4py import MPI

from pdeinv.ensemble import ENSEMBLE_DISTRIBUTION, EnsembleMisfit, experiments_of, make_ensemble, sample_ensemble
from pdeinv.forward.poisson import PoissonModel
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.optimize import NewtonCGOptions, newton_cg
from pdeinv.prior import BiLaplacianPrior
from pdeinv.problem import InverseProblem
from pdeinv.verify import dual_pairing

SOURCES = [lambda x, y: 1.0 + 0 * x, lambda x, y: 4 * fd.sin(fd.pi * x), lambda x, y: 3 * x * y]
PROBES = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.35, 0.65], [0.9, 0.15]])


def experiment(e, mesh):
    """Experiment e: its own source and sensor set; data from a fixed truth, noise seeded by e."""
    rng = np.random.default_rng(10 + e)
    x, y = fd.SpatialCoordinate(mesh)
    model = PoissonModel(mesh, observation_points=0.1 + 0.8 * rng.random((12, 2)), source=SOURCES[e](x, y))
    truth = fd.Function(model.parameter_space).interpolate(0.4 * fd.sin(2 * x) * fd.cos(y))
    noise = GaussianNoise(model.observation, 0.005)
    return Misfit(model, noise, noise.sample(model(truth), seed=100 + e))


def ensemble_problem(members, n_experiments=3):
    ens = make_ensemble(MPI.COMM_WORLD, members)
    mesh = fd.UnitSquareMesh(8, 8, comm=ens.comm, distribution_parameters=ENSEMBLE_DISTRIBUTION)
    misfit = EnsembleMisfit(ens, [experiment(e, mesh) for e in experiments_of(n_experiments, ens)])
    prior = BiLaplacianPrior.from_correlation(misfit.parameter_space, correlation_length=0.3, variance=0.02)
    return InverseProblem(misfit, prior), mesh


def test_experiments_are_split_in_balanced_blocks():
    class Fake:
        def __init__(self, rank, size):
            self.ensemble_comm = type("C", (), {"rank": rank, "size": size})()

    blocks = [list(experiments_of(7, Fake(k, 3))) for k in range(3)]
    assert blocks == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="every member needs at least one"):
        experiments_of(2, Fake(0, 3))
    with pytest.raises(ValueError, match="members must be a positive integer"):
        make_ensemble(MPI.COMM_WORLD, 0)


@pytest.mark.parallel(nprocs=[1, 2])
def test_ensemble_misfit_is_the_sum_of_its_experiments():
    """One member holding all experiments: value, gradient and Hessian actions are the plain sums."""
    problem, mesh = ensemble_problem(1)
    misfits = problem.misfit.misfits
    V = problem.parameter_space
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(V).interpolate(0.2 * x)
    dm = fd.Function(V).interpolate(fd.cos(3 * y))
    assert abs(problem.misfit(m) - sum(f(m) for f in misfits)) <= 1e-12 * problem.misfit(m)
    for got, parts in ((problem.misfit.gradient(m), [f.gradient(m) for f in misfits]),
                       (problem.misfit.gauss_newton_action(m, dm), [f.gauss_newton_action(m, dm) for f in misfits]),
                       (problem.misfit.hessian_action(m, dm), [f.hessian_action(m, dm) for f in misfits])):
        expected = sum(dual_pairing(p, dm) for p in parts)
        assert abs(dual_pairing(got, dm) - expected) <= 1e-10 * abs(expected)
    blocks = problem.misfit.gauss_newton_action_block(m, [dm, m])
    assert abs(dual_pairing(blocks[0], dm) - dual_pairing(problem.misfit.gauss_newton_action(m, dm), dm)) <= \
        1e-10 * abs(dual_pairing(blocks[0], dm))
    assert problem.misfit.counts["linear_solves"] > 0 and problem.counts == dict(problem.misfit.counts)
    assert problem.misfit.second_derivatives == misfits[0].second_derivatives


def map_point(members):
    problem, mesh = ensemble_problem(members)
    res = newton_cg(problem, problem.prior.mean, options=NewtonCGOptions(gradient_rtol=1e-10, quiet=True))
    print(f"members {members}: {res.iterations} Newton, {res.cg_iterations} CG, {res.reason}")
    assert res.converged
    values = fd.PointEvaluator(mesh, PROBES).evaluate(res.m)
    return np.asarray(values, dtype=float), res.cost.total


@pytest.mark.parallel(nprocs=[1, 2])
def test_ensemble_map_equals_one_member():
    """On 2 ranks: 2 members x 1 spatial rank (experiments split 2 + 1) reach the MAP of 1 member x 2 spatial
    ranks (all 3 experiments) to 1e-8; on 1 rank the one-member run is checked against the plain sum."""
    ref, ref_cost = map_point(1)
    if MPI.COMM_WORLD.size == 2:
        got, cost = map_point(2)
        print(f"MAP at probes, max rel diff {np.max(np.abs(got - ref)) / np.max(np.abs(ref)):.1e}; "
              f"cost {cost!r} vs {ref_cost!r}")
        assert np.max(np.abs(got - ref)) <= 1e-8 * np.max(np.abs(ref))
        assert abs(cost - ref_cost) <= 1e-10 * abs(ref_cost)
    else:
        # the same inverse problem written as a plain sum on one rank
        mesh = fd.UnitSquareMesh(8, 8)
        misfits = [experiment(e, mesh) for e in range(3)]

        from pdeinv.maps import MisfitTerm

        class Sum(MisfitTerm):
            parameter_space = misfits[0].parameter_space

            def __call__(self, m):
                return sum(f(m) for f in misfits)

            def gradient(self, m):
                return sum_cof([f.gradient(m) for f in misfits])

            def gauss_newton_action(self, m, dm):
                return sum_cof([f.gauss_newton_action(m, dm) for f in misfits])

        def sum_cof(parts):
            out = fd.Cofunction(Sum.parameter_space.dual())
            for p in parts:
                out.dat.data[:] += p.dat.data_ro
            return out

        prior = BiLaplacianPrior.from_correlation(Sum.parameter_space, correlation_length=0.3, variance=0.02)
        res = newton_cg(InverseProblem(Sum(), prior), prior.mean,
                        options=NewtonCGOptions(gradient_rtol=1e-10, quiet=True))
        values = np.asarray(fd.PointEvaluator(mesh, PROBES).evaluate(res.m), dtype=float)
        assert np.max(np.abs(values - ref)) <= 1e-8 * np.max(np.abs(ref))


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("law", ["gaussian", "poisson", "laplace"])
def test_sample_ensemble_draws_what_one_member_would(law):
    """Each member's data are its columns of the data one model holding every direction draws (masked
    transport sinogram, 3 directions split 2 + 1 on 2 ranks), so an ensemble run sees the same data."""
    from pdeinv.forward.transport import TransportModel, boundary_detectors
    from pdeinv.noise import LaplaceNoise, PoissonNoise

    ens = make_ensemble(MPI.COMM_WORLD, MPI.COMM_WORLD.size)
    mesh = fd.UnitSquareMesh(6, 6, comm=ens.comm, distribution_parameters=ENSEMBLE_DISTRIBUTION)
    angles = np.array([0.1, 1.2, 2.3])
    mine = list(experiments_of(3, ens))

    def model_of(directions):
        return TransportModel(mesh, directions=np.c_[np.cos(directions), np.sin(directions)],
                              detectors=boundary_detectors(4), unknown="log_absorption")

    def noise_of(model):
        return {"gaussian": lambda o: GaussianNoise(o, 0.01), "poisson": lambda o: PoissonNoise(o, 1e3),
                "laplace": lambda o: LaplaceNoise(o, 0.02)}[law](model.observation)

    full, part = model_of(angles), model_of(angles[mine])
    m = fd.Function(full.parameter_space).interpolate(fd.Constant(0.3))
    expected = full.observation.to_array(noise_of(full).sample(full(m), seed=7))[:, mine]
    got = part.observation.to_array(sample_ensemble(ens, noise_of(part), part(m), seed=7))
    assert np.array_equal(got, expected)
    assert np.count_nonzero(got) < got.size  # the mask is honoured (unobserved entries are 0)
    if ens.ensemble_comm.size > 1:  # per-observation σ describes one member's channels only
        with pytest.raises(ValueError, match="per-observation parameters"):
            sigma = np.full((part.observation.n_points, part.observation.channels), 0.01)
            sample_ensemble(ens, GaussianNoise(part.observation, sigma), part(m), seed=7)
