"""GPU-backed linear solves: device matrices, vectors and Krylov methods, chosen by solver options.

pdeinv spells a device solve the way Firedrake does, with :class:`firedrake.OffloadPC`: the host KSP
applies the Python preconditioner ``OffloadPC`` once (``ksp_type = preonly``), and the options under the
``offload_`` prefix say what runs on the device — here a PCKSP, i.e. a whole Krylov solve on device
matrices and vectors (:func:`device_solver_parameters`)::

    {"ksp_type": "preonly", "pc_type": "python", "pc_python_type": "firedrake.OffloadPC",
     "offload_pc_type": "ksp", "offload_ksp_ksp_type": "cg", "offload_ksp_pc_type": "gamg", ...}

The same dictionary works in both places a pdeinv model solves:

- Firedrake's own solvers (the Newton solves of nonlinear models, a user's ``NonlinearVariationalSolver``)
  run it through OffloadPC;
- pdeinv's assembled operators (:class:`~pdeinv.linalg.operator.DirichletOperator`: linear forward,
  tangent-linear and adjoint solves, the blocked solves of the Laplace eigensolver) run it through
  :class:`DeviceKSP`, which has no Firedrake solver (no DM) to hang OffloadPC on.

Either way the right-hand side is copied to the device once and the solution back once per solve
(per block of columns for a blocked solve): the Krylov iterations touch device memory only.

OffloadPC solves on the host, with a warning only, when it finds no device.  A run that asked for a GPU
must not quietly run on the CPU, so pdeinv checks first (:func:`require_device`, called when an operator
is built and by the cases before any solve) and raises :class:`~pdeinv.errors.DeviceError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DeviceKind", "DeviceTypes", "DeviceStatus", "DeviceKSP", "device_solver_parameters", "wants_device",
           "device_options", "device_status", "require_device", "check_device", "linear_parameters", "OFFLOAD_PC"]

OFFLOAD_PC = "firedrake.OffloadPC"
_OFFLOAD = "offload_"


class DeviceKind(enum.Enum):
    """The device back-ends pdeinv knows (PETSc's device types)."""

    CUDA = "cuda"


@dataclass(frozen=True)
class DeviceTypes:
    """PETSc type names of a device's sparse matrices, vectors and dense blocks."""

    mat: str
    vec: str
    dense: str


DEVICE_TYPES = {DeviceKind.CUDA: DeviceTypes(mat="aijcusparse", vec="cuda", dense="densecuda")}


def device_solver_parameters(*, symmetric: bool, rtol: float = 1e-12) -> dict:
    """PETSc options for a whole Krylov solve on the device.

    Symmetric (positive definite) operators: CG preconditioned by smoothed-aggregation algebraic
    multigrid (PETSc GAMG; its Chebyshev/Jacobi smoothers and the coarse-grid products run on device
    matrices).  Others (transport): GMRES preconditioned by block Jacobi with cuSPARSE's incomplete LU
    (ILU(0)) on each rank's block.  ``rtol``: relative residual tolerance, far below any optimizer's
    so that derivatives stay consistent to Taylor-test accuracy (as the CPU ``"iterative"`` setting).
    """
    inner = ({"ksp_type": "cg", "pc_type": "gamg"} if symmetric else
             {"ksp_type": "gmres", "ksp_gmres_restart": 100, "pc_type": "bjacobi", "sub_pc_type": "ilu",
              "sub_pc_factor_mat_solver_type": "cusparse"})
    inner.update({"ksp_rtol": rtol, "ksp_atol": 0.0, "ksp_max_it": 10_000})
    params = {"ksp_type": "preonly", "pc_type": "python", "pc_python_type": OFFLOAD_PC, "offload_pc_type": "ksp"}
    params.update({f"{_OFFLOAD}ksp_{k}": v for k, v in inner.items()})
    return params


def _flat(parameters) -> dict:
    import petsctools

    return dict(petsctools.flatten_parameters(dict(parameters or {})))


def wants_device(parameters) -> bool:
    """Whether the solver options ``parameters`` put the solve on a device (the OffloadPC layout)."""
    return _flat(parameters).get("pc_python_type") == OFFLOAD_PC


def device_options(parameters) -> dict:
    """The options of the KSP that runs on the device for OffloadPC-layout ``parameters``: the host
    KSP's own ``ksp_*`` options and the ``offload_*`` ones without their prefix (``offload_pc_type =
    "ksp"`` becomes ``pc_type = "ksp"``, whose inner KSP reads ``ksp_ksp_type``, ...)."""
    flat = _flat(parameters)
    if flat.get("pc_python_type") != OFFLOAD_PC:
        raise ValueError(f"device_options: not an OffloadPC layout (pc_python_type = {OFFLOAD_PC!r}): {flat!r}")
    opts = {k: v for k, v in flat.items() if k.startswith("ksp_")}
    opts.update({k[len(_OFFLOAD):]: v for k, v in flat.items() if k.startswith(_OFFLOAD)})
    return opts


@dataclass(frozen=True)
class DeviceStatus:
    """What this PETSc can do with a device, on every rank of a communicator.

    ``petsc_has_cuda``: PETSc was configured with CUDA.  ``available``: every rank initialised a CUDA
    device.  ``reason``: why not, for an error message ("" when available)."""

    petsc_has_cuda: bool
    available: bool
    reason: str


def device_status(comm, kind: DeviceKind = DeviceKind.CUDA) -> DeviceStatus:
    """Whether every rank of ``comm`` can solve on a ``kind`` device (collective: one verdict for all)."""
    from petsc4py import PETSc

    if not PETSc.Sys.hasExternalPackage(kind.value):
        return DeviceStatus(False, False, f"this PETSc ({_petsc_location()}) was built without {kind.name}")
    # Firedrake's own probe (initialises PETSc's default device once; None where that fails)
    from firedrake.utils import get_device_type

    found = comm.allgather(get_device_type() == kind.name)
    bad = [r for r, ok in enumerate(found) if not ok]
    if bad:
        return DeviceStatus(True, False, f"PETSc has {kind.name} but rank(s) {bad} of {comm.size} found no {kind.name} "
                                         "device (no GPU, or no driver)")
    return DeviceStatus(True, True, "")


def _petsc_location() -> str:
    import petsc4py

    cfg = petsc4py.get_config()
    return f"PETSC_DIR={cfg.get('PETSC_DIR', '?')}, PETSC_ARCH={cfg.get('PETSC_ARCH', '') or '-'}"


def require_device(comm, what: str, kind: DeviceKind = DeviceKind.CUDA) -> DeviceTypes:
    """The device's PETSc types, or :class:`~pdeinv.errors.DeviceError` naming ``what`` asked for it,
    why it cannot have it and what to do (collective).  Never falls back to the CPU."""
    from pdeinv.errors import DeviceError

    status = device_status(comm, kind)
    if not status.available:
        fix = ("build the CUDA stack (`make stack GPU=cuda`, docs/gpu.md)" if not status.petsc_has_cuda
               else "run on a node with a GPU")
        raise DeviceError(f"{what} asks for {kind.name} device solves, but {status.reason}; {fix}, or choose a "
                          "CPU solver (model.solver = \"direct\" or \"iterative\")")
    return device_types(kind)


def check_device(parameters, comm, what: str) -> None:
    """:func:`require_device` where the solver options ``parameters`` ask for a device; else nothing."""
    if wants_device(parameters):
        require_device(comm, what)


def linear_parameters(parameters):
    """The linear-solve part of a nonlinear solver's device options (its ``snes_*`` options dropped),
    for the tangent-linear and adjoint solves of the same operator; None for host options (the
    linearised operator then gets pdeinv's default solver)."""
    if not wants_device(parameters):
        return None
    return {k: v for k, v in _flat(parameters).items() if not k.startswith("snes_")}


def device_types(kind: DeviceKind = DeviceKind.CUDA) -> DeviceTypes:
    """PETSc type names for ``kind`` (a seam for tests: host types run the same code on the CPU)."""
    return DEVICE_TYPES[kind]


class DeviceKSP:
    """A Krylov solve on a device copy of an assembled host matrix, with host vectors in and out.

    The KSP-like subset :class:`~pdeinv.linalg.operator.DirichletOperator` uses: :meth:`setOperators`
    (the host matrix; its values are copied into the device matrix, whose sparsity is kept),
    :meth:`setUp`, :meth:`solve` / :meth:`solveTranspose` (host Vecs: one copy to the device, one back),
    :meth:`matSolve` / :meth:`matSolveTranspose` (dense host blocks: one copy each way per block),
    :meth:`getConvergedReason`, :meth:`getIterationNumber`, :meth:`reset`.  :attr:`ksp` is the PETSc KSP on the device.

    Parameters
    ----------
    comm : MPI communicator of the operator.
    parameters : dict
        OffloadPC-layout options (:func:`device_solver_parameters`).
    options_prefix : str
    types : DeviceTypes
        From :func:`require_device`.
    """

    def __init__(self, comm, parameters, options_prefix: str, types: DeviceTypes):
        import petsctools
        from petsc4py import PETSc

        self.types = types
        self.ksp = PETSc.KSP().create(comm=comm)
        petsctools.set_from_options(self.ksp, parameters=device_options(parameters), options_prefix=options_prefix)
        self._mat = self._x = self._b = None
        self._blocks = {}

    def setOperators(self, host) -> None:  # noqa: N802 (PETSc's name: the object stands in for a KSP)
        """Copy the values of the assembled host matrix ``host`` to the device (first call: convert)."""
        from petsc4py import PETSc

        if self._mat is None:
            self._mat = host.convert(self.types.mat)
            self._x, self._b = self._mat.createVecs()
            self._blocks = {}
        else:
            host.copy(self._mat, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
        self.ksp.setOperators(self._mat)

    def setUp(self) -> None:  # noqa: N802
        import petsctools

        with petsctools.inserted_options(self.ksp):
            self.ksp.setUp()

    def _solve(self, b, x, transpose: bool) -> None:
        self._b.getArray()[:] = b.array_r  # host write; the solve copies it to the device once
        (self.ksp.solveTranspose if transpose else self.ksp.solve)(self._b, self._x)
        x.getArray()[:] = self._x.getArray(readonly=True)  # one copy back

    def solve(self, b, x) -> None:
        self._solve(b, x, transpose=False)

    def solveTranspose(self, b, x) -> None:  # noqa: N802
        self._solve(b, x, transpose=True)

    def _block(self, ncols: int):
        """Device dense blocks (right-hand sides, solutions) of ``ncols`` columns, made once per width."""
        from petsc4py import PETSc

        if ncols not in self._blocks:
            (m, M), _ = self._mat.getSizes()
            pair = []
            for _k in range(2):
                D = PETSc.Mat().create(comm=self._mat.getComm())
                D.setSizes(((m, M), (None, ncols)))
                D.setType(self.types.dense)
                D.setUp()
                pair.append(D)
            self._blocks[ncols] = tuple(pair)
        return self._blocks[ncols]

    def _mat_solve(self, B, X, transpose: bool) -> None:
        Bd, Xd = self._block(B.getSize()[1])
        Bd.getDenseArray()[:] = B.getDenseArray(readonly=True)
        (self.ksp.matSolveTranspose if transpose else self.ksp.matSolve)(Bd, Xd)
        X.getDenseArray()[:] = Xd.getDenseArray(readonly=True)

    def matSolve(self, B, X) -> None:  # noqa: N802
        self._mat_solve(B, X, transpose=False)

    def matSolveTranspose(self, B, X) -> None:  # noqa: N802
        self._mat_solve(B, X, transpose=True)

    def getConvergedReason(self) -> int:  # noqa: N802
        """The reason of the device Krylov solve (of PCKSP's inner KSP where there is one)."""
        inner = self.inner_ksp()
        reason = inner.getConvergedReason()
        return reason if reason < 0 else self.ksp.getConvergedReason()

    def inner_ksp(self):
        """The KSP that iterates: PCKSP's inner KSP, or :attr:`ksp` itself."""
        pc = self.ksp.getPC()
        return pc.getKSP() if pc.getType() == "ksp" else self.ksp

    def getIterationNumber(self) -> int:  # noqa: N802
        """Krylov iterations of the last solve (of the inner Krylov method)."""
        return self.inner_ksp().getIterationNumber()

    def device_matrix_type(self) -> str | None:
        """The PETSc type of the matrix the device KSP iterates on (None before :meth:`setOperators`)."""
        return None if self._mat is None else self._mat.getType()

    def device_vector_type(self) -> str | None:
        """The PETSc type of the vectors the device KSP iterates on (None before :meth:`setOperators`)."""
        return None if self._x is None else self._x.getType()

    def reset(self) -> None:
        self.ksp.reset()
