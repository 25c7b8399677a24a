"""The cases' [sampling] phase: outputs and summary, chains side by side, SIGTERM then --resume equal to the
uninterrupted run, and every bad setting refused before any solve (exit 2)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_cases import TINY, shared_dir, tiny_config

from pdeinv.cases.config import ConfigError
from pdeinv.cases.runner import EXIT_CONFIG, EXIT_INTERRUPTED, run

SAMPLING = ["laplace.rank=20", "sampling.kernel=\"gpcn\"", "sampling.samples=30", "sampling.burn_in=5",
            "sampling.step=0.5", "sampling.checkpoint_every=10", "sampling.thin=10",
            "sampling.points=[[0.3, 0.4], [0.6, 0.5]]"]
OUTPUTS = ["traces.csv", "chains.png", "marginals.png", "sampling_fields.png", "sample_mean.pvd", "sample_std.pvd",
           "mcmc_samples.pvd"]
QUANTITIES = {"mean", "m(0.3,0.4)", "m(0.6,0.5)"}


def _traces(path):
    return np.loadtxt(path, delimiter=",", skiprows=1)


@pytest.mark.parallel(nprocs=[1, 2])
def test_heat_case_samples_after_the_laplace_approximation(tmp_path_factory):
    out = shared_dir(tmp_path_factory, "sampling")
    summary = run("heat", tiny_config(*SAMPLING, "sampling.delayed_acceptance=true"), out, quiet=True)
    for f in OUTPUTS:
        assert os.path.exists(os.path.join(out, f)), f
    s = summary["sampling"]
    assert s["kernel"] == "DelayedAcceptance(GPCN)" and s["chains"] == 1 and s["samples_per_chain"] == 30
    assert set(s["quantities"]) == QUANTITIES
    # the heat case's map is linear in the initial condition: the posterior is Gaussian, stage 2 of delayed
    # acceptance compares the PDE with the rank-20 Laplace model (not exact: it may reject), and the PDE runs
    # only for the proposals that pass stage 1 (one forward each)
    assert 0 < s["acceptance"][0] <= s["stage1_acceptance"][0] <= 1
    assert s["pde_solves"][0] == round(30 * s["stage1_acceptance"][0])
    assert s["setup_pde_solves"] > 0 and summary["timings"]["sampling"] > 0
    for d in s["quantities"].values():
        assert d["ess_bulk"] > 0 and d["laplace_sd"] > 0 and np.isfinite(d["rhat"])
    t = _traces(os.path.join(out, "traces.csv"))
    assert t.shape == (30, 2 + len(QUANTITIES)) and (t[:, 0] == 0).all()
    with open(os.path.join(out, "summary.json")) as fh:
        assert json.load(fh)["sampling"]["acceptance"] == s["acceptance"]


@pytest.mark.parallel(nprocs=2)
def test_two_chains_side_by_side_on_two_ranks(tmp_path_factory):
    out = shared_dir(tmp_path_factory, "chains2")
    summary = run("heat", tiny_config(*SAMPLING, "sampling.chains=2"), out, quiet=True)
    s = summary["sampling"]
    assert s["chains"] == 2 and len(s["acceptance"]) == 2 and len(s["pde_solves"]) == 2
    assert s["pde_solves"] == [30, 30]  # gpCN: one forward solve per kept step
    assert min(s["acceptance"]) > 0
    t = _traces(os.path.join(out, "traces.csv"))
    assert sorted(set(t[:, 0])) == [0, 1]
    assert not np.array_equal(t[t[:, 0] == 0, 2:], t[t[:, 0] == 1, 2:])  # independent chains
    # each member built the whole problem on its own rank: the same MAP as one rank would find
    assert summary["ensemble"]["ranks_per_member"] == 1


def _cli(out, *extra):
    sets = [a for s in TINY + SAMPLING for a in ("--set", s)]
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cases", "heat", "config.toml")
    cmd = [sys.executable, "-m", "pdeinv", "run", config, "--quiet", "--out", str(out)]
    return subprocess.run(cmd + sets + list(extra), capture_output=True, text=True)


def test_sigterm_during_sampling_then_resume_equals_the_uninterrupted_run(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    p = _cli(whole)
    assert p.returncode == 0, p.stderr
    p = _cli(part, "--sigterm-after-samples", "20")
    assert p.returncode == EXIT_INTERRUPTED, p.stderr
    assert "chains' checkpoint after step 20" in p.stderr and "rerun with --resume" in p.stderr
    assert (part / "checkpoint" / "chains" / "chain-0.h5").exists() and not (part / "summary.json").exists()
    p = _cli(part, "--resume")
    assert p.returncode == 0, p.stderr
    # the same chain, sample for sample: the Laplace approximation is recomputed to the same bits, and the
    # chain goes on from step 20 with the random numbers of steps 21, 22, ...
    np.testing.assert_array_equal(_traces(part / "traces.csv"), _traces(whole / "traces.csv"))
    a, b = (json.loads((d / "summary.json").read_text())["sampling"] for d in (whole, part))
    assert a["acceptance"] == b["acceptance"] and a["pde_solves"] == b["pde_solves"]


@pytest.mark.parametrize("setting, message", [
    ("sampling.step=1.5", "sampling.step must be in \\(0, 1\\]"),
    ("sampling.samples=0", "sampling.samples must be >= 1"),
    ("sampling.burn_in=30", "sampling.burn_in must be >= 0 and smaller than sampling.samples"),
    ("sampling.kernel=\"hmc\"", "sampling.kernel must be one of"),
    ("sampling.points=[[0.5]]", "sampling.points must be a list of \\[x, y\\] pairs"),
    ("sampling.adapt=true", None),  # burn_in = 5 > 0: fine
])
def test_bad_sampling_settings_are_refused_before_any_solve(setting, message):
    if message is None:
        tiny_config(*SAMPLING, setting)
        return
    with pytest.raises(ConfigError, match=message):
        tiny_config(*SAMPLING, setting)


def test_chains_that_do_not_divide_the_ranks_and_points_outside_the_mesh_exit_2(tmp_path):
    p = _cli(tmp_path / "a", "--set", "sampling.chains=2")
    assert p.returncode == EXIT_CONFIG and "sampling.chains = 2 cannot share 1 MPI rank(s)" in p.stderr
    assert not (tmp_path / "a").exists()
    p = _cli(tmp_path / "b", "--set", "sampling.points=[[1.5, 0.5]]")
    assert p.returncode == EXIT_CONFIG and "sampling.points" in p.stderr, p.stderr
    assert not list(tmp_path.glob("b/checkpoint/iterate-*")) and not (tmp_path / "b" / "summary.json").exists()


def test_sampling_is_off_by_default_and_other_cases_refuse_the_table():
    cfg = tiny_config()
    assert cfg["sampling"]["kernel"] == "none"
    from pdeinv.cases import tomography
    from pdeinv.cases.config import load_config

    with pytest.raises(ConfigError, match="unknown key 'sampling'"):
        load_config(tomography.CASE.defaults, None, ["sampling.kernel=\"pcn\""])


def test_laplace_hessian_full_is_the_sampling_geometry_and_refused_without_second_derivatives(tmp_path):
    """laplace.hessian = "full": the heat map is linear in its initial condition (the full Hessian is
    Gauss-Newton's), so the eigenvalues agree; the tomography model has no second derivatives in its
    log-absorption, so "full" is one line and exit 2 before any solve."""
    gn = run("heat", tiny_config(*SAMPLING), str(tmp_path / "gn"), quiet=True)
    full = run("heat", tiny_config(*SAMPLING, "laplace.hessian=\"full\""), str(tmp_path / "full"), quiet=True)
    np.testing.assert_allclose(full["eigenvalues"], gn["eigenvalues"], rtol=1e-8)
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cases", "tomography",
                          "config.toml")
    p = subprocess.run([sys.executable, "-m", "pdeinv", "run", config, "--quiet", "--out", str(tmp_path / "t"),
                        "--set", "laplace.hessian=\"full\""], capture_output=True, text=True)
    assert p.returncode == EXIT_CONFIG and "laplace.hessian = 'full'" in p.stderr
    assert "no second derivatives" in p.stderr and p.stderr.strip().count("\n") == 0
    assert not (tmp_path / "t" / "summary.json").exists()
