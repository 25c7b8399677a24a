r"""Scaling study of the heat time loop: what one rank costs, what 2 ranks gain, what 64-1024 ranks would.

Two sub-commands, each printing one JSON object::

    [mpiexec -n P] .venv/bin/python benchmarks/scaling.py measure --n 399 [--steps 50] [--independent]
    .venv/bin/python benchmarks/scaling.py project RUN.json [RUN.json ...]

``measure`` (on the ranks it is started on) builds the heat map of ``benchmarks/derivative_costs.py``
(initial-condition parameter, θ = 1, (n+1)² P1 dofs) and times, after a warm-up, one forward solve and
one Gauss-Newton action with the default direct solver (serial Cholesky / parallel redundant Cholesky) and
with ``model.solver = "iterative"`` (CG + GAMG), reports the KSP iterations per step of the iterative
solver, the partition (owned and ghost dofs per rank: the halo-exchange volume) and the peak resident
memory per rank.  ``--independent`` runs the serial problem on every rank at once (``COMM_SELF``): the
slowdown against a lone serial run is what sharing the machine's memory bandwidth costs, the ceiling of
any 2-rank speed-up here.

``project`` fits the per-rank costs of measured runs into a model of one iterative time step on P ranks,

.. math::

    T(P) = k(N)\,\Bigl[\,c\,\tfrac{N}{P}\,f
           + H\bigl(\alpha + \tfrac{8\,g(N/P)}{\beta}\bigr) + R\,\alpha\log_2 P\Bigr],

with :math:`k(N)` the iterations per step (power-law fit over the measured mesh sizes), :math:`c` the
measured serial seconds per dof and iteration, :math:`f` the measured bandwidth-sharing factor,
:math:`g(n) = \gamma\sqrt{n}` ghost dofs per rank (γ from the measured 2-rank partition, scaled from
its two strips to square subdomains with four neighbours), :math:`H` halo
exchanges and :math:`R` reductions per iteration (CG + a GAMG V-cycle: assumed 10 and 4), and network
latency :math:`\alpha` and bandwidth :math:`\beta` (assumed 2 µs and 10 GB/s: a typical InfiniBand
cluster).  The direct (redundant) solver's step does not shrink with P (each rank solves the whole
system) and adds an allgather of the right-hand side: :math:`T_d(P) = T_d(1) + \alpha\log_2P + 8N/\beta`.
Strong scaling is projected for the measured N, weak scaling for ``--dofs-per-rank`` (default 10⁵).
The assumptions are printed with the projection.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time

ALPHA, BETA = 2e-6, 10e9  # assumed network latency (s) and bandwidth (B/s) of a cluster interconnect
HALOS, REDUCTIONS = 10, 4  # assumed per CG + GAMG iteration (V-cycle smoother SpMVs; CG dot products)
PROJECT_RANKS = (1, 2, 4, 16, 64, 128, 256, 512, 1024)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def measure(args):
    from pdeinv._petsc import init_petsc

    init_petsc()
    import firedrake as fd
    import numpy as np
    from derivative_costs import timed  # benchmarks/derivative_costs.py: warm-up + median

    from pdeinv.cases.common import ITERATIVE
    from pdeinv.forward.heat import HeatModel
    from pdeinv.linalg.operator import default_solver_parameters
    from pdeinv.maps import Misfit
    from pdeinv.noise import GaussianNoise

    world = fd.COMM_WORLD
    comm = fd.COMM_SELF if args.independent else world
    mesh = fd.UnitSquareMesh(args.n, args.n, comm=comm)
    pts = 0.1 + 0.8 * np.random.default_rng(1).random((50, 2))
    V = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    solvers = {"direct": default_solver_parameters(comm, symmetric=True, space=V),
               "iterative": dict(ITERATIVE[True])}
    out = {"n": args.n, "dofs": V.dim(), "steps": args.steps, "ranks": world.size,
           "independent": bool(args.independent), "solvers": solvers}

    def sync():
        world.barrier()  # --independent: the ranks start each operation together

    for name, params in solvers.items():
        model = HeatModel(mesh, unknown="initial_condition", end_time=args.end_time, steps=args.steps, theta=1.0,
                          observation_points=pts, initial_condition=fd.Constant(0.0), source=fd.Constant(0.0),
                          solver_parameters=params)
        m = fd.Function(model.parameter_space).interpolate(fd.sin(fd.pi * x) * fd.sin(fd.pi * y))
        dm = fd.Function(model.parameter_space).interpolate(fd.cos(2 * x) * y)
        noise = GaussianNoise(model.observation, 0.01)
        sync()
        t0 = time.perf_counter()
        misfit = Misfit(model, noise, noise.sample(model(m), seed=0))  # the first solve sets the solver up
        first = time.perf_counter() - t0

        def forward(model=model, m=m):
            sync()
            model.invalidate()
            model(m)

        fwd = timed(forward, args.repeats)
        model(m)
        gn = timed(lambda misfit=misfit, m=m, dm=dm: (sync(), misfit.gauss_newton_action(m, dm)), args.repeats)
        out[name] = {"forward_s": fwd, "gn_action_s": gn, "setup_s": max(first - fwd, 0.0),
                     "per_step_ms": 1e3 * fwd / args.steps}
    out["iterative"] |= step_iterations(mesh, args, sync)
    owned = int(V.dof_dset.size)
    ghosts = int(V.dof_dset.total_size) - owned
    out["partition"] = {"owned_dofs": world.allgather(owned), "ghost_dofs": world.allgather(ghosts),
                        "halo_bytes": world.allgather(8 * ghosts)}
    out["peak_rss_mb_per_rank"] = world.allgather(peak_rss_mb())
    return out


def step_iterations(mesh, args, sync):
    """KSP iterations and seconds of one step solve (M + dt K) u = b with CG + GAMG, set up once.  A bare
    KSP, not ``firedrake.LinearSolver``: its per-call work (measured: 28 -> 50 ms per solve at 4·10⁴ dofs)
    is not part of what this measures."""
    import firedrake as fd
    from firedrake.petsc import PETSc

    from pdeinv.cases.common import ITERATIVE

    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    dt = args.end_time / args.steps
    A = fd.assemble(u * v * fd.dx + dt * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx, mat_type="aij").petscmat
    x, y = fd.SpatialCoordinate(mesh)
    b = fd.assemble(fd.sin(fd.pi * x) * fd.sin(fd.pi * y) * v * fd.dx)
    ksp = PETSc.KSP().create(comm=mesh.comm)
    ksp.setOptionsPrefix("scaling_")
    opts = PETSc.Options()
    for k, val in ITERATIVE[True].items():
        opts[f"scaling_{k}"] = val
    ksp.setOperators(A)
    ksp.setFromOptions()
    ksp.setUp()
    sol = A.createVecRight()
    times, its = [], []
    with b.dat.vec_ro as rhs:
        for _ in range(args.repeats + 1):
            sol.set(0.0)
            sync()
            t0 = time.perf_counter()
            ksp.solve(rhs, sol)
            times.append(time.perf_counter() - t0)
            its.append(ksp.getIterationNumber())
    for k in ITERATIVE[True]:
        del opts[f"scaling_{k}"]
    t = sorted(times[1:])[len(times[1:]) // 2]
    return {"ksp_iterations_per_step": int(its[-1]), "step_solve_s": t, "gamg_levels": int(ksp.getPC().getMGLevels()),
            "seconds_per_dof_iteration": t / (its[-1] * V.dim())}


def project(files, dofs_per_rank):
    import numpy as np

    runs = []
    for f in files:
        with open(f) as fh:
            runs.append(json.load(fh))
    serial = [r for r in runs if r["ranks"] == 1 and not r["independent"]]
    if not serial:
        sys.exit("project: needs at least one serial run (measure without mpiexec)")
    # iterations per step vs N: power-law fit over the serial runs' mesh sizes
    ns = np.array([r["dofs"] for r in serial], dtype=float)
    ks = np.array([r["iterative"]["ksp_iterations_per_step"] for r in serial], dtype=float)
    if len(ns) > 1:
        b_exp, log_a = np.polyfit(np.log(ns), np.log(ks), 1)
    else:
        b_exp, log_a = 0.0, math.log(ks[0])

    def iterations(N):
        return math.exp(log_a) * N ** b_exp

    largest = max(serial, key=lambda r: r["dofs"])
    c = largest["iterative"]["seconds_per_dof_iteration"]
    # bandwidth sharing: a rank of an --independent run against the lone serial run of the same size
    f = 1.0
    for r in runs:
        if r["independent"]:
            alone = [s for s in serial if s["dofs"] == r["dofs"]]
            if alone:
                f = max(f, r["iterative"]["step_solve_s"] / alone[0]["iterative"]["step_solve_s"])
    # ghost dofs per rank = gamma sqrt(owned): fitted to the parallel runs' partitions
    gammas = [g / math.sqrt(o) for r in runs if r["ranks"] == 2 and not r["independent"]
              for o, g in zip(r["partition"]["owned_dofs"], r["partition"]["ghost_dofs"], strict=True)]
    gamma = max(gammas) if gammas else 2.0
    # P = 2 cuts the square into two strips: ghosts = L (n+1) for L ghost layers and sqrt(owned) = (n+1)/sqrt(2),
    # so gamma = L sqrt(2); an interior square subdomain has 4 sides of sqrt(owned): 4 L = 2 sqrt(2) gamma
    gamma_2d = 2 * math.sqrt(2) * gamma

    def t_iterative(N, P):
        n_local = N / P
        comm_t = 0.0 if P == 1 else HALOS * (ALPHA + 8 * gamma_2d * math.sqrt(n_local) / BETA) + \
            REDUCTIONS * ALPHA * math.log2(P)
        return iterations(N) * (c * n_local * (f if P > 1 else 1.0) + comm_t)

    def t_direct(N, P, t1):
        return t1 + (0.0 if P == 1 else ALPHA * math.log2(P) + 8 * N / BETA)

    strong = {}
    for r in serial:
        N = r["dofs"]
        t1 = r["direct"]["per_step_ms"] / 1e3
        rows = []
        for P in PROJECT_RANKS:
            ti = t_iterative(N, P)
            rows.append({"ranks": P, "dofs_per_rank": N / P, "iterative_step_ms": 1e3 * ti,
                         "iterative_speedup": t_iterative(N, 1) / ti,
                         "iterative_efficiency": t_iterative(N, 1) / (P * ti),
                         "direct_redundant_step_ms": 1e3 * t_direct(N, P, t1)})
        strong[str(N)] = rows
    weak = []
    for P in PROJECT_RANKS:
        N = dofs_per_rank * P
        weak.append({"ranks": P, "dofs": N, "iterations_per_step": iterations(N),
                     "iterative_step_ms": 1e3 * t_iterative(N, P),
                     "weak_efficiency": t_iterative(dofs_per_rank, 1) / t_iterative(N, P)})
    # the model against what was measured on more than one rank (same machine: its bandwidth sharing, no network)
    check = []
    for r in runs:
        if r["ranks"] > 1 and not r["independent"]:
            per_iteration = t_iterative(r["dofs"], r["ranks"]) / iterations(r["dofs"])
            check.append({"ranks": r["ranks"], "dofs": r["dofs"],
                          "measured_step_solve_ms": 1e3 * r["iterative"]["step_solve_s"],
                          "model_step_solve_ms": 1e3 * per_iteration * r["iterative"]["ksp_iterations_per_step"]})
    measured = [{"ranks": r["ranks"], "independent": r["independent"], "dofs": r["dofs"],
                 "direct_forward_s": r["direct"]["forward_s"], "direct_gn_action_s": r["direct"]["gn_action_s"],
                 "iterative_forward_s": r["iterative"]["forward_s"],
                 "iterative_gn_action_s": r["iterative"]["gn_action_s"],
                 "ksp_iterations_per_step": r["iterative"]["ksp_iterations_per_step"],
                 "peak_rss_mb_per_rank": r["peak_rss_mb_per_rank"]} for r in runs]
    return {"assumptions": {"latency_s": ALPHA, "bandwidth_B_per_s": BETA, "halo_exchanges_per_iteration": HALOS,
                            "reductions_per_iteration": REDUCTIONS},
            "fitted": {"iterations_per_step": f"{math.exp(log_a):.3g} * N^{b_exp:.3f}",
                       "seconds_per_dof_iteration": c, "bandwidth_sharing_factor": f,
                       "ghost_dofs_per_sqrt_owned": gamma, "ghost_factor_used": gamma_2d},
            "measured": measured, "model_check": check, "strong_scaling": strong,
            "weak_scaling": {"dofs_per_rank": dofs_per_rank, "rows": weak}}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--n", type=int, default=399)
    m.add_argument("--steps", type=int, default=50)
    m.add_argument("--end-time", type=float, default=0.05)
    m.add_argument("--repeats", type=int, default=2)
    m.add_argument("--independent", action="store_true", help="the serial problem on every rank at once")
    pr = sub.add_parser("project")
    pr.add_argument("files", nargs="+")
    pr.add_argument("--dofs-per-rank", type=float, default=1e5)
    args = p.parse_args()
    if args.command == "measure":
        out = measure(args)
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 0:
            print(json.dumps(out, indent=2))
    else:
        print(json.dumps(project(args.files, args.dofs_per_rank), indent=2))


if __name__ == "__main__":
    main()
