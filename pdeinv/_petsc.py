"""Start PETSc without the program's own command line.

Firedrake initialises PETSc with ``sys.argv``; for the ``pdeinv`` command, pytest and the benchmarks
those are their own options, which PETSc would then report as unused.  Entry points call
:func:`init_petsc` before importing Firedrake; PETSc options then come from ``PETSC_OPTIONS``.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["init_petsc", "unused_solver_options"]


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


_PETSC_ERRORS = {56: "an option value PETSc cannot use here", 62: "an invalid option value",
                 63: "an option value out of range",
                 86: "an unknown type (not a PETSc KSP/PC name, or a package this PETSc was not built with)"}
_OUTPUT_OPTIONS = ("monitor", "view", "converged_reason", "log")  # read at solve time, not at setup


# Options that name code to import and run (a Python PC/KSP/SNES/Mat class), or that read more options
# from a file: refused unless the caller opts in (``allow_code``).
_CODE_WORDS = ("python_type", "python_context", "options_file", "options_monitor")
# Output options whose value may name a file (``ascii:FILE``, ``binary:FILE``, ``hdf5:FILE``, ...).
_FILE_WORDS = ("view", "monitor", "log", "history", "viewer", "draw", "converged_reason", "options_left")


def unsafe_options(flat: dict, *, allow_code: bool = False) -> str | None:
    """Why a set of (flattened) PETSc options may not come from a configuration, or None.

    An option that imports and runs code (``pc_python_type = "os.abort"``) or reads options from a file
    is refused unless ``allow_code``; a viewer or monitor given a file (``ksp_view = "ascii:/etc/passwd"``)
    is refused always: PETSc would truncate and overwrite any file the user can write.  Checked on the
    names and values alone: nothing named is imported or opened."""
    for key, value in flat.items():
        k = str(key).lower()
        if not allow_code and any(w in k for w in _CODE_WORDS):
            return (f"option {key!r} imports and runs code (or reads options from a file); refused in a "
                    "configuration unless the run is started with --allow-code-options")
        if any(w in k for w in _FILE_WORDS):
            why = _viewer_refusal(value if isinstance(value, str) else "")
            if why is not None:
                return (f"option {key!r} = {value!r} {why}; viewer and monitor output may only go to the terminal "
                        "(give no value, e.g. ksp_monitor = \"\", or a format only, e.g. \"::ascii_info\")")
    return None


def _viewer_refusal(text: str) -> str | None:
    """Why the viewer ``type:file:format:mode`` may not come from a configuration, or None: only the
    terminal (no type or ``ascii``, no file name) is allowed."""
    parts = text.strip().split(":")
    kind, file = parts[0].strip().lower(), (parts[1].strip() if len(parts) > 1 else "")
    if kind in ("draw", "x", "socket", "saws", "glvis", "matlab", "mathematica"):
        return "would open a window or a network connection"
    if kind not in ("", "ascii", "stdout") or file or "/" in text:
        return "would write a file"
    return None


def unused_solver_options(parameters: dict, *, name: str = "solver_parameters", allow_code: bool = False) -> list:
    """Check PETSc KSP options before any real solve: set them up on a small SPD system.

    Returns the options PETSc did not read (misspelt, or for another object), and raises ``ValueError``
    naming ``name`` when PETSc rejects one (an unknown ``ksp_type``/``pc_type``, a package not built,
    a malformed value).  Options that are read only while solving (monitors, viewers) count as used.
    Collective-free (``COMM_SELF``); milliseconds.  Options that write files or (unless ``allow_code``)
    run code are refused before PETSc sees any option (:func:`unsafe_options`).
    """
    import petsctools
    from petsc4py import PETSc

    if not isinstance(parameters, dict):
        raise TypeError(f"{name}: expected a dict of PETSc options, got {type(parameters).__name__}")
    flat = petsctools.flatten_parameters(parameters)
    why = unsafe_options(flat, allow_code=allow_code)
    if why is not None:
        raise ValueError(f"{name}: {why}")
    n = 64  # enough rows for multigrid to build a hierarchy and consume its level options
    A = PETSc.Mat().createAIJ([n, n], nnz=3, comm=PETSc.COMM_SELF)
    for i in range(n):
        A.setValue(i, i, 2.0)
        if i:
            A.setValue(i, i - 1, -1.0)
        if i < n - 1:
            A.setValue(i, i + 1, -1.0)
    A.assemble()
    ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp.setOperators(A)
    prefix = "pdeinv_check_"
    options = PETSc.Options()
    try:
        petsctools.set_from_options(ksp, parameters=parameters, options_prefix=prefix)
        with petsctools.inserted_options(ksp):
            ksp.setFromOptions()
            ksp.setUp()
            unused = [k for k in flat if not options.used(prefix + k)]
    except PETSc.Error as e:
        what = _PETSC_ERRORS.get(e.ierr, f"PETSc error {e.ierr}")
        raise ValueError(f"{name}: PETSc rejected {dict(flat)!r}: {what}") from None
    finally:
        ksp.destroy()
        A.destroy()
    return [k for k in unused if not any(word in k for word in _OUTPUT_OPTIONS)]
