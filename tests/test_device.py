"""GPU-backed solves (pdeinv.linalg.device): the options, the refusal without a device, and the device
code path itself.

Three kinds of test:

- the option layout and its translation (closed forms);
- without CUDA in PETSc, or with CUDA but no device, asking for device solves is one clear
  :class:`~pdeinv.errors.DeviceError` (library) or configuration error, exit 2 (cases), raised when
  the operator is built / before the run starts — never a quiet CPU solve;
- :class:`~pdeinv.linalg.device.DeviceKSP`'s code (device matrix, copies in and out, transpose and
  blocked solves, PCKSP inside, reassembly) run with *host* PETSc types on a vector-valued state with
  Dirichlet conditions on one component and inhomogeneous values, against pdeinv's direct solver: the
  same lines run on a GPU with the device types; and, where a device is present, the same with the
  device types, asserting that the matrix the Krylov method iterates on really is a device matrix
  (skipped, with the reason, elsewhere: a silent fallback cannot pass).
"""

import subprocess
import sys

import firedrake as fd
import numpy as np
import pytest

import pdeinv.linalg.operator as operator_module
from pdeinv.errors import DeviceError
from pdeinv.forward.stationary import StationaryModel
from pdeinv.linalg.device import (
    OFFLOAD_PC,
    DeviceKSP,
    DeviceTypes,
    device_options,
    device_solver_parameters,
    device_status,
    linear_parameters,
    wants_device,
)
from pdeinv.linalg.operator import DirichletOperator
from pdeinv.observation import IntegralObservation

HOST_TYPES = DeviceTypes(mat="aij", vec="standard", dense="dense")
EXIT_CONFIG = 2


def _no_device_reason() -> str:
    status = device_status(fd.COMM_WORLD)
    return "" if status.available else status.reason


def host_parameters(symmetric):
    """The device options with the one device-only choice (cuSPARSE's ILU) replaced by PETSc's own."""
    params = device_solver_parameters(symmetric=symmetric)
    if not symmetric:
        params["offload_ksp_sub_pc_factor_mat_solver_type"] = "petsc"
    return params


# ------------------------------------------------------------------------------------------ options
def test_device_options_layout_is_offload_pc_with_a_device_krylov_solve():
    sym = device_solver_parameters(symmetric=True)
    assert sym["pc_python_type"] == OFFLOAD_PC and sym["ksp_type"] == "preonly" and wants_device(sym)
    assert device_options(sym) == {"ksp_type": "preonly", "pc_type": "ksp", "ksp_ksp_type": "cg",
                                   "ksp_pc_type": "gamg", "ksp_ksp_rtol": 1e-12, "ksp_ksp_atol": 0.0,
                                   "ksp_ksp_max_it": 10_000}
    non = device_options(device_solver_parameters(symmetric=False))
    assert non["ksp_ksp_type"] == "gmres" and non["ksp_sub_pc_factor_mat_solver_type"] == "cusparse"
    assert not wants_device({"ksp_type": "cg"}) and not wants_device(None)
    with pytest.raises(ValueError, match="not an OffloadPC layout"):
        device_options({"ksp_type": "cg"})
    newton = {"snes_rtol": 1e-10, **sym}
    assert linear_parameters(newton) == sym and linear_parameters({"snes_rtol": 1e-10}) is None


# ------------------------------------------------------------------------------------- no device
def vector_operator(mesh):
    """Vector P1 reaction-diffusion with a condition on one component and inhomogeneous values."""
    V = fd.VectorFunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    x, y = fd.SpatialCoordinate(mesh)
    a = (1 + x * y) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx + fd.inner(u, v) * fd.dx
    bcs = [fd.DirichletBC(V.sub(0), 0.0, 1), fd.DirichletBC(V, fd.Constant((0.2, -0.1)), 2)]
    return V, a, bcs


@pytest.mark.parallel(nprocs=[1, 2])
def test_device_solves_without_a_device_are_one_clear_error_when_built():
    reason = _no_device_reason()
    if not reason:
        pytest.skip("a CUDA device is present: the refusal cannot be seen here")
    V, a, bcs = vector_operator(fd.UnitSquareMesh(4, 4))
    with pytest.raises(DeviceError, match="solver_parameters asks for CUDA device solves") as err:
        DirichletOperator(a, bcs, solver_parameters=device_solver_parameters(symmetric=True))
    text = str(err.value)
    assert ("built without CUDA" in text and "make stack GPU=cuda" in text) or "found no CUDA device" in text
    # a nonlinear model: its Newton solves (Firedrake's OffloadPC would warn and solve on the CPU) too
    m = fd.Function(fd.FunctionSpace(V.mesh(), "CG", 1))
    u, w = fd.Function(V), fd.TestFunction(V)
    F = fd.exp(m) * fd.inner(fd.grad(u), fd.grad(w)) * fd.dx + fd.inner(u, u) * fd.inner(u, w) * fd.dx \
        - fd.inner(fd.Constant((1.0, 0.0)), w) * fd.dx
    obs = IntegralObservation(V, {"u0": lambda s: s[0] * fd.dx})
    with pytest.raises(DeviceError, match="CUDA"):
        StationaryModel(F, u, m, observation=obs, bcs=bcs[:1],
                        solver_parameters={"snes_rtol": 1e-10, **device_solver_parameters(symmetric=True)})


def test_case_with_gpu_solver_and_no_device_exits_2_before_any_work(tmp_path):
    if not _no_device_reason():
        pytest.skip("a CUDA device is present: the refusal cannot be seen here")
    out = tmp_path / "never"
    p = subprocess.run([sys.executable, "-m", "pdeinv", "run", "cases/heat/config.toml", "--set",
                        'model.solver="gpu"', "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == EXIT_CONFIG, p.stderr
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert 'model.solver = "gpu" asks for CUDA device solves' in p.stderr
    assert not out.exists()


# ------------------------------------------------------------------- the device path, host types
@pytest.fixture
def host_device(monkeypatch):
    """Device solves with host PETSc types: DeviceKSP's code, run on the CPU."""
    monkeypatch.setattr(operator_module, "require_device", lambda comm, what: HOST_TYPES)


def _relative(a, b):
    diff = fd.Function(a.function_space()).assign(a - b)
    return fd.norm(diff) / fd.norm(b)


def _solve_all(op, V, rhs):
    """Forward (with lifting), transpose and blocked solves of ``op``, as Functions / arrays."""
    u, w = fd.Function(V), fd.Function(V)
    with fd.assemble(rhs).dat.vec_ro as b0, u.dat.vec_wo as x:
        op.solve(b0.copy(), x)
    with fd.assemble(rhs).dat.vec_ro as b0, w.dat.vec_wo as x:
        op.solve_transpose(b0.copy(), x)
    from petsc4py import PETSc

    with u.dat.vec_ro as template:
        (n, N) = template.getSizes()
        rng = np.random.default_rng(7 + V.mesh().comm.rank)
        B = PETSc.Mat().createDense(((n, N), (None, 3)), array=rng.standard_normal((n, 3)), comm=template.getComm())
        X = PETSc.Mat().createDense(((n, N), (None, 3)), comm=template.getComm())
        X.setUp()
        op.solve_block(B, X)
        block = np.array(X.getDenseArray(readonly=True))
    return u, w, block


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_device_path_with_host_types_equals_the_direct_solver(host_device, symmetric):
    mesh = fd.UnitSquareMesh(6, 6)
    V, a, bcs = vector_operator(mesh)
    x, y = fd.SpatialCoordinate(mesh)
    if not symmetric:  # an advection term (transport-like): GMRES + block-Jacobi ILU
        beta = fd.as_vector((1.0 + y, -0.5))
        u, v = fd.TrialFunction(V), fd.TestFunction(V)
        a = a + fd.inner(fd.dot(fd.grad(u), beta), v) * fd.dx
    rhs = fd.inner(fd.as_vector((fd.sin(3 * x), x * y)), fd.TestFunction(V)) * fd.dx
    device = DirichletOperator(a, bcs, solver_parameters=host_parameters(symmetric), symmetric=symmetric)
    direct = DirichletOperator(a, bcs, symmetric=symmetric)
    assert isinstance(device.ksp, DeviceKSP) and device.ksp.device_matrix_type() in ("seqaij", "mpiaij")
    got, ref = _solve_all(device, V, rhs), _solve_all(direct, V, rhs)
    # Krylov to rtol 1e-12: the error is at most cond(A) * 1e-12 (cond ~ 1e2 on this mesh)
    assert _relative(got[0], ref[0]) < 1e-8 and _relative(got[1], ref[1]) < 1e-8
    assert np.allclose(got[2], ref[2], rtol=0, atol=1e-8 * np.abs(ref[2]).max())
    assert device.ksp.getIterationNumber() > 1  # a Krylov method iterated (not a direct solve in disguise)
    # a new parameter value: values copied into the same device matrix, the solves follow
    c = fd.Constant(1.0)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    a2 = a + c * fd.inner(u, v) * fd.dx
    device, direct = (DirichletOperator(a2, bcs, solver_parameters=host_parameters(symmetric), symmetric=symmetric),
                      DirichletOperator(a2, bcs, symmetric=symmetric))
    c.assign(5.0)
    device.reassemble()
    direct.reassemble()
    got, ref = _solve_all(device, V, rhs), _solve_all(direct, V, rhs)
    assert _relative(got[0], ref[0]) < 1e-8 and _relative(got[1], ref[1]) < 1e-8


# ------------------------------------------------------------------- the device path, on a device
@pytest.mark.parallel(nprocs=[1, 2])
def test_on_a_device_the_krylov_solve_iterates_on_device_matrices():
    reason = _no_device_reason()
    if reason:
        pytest.skip(f"no CUDA device: {reason}")
    mesh = fd.UnitSquareMesh(16, 16)
    V, a, bcs = vector_operator(mesh)
    x, y = fd.SpatialCoordinate(mesh)
    rhs = fd.inner(fd.as_vector((fd.sin(3 * x), x * y)), fd.TestFunction(V)) * fd.dx
    device = DirichletOperator(a, bcs, solver_parameters=device_solver_parameters(symmetric=True), symmetric=True)
    direct = DirichletOperator(a, bcs, symmetric=True)
    got, ref = _solve_all(device, V, rhs), _solve_all(direct, V, rhs)
    assert device.ksp.device_matrix_type() in ("seqaijcusparse", "mpiaijcusparse")
    assert device.ksp.device_vector_type() in ("seqcuda", "mpicuda")
    assert _relative(got[0], ref[0]) < 1e-8 and _relative(got[1], ref[1]) < 1e-8
    # Firedrake's own solver with the same options: OffloadPC's inner operator is a device matrix
    u = fd.Function(V)
    F = fd.action(a, u) - rhs
    problem = fd.NonlinearVariationalProblem(F, u, bcs=bcs)
    solver = fd.NonlinearVariationalSolver(problem, solver_parameters={"snes_type": "ksponly",
                                                                       **device_solver_parameters(symmetric=True)})
    solver.solve()
    inner = solver.snes.ksp.getPC().getPythonContext().pc
    assert inner.getOperators()[0].getType() in ("seqaijcusparse", "mpiaijcusparse")
    assert _relative(u, ref[0]) < 1e-8


def test_pdeinv_info_reports_whether_cuda_is_available():
    p = subprocess.run([sys.executable, "-m", "pdeinv", "info"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("CUDA"))
    reason = _no_device_reason()
    assert (f"not available: {reason}" in line) if reason else ("available" in line and "not" not in line)
