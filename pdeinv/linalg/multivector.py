r"""A block of Functions (a "multi-vector") with global inner products.

All small dense algebra (Gram matrices, Cholesky, eigen-decompositions of k×k matrices) is done
redundantly on every rank with NumPy; every inner product is a global PETSc dot, so results do not
depend on the number of ranks.

Random blocks
    :func:`random_multifunction` draws standard normal values at every dof from a counter-based
    hash of the dof's *coordinates*, the seed and the column: the same values whatever the mesh
    partition, so a randomized eigensolver gives the same answer on 1 and N ranks (Firedrake's
    random generators give the same *law*, not the same numbers).
"""

from __future__ import annotations

import numpy as np

from pdeinv.linalg.arrays import local_values, set_local_values

__all__ = ["dense_block", "from_dense_block", "MultiFunction", "random_multifunction", "combine_cofunctions"]

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
    return x ^ (x >> np.uint64(31))


def dof_coordinates(V):
    import firedrake as fd

    W = fd.VectorFunctionSpace(V.mesh(), V.ufl_element())
    X = fd.Function(W).interpolate(fd.SpatialCoordinate(V.mesh()))
    return np.array(X.dat.data_ro).reshape(len(fd.Function(V).dat.data_ro), -1)


class MultiFunction:
    """``k`` Functions on one space, as a list with block operations."""

    def __init__(self, space, functions):
        self.space = space
        self.functions = list(functions)

    @classmethod
    def zeros(cls, space, k: int):
        import firedrake as fd

        return cls(space, [fd.Function(space) for _ in range(k)])

    def __len__(self):
        return len(self.functions)

    def __getitem__(self, i):
        return self.functions[i]

    def pair(self, cofunctions) -> np.ndarray:
        """Matrix :math:`G_{ij} = \\langle c_i, x_j\\rangle` for Cofunctions ``c`` and the columns x: one
        local matrix product over the owned dofs and one allreduce (not k² collective dot products)."""
        if not cofunctions or not self.functions:
            return np.zeros((len(cofunctions), len(self.functions)))
        # owned dofs in the Vec layout: mixed spaces too, and an R dof counted once (on its owning rank)
        C = np.stack([local_values(c) for c in cofunctions], axis=0)
        X = np.stack([local_values(f) for f in self.functions], axis=-1)
        local = np.ascontiguousarray(C @ X)
        out = np.empty_like(local)
        from mpi4py import MPI

        self.space.mesh().comm.Allreduce(local, out, op=MPI.SUM)
        return out

    def combine(self, C: np.ndarray):
        """The block :math:`X C` (columns :math:`\\sum_i C_{ij} x_i`)."""
        out = MultiFunction.zeros(self.space, C.shape[1])
        if not self.functions:  # an empty block (rank 0): zero columns
            return out
        arrays = np.stack([local_values(f) for f in self.functions], axis=-1)  # local (n, k)
        for j, f in enumerate(out.functions):
            set_local_values(f, arrays @ C[:, j])
        return out


def combine_cofunctions(cofunctions, C: np.ndarray):
    """Columns :math:`\\sum_i C_{ij} c_i` of a list of Cofunctions."""
    import firedrake as fd

    space = cofunctions[0].function_space()
    arrays = np.stack([local_values(c) for c in cofunctions], axis=-1)
    out = []
    for j in range(C.shape[1]):
        c = fd.Cofunction(space)
        set_local_values(c, arrays @ C[:, j])
        out.append(c)
    return out


def _scalar_pieces(space):
    """The scalar parts of a space, as sub-spaces: itself (scalar), its components (vector, tensor), or
    those of each sub-field (mixed)."""
    fields = [space.sub(i) for i in range(len(space))] if len(space) > 1 else [space]
    out = []
    for F in fields:
        if F.value_shape == ():
            out.append(F)
        else:
            out.extend(F.sub(c) for c in range(int(np.prod(F.value_shape))))
    return out


def _piece_keys(piece, salt):
    """One 64-bit key per owned dof of a scalar piece: its quantised coordinates (the global dof number
    for a Real space, whose dofs have none), hashed with ``salt`` (the piece number and the seed)."""
    import firedrake as fd

    W = piece.collapse() if piece.parent is not None else piece
    if W.ufl_element().family() == "Real":
        with fd.Function(W).dat.vec_ro as x:  # a Real space's dofs live on one rank: global numbers
            start, end = x.getOwnershipRange()
        q = np.arange(start, end, dtype=np.int64).view(np.uint64)[:, None]
    else:
        q = np.round(dof_coordinates(W) * 2.0**32).astype(np.int64).view(np.uint64)  # quantised coordinates
    base = np.full(q.shape[0], salt, dtype=np.uint64)
    for d in range(q.shape[1]):
        base = _splitmix64(base ^ q[:, d])
    return base


def random_multifunction(space, k: int, *, seed: int) -> MultiFunction:
    """``k`` Functions of i.i.d. standard normal dof values, identical for any partition (see module).

    Any space: each scalar piece (a component, a sub-field, a Real block) hashes its dofs' coordinates
    with its own number, so components at one node get independent values."""
    from pdeinv.linalg.arrays import subspace_indices

    pieces = _scalar_pieces(space)
    seed64 = (int(seed) * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    keys = []
    for p, piece in enumerate(pieces):
        # arrays, not NumPy scalars: wrapping uint64 arithmetic is intended, and warns only on scalars
        salt = np.uint64(seed64) if len(pieces) == 1 else _splitmix64(np.array([seed64 ^ (p + 1)], dtype=np.uint64))[0]
        index = None if piece.parent is None else subspace_indices(piece)
        keys.append((index, _piece_keys(piece, salt)))
    out = MultiFunction.zeros(space, k)
    for j, f in enumerate(out.functions):
        with f.dat.vec_wo as x:
            arr = x.array
            for index, base in keys:
                h1 = _splitmix64(base ^ np.uint64(2 * j + 1))
                h2 = _splitmix64(h1 ^ np.uint64(0xD1B54A32D192ED03))
                u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
                u2 = ((h2 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
                values = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)  # Box-Muller
                if index is None:
                    arr[:] = values
                else:
                    arr[index] = values
    return out


def dense_block(functions, comm=None):
    """The owned dofs of ``functions`` (Functions or Cofunctions on one space) as the columns of a PETSc
    dense Mat (rows distributed like the space's Vecs, all columns on every rank)."""
    from petsc4py import PETSc

    f0 = functions[0]
    with f0.dat.vec_ro as v:
        n_local, n = v.getLocalSize(), v.getSize()
        comm = v.getComm()
    X = PETSc.Mat().createDense(((n_local, n), (PETSc.DECIDE, len(functions))), comm=comm)
    X.setUp()
    arr = X.getDenseArray()
    for j, f in enumerate(functions):
        arr[:, j] = local_values(f)
    X.assemble()
    return X


def from_dense_block(X, space, *, dual: bool = False, scale: float = 1.0, name=None):
    """The columns of a dense PETSc Mat as Functions (or Cofunctions, ``dual=True``) on ``space``."""
    import firedrake as fd

    arr = X.getDenseArray(readonly=True)
    out = []
    for j in range(arr.shape[1]):
        f = fd.Cofunction(space.dual(), name=name) if dual else fd.Function(space, name=name)
        set_local_values(f, scale * arr[:, j])
        out.append(f)
    return out
