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

Ensembles: a case whose ``n_experiments(cfg)`` exceeds 1 takes ``parallel.ensemble = P``: the
experiments are split over P ``firedrake.Ensemble`` members (``COMM_WORLD.size / P`` ranks each), the
misfit summed in :class:`pdeinv.ensemble.EnsembleMisfit`; the optimizer and the Laplace approximation
run on every member alike, and member 0 alone writes the checkpoint and the results.

Disk space (:mod:`pdeinv.cases.disk`): checked before every checkpoint and output write; a full disk
ends every rank with one line and status 74, the last complete checkpoint intact.

Exit statuses: 0 success, 2 configuration error (before any solve, nothing written), 74 no space left
on the results directory's device (free space, then ``--resume``), 75 interrupted (EX_TEMPFAIL: run
again with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from pdeinv.cases import checkpoint_files, disk, resources, results_dir
from pdeinv.cases.common import DriverCase, PhasedCase, load_case
from pdeinv.cases.results_dir import MARKER  # the manifest, written first into every results directory
from pdeinv.cases.settings import LaplaceSettings, OptimizerSettings, SamplingSettings
from pdeinv.cases.signals import EXIT_INTERRUPTED, StopRequest, exit_on_signals

EXIT_CONFIG = 2
RANKS = "ranks.json"  # in the checkpoint: how many ranks the latest run (fresh or resumed) had
CASES = ("heat", "tomography", "poisson", "learn_regularization", "design")
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
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse a configuration estimated to need more memory per node than SIZE (e.g. 64G; "
                        "'none': no limit; default: what the node has available)")
    p.add_argument("--max-hours", type=float, default=168.0, metavar="H",
                   help="refuse a configuration whose one forward solve is estimated above H hours (default 168)")
    p.add_argument("--sigterm-after", type=int, metavar="K",
                   help="send this process SIGTERM after checkpoint K (Newton iteration K, or phase K of a case with "
                        "its own driver): tests the batch-job path")
    p.add_argument("--sigterm-after-samples", type=int, metavar="N",
                   help="send this process SIGTERM after the sampling checkpoint of step N: tests the batch-job path")
    return p


def _case_name_from_file(path):
    from pdeinv.cases.config import ConfigError, read_toml

    data = read_toml(path)
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
        if checkpoint_files.record_file(out) is None:
            state = os.path.join(out, "checkpoint", "state.json")
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
    return _check_contents(out, overwrite=overwrite)


def _check_contents(out, *, overwrite) -> bool:
    """The fresh-run part of :func:`_check_output` that can change while a run waits: what ``out`` holds
    (asked again under the run lock).  Returns whether the directory must be cleared first."""
    from pdeinv.cases.config import ConfigError

    entries = [e for e in _contents(out) if e != results_dir.LOCK]  # a lock file alone: a start that died
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
    except (OSError, ValueError, RecursionError):
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
    """The checkpoint is complete and the one the run wrote (:func:`checkpoint_files.problems`: JSON
    complete, iterate and mesh with their recorded SHA-256, a finite iterate, no pickle that runs code)."""
    from pdeinv.cases.config import ConfigError

    found = checkpoint_files.problems(out)
    if found:
        raise ConfigError(f"--resume: the checkpoint in {out} cannot be resumed: {'; '.join(found)} (start afresh "
                          "with --overwrite)")


def preflight(name, case, cfg, out, *, resume=False, overwrite=False, ranks: int = 1,
              allow_code: bool = False, limits: resources.Limits | None = None, ranks_per_node: int = 1) -> bool:
    """Every check that needs no mesh and no solve: the results directory, ``--resume`` against the
    checkpoint, PETSc options, data files, sizes (memory and time estimates against ``limits``, see
    :mod:`pdeinv.cases.resources`), the ensemble against the ``ranks`` of the run.
    Raises ConfigError; returns whether the results directory must be cleared first.  Call on one rank
    (file-system checks) — :func:`main` does."""
    from pdeinv._petsc import unused_solver_options
    from pdeinv.cases.config import ConfigError

    members = _members(cfg)
    if ranks % members:
        raise ConfigError(f"parallel.ensemble = {members} members cannot share {ranks} MPI rank(s) equally; run on a "
                          f"multiple of {members} ranks (members x ranks per member)")
    _check_chains(cfg, ranks)
    size = case.size(cfg)
    if size is not None:  # before the results directory: a refused size touches nothing
        resources.check(size, limits or resources.Limits(None), ranks=ranks, ranks_per_node=ranks_per_node)
    clear = _check_output(out, resume=resume, overwrite=overwrite)
    if resume:
        _check_resume_config(name, cfg, out)
        _check_checkpoint_files(out)
    solver = cfg.get("model", {}).get("solver")
    if solver == "gpu":  # pdeinv's own device options (tested); the device itself: check_solver_device
        solver = None
    if isinstance(solver, str):
        from pdeinv.cases.common import solver_parameters

        solver = solver_parameters(solver, symmetric=case.symmetric)
    if solver:
        try:
            unused = unused_solver_options(solver, name="model.solver", allow_code=allow_code)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if unused:
            raise ConfigError(f"model.solver: unknown PETSc option(s) {unused} (not read by a KSP/PC; options "
                              "are written without the leading '-', e.g. ksp_type = \"cg\")")
    case.check_files(cfg)  # data files: read and checked now, not after setup
    dofs = case.parameter_dofs(cfg)
    if dofs is not None and "laplace" in cfg:
        _check_rank(cfg, dofs)
    return clear


def check_solver_device(cfg, comm) -> None:
    """``model.solver = "gpu"``: every rank of ``comm`` must have a CUDA device, checked before any solve;
    one ConfigError (exit 2) saying why not (PETSc without CUDA, or no device), never a CPU fallback.
    Collective."""
    if cfg.get("model", {}).get("solver") != "gpu":
        return
    from pdeinv.cases.config import ConfigError
    from pdeinv.errors import DeviceError
    from pdeinv.linalg.device import require_device

    try:
        require_device(comm, 'model.solver = "gpu"')
    except DeviceError as e:
        raise ConfigError(str(e)) from None


def _members(cfg) -> int:
    return cfg.get("parallel", {}).get("ensemble", 1)


def _sampling(cfg) -> SamplingSettings | None:
    """The [sampling] settings, or None where the case samples nothing (no table, or kernel "none")."""
    if SamplingSettings.TABLE not in cfg:
        return None
    settings = SamplingSettings.of(cfg)
    return settings if settings.enabled else None


def _chains(cfg) -> int:
    """Chains of the [sampling] phase that run side by side (1 without sampling)."""
    settings = _sampling(cfg)
    return 1 if settings is None else settings.chains


def _check_chains(cfg, ranks) -> None:
    from pdeinv.cases.config import ConfigError

    chains = _chains(cfg)
    if chains > 1 and ranks % chains:
        raise ConfigError(f"sampling.chains = {chains} cannot share {ranks} MPI rank(s) equally; run on a multiple "
                          f"of {chains} ranks (chains x ranks per chain)")
    if chains > 1 and _members(cfg) > 1:
        raise ConfigError("sampling.chains > 1 and parallel.ensemble > 1 cannot be combined: each chain is one "
                          "ensemble member holding the whole problem")


def _check_rank(cfg, dofs):
    from pdeinv.cases.config import ConfigError

    lc = LaplaceSettings.of(cfg)
    k, p = lc.rank, lc.oversampling
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
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            reason = "reason unreadable"
        return 1, (f"{out}: failed ({reason}); not resumed automatically — fix the cause, then rerun with "
                   "--resume by hand")
    record = checkpoint_files.record_file(out)
    if record is not None:
        damaged = checkpoint_files.problems(out)
        if damaged:
            return 1, f"{out}: checkpoint damaged ({'; '.join(damaged)}); not resumable"
        with open(record) as fh:
            saved = json.load(fh)
        where = (f"from Newton iteration {saved['state'].get('iteration')}" if "state" in saved else
                 f"after its completed phases ({', '.join(saved['phases']) or 'none yet'})")
        return EXIT_INTERRUPTED, (f"{out}: interrupted ({_how_it_stopped(os.path.dirname(record))}), resumable "
                                  f"{where} (rerun with --resume)")
    return 1, f"{out}: no results and no checkpoint"


def _how_it_stopped(ckdir) -> str:
    """Which ranks a signal stopped (each wrote ``stopped.rank-K``) and which ended without a record
    (killed by SIGKILL, the out-of-memory killer or a node failure: nothing can run in them then)."""
    stopped = sorted(int(f.rsplit("-", 1)[1]) for f in os.listdir(ckdir)
                     if f.startswith("stopped.rank-") and f.rsplit("-", 1)[1].isdigit())
    try:
        with open(os.path.join(ckdir, RANKS)) as fh:
            ranks = int(json.load(fh)["ranks"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        ranks = None
    silent = [] if ranks is None else sorted(set(range(ranks)) - set(stopped))
    said = []
    if stopped:
        said.append(f"stopped by a signal on rank(s) {', '.join(map(str, stopped))}")
    if silent:
        said.append(f"rank(s) {_ranges(silent)} of {ranks} ended without a record: killed (SIGKILL, out of memory "
                    "or a node failure)")
    return "; ".join(said) or "ended without a record"


def _ranges(ks) -> str:
    """[0, 1, 2, 5] -> "0-2, 5" (a 1000-rank job's list stays one line)."""
    out, start = [], ks[0]
    for a, b in zip(ks, ks[1:] + [None], strict=True):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out)


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
    out, lock, made = None, None, False
    try:
        name = case or _case_name_from_file(args.config)
        case_ = load_case(name)
        cfg = load_config(case_.defaults, args.config, args.set)
        case_.validate(cfg)
        out = args.out or os.path.join("results", name)
        init_petsc()  # petsc4py only (no Firedrake yet): for the options check
        limits = _limits(args)
        per_node = resources.ranks_on_this_node(comm)  # collective: rank 0's node is the one measured
        _on_rank0(comm, lambda: _refuse_if_locked(out))
        _on_rank0(comm, lambda: preflight(name, case_, cfg, out, resume=args.resume, overwrite=args.overwrite,
                                          ranks=comm.size, allow_code=args.allow_code_options, limits=limits,
                                          ranks_per_node=per_node))
        check_solver_device(cfg, comm)  # collective: every rank needs its device
        held = []  # rank 0's lock stays on rank 0 (an open file descriptor cannot be broadcast)
        _on_rank0(comm, lambda: held.append(_lock(out)))
        lock, made = held[0] if held else (None, False)
        # under the lock, the directory is looked at again: another run may have claimed it since preflight
        clear = False if args.resume else _on_rank0(comm, lambda: _check_contents(out, overwrite=args.overwrite))
        if isinstance(case_, DriverCase):  # a case with its own driver (bilevel learning)
            return _run_under_signals(lambda on_signal: _run_own_driver(
                case_, cfg, out, clear, comm, args, exit_message=on_signal), out, comm)
        return _run_under_signals(lambda on_signal: run(
            name, cfg, out, resume=args.resume, quiet=args.quiet, clear=clear, exit_message=on_signal,
            sigterm_after=args.sigterm_after, checked=True, limits=limits,
            sigterm_after_samples=args.sigterm_after_samples), out, comm)
    except (ConfigError, disk.DiskFull) as e:
        if comm.rank == 0:
            full = isinstance(e, disk.DiskFull)
            sys.stderr.write(f"pdeinv: {e}\n" if full else f"pdeinv: configuration error: {e}\n")
            if full:
                _record_quietly(out, str(e))
            if made and lock is not None and set(_contents(out)) <= {MARKER, results_dir.LOCK}:
                shutil.rmtree(out, ignore_errors=True)  # a directory this run made, holds and left empty
            if lock is not None:
                lock.release()
                lock = None
        return disk.EXIT_NO_SPACE if isinstance(e, disk.DiskFull) else EXIT_CONFIG
    except Interrupted:
        return EXIT_INTERRUPTED
    finally:
        if lock is not None:
            lock.release()


def _run_under_signals(go, out, comm) -> int:
    """``go(on_signal)`` (a run) with SIGTERM/SIGINT ending every rank at once (exit 75); a failure other
    than a configuration error, a stop or a full disk is recorded for `pdeinv status` (so a job script does
    not resubmit it) and re-raised; a full disk met while writing ends every rank with exit 74."""
    from pdeinv.cases.config import ConfigError

    with exit_on_signals((signal.SIGTERM, signal.SIGINT)) as on_signal:
        try:
            go(on_signal)
        except (ConfigError, Interrupted, disk.DiskFull):
            raise
        except Exception as e:
            if not disk.is_no_space(e):
                if comm.rank == 0:
                    results_dir.record_failure(out, f"{type(e).__name__}: {e}")
                raise
            _write_failed_on_this_rank(comm, out, e)  # ends every rank
            return disk.EXIT_NO_SPACE
    return 0


def _limits(args) -> resources.Limits:
    """``--max-memory`` (default: the node's available memory) and ``--max-hours`` as Limits."""
    from pdeinv.cases.config import ConfigError

    if not args.max_hours > 0:
        raise ConfigError(f"--max-hours {args.max_hours!r}: expected a positive number of hours")
    if args.max_memory is None:
        return resources.Limits(resources.available_memory(), args.max_hours)
    try:
        memory = resources.parse_memory(args.max_memory)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return resources.Limits(memory or None, args.max_hours)


def _record_quietly(out, reason):
    """Record why the run failed, if the (full) disk still takes the few bytes."""
    try:
        results_dir.record_failure(out, reason)
    except OSError:
        pass


def _write_failed_on_this_rank(comm, out, exc):
    """A write failed for want of space after the checks passed (the disk filled meanwhile): the message,
    the record, and — on several ranks — the end of every rank (the others may wait for this one in a
    collective: MPI_Abort with status 74)."""
    sys.stderr.write(f"pdeinv: no space left on the device of {os.path.abspath(out)} (rank {comm.rank}: {exc}); "
                     "free some space, then rerun with --resume\n")
    sys.stderr.flush()
    _record_quietly(out, f"no space left on device: {exc}")
    if comm.size > 1:
        comm.Abort(disk.EXIT_NO_SPACE)


def _run_own_driver(case, cfg, out, clear, comm, args, *, exit_message=None):
    """A case with its own ``run_case``: the same results-directory rules (earlier entries set aside until it
    succeeds, its new entries recorded in the manifest, the configuration in ``checkpoint/config.json``),
    the same signal handling (each rank records its stop, exit 75) and ``--resume`` from the phases it
    checkpointed (``checkpoint/phases.json``)."""
    ckdir = os.path.join(out, "checkpoint")
    if exit_message is not None:
        exit_message.set_message(_signal_message(comm, "stopped by a signal: the phases completed so far are in the "
                                                       "checkpoint; rerun with --resume"))
        exit_message.set_report(os.path.abspath(os.path.join(ckdir, f"stopped.rank-{comm.rank}")))
    aside = None
    if args.resume:
        _remove_leftovers(out, comm)
    else:
        aside = _prepare_fresh(out, clear, comm, name=case.name, cfg=cfg)
    _write_ranks(ckdir, comm)
    before = _contents(out)
    try:
        case.run_case(cfg, out, quiet=args.quiet, resume=args.resume, sigterm_after=args.sigterm_after)
    except BaseException:
        if not args.resume and not os.path.exists(os.path.join(ckdir, checkpoint_files.PHASES)):
            _setup_failed(out, aside, comm)  # nothing learned yet: the earlier run comes back
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
    """Rank 0: make ``out`` and take its run lock (held until the run ends).  Returns the lock and whether
    this run made the directory (``mkdir`` is atomic: of two runs started together, one made it)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        os.mkdir(out)
        made = True
    except FileExistsError:
        made = False
    lock = results_dir.RunLock(out)
    lock.acquire()
    return lock, made


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


def _solver_record(cfg, model) -> dict:
    """What ``model.solver`` resolved to: the PETSc options the model's state solves ran with on this
    run's ranks (the model's own record, so a symmetry decision or a default taken inside it shows)."""
    setting = cfg["model"].get("solver", {})
    return {"setting": setting or "direct", "petsc_options": dict(model.linear_solver or {})}


def _signal_message(comm, text):
    return f"pdeinv: {text}\n" if comm.rank == 0 else ""


@dataclass
class _Run:
    """One case run, phase by phase: what each phase (setup -> data -> MAP -> Laplace -> output ->
    summary) hands to the next."""

    name: str
    cfg: dict
    out: str
    case: PhasedCase
    comm: object
    log: object
    resume: bool
    ensemble: object = None
    space: object = None  # the ranks of one ensemble member (the whole job without an ensemble)
    writer: bool = True  # member 0 writes checkpoint and results
    mesh_kw: dict = field(default_factory=dict)
    experiments: object = None
    t_start: float = 0.0
    mesh: object = None
    model: object = None
    prior: object = None
    truth: object = None
    points: object = None
    V: object = None
    channels: int = 0
    observed: object = None
    data: object = None
    noise: object = None
    clean: object = None
    problem: object = None
    result: object = None
    solves_after_map: int = 0
    la: object = None
    pv: object = None
    var: object = None
    fields: dict = field(default_factory=dict)
    samples: list = field(default_factory=list)
    arrays: tuple = ()  # (observed, predicted) data arrays, every experiment on every rank
    mesh_hash: str = ""  # SHA-256 of checkpoint/mesh.h5 (rank 0), recorded in every state.json
    sizes: object = None  # disk.Sizes: what the free-space checks estimate from
    limits: object = None  # resources.Limits: what the size of a mesh read from a file is checked against
    size: object = None  # resources.Size of the run (None until a mesh file is read: then its vertices tell)
    chain_ensemble: object = None  # sampling.chains > 1: one chain per member, each with the whole problem
    chains: object = None  # the SamplingResult of the [sampling] phase (None: no sampling)
    marginals: dict = field(default_factory=dict)  # Laplace marginals of the sampled quantities
    quantities: object = None  # sampling_phase.Quantities (built in setup: a point outside the mesh fails early)
    sampling: dict = field(default_factory=dict)  # the summary's sampling entry

    @property
    def ckdir(self) -> str:
        return os.path.join(self.out, "checkpoint")

    @property
    def mesh_file(self) -> str:
        return os.path.join(self.ckdir, "mesh.h5")

    @property
    def state_file(self) -> str:
        return os.path.join(self.ckdir, "state.json")

    def total(self, local):
        """A count summed over the ensemble members (each counts its own experiments)."""
        return local if self.ensemble is None else self.ensemble.ensemble_comm.allreduce(local)


def run(name: str, cfg: dict, out: str, *, resume: bool = False, quiet: bool = False, clear: bool | None = None,
        overwrite: bool = False, stop_after: int | None = None, sigterm_after: int | None = None,
        exit_message=None, checked: bool = False, limits: resources.Limits | None = None,
        sigterm_after_samples: int | None = None) -> dict:
    """Run case ``name`` with configuration ``cfg`` into directory ``out``; returns the summary.

    ``resume`` continues from the checkpoint in ``out``; ``overwrite`` replaces an earlier run there.
    ``stop_after=K`` sends this process SIGUSR1 after iteration K (the stop-after-iteration path: raises
    :class:`Interrupted` once the checkpoint is written); ``sigterm_after=K`` sends SIGTERM (the immediate
    path of :func:`main`).  ``exit_message``: the handle of :func:`~pdeinv.cases.signals.exit_on_signals`
    whose message is kept up to date.  Unless ``checked``, runs :func:`preflight` first.  ``limits``:
    what the run may use (:mod:`pdeinv.cases.resources`; default: no memory limit, 168 h per forward solve).
    ``sigterm_after_samples=N``: SIGTERM once the chains' checkpoint after step N is written (tests).
    """
    from pdeinv._petsc import init_petsc

    init_petsc()
    import firedrake as fd

    from pdeinv.log import RankZeroLog

    case = load_case(name)
    comm = fd.COMM_WORLD  # a case run owns the whole MPI job
    if not checked:
        clear = _on_rank0(comm, lambda: preflight(name, case, cfg, out, resume=resume, overwrite=overwrite,
                                                  ranks=comm.size, limits=limits))
        check_solver_device(cfg, comm)
    r = _Run(name, cfg, out, case, comm, RankZeroLog(comm, quiet=quiet, announce_phases=True), resume,
             limits=limits or resources.Limits(None))
    _start(r, exit_message)
    _setup_phase(r, clear)
    _data_phase(r)
    _map_phase(r, quiet=quiet, stop_after=stop_after, sigterm_after=sigterm_after, exit_message=exit_message)
    _laplace_phase(r)
    _sampling_phase(r, quiet=quiet, sigterm_after=sigterm_after_samples, exit_message=exit_message)
    before_output = _contents(out) if comm.rank == 0 else []
    _output_phase(r)
    return _summary_phase(r, before_output)


def _start(r: _Run, exit_message) -> None:
    """Ensemble layout (members split the experiments), the first log line, the signal message."""
    r.space = r.comm
    if _members(r.cfg) > 1:
        from pdeinv.ensemble import ENSEMBLE_DISTRIBUTION, experiments_of, make_ensemble

        r.ensemble = make_ensemble(r.comm, _members(r.cfg))
        r.space, r.writer = r.ensemble.comm, r.ensemble.ensemble_comm.rank == 0
        r.mesh_kw = {"distribution_parameters": ENSEMBLE_DISTRIBUTION}
        r.experiments = experiments_of(r.case.n_experiments(r.cfg), r.ensemble)
    elif _chains(r.cfg) > 1:  # every member builds the whole problem, the same MAP and Laplace, then its chain
        from pdeinv.ensemble import ENSEMBLE_DISTRIBUTION, make_ensemble

        r.chain_ensemble = make_ensemble(r.comm, _chains(r.cfg))
        r.space, r.writer = r.chain_ensemble.comm, r.chain_ensemble.ensemble_comm.rank == 0
        r.mesh_kw = {"distribution_parameters": ENSEMBLE_DISTRIBUTION}
    r.t_start = time.perf_counter()
    r.log.info(f"pdeinv case '{r.name}' on {r.comm.size} rank(s) -> {r.out}"
               + (f" ({_members(r.cfg)} ensemble members x {r.space.size} rank(s))" if r.ensemble is not None else ""))
    r.size = r.case.size(r.cfg)
    if r.size is not None:
        r.log.info(resources.describe(r.size, r.comm.size))
    if exit_message is not None:
        exit_message.set_message(_signal_message(r.comm, "stopped by a signal before the first checkpoint: nothing "
                                                         "to resume; rerun without --resume"))
        # each rank records its own stop next to the checkpoint (what `pdeinv status` reports)
        exit_message.set_report(os.path.abspath(os.path.join(r.ckdir, f"stopped.rank-{r.comm.rank}")))


def _setup_phase(r: _Run, clear) -> None:
    """Mesh (saved to the checkpoint, or loaded from it on resume) and the case's model, prior and truth;
    a fresh run that fails here (a sensor outside the mesh, ...) puts the earlier run back."""
    import firedrake as fd


    aside, prepared = None, False
    try:
        with r.log.phase("setup"):
            if r.resume:
                mesh_name = _clean_for_resume(r)
            else:
                mesh = _make_mesh(r)
                mesh_name = mesh.name
                disk.ensure_space(r.out, disk.estimate(disk.Sizes.of(mesh, None), disk.Write.MESH), r.comm)
                # a mesh from a file is known only now: the last check that needs no solve, before writing
                if r.case.parameter_dofs(r.cfg) is None:
                    _check_rank(r.cfg, fd.FunctionSpace(mesh, "CG", 1).dim())
                aside = _prepare_fresh(r.out, clear, r.comm, name=r.name, cfg=r.cfg, mesh_name=mesh_name)
                prepared = True
                _save_mesh(r, mesh)
            _write_ranks(r.ckdir, r.comm)
            # Fresh or resumed, the run works on the mesh as loaded from the checkpoint, so that both see
            # the same distribution and dof numbering and a resumed run repeats the uninterrupted one.
            # (Every ensemble member loads the same saved partition.)
            with fd.CheckpointFile(r.mesh_file, "r", comm=r.space) as ck:
                r.mesh = ck.load_mesh(mesh_name)
            kw = {} if r.ensemble is None else {"experiments": r.experiments}
            r.model, r.prior, r.truth, r.points = r.case.build(r.cfg, r.mesh, **kw)
            r.V = r.model.parameter_space
            r.sizes = disk.Sizes.of(r.mesh, r.V)
            _sampling_quantities(r)
            _check_laplace_hessian(r)
    except BaseException:
        if prepared:
            _setup_failed(r.out, aside, r.comm)
        raise
    if r.comm.rank == 0:
        results_dir.discard(aside)  # the new run stands: the earlier one's entries go now
    obs = r.model.observation
    r.channels = obs.channels if r.ensemble is None else r.ensemble.ensemble_comm.allreduce(obs.channels)
    r.log.info(f"  state dofs {r.model.state_space.dim()}, parameter dofs {r.V.dim()}, "
               f"{obs.n_points} points x {r.channels} channels")


def _check_laplace_hessian(r: _Run) -> None:
    """laplace.hessian = "full" needs a model with second derivatives: refused before any solve (exit 2)."""
    from pdeinv.cases.config import ConfigError

    if LaplaceSettings.of(r.cfg).hessian == "full" and not r.model.second_derivatives:
        raise ConfigError(f"laplace.hessian = 'full': the {r.case.name} case's model has no second derivatives "
                          "for this parameter; use 'gauss_newton' (or 'auto')")


def _sampling_quantities(r: _Run) -> None:
    """The sampled quantities of interest, built now so that a point outside the mesh is refused before any
    solve (exit 2)."""
    settings = _sampling(r.cfg)
    if settings is None:
        return
    from pdeinv.cases import sampling_phase
    from pdeinv.cases.config import ConfigError
    from pdeinv.observation import ObservationPointsOutsideMesh

    try:
        r.quantities = sampling_phase.quantities(r.V, settings.points)
    except ObservationPointsOutsideMesh as e:
        raise ConfigError(f"sampling.points: {e}") from None


def _make_mesh(r: _Run):
    """The case's mesh, with a progress line before (a large mesh takes minutes) and after; a mesh read
    from a file, whose size preflight could not know, is checked against the limits now."""
    import firedrake as fd

    r.log.info("  building the mesh" + (f" ({r.size.cells} cells)" if r.size is not None else " (from a file)"))
    with r.log.phase("mesh"):
        mesh = r.case.make_mesh(r.cfg, r.space, **r.mesh_kw)
        cells = r.space.allreduce(mesh.cell_set.size)
    if r.size is None:
        r.size = r.case.size(r.cfg, vertices=fd.FunctionSpace(mesh, "CG", 1).dim())
        r.log.info(resources.describe(r.size, r.comm.size))
        resources.check(r.size, r.limits, ranks=r.comm.size, ranks_per_node=resources.ranks_on_this_node(r.comm))
    r.log.info(f"  mesh: {cells} cells")
    return mesh


def _clean_for_resume(r: _Run) -> str:
    """Remove the leftovers of a write that a signal cut short (the run's result is redone); the mesh name."""
    with open(os.path.join(r.ckdir, "config.json")) as fh:
        mesh_name = json.load(fh).get("mesh_name") or "mesh"
    _remove_leftovers(r.out, r.comm)
    return mesh_name


def _remove_leftovers(out, comm) -> None:
    """Collective: the half-written files, the stop and failure records and the summary of the run being
    resumed (its result is redone)."""
    if comm.rank == 0:
        for d in (out, os.path.join(out, "checkpoint")):
            for f in os.listdir(d):
                if f.endswith(".tmp") or f in ("summary.json", results_dir.FAILED) or f.startswith("stopped.rank-"):
                    os.remove(os.path.join(d, f))
    comm.barrier()


def _write_ranks(ckdir, comm) -> None:
    """The ranks of this run (fresh or resumed): `pdeinv status` names those that ended without a record."""
    from pdeinv.cases.output import atomic_json

    atomic_json(os.path.join(ckdir, RANKS), {"ranks": comm.size}, comm)


def _save_mesh(r: _Run, mesh) -> None:
    import firedrake as fd

    tmp = r.mesh_file + ".tmp"
    if r.writer:
        with fd.CheckpointFile(tmp, "w", comm=r.space) as ck:
            ck.save_mesh(mesh)
    if r.comm.rank == 0:
        os.replace(tmp, r.mesh_file)
        r.mesh_hash = checkpoint_files.sha256(r.mesh_file)
    r.comm.barrier()


def _data_phase(r: _Run) -> None:
    """Observed data (from a file, or synthetic from the truth with the case's noise) and the problem."""
    from pdeinv.maps import Misfit
    from pdeinv.problem import InverseProblem

    with r.log.phase("data"):
        r.observed = r.case.observed_data(r.cfg, r.model)
        if r.observed is not None:  # data from a file: no truth, no noise-free data
            r.data, r.noise, r.clean = r.observed.data, r.observed.noise, None
        else:
            r.clean = r.model(r.truth)
            r.noise = r.case.make_noise(r.cfg, r.model, r.clean, ensemble=r.ensemble)
            if r.ensemble is None:
                r.data = r.noise.sample(r.clean, seed=r.cfg["data"]["seed"])
            else:  # the draw of one member holding every experiment
                from pdeinv.ensemble import sample_ensemble

                r.data = sample_ensemble(r.ensemble, r.noise, r.clean, seed=r.cfg["data"]["seed"])
        misfit = Misfit(r.model, r.noise, r.data)
        if r.ensemble is not None:
            from pdeinv.ensemble import EnsembleMisfit

            misfit = EnsembleMisfit(r.ensemble, [misfit])
        r.problem = InverseProblem(misfit, r.prior)


def _map_phase(r: _Run, *, quiet, stop_after, sigterm_after, exit_message) -> None:
    """Newton–CG to the MAP point from the prior mean (or the checkpointed iterate), checkpointing
    every iteration."""
    import firedrake as fd

    from pdeinv.optimize import newton_cg

    options = OptimizerSettings.of(r.cfg).newton_options(quiet=quiet)
    m0, resume_state = r.prior.mean, None
    if r.resume:
        with open(r.state_file) as fh:
            saved = json.load(fh)
        with fd.CheckpointFile(os.path.join(r.ckdir, saved["iterate_file"]), "r", comm=r.space) as ck:
            m0 = ck.load_function(r.mesh, "m")
        m0 = fd.Function(r.V).assign(m0)
        resume_state, r.mesh_hash = saved["state"], saved["mesh_sha256"]
        r.log.info(f"  resumed from Newton iteration {resume_state['iteration']}")
    with StopRequest() as stop:
        checkpoint = _checkpointer(r, stop, stop_after=stop_after, sigterm_after=sigterm_after,
                                   exit_message=exit_message)
        with r.log.phase("map"):
            r.result = newton_cg(r.problem, m0, options=options, callback=checkpoint, log=r.log, resume=resume_state)
    r.result.m.rename("map")
    r.solves_after_map = r.total(r.model.counts["linear_solves"])


def _checkpointer(r: _Run, stop, *, stop_after, sigterm_after, exit_message):
    """The Newton callback: write the iterate (atomically) and the optimizer state, drop older iterates,
    and stop cleanly when SIGUSR1 was agreed on."""
    import firedrake as fd

    from pdeinv.cases import output

    def checkpoint(k, m, entry):
        fname = f"iterate-{k:04d}.h5"
        tmp = os.path.join(r.ckdir, fname + ".tmp")
        disk.ensure_space(r.ckdir, disk.estimate(r.sizes, disk.Write.ITERATE), r.comm)
        if r.writer:  # every member holds the same iterate
            with fd.CheckpointFile(tmp, "w", comm=r.space) as ck:
                ck.save_mesh(r.mesh)
                ck.save_function(m, name="m")
        record = None
        if r.comm.rank == 0:
            os.replace(tmp, os.path.join(r.ckdir, fname))
            record = checkpoint_files.state_record(r.ckdir, fname, entry["state"], r.mesh_hash)
        output.atomic_json(r.state_file, record, r.comm)
        if exit_message is not None:
            exit_message.set_message(_signal_message(
                r.comm, f"stopped by a signal; the checkpoint of Newton iteration {k} in {r.ckdir} is complete: "
                        f"rerun with --resume (exit {EXIT_INTERRUPTED})"))
        if r.comm.rank == 0:  # older iterates are no longer referenced
            for old in os.listdir(r.ckdir):
                if old.startswith("iterate-") and old.endswith(".h5") and old != fname:
                    os.remove(os.path.join(r.ckdir, old))
        if stop_after is not None and k == stop_after:
            os.kill(os.getpid(), signal.SIGUSR1)  # the real signal path, as a batch system would
        if sigterm_after is not None and k == sigterm_after:
            r.comm.barrier()  # every rank has finished with the checkpoint files
            os.kill(os.getpid(), signal.SIGTERM)
        if stop.agreed(r.comm):
            r.log.result(f"SIGUSR1: checkpoint written after iteration {k}; rerun with --resume")
            raise Interrupted

    return checkpoint


def _laplace_phase(r: _Run) -> None:
    """The Laplace approximation at the MAP point: variance (exact where cheap, else sampled), samples."""
    import firedrake as fd
    import numpy as np

    from pdeinv.posterior import LaplaceApproximation

    lc = LaplaceSettings.of(r.cfg)
    r.log.info(f"  Laplace approximation: rank {lc.rank} + {lc.oversampling} randomized eigensolver, "
               f"prior variance ({lc.prior_variance}), {lc.posterior_samples} posterior sample(s)")
    with r.log.phase("laplace"):
        r.la = la = LaplaceApproximation(r.problem, r.result.m, rank=lc.rank, oversampling=lc.oversampling,
                                         hessian=lc.hessian)
        r.pv = la.prior_variance(method=lc.variance_method(r.V.dim()), samples=lc.variance_samples)
        r.var = la.pointwise_variance(prior_variance=r.pv)
        std = fd.Function(r.V, name="posterior_std")
        std.dat.data[:] = np.sqrt(np.maximum(r.var.dat.data_ro, 0.0))
        prior_mean = fd.Function(r.V, name="prior_mean").assign(r.prior.mean)
        r.fields = {"map": r.result.m, "posterior_std": std, "prior_mean": prior_mean,
                    "variance_reduction": la.variance_reduction(r.var, r.pv)}
        if r.truth is not None:
            r.fields = {"truth": r.truth} | r.fields
        r.samples = [la.sample(seed=1000 + i, name="posterior_sample") for i in range(lc.posterior_samples)]
    r.log.info(f"  {la.data_informed_dimension} data-informed directions; {la.hessian_actions} Hessian actions")


def _map_solves(r: _Run) -> int:
    """Solves of the parameter-to-observable map so far (forward, tangent, adjoint, second order), all members."""
    c = r.model.counts
    return r.total(sum(c.get(k, 0) for k in ("forward", "jvp", "vjp", "second_order")))


def _sampling_phase(r: _Run, *, quiet, sigterm_after, exit_message) -> None:
    """MCMC chains from the MAP point ([sampling]; none by default), checkpointed every
    ``sampling.checkpoint_every`` steps: SIGUSR1 stops after the next checkpoint, SIGTERM at once (both exit
    75; ``--resume`` goes on from the chains' checkpoints after redoing the Laplace approximation)."""
    if r.quantities is None:  # no [sampling], or kernel = "none"
        return
    import firedrake as fd
    import numpy as np

    from pdeinv.cases import sampling_phase

    s = SamplingSettings.of(r.cfg)
    r.marginals = r.quantities.laplace_marginals(r.la)
    setup = _map_solves(r)
    r.log.info(f"  sampling: {s.chains} chain(s) of {s.kernel}" + (" with delayed acceptance" if s.delayed_acceptance
               else "") + f", {s.burn_in} burn-in + {s.samples} kept steps, step {s.step}")
    with StopRequest() as stop, r.log.phase("sampling"):
        r.chains = sampling_phase.run_chains(
            s, r.problem, r.la, r.result.m, r.quantities, ckdir=r.ckdir, ensemble=r.chain_ensemble, resume=r.resume,
            quiet=quiet, on_checkpoint=_chains_checkpointed(r, stop, sigterm_after, exit_message))
    r.sampling = sampling_phase.summary_entry(r.chains, r.marginals, setup)
    std = fd.Function(r.V, name="sample_std")
    std.dat.data[:] = np.sqrt(np.maximum(r.chains.variance.dat.data_ro, 0.0))
    r.fields |= {"sample_mean": r.chains.mean, "sample_std": std}
    q = r.sampling["quantities"]
    r.log.info(f"  chains: acceptance {np.round(r.chains.acceptance, 3).tolist()}, ESS (bulk) "
               + ", ".join(f"{n} {d['ess_bulk']:.0f}" for n, d in q.items()) + f", {sum(r.sampling['pde_solves'])} "
               f"PDE solves kept, {r.chains.seconds:.1f} s")


def _chains_checkpointed(r: _Run, stop, sigterm_after, exit_message):
    """Called on every rank after each checkpoint of the chains: the signal message, the test's SIGTERM,
    and the agreed SIGUSR1 stop."""
    def on_checkpoint(done):
        if exit_message is not None:
            exit_message.set_message(_signal_message(
                r.comm, f"stopped by a signal; the chains' checkpoint after step {done} in {r.ckdir} is complete: "
                        f"rerun with --resume (exit {EXIT_INTERRUPTED})"))
        if sigterm_after is not None and done == sigterm_after:
            r.comm.barrier()  # every chain's file is complete
            os.kill(os.getpid(), signal.SIGTERM)
        # agreed within the chain's own ranks: after a resume the chains may checkpoint at different steps
        # (a SIGTERM can fall between two chains' writes), so a collective over every chain could hang
        if stop.agreed(r.space):
            r.log.result(f"SIGUSR1: the chains' checkpoint after step {done} is written; rerun with --resume")
            raise Interrupted

    return on_checkpoint


def _output_phase(r: _Run) -> None:
    """ParaView files, the sensor VTK file and the PNG plots (fields, convergence, spectrum, data fit)."""
    from pdeinv.cases import output
    from pdeinv.ensemble import gather_channels

    out = r.out
    n_fields = len(r.fields) + len(r.samples) + (len(r.chains.fields) if r.chains is not None else 0)
    disk.ensure_space(out, disk.estimate(r.sizes, disk.Write.OUTPUTS, fields=n_fields), r.comm)
    r.log.info(f"  writing {n_fields} fields (ParaView, HDF5) and {4 if r.chains is None else 7} plots to {out}")
    with r.log.phase("output"):
        if r.writer:
            output.write_fields(out, r.mesh, r.fields, r.samples)
            output.write_points_vtk(os.path.join(out, "observation_points.vtk"), r.points, r.space)

        def as_array(d):  # every experiment's channels, on every rank
            a = r.model.observation.to_array(d)
            return a if r.ensemble is None else gather_channels(r.ensemble, a)

        observed, predicted = as_array(r.data), as_array(r.model(r.result.m))
        noise_free = as_array(r.clean) if r.clean is not None else None
        r.arrays = (observed, predicted)
        if r.comm.rank == 0:
            shown = [f for f in ("truth", "map", "posterior_std") if f in r.fields]
            output.plot_fields(os.path.join(out, "fields.png"), os.path.join(out, "results.h5"), shown,
                               [{"map": "MAP", "posterior_std": "posterior std"}.get(f, f) for f in shown],
                               r.points, mesh_name=r.mesh.name)
            output.plot_history(os.path.join(out, "convergence.png"), r.result.history)
            output.plot_spectrum(os.path.join(out, "eigenvalues.png"), r.la.eigenvalues)
            output.plot_data_fit(os.path.join(out, "data_fit.png"), observed, predicted, noise_free)
        if r.chains is not None:
            _sampling_outputs(r)
        r.comm.barrier()


def _sampling_outputs(r: _Run) -> None:
    """traces.csv, chains.png, marginals.png, sampling_fields.png (rank 0) and the thinned samples of chain 0
    (mcmc_samples.pvd, its writer member)."""
    import firedrake as fd

    from pdeinv.cases import sampling_phase
    from pdeinv.cases.output import plot_fields

    out = r.out
    if r.writer and r.chains.fields:
        pvd = fd.VTKFile(os.path.join(out, "mcmc_samples.pvd"), comm=r.space)
        for f in r.chains.fields:
            pvd.write(f)
    if r.comm.rank == 0:
        sampling_phase.write_traces(os.path.join(out, "traces.csv"), r.chains)
        sampling_phase.plot_chains(os.path.join(out, "chains.png"), r.chains)
        sampling_phase.plot_marginals(os.path.join(out, "marginals.png"), r.chains, r.marginals)
        plot_fields(os.path.join(out, "sampling_fields.png"), os.path.join(out, "results.h5"),
                    ["map", "sample_mean", "posterior_std", "sample_std"],
                    ["MAP", "MCMC mean", "Laplace posterior std", "MCMC std"], mesh_name=r.mesh.name)


def _summary_phase(r: _Run, before_output) -> dict:
    """summary.json (atomically; recorded in the results manifest) and the closing log line."""
    import numpy as np

    from pdeinv.cases import output

    summary = _summary(r)
    if r.truth is not None:
        def rel_error(f):
            import firedrake as fd

            return float(np.sqrt(fd.assemble((f - r.truth) ** 2 * fd.dx) / fd.assemble(r.truth**2 * fd.dx)))

        summary |= {"relative_error": rel_error(r.result.m),
                    "prior_mean_relative_error": rel_error(r.fields["prior_mean"])}
        quality = (f"MAP error {summary['relative_error']:.3f} (prior mean "
                   f"{summary['prior_mean_relative_error']:.3f})")
    else:
        observed, predicted = r.arrays
        rms = float(np.sqrt(np.mean((predicted - observed) ** 2)))
        summary["data_rms_residual"] = rms
        quality = f"data RMS residual {rms:.3g}"
    output.atomic_json(os.path.join(r.out, "summary.json"), summary, r.comm)
    if r.comm.rank == 0:
        results_dir.record(r.out, set(_contents(r.out)) - set(before_output) | {"summary.json"})
    r.comm.barrier()
    res, la = r.result, r.la
    r.log.result(f"pdeinv case '{r.name}': {quality}, {res.iterations} Newton / {res.cg_iterations} "
                 f"CG iterations, {la.data_informed_dimension} data-informed directions, "
                 f"{time.perf_counter() - r.t_start:.1f} s -> {r.out}")
    return summary


def _summary(r: _Run) -> dict:
    """The run's numbers: configuration, solver that ran, sizes, iterations, costs, posterior."""
    import firedrake as fd

    from pdeinv.cases.config import config_hash

    res, la, cfg = r.result, r.la, r.cfg
    return {
        "case": r.name, "ranks": r.comm.size, "config": cfg, "config_hash": config_hash(cfg),
        "solver": _solver_record(cfg, r.model),
        "data_source": r.observed.source if r.observed is not None else "synthetic",
        "ensemble": {"members": _members(cfg), "ranks_per_member": r.space.size,
                     "experiments_per_member": None if r.ensemble is None else
                     r.ensemble.ensemble_comm.allgather(len(r.experiments))},
        "dofs": {"state": r.model.state_space.dim(), "parameter": r.V.dim(),
                 "observations": r.model.observation.n_points * r.channels},
        "newton_iterations": res.iterations, "cg_iterations": res.cg_iterations,
        "converged": bool(res.converged), "termination": res.reason,
        "pde_solves": {"map": r.solves_after_map, "total": r.total(r.model.counts["linear_solves"])},
        "hessian_actions_laplace": la.hessian_actions,
        "cost": res.cost.total, "cost_terms": {"misfit": res.cost.misfit, "regularization": res.cost.regularization},
        "data_informed_dim": la.data_informed_dimension, "eigenvalues": la.eigenvalues.tolist(),
        "identifiability": la.identifiability(r.var, r.pv),
        "expected_information_gain": la.expected_information_gain(),
        "prior_variance_trace": float(fd.assemble(r.pv * fd.dx)),
        "posterior_variance_trace": float(fd.assemble(r.var * fd.dx)),
        "timings": dict(r.log.timings), "resumed": bool(r.resume),
        "memory": _memory_record(r),
    } | ({"sampling": r.sampling} if r.sampling else {})


def _memory_record(r: _Run) -> dict:
    """Peak resident memory of the run (summed over ranks: ``ru_maxrss`` of each, including what was
    resumed from) next to preflight's estimate, so the estimate can be checked on the user's machine."""
    import resource

    peak = r.comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # kB on Linux
    size = r.size or r.case.size(r.cfg, vertices=r.V.dim())  # resumed from a file mesh: known only now
    return {"peak_mb": round(peak / resources.MB, 1),
            "estimated_mb": round(resources.memory_bytes(size, r.comm.size) / resources.MB, 1)}
