"""The ``pdeinv`` command line.

``pdeinv selfcheck``
    Check the installed stack (convergence of a Poisson solve, Taylor test of a pyadjoint gradient);
    works under ``mpiexec``. Exit status 0 when both pass, 1 otherwise.
``pdeinv status DIR``
    Whether the run in results directory DIR is complete (exit 0), interrupted and resumable (75: rerun
    with ``--resume``), running (3: another process holds its lock), failed (1: the recorded reason) or
    empty (1).  For job scripts: after a signal, what ``mpiexec`` returns depends
    on the MPI (Open MPI's returns 1), while the ranks themselves exit 75.
``pdeinv info``
    Versions of pdeinv and of the stack underneath.
``pdeinv run CONFIG [--out DIR] [--set key=value ...] [--resume] [--overwrite] [--quiet] [--max-memory SIZE]
[--max-hours H] [--allow-code-options]``
    Run a case from its config.toml (see cases/); exit status 0, 2 (configuration error, before anything is
    written), 74 (no space left on the results directory's disk) or 75 (stopped by a signal after writing
    its checkpoint: rerun with --resume).  PETSc options come from the configuration's ``model.solver``
    (checked first) or the ``PETSC_OPTIONS`` environment variable, not from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main"]


def _cmd_selfcheck(args) -> int:
    from firedrake import COMM_WORLD

    from pdeinv.log import RankZeroLog
    from pdeinv.selfcheck import run_selfcheck

    comm = COMM_WORLD  # a command-line entry point owns the whole MPI job
    log = RankZeroLog(comm, quiet=args.quiet)
    log.info(f"pdeinv selfcheck on {comm.size} MPI rank(s)")
    with log.phase("selfcheck"):
        result = run_selfcheck(comm=comm, log=log)
    log.result(f"{'PASSED' if result.passed else 'FAILED'} in {log.timings['selfcheck']:.1f} s "
             f"(P1 L2 rate {min(result.convergence.rates):.3f}, Taylor rate {result.taylor.min_rate:.3f})")
    if args.json and comm.rank == 0:
        summary = result.as_dict() | {"timings": log.timings}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(summary, fh, indent=2)
        os.replace(tmp, args.json)  # never leave a half-written file
    return 0 if result.passed else 1


def _cmd_status(args) -> int:
    from mpi4py import MPI

    from pdeinv.cases.runner import run_status

    status, text = run_status(args.directory)
    if MPI.COMM_WORLD.rank == 0:  # under mpiexec every rank reads the same files: say it once
        sys.stdout.write(text + "\n")
    return status


def _cmd_info(args) -> int:
    from importlib.metadata import version

    import firedrake  # noqa: F401  (imports PETSc too)
    import petsc4py
    from firedrake import COMM_WORLD
    from petsc4py import PETSc

    import pdeinv
    from pdeinv.log import RankZeroLog

    log = RankZeroLog(COMM_WORLD)
    log.result(f"pdeinv     {pdeinv.__version__}")
    log.result(f"firedrake  {version('firedrake')}")
    log.result(f"pyadjoint  {version('pyadjoint-ad')}")
    log.result(f"petsc4py   {petsc4py.__version__}")
    log.result("PETSc      {}.{}.{}".format(*PETSc.Sys.getVersion()))
    log.result(f"PETSC_DIR  {petsc4py.get_config().get('PETSC_DIR')}")
    log.result(f"MPI ranks  {COMM_WORLD.size}")
    from pdeinv.linalg.device import device_status

    status = device_status(COMM_WORLD)  # model.solver = "gpu" works where this says "available"
    log.result("CUDA       " + ("available (every rank has a device)" if status.available else
                               f"not available: {status.reason}"))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "run":
        from pdeinv.cases.runner import main as run_main

        return run_main(argv[1:])
    parser = argparse.ArgumentParser(prog="pdeinv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("selfcheck", help="check the stack: Poisson convergence + adjoint Taylor test")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    p.set_defaults(func=_cmd_selfcheck)
    sub.add_parser("run", help="run a case: pdeinv run cases/<name>/config.toml [--out DIR] [--set k=v] [--resume]")
    p = sub.add_parser("info", help="versions of pdeinv and the stack")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("status", help="a results directory: complete (0), resumable (75), running (3), failed or "
                                      "empty (1)")
    p.add_argument("directory")
    p.set_defaults(func=_cmd_status)
    args = parser.parse_args(argv)
    if args.command == "status":  # no PETSc needed
        return args.func(args)
    from pdeinv._petsc import init_petsc

    init_petsc()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
