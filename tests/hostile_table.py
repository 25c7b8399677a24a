"""The fault-and-hostile-input table of the command line and the data readers (issue #20).

Each row is one thing a new user (or a hostile file) does; :func:`outcome` runs it and classifies what
happened: ``"well"`` (the documented exit status, at most one line naming the input on an error, no
traceback, nothing of the user's changed, nothing executed, nothing half-written), or what went wrong
(``"traceback"``, ``"data lost"``, ``"code executed"``, ``"hang"``, ``"badly: ..."``).
``tests/test_hostile_inputs.py`` asserts every row is handled well; ``trials/hostile_inputs.py`` prints
the counts as JSON.  Rows needing a real checkpoint, signals or a small disk are tests of their own
(tests/test_batch_jobs.py, tests/test_plugin_safety.py), counted there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

EXIT_CONFIG = 2
TIMEOUT = 120  # a preflight refusal takes about a second; anything near this is a hang
TINY = ["mesh.n=8", "model.steps=10", "model.observation_times=[0.02, 0.05]", "data.sensors=12",
        "laplace.rank=6", "laplace.oversampling=4", "laplace.posterior_samples=1"]
HEAT = "cases/heat/config.toml"


@dataclass(frozen=True)
class Cli:
    """``pdeinv run CONFIG --out OUT --quiet ARGS`` with ``{dir}``, ``{victim}``, ``{marker}`` and the paths
    ``make`` writes (name -> path) substituted; expect ``status`` (and ``fragment`` in the one error line)."""

    id: str
    item: str
    args: tuple = ()
    fragment: str = ""
    config: str = HEAT
    status: int = EXIT_CONFIG
    tiny: bool = True
    make: Callable | None = None  # make(tmp) -> {name: path}
    out: str = "{dir}/out"


@dataclass(frozen=True)
class Reader:
    """A data or mesh file made by ``make(tmp)`` and read by pdeinv's reader ``kind`` in-process: it must
    return (``ok=True``) or raise one DataFileError naming the file."""

    id: str
    item: str
    make: Callable
    kind: str = "data"  # "data": read_observed_data; "mesh": check_mesh_file + msh_vertex_count
    ok: bool = False
    fragment: str = ""
    extra: dict = field(default_factory=dict)


def _text(name, body, *, binary=False):
    def make(tmp):
        p = os.path.join(tmp, name)
        with open(p, "wb") as fh:
            fh.write(body if binary else body.encode("utf-8"))
        return {"file": p}
    return make


GOOD = "x,y,t,value\n0.3,0.4,0.02,1.0\n0.6,0.5,0.02,2.0\n0.3,0.4,0.05,1.5\n0.6,0.5,0.05,2.5\n"


def _npz(name="d.npz", **arrays):
    def make(tmp):
        import numpy as np

        p = os.path.join(tmp, name)
        np.savez(p, **{k: np.asarray(v) for k, v in arrays.items()})
        return {"file": p}
    return make


def _h5(name="d.h5", attrs=None, **arrays):
    def make(tmp):
        import h5py
        import numpy as np

        p = os.path.join(tmp, name)
        with h5py.File(p, "w") as f:
            for k, v in arrays.items():
                f[k] = np.asarray(v)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
        return {"file": p}
    return make


def _pickled_h5(marker_name="pwned"):
    def make(tmp):
        import pickle

        import h5py
        import numpy as np

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {os.path.join(tmp, marker_name)}",))

        p = os.path.join(tmp, "evil.h5")
        with h5py.File(p, "w") as f:
            f["points"] = np.zeros((2, 2))
            f.attrs["meta"] = np.void(pickle.dumps({"x": Payload()}))
        return {"file": p}
    return make


def _sparse(name, size):
    def make(tmp):
        p = os.path.join(tmp, name)
        with open(p, "wb") as fh:
            fh.write(b"x,y,t,value\n")
            fh.truncate(size)
        return {"file": p}
    return make


def _fifo(name):
    def make(tmp):
        p = os.path.join(tmp, name)
        os.mkfifo(p)
        return {"file": p}
    return make


def _dir(name):
    def make(tmp):
        p = os.path.join(tmp, name)
        os.makedirs(p)
        return {"file": p}
    return make


def _link_loop(name):
    def make(tmp):
        p = os.path.join(tmp, name)
        os.symlink(p, p)
        return {"file": p}
    return make


def _config(body):
    def make(tmp):
        p = os.path.join(tmp, "c.toml")
        with open(p, "w") as fh:
            fh.write(body)
        return {"config": p}
    return make


def _config_bytes(body: bytes):
    def make(tmp):
        p = os.path.join(tmp, "c.toml")
        with open(p, "wb") as fh:
            fh.write(body)
        return {"config": p}
    return make


def _user_dir(tmp):
    """A results directory holding the user's own files (no pdeinv run in it)."""
    d = os.path.join(tmp, "mine")
    os.makedirs(d)
    with open(os.path.join(d, "notes.txt"), "w") as fh:
        fh.write("keep")
    return {"mine": d}


def _s(*sets):
    return tuple(a for s in sets for a in ("--set", s))


CLI = [
    # -- item 12 and the configuration: keys, types, ranges ------------------------------------------------
    Cli("unknown-key", "config", _s("mesh.m=3"), "unknown key 'mesh.m'"),
    Cli("unknown-table", "config", _s("meshes.n=3"), "unknown key 'meshes'"),
    Cli("unknown-nested", "config", _s("mesh.n.x=3"), "mesh.n"),
    Cli("string-for-int", "config", _s("mesh.n=\"eight\""), "mesh.n: expected int"),
    Cli("float-for-int", "config", _s("mesh.n=8.5"), "mesh.n: expected int"),
    Cli("bool-for-int", "config", _s("mesh.n=true"), "mesh.n: expected int"),
    Cli("bare-word-for-float", "config", _s("model.end_time=soon"), "model.end_time: expected float"),
    Cli("nan", "config", _s("model.end_time=nan"), "expected a finite number"),
    Cli("inf", "config", _s("model.conductivity=inf"), "expected a finite number"),
    Cli("negative-inf", "config", _s("prior.variance=-inf"), "expected a finite number"),
    Cli("list-for-float", "config", _s("model.theta=[1, 2]"), "model.theta: expected float"),
    Cli("table-for-int", "config", _s("mesh.n={a = 1}"), "mesh.n: expected int"),
    Cli("string-for-table", "config", _s("mesh=\"big\""), "mesh: expected a table"),
    Cli("set-without-equals", "config", ("--set", "mesh.n"), "expected key=value"),
    Cli("set-empty-value", "config", ("--set", "mesh.n="), "mesh.n: expected int"),
    Cli("mesh-n-1", "config", _s("mesh.n=1"), "mesh.n must be >= 2"),
    Cli("mesh-n-negative", "config", _s("mesh.n=-5"), "mesh.n must be >= 2"),
    Cli("steps-zero", "config", _s("model.steps=0"), "model.steps must be >= 1"),
    Cli("end-time-zero", "config", _s("model.end_time=0"), "model.end_time must be > 0"),
    Cli("theta-out-of-range", "config", _s("model.theta=0.2"), "model.theta must be in [0.5, 1]"),
    Cli("conductivity-negative", "config", _s("model.conductivity=-1"), "model.conductivity must be > 0"),
    Cli("sensors-zero", "config", _s("data.sensors=0"), "data.sensors must be >= 1"),
    Cli("noise-zero", "config", _s("data.noise_fraction=0"), "data.noise_fraction must be > 0"),
    Cli("negative-seed", "config", _s("data.seed=-1"), "non-negative integer seed"),
    Cli("huge-seed", "config", _s("data.seed=99999999999999999999999"), status=0),  # NumPy takes any size
    Cli("correlation-zero", "config", _s("prior.correlation_length=0"), "prior.correlation_length"),
    Cli("rtol-above-1", "config", _s("optimizer.gradient_rtol=2"), "optimizer.gradient_rtol must be in (0, 1)"),
    Cli("max-iterations-zero", "config", _s("optimizer.max_iterations=0"), "optimizer.max_iterations must be >= 1"),
    Cli("cg-iterations-zero", "config", _s("optimizer.max_cg_iterations=0"), "optimizer.max_cg_iterations"),
    Cli("globalization-unknown", "config", _s("optimizer.globalization=\"newton\""), "optimizer.globalization"),
    Cli("rank-zero", "config", _s("laplace.rank=0"), "laplace.rank must be >= 1"),
    Cli("oversampling-negative", "config", _s("laplace.oversampling=-1"), "laplace.oversampling >= 0"),
    Cli("rank-exceeds-dofs", "config", _s("laplace.rank=500"), "exceeds the 81 parameter dofs"),
    Cli("prior-variance-unknown", "config", _s("laplace.prior_variance=\"guess\""), "laplace.prior_variance"),
    Cli("variance-samples-1", "config", _s("laplace.variance_samples=1"), "laplace.variance_samples must be >= 2"),
    Cli("solver-unknown-name", "config", _s("model.solver=\"fast\""), "model.solver: expected one of"),
    Cli("solver-unknown-option", "petsc", _s("model.solver={ksp_tyep = \"cg\"}"), "unknown PETSc option"),
    Cli("solver-unknown-type", "petsc", _s("model.solver={pc_type = \"hypre2\"}"), "PETSc rejected"),
    Cli("solver-bad-value", "petsc", _s("model.solver={ksp_rtol = \"tight\"}"), "PETSc rejected"),
    Cli("solver-draw-viewer", "petsc", _s("model.solver={ksp_view = \"draw\"}"), "would open a window"),
    Cli("solver-socket-viewer", "petsc", _s("model.solver={ksp_monitor = \"socket\"}"), "network connection"),
    Cli("solver-format-only-viewer", "petsc", _s("model.solver={ksp_converged_reason = \"::failed\"}"), status=0),
    Cli("solver-python-type-opt-in-absent", "petsc",
        _s("model.solver={pc_type = \"python\", pc_python_type = \"subprocess.call\"}"), "imports and runs code"),
    Cli("solver-snes-monitor-file", "petsc", _s("model.solver={ksp_monitor_true_residual = \"ascii:{victim}\"}"),
        "would write a file"),
    Cli("solver-log-view-file", "petsc", _s("model.solver={log_view = \"ascii:{victim}\"}"), "model.solver"),
    Cli("solver-mat-view-hdf5", "petsc", _s("model.solver={mat_view = \"hdf5:{victim}\"}"), "model.solver"),
    # -- observation times (item 12) ---------------------------------------------------------------------
    Cli("times-duplicate", "times", _s("model.observation_times=[0.02, 0.02]"), "strictly increasing"),
    Cli("times-unsorted", "times", _s("model.observation_times=[0.05, 0.02]"), "strictly increasing"),
    Cli("times-off-grid", "times", _s("model.observation_times=[0.0123]"), "is not a time step"),
    Cli("times-beyond-end", "times", _s("model.observation_times=[0.2]"), "is not a time step"),
    Cli("times-zero", "times", _s("model.observation_times=[0.0]"), "is not a time step"),
    Cli("times-empty", "times", _s("model.observation_times=[]"), "no observation times"),
    Cli("times-strings", "times", _s("model.observation_times=[\"a\"]"), "expected a list of finite numbers"),
    Cli("times-nan", "times", _s("model.observation_times=[nan]"), "expected a list of finite numbers"),
    Cli("times-nested", "times", _s("model.observation_times=[[0.02]]"), "expected a list of finite numbers"),
    Cli("times-deeply-nested", "times", _s("model.observation_times=" + "[" * 3000 + "]" * 3000), "nested"),
    # -- size (item 8) -----------------------------------------------------------------------------------
    Cli("mesh-n-4000", "size", _s("mesh.n=4000"), "estimated peak memory"),
    Cli("mesh-n-int-max", "size", _s("mesh.n=2147483647"), "reduce mesh.n"),
    Cli("mesh-n-beyond-int64", "size", _s("mesh.n=99999999999999999999"), "mesh.n"),
    Cli("steps-1e21", "size", _s("model.steps=1000000000000000000000"), "model.steps"),
    Cli("steps-1e9", "size", _s("model.steps=1000000000"), "model.steps"),
    Cli("max-memory-small", "size", ("--max-memory", "100M"), "exceeds the 100 MB allowed"),
    Cli("max-memory-garbage", "size", ("--max-memory", "5X"), "--max-memory '5X'"),
    Cli("max-memory-negative", "size", ("--max-memory=-3G",), "--max-memory"),
    Cli("max-hours-zero", "size", ("--max-hours", "0"), "--max-hours"),
    Cli("max-hours-tiny", "size", ("--max-hours", "1e-12"), "one forward solve is estimated"),
    Cli("tomography-size", "size", _s("mesh.n=3001"), "estimated peak memory", config="cases/tomography/config.toml",
        tiny=False),
    Cli("poisson-size", "size", _s("mesh.n=5000"), "estimated peak memory", config="cases/poisson/config.toml",
        tiny=False),
    # -- configuration files -----------------------------------------------------------------------------
    Cli("config-missing", "config-file", (), "does not exist", config="{dir}/none.toml", tiny=False),
    Cli("config-is-directory", "config-file", (), "not a regular file", config="{dir}", tiny=False),
    Cli("config-malformed", "config-file", (), "config file", config="{config}", tiny=False,
        make=_config("[case]\nname = \"heat\"\n[mesh\nn = 3\n")),
    Cli("config-binary", "config-file", (), "config file", config="{config}", tiny=False,
        make=_config_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")),
    Cli("config-latin1", "config-file", (), "config file", config="{config}", tiny=False,
        make=_config_bytes(b"[case]\nname = \"heat\" # caf\xe9\n")),
    Cli("config-deeply-nested", "config-file", (), "nested too deeply", config="{config}", tiny=False,
        make=_config("[case]\nname = \"heat\"\n[model]\nobservation_times = " + "[" * 100000 + "]" * 100000)),
    Cli("config-huge", "config-file", (), "more than a configuration holds", config="{config}", tiny=False,
        make=_config("[case]\nname = \"heat\"\n[model]\nobservation_times = [" + "0.01," * 400000 + "0.01]\n")),
    Cli("config-no-case", "config-file", (), "[case] name must be one of", config="{config}", tiny=False,
        make=_config("[mesh]\nn = 8\n")),
    Cli("config-unknown-case", "config-file", (), "[case] name must be one of", config="{config}", tiny=False,
        make=_config("[case]\nname = \"os\"\n")),
    Cli("config-case-not-a-table", "config-file", (), "[case] name must be one of", config="{config}", tiny=False,
        make=_config("case = \"heat\"\n")),
    Cli("config-module-path", "config-file", (), "[case] name must be one of", config="{config}", tiny=False,
        make=_config("[case]\nname = \"../../os\"\n")),
    Cli("config-unknown-key", "config-file", (), "unknown key", config="{config}", tiny=False,
        make=_config("[case]\nname = \"heat\"\n[mesh]\nsize = 3\n")),
    Cli("config-duplicate-key", "config-file", (), "config file", config="{config}", tiny=False,
        make=_config("[case]\nname = \"heat\"\n[mesh]\nn = 3\nn = 4\n")),
    Cli("config-fifo", "config-file", (), "config file", config="{file}", tiny=False, make=_fifo("c.toml")),
    Cli("config-symlink-loop", "config-file", (), "config file", config="{file}", tiny=False,
        make=_link_loop("c.toml")),
    # -- results directory (item 1) -------------------------------------------------------------------------
    Cli("out-unwritable", "results", (), "cannot create it", out="/proc/pdeinv-results"),
    Cli("out-root", "results", (), "--out", out="/"),
    Cli("out-cwd", "results", (), "--out", out="."),
    Cli("out-parent", "results", (), "--out", out=".."),
    Cli("out-home", "results", (), "--out", out="~"),
    Cli("out-is-a-file", "results", (), "--out", out="{victim}"),
    Cli("out-users-files-resume", "results", ("--resume",), "--resume", out="{mine}", make=_user_dir),
    Cli("out-users-files-overwrite", "results", ("--overwrite",), "not a pdeinv results directory", out="{mine}",
        make=_user_dir),
    Cli("out-users-files", "results", (), "not a pdeinv results directory", out="{mine}", make=_user_dir),
    Cli("resume-nothing", "results", ("--resume",), "--resume: no checkpoint"),
    Cli("resume-and-overwrite", "results", ("--resume", "--overwrite"), "--resume"),
    # -- data and mesh files from the configuration (item 11) ------------------------------------------------
    Cli("data-missing", "data", _s("data.file=\"{dir}/none.csv\""), "no such file"),
    Cli("data-format", "data", _s("data.file=\"cases/heat/config.toml\""), "unknown data format '.toml'"),
    Cli("data-off-grid-times", "data", _s("data.file=\"cases/heat/data/sensors.csv\""), "is not a time step"),
    Cli("data-directory", "data", _s("data.file=\"{file}\""), "data.file", make=_dir("d.csv")),
    Cli("data-fifo", "data", _s("data.file=\"{file}\""), "data.file", make=_fifo("d.csv")),
    Cli("data-pickled-h5", "data", _s("data.file=\"{file}\""), "data.file", make=_pickled_h5()),
    Cli("data-duplicate-times", "data", _s("data.file=\"{file}\""), "strictly increasing",
        make=_npz(points=[[0.3, 0.4]], times=[0.02, 0.02], values=[[1.0, 2.0]])),
    Cli("mesh-missing", "data", _s("mesh.file=\"{dir}/none.msh\""), "no such file"),
    Cli("mesh-csv", "data", _s("mesh.file=\"cases/heat/data/sensors.csv\""), "expected a Gmsh .msh file"),
    Cli("mesh-garbage-msh", "data", _s("mesh.file=\"{file}\""), "mesh.file",
        make=_text("m.msh", "this is not a mesh\n" * 10)),
    Cli("mesh-bad-version", "data", _s("mesh.file=\"{file}\""), "mesh.file",
        make=_text("m.msh", "$MeshFormat\nfour 0 8\n$EndMeshFormat\n$Nodes\n3\n")),
    Cli("mesh-empty-format", "data", _s("mesh.file=\"{file}\""), "mesh.file", make=_text("m.msh", "$MeshFormat\n")),
    Cli("mesh-not-checkpoint-h5", "data", _s("mesh.file=\"{file}\""), "mesh.file", make=_h5("m.h5", a=[1.0])),
    Cli("mesh-pickled-h5", "data", _s("mesh.file=\"{file}\""), "pickle", make=_pickled_h5()),
    Cli("mesh-rank-exceeds", "data", _s("mesh.file=\"cases/heat/data/domain.msh\"", "laplace.rank=700"),
        "exceeds the 651 parameter dofs"),
    # -- other cases -----------------------------------------------------------------------------------------
    Cli("tomography-detectors-on-vertices", "config", _s("mesh.n=8", "model.detectors_per_side=7"),
        "puts detectors on vertices", config="cases/tomography/config.toml", tiny=False),
    Cli("tomography-ensemble-too-big", "config", _s("parallel.ensemble=20"), "parallel.ensemble",
        config="cases/tomography/config.toml", tiny=False),
    Cli("tomography-noise-unknown", "config", _s("data.noise=\"laplace\""), "data.noise",
        config="cases/tomography/config.toml", tiny=False),
    Cli("tomography-degree-negative", "config", _s("model.degree=-1"), "model.degree",
        config="cases/tomography/config.toml", tiny=False),
    Cli("poisson-degree-zero", "config", _s("model.degree=0"), "model.degree must be >= 1",
        config="cases/poisson/config.toml", tiny=False),
    Cli("learn-method-unknown", "config", _s("learn.method=\"magic\""), "learn.method",
        config="cases/learn_regularization/config.toml", tiny=False),
    Cli("learn-grid-unsorted", "config", _s("classical.grid=[1.0, 0.0, 2.0]"), "classical.grid",
        config="cases/learn_regularization/config.toml", tiny=False),
    Cli("learn-times-off-grid", "config", _s("model.observation_times=[0.0111]"), "observation",
        config="cases/learn_regularization/config.toml", tiny=False),
    Cli("learn-size", "size", _s("mesh.n=6000"), "estimated peak memory",
        config="cases/learn_regularization/config.toml", tiny=False),
]

READERS = [
    Reader("csv-good", "data", _text("d.csv", GOOD), ok=True),
    Reader("csv-bom", "data", _text("d.csv", "\ufeff" + GOOD), ok=True),
    Reader("csv-crlf", "data", _text("d.csv", GOOD.replace("\n", "\r\n")), ok=True),
    Reader("csv-latin1-comment", "data", _text("d.csv", b"# caf\xe9\n" + GOOD.encode(), binary=True), ok=True),
    Reader("csv-latin1-data", "data", _text("d.csv", GOOD.encode() + b"0.1,0.2,0.02,1\xe9\n", binary=True),
           fragment="not UTF-8"),
    Reader("csv-empty", "data", _text("d.csv", ""), fragment="header"),
    Reader("csv-header-only", "data", _text("d.csv", "x,y,t,value\n"), fragment="header"),
    Reader("csv-missing-column", "data", _text("d.csv", "x,t,value\n0.1,0.02,1\n"), fragment="missing column"),
    Reader("csv-unknown-column", "data", _text("d.csv", "x,y,t,value,w\n0.1,0.2,0.02,1,3\n"),
           fragment="unknown column"),
    Reader("csv-short-row", "data", _text("d.csv", "x,y,t,value\n0.1,0.2,0.02\n"), fragment="line 2"),
    Reader("csv-long-row", "data", _text("d.csv", "x,y,t,value\n0.1,0.2,0.02,1,2\n"), fragment="line 2"),
    Reader("csv-not-a-number", "data", _text("d.csv", "x,y,t,value\n0.1,0.2,0.02,high\n"), fragment="line 2"),
    Reader("csv-nan-value", "data", _text("d.csv", "x,y,t,value\n0.1,0.2,0.02,nan\n"), fragment="finite"),
    Reader("csv-inf-sigma", "data", _text("d.csv", "x,y,t,value,sigma\n0.1,0.2,0.02,1,inf\n"), fragment="sigma"),
    Reader("csv-zero-sigma", "data", _text("d.csv", "x,y,t,value,sigma\n0.1,0.2,0.02,1,0\n"), fragment="sigma"),
    Reader("csv-negative-sigma", "data", _text("d.csv", "x,y,t,value,sigma\n0.1,0.2,0.02,1,-1\n"), fragment="sigma"),
    Reader("csv-duplicate-row", "data", _text("d.csv", "x,y,t,value\n0.1,0.2,0.02,1\n0.1,0.2,0.02,2\n"),
           fragment="observed twice"),
    Reader("csv-missing-time", "data", _text("d.csv", "x,y,t,value\n0.1,0.2,0.02,1\n0.3,0.2,0.05,2\n"),
           fragment="no observation"),
    Reader("csv-semicolons", "data", _text("d.csv", "x;y;t;value\n0.1;0.2;0.02;1\n"), fragment="missing column"),
    Reader("csv-truncated", "data", _text("d.csv", GOOD[:-9]), fragment="line"),
    Reader("csv-nul-bytes", "data", _text("d.csv", b"x,y,t,value\n\x00\x00\x00\n", binary=True), fragment="line"),
    Reader("csv-binary", "data", _text("d.csv", bytes(range(256)) * 4, binary=True), fragment=""),
    Reader("csv-3GB-sparse", "data", _sparse("d.csv", 3 * 1024 ** 3), fragment="MB"),
    Reader("csv-directory", "data", _dir("d.csv"), fragment="no such file"),
    Reader("csv-fifo", "data", _fifo("d.csv"), fragment="no such file"),
    Reader("csv-symlink-loop", "data", _link_loop("d.csv"), fragment="no such file"),
    Reader("csv-3d-points-in-2d", "data", _text("d.csv", "x,y,z,t,value\n0.1,0.2,0.3,0.02,1\n"),
           fragment="unknown column"),
    Reader("csv-one-long-line", "data", _text("d.csv", "x,y,t,value\n" + "1," * 100000 + "1\n"), fragment="line 2"),
    Reader("unknown-extension", "data", _text("d.txt", GOOD), fragment="unknown data format"),
    Reader("npz-good", "data", _npz(points=[[0.3, 0.4]], times=[0.02], values=[[1.0]]), ok=True),
    Reader("npz-empty-file", "data", _text("d.npz", ""), fragment="not a readable NPZ"),
    Reader("npz-truncated", "data", _text("d.npz", b"PK\x03\x04\x14\x00\x00", binary=True),
           fragment="not a readable NPZ"),
    Reader("npz-text", "data", _text("d.npz", GOOD), fragment="not a readable NPZ"),
    Reader("npz-missing-values", "data", _npz(points=[[0.3, 0.4]]), fragment="missing array 'values'"),
    Reader("npz-object-array", "data", lambda tmp: _object_npz(tmp), fragment="NPZ"),
    Reader("npz-string-values", "data", _npz(points=[[0.3, 0.4]], values=["a"]), fragment="numbers"),
    Reader("npz-wrong-shape", "data", _npz(points=[[0.3, 0.4]], times=[0.02, 0.05], values=[[1.0]]),
           fragment="shape"),
    Reader("npz-points-3d", "data", _npz(points=[[0.3, 0.4, 0.1]], values=[1.0]), fragment="shape"),
    Reader("npz-no-points", "data", _npz(points=[], values=[]),
           fragment="points"),
    Reader("npz-times-unsorted", "data", _npz(points=[[0.3, 0.4]], times=[0.05, 0.02], values=[[1.0, 2.0]]),
           fragment="strictly increasing"),
    Reader("npz-sigma-bad-shape", "data", _npz(points=[[0.3, 0.4]], values=[1.0], sigma=[1.0, 2.0, 3.0]),
           fragment="sigma"),
    Reader("npz-points-duplicate", "data", _npz(points=[[0.3, 0.4], [0.3, 0.4]], values=[1.0, 2.0]),
           fragment="distinct"),
    Reader("npz-inf-points", "data", _npz(points=[[float("inf"), 0.4]], values=[1.0]), fragment="finite"),
    Reader("npz-complex-values", "data", _npz(points=[[0.3, 0.4]], values=[1 + 2j]), fragment="numbers"),
    Reader("h5-good", "data", _h5(points=[[0.3, 0.4]], values=[1.0]), ok=True),
    Reader("h5-not-hdf5", "data", _text("d.h5", GOOD), fragment="not a readable HDF5"),
    Reader("h5-empty", "data", _text("d.h5", ""), fragment="not a readable HDF5"),
    Reader("h5-missing-points", "data", _h5(values=[1.0]), fragment="missing array 'points'"),
    Reader("h5-pickled-attribute", "data", _pickled_h5(), fragment=""),
    Reader("mesh-good-msh", "data", lambda tmp: {"file": "cases/heat/data/domain.msh"}, kind="mesh", ok=True),
    Reader("mesh-empty-msh", "data", _text("m.msh", ""), kind="mesh", fragment="not a Gmsh"),
    Reader("mesh-garbage-msh", "data", _text("m.msh", bytes(range(256)) * 8, binary=True), kind="mesh",
           fragment="Gmsh"),
    Reader("mesh-format-garbage", "data", _text("m.msh", "$MeshFormat\nabc 0 8\n$Nodes\n4\n"), kind="mesh",
           fragment="Gmsh"),
    Reader("mesh-format-empty-line", "data", _text("m.msh", "$MeshFormat\n\n$Nodes\n4\n"), kind="mesh",
           fragment="Gmsh"),
    Reader("mesh-nodes-without-format", "data", _text("m.msh", "$Nodes\n4\n"), kind="mesh", fragment="Gmsh"),
    Reader("mesh-nodes-garbage", "data", _text("m.msh", "$MeshFormat\n4.1 0 8\n$EndMeshFormat\n$Nodes\nx y\n"),
           kind="mesh", fragment="Gmsh"),
    Reader("mesh-nodes-negative", "data", _text("m.msh", "$MeshFormat\n2.2 0 8\n$EndMeshFormat\n$Nodes\n-4\n"),
           kind="mesh", fragment="Gmsh"),
    Reader("mesh-h5-not-hdf5", "data", _text("m.h5", "hello"), kind="mesh", fragment="HDF5"),
    Reader("mesh-h5-pickle", "data", _pickled_h5(), kind="mesh", fragment="pickle"),
    Reader("mesh-unknown-extension", "data", _text("m.vtu", "<VTKFile/>"), kind="mesh", fragment="mesh format"),
    Reader("mesh-directory", "data", _dir("m.msh"), kind="mesh", fragment="no such file"),
    Reader("mesh-missing", "data", lambda tmp: {"file": os.path.join(tmp, "none.msh")}, kind="mesh",
           fragment="no such file"),
    Reader("mesh-h5-not-checkpoint", "data", _h5("m.h5", a=[1.0]), kind="mesh", fragment="CheckpointFile"),
    Reader("mesh-h5-empty", "data", _text("m.h5", ""), kind="mesh", fragment="HDF5"),
]


def _object_npz(tmp):
    import numpy as np

    p = os.path.join(tmp, "d.npz")
    np.savez(p, points=np.array([[0.3, 0.4]]), values=np.array([object()], dtype=object))
    return {"file": p}


ROWS = CLI + READERS


def _subst(text, paths):
    for k, v in paths.items():
        text = text.replace("{" + k + "}", v)
    return os.path.expanduser(text) if text == "~" else text


def _cli_outcome(row: Cli, tmp: str) -> str:
    victim = os.path.join(tmp, "precious.txt")
    with open(victim, "w") as fh:
        fh.write("keep")
    paths = {"dir": tmp, "victim": victim, "marker": os.path.join(tmp, "pwned")}
    if row.make is not None:
        paths |= row.make(tmp)
    before = _snapshot(tmp)
    out = _subst(row.out, paths)
    existed = os.path.exists(out)
    config = _subst(row.config, paths)
    args = [_subst(a, paths) for a in row.args]
    tiny = [a for s in TINY for a in ("--set", s)] if row.tiny else []
    cmd = [sys.executable, "-m", "pdeinv", "run", config, "--quiet", "--out", out, *tiny, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "hang"
    return _judge(row, p, tmp, before, out, existed)


def _judge(row, p, tmp, before, out, existed):
    if os.path.exists(os.path.join(tmp, "pwned")):
        return "code executed"
    after = _snapshot(tmp)
    lost = [f for f, h in before.items() if after.get(f) != h]
    if lost:
        return f"data lost: {lost[:3]}"
    if "Traceback" in p.stderr or "Traceback" in p.stdout:
        return "traceback: " + p.stderr.strip().splitlines()[-1][:200]
    if p.returncode != row.status:
        return f"badly: exit {p.returncode}, expected {row.status}: {p.stderr.strip()[-300:]}"
    if row.status == EXIT_CONFIG:
        lines = p.stderr.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("pdeinv: configuration error: "):
            return f"badly: {len(lines)} lines: {p.stderr[-300:]}"
        if row.fragment not in lines[0]:
            return f"badly: {row.fragment!r} not in {lines[0][:300]!r}"
        if out.startswith(tmp) and os.path.exists(out) and not existed:
            return f"badly: {out} created by a refused run"
    return "well"


def _snapshot(tmp):
    """{path: content hash} of the regular files under ``tmp`` (the user's files)."""
    import hashlib

    found = {}
    for d, dirs, files in os.walk(tmp):
        dirs[:] = [x for x in dirs if x != "out"]
        for f in files:
            path = os.path.join(d, f)
            if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) < 2 ** 24:
                with open(path, "rb") as fh:
                    found[path] = hashlib.sha256(fh.read()).hexdigest()
    return found


def _reader_outcome(row: Reader, tmp: str) -> str:
    from pdeinv.data import DataFileError, check_mesh_file, msh_vertex_count, read_observed_data

    path = row.make(tmp)["file"]
    t0 = time.perf_counter()
    try:
        if row.kind == "mesh":
            path_, ext = check_mesh_file(path)
            if ext == ".msh":
                msh_vertex_count(path_)
        else:
            read_observed_data(path)
    except DataFileError as e:
        if os.path.exists(os.path.join(tmp, "pwned")):
            return "code executed"
        if row.ok:
            return f"badly: refused a good file: {e}"
        if not str(e).startswith(f"{path}:"):
            return f"badly: message does not name the file: {e}"
        if row.fragment not in str(e):
            return f"badly: {row.fragment!r} not in {str(e)[:300]!r}"
        return "well" if time.perf_counter() - t0 < 30 else "hang"
    except Exception as e:  # anything else reaches the user as a traceback
        return f"traceback: {type(e).__name__}: {str(e)[:200]}"
    if os.path.exists(os.path.join(tmp, "pwned")):
        return "code executed"
    return "well" if row.ok else "badly: accepted a bad file"


def outcome(row, tmp: str) -> str:
    """What happened when ``row`` was run in the empty directory ``tmp`` (see the module docstring)."""
    return _cli_outcome(row, tmp) if isinstance(row, Cli) else _reader_outcome(row, tmp)
