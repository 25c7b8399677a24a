"""Progress output on rank 0 of a communicator, with phase timings.

Every rank must call the methods (they are cheap and collective-free except for the printing rank),
so code stays identical on 1 and N ranks; only rank 0 of ``comm`` writes.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

__all__ = ["RankZeroLog"]


class RankZeroLog:
    """Print on rank 0 of ``comm`` and collect wall-clock timings per named phase.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The communicator of the objects being worked on (e.g. ``V.mesh().comm``), never COMM_WORLD
        by default.
    quiet : bool
        Suppress :meth:`info` output (timings are still collected).
    stream : file-like
        Where rank 0 writes (default ``sys.stdout``).
    announce_phases : bool
        Print ``[name] seconds`` at the end of every :meth:`phase`.
    """

    def __init__(self, comm, *, quiet: bool = False, stream=None, announce_phases: bool = False):
        self.comm = comm
        self.quiet = quiet
        self.announce_phases = announce_phases
        self.stream = stream if stream is not None else sys.stdout
        self.timings: dict[str, float] = {}

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    def info(self, message: str) -> None:
        """Write one line on rank 0 (unless quiet) and flush, so batch logs show progress live."""
        if self.is_root and not self.quiet:
            print(message, file=self.stream, flush=True)

    def result(self, message: str) -> None:
        """Like :meth:`info` but printed even when quiet (final results, errors)."""
        if self.is_root:
            print(message, file=self.stream, flush=True)

    @contextmanager
    def phase(self, name: str):
        """Time a block; the maximum over ranks is stored in ``timings[name]`` (accumulating)."""
        t0 = time.perf_counter()
        yield
        # Not in a `finally`: after an exception on one rank a collective here would hang the others.
        elapsed = self.comm.allreduce(time.perf_counter() - t0, op=_max_op())
        self.timings[name] = self.timings.get(name, 0.0) + elapsed
        if self.announce_phases:
            self.info(f"[{name}] {elapsed:.2f} s")


def _max_op():
    from mpi4py import MPI

    return MPI.MAX
