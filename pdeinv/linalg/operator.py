"""An assembled linear operator with Dirichlet conditions and one reusable solver.

The forward, tangent-linear and adjoint models of a linear(ised) PDE all solve with the same
operator :math:`A` (the adjoint with :math:`A^T`).  :class:`DirichletOperator` assembles :math:`A`
once per parameter value, with Dirichlet rows *and* columns eliminated (Firedrake's symmetric
elimination), builds one PETSc KSP on it, and offers

- :meth:`solve` (with lifting of the boundary values, for the forward model),
- :meth:`solve_homogeneous` (zero boundary values: tangent-linear model),
- :meth:`solve_transpose` (zero boundary values: adjoint model),

all reusing the same factorisation (a direct solver factorises at the first solve after
:meth:`reassemble`).  Right-hand sides are PETSc Vecs: the time loops run on PETSc objects only,
with no UFL or form assembly per step.
"""

from __future__ import annotations

import itertools

import numpy as np

from pdeinv.linalg.device import DeviceKSP, require_device, wants_device

MUMPS_LU = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}


# Below these sizes a parallel run solves redundantly (see default_solver_parameters).
REDUNDANT_MAX_RANKS = 8
REDUNDANT_MAX_DOFS = 2_000_000


def default_solver_parameters(comm, *, symmetric: bool, space=None, singular: bool = False) -> dict:
    """Direct solver defaults.

    Saddle points and singular operators (``space`` mixed, or ``singular``: a nullspace was given):
    MUMPS LU, serial and parallel, with threshold pivoting (Taylor–Hood and other saddle-point matrices
    have zero diagonal blocks: PETSc's own LU without pivoting meets a zero pivot), and for a singular
    operator MUMPS's null-pivot detection (ICNTL(24)), the nullspace being projected out by
    :class:`DirichletOperator` after each solve.

    In serial, PETSc's own sparse Cholesky (symmetric operators) or LU with nested-dissection
    ordering: for the small 2D systems of a time loop its triangular solves are several times faster
    than MUMPS's (measured on the 64x64 heat problem: 0.046 s vs 0.22 s for 200 steps).

    In parallel, for a 2D problem (``space`` given) of at most :data:`REDUNDANT_MAX_DOFS` dofs on at most
    :data:`REDUNDANT_MAX_RANKS` ranks: the same factorisation *redundantly* on every rank (PCREDUNDANT:
    operator and right-hand side gathered, each rank solves the whole system).  Distributed triangular
    solves cost far more than they save at these sizes (heat 401², 50 steps, 2 ranks: 13 ms per solve
    redundant vs 44–53 ms MUMPS, 45 ms SuperLU_dist, 75 ms CG+GAMG; serial Cholesky 14 ms).  Otherwise
    (3D, larger problems, more ranks) MUMPS LU, whose distributed factorisation scales.
    """
    if singular or (space is not None and len(space) > 1):
        return dict(MUMPS_LU, **({"mat_mumps_icntl_24": 1} if singular else {}))
    if comm.size == 1:
        return {"ksp_type": "preonly", "pc_type": "cholesky" if symmetric else "lu",
                "pc_factor_mat_solver_type": "petsc", "pc_factor_mat_ordering_type": "nd"}
    if (space is not None and space.mesh().topological_dimension == 2 and comm.size <= REDUNDANT_MAX_RANKS
            and space.dim() <= REDUNDANT_MAX_DOFS):
        return {"ksp_type": "preonly", "pc_type": "redundant", "redundant_pc_type": "cholesky" if symmetric else "lu",
                "redundant_pc_factor_mat_solver_type": "petsc", "redundant_pc_factor_mat_ordering_type": "nd"}
    return dict(MUMPS_LU)


_prefix_counter = itertools.count()


def is_diagonal(mat) -> bool:
    """Whether the assembled (AIJ) PETSc ``mat`` has no nonzero entry off its diagonal, exactly: the
    local rows' entries are read (global column indices) and every rank's verdict is combined."""
    from mpi4py import MPI

    indptr, cols, vals = mat.getValuesCSR()
    start, _ = mat.getOwnershipRange()
    rows = np.repeat(np.arange(start, start + len(indptr) - 1), np.diff(indptr))
    local = bool(np.all((cols == rows) | (vals == 0.0)))
    return bool(mat.getComm().tompi4py().allreduce(local, op=MPI.LAND))


def inverse_diagonal(mat):
    """The reciprocal of the diagonal of ``mat`` as a PETSc Vec (one clear error for a zero entry)."""
    d = mat.getDiagonal()
    if _has_zero(d):
        from pdeinv.errors import ForwardSolveError

        raise ForwardSolveError("diagonal step operator with a zero entry: not invertible")
    d.reciprocal()
    return d


def _has_zero(vec) -> bool:
    from mpi4py import MPI

    local = bool(np.any(vec.array_r == 0.0))
    return bool(vec.getComm().tompi4py().allreduce(local, op=MPI.LOR))


def dirichlet_dofs(V, bcs) -> np.ndarray:
    """Indices, into the local part of a PETSc Vec of ``V``, of the dofs that the Dirichlet conditions
    ``bcs`` constrain.

    Found through Firedrake's own dof maps (each condition zeroes its dofs of a Function of ones), so
    that a vector space's ``bs*node + component`` layout, a condition on one component or on one
    sub-space of a mixed space, and ``DirichletBC`` subclasses with their own ``nodes`` (point
    conditions) all give the dofs the assembled operator eliminated.  ``bc.nodes`` are *nodes*: used
    as Vec indices they are wrong for every space with a block size above one.
    """
    import firedrake as fd
    from firedrake.petsc import PETSc

    marker = fd.Function(V)
    with marker.dat.vec_wo as x:
        x.set(1.0)
    for bc in bcs:
        bc.zero(marker)
    with marker.dat.vec_ro as x:
        return np.flatnonzero(x.array_r == 0.0).astype(PETSc.IntType)


class DirichletOperator:
    """Operator of the bilinear form ``a`` with Dirichlet conditions ``bcs`` and its solver.

    Parameters
    ----------
    a : ufl.Form
        Bilinear form; its coefficients may change, then call :meth:`reassemble`.
    bcs : list of firedrake.DirichletBC
    solver_parameters : dict, optional
        PETSc options for the KSP (default: :func:`default_solver_parameters`).
    symmetric : bool
        Whether ``a`` is symmetric (picks Cholesky over LU by default).
    options_prefix : str, optional
        Prefix so the user can set options on the command line / PETSC_OPTIONS.
    lift : bool
        Whether :meth:`solve` (inhomogeneous boundary values) is used.  ``False`` skips assembling the
        lifting term at every :meth:`reassemble` (tangent and adjoint operators only need
        :meth:`solve_homogeneous` and :meth:`solve_transpose`).
    """

    def __init__(self, a, bcs=(), *, solver_parameters=None, options_prefix=None, symmetric=False,
                 lift: bool = True, nullspace=None, transpose_nullspace=None):
        import firedrake as fd

        self.a = a
        self.bcs = list(bcs)
        V = a.arguments()[0].function_space()
        self.space = V
        self._use_lift = lift
        self.comm = V.mesh().comm
        self.matrix = fd.assemble(a, bcs=self.bcs, mat_type="aij")
        self.nullspace = nullspace
        self.transpose_nullspace = transpose_nullspace if transpose_nullspace is not None else nullspace
        self._attach_nullspaces()
        # a diagonal operator (a lumped mass, an explicit step) is inverted by a pointwise scaling, not a
        # factorisation; only by default (a user's own solver options are used as given)
        self.diagonal = solver_parameters is None and nullspace is None and is_diagonal(self.matrix.petscmat)
        self._inv_diag = inverse_diagonal(self.matrix.petscmat) if self.diagonal else None
        if solver_parameters is None:
            solver_parameters = default_solver_parameters(self.comm, symmetric=symmetric, space=V,
                                                          singular=nullspace is not None)
        self.solver_parameters = dict(solver_parameters)
        # device solves are checked here, before any solve: no device is one clear error (DeviceError)
        self.device_types = require_device(self.comm, "solver_parameters") if wants_device(solver_parameters) else None
        self.ksp = self._make_ksp(self.matrix.petscmat, options_prefix or f"pdeinv_{next(_prefix_counter)}_")
        # Boundary dofs owned by this rank (indices into the state's PETSc Vec), and their values.
        self.bc_dofs = dirichlet_dofs(V, self.bcs)
        g = fd.Function(V)
        for bc in self.bcs:
            bc.apply(g)
        with g.dat.vec_ro as gv:
            self._bc_values = np.array(gv.array_r[self.bc_dofs])  # used by every forward solve
        self.boundary_values = fd.Function(V)  # g on the boundary, 0 inside
        with self.boundary_values.dat.vec as bv:
            bv.array[self.bc_dofs] = self._bc_values
        self._lift = fd.Cofunction(V.dual())
        self._update_lift()
        self.solves = 0
        self.factorisations = 0
        self.iterations = 0  # Krylov iterations over all solves (1 per solve for a direct solver)
        self._stale = True

    def frozen_copy(self, options_prefix: str) -> DirichletOperator:
        """A copy of the operator as assembled now, with its own solver (factorised at its first solve):
        the linearisation of one time step kept while the parameter does not change.  It shares the
        form, conditions and boundary dofs, and must not be reassembled."""
        import copy

        new = copy.copy(self)
        new.matrix = _FrozenMatrix(self.matrix.petscmat.copy())
        new._attach_nullspaces()
        new.ksp = new._make_ksp(new.matrix.petscmat, options_prefix)
        new._inv_diag = self._inv_diag.copy() if self.diagonal else None
        new.solves = new.factorisations = new.iterations = 0
        new._stale = True
        return new

    def _make_ksp(self, mat, options_prefix: str):
        """The solver of ``mat``: a PETSc KSP with the solver options, or for device options a
        :class:`~pdeinv.linalg.device.DeviceKSP` (the same calls; the iterations run on the device)."""
        import petsctools
        from firedrake.petsc import PETSc

        if self.device_types is not None:
            ksp = DeviceKSP(self.comm, self.solver_parameters, options_prefix, self.device_types)
        else:
            ksp = PETSc.KSP().create(comm=self.comm)
            petsctools.set_from_options(ksp, parameters=self.solver_parameters, options_prefix=options_prefix)
        ksp.setOperators(mat)
        return ksp

    def _attach_nullspaces(self):
        """Hang the nullspaces on the matrix, for Krylov methods (a direct solve is projected by hand)."""
        if self.nullspace is not None:
            self.matrix.petscmat.setNullSpace(self.nullspace)
            self.matrix.petscmat.setTransposeNullSpace(self.transpose_nullspace)

    def _project(self, vec, transpose_space: bool) -> None:
        """Remove from ``vec`` its component in the (transpose) nullspace: a right-hand side made
        consistent, or a solution put in the gauge the derivatives are taken in."""
        ns = self.transpose_nullspace if transpose_space else self.nullspace
        if ns is not None:
            ns.remove(vec)

    def _project_block(self, X, transpose_space: bool) -> None:
        """:meth:`_project` of every column of a dense PETSc Mat."""
        ns = self.transpose_nullspace if transpose_space else self.nullspace
        if ns is None:
            return
        for j in range(X.getSize()[1]):
            col = X.getDenseColumnVec(j, "rw")
            ns.remove(col)
            X.restoreDenseColumnVec(j, "rw")

    def _update_lift(self):
        import firedrake as fd

        # A_full g restricted to the interior: moves the known boundary values to the right-hand side.
        if self.bcs and self._use_lift:  # collective: every rank assembles, even with no boundary nodes of its own
            fd.assemble(fd.action(self.a, self.boundary_values), tensor=self._lift)
            with self._lift.dat.vec as lift:
                lift.array[self.bc_dofs] = 0.0

    def reassemble(self) -> None:
        """Re-assemble A after its coefficients changed (the next solve re-factorises)."""
        import firedrake as fd

        fd.assemble(self.a, bcs=self.bcs, mat_type="aij", tensor=self.matrix)
        self._attach_nullspaces()
        self.ksp.setOperators(self.matrix.petscmat)
        self._update_lift()
        self._stale = True
        if self.diagonal:  # the same form keeps its pattern; checked, since values can fill it differently
            self.diagonal = is_diagonal(self.matrix.petscmat)
            self._inv_diag = inverse_diagonal(self.matrix.petscmat) if self.diagonal else None

    def _set_up(self):
        import petsctools

        if self._stale:
            # Options are read (and a direct solver factorises) at setUp; the solves that follow
            # need no options in the database, so the time loops do not pay for inserting them.
            if isinstance(self.ksp, DeviceKSP):
                self.ksp.setUp()
            else:
                with petsctools.inserted_options(self.ksp):
                    self.ksp.setUp()
            self.factorisations += 1
            self._stale = False

    def _last_iterations(self) -> int:
        """Krylov iterations of the last solve (of the device KSP's inner Krylov method)."""
        return self.ksp.getIterationNumber()

    def solve_block(self, B, X, *, transpose: bool = False) -> None:
        """Solve :math:`A X = B` (or :math:`A^T X = B`) for a dense block of right-hand sides at once
        (PETSc ``KSPMatSolve``: one pass through a direct solver's factors for all columns), with
        :math:`X = 0` on the boundary.  ``B`` (a dense PETSc Mat, modified) and ``X`` have the operator's
        row layout."""
        B.getDenseArray()[self.bc_dofs, :] = 0.0
        if self.diagonal:  # A = A^T = diag(d)
            X.getDenseArray()[:] = B.getDenseArray(readonly=True) * self._inv_diag.array_r[:, None]
            self.solves += B.getSize()[1]
            return
        self._project_block(B, transpose_space=not transpose)
        self._set_up()
        (self.ksp.matSolveTranspose if transpose else self.ksp.matSolve)(B, X)
        self.solves += B.getSize()[1]
        self.iterations += self._last_iterations() * B.getSize()[1]
        reason = self.ksp.getConvergedReason()
        if reason < 0:
            from pdeinv.errors import ForwardSolveError

            self.ksp.reset()
            self.ksp.setOperators(self.matrix.petscmat)
            self._stale = True
            raise ForwardSolveError(f"block linear solve failed (KSP reason {reason})")
        X.getDenseArray()[self.bc_dofs, :] = 0.0
        self._project_block(X, transpose_space=transpose)

    def _ksp_solve(self, b, x, transpose=False):
        if self.diagonal:  # A = A^T = diag(d): x = b / d
            x.pointwiseMult(b, self._inv_diag)
            self.solves += 1
            return
        self._set_up()
        # A x = b needs b orthogonal to the transpose nullspace, A^T x = b orthogonal to the nullspace; the
        # solution is returned orthogonal to the nullspace (of A, or of A^T for the transpose solve).
        self._project(b, transpose_space=not transpose)
        (self.ksp.solveTranspose if transpose else self.ksp.solve)(b, x)
        self._project(x, transpose_space=transpose)
        self.solves += 1
        self.iterations += self._last_iterations()
        reason = self.ksp.getConvergedReason()
        if reason < 0:
            from pdeinv.errors import ForwardSolveError

            # A failed factorisation leaves the PC in its failed state: start afresh at the next solve.
            self.ksp.reset()
            self.ksp.setOperators(self.matrix.petscmat)
            self._stale = True

            from petsc4py import PETSc

            names = {v: k for k, v in vars(PETSc.KSP.ConvergedReason).items() if isinstance(v, int)}
            raise ForwardSolveError(f"linear solve failed (KSP reason {reason}: {names.get(reason, '?')})")

    def solve(self, b, x) -> None:
        """Solve :math:`A x = b` with :math:`x = g` on the boundary.  ``b`` (a PETSc Vec, dual) is
        overwritten with the lifted right-hand side."""
        if not self._use_lift:
            raise RuntimeError("DirichletOperator: built with lift=False, solve() is not available")
        with self._lift.dat.vec_ro as lift:
            b.axpy(-1.0, lift)
        b.getArray()[self.bc_dofs] = self._bc_values
        self._ksp_solve(b, x)

    def solve_homogeneous(self, b, x) -> None:
        """Solve :math:`A x = b` with :math:`x = 0` on the boundary (``b`` is modified)."""
        b.getArray()[self.bc_dofs] = 0.0
        self._ksp_solve(b, x)

    def solve_transpose(self, b, x) -> None:
        """Solve :math:`A^T x = b` with :math:`x = 0` on the boundary (``b`` is modified)."""
        b.getArray()[self.bc_dofs] = 0.0
        self._ksp_solve(b, x, transpose=True)
        x.getArray()[self.bc_dofs] = 0.0


class _FrozenMatrix:
    """The assembled matrix of a :meth:`DirichletOperator.frozen_copy` (a PETSc Mat only)."""

    def __init__(self, petscmat):
        self.petscmat = petscmat


def petsc_nullspace(basis, V, name: str):
    """A PETSc NullSpace on the state space ``V`` from a Firedrake ``VectorSpaceBasis`` (on ``V``) or
    ``MixedVectorSpaceBasis`` (on a mixed ``V``; each sub-field's basis embedded through Firedrake's dof
    maps, :func:`~pdeinv.linalg.arrays.subspace_indices`), orthonormalised; None for None."""
    import firedrake as fd
    from firedrake.petsc import PETSc

    from pdeinv.linalg.arrays import subspace_indices

    if basis is None:
        return None
    if isinstance(basis, fd.VectorSpaceBasis):
        if len(V) > 1:
            raise ValueError(f"{name}: the state space is mixed: give a MixedVectorSpaceBasis, e.g. "
                             "MixedVectorSpaceBasis(Z, [Z.sub(0), VectorSpaceBasis(constant=True)])")
        return basis.nullspace()
    if not isinstance(basis, fd.MixedVectorSpaceBasis):
        raise TypeError(f"{name}: nullspace must be a firedrake VectorSpaceBasis or MixedVectorSpaceBasis, "
                        f"got {type(basis).__name__}")
    with fd.Function(V).dat.vec_ro as template:
        vecs = []
        for i, sub in enumerate(basis):
            if not isinstance(sub, fd.VectorSpaceBasis):
                continue  # a sub-space entry: no nullspace in that field
            ns = sub.nullspace()
            index = subspace_indices(V.sub(i))
            pieces = [v.array_r for v in ns.getVecs()] + ([np.ones(len(index))] if ns.hasConstant() else [])
            for piece in pieces:
                vec = template.duplicate()
                vec.zeroEntries()
                vec.getArray()[index] = piece
                vecs.append(vec)
    for k, vec in enumerate(vecs):  # Gram-Schmidt with global dots
        for prev in vecs[:k]:
            vec.axpy(-vec.dot(prev), prev)
        vec.normalize()
    return PETSc.NullSpace().create(vectors=vecs, comm=V.mesh().comm)
