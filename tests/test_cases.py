"""The case layer end to end: outputs, summary, restart through the SIGTERM path, config errors."""

import json
import os
import re
import subprocess
import sys

import pytest
from mpi4py import MPI

from pdeinv.cases.config import ConfigError, load_config
from pdeinv.cases.heat import CASE as HEAT
from pdeinv.cases.runner import EXIT_CONFIG, EXIT_INTERRUPTED, Interrupted, run

TINY = ["mesh.n=8", "model.steps=10", "model.observation_times=[0.02, 0.05]", "data.sensors=12",
        "laplace.rank=6", "laplace.oversampling=4", "laplace.posterior_samples=2"]
OUTPUTS = ["summary.json", "results.h5", "truth.pvd", "map.pvd", "posterior_std.pvd", "posterior_samples.pvd",
           "observation_points.vtk", "fields.png", "convergence.png", "eigenvalues.png", "data_fit.png"]


def tiny_config(*extra):
    cfg = load_config(HEAT.defaults, None, TINY + list(extra))
    HEAT.validate(cfg)
    return cfg


def shared_dir(tmp_path_factory, name):
    """A directory that every rank agrees on (rank 0 makes it)."""
    comm = MPI.COMM_WORLD
    path = str(tmp_path_factory.mktemp(name)) if comm.rank == 0 else None
    return comm.bcast(path, root=0)


@pytest.mark.parallel(nprocs=[1, 2])
def test_heat_case_end_to_end_and_resume(tmp_path_factory):
    comm = MPI.COMM_WORLD
    full = shared_dir(tmp_path_factory, "full")
    summary = run("heat", tiny_config(), full, quiet=True)
    for f in OUTPUTS:
        assert os.path.exists(os.path.join(full, f)), f
    with open(os.path.join(full, "summary.json")) as fh:
        saved = json.load(fh)
    for key in ("case", "ranks", "dofs", "newton_iterations", "pde_solves", "timings", "cost", "relative_error",
                "data_informed_dim"):
        assert key in saved, key
    assert saved["ranks"] == comm.size and saved["converged"]
    assert saved["relative_error"] < saved["prior_mean_relative_error"]  # the data taught us something
    assert set(saved["timings"]) >= {"setup", "data", "map", "laplace", "output"}
    assert not [f for f in os.listdir(full) if f.endswith(".tmp")]

    # stopped by SIGUSR1 after 2 Newton iterations (checkpoint first), then resumed: the same MAP
    part = shared_dir(tmp_path_factory, "part")
    with pytest.raises(Interrupted):
        run("heat", tiny_config(), part, quiet=True, stop_after=2)
    assert os.path.exists(os.path.join(part, "checkpoint", "state.json"))
    assert not os.path.exists(os.path.join(part, "summary.json"))
    resumed = run("heat", tiny_config(), part, quiet=True, resume=True)
    assert resumed["resumed"]
    assert abs(resumed["cost"] - summary["cost"]) <= 1e-10 * abs(summary["cost"])
    assert abs(resumed["relative_error"] - summary["relative_error"]) <= 1e-8 * summary["relative_error"]


def test_command_line_exit_statuses(tmp_path):
    """SIGTERM (real signal, one rank): exit 75 with the checkpoint of the last iteration in place;
    `pdeinv status` says resumable (75), then complete (0) after --resume."""
    base = [sys.executable, "-m", "pdeinv", "run", "cases/heat/config.toml", "--quiet"]
    sets = [a for s in TINY for a in ("--set", s)]
    out = tmp_path / "run"
    p = subprocess.run(base + sets + ["--out", str(out), "--sigterm-after", "1"], capture_output=True, text=True)
    assert p.returncode == EXIT_INTERRUPTED, p.stderr
    assert "checkpoint of Newton iteration 1" in p.stderr and "rerun with --resume" in p.stderr
    assert (out / "checkpoint" / "stopped.rank-0").read_text() == "stopped by signal 15, exit 75\n"
    status = [sys.executable, "-m", "pdeinv", "status", str(out)]
    assert subprocess.run(status, capture_output=True).returncode == EXIT_INTERRUPTED
    p = subprocess.run(base + sets + ["--out", str(out), "--resume"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "summary.json").read_text())["resumed"]
    assert not (out / "checkpoint" / "stopped.rank-0").exists()
    assert subprocess.run(status, capture_output=True).returncode == 0


@pytest.mark.parametrize("override, message", [
    ("mesh.nn=3", "unknown key 'mesh.nn'"),
    ("mesh.n=hello", "mesh.n: expected int"),
    ("mesh.n=1", "mesh.n must be >= 2"),
    ("data.noise_fraction=-0.1", "data.noise_fraction must be > 0"),
    ("model.observation_times=[0.0335]", "not a time step"),
    ("bogus", "expected key=value"),
    ("data.noise_fraction=inf", "data.noise_fraction: expected a finite number"),
    ("model.end_time=nan", "model.end_time: expected a finite number"),
    ("model.observation_times=[\"a\"]", "expected a list of finite numbers"),
    ("optimizer.max_iterations=-1", "optimizer.max_iterations must be >= 1"),
    ("optimizer.gradient_rtol=-1.0", "optimizer.gradient_rtol must be in (0, 1)"),
    ("optimizer.globalization=\"foo\"", "optimizer.globalization must be"),
])
def test_config_errors_stop_before_any_solve(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        HEAT.validate(load_config(HEAT.defaults, None, [override]))
    out = tmp_path / "never"
    p = subprocess.run([sys.executable, "-m", "pdeinv", "run", "cases/heat/config.toml", "--set", override,
                        "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == EXIT_CONFIG
    assert p.stderr.strip().count("\n") == 0 and message.split("(")[0] in p.stderr
    assert not out.exists()


@pytest.mark.parametrize("case", ["heat", "tomography", "poisson", "learn_regularization", "design"])
def test_shipped_config_files_are_the_defaults(case):
    import importlib

    module = importlib.import_module(f"pdeinv.cases.{case}")
    cfg = load_config(module.CASE.defaults, f"cases/{case}/config.toml")
    module.CASE.validate(cfg)
    assert cfg == module.CASE.defaults


TINY_CASES = {
    "tomography": ["mesh.n=9", "model.directions=3", "model.detectors_per_side=4", "laplace.rank=5",
                   "laplace.oversampling=3", "laplace.posterior_samples=1"],
    "poisson": ["mesh.n=8", "data.points=10", "laplace.rank=5", "laplace.oversampling=3",
                "laplace.posterior_samples=1"],
}


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("case, extra", [("tomography", []), ("tomography", ["data.noise=\"poisson\""]),
                                         ("tomography", ["prior.tv_weight=0.02"]), ("poisson", [])],
                         ids=["tomography-gaussian", "tomography-poisson", "tomography-tv", "poisson"])
def test_other_cases_end_to_end(tmp_path_factory, case, extra):
    import importlib

    module = importlib.import_module(f"pdeinv.cases.{case}")
    cfg = load_config(module.CASE.defaults, None, TINY_CASES[case] + extra)
    module.CASE.validate(cfg)
    out = shared_dir(tmp_path_factory, case)
    summary = run(case, cfg, out, quiet=True)
    for f in OUTPUTS:
        assert os.path.exists(os.path.join(out, f)), f
    assert summary["converged"]
    assert summary["relative_error"] < summary["prior_mean_relative_error"]
    assert 0 < summary["posterior_variance_trace"] < summary["prior_variance_trace"]


@pytest.mark.parametrize("n, k, bad", [(12, 5, True), (12, 6, True), (12, 4, False), (30, 12, False)])
def test_tomography_detectors_on_vertices_is_a_config_error(n, k, bad):
    """A detector on a mesh vertex (two-valued DG field) is one ConfigError before any mesh is built, with a
    value that works; before, the model's ValueError surfaced as a traceback and MPI_Abort."""
    from pdeinv.cases import tomography as module

    cfg = load_config(module.CASE.defaults, None, [f"mesh.n={n}", f"model.detectors_per_side={k}"])
    if not bad:
        module.CASE.validate(cfg)
        return
    with pytest.raises(ConfigError, match="puts detectors on vertices") as e:
        module.CASE.validate(cfg)
    fix = int(str(e.value).rsplit("e.g. ", 1)[1])
    module.CASE.validate(load_config(module.CASE.defaults, None, [f"mesh.n={n}", f"model.detectors_per_side={fix}"]))


@pytest.mark.parallel(nprocs=[1, 2])
def test_tomography_ensemble_reproduces_one_member(tmp_path_factory):
    """parallel.ensemble = 2 on 2 ranks (directions split 2 + 1, one rank each) gives the run of one member
    on 2 ranks: same data, cost, MAP and Laplace eigenvalues; member 0 alone writes every output.  On one
    rank, the ensemble setting is refused before anything is written."""
    import firedrake as fd
    import numpy as np

    from pdeinv.cases.runner import preflight
    from pdeinv.cases.tomography import CASE

    comm = MPI.COMM_WORLD
    if comm.size == 1:
        cfg = load_config(CASE.defaults, None, TINY_CASES["tomography"] + ["parallel.ensemble=2"])
        out = shared_dir(tmp_path_factory, "ens1") + "/never"
        with pytest.raises(ConfigError, match="cannot share 1 MPI rank"):
            preflight("tomography", CASE, cfg, out, ranks=1)
        with pytest.raises(ConfigError, match="parallel.ensemble must be between 1 and model.directions = 3"):
            CASE.validate(load_config(CASE.defaults, None, TINY_CASES["tomography"] + ["parallel.ensemble=4"]))
        assert not os.path.exists(out)
        return
    # The two runs differ only in round-off (reduction order), so their Newton paths part by round-off and
    # each stops somewhere inside its stopping ball ||g||_Gamma <= tau ||g0||_Gamma.  The Gauss-Newton Hessian
    # is >= Gamma^{-1} (prior precision + a PSD misfit term), so the MAP a run returns is within
    # tau ||g0||_Gamma of the exact one in the Cameron-Martin norm: with the case's tau = 1e-8 the two MAPs may
    # legitimately differ at the 1e-8 level the comparisons below use (measured once: 1.97e-8).  tau = 1e-12
    # (Newton converges quadratically: one or two more iterations) puts both far inside the comparisons.
    tight = ["optimizer.gradient_rtol=1e-12"]
    runs = {}
    for members in (1, 2):
        cfg = load_config(CASE.defaults, None, TINY_CASES["tomography"] + tight + [f"parallel.ensemble={members}"])
        CASE.validate(cfg)
        out = shared_dir(tmp_path_factory, f"ens{members}")
        runs[members] = (out, run("tomography", cfg, out, quiet=True))
    (out1, one), (out2, two) = runs[1], runs[2]
    assert two["ensemble"] == {"members": 2, "ranks_per_member": 1, "experiments_per_member": [2, 1]}
    assert one["ensemble"]["members"] == 1 and one["ensemble"]["ranks_per_member"] == 2
    assert abs(two["cost"] - one["cost"]) <= 1e-10 * one["cost"]
    assert abs(two["relative_error"] - one["relative_error"]) <= 1e-8 * one["relative_error"]
    np.testing.assert_allclose(two["eigenvalues"], one["eigenvalues"], rtol=1e-8)
    assert two["dofs"] == one["dofs"]  # solve counts may differ by a CG iteration (round-off of 2 spatial ranks)
    for f in OUTPUTS:
        assert os.path.exists(os.path.join(out2, f)), f
    probes = np.array([[0.4, 0.55], [0.68, 0.3], [0.2, 0.8], [0.5, 0.5]])
    values = []
    for out in (out1, out2):
        with fd.CheckpointFile(os.path.join(out, "results.h5"), "r") as ck:
            mesh = ck.load_mesh("mesh")
            values.append(np.asarray(fd.PointEvaluator(mesh, probes).evaluate(ck.load_function(mesh, "map"))))
    assert np.max(np.abs(values[1] - values[0])) <= 1e-8 * np.max(np.abs(values[0]))


@pytest.mark.parallel(nprocs=[1, 2])
def test_learn_regularization_case_end_to_end(tmp_path_factory):
    """The bilevel-learning case on a tiny setting: plots, fields and a summary with the test-set error of
    the learned prior and of the three classical rules; learning lowers the training loss."""
    from pdeinv.cases import learn_regularization as module

    cfg = load_config(module.CASE.defaults, None, [
        "mesh.n=8", "model.steps=5", "data.sensors=10", "train.pairs=1", "test.pairs=1", "learn.max_iterations=2",
        "learn.weight_field=2", "classical.grid=[-2.0, 0.0, 2.0]", "classical.gcv_probes=1", "lista.iterations=3",
        "lista.max_iterations=2"])
    module.CASE.validate(cfg)
    out = shared_dir(tmp_path_factory, "learn")
    summary = module.run_case(cfg, out, quiet=True)
    for f in ("summary.json", "results.h5", "learning_history.png", "choice_rules.png", "reconstructions.png",
              "learned_variance.pvd", "gcv.pvd"):
        assert os.path.exists(os.path.join(out, f)), f
    errors = summary["test_relative_error_mean"]
    assert set(errors) == {"learned_variance", "learned_matern_field", "discrepancy", "l_curve", "gcv", "configured",
                           "fista_3", "lista_3"}
    assert summary["lista"]["train_loss_learned"] <= summary["lista"]["train_loss_classical"]
    learned = summary["learned"]["learned_variance"]
    assert learned["train_loss"] <= summary["train_loss_at_configured_prior"]
    assert len(summary["learned"]["learned_matern_field"]["theta"]) == 2 + 4
    assert summary["conditioning"]["largest_eigenvalue"] > 0


@pytest.mark.parametrize("override, message", [
    ("learn.method=\"newton\"", "learn.method must be"), ("classical.grid=[1.0, 0.0, 2.0]", "classical.grid"),
    ("model.observation_times=[0.013]", "not a time step"), ("train.pairs=0", "train.pairs"),
    ("lista.alpha=-1.0", "lista.alpha")])
def test_learn_regularization_config_errors(override, message):
    from pdeinv.cases import learn_regularization as module

    with pytest.raises(ConfigError, match=message):
        module.CASE.validate(load_config(module.CASE.defaults, None, [override]))


# Keys whose every finite value of the right type is meaningful (a prior mean, an angle): a negative value
# must be accepted.  Every other numeric key (seeds included: NumPy takes non-negative ones) must reject -1.
ANY_VALUE = {"prior.mean", "prior.alpha"}


def _cases():
    import importlib

    return {c: importlib.import_module(f"pdeinv.cases.{c}") for c in ("heat", "tomography", "poisson",
                                                                        "learn_regularization", "design")}


@pytest.mark.parametrize("case", ["heat", "tomography", "poisson", "learn_regularization", "design"])
def test_every_key_is_checked(case):
    """Table over every key of every case: a value of the wrong type is one ConfigError naming the key;
    numeric keys reject non-finite values and (unless any value is meaningful) negative ones."""
    from pdeinv.cases.config import flatten

    module = _cases()[case]
    checked = 0
    for key, value in flatten(module.CASE.defaults).items():
        wrong = {bool: "1", int: "\"three\"", float: "\"x\"", str: "3", list: "3", dict: "3"}[type(value)]
        with pytest.raises(ConfigError, match=re.escape(key)):
            module.CASE.validate(load_config(module.CASE.defaults, None, [f"{key}={wrong}"]))
        if isinstance(value, float):
            with pytest.raises(ConfigError, match=re.escape(key)):
                module.CASE.validate(load_config(module.CASE.defaults, None, [f"{key}=inf"]))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if key in ANY_VALUE:
                module.CASE.validate(load_config(module.CASE.defaults, None, [f"{key}=-1"]))  # accepted
            else:
                with pytest.raises(ConfigError, match=re.escape(key.split(".")[-1])):
                    module.CASE.validate(load_config(module.CASE.defaults, None, [f"{key}=-1"]))
        checked += 1
    print(f"{case}: {checked} keys checked")


@pytest.mark.parallel(nprocs=[1, 2])
def test_solver_knob_direct_iterative_and_recorded():
    """model.solver = "direct" | "iterative" | {PETSc options}; summary.json records what it resolved to, and
    the iterative run reaches the direct run's MAP."""
    for bad, message in (("\"fast\"", "model.solver: expected one of 'direct', 'iterative'"),):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(HEAT.defaults, None, [f"model.solver={bad}"])
    results = {}
    for setting in ("direct", "iterative"):
        out = shared_dir_simple(f"solver-{setting}")
        results[setting] = run("heat", tiny_config(f"model.solver=\"{setting}\""), out, quiet=True)
    direct, iterative = results["direct"]["solver"], results["iterative"]["solver"]
    assert iterative == {"setting": "iterative", "petsc_options": {"ksp_type": "cg", "pc_type": "gamg",
                                                                   "ksp_rtol": 1e-12, "ksp_atol": 0.0}}
    assert direct["setting"] == "direct"
    # the factorisation that ran: the heat operator is symmetric, so Cholesky on 1 rank and on 2 (redundant)
    if MPI.COMM_WORLD.size == 1:
        assert direct["petsc_options"]["pc_type"] == "cholesky", direct
    else:
        assert direct["petsc_options"]["pc_type"] == "redundant", direct
        assert direct["petsc_options"]["redundant_pc_type"] == "cholesky", direct
    a, b = results["direct"]["relative_error"], results["iterative"]["relative_error"]
    assert abs(a - b) <= 1e-6 * a, (a, b)
    MPI.COMM_WORLD.barrier()
    if MPI.COMM_WORLD.rank == 0:
        import glob
        import shutil

        for d in glob.glob(os.path.join(os.path.dirname(shared_dir_simple.last), "pdeinv-solver-*")):
            shutil.rmtree(d, ignore_errors=True)


def shared_dir_simple(name):
    import tempfile

    comm = MPI.COMM_WORLD
    path = tempfile.mkdtemp(prefix=f"pdeinv-{name}-") if comm.rank == 0 else None
    shared_dir_simple.last = path = comm.bcast(path, root=0)
    return path


def test_every_case_declares_the_case_interface():
    """The runner talks to a case only through pdeinv.cases.common.Case: every case module's CASE is one,
    and a case that leaves out what the runner's phases need cannot be made."""
    from pdeinv.cases.common import DriverCase, PhasedCase, load_case
    from pdeinv.cases.runner import CASES

    for name in CASES:
        case = load_case(name)
        assert isinstance(case, (PhasedCase, DriverCase)) and case.name == name, name
        cfg = load_config(case.defaults, None, [])
        case.validate(cfg)
        assert case.size(cfg).state_dofs > 0

    class NoBuild(PhasedCase):
        name, defaults = "nobuild", {}

        def validate(self, cfg):
            pass

        def size(self, cfg, vertices=None):
            return None

        def make_mesh(self, cfg, comm, **kw):
            return None

    with pytest.raises(TypeError, match="build"):
        NoBuild()
