"""Start PETSc without the program's own command line.

Firedrake initialises PETSc with ``sys.argv``; for the ``pdeinv`` command, pytest and the benchmarks
those are their own options, which PETSc would then report as unused.  Entry points call
:func:`init_petsc` before importing Firedrake; PETSc options then come from ``PETSC_OPTIONS``.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["init_petsc"]


def init_petsc() -> None:
    """Initialise petsc4py with the program name only (no-op if PETSc is already imported)."""
    import petsc4py

    if "petsc4py.PETSc" not in sys.modules:
        petsc4py.init(sys.argv[:1])
    # Firedrake then notes that PETSc was initialised already: that is the point.
    warnings.filterwarnings("ignore", message="Calling petsctools.init but PETSc has already")
