"""Ctrl-C never lands inside a PETSc call: a KeyboardInterrupt waits for the pdeinv call that is running.

Python raises KeyboardInterrupt at the next bytecode, which may be inside a Python callback that PETSc is
running (Firedrake's residual and Jacobian in a SNES solve, a Python PC, a monitor).  PETSc then unwinds
without its clean-up — a solution Vec stays read-locked — and every later solve of that model fails with
PETSc error 73; worse, the interrupt surfaced as a PETSc error and was taken for a failed solve.  So the
public methods of pdeinv's maps, misfits, priors and problems (the same ones that run unannotated) defer
SIGINT: the signal is noted, the call finishes, and the KeyboardInterrupt is raised as it returns, with
every PETSc object in a clean state.  A second Ctrl-C only repeats that the stop is pending (SIGTERM or
SIGQUIT still end a process at once).

Deferred only where Python's own handler is in place, in the main thread: a caller's own SIGINT handler
(a case run's exit-at-once handler included) is left alone.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

__all__ = ["interrupts_deferred"]

_depth = 0
_pending = False


def _note(signum, frame):
    global _pending
    if _pending:
        os.write(2, b"pdeinv: interrupt pending: it is raised once the running PDE solve returns\n")
    _pending = True


@contextmanager
def interrupts_deferred():
    """Within the block, SIGINT is held back and raised as KeyboardInterrupt on leaving it (re-entrant)."""
    global _depth, _pending
    install = (_depth == 0 and threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if install:
        signal.signal(signal.SIGINT, _note)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if install:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if _pending:
                _pending = False
                raise KeyboardInterrupt
