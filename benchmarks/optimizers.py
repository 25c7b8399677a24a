"""Gauss-Newton-CG against L-BFGS, and Newton's mesh independence.  Prints one JSON object.

    .venv/bin/python benchmarks/optimizers.py --model poisson|heat [--n 32] [--lbfgs-cap 1000]

PDE solves are the forward map's linear solves (a forward, tangent or adjoint solve each count one).
L-BFGS runs until its cost is within 1e-6 (relative) of Newton's final cost, or its iteration cap,
in two variants: with the L2 inner product (``lbfgs_*``: the usual function-space L-BFGS) and with
the prior covariance as initial inverse Hessian (``lbfgs_prior_*``: the strongest L-BFGS we have).
``solve_ratio`` = lbfgs_pde_solves / newton_pde_solves.  ``mesh_study``: Newton on 16^2, 32^2, 64^2.
"""

from __future__ import annotations

import argparse
import json
import time

from pdeinv._petsc import init_petsc

init_petsc()  # our options are not PETSc's

import firedrake as fd  # noqa: E402
from problems import build  # noqa: E402  (benchmarks/problems.py)

from pdeinv.optimize import LBFGSOptions, NewtonCGOptions, lbfgs, newton_cg  # noqa: E402


def solves(model):
    return model.counts["linear_solves"]


def run_newton(model_name, n):
    problem, model, prior = build(model_name, n)
    s0 = solves(model)
    t0 = time.perf_counter()
    res = newton_cg(problem, prior.mean, options=NewtonCGOptions(gradient_rtol=1e-6, quiet=True))
    return res, solves(model) - s0, time.perf_counter() - t0, problem, model, prior


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["poisson", "heat"], required=True)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--lbfgs-cap", type=int, default=1000)
    p.add_argument("--no-mesh-study", action="store_true")
    args = p.parse_args()

    res, newton_solves, newton_time, problem, model, prior = run_newton(args.model, args.n)
    out = {"model": args.model, "n": args.n, "dofs": model.state_space.dim(),
           "parameter_dofs": model.parameter_space.dim(), "ranks": fd.COMM_WORLD.size,
           "newton_iterations": res.iterations, "cg_iterations": res.cg_iterations,
           "newton_pde_solves": newton_solves, "newton_time_s": newton_time, "newton_cost": res.cost.total,
           "newton_converged": res.converged}
    target = res.cost.total + 1e-6 * abs(res.cost.total)
    for key, precond in (("lbfgs", lambda c: c.riesz_representation("L2")), ("lbfgs_prior", None)):
        s0 = solves(model)
        t0 = time.perf_counter()
        rl = lbfgs(problem, prior.mean, preconditioner=precond,
                   options=LBFGSOptions(quiet=True, target_cost=target, max_iterations=args.lbfgs_cap))
        out[f"{key}_iterations"] = rl.iterations
        out[f"{key}_pde_solves"] = solves(model) - s0
        out[f"{key}_reached_target"] = rl.reason == "target cost reached"
        out[f"{key}_time_s"] = time.perf_counter() - t0
    out["solve_ratio"] = out["lbfgs_pde_solves"] / newton_solves
    out["solve_ratio_prior_lbfgs"] = out["lbfgs_prior_pde_solves"] / newton_solves
    if not args.no_mesh_study:
        study = []
        for n in (16, 32, 64):
            r, _, t, _, mdl, _ = run_newton(args.model, n)
            study.append({"n": n, "dofs": mdl.state_space.dim(), "newton_iterations": r.iterations,
                          "cg_iterations": r.cg_iterations, "time_s": t})
        out["mesh_study"] = study
    if fd.COMM_WORLD.rank == 0:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
