"""Optimal experimental design (pdeinv.design): the low-rank criteria equal a fresh Laplace approximation's
with the design's data; swapping greedy reaches the exhaustive optimum of a small problem; the relaxed
criterion's gradient Taylor-tests at rate 2; the same design on 1 and 2 ranks; bad input refused before any
solve.  Scalar (heat, sensors x times) and vector (a Dirichlet vector state observed component-wise) cases."""

import firedrake as fd
import numpy as np
import pytest

from pdeinv.design import (
    CandidateKind,
    Criterion,
    DesignOperator,
    design_value,
    exhaustive,
    greedy,
    random_designs,
    relaxed,
    relaxed_objective,
    swap_greedy,
    weighted_value,
)
from pdeinv.forward.heat import HeatModel
from pdeinv.forward.stationary import StationaryModel
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.observation import ObservationPointsOutsideMesh, PointObservation
from pdeinv.posterior import LaplaceApproximation
from pdeinv.prior import BiLaplacianPrior
from pdeinv.problem import InverseProblem
from pdeinv.verify import dual_pairing

SIGMA = 0.01
CANDIDATES = 0.1 + 0.8 * np.random.default_rng(0).random((20, 2))
TIMES = [0.01, 0.015, 0.02]


def heat(points, mesh=None):
    mesh = mesh or fd.UnitSquareMesh(10, 10)
    return HeatModel(mesh, unknown="initial_condition", end_time=0.02, steps=4, observation_points=points,
                     observation_times=TIMES)


def vector(points, mesh=None):
    """-div grad u = m (1, 1/2) with u = 0 on the boundary: a vector state, a scalar parameter; each point
    observes both components."""
    mesh = mesh or fd.UnitSquareMesh(8, 8)
    V, Q = fd.VectorFunctionSpace(mesh, "CG", 1), fd.FunctionSpace(mesh, "CG", 1)
    u, m, v = fd.Function(V), fd.Function(Q), fd.TestFunction(V)
    F = (fd.inner(fd.grad(u), fd.grad(v)) - m * v[0] - 0.5 * m * v[1]) * fd.dx
    return StationaryModel(F, u, m, observation=PointObservation(V, points),
                           bcs=[fd.DirichletBC(V, fd.Constant((0.0, 0.0)), "on_boundary")])


def prior_of(model):
    return BiLaplacianPrior(model.parameter_space, gamma=0.1, delta=1.0)


def fresh_laplace(make, points, prior):
    """The Laplace approximation at the prior mean with only ``points`` observed (rank: every datum)."""
    sub = make(points, prior.space.mesh())
    data = sub.observation.zero_data()
    problem = InverseProblem(Misfit(sub, GaussianNoise(sub.observation, SIGMA), data), prior)
    rows = sub.observation.n_points * sub.observation.channels
    return LaplaceApproximation(problem, prior.mean, rank=rows, oversampling=10)


def goal(space):
    """The parameter's mean over the lower half: a linear quantity of interest."""
    x = fd.SpatialCoordinate(space.mesh())
    return fd.assemble(fd.conditional(x[1] < 0.5, 2.0, 0.0) * fd.TestFunction(space) * fd.dx)


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("make", [heat, vector], ids=["heat", "vector"])
def test_swap_greedy_reaches_the_exhaustive_optimum_and_criteria_equal_a_fresh_laplace(make):
    model = make(CANDIDATES)
    prior = prior_of(model)
    a = goal(model.parameter_space)
    rows = model.observation.n_points * model.observation.channels
    op = DesignOperator(model, prior, SIGMA, rank=rows, goals=[a])  # rank = every datum: exact
    assert op.n_candidates == 20 and op.size == rows // 20
    # K column by column (a VJP, a covariance action and a JVP each), and the goal's JVP
    assert op.offline_solves["vjp"] == rows and op.offline_solves["jvp"] == rows + 1
    best = exhaustive(op, 4)  # C(20, 4) = 4845 designs
    swapped, first = swap_greedy(op, 4), greedy(op, 4)
    assert swapped.value >= (1 - 0.01) * best.value and swapped.value >= first.value
    assert first.value >= (1 - 1 / np.e) * best.value  # submodularity's guarantee
    la = fresh_laplace(make, CANDIDATES[list(swapped.chosen)], prior)
    assert abs(la.expected_information_gain() / swapped.value - 1) < 1e-8
    # the goal-oriented criterion: minus the posterior variance of <a, m>
    post = dual_pairing(a, la.covariance_action(a))
    assert abs(-design_value(op, swapped.chosen, Criterion.GOAL_VARIANCE) / post - 1) < 1e-8
    # zero PDE solves online
    counts = dict(model.counts)
    swap_greedy(op, 4, Criterion.GOAL_VARIANCE), relaxed(op, 4), random_designs(op, 4, 10)
    assert dict(model.counts) == counts


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("criterion", list(Criterion))
def test_the_relaxed_criterion_gradient_has_taylor_rate_two(criterion):
    model = vector(CANDIDATES)
    op = DesignOperator(model, prior_of(model), SIGMA, rank=30, goals=[goal(model.parameter_space)])
    rng = np.random.default_rng(3)
    w, d = rng.uniform(0.2, 0.8, op.n_candidates), rng.standard_normal(op.n_candidates)
    for beta, eps in ((0.0, 1.0), (0.5, 0.1)):
        J, g = relaxed_objective(op, w, criterion, beta, eps)
        hs = [1e-2 / 2**i for i in range(4)]
        errs = [abs(relaxed_objective(op, w + h * d, criterion, beta, eps)[0] - J - h * (g @ d)) for h in hs]
        rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
        assert np.all(np.abs(rates - 2.0) < 0.1), rates
    # the relaxed design is binary at the end and has the budget
    res = relaxed(op, 5, criterion)
    assert len(res.chosen) == 5 and np.max(res.weights * (1 - res.weights)) <= 1e-6


def test_datum_candidates_split_sensors_by_time():
    model = heat(CANDIDATES)
    prior = prior_of(model)
    by_point = DesignOperator(model, prior, SIGMA, rank=60)
    by_datum = DesignOperator(model, prior, SIGMA, rank=60, candidates=CandidateKind.DATUM)
    assert by_datum.n_candidates == 60 and by_datum.size == 1
    chosen = (1, 5, 11)
    data = [3 * p + k for p in chosen for k in range(3)]  # every time of those sensors
    assert abs(design_value(by_datum, data) / design_value(by_point, chosen) - 1) < 1e-12
    # per-candidate noise: a noisier sensor is worth less
    sigma = np.full(20, SIGMA)
    sigma[5] = 10 * SIGMA
    noisy = DesignOperator(model, prior, sigma, rank=60)
    assert design_value(noisy, chosen) < design_value(by_point, chosen)


@pytest.mark.parallel(nprocs=[1, 2])
def test_a_thousand_candidates_give_the_same_design_on_one_and_two_ranks():
    points = 0.05 + 0.9 * np.random.default_rng(1).random((1000, 2))
    designs = []
    for comm in (fd.COMM_SELF, fd.COMM_WORLD):  # serial on each rank, then over all ranks
        mesh = fd.UnitSquareMesh(12, 12, comm=comm)
        model = HeatModel(mesh, unknown="initial_condition", end_time=0.02, steps=4, observation_points=points,
                          observation_times=[0.02])
        op = DesignOperator(model, prior_of(model), SIGMA, rank=40, oversampling=10)
        assert op.offline_solves["jvp"] == 2 * 50  # two passes of the sketch: independent of the candidates
        designs.append(greedy(op, 20))
    assert designs[0].chosen == designs[1].chosen
    assert abs(designs[0].value / designs[1].value - 1) < 1e-8


def test_bad_input_is_one_clear_error_before_any_solve():
    model = heat(CANDIDATES)
    prior = prior_of(model)
    counts = dict(model.counts)
    for sigma, match in ((0.0, "positive and finite"), (np.nan, "positive and finite"),
                         (-np.ones(20), "positive and finite"), (np.ones(7), "one per candidate"),
                         ("0.1", "number or an array")):
        with pytest.raises((ValueError, TypeError), match=match):
            DesignOperator(model, prior, sigma)
    with pytest.raises(ValueError, match="candidates must be one of 'point', 'datum'"):
        DesignOperator(model, prior, SIGMA, candidates="sensor")
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        DesignOperator(model, prior, SIGMA, rank=0)
    with pytest.raises(TypeError, match="goals\\[0\\] must be a Cofunction"):
        DesignOperator(model, prior, SIGMA, goals=[1.0])
    assert dict(model.counts) == counts
    with pytest.raises(ObservationPointsOutsideMesh, match="1 of 21 observation points lie outside"):
        heat(np.vstack([CANDIDATES, [[1.5, 0.5]]]))
    op = DesignOperator(model, prior, SIGMA, rank=10)
    for k in (0, 21, 2.5):
        with pytest.raises(ValueError, match="budget k must be an integer in \\[1, 20\\]"):
            greedy(op, k)
    with pytest.raises(ValueError, match="needs goals"):
        greedy(op, 3, Criterion.GOAL_VARIANCE)
    with pytest.raises(ValueError, match="start must be 3 distinct"):
        swap_greedy(op, 3, start=(1, 1, 2))
    value, grad = weighted_value(op, np.full(20, 0.5))
    assert np.isfinite(value) and grad.shape == (20,) and np.all(grad > 0)  # more data never hurts


@pytest.mark.parallel(nprocs=[1, 2])
def test_the_design_case_end_to_end(tmp_path_factory):
    """The case on a tiny setting: its design beats every random one, the fresh Laplace approximation
    agrees with the low-rank criterion, the pictures and fields are written."""
    import os

    from mpi4py import MPI

    from pdeinv.cases import design as module
    from pdeinv.cases.config import load_config

    cfg = load_config(module.CASE.defaults, None, ["mesh.n=10", "model.steps=5", "model.end_time=0.02",
                                                    "model.observation_times=[0.02]", "design.grid=6",
                                                    "design.k=3", "design.random=20", "design.rank=36"])
    module.CASE.validate(cfg)
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp_path_factory.mktemp("design")) if comm.rank == 0 else None, root=0)
    summary = module.run_case(cfg, out, quiet=True)
    for f in ("summary.json", "results.h5", "design.png", "eig_vs_k.png", "posterior_sd.png", "prior_sd.pvd",
              "posterior_sd_chosen.pvd", "posterior_sd_random.pvd", "candidates.vtk", "chosen.vtk"):
        assert os.path.exists(os.path.join(out, f)), f
    swap = summary["designs"]["swap_greedy"]
    assert swap["beats_every_random"] and summary["candidates"] == 36
    assert abs(summary["fresh_laplace_eig"]["chosen"] / swap["eig"] - 1) < 1e-8  # rank 36 = every datum: exact
    assert summary["mean_standard_deviation"]["posterior_sd_chosen"] < summary["mean_standard_deviation"]["prior_sd"]
    assert len(summary["greedy_eig_vs_k"]) == 3 and np.all(np.diff(summary["greedy_eig_vs_k"]) > 0)


def test_the_design_case_refuses_a_budget_above_the_candidates(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "never"
    p = subprocess.run([sys.executable, "-m", "pdeinv", "run", "cases/design/config.toml", "--set", "design.k=300",
                        "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 2 and "design.k must be in [1, 225]" in p.stderr and p.stderr.strip().count("\n") == 0
    assert not out.exists()
