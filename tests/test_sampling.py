"""MCMC (pdeinv.sampling): every kernel samples the exact posterior of a linear-Gaussian problem (mean and
variance of probes within 3 MCSE of the closed form), gpCN around the exact posterior and delayed acceptance
with an exact surrogate never reject, chains over an ensemble, bad input refused before any solve."""

import os

import firedrake as fd
import numpy as np
import pytest
from test_newton import OBS

from pdeinv.forward.heat import HeatModel
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise, synthetic_data
from pdeinv.optimize import NewtonCGOptions, newton_cg
from pdeinv.posterior import LaplaceApproximation
from pdeinv.prior import BiLaplacianPrior
from pdeinv.problem import InverseProblem
from pdeinv.sampling import (
    GPCN,
    HMALA,
    MALA,
    PCN,
    DelayedAcceptance,
    LaplaceSurrogate,
    SamplingOptions,
    sample,
    summarize,
)

PROBES = [(0.3, 0.3), (0.6, 0.7)]


def linear_gaussian(comm=None, sigma=1.0):
    """Heat equation, initial condition as parameter (linear map), BiLaplacian prior, noise large enough
    that even pCN mixes (IACT ~10, so 1500 samples give ESS > 100 and a trustworthy MCSE): the posterior is
    Gaussian and the full-rank Laplace approximation is it (tests/test_laplace.py checks that densely)."""
    mesh = fd.UnitSquareMesh(4, 4, comm=comm) if comm is not None else fd.UnitSquareMesh(4, 4)
    model = HeatModel(mesh, unknown="initial_condition", end_time=0.02, steps=4, observation_points=OBS,
                      observation_times=[0.01, 0.02])
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(model.parameter_space).interpolate(fd.sin(fd.pi * x) * fd.sin(fd.pi * y))
    noise = GaussianNoise(model.observation, sigma)
    data = synthetic_data(model, truth, noise, seed=3)
    prior = BiLaplacianPrior(model.parameter_space, gamma=0.05, delta=0.5, mean=fd.Constant(0.1))
    problem = InverseProblem(Misfit(model, noise, data), prior)
    V = problem.parameter_space
    m = newton_cg(problem, fd.Function(V), options=NewtonCGOptions(forcing=1e-13, max_iterations=1, quiet=True)).m
    return problem, m, LaplaceApproximation(problem, m, rank=V.dim(), oversampling=0)


def probes(V):
    """Smoothed point values q_p(m) = (w_p, m) (Gaussian bumps at PROBES) and their Cofunctions."""
    x = fd.SpatialCoordinate(V.mesh())
    ells = {f"probe{i}": fd.assemble(fd.exp(-((x[0] - a) ** 2 + (x[1] - b) ** 2) / 0.02) * fd.TestFunction(V) * fd.dx)
            for i, (a, b) in enumerate(PROBES)}
    return ells, {k: (lambda m, ell=ell: fd.assemble(fd.action(ell, m))) for k, ell in ells.items()}


@pytest.fixture(scope="module")
def gaussian_problem():
    return linear_gaussian()


KERNELS = {
    "pcn": lambda la: PCN(0.2),
    "gpcn": lambda la: GPCN(0.5, laplace=la),
    "mala": lambda la: MALA(0.2),
    "hmala": lambda la: HMALA(0.5, laplace=la),
    "delayed_pcn": lambda la: DelayedAcceptance(PCN(0.2), LaplaceSurrogate(la)),
}


def _check_exact(res, ells, laplace):
    for name, q in summarize(res.quantities).items():
        ell = ells[name]
        mean = fd.assemble(fd.action(ell, laplace.mean))
        sd = fd.assemble(fd.action(ell, laplace.covariance_action(ell))) ** 0.5
        assert abs(q.mean - mean) <= 3 * q.mcse_mean, (name, q.mean, mean, q.mcse_mean)
        assert abs(q.sd - sd) <= 3 * q.mcse_sd, (name, q.sd, sd, q.mcse_sd)


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_every_kernel_samples_the_exact_gaussian_posterior(gaussian_problem, kernel):
    problem, m_map, la = gaussian_problem
    ells, qs = probes(problem.parameter_space)
    res = sample(problem, KERNELS[kernel](la), m_map, quantities=qs,
                 options=SamplingOptions(samples=1500, burn_in=200, adapt=True, seed=11))
    assert 0.05 < res.acceptance[0] <= 1.0
    _check_exact(res, ells, la)
    # the pooled field statistics are those of the kept samples: the mean field's probe equals the trace mean
    for name, ell in ells.items():
        assert abs(fd.assemble(fd.action(ell, res.mean)) - res.quantities[name].mean()) <= 1e-10


@pytest.mark.parallel(nprocs=[1, 2])
def test_gpcn_around_the_exact_posterior_accepts_every_proposal_at_any_step(gaussian_problem):
    problem, m_map, la = gaussian_problem
    for step in (0.1, 0.6, 1.0):
        res = sample(problem, GPCN(step, laplace=la), m_map, options=SamplingOptions(samples=40, burn_in=0))
        assert res.acceptance[0] == 1.0
        # log alpha = psi(u) - psi(v) with psi constant: round-off of O(10)-sized terms
        assert np.abs(res.log_alpha).max() <= 1e-8


@pytest.mark.parallel(nprocs=[1, 2])
def test_delayed_acceptance_with_an_exact_surrogate_never_rejects_at_the_second_stage(gaussian_problem):
    problem, m_map, la = gaussian_problem
    res = sample(problem, DelayedAcceptance(MALA(0.3), LaplaceSurrogate(la)), m_map,
                 options=SamplingOptions(samples=200, burn_in=0))
    assert 0.0 < res.stage1_acceptance[0] < 1.0
    assert res.acceptance[0] == res.stage1_acceptance[0]
    # PDE solves only for proposals that passed the surrogate stage (one forward each; no gradient needed)
    assert res.pde_solves[0] == round(res.stage1_acceptance[0] * 200)


def test_chains_are_reproducible_and_keyed_by_seed(gaussian_problem):
    problem, m_map, la = gaussian_problem
    _, qs = probes(problem.parameter_space)
    opts = SamplingOptions(samples=30, burn_in=5, seed=4)
    a = sample(problem, MALA(0.2), m_map, quantities=qs, options=opts)
    b = sample(problem, MALA(0.2), m_map, quantities=qs, options=opts)
    c = sample(problem, MALA(0.2), m_map, quantities=qs, options=SamplingOptions(samples=30, burn_in=5, seed=5))
    np.testing.assert_array_equal(a.quantities["probe0"], b.quantities["probe0"])
    assert not np.array_equal(a.quantities["probe0"], c.quantities["probe0"])


@pytest.mark.parallel(nprocs=2)
def test_two_chains_on_two_members_are_pooled():
    from firedrake import COMM_WORLD

    from pdeinv.ensemble import make_ensemble

    ens = make_ensemble(COMM_WORLD, members=2)
    problem, m_map, la = linear_gaussian(comm=ens.comm)
    ells, qs = probes(problem.parameter_space)
    res = sample(problem, GPCN(1.0, laplace=la), m_map, quantities=qs, ensemble=ens,
                 options=SamplingOptions(samples=300, burn_in=0, seed=2))
    assert res.quantities["probe0"].shape == (2, 300)
    assert not np.array_equal(res.quantities["probe0"][0], res.quantities["probe0"][1])  # independent chains
    _check_exact(res, ells, la)
    assert summarize(res.quantities)["probe0"].rhat < 1.05
    # the pooled mean is the mean over both chains
    assert abs(fd.assemble(fd.action(ells["probe0"], res.mean)) - res.quantities["probe0"].mean()) <= 1e-10


def test_bad_input_is_refused_before_any_solve(gaussian_problem):
    problem, m_map, la = gaussian_problem
    before = dict(problem.counts)
    with pytest.raises(ValueError, match="step must be in"):
        PCN(1.5)
    with pytest.raises(ValueError, match="step must be > 0"):
        MALA(0.0)
    with pytest.raises(ValueError, match="needs a Laplace approximation"):
        GPCN(0.3)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        SamplingOptions(samples=0)
    with pytest.raises(ValueError, match="burn_in .* must be smaller than samples"):
        SamplingOptions(samples=100, burn_in=100)
    with pytest.raises(ValueError, match="adapt=True needs burn_in"):
        SamplingOptions(burn_in=0, adapt=True)
    with pytest.raises(TypeError, match="kernel must be"):
        sample(problem, "pcn", m_map)
    with pytest.raises(TypeError, match="quantities must map names to callables"):
        sample(problem, PCN(0.2), m_map, quantities={"q": 3.0})
    assert dict(problem.counts) == before


def _shared_dir(tmp_path_factory, name, comm):
    """One directory for every rank (rank 0's temporary directory)."""
    return comm.bcast(str(tmp_path_factory.mktemp(name)) if comm.rank == 0 else None, root=0)


class _Stop(Exception):
    pass


RESUMED = {  # (kernel, options, step to stop after): a stop in the adapting burn-in; a thinned DA chain
    "mala_adapting": (lambda la: MALA(0.2), SamplingOptions(samples=30, burn_in=20, adapt=True, seed=6,
                                                             checkpoint_every=7), 14),
    "delayed_thinned": (lambda la: DelayedAcceptance(PCN(0.3), LaplaceSurrogate(la)),
                        SamplingOptions(samples=40, burn_in=5, thin=4, seed=8, checkpoint_every=10), 30),
}


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("case", sorted(RESUMED))
def test_a_stopped_chain_resumed_from_its_checkpoint_equals_the_uninterrupted_one(gaussian_problem, tmp_path_factory,
                                                                                   case):
    problem, m_map, la = gaussian_problem
    make, opts, stop_at = RESUMED[case]
    _, qs = probes(problem.parameter_space)
    store = _shared_dir(tmp_path_factory, "chains", problem.parameter_space.mesh().comm)
    whole = sample(problem, make(la), m_map, quantities=qs, options=opts)

    def stop(done):
        if done == stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        sample(problem, make(la), m_map, quantities=qs, options=opts, store=store, on_checkpoint=stop)
    seen = []
    resumed = sample(problem, make(la), m_map, quantities=qs, options=opts, store=store, resume=True,
                     on_checkpoint=seen.append)
    assert seen[0] == stop_at + opts.checkpoint_every - stop_at % opts.checkpoint_every  # went on, not restarted
    # the same ranks and mesh run the same operations in the same order: equal to the last bit
    for name in qs:
        np.testing.assert_array_equal(resumed.quantities[name], whole.quantities[name])
    np.testing.assert_array_equal(resumed.log_alpha, whole.log_alpha)
    assert (resumed.acceptance == whole.acceptance).all() and (resumed.step == whole.step).all()
    assert (resumed.pde_solves == whole.pde_solves).all()
    np.testing.assert_array_equal(resumed.variance.dat.data_ro, whole.variance.dat.data_ro)
    if opts.thin:
        assert len(whole.fields) == -(-opts.samples // opts.thin)
    assert len(resumed.fields) == len(whole.fields)
    for a, b in zip(resumed.fields, whole.fields, strict=True):
        np.testing.assert_array_equal(a.dat.data_ro, b.dat.data_ro)
    # a finished store resumes to the same result without a step
    again = sample(problem, make(la), m_map, quantities=qs, options=opts, store=store, resume=True)
    np.testing.assert_array_equal(again.quantities["probe0"], whole.quantities["probe0"])
    if opts.thin:
        _check_field_segments(store, len(whole.fields), problem, make(la), m_map, qs, opts)


def _check_field_segments(store, fields, problem, kernel, m_map, qs, opts):
    """Each thinned field is written once, in the segment of the checkpoint after it was kept; a missing
    segment is one clear error on resume."""
    import json

    import h5py

    with h5py.File(os.path.join(store, "chain-0.h5"), "r") as fh:
        segments = json.loads(fh.attrs["progress"])["segments"]
    assert len(segments) > 2 and segments[0][0] == 0 and segments[-1][1] == fields
    assert [s[0] for s in segments[1:]] == [s[1] for s in segments[:-1]]
    for first, end in segments:
        with h5py.File(os.path.join(store, f"chain-0.fields-{first}.h5"), "r") as fh:
            assert sorted(fh) == sorted(f"field-{j}" for j in range(first, end))
    comm = problem.parameter_space.mesh().comm
    comm.barrier()
    if comm.rank == 0:
        os.remove(os.path.join(store, f"chain-0.fields-{segments[1][0]}.h5"))
    comm.barrier()
    with pytest.raises(ValueError, match="thinned fields' segment .* is missing"):
        sample(problem, kernel, m_map, quantities=qs, options=opts, store=store, resume=True)


def test_a_store_is_never_overwritten_and_resumes_only_its_own_run(gaussian_problem, tmp_path):
    problem, m_map, la = gaussian_problem
    opts = SamplingOptions(samples=6, burn_in=2, seed=1, checkpoint_every=4)
    sample(problem, PCN(0.2), m_map, options=opts, store=str(tmp_path))
    written = (tmp_path / "chain-0.h5").read_bytes()
    before = dict(problem.counts)
    with pytest.raises(ValueError, match="already holds a chain"):
        sample(problem, PCN(0.2), m_map, options=opts, store=str(tmp_path))
    with pytest.raises(ValueError, match="its seed is 1, this run's is 2"):
        sample(problem, PCN(0.2), m_map, options=SamplingOptions(samples=6, burn_in=2, seed=2), store=str(tmp_path),
               resume=True)
    with pytest.raises(ValueError, match="its kernel is 'PCN', this run's is 'MALA'"):
        sample(problem, MALA(0.2), m_map, options=opts, store=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        sample(problem, PCN(0.2), m_map, options=opts, store=str(tmp_path / "empty"), resume=True)
    with pytest.raises(ValueError, match="resume=True needs the store"):
        sample(problem, PCN(0.2), m_map, options=opts, resume=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "chain-0.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable pdeinv chain checkpoint"):
        sample(problem, PCN(0.2), m_map, options=opts, store=str(tmp_path / "bad"), resume=True)
    assert dict(problem.counts) == before and (tmp_path / "chain-0.h5").read_bytes() == written


def test_diagnostics_of_a_chain_that_never_moved_say_so():
    stuck = summarize({"q": np.full((1, 50), 0.3)})["q"]
    assert stuck.ess_bulk == 0.0 and stuck.iact == np.inf and np.isnan(stuck.rhat)
    # one chain: split-R-hat over its halves (ArviZ alone gives NaN); a drifting chain is flagged
    rng = np.random.default_rng(0)
    assert summarize({"q": rng.normal(size=(1, 400))})["q"].rhat < 1.05
    assert summarize({"q": np.linspace(0, 1, 400)[None, :]})["q"].rhat > 1.5
