"""pdeinv: PDE-constrained inverse problems on Firedrake, pyadjoint and PETSc.

The data path, and where each step lives::

    parameter m (Function)
      -> forward model u = S(m)                   pdeinv.forward
      -> observation d = B(u)                     pdeinv.observation
      -> misfit + prior                           pdeinv.noise, pdeinv.prior
      -> derivatives (JVP, VJP, GN Hessian)       pdeinv.maps, checked by pdeinv.verify
      -> optimizer -> m_MAP                       pdeinv.optimize
      -> Laplace posterior                        pdeinv.posterior

Importing this package has no side effects: it imports neither Firedrake nor pyadjoint, starts no
tape and prints nothing.  Submodules import Firedrake when they are imported themselves.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__", "init_petsc", "unused_solver_options"]


def init_petsc(argv=None) -> None:
    """Start PETSc without the script's own command line (call before importing Firedrake in a script
    that parses its own arguments); see :func:`pdeinv._petsc.init_petsc`."""
    from pdeinv._petsc import init_petsc as _init

    _init(argv)


def unused_solver_options(parameters: dict, *, name: str = "solver_parameters") -> list:
    """Check a dict of PETSc KSP options before any real solve: the names PETSc would not read, or one
    ``ValueError`` naming ``name`` for an unknown solver type or a malformed value; see
    :func:`pdeinv._petsc.unused_solver_options`."""
    from pdeinv._petsc import unused_solver_options as _check

    return _check(parameters, name=name)
