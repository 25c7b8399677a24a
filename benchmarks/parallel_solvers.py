"""Which linear solver makes a time loop fastest, serially and under mpiexec?  Prints one JSON object.

    [mpiexec -n 2] .venv/bin/python benchmarks/parallel_solvers.py [--n 400] [--steps 50] [--configs a,b,...]

For the heat model (initial-condition parameter: the operator M + dt K is constant, factorised or set up
once) it times one forward solve (``--steps`` solves) and one Gauss-Newton action (2 x steps solves) for
each solver configuration, after one untimed warm-up (setup/factorisation excluded: it is paid once per
inversion), and reports the setup time separately.  Configurations:

- ``petsc_cholesky``: PETSc's sparse Cholesky, nested dissection (the serial default; serial only)
- ``mumps``: MUMPS LU (the parallel default)
- ``mumps_cholesky``: MUMPS Cholesky (symmetric operator: half the factor)
- ``superlu_dist``: SuperLU_dist LU
- ``redundant_cholesky``: every rank gathers the operator and right-hand side and solves the whole system
  with PETSc's sparse Cholesky (PCREDUNDANT): no parallel speed-up of the solve, but no distributed
  triangular solves either
- ``cg_gamg``: CG + GAMG (smoothed aggregation), relative tolerance 1e-10
- ``cg_bjacobi_icc``: CG + block Jacobi with ICC(0) per rank, relative tolerance 1e-10
"""

from __future__ import annotations

import argparse
import json
import time

from pdeinv._petsc import init_petsc

init_petsc()

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402
from derivative_costs import timed  # noqa: E402  (benchmarks/derivative_costs.py: warm-up + median)

from pdeinv.forward.heat import HeatModel  # noqa: E402
from pdeinv.maps import Misfit  # noqa: E402
from pdeinv.noise import GaussianNoise  # noqa: E402

CONFIGS = {
    "petsc_cholesky": {"ksp_type": "preonly", "pc_type": "cholesky", "pc_factor_mat_solver_type": "petsc",
                       "pc_factor_mat_ordering_type": "nd"},
    "mumps": {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"},
    "mumps_cholesky": {"ksp_type": "preonly", "pc_type": "cholesky", "pc_factor_mat_solver_type": "mumps"},
    "superlu_dist": {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "superlu_dist"},
    "redundant_cholesky": {"ksp_type": "preonly", "pc_type": "redundant", "redundant_pc_type": "cholesky",
                           "redundant_pc_factor_mat_solver_type": "petsc",
                           "redundant_pc_factor_mat_ordering_type": "nd"},
    "cg_gamg": {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-10, "ksp_atol": 0.0},
    "cg_bjacobi_icc": {"ksp_type": "cg", "pc_type": "bjacobi", "sub_pc_type": "icc", "ksp_rtol": 1e-10,
                       "ksp_atol": 0.0},
}


def measure(name, args, mesh, pts):
    model = HeatModel(mesh, unknown="initial_condition", end_time=args.end_time, steps=args.steps, theta=1.0,
                      observation_points=pts, solver_parameters=CONFIGS[name])
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(model.parameter_space).interpolate(fd.sin(fd.pi * x) * fd.sin(fd.pi * y))
    dm = fd.Function(model.parameter_space).interpolate(fd.cos(2 * x) * y)
    noise = GaussianNoise(model.observation, 0.01)
    t0 = time.perf_counter()
    data = noise.sample(model(m), seed=0)  # includes the setup / factorisation
    first = time.perf_counter() - t0
    misfit = Misfit(model, noise, data)

    def forward():
        model.invalidate()
        model(m)

    fwd = timed(forward, args.repeats)
    model(m)
    gn = timed(lambda: misfit.gauss_newton_action(m, dm), args.repeats)
    ref = misfit.gauss_newton_action(m, dm)
    return {"forward_s": fwd, "gn_action_s": gn, "first_forward_s": first, "setup_s": max(first - fwd, 0.0),
            "per_solve_ms": 1e3 * fwd / args.steps}, ref


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--end-time", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", default=None, help="comma-separated subset of " + ", ".join(CONFIGS))
    args = p.parse_args()
    comm = fd.COMM_WORLD
    names = args.configs.split(",") if args.configs else [c for c in CONFIGS
                                                           if not (c == "petsc_cholesky" and comm.size > 1)]
    mesh = fd.UnitSquareMesh(args.n, args.n)
    pts = 0.1 + 0.8 * np.random.default_rng(1).random((50, 2))
    out = {"model": "heat", "n": args.n, "dofs": (args.n + 1) ** 2, "steps": args.steps, "ranks": comm.size,
           "repeats": args.repeats, "solvers": {}}
    ref = None
    for name in names:
        res, gn = measure(name, args, mesh, pts)
        if ref is None:
            ref = gn
        diff = comm.allreduce(float(np.max(np.abs(gn.dat.data_ro - ref.dat.data_ro), initial=0.0)), op=max_op())
        scale = comm.allreduce(float(np.max(np.abs(ref.dat.data_ro), initial=0.0)), op=max_op())
        res["gn_action_rel_diff_vs_first"] = diff / scale
        out["solvers"][name] = res
        if comm.rank == 0:
            print(f"# {name}: {res}", flush=True)
    if comm.rank == 0:
        print(json.dumps(out, indent=2))


def max_op():
    from mpi4py import MPI

    return MPI.MAX


if __name__ == "__main__":
    main()
