"""Owned dof values of any Function or Cofunction as one flat array (scalar, vector, tensor, mixed).

``f.dat.data`` is an array for a plain space but a *tuple* of arrays for a mixed one, and its shape
carries the block size.  The PETSc Vec of a Function is always one flat array of the owned dofs, in
the layout every solver, matrix and observation in pdeinv works with; these helpers go through it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["local_values", "set_local_values", "axpy", "scale", "root_space", "subspace_indices"]


def local_values(f) -> np.ndarray:
    """A copy of the owned dof values of ``f`` (flat, in its PETSc Vec layout)."""
    with f.dat.vec_ro as x:
        return np.array(x.array_r)


def set_local_values(f, values) -> None:
    """Overwrite the owned dof values of ``f`` with the flat array ``values``."""
    with f.dat.vec_wo as x:
        x.array[:] = values


def axpy(y, alpha: float, x) -> None:
    """``y += alpha * x`` for two Functions (or two Cofunctions) on one space."""
    with y.dat.vec as yv, x.dat.vec_ro as xv:
        yv.axpy(alpha, xv)


def scale(f, alpha: float) -> None:
    """``f *= alpha`` for a Function or Cofunction of any space (no kernel, no UFL)."""
    with f.dat.vec as v:
        v.scale(alpha)


def root_space(V):
    """The space a sub-space (``Z.sub(i)``, ``V.sub(c)``, nested) was taken from; ``V`` itself otherwise."""
    while V.parent is not None:
        V = V.parent
    return V


def _path(V):
    """Indices from the root space down to ``V`` (sub-field and component numbers, outermost first)."""
    out = []
    while V.parent is not None:
        out.append(V.index if V.index is not None else V.component)
        V = V.parent
    return tuple(reversed(out))


def subspace_indices(space) -> np.ndarray:
    """Local indices, into the owned part of a PETSc Vec of the root space, of the dofs of the sub-space
    ``space`` (a sub-field ``Z.sub(i)``, a component ``V.sub(c)``, or nested), ordered as the Vec of
    ``space.collapse()``.

    Found through Firedrake's own dof maps: a numbering is written into the sub-Function and read back
    from the root Function's Vec, so block sizes, mixed layouts and partitions need no index arithmetic.
    """
    import firedrake as fd

    numbering = fd.Function(space.collapse())
    with numbering.dat.vec_wo as x:
        x.array[:] = np.arange(1, x.getLocalSize() + 1, dtype=float)
    full = fd.Function(root_space(space))
    sub = full
    for i in _path(space):
        sub = sub.sub(i)
    sub.dat.data[:] = numbering.dat.data_ro
    values = local_values(full)
    where = np.flatnonzero(values > 0)
    return where[np.argsort(values[where], kind="stable")]
