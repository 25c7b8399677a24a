"""Batch-job hygiene of `pdeinv run`: every bad input is exit 2 with one line and nothing written; results
directories are never silently overwritten; --resume is refused when it cannot repeat the run; SIGTERM and
SIGINT, to mpiexec or to the ranks, end every rank with status 75 and a resumable checkpoint.

The command-line tests run `pdeinv run` in subprocesses (the 2-rank ones under their own `mpiexec -n 2`),
so they belong to the serial pass only.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pdeinv.cases.runner import EXIT_CONFIG, EXIT_INTERRUPTED, MARKER, RESUMABLE_KEYS

TINY = ["mesh.n=8", "model.steps=10", "model.observation_times=[0.02, 0.05]", "data.sensors=12",
        "laplace.rank=6", "laplace.oversampling=4", "laplace.posterior_samples=2"]
SETS = [a for s in TINY for a in ("--set", s)]
PDEINV = [sys.executable, "-m", "pdeinv"]


def pdeinv_run(*args, config="cases/heat/config.toml"):
    t0 = time.perf_counter()
    p = subprocess.run(PDEINV + ["run", config, "--quiet", *args], capture_output=True, text=True)
    p.seconds = time.perf_counter() - t0
    return p


def assert_config_error(p, *fragments):
    assert p.returncode == EXIT_CONFIG, (p.returncode, p.stderr[-2000:])
    line = p.stderr.strip()
    assert line.count("\n") == 0 and line.startswith("pdeinv: configuration error: "), line
    for f in fragments:
        assert f in line, (f, line)
    print(f"{p.seconds:.2f} s: {line}")


def snapshot(path):
    return {os.path.relpath(os.path.join(d, f), path): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(path) for f in files}


# ----------------------------------------------------------------------------------------------------
# checks before anything is written: one line, exit 2, nothing created
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sets, fragments", [
    (["model.solver={ksp_tyep = \"cg\"}"], ["model.solver: unknown PETSc option(s) ['ksp_tyep']"]),
    (["model.solver={pc_type = \"hypre\"}"], ["model.solver: PETSc rejected", "unknown type"]),
    (["model.solver={ksp_type = \"cg\", ksp_rtol = \"tight\"}"], ["model.solver: PETSc rejected"]),
    (["laplace.rank=500"], ["laplace.rank + laplace.oversampling = 500 + 4 exceeds the 81 parameter dofs"]),
    (["data.file=\"missing.csv\""], ["data.file: missing.csv: no such file"]),
    (["data.file=\"cases/heat/config.toml\""], ["unknown data format '.toml'"]),
    (["mesh.file=\"cases/heat/data/sensors.csv\""], ["mesh.file", "expected a Gmsh .msh file"]),
    (["mesh.file=\"cases/heat/data/domain.msh\"", "laplace.rank=700"], ["exceeds the 651 parameter dofs"]),
    (["data.file=\"cases/heat/data/sensors.csv\""], ["data.file cases/heat/data/sensors.csv (times): 0.0125 is not "
                                                      "a time step"]),
], ids=["petsc-unknown-option", "petsc-unknown-type", "petsc-bad-value", "rank-exceeds-dofs", "data-file-missing",
        "data-file-format", "mesh-file-format", "rank-exceeds-msh-dofs", "data-times-off-grid"])
def test_checks_before_anything_is_written(tmp_path, sets, fragments):
    out = tmp_path / "never"
    p = pdeinv_run("--out", str(out), *SETS, *[a for s in sets for a in ("--set", s)])
    assert_config_error(p, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("option, fragment", [
    ("ksp_view = \"ascii:{victim}\"", "would write a file"),
    ("ksp_monitor = \"ascii:{victim}\"", "would write a file"),
    ("ksp_view_mat = \"binary:{victim}\"", "would write a file"),
    ("pc_type = \"python\", pc_python_type = \"os.abort\"", "imports and runs code"),
    ("options_file = \"{victim}\"", "imports and runs code"),
], ids=["view-file", "monitor-file", "binary-viewer", "python-type", "options-file"])
def test_petsc_options_from_a_configuration_write_nothing_and_run_nothing(tmp_path, option, fragment):
    """A configuration cannot make PETSc overwrite a file or import code: one line, exit 2, the file
    untouched and nothing called (os.abort would kill the check)."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep")
    out = tmp_path / "never"
    setting = "model.solver={ksp_type = \"cg\", " + option.format(victim=victim) + "}"
    p = pdeinv_run("--out", str(out), *SETS, "--set", setting)
    assert_config_error(p, fragment)
    assert victim.read_text() == "keep" and not out.exists()


def test_unwritable_results_directory():
    p = pdeinv_run("--out", "/proc/pdeinv-results", *SETS)
    assert_config_error(p, "--out /proc/pdeinv-results: cannot create it")


def test_results_directories_are_not_silently_overwritten(tmp_path):
    out = tmp_path / "run"
    assert pdeinv_run("--out", str(out), *SETS).returncode == 0
    stale = out / "posterior_samples" / "posterior_samples_99.vtu"  # as left by an earlier, longer run
    stale.write_text("stale")
    before = snapshot(out)

    assert_config_error(pdeinv_run("--out", str(out), *SETS), "holds an earlier run", "--overwrite")
    assert snapshot(out) == before  # untouched

    p = pdeinv_run("--out", str(out), "--overwrite", *SETS)
    assert p.returncode == 0, p.stderr
    assert not stale.exists() and (out / "summary.json").exists() and (out / MARKER).exists()

    # a directory pdeinv did not write is never deleted, with or without --overwrite
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        assert_config_error(pdeinv_run("--out", str(foreign), *SETS, *extra), "not a pdeinv results directory")
    assert (foreign / "notes.txt").read_text() == "precious"
    assert_config_error(pdeinv_run("--out", str(out), "--overwrite", "--resume", *SETS), "exclude each other")


def test_results_directory_keeps_the_users_files(tmp_path):
    """--overwrite and a restart replace only what pdeinv wrote: the user's notes, job script and analysis
    folder in a results directory stay, another run's directory below stays, and a new configuration that
    fails during setup (a sensor outside the mesh: found only when the model is built) puts the earlier run
    back untouched."""
    out = tmp_path / "results"
    assert pdeinv_run("--out", str(out), *SETS).returncode == 0
    manifest = json.loads((out / MARKER).read_text())
    assert "checkpoint" in manifest["entries"] and "summary.json" in manifest["entries"]
    (out / "notes.txt").write_text("precious")
    (out / "job.sh").write_text("#!/bin/sh\n")
    (out / "analysis").mkdir()
    (out / "analysis" / "plot.py").write_text("print(1)")
    inner = out / "b"
    assert pdeinv_run("--out", str(inner), *SETS).returncode == 0  # another run inside
    inner_before = snapshot(inner)

    # a configuration that fails at model build: the earlier run is put back as it was
    bad = tmp_path / "outside.csv"
    bad.write_text("x,y,t,value,sigma\n5.0,5.0,0.02,0.1,0.01\n5.0,5.0,0.05,0.1,0.01\n")
    before, listed = snapshot(out), json.loads((out / MARKER).read_text())["entries"]
    p = pdeinv_run("--out", str(out), "--overwrite", *SETS, "--set", f"data.file=\"{bad}\"")
    assert p.returncode == EXIT_CONFIG, p.stderr[-2000:]
    after = snapshot(out)
    for bookkeeping in (MARKER, ".pdeinv-lock"):  # rewritten (same content) / taken and released
        after.pop(bookkeeping), before.pop(bookkeeping)
    assert after == before  # every file as it was
    assert json.loads((out / MARKER).read_text())["entries"] == listed  # the manifest rewritten, same content
    assert not (out / ".pdeinv-previous").exists()

    p = pdeinv_run("--out", str(out), "--overwrite", *SETS)
    assert p.returncode == 0, p.stderr
    assert (out / "notes.txt").read_text() == "precious" and (out / "job.sh").exists()
    assert (out / "analysis" / "plot.py").exists() and snapshot(inner) == inner_before
    assert (out / "summary.json").exists() and not (out / ".pdeinv-previous").exists()

    # a run stopped before its first checkpoint, restarted without a flag: the user's files stay
    early = tmp_path / "early"
    early.mkdir()
    (early / MARKER).write_text(json.dumps({"entries": []}))
    (early / "mine.txt").write_text("keep")
    assert pdeinv_run("--out", str(early), *SETS).returncode == 0
    assert (early / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("where", ["cwd", "parent", "root", "home"])
def test_results_directory_may_not_hold_the_working_or_home_directory(tmp_path, where):
    work = tmp_path / "project"
    work.mkdir()
    (work / MARKER).write_text("results of a pdeinv run\n")  # even a marker does not make it pdeinv's
    (work / "thesis.tex").write_text("precious")
    out = {"cwd": ".", "parent": "..", "root": "/", "home": os.path.expanduser("~")}[where]
    cfg = os.path.join(os.getcwd(), "cases/heat/config.toml")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.run(PDEINV + ["run", cfg, "--quiet", "--overwrite", "--out", out, *SETS], capture_output=True,
                       text=True, cwd=work, env=env)
    p.seconds = 0.0
    assert_config_error(p, "choose a directory of its own")
    assert (work / "thesis.tex").read_text() == "precious"


def test_a_lock_taken_a_moment_ago_is_described_once_its_holder_has_written(tmp_path):
    """The winner of a race writes its holder record just after taking the lock; a loser that reads the
    record in between waits for it instead of printing "holder unknown" (the stop-30 CI failure)."""
    import fcntl
    import json as json_
    import threading

    from pdeinv.cases.config import ConfigError
    from pdeinv.cases.results_dir import LOCK, RunLock

    path = tmp_path / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the winner holds it; its record is not written yet
    record = json_.dumps({"host": "winner-host", "pid": 4242, "started": "2026-12-03 17:00:00"}).encode()
    writer = threading.Timer(0.3, lambda: os.pwrite(fd, record, 0))
    writer.start()
    try:
        with pytest.raises(ConfigError, match=r"another pdeinv run is using it \(host winner-host, pid 4242"):
            RunLock(str(tmp_path)).acquire()
    finally:
        writer.join()
        os.close(fd)


def test_a_run_that_loses_the_race_leaves_the_winners_directory(tmp_path, monkeypatch, capsys):
    """The window between the lock check and the lock: another run makes the directory and takes its lock
    just after this run looked.  This run must name the holder, and must not take the new directory (a
    lock file and no marker) for a foreign one, nor remove it as one it made itself."""
    from pdeinv.cases import results_dir, runner

    out = tmp_path / "run"
    other = results_dir.RunLock(str(out))

    def the_other_run_starts(path):
        os.mkdir(path)
        other.acquire()

    monkeypatch.setattr(runner, "_refuse_if_locked", the_other_run_starts)
    try:
        code = runner.main(["cases/heat/config.toml", "--quiet", "--out", str(out), *SETS])
        assert code == EXIT_CONFIG
        assert "another pdeinv run is using it (host" in capsys.readouterr().err
        assert out.is_dir() and sorted(os.listdir(out)) == [results_dir.LOCK]
    finally:
        other.release()


def test_one_run_per_results_directory(tmp_path):
    """Two runs started together on one directory: exactly one runs, the other exits 2 naming the holder;
    while a run is live, `pdeinv status` says running (3, not resumable) and --resume beside it is refused."""
    out = tmp_path / "run"
    env = dict(os.environ)
    first, second = (subprocess.Popen(PDEINV + ["run", "cases/heat/config.toml", "--quiet", "--out", str(out),
                                                *SETS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env) for _ in range(2))
    results = [p.communicate(timeout=600) + (p.returncode,) for p in (first, second)]
    codes = sorted(r[2] for r in results)
    assert codes == [0, EXIT_CONFIG], [(r[2], r[1][-500:]) for r in results]
    loser = next(r for r in results if r[2] == EXIT_CONFIG)[1].strip()
    assert "another pdeinv run is using it (host" in loser or "holds an earlier run" in loser, loser

    live = subprocess.Popen(PDEINV + ["run", "cases/heat/config.toml", "--quiet", "--out", str(out), "--overwrite",
                                      *SETS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    status = None
    while time.time() < deadline and live.poll() is None:
        status = subprocess.run(PDEINV + ["status", str(out)], capture_output=True, text=True)
        if status.returncode == 3:
            break
        time.sleep(0.2)
    if live.poll() is None:  # still running: it holds the lock
        assert status.returncode == 3 and f"pid {live.pid}" in status.stdout, status.stdout
        p = pdeinv_run("--out", str(out), "--resume", *SETS)
        assert_config_error(p, "another pdeinv run is using it", f"pid {live.pid}")
    assert live.wait(timeout=600) == 0, live.stderr.read()[-2000:]
    assert subprocess.run(PDEINV + ["status", str(out)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A real checkpoint: a tiny heat run stopped by SIGTERM after Newton iteration 1 (copy it before changing
    it); and the iterate file of a run on another mesh."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    p = pdeinv_run("--out", str(out), "--sigterm-after", "1", *SETS)
    assert p.returncode == EXIT_INTERRUPTED, p.stderr
    other = tmp_path_factory.mktemp("other") / "run"
    p = pdeinv_run("--out", str(other), "--sigterm-after", "1", *SETS, "--set", "mesh.n=10")
    assert p.returncode == EXIT_INTERRUPTED, p.stderr
    return out, other


def _copy(src, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def test_status_of_a_failed_run_is_not_resumable(tmp_path, interrupted):
    """A run that ended with an error (not a stop signal) records why; `pdeinv status` says failed (1), so a
    job script does not resubmit it forever; a resumed run clears the record."""
    from pdeinv.cases.results_dir import record_failure
    from pdeinv.cases.runner import run_status

    out = _copy(interrupted[0], tmp_path)
    assert run_status(str(out))[0] == EXIT_INTERRUPTED
    record_failure(str(out), "OSError: [Errno 28] No space left on device")
    code, text = run_status(str(out))
    assert code == 1 and "failed (OSError: [Errno 28] No space left on device)" in text


def _state(ck):
    return json.loads((ck / "state.json").read_text())


def _write_state(ck, **changes):
    (ck / "state.json").write_text(json.dumps(_state(ck) | changes))


def _iterate(ck):
    return ck / _state(ck)["iterate_file"]


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _nan_iterate(ck):
    """NaN in the iterate, the hash updated: only the finiteness check can find it."""
    import h5py
    import numpy as np

    from pdeinv.cases.checkpoint_files import sha256

    with h5py.File(_iterate(ck), "r+") as fh:
        names = []
        fh.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and "m" in n.split("/")
                      and o.dtype.kind == "f" else None)
        fh[names[-1]][0] = np.nan
    _write_state(ck, iterate_sha256=sha256(_iterate(ck)))


DAMAGES = {  # what is done to a copy of a good checkpoint -> what status and --resume say
    "truncated-iterate": (lambda ck, other: _truncate(_iterate(ck)), "SHA-256 mismatch"),
    "truncated-mesh": (lambda ck, other: _truncate(ck / "mesh.h5"), "mesh mesh.h5 differs"),
    "truncated-state": (lambda ck, other: _truncate(ck / "state.json"), "state.json unreadable or truncated"),
    "truncated-config": (lambda ck, other: _truncate(ck / "config.json"), "config.json is missing or unreadable"),
    "missing-iterate": (lambda ck, other: _iterate(ck).unlink(), "missing"),
    "missing-mesh": (lambda ck, other: (ck / "mesh.h5").unlink(), "mesh 'mesh.h5' missing"),
    "missing-state": (lambda ck, other: (ck / "state.json").unlink(), None),  # nothing to resume at all
    "state-not-object": (lambda ck, other: (ck / "state.json").write_text("[1, 2]"), "not a JSON object"),
    "state-without-optimizer": (lambda ck, other: _write_state(ck, state=None), "holds no optimizer state"),
    "older-format": (lambda ck, other: (ck / "state.json").write_text(json.dumps(
        {"iterate_file": _state(ck)["iterate_file"], "state": _state(ck)["state"]})), "written by an older pdeinv"),
    "iterate-of-another-mesh": (lambda ck, other: shutil.copy(_iterate(other / "checkpoint"), _iterate(ck)),
                                "SHA-256 mismatch"),
    "iterate-path-escapes": (lambda ck, other: _write_state(ck, iterate_file="../summary.json"), "missing"),
    "nan-iterate": (lambda ck, other: _nan_iterate(ck), "NaN or infinite"),
    "empty-iterate": (lambda ck, other: _iterate(ck).write_bytes(b""), "SHA-256 mismatch"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoints_are_found_before_the_run(tmp_path, interrupted, damage):
    """A damaged or foreign checkpoint: `pdeinv status` says damaged (1, not resumable 75) and --resume is one
    line, exit 2, before any solve, with nothing changed."""
    from pdeinv.cases.runner import run_status

    out = _copy(interrupted[0], tmp_path)
    action, fragment = DAMAGES[damage]
    action(out / "checkpoint", interrupted[1])
    code, text = run_status(str(out))
    assert code == 1, text
    before = snapshot(out)
    p = pdeinv_run("--out", str(out), "--resume", *SETS)
    assert_config_error(p, "--resume", fragment or "no checkpoint")
    assert snapshot(out) == before and p.seconds < 30


def test_resume_safety(tmp_path):
    missing = tmp_path / "none"
    assert_config_error(pdeinv_run("--out", str(missing), "--resume", *SETS), "--resume: no checkpoint")
    assert not missing.exists()

    out = tmp_path / "run"
    p = pdeinv_run("--out", str(out), "--sigterm-after", "1", *SETS)
    assert p.returncode == EXIT_INTERRUPTED, p.stderr
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["case"] == "heat" and len(saved["config_hash"]) == 64
    before = snapshot(out)
    p = pdeinv_run("--out", str(out), "--resume", *SETS, "--set", "mesh.n=16", "--set", "prior.variance=0.4")
    assert_config_error(p, "differs from the checkpoint's in mesh.n: 8 -> 16; prior.variance: 0.5 -> 0.4")
    assert snapshot(out) == before
    # settings that act after the checkpointed iterations may change
    assert "laplace.rank" in RESUMABLE_KEYS
    p = pdeinv_run("--out", str(out), "--resume", *SETS, "--set", "laplace.rank=5")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] and summary["config"]["laplace"]["rank"] == 5


# ----------------------------------------------------------------------------------------------------
# signals on 2 ranks
# ----------------------------------------------------------------------------------------------------

def _mpiexec():
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if os.geteuid() == 0:
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return exe, env


SLOW = ["--set", "mesh.n=24", "--set", "model.steps=40", "--set", "laplace.rank=6", "--set", "laplace.oversampling=4"]


@pytest.mark.parametrize("target, signum", [("mpiexec", signal.SIGTERM), ("mpiexec", signal.SIGINT),
                                            ("ranks", signal.SIGTERM)],
                         ids=["SIGTERM-to-mpiexec", "SIGINT-to-mpiexec", "SIGTERM-to-ranks"])
def test_signals_on_two_ranks_checkpoint_and_exit_75(tmp_path, target, signum):
    exe, env = _mpiexec()
    out = tmp_path / "run"
    cmd = [exe, "-n", "2", sys.executable, "-m", "pdeinv", "run", "cases/heat/config.toml", "--out", str(out), *SLOW]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the run ended before its first checkpoint"
    time.sleep(0.2)  # mid-iteration
    if target == "mpiexec":
        job.send_signal(signum)
    else:
        ranks = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        for pid in ranks:
            os.kill(int(pid), signum)
    log = job.communicate(timeout=60)[0]
    # every rank exited 75 (each records its own stop); mpiexec's own status: see docs/slurm.md
    for rank in (0, 1):
        assert (out / "checkpoint" / f"stopped.rank-{rank}").read_text().endswith("exit 75\n")
    if target == "ranks":
        assert job.returncode == EXIT_INTERRUPTED, log[-3000:]
    print(f"{target}: mpiexec returned {job.returncode}")
    status = subprocess.run(PDEINV + ["status", str(out)], capture_output=True, text=True)
    assert status.returncode == EXIT_INTERRUPTED, status.stdout
    # the checkpoint is complete: --resume on 2 ranks finishes the run
    p = subprocess.run(cmd + ["--resume", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] and summary["converged"]
    assert not [f for f in os.listdir(out / "checkpoint") if f.endswith(".tmp") or f.startswith("stopped")]


@pytest.mark.parametrize("args, fragment", [
    (["--out", "/proc/pdeinv-results"], "cannot create it"),
    (["--set", "model.solver={ksp_tyep = \"cg\"}"], "unknown PETSc option"),
    (["--resume", "--out", "NOWHERE"], "--resume: no checkpoint"),
], ids=["unwritable", "petsc-option", "resume-without-checkpoint"])
def test_config_errors_on_two_ranks(tmp_path, args, fragment):
    """Under mpiexec every rank exits 2 (no MPI_Abort, no traceback), the message is printed once."""
    exe, env = _mpiexec()
    args = [str(tmp_path / "none") if a == "NOWHERE" else a for a in args]
    p = subprocess.run([exe, "-n", "2", sys.executable, "-m", "pdeinv", "run", "cases/heat/config.toml", *SETS, *args],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == EXIT_CONFIG, p.stdout[-2000:] + p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("pdeinv: configuration error")]
    assert len(lines) == 1 and fragment in lines[0], p.stderr
    assert not (tmp_path / "none").exists()


def test_code_options_need_the_opt_in_and_file_viewers_are_refused_even_then():
    from pdeinv._petsc import unsafe_options

    code = {"pc_type": "python", "pc_python_type": "firedrake.AssembledPC"}
    assert "imports and runs code" in unsafe_options(code)
    assert unsafe_options(code, allow_code=True) is None
    assert "would write a file" in unsafe_options({"ksp_view": "ascii:out.txt"}, allow_code=True)
    assert unsafe_options({"ksp_monitor": "", "ksp_view": None, "pc_factor_mat_solver_type": "mumps"}) is None


def _poison(path, marker):
    """Replace every pickled attribute of an HDF5 file by a pickle that would create ``marker``."""
    import pickle

    import h5py
    import numpy as np

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with h5py.File(path, "r+") as fh:
        def swap(obj):
            for k, v in list(obj.attrs.items()):
                if isinstance(v, np.void):
                    obj.attrs[k] = np.void(pickle.dumps({"mesh": Payload()}))
        swap(fh)
        fh.visititems(lambda name, obj: swap(obj))


def test_crafted_hdf5_files_run_nothing(tmp_path):
    """A mesh.file or a swapped checkpoint/mesh.h5 holding a code-running pickle: one line, exit 2, nothing
    executed (Firedrake's CheckpointFile would unpickle it on opening)."""
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    p = pdeinv_run("--out", str(out), "--sigterm-after", "1", *SETS)
    assert p.returncode == EXIT_INTERRUPTED, p.stderr
    crafted = tmp_path / "mesh.h5"
    shutil.copy(out / "checkpoint" / "mesh.h5", crafted)
    _poison(crafted, marker)
    p = pdeinv_run("--out", str(tmp_path / "other"), *SETS, "--set", f"mesh.file=\"{crafted}\"")
    assert_config_error(p, "hold a pickle that would run code")
    shutil.copy(crafted, out / "checkpoint" / "mesh.h5")
    p = pdeinv_run("--out", str(out), "--resume", *SETS)
    assert_config_error(p, "--resume:", "hold a pickle that would run code")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------
# full disk: a small tmpfs (needs root to mount one; skipped elsewhere)
# ----------------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2.6 MB tmpfs: the checkpoint of a TINY heat run fits, its outputs do not; yields (mountpoint, grow)
    where grow() enlarges it to 16 MB (space freed)."""
    where = tmp_path / "disk"
    where.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(where)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield where, lambda: subprocess.run(["mount", "-o", "remount,size=16m", str(where)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(where)])


@pytest.mark.parametrize("nprocs", [1, 2])
def test_full_disk_is_one_line_and_exit_74_with_the_checkpoint_resumable(small_disk, nprocs):
    """Serial and 2 ranks: the outputs do not fit -> one line naming the directory and what is needed, exit 74
    within 30 s (no hang), `status` failed (not resubmitted); the last checkpoint intact: once space is freed
    --resume finishes the run."""
    from pdeinv.cases.checkpoint_files import problems
    from pdeinv.cases.disk import EXIT_NO_SPACE

    where, grow = small_disk
    out = where / "run"
    exe, env = _mpiexec() if nprocs > 1 else (None, dict(os.environ))
    launch = [exe, "-n", str(nprocs)] if nprocs > 1 else []
    cmd = launch + PDEINV + ["run", "cases/heat/config.toml", "--quiet", "--out", str(out), *SETS]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert p.returncode == EXIT_NO_SPACE, p.stdout[-2000:] + p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("pdeinv:")]
    assert len(lines) == 1 and f"no space left on {out}" in lines[0] and "MB free" in lines[0], p.stderr
    assert "Traceback" not in p.stderr and seconds < 30, seconds
    status = subprocess.run(PDEINV + ["status", str(out)], capture_output=True, text=True)
    assert status.returncode == 1 and "no space left" in status.stdout, status.stdout
    assert problems(str(out)) == [] and not (out / "summary.json").exists()
    grow()
    p = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] and summary["converged"]
    print(f"{nprocs} rank(s): exit 74 after {seconds:.1f} s: {lines[0]}")


def test_disk_full_before_the_first_checkpoint_leaves_nothing(small_disk):
    """Too little space for even the mesh: exit 74 before anything is written; the directory the run made is
    gone again."""
    from pdeinv.cases.disk import EXIT_NO_SPACE

    where, _ = small_disk
    (where / "filler").write_bytes(b"\0" * (1900 * 1024))
    out = where / "run"
    p = pdeinv_run("--out", str(out), *SETS)
    assert p.returncode == EXIT_NO_SPACE and "no space left on" in p.stderr, p.stderr[-2000:]
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------
# item 12: the cached signal handler, ranks killed without a record
# ----------------------------------------------------------------------------------------------------

_PLANTED = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen("%s", "w"); if (f) fclose(f); }
"""


@pytest.mark.parametrize("who_can_write", ["world-writable-directory", "world-writable-file", "symlink"])
def test_a_cached_signal_handler_others_could_have_written_is_never_loaded(tmp_path, monkeypatch, who_can_write):
    """A shared library is code: a handler planted in a cache directory or file that others can write (or a
    symbolic link to one) is not loaded — a private one is built instead, and the handler still works."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    from pdeinv.cases import signals

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = signals.handler_cache_path()
    os.makedirs(os.path.dirname(path), mode=0o700)
    marker = tmp_path / "loaded"
    src = tmp_path / "planted.c"
    src.write_text(_PLANTED % marker)
    planted = tmp_path / "planted.so" if who_can_write == "symlink" else path
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(planted)], check=True)
    if who_can_write == "world-writable-directory":
        os.chmod(os.path.dirname(path), 0o777)
    elif who_can_write == "world-writable-file":
        os.chmod(path, 0o666)
    else:
        os.symlink(planted, path)
    lib = signals._library()
    assert not marker.exists(), "the planted library was loaded"
    assert lib is not None and hasattr(lib, "pdeinv_install")
    os.chmod(os.path.dirname(path), 0o700)
    if who_can_write == "world-writable-file":  # once private again, the user's own cache is used as before
        os.remove(path)
        assert signals._library() is not None and os.path.isfile(path) and signals._private(path)


def test_status_names_the_ranks_killed_without_a_record(tmp_path):
    """SIGKILL (what the out-of-memory killer sends) to rank 1 of 2 after the first checkpoint: mpiexec ends
    rank 0; `pdeinv status` says which rank(s) ended without a record instead of naming the survivor as the
    one stopped, and the run is resumable."""
    exe, env = _mpiexec()
    out = tmp_path / "run"
    cmd = [exe, "-n", "2", sys.executable, "-m", "pdeinv", "run", "cases/heat/config.toml", "--out", str(out), *SLOW]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the run ended before its first checkpoint"
    ranks = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    rank1 = [pid for pid in ranks if "OMPI_COMM_WORLD_RANK=1" in open(f"/proc/{pid}/environ").read().split("\0")]
    assert len(rank1) == 1, ranks
    os.kill(int(rank1[0]), signal.SIGKILL)
    job.communicate(timeout=60)
    status = subprocess.run(PDEINV + ["status", str(out)], capture_output=True, text=True)
    assert status.returncode == EXIT_INTERRUPTED, status.stdout
    said = status.stdout
    assert "ended without a record" in said and ("rank(s) 1 of 2" in said or "rank(s) 0-1 of 2" in said), said
    assert "stopped by a signal on rank(s) 1" not in status.stdout
    print(status.stdout.strip())


def test_rank_lists_stay_one_line():
    from pdeinv.cases.runner import _ranges

    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert _ranges(list(range(1000))) == "0-999"
    assert _ranges([3]) == "3"


LEARN = [a for s in ["mesh.n=8", "model.steps=5", "data.sensors=10", "train.pairs=1", "test.pairs=1",
                     "learn.max_iterations=2", "classical.grid=[-2.0, 0.0, 2.0]", "classical.gcv_probes=1",
                     "lista.iterations=2", "lista.max_iterations=2"] for a in ("--set", s)]


def test_learn_regularization_resumes_from_its_checkpointed_phases(tmp_path):
    """The case with its own driver gets the batch-job path too: SIGTERM after its learning phases and its
    LISTA training (three checkpointed phases) -> exit 75, those phases in checkpoint/phases.json, `pdeinv
    status` resumable (75); a changed setting is refused on --resume; --resume takes the saved phases and
    finishes with the uninterrupted run's summary (serially bit for bit)."""
    cfg = "cases/learn_regularization/config.toml"
    out, ref = tmp_path / "run", tmp_path / "ref"
    p = pdeinv_run("--out", str(out), *LEARN, "--sigterm-after", "3", config=cfg)
    assert p.returncode == EXIT_INTERRUPTED, p.stderr[-2000:]
    saved = json.loads((out / "checkpoint" / "phases.json").read_text())["phases"]
    assert list(saved) == ["learned_variance", "learned_matern", "lista_2"]
    status = subprocess.run(PDEINV + ["status", str(out)], capture_output=True, text=True)
    assert status.returncode == EXIT_INTERRUPTED, status.stdout
    assert "(learned_variance, learned_matern, lista_2)" in status.stdout, status.stdout
    assert_config_error(pdeinv_run("--out", str(out), "--resume", *LEARN, "--set", "data.seed=2", config=cfg),
                        "--resume: the configuration differs", "data.seed")
    p = subprocess.run(PDEINV + ["run", cfg, "--out", str(out), "--resume", *LEARN], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    log = p.stdout + p.stderr  # not --quiet: the log says what was taken from the checkpoint
    assert all(f"{name}: taken from the checkpoint" in log for name in saved), log[-3000:]
    p = pdeinv_run("--out", str(ref), *LEARN, config=cfg)
    assert p.returncode == 0, p.stderr[-2000:]
    resumed, uninterrupted = (json.loads((d / "summary.json").read_text()) for d in (out, ref))
    theta = resumed["learned"]["learned_variance"]["theta"]
    assert list(theta.values()) == saved["learned_variance"]["theta"]
    for key in ("learned", "test_relative_errors", "test_relative_error_mean", "lista", "lista_loss_history"):
        assert resumed[key] == uninterrupted[key], key
    assert not [f for f in os.listdir(out / "checkpoint") if f.startswith("stopped")]
