"""Cost of derivatives relative to a forward solve, measured in one run.  Prints one JSON object.

    .venv/bin/python benchmarks/derivative_costs.py --model heat|transport|poisson [--baseline]

Times are medians over ``--repeats`` runs with warm kernel caches (one untimed warm-up of every
operation first).  ``forward_s`` is F(m) at a new m (the map's stored state is invalidated first);
``gradient_s`` is the misfit gradient right after it (the forward state is reused, as pyadjoint's
``derivative()`` reuses its tape); ``gn_action_s`` is one Gauss-Newton Hessian action (JVP + VJP);
``full_hessian_s`` one full (Newton) Hessian action after a gradient at the same point (as in Newton-CG),
``full_hessian_ratio`` its cost over a Gauss-Newton action, ``full_hessian_solves`` its linear solves.

``--ensemble P`` (transport only; ``mpiexec -n P*S``): the directions split over P ensemble members
(``pdeinv.ensemble``), as the tomography case's ``parallel.ensemble``: the forward is every member solving
its own directions, gradients and Hessian actions are summed over the members (``EnsembleMisfit``).

``--baseline`` (heat only) also times plain Firedrake + pyadjoint on the same heat problem (u0 as the
control, a LinearVariationalSolver built once with constant_jacobian=True and the same direct solver,
functional sum_n int u_n^2 dx): replay, derivative, tlm and hessian, each divided by the same untaped forward loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from pdeinv._petsc import init_petsc

init_petsc()  # our options are not PETSc's

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402

from pdeinv.forward.heat import HeatModel  # noqa: E402
from pdeinv.forward.poisson import PoissonModel  # noqa: E402
from pdeinv.forward.transport import TransportModel, boundary_detectors  # noqa: E402
from pdeinv.linalg.operator import MUMPS_LU, default_solver_parameters  # noqa: E402
from pdeinv.maps import Misfit  # noqa: E402
from pdeinv.noise import GaussianNoise  # noqa: E402


def solver_parameters(args, symmetric, mesh=None):
    """The same direct solver for pdeinv and for the pyadjoint baseline (default: pdeinv's default for a
    problem of this mesh's size and dimension)."""
    if args.solver == "mumps":
        return dict(MUMPS_LU)
    if args.solver == "redundant":
        return {"ksp_type": "preonly", "pc_type": "redundant", "redundant_pc_type": "cholesky" if symmetric else "lu",
                "redundant_pc_factor_mat_solver_type": "petsc", "redundant_pc_factor_mat_ordering_type": "nd"}
    space = fd.FunctionSpace(mesh, "CG", 1) if mesh is not None else None
    comm = mesh.comm if mesh is not None else fd.COMM_WORLD  # an ensemble member solves on its own ranks
    return default_solver_parameters(comm, symmetric=symmetric, space=space)


def timed(fn, repeats):
    fn()  # warm-up: kernels compiled, caches filled
    samples = []
    for _ in range(repeats):
        fd.COMM_WORLD.barrier()
        t0 = time.perf_counter()
        fn()
        fd.COMM_WORLD.barrier()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def build(args):
    n = args.n
    ensemble, mesh_comm, mesh_kw = None, fd.COMM_WORLD, {}
    if args.ensemble > 1:
        from pdeinv.ensemble import ENSEMBLE_DISTRIBUTION, make_ensemble

        ensemble = make_ensemble(fd.COMM_WORLD, args.ensemble)
        mesh_comm, mesh_kw = ensemble.comm, {"distribution_parameters": ENSEMBLE_DISTRIBUTION}
    if args.model == "heat":
        mesh = fd.UnitSquareMesh(n, n)
        rng = np.random.default_rng(1)
        pts = 0.1 + 0.8 * rng.random((args.points, 2))
        model = HeatModel(mesh, unknown=args.parameter or "initial_condition", end_time=args.end_time,
                          steps=args.steps, theta=1.0, observation_points=pts,
                          initial_condition=fd.Constant(0.0), source=fd.Constant(0.0),
                          solver_parameters=solver_parameters(args, True, mesh))
        size = {"steps": args.steps}
    elif args.model == "transport":
        mesh = fd.UnitSquareMesh(n, n, comm=mesh_comm, **mesh_kw)
        angles = np.linspace(0, np.pi, args.directions, endpoint=False) + 0.1
        if ensemble is not None:
            from pdeinv.ensemble import experiments_of

            angles = angles[list(experiments_of(args.directions, ensemble))]
        model = TransportModel(mesh, directions=np.c_[np.cos(angles), np.sin(angles)],
                               detectors=boundary_detectors(max(1, args.points // 4)),
                               unknown=args.parameter or "log_absorption",
                               solver_parameters=solver_parameters(args, False, mesh))
        size = {"directions": args.directions}
    else:
        mesh = fd.UnitSquareMesh(n, n)
        rng = np.random.default_rng(1)
        model = PoissonModel(mesh, observation_points=0.1 + 0.8 * rng.random((args.points, 2)),
                             solver_parameters=solver_parameters(args, True, mesh))
        size = {"steps": 1}
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(model.parameter_space).interpolate(0.5 + 0.3 * fd.sin(fd.pi * x) * fd.sin(fd.pi * y))
    dm = fd.Function(model.parameter_space).interpolate(fd.cos(2 * x) * y)
    return model, m, dm, size, ensemble


def operations(model, m, dm, ensemble=None):
    """The timed operations of a map at ``m`` (synthetic data, 1 % noise): forward at a new m
    (stored state invalidated first), misfit gradient, JVP, VJP and Gauss-Newton action.  With an
    ensemble, each member's map holds its own experiments; the misfit and the VJP are summed over members."""
    noise = GaussianNoise(model.observation, 0.01)
    data = noise.sample(model(m), seed=0)
    misfit = Misfit(model, noise, data)
    w = noise.gradient(model(m), data)
    if ensemble is not None:
        from pdeinv.ensemble import EnsembleMisfit

        misfit = EnsembleMisfit(ensemble, [misfit])

    def vjp():  # each member's directions, summed over the members
        g = model.vjp(m, w)
        return g if ensemble is None else misfit._sum_cofunctions([g])

    def forward():
        model.invalidate()
        model(m)

    return {"forward": forward, "gradient": lambda: misfit.gradient(m), "jvp": lambda: model.jvp(m, dm),
            "vjp": vjp, "gn_action": lambda: misfit.gauss_newton_action(m, dm),
            "full_hessian": lambda: misfit.hessian_action(m, dm)}


def measure(args):
    model, m, dm, size, ensemble = build(args)
    ops = operations(model, m, dm, ensemble)

    channels = model.observation.channels if ensemble is None else args.directions  # all members' channels
    res = {"model": args.model, "parameter": getattr(model, "parameter", "log_coefficient"),
           "dofs": model.state_space.dim(), "parameter_dofs": model.parameter_space.dim(),
           "observations": model.observation.n_points * channels, **size,
           "ranks": fd.COMM_WORLD.size, "ensemble_members": args.ensemble, "repeats": args.repeats,
           "solver": solver_parameters(args, args.model != "transport", model.state_space.mesh())}
    res["forward_s"] = timed(ops["forward"], args.repeats)
    model(m)
    for k in ("gradient", "jvp", "vjp", "gn_action"):
        res[f"{k}_s"] = timed(ops[k], args.repeats)
    for k in ("gradient", "jvp", "vjp", "gn_action"):
        res[f"{k}_ratio"] = res[f"{k}_s"] / res["forward_s"]
    try:  # the full (Newton) Hessian action, right after a gradient at the same point as in Newton-CG
        ops["gradient"]()
        solves = model.counts["linear_solves"]
        res["full_hessian_s"] = timed(ops["full_hessian"], args.repeats)
        res["full_hessian_solves"] = (model.counts["linear_solves"] - solves) / (args.repeats + 1)
        res["full_hessian_ratio"] = res["full_hessian_s"] / res["gn_action_s"]  # vs a Gauss-Newton action
    except NotImplementedError:
        res["full_hessian_s"] = None  # no second derivatives for this parameter (Gauss-Newton only)
    res["factorisations"] = model.counts["factorisations"]
    return res


def pyadjoint_baseline(args):
    """Plain Firedrake + pyadjoint on the heat problem with u0 as the control."""
    from firedrake.adjoint import Control, ReducedFunctional

    from pdeinv._tape import no_annotations, recording

    mesh = fd.UnitSquareMesh(args.n, args.n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    dt = args.end_time / args.steps
    x, y = fd.SpatialCoordinate(mesh)
    u0 = fd.Function(V).interpolate(0.5 + 0.3 * fd.sin(fd.pi * x) * fd.sin(fd.pi * y))
    dm = fd.Function(V).interpolate(fd.cos(2 * x) * y)

    def run(control):
        u_old, u_new = fd.Function(V).assign(control), fd.Function(V)
        u, v = fd.TrialFunction(V), fd.TestFunction(V)
        a = (u * v + dt * fd.inner(fd.grad(u), fd.grad(v))) * fd.dx
        problem = fd.LinearVariationalProblem(a, u_old * v * fd.dx, u_new, fd.DirichletBC(V, 0, "on_boundary"),
                                              constant_jacobian=True)
        solver = fd.LinearVariationalSolver(problem, solver_parameters=solver_parameters(args, True, mesh))
        J = 0.0
        for _ in range(args.steps):
            solver.solve()
            u_old.assign(u_new)
            J += fd.assemble(u_new**2 * fd.dx)
        return J

    with no_annotations():
        plain = timed(lambda: run(u0), args.repeats)
    with recording():
        J = run(u0)
        rf = ReducedFunctional(J, Control(u0))
    out = {"plain_forward_s": plain}
    reps = max(1, args.repeats // 2)
    out["replay_s"] = timed(lambda: rf(u0), reps)
    out["derivative_s"] = timed(lambda: rf.derivative(), reps)
    out["tlm_s"] = timed(lambda: rf.tlm(dm), reps)
    out["hessian_s"] = timed(lambda: rf.hessian(dm), 1)
    for k in ("replay", "derivative", "tlm", "hessian"):
        out[f"{k}_ratio"] = out[f"{k}_s"] / plain
    # A GN action through pyadjoint = one TLM + one derivative (adjoint) sweep.
    out["gn_action_ratio"] = out["tlm_ratio"] + out["derivative_ratio"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["heat", "transport", "poisson"], required=True)
    p.add_argument("--parameter", help="which parameter of the model (default: the classic one)")
    p.add_argument("--n", type=int, default=None, help="cells per side (default: heat 64, transport 30, poisson 64)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--end-time", type=float, default=0.1)
    p.add_argument("--directions", type=int, default=8)
    p.add_argument("--points", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--baseline", action="store_true", help="also time plain pyadjoint (heat only)")
    p.add_argument("--ensemble", type=int, default=1, help="ensemble members splitting the directions (transport)")
    p.add_argument("--solver", choices=["default", "mumps", "redundant"], default="default",
                   help="direct solver for both pdeinv and the baseline (default: pdeinv's default)")
    args = p.parse_args()
    if args.n is None:
        # transport: 30 cells and 12 detectors a side keep every detector off the mesh vertices
        args.n = {"heat": 64, "transport": 30, "poisson": 64}[args.model]
    if args.ensemble > 1 and args.model != "transport":
        p.error("--ensemble is implemented for --model transport (its directions are the experiments)")
    res = measure(args)
    if args.baseline:
        if args.model != "heat":
            p.error("--baseline is implemented for --model heat")
        res["pyadjoint_baseline"] = pyadjoint_baseline(args)
    if fd.COMM_WORLD.rank == 0:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
