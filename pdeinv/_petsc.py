"""Start PETSc without the program's own command line.

Firedrake initialises PETSc with ``sys.argv``; for the ``pdeinv`` command, pytest and the benchmarks
those are their own options, which PETSc would then report as unused.  Entry points call
:func:`init_petsc` before importing Firedrake; PETSc options then come from ``PETSC_OPTIONS``.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["init_petsc"]


def init_petsc(argv=None) -> None:
    """Initialise petsc4py with ``argv`` (default: the program name only) — no-op if PETSc is
    already imported.  Call it before importing Firedrake in a script with its own command line
    (argparse): PETSc then does not see, and does not warn about, the script's options.

    ``argv``: a list of strings, e.g. ``[sys.argv[0], "-log_view"]`` to pass PETSc options explicitly
    (``PETSC_OPTIONS`` in the environment works too).
    """
    import petsc4py

    if argv is not None and (isinstance(argv, str) or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"init_petsc: argv must be a list of strings, got {argv!r}")
    if "petsc4py.PETSc" not in sys.modules:
        petsc4py.init(list(argv) if argv is not None else sys.argv[:1])
    # Firedrake then notes that PETSc was initialised already: that is the point.
    warnings.filterwarnings("ignore", message="Calling petsctools.init but PETSc has already")
