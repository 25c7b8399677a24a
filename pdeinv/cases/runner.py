"""The common driver of every case: configuration → data → MAP (Newton–CG) → Laplace → outputs.

Before anything is written or solved, :func:`main` checks the whole run (:func:`preflight`): every
configuration value, the PETSc options (:func:`pdeinv._petsc.unused_solver_options`), data files, the
results directory and, for ``--resume``, the checkpoint and its configuration.  Any problem is one line on
stderr and exit status 2.

Phases, each timed and logged on rank 0: setup, data, map, laplace, output.  The optimizer's state is
checkpointed after every Newton iteration (``DIR/checkpoint/``: the iterate in an HDF5 file and the
state in ``state.json``, the JSON written last, both via temporary names, so the JSON always points at
a complete iterate; ``config.json`` holds the configuration and its hash).  ``--resume`` continues from it
and reproduces the uninterrupted run; it is refused if the configuration changed in a way that changes
the result (only the keys in :data:`RESUMABLE_KEYS` may change).

Signals (see :mod:`pdeinv.cases.signals`): SIGTERM or SIGINT, to ``mpiexec`` or to the ranks, end every
rank at once with status 75, the checkpoint of the last completed iteration in place; SIGUSR1 stops after
the current iteration with a fresh checkpoint (status 75 too).

Results directory (:mod:`pdeinv.cases.results_dir`): a fresh run refuses a directory that holds another
run's results or checkpoint unless ``--overwrite``, and a non-empty directory without pdeinv's manifest
always; ``--out`` may not be ``/``, the working or the home directory or an ancestor of either.  pdeinv
removes only the entries its manifest records (never the user's files beside them, never another run's
directory below), and only after the new run's setup succeeded: until then the earlier entries are moved
aside, and a setup that fails puts them back.

Ensembles: a case whose module defines ``n_experiments(cfg)`` takes ``parallel.ensemble = P``: the
experiments are split over P ``firedrake.Ensemble`` members (``COMM_WORLD.size / P`` ranks each), the
misfit summed in :class:`pdeinv.ensemble.EnsembleMisfit`; the optimizer and the Laplace approximation
run on every member alike, and member 0 alone writes the checkpoint and the results.

Exit statuses: 0 success, 2 configuration error (before any solve, nothing written), 75 interrupted
(EX_TEMPFAIL: run again with ``--resume``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from pdeinv.cases import results_dir
from pdeinv.cases.results_dir import MARKER  # the manifest, written first into every results directory
from pdeinv.cases.signals import EXIT_INTERRUPTED, StopRequest, exit_on_signals

EXIT_CONFIG = 2
CASES = ("heat", "tomography", "poisson", "learn_regularization")
EXACT_VARIANCE_DOFS = 5000  # below this many parameter dofs the prior variance is computed exactly
# Settings a resumed run may change: they act only after the checkpointed Newton iterations (the
# Laplace phase is recomputed in full on resume) or only say where to stop.  Everything else changes
# the iterates, so a changed value is refused.
RESUMABLE_KEYS = ("optimizer.max_iterations", "laplace.rank", "laplace.oversampling", "laplace.prior_variance",
                  "laplace.variance_samples", "laplace.posterior_samples")

__all__ = ["main", "run", "preflight", "run_status", "EXIT_CONFIG", "EXIT_INTERRUPTED", "CASES", "RESUMABLE_KEYS"]


class Interrupted(Exception):
    """A stop was requested (SIGUSR1); the checkpoint has been written."""


def _parser(prog, case=None):
    p = argparse.ArgumentParser(prog=prog, description="Run a pdeinv case (see cases/<name>/README.md).")
    if case is None:
        p.add_argument("config", help="a case's config.toml (its [case] name = ... picks the case)")
    else:
        p.add_argument("--config", help="TOML file overriding the defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set mesh.n=16 (repeatable)")
    p.add_argument("--out", help="results directory (default results/<case>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the results directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --out (deleted first)")
    p.add_argument("--quiet", action="store_true", help="only the final line")
    p.add_argument("--allow-code-options", action="store_true",
                   help="accept PETSc options in model.solver that import code (pc_python_type, ...)")
    p.add_argument("--sigterm-after", type=int, metavar="K",
                   help="send this process SIGTERM after Newton iteration K's checkpoint (tests the batch-job path)")
    return p


def _case_name_from_file(path):
    import tomllib

    from pdeinv.cases.config import ConfigError

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (FileNotFoundError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    name = data.get("case", {}).get("name") if isinstance(data.get("case"), dict) else None
    if name not in CASES:
        raise ConfigError(f"config file {path}: [case] name must be one of {CASES}, got {name!r}")
    return name


def _contents(out):
    return sorted(os.listdir(out)) if os.path.isdir(out) else []


def _has_results(out) -> bool:
    return os.path.exists(os.path.join(out, "summary.json")) or \
        os.path.exists(os.path.join(out, "checkpoint", "state.json"))


def _check_output(out, *, resume, overwrite) -> bool:
    """Check the results directory; returns whether a fresh run must first clear it."""
    from pdeinv.cases.config import ConfigError

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if resume:
        state = os.path.join(out, "checkpoint", "state.json")
        if not os.path.exists(state):
            raise ConfigError(f"--resume: no checkpoint in {out} ({state} missing); run without --resume to start")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {out}: not writable")
        return False
    results_dir.check_location(out)
    # the nearest existing ancestor decides whether the directory can be made at all
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    try:  # os.access is no proof (root, read-only or virtual file systems): try it
        os.rmdir(tempfile.mkdtemp(prefix=".pdeinv-probe-", dir=probe))
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create it ({probe}: {e.strerror})") from None
    entries = _contents(out)
    if not entries:
        return False
    if MARKER not in entries:
        raise ConfigError(f"--out {out}: exists and is not empty, and is not a pdeinv results directory (no {MARKER}); "
                          "choose another --out (pdeinv never deletes what it did not write)")
    if _has_results(out) and not overwrite:
        shown = ", ".join(e for e in entries if e != MARKER)
        raise ConfigError(f"--out {out}: holds an earlier run ({shown}); pass --overwrite to replace it, --resume "
                          "to continue it, or choose another --out")
    return True  # an earlier pdeinv run (or a start stopped before its first checkpoint): cleared first


def _check_resume_config(name, cfg, out):
    from pdeinv.cases.config import ConfigError, differences

    path = os.path.join(out, "checkpoint", "config.json")
    try:
        with open(path) as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        raise ConfigError(f"--resume: {path} is missing or unreadable; the checkpoint cannot be matched to a "
                          "configuration (start afresh with --overwrite)") from None
    if saved.get("case") != name:
        raise ConfigError(f"--resume: the checkpoint in {out} is of case {saved.get('case')!r}, not {name!r}")
    changed = {k: v for k, v in differences(saved["config"], cfg).items() if k not in RESUMABLE_KEYS}
    if changed:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"--resume: the configuration differs from the checkpoint's in {listed}; these change "
                          f"the result (only {', '.join(RESUMABLE_KEYS)} may change on resume): rerun with the "
                          "checkpoint's settings, or start afresh with --overwrite")


def _check_checkpoint_files(out):
    """The checkpoint's HDF5 files hold no pickle that would run code when Firedrake opens them (a file
    swapped in since the run wrote it): one ConfigError."""
    from pdeinv.cases.config import ConfigError
    from pdeinv.data import DataFileError, check_no_code

    ckdir = os.path.join(out, "checkpoint")
    for f in sorted(os.listdir(ckdir)):
        if f.endswith(".h5"):
            try:
                check_no_code(os.path.join(ckdir, f))
            except DataFileError as e:
                raise ConfigError(f"--resume: {e}") from None


def preflight(name, module, cfg, out, *, resume=False, overwrite=False, ranks: int = 1,
              allow_code: bool = False) -> bool:
    """Every check that needs no mesh and no solve: the results directory, ``--resume`` against the
    checkpoint, PETSc options, data files, sizes, the ensemble against the ``ranks`` of the run.
    Raises ConfigError; returns whether the results directory must be cleared first.  Call on one rank
    (file-system checks) — :func:`main` does."""
    from pdeinv._petsc import unused_solver_options
    from pdeinv.cases.config import ConfigError

    members = _members(cfg)
    if ranks % members:
        raise ConfigError(f"parallel.ensemble = {members} members cannot share {ranks} MPI rank(s) equally; run on a "
                          f"multiple of {members} ranks (members x ranks per member)")
    clear = _check_output(out, resume=resume, overwrite=overwrite)
    if resume:
        _check_resume_config(name, cfg, out)
        _check_checkpoint_files(out)
    solver = cfg.get("model", {}).get("solver")
    if isinstance(solver, str):
        from pdeinv.cases.common import solver_parameters

        solver = solver_parameters(solver, symmetric=getattr(module, "SYMMETRIC", True))
    if solver:
        try:
            unused = unused_solver_options(solver, name="model.solver", allow_code=allow_code)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if unused:
            raise ConfigError(f"model.solver: unknown PETSc option(s) {unused} (not read by a KSP/PC; options "
                              "are written without the leading '-', e.g. ksp_type = \"cg\")")
    if hasattr(module, "check_files"):
        module.check_files(cfg)  # data files: read and checked now, not after setup
    dofs = module.parameter_dofs(cfg) if hasattr(module, "parameter_dofs") else None
    if dofs is not None and "laplace" in cfg:
        _check_rank(cfg, dofs)
    return clear


def _members(cfg) -> int:
    return cfg.get("parallel", {}).get("ensemble", 1)


def _check_rank(cfg, dofs):
    from pdeinv.cases.config import ConfigError

    k, p = cfg["laplace"]["rank"], cfg["laplace"]["oversampling"]
    if k + p > dofs:
        raise ConfigError(f"laplace.rank + laplace.oversampling = {k} + {p} exceeds the {dofs} parameter dofs; "
                          f"expected at most {dofs}")


EXIT_RUNNING = 3


def run_status(out) -> tuple[int, str]:
    """(status, explanation) of the run in ``out``: 0 complete, 75 interrupted and resumable, 3 running
    (another process holds the directory's lock), 1 failed (with the recorded reason) or nothing there.
    What a job script asks after ``mpiexec`` (whose own exit status after a signal depends on the MPI):
    it resubmits on 75 only."""
    holder = results_dir.RunLock(out).holder() if os.path.isdir(out) else None
    if holder is not None:
        return EXIT_RUNNING, f"{out}: running ({holder})"
    if os.path.exists(os.path.join(out, "summary.json")):
        return 0, f"{out}: complete (summary.json)"
    failed = os.path.join(out, "checkpoint", results_dir.FAILED)
    if os.path.exists(failed):
        try:
            with open(failed) as fh:
                reason = json.load(fh)["reason"]
        except (OSError, ValueError, KeyError, TypeError):
            reason = "reason unreadable"
        return 1, (f"{out}: failed ({reason}); not resumed automatically — fix the cause, then rerun with "
                   "--resume by hand")
    state = os.path.join(out, "checkpoint", "state.json")
    if os.path.exists(state):
        try:
            with open(state) as fh:
                k = json.load(fh)["state"].get("iteration")
        except (OSError, ValueError, KeyError, AttributeError):
            k = "?"
        ckdir = os.path.dirname(state)
        ranks = sorted(int(f.rsplit("-", 1)[1]) for f in os.listdir(ckdir) if f.startswith("stopped.rank-"))
        how = f" (stopped by a signal on rank(s) {', '.join(map(str, ranks))})" if ranks else ""
        return EXIT_INTERRUPTED, f"{out}: interrupted{how}, resumable from Newton iteration {k} (rerun with --resume)"
    return 1, f"{out}: no results and no checkpoint"


def _on_rank0(comm, fn):
    """Run ``fn`` on rank 0; every rank gets its result or raises its ConfigError (one message)."""
    from pdeinv.cases.config import ConfigError

    result, error = None, None
    if comm.rank == 0:
        try:
            result = fn()
        except ConfigError as e:
            error = str(e)
    result, error = comm.bcast((result, error), root=0)
    if error is not None:
        raise ConfigError(error)
    return result


def main(argv=None, *, case: str | None = None) -> int:
    """Entry point of ``pdeinv run CONFIG`` (``case=None``) and of ``cases/<case>/run.py``."""
    from mpi4py import MPI

    from pdeinv._petsc import init_petsc
    from pdeinv.cases.config import ConfigError, load_config

    comm = MPI.COMM_WORLD  # a command-line run owns the whole MPI job
    args = _parser("pdeinv run" if case is None else f"cases/{case}/run.py", case).parse_args(argv)
    existed, out = False, None
    lock = None
    try:
        name = case or _case_name_from_file(args.config)
        module = importlib.import_module(f"pdeinv.cases.{name}")
        cfg = load_config(module.DEFAULTS, args.config, args.set)
        module.validate(cfg)
        out = args.out or os.path.join("results", name)
        init_petsc()  # petsc4py only (no Firedrake yet): for the options check
        existed = os.path.isdir(out)
        _on_rank0(comm, lambda: _refuse_if_locked(out))
        clear = _on_rank0(comm, lambda: preflight(name, module, cfg, out, resume=args.resume,
                                                  overwrite=args.overwrite, ranks=comm.size,
                                                  allow_code=args.allow_code_options))
        held = []  # rank 0's lock stays on rank 0 (an open file descriptor cannot be broadcast)
        _on_rank0(comm, lambda: held.append(_lock(out)))
        lock = held[0] if held else None
        if hasattr(module, "run_case"):  # a case with its own driver (bilevel learning)
            _run_own_driver(module, cfg, out, clear, comm, quiet=args.quiet)
            return 0

        with exit_on_signals((signal.SIGTERM, signal.SIGINT)) as on_signal:
            try:
                run(name, cfg, out, resume=args.resume, quiet=args.quiet, clear=clear, exit_message=on_signal,
                    sigterm_after=args.sigterm_after, checked=True)
            except (ConfigError, Interrupted):
                raise
            except Exception as e:  # what `pdeinv status` reports, so a job script does not resubmit it
                if comm.rank == 0:
                    results_dir.record_failure(out, f"{type(e).__name__}: {e}")
                raise
    except ConfigError as e:
        if comm.rank == 0:
            sys.stderr.write(f"pdeinv: configuration error: {e}\n")
            if lock is not None:
                lock.release()
                lock = None
            if out is not None and not existed and os.path.isdir(out) and \
                    set(_contents(out)) <= {MARKER, results_dir.LOCK}:
                shutil.rmtree(out, ignore_errors=True)  # a directory this run made and left empty
        return EXIT_CONFIG
    except Interrupted:
        return EXIT_INTERRUPTED
    finally:
        if lock is not None:
            lock.release()
    return 0


def _run_own_driver(module, cfg, out, clear, comm, *, quiet):
    """A case with its own ``run_case``: the same results-directory rules (earlier entries set aside until it
    succeeds, its new entries recorded in the manifest)."""
    aside = _prepare_fresh(out, clear, comm)
    before = _contents(out)
    try:
        module.run_case(cfg, out, quiet=quiet)
    except BaseException:
        _setup_failed(out, aside, comm)
        raise
    if comm.rank == 0:
        results_dir.discard(aside)
        results_dir.record(out, set(_contents(out)) - set(before))


def _refuse_if_locked(out):
    """One ConfigError naming the holder when another run holds ``out`` (before any other check)."""
    from pdeinv.cases.config import ConfigError

    holder = results_dir.RunLock(out).holder() if os.path.isdir(out) else None
    if holder is not None:
        raise ConfigError(f"--out {out}: another pdeinv run is using it ({holder}); wait for it, or choose "
                          "another --out")


def _lock(out):
    """Rank 0: make ``out`` and take its run lock (held until the run ends)."""
    os.makedirs(out, exist_ok=True)
    lock = results_dir.RunLock(out)
    lock.acquire()
    return lock


def _prepare_fresh(out, clear, comm, *, name=None, cfg=None, mesh_name=None):
    """Rank 0: move an earlier pdeinv run's entries aside if asked (:func:`results_dir.set_aside`; deleted
    once setup succeeded), make the directories, write the manifest (first) and the configuration the
    checkpoint belongs to.  Returns the set-aside directory (rank 0; None elsewhere)."""
    from pdeinv.cases.config import config_hash
    from pdeinv.cases.output import atomic_json

    aside = None
    if comm.rank == 0:
        os.makedirs(out, exist_ok=True)
        if clear:
            aside = results_dir.set_aside(out)
        results_dir.record(out, ["checkpoint"] if cfg is not None else [])
        if cfg is not None:
            os.makedirs(os.path.join(out, "checkpoint"), exist_ok=True)
    comm.barrier()
    if cfg is not None:
        atomic_json(os.path.join(out, "checkpoint", "config.json"),
                    {"case": name, "config": cfg, "config_hash": config_hash(cfg), "mesh_name": mesh_name}, comm)
    return aside


def _setup_failed(out, aside, comm):
    """Rank 0: a fresh run failed before it could replace the earlier one: remove what it wrote (its
    manifest's entries only) and put the earlier run back."""
    if comm.rank == 0:
        results_dir.remove_own(out)
        results_dir.restore(out, aside)


def _solver_record(module, cfg, model) -> dict:
    """What ``model.solver`` resolved to: the PETSc options of the state solves on this run's ranks."""
    from pdeinv.cases.common import solver_parameters
    from pdeinv.forward._linear import default_solver_parameters

    setting = cfg["model"].get("solver", {})
    symmetric = getattr(module, "SYMMETRIC", True)
    params = solver_parameters(setting, symmetric=symmetric)
    if params is None:
        params = default_solver_parameters(model.state_space.mesh().comm, symmetric=symmetric, space=model.state_space)
    return {"setting": setting or "direct", "petsc_options": params}


def _signal_message(comm, text):
    return f"pdeinv: {text}\n" if comm.rank == 0 else ""


def run(name: str, cfg: dict, out: str, *, resume: bool = False, quiet: bool = False, clear: bool | None = None,
        overwrite: bool = False, stop_after: int | None = None, sigterm_after: int | None = None,
        exit_message=None, checked: bool = False) -> dict:
    """Run case ``name`` with configuration ``cfg`` into directory ``out``; returns the summary.

    ``resume`` continues from the checkpoint in ``out``; ``overwrite`` replaces an earlier run there.
    ``stop_after=K`` sends this process SIGUSR1 after iteration K (the stop-after-iteration path: raises
    :class:`Interrupted` once the checkpoint is written); ``sigterm_after=K`` sends SIGTERM (the immediate
    path of :func:`main`).  ``exit_message``: the handle of :func:`~pdeinv.cases.signals.exit_on_signals`
    whose message is kept up to date.  Unless ``checked``, runs :func:`preflight` first.
    """
    from pdeinv._petsc import init_petsc

    init_petsc()
    import firedrake as fd
    import numpy as np

    from pdeinv.cases import output
    from pdeinv.ensemble import gather_channels
    from pdeinv.log import RankZeroLog
    from pdeinv.maps import Misfit
    from pdeinv.noise import GaussianNoise
    from pdeinv.optimize import NewtonCGOptions, newton_cg
    from pdeinv.posterior import LaplaceApproximation
    from pdeinv.problem import InverseProblem

    module = importlib.import_module(f"pdeinv.cases.{name}")
    comm = fd.COMM_WORLD  # a case run owns the whole MPI job
    if not checked:
        clear = _on_rank0(comm, lambda: preflight(name, module, cfg, out, resume=resume, overwrite=overwrite,
                                                  ranks=comm.size))
    log = RankZeroLog(comm, quiet=quiet, announce_phases=True)
    # ensemble members split the experiments; member 0 writes (checkpoint, results) on its ranks `space`
    ensemble, space, writer, mesh_kw, experiments = None, comm, True, {}, None
    if _members(cfg) > 1:
        from pdeinv.ensemble import ENSEMBLE_DISTRIBUTION, experiments_of, make_ensemble

        ensemble = make_ensemble(comm, _members(cfg))
        space, writer = ensemble.comm, ensemble.ensemble_comm.rank == 0
        mesh_kw = {"distribution_parameters": ENSEMBLE_DISTRIBUTION}
        experiments = experiments_of(module.n_experiments(cfg), ensemble)
    ckdir = os.path.join(out, "checkpoint")
    mesh_file = os.path.join(ckdir, "mesh.h5")
    state_file = os.path.join(ckdir, "state.json")
    t_start = time.perf_counter()
    log.info(f"pdeinv case '{name}' on {comm.size} rank(s) -> {out}"
             + (f" ({_members(cfg)} ensemble members x {space.size} rank(s))" if ensemble is not None else ""))
    if exit_message is not None:
        exit_message.set_message(_signal_message(comm, "stopped by a signal before the first checkpoint: nothing "
                                                       "to resume; rerun without --resume"))
        # each rank records its own stop next to the checkpoint (what `pdeinv status` reports)
        exit_message.set_report(os.path.abspath(os.path.join(ckdir, f"stopped.rank-{comm.rank}")))

    aside, prepared = None, False
    try:  # a fresh run that fails in setup (a sensor outside the mesh, ...) puts the earlier run back
        with log.phase("setup"):
            if resume:
                with open(os.path.join(ckdir, "config.json")) as fh:
                    mesh_name = json.load(fh).get("mesh_name") or "mesh"
                if comm.rank == 0:  # leftovers of a write that a signal cut short; the run's result is redone
                    for d in (out, ckdir):
                        for f in os.listdir(d):
                            if f.endswith(".tmp") or f in ("summary.json", results_dir.FAILED) \
                                    or f.startswith("stopped.rank-"):
                                os.remove(os.path.join(d, f))
                comm.barrier()
            else:
                mesh = module.make_mesh(cfg, space, **mesh_kw)
                mesh_name = mesh.name
                # a mesh from a file is known only now: the last check that needs no solve, before writing
                if getattr(module, "parameter_dofs", lambda c: None)(cfg) is None:
                    _check_rank(cfg, fd.FunctionSpace(mesh, "CG", 1).dim())
                aside = _prepare_fresh(out, clear, comm, name=name, cfg=cfg, mesh_name=mesh_name)
                prepared = True
                tmp = mesh_file + ".tmp"
                if writer:
                    with fd.CheckpointFile(tmp, "w", comm=space) as ck:
                        ck.save_mesh(mesh)
                if comm.rank == 0:
                    os.replace(tmp, mesh_file)
                comm.barrier()
            # Fresh or resumed, the run works on the mesh as loaded from the checkpoint, so that both see
            # the same distribution and dof numbering and a resumed run repeats the uninterrupted one.
            # (Every ensemble member loads the same saved partition.)
            with fd.CheckpointFile(mesh_file, "r", comm=space) as ck:
                mesh = ck.load_mesh(mesh_name)
            model, prior, truth, points = (module.build(cfg, mesh) if ensemble is None
                                           else module.build(cfg, mesh, experiments=experiments))
            V = model.parameter_space
    except BaseException:
        if prepared:
            _setup_failed(out, aside, comm)
        raise
    if comm.rank == 0:
        results_dir.discard(aside)  # the new run stands: the earlier one's entries go now
    channels = model.observation.channels if ensemble is None else \
        ensemble.ensemble_comm.allreduce(model.observation.channels)
    log.info(f"  state dofs {model.state_space.dim()}, parameter dofs {V.dim()}, "
             f"{model.observation.n_points} points x {channels} channels")

    with log.phase("data"):
        observed = module.observed_data(cfg, model) if hasattr(module, "observed_data") else None
        if observed is not None:  # data from a file: no truth, no noise-free data
            data, noise, clean = observed.data, observed.noise, None
        else:
            clean = model(truth)
            if hasattr(module, "make_noise"):
                noise = module.make_noise(cfg, model, clean, **({} if ensemble is None else {"ensemble": ensemble}))
            else:
                noise = GaussianNoise.relative(model.observation, clean, cfg["data"]["noise_fraction"])
            if ensemble is None:
                data = noise.sample(clean, seed=cfg["data"]["seed"])
            else:  # the draw of one member holding every experiment
                from pdeinv.ensemble import sample_ensemble

                data = sample_ensemble(ensemble, noise, clean, seed=cfg["data"]["seed"])
        misfit = Misfit(model, noise, data)
        if ensemble is not None:
            from pdeinv.ensemble import EnsembleMisfit

            misfit = EnsembleMisfit(ensemble, [misfit])
        problem = InverseProblem(misfit, prior)

    oc = cfg["optimizer"]
    options = NewtonCGOptions(gradient_rtol=oc["gradient_rtol"], max_iterations=oc["max_iterations"],
                              max_cg_iterations=oc["max_cg_iterations"], globalization=oc["globalization"],
                              quiet=quiet)
    m0, resume_state = prior.mean, None
    if resume:
        with open(state_file) as fh:
            saved = json.load(fh)
        with fd.CheckpointFile(os.path.join(ckdir, saved["iterate_file"]), "r", comm=space) as ck:
            m0 = ck.load_function(mesh, "m")
        m0 = fd.Function(V).assign(m0)
        resume_state = saved["state"]
        log.info(f"  resumed from Newton iteration {resume_state['iteration']}")

    with StopRequest() as stop:

        def checkpoint(k, m, entry):
            fname = f"iterate-{k:04d}.h5"
            tmp = os.path.join(ckdir, fname + ".tmp")
            if writer:  # every member holds the same iterate
                with fd.CheckpointFile(tmp, "w", comm=space) as ck:
                    ck.save_mesh(mesh)
                    ck.save_function(m, name="m")
            if comm.rank == 0:
                os.replace(tmp, os.path.join(ckdir, fname))
            output.atomic_json(state_file, {"iterate_file": fname, "state": entry["state"]}, comm)
            if exit_message is not None:
                exit_message.set_message(_signal_message(
                    comm, f"stopped by a signal; the checkpoint of Newton iteration {k} in {ckdir} is complete: "
                          f"rerun with --resume (exit {EXIT_INTERRUPTED})"))
            if comm.rank == 0:  # older iterates are no longer referenced
                for old in os.listdir(ckdir):
                    if old.startswith("iterate-") and old.endswith(".h5") and old != fname:
                        os.remove(os.path.join(ckdir, old))
            if stop_after is not None and k == stop_after:
                os.kill(os.getpid(), signal.SIGUSR1)  # the real signal path, as a batch system would
            if sigterm_after is not None and k == sigterm_after:
                comm.barrier()  # every rank has finished with the checkpoint files
                os.kill(os.getpid(), signal.SIGTERM)
            if stop.agreed(comm):
                log.result(f"SIGUSR1: checkpoint written after iteration {k}; rerun with --resume")
                raise Interrupted

        with log.phase("map"):
            result = newton_cg(problem, m0, options=options, callback=checkpoint, log=log, resume=resume_state)
    m_map = result.m
    m_map.rename("map")

    def total(local):  # a count summed over the ensemble members (each counts its own experiments)
        return local if ensemble is None else ensemble.ensemble_comm.allreduce(local)

    solves_after_map = total(model.counts["linear_solves"])

    lc = cfg["laplace"]
    with log.phase("laplace"):
        la = LaplaceApproximation(problem, m_map, rank=lc["rank"], oversampling=lc["oversampling"])
        # exact prior variance (one covariance action per dof) where that is cheap; else sampled
        method = lc["prior_variance"]
        if method == "auto":
            method = "exact" if V.dim() <= EXACT_VARIANCE_DOFS else "samples"
        pv = la.prior_variance(method=method, samples=lc["variance_samples"])
        var = la.pointwise_variance(prior_variance=pv)
        std = fd.Function(V, name="posterior_std")
        std.dat.data[:] = np.sqrt(np.maximum(var.dat.data_ro, 0.0))
        reduction = la.variance_reduction(var, pv)
        samples = [la.sample(seed=1000 + i, name="posterior_sample") for i in range(lc["posterior_samples"])]
    log.info(f"  {la.data_informed_dimension} data-informed directions; {la.hessian_actions} Hessian actions")

    def rel_error(f):
        return float(np.sqrt(fd.assemble((f - truth) ** 2 * fd.dx) / fd.assemble(truth**2 * fd.dx)))

    before_output = _contents(out) if comm.rank == 0 else []
    with log.phase("output"):
        prior_mean = fd.Function(V, name="prior_mean").assign(prior.mean)
        fields = {"map": m_map, "posterior_std": std, "prior_mean": prior_mean, "variance_reduction": reduction}
        if truth is not None:
            fields = {"truth": truth} | fields
        if writer:
            output.write_fields(out, mesh, fields, samples)
            output.write_points_vtk(os.path.join(out, "observation_points.vtk"), points, space)

        def as_array(d):  # every experiment's channels, on every rank
            a = model.observation.to_array(d)
            return a if ensemble is None else gather_channels(ensemble, a)

        observed_array = as_array(data)
        predicted = as_array(model(m_map))
        noise_free = as_array(clean) if clean is not None else None
        if comm.rank == 0:
            shown = [f for f in ("truth", "map", "posterior_std") if f in fields]
            output.plot_fields(os.path.join(out, "fields.png"), os.path.join(out, "results.h5"), shown,
                               [{"map": "MAP", "posterior_std": "posterior std"}.get(f, f) for f in shown], points,
                               mesh_name=mesh.name)
            output.plot_history(os.path.join(out, "convergence.png"), result.history)
            output.plot_spectrum(os.path.join(out, "eigenvalues.png"), la.eigenvalues)
            output.plot_data_fit(os.path.join(out, "data_fit.png"), observed_array, predicted, noise_free)
        comm.barrier()

    from pdeinv.cases.config import config_hash

    summary = {
        "case": name, "ranks": comm.size, "config": cfg, "config_hash": config_hash(cfg),
        "solver": _solver_record(module, cfg, model),
        "data_source": observed.source if observed is not None else "synthetic",
        "ensemble": {"members": _members(cfg), "ranks_per_member": space.size,
                     "experiments_per_member": None if ensemble is None else
                     ensemble.ensemble_comm.allgather(len(experiments))},
        "dofs": {"state": model.state_space.dim(), "parameter": V.dim(),
                 "observations": model.observation.n_points * channels},
        "newton_iterations": result.iterations, "cg_iterations": result.cg_iterations,
        "converged": bool(result.converged), "termination": result.reason,
        "pde_solves": {"map": solves_after_map, "total": total(model.counts["linear_solves"])},
        "hessian_actions_laplace": la.hessian_actions,
        "cost": result.cost.total, "cost_terms": {"misfit": result.cost.misfit,
                                                  "regularization": result.cost.regularization},
        "data_informed_dim": la.data_informed_dimension, "eigenvalues": la.eigenvalues.tolist(),
        "identifiability": la.identifiability(var, pv),
        "expected_information_gain": la.expected_information_gain(),
        "prior_variance_trace": float(fd.assemble(pv * fd.dx)),
        "posterior_variance_trace": float(fd.assemble(var * fd.dx)),
        "timings": dict(log.timings), "resumed": bool(resume),
    }
    if truth is not None:
        summary |= {"relative_error": rel_error(m_map), "prior_mean_relative_error": rel_error(prior_mean)}
        quality = (f"MAP error {summary['relative_error']:.3f} (prior mean "
                   f"{summary['prior_mean_relative_error']:.3f})")
    else:
        rms = float(np.sqrt(np.mean((predicted - observed_array) ** 2)))
        summary["data_rms_residual"] = rms
        quality = f"data RMS residual {rms:.3g}"
    output.atomic_json(os.path.join(out, "summary.json"), summary, comm)
    if comm.rank == 0:
        results_dir.record(out, set(_contents(out)) - set(before_output) | {"summary.json"})
    comm.barrier()
    log.result(f"pdeinv case '{name}': {quality}, {result.iterations} Newton / {result.cg_iterations} "
               f"CG iterations, {la.data_informed_dimension} data-informed directions, "
               f"{time.perf_counter() - t_start:.1f} s -> {out}")
    return summary
