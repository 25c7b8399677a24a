"""Device (GPU) solves against CPU ranks on the heat and Poisson cases.  Prints one JSON object.

    # the CPU run (CG + GAMG on 16 ranks) saves its results for the comparison
    mpiexec -n 16 .venv/bin/python benchmarks/gpu.py --case poisson --n 708 --solver cpu --save cpu.npz
    # the GPU run (one rank, one device; CUDA stack: make stack GPU=cuda), compared with the CPU run
    .venv/bin/python benchmarks/gpu.py --case poisson --n 708 --solver gpu --reference cpu.npz

``--solver cpu`` is ``model.solver = "iterative"`` (CG + GAMG for the symmetric heat and Poisson operators),
``gpu`` is ``model.solver = "gpu"`` (the same Krylov method and preconditioner on device matrices and
vectors, :func:`pdeinv.linalg.device.device_solver_parameters`), so iteration counts compare one to one.
Sizes: the Poisson state is P2 (``--n 708``: 2.0e6 state dofs; 1581: 1.0e7), the heat state P1 (``--n 1000``:
1.0e6; 3162: 1.0e7).

Measured, each after one untimed warm-up (kernels compiled, device matrix built): one forward solve at a new
parameter, one misfit gradient, one Gauss-Newton Hessian action, and (``--rank``, default 50) one low-rank
Laplace eigensolve of the prior-preconditioned Gauss-Newton Hessian (double pass: its blocked solves run
through the same operator).  Per phase: seconds, linear solves, Krylov iterations per solve; for device runs
the host<->device copies per solve, from PETSc's own log (the events ``VecCUDACopyTo``/``VecCUDACopyFrom``:
vector copies; ``MatCUSPARSCopyTo``: matrix copies; the numbers ``-log_view`` prints in its GPU columns).
With ``--reference`` (a ``--save`` file of another run of the same case and mesh), the relative 2-norm
differences of the predicted data, the gradient and the Gauss-Newton action to it.

Without CUDA in PETSc, or with no device, ``--solver gpu`` stops at once with the library's one clear error
(exit 2): there is no CPU fallback to measure by mistake.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pdeinv._petsc import init_petsc

init_petsc()

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402
from firedrake.petsc import PETSc  # noqa: E402

from pdeinv.cases.config import load_config  # noqa: E402
from pdeinv.errors import DeviceError  # noqa: E402
from pdeinv.linalg.device import require_device  # noqa: E402
from pdeinv.maps import Misfit  # noqa: E402
from pdeinv.posterior import LaplaceApproximation  # noqa: E402
from pdeinv.problem import InverseProblem  # noqa: E402

COPY_EVENTS = {"vector_to_device": "VecCUDACopyTo", "vector_to_host": "VecCUDACopyFrom",
               "matrix_to_device": "MatCUSPARSCopyTo"}
SETTING = {"cpu": "iterative", "gpu": "gpu"}


def build(case, n, solver, comm):
    """(misfit, problem, model, truth) of the case's configuration on an n x n mesh with ``model.solver``."""
    import importlib

    module = importlib.import_module(f"pdeinv.cases.{case}")
    cfg = load_config(module.CASE.defaults, None, [f"mesh.n={n}", f'model.solver="{SETTING[solver]}"'])
    mesh = fd.UnitSquareMesh(n, n, comm=comm, name="mesh")
    model, prior, truth, _ = module.CASE.build(cfg, mesh)
    clean = model(truth)
    noise = module.CASE.make_noise(cfg, model, clean)
    misfit = Misfit(model, noise, noise.sample(clean, seed=cfg["data"]["seed"]))
    return misfit, InverseProblem(misfit, prior), model, truth


def _copies() -> dict:
    # PETSc's own events (registered by a CUDA build; elsewhere made here, and never counted)
    return {key: PETSc.Log.Event(name).getPerfInfo()["count"] for key, name in COPY_EVENTS.items()}


def phase(model, fn, comm):
    """Run ``fn`` once; its seconds, solves, Krylov iterations per solve and copies per solve."""
    solves0, its0, copies0 = model.counts["linear_solves"], model.counts["krylov_iterations"], _copies()
    comm.barrier()
    t0 = time.perf_counter()
    value = fn()
    comm.barrier()
    seconds = time.perf_counter() - t0
    solves = model.counts["linear_solves"] - solves0
    res = {"seconds": seconds, "solves": solves,
           "iterations_per_solve": (model.counts["krylov_iterations"] - its0) / max(solves, 1)}
    copies = _copies()
    res["copies_per_solve"] = {k: (copies[k] - copies0[k]) / max(solves, 1) for k in copies}
    return res, value


def gathered(f) -> np.ndarray:
    """The values of a parameter-space Function/Cofunction on every rank, sorted by the coordinates of
    their dofs: the same array on any number of ranks (PETSc's numbering follows the partition)."""
    V = f.function_space()
    V = V.dual() if isinstance(f, fd.Cofunction) else V
    mesh = V.mesh()
    X = fd.Function(fd.VectorFunctionSpace(mesh, V.ufl_element())).interpolate(fd.SpatialCoordinate(mesh))
    n = V.dof_dset.size  # owned dofs
    comm = mesh.comm
    xs = np.concatenate(comm.allgather(np.array(X.dat.data_ro[:n])))
    vals = np.concatenate(comm.allgather(np.array(f.dat.data_ro[:n])))
    return vals[np.lexsort(xs.T[::-1])]


def measure(args, comm):
    misfit, problem, model, truth = build(args.case, args.n, args.solver, comm)
    x, y = fd.SpatialCoordinate(truth.function_space().mesh())
    m = fd.Function(model.parameter_space).assign(truth)
    m.interpolate(m + 0.1 * fd.sin(fd.pi * x) * y)  # a new parameter: the forward really solves
    dm = fd.Function(model.parameter_space).interpolate(fd.cos(2 * x) * y)
    misfit.gradient(m)
    misfit.gauss_newton_action(m, dm)  # warm-up
    model.invalidate()
    res = {"case": args.case, "solver": args.solver, "n": args.n, "state_dofs": model.state_space.dim(),
           "parameter_dofs": model.parameter_space.dim(), "ranks": comm.size, "linear_solver": model.linear_solver}
    values = {}
    res["forward"], values["prediction"] = phase(model, lambda: model(m), comm)
    res["gradient"], values["gradient"] = phase(model, lambda: misfit.gradient(m), comm)
    res["gn_action"], values["gn_action"] = phase(model, lambda: misfit.gauss_newton_action(m, dm), comm)
    if args.rank:
        res["laplace"], la = phase(model, lambda: LaplaceApproximation(problem, m, rank=args.rank,
                                                                       oversampling=args.oversampling), comm)
        res["laplace"]["rank"], res["laplace"]["largest_eigenvalue"] = args.rank, float(la.eigenvalues[0])
    arrays = {"prediction": model.observation.to_array(values.pop("prediction")).ravel()}
    arrays.update({k: gathered(v) for k, v in values.items()})
    return res, arrays


def compare(values, reference_file) -> dict:
    ref = np.load(reference_file)
    return {k: float(np.linalg.norm(values[k] - ref[k]) / np.linalg.norm(ref[k])) for k in values}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=("heat", "poisson"), default="poisson")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--solver", choices=tuple(SETTING), default="cpu")
    p.add_argument("--rank", type=int, default=50, help="Laplace rank (0: no eigensolve)")
    p.add_argument("--oversampling", type=int, default=10)
    p.add_argument("--save", help="write the prediction, gradient and GN action here (.npz, rank 0)")
    p.add_argument("--reference", help="a --save file of another run to compare with")
    args = p.parse_args()
    comm = fd.COMM_WORLD
    PETSc.Log.begin()
    if args.solver == "gpu":
        try:
            require_device(comm, "benchmarks/gpu.py --solver gpu")
        except DeviceError as e:
            if comm.rank == 0:
                print(f"gpu.py: {e}", file=sys.stderr)
            sys.exit(2)
    res, values = measure(args, comm)
    if args.reference:
        res["relative_difference_to_reference"] = compare(values, args.reference)
    if comm.rank == 0:
        if args.save:
            np.savez(args.save, **values)
        print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
