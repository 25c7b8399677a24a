"""MCMC efficiency on the Poisson case (hIPPYlib's benchmark) and the heat case.  Prints one JSON object.

    .venv/bin/python benchmarks/sampling.py --case poisson --n 32 --samples 2000 [--kernels pcn gpcn hmala da-gpcn]
    mpiexec -n 2 .venv/bin/python benchmarks/sampling.py --case poisson --n 32 --chains 2   # 2 chains x 1 rank

The problem is the case's own (``cases/poisson``: 64^2 mesh, P2 state, 50 points, 1 % noise, hIPPYlib's
anisotropic BiLaplacian prior; ``--n`` changes the mesh).  Setup is the MAP (Newton-CG) and the Laplace
approximation (rank ``--rank``), with its PDE solves counted; each kernel then runs ``--burn-in`` +
``--samples`` steps from the MAP point with a fixed step size.

Quantities of interest: the parameter's domain mean and its value at (0.5, 0.3), and for Poisson the flux
through the bottom boundary, :math:`\\int_{y=0} e^m \\nabla u\\cdot n\\,ds` (hIPPYlib's tutorial quantity;
``sample`` evaluates quantities only where the chain moved, at the point whose state the chain has just
solved, so the flux costs no solve).

Per kernel: acceptance, IACT and bulk ESS per quantity (ArviZ), PDE solves (forward + adjoint) in the kept
steps, in burn-in and in setup, ESS per PDE solve (``min`` over the quantities) without and with setup, ESS
per second.  The references (the issue's figures): hIPPYlib's tutorial gpCN ~ 1/200 ESS per forward solve at
64^2; hIPPYlib-MUQ's h-pCN 191 ESS from 20 001 samples (~ 1/105) at 32^2 (1089 parameter dofs).
"""

from __future__ import annotations

import argparse
import json
import time

from pdeinv._petsc import init_petsc

init_petsc()

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402

from pdeinv.cases.config import load_config  # noqa: E402
from pdeinv.maps import Misfit  # noqa: E402
from pdeinv.optimize import NewtonCGOptions, newton_cg  # noqa: E402
from pdeinv.posterior import LaplaceApproximation  # noqa: E402
from pdeinv.problem import InverseProblem  # noqa: E402
from pdeinv.sampling import LaplaceSurrogate, SamplingOptions, make_kernel, sample  # noqa: E402

SOLVES = ("forward", "jvp", "vjp", "second_order")


def build(case, n, comm, overrides=()):
    """(problem, model, prior) of the case's configuration (with ``--set`` overrides) on an n x n mesh."""
    import importlib

    module = importlib.import_module(f"pdeinv.cases.{case}")
    cfg = load_config(module.CASE.defaults, None, [*overrides, f"mesh.n={n}"])
    mesh = fd.UnitSquareMesh(n, n, comm=comm, name="mesh")
    model, prior, truth, _ = module.CASE.build(cfg, mesh)
    clean = model(truth)
    noise = module.CASE.make_noise(cfg, model, clean)
    return InverseProblem(Misfit(model, noise, noise.sample(clean, seed=cfg["data"]["seed"])), prior), model, prior


def quantities(case, model, V):
    """The quantities of interest (module docstring)."""
    from pdeinv.cases.sampling_phase import quantities as linear

    qs = dict(linear(V, [[0.5, 0.3]]).callables)
    if case == "poisson":
        n = fd.FacetNormal(V.mesh())

        def flux(m):
            u = model.state(m)
            return fd.assemble(fd.exp(m) * fd.dot(fd.grad(u), n) * fd.ds(3))

        qs["flux"] = flux
    return qs


def solves(model) -> int:
    return sum(model.counts.get(k, 0) for k in SOLVES)


def run_kernel(name, step, problem, la, m_map, qs, opts, ensemble):
    da = name.startswith("da-")
    kernel = make_kernel(name[3:] if da else name, step, laplace=la, surrogate=LaplaceSurrogate(la) if da else None)
    t0 = time.perf_counter()
    res = sample(problem, kernel, m_map, options=opts, quantities=qs, ensemble=ensemble)
    seconds = time.perf_counter() - t0
    diag = res.diagnostics()
    ess = min(d.ess_bulk for d in diag.values())
    return res, seconds, {
        "kernel": res.kernel, "step": step, "step_used": res.step.tolist(), "acceptance": res.acceptance.tolist(),
        "stage1_acceptance": None if res.stage1_acceptance is None else res.stage1_acceptance.tolist(),
        "pde_solves": int(res.pde_solves.sum()), "burn_in_solves": int(res.burn_in_solves.sum()),
        "quantities": {q: {"ess_bulk": d.ess_bulk, "iact": d.iact, "rhat": d.rhat, "mean": d.mean, "sd": d.sd}
                       for q, d in diag.items()},
        "ess_min": ess, "ess_per_pde_solve": ess / max(int(res.pde_solves.sum()), 1), "seconds": seconds,
        "ess_per_second": ess / seconds}


def measure(args, n, steps, ensemble):
    """Setup and every kernel on the n x n mesh: the JSON entry of one mesh."""
    comm = ensemble.comm if ensemble is not None else fd.COMM_WORLD
    problem, model, prior = build(args.case, n, comm, args.set)
    t0 = time.perf_counter()
    m_map = newton_cg(problem, prior.mean, options=NewtonCGOptions(gradient_rtol=1e-6, quiet=True)).m
    map_solves, map_s = solves(model), time.perf_counter() - t0
    t0 = time.perf_counter()
    la = LaplaceApproximation(problem, m_map, rank=args.rank, oversampling=20, hessian=args.hessian)
    setup = solves(model)
    out = {"n": n, "parameter_dofs": model.parameter_space.dim(), "state_dofs": model.state_space.dim(),
           "setup": {"map_solves": map_solves, "laplace_solves": setup - map_solves, "map_s": map_s,
                     "laplace_s": time.perf_counter() - t0, "rank": args.rank, "hessian": args.hessian,
                     "data_informed_dim": la.data_informed_dimension},
           "kernels": []}
    qs = quantities(args.case, model, model.parameter_space)
    opts = SamplingOptions(samples=args.samples, burn_in=args.burn_in, seed=1, adapt=args.adapt)
    for name, step in zip(args.kernels, steps, strict=True):
        _, _, entry = run_kernel(name, step, problem, la, m_map, qs, opts, ensemble)
        total = entry["pde_solves"] + entry["burn_in_solves"] + setup * args.chains
        entry["ess_per_pde_solve_with_setup"] = entry["ess_min"] / total
        out["kernels"].append(entry)
    return out


def spread(meshes) -> dict:
    """Per kernel, the largest relative deviation of acceptance and of each quantity's IACT from their
    mean over the meshes (the mesh-independence figure: the issue's target is 25 %)."""
    out = {}
    for j, k in enumerate(meshes[0]["kernels"]):
        acc = np.array([np.mean(m["kernels"][j]["acceptance"]) for m in meshes])
        iact = {q: np.array([m["kernels"][j]["quantities"][q]["iact"] for m in meshes]) for q in k["quantities"]}
        out[k["kernel"]] = {"acceptance": acc.tolist(),
                            "acceptance_deviation": float(np.max(np.abs(acc / acc.mean() - 1))),
                            "iact_deviation": {q: float(np.max(np.abs(v / v.mean() - 1))) for q, v in iact.items()}}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["poisson", "heat"], default="poisson")
    p.add_argument("--n", type=int, nargs="+", default=[32], help="meshes (several: the mesh-independence table)")
    p.add_argument("--rank", type=int, default=50)
    p.add_argument("--hessian", choices=["gauss_newton", "full"], default="gauss_newton",
                   help="the Laplace approximation's Hessian at the MAP (the gpCN/h-MALA geometry)")
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--burn-in", type=int, default=100)
    p.add_argument("--chains", type=int, default=1, help="chains side by side (ensemble members)")
    p.add_argument("--kernels", nargs="+", default=["pcn", "mala", "gpcn", "hmala", "da-pcn"])
    p.add_argument("--steps", nargs="+", type=float, default=None,
                   help="step per kernel (default: pcn/mala 0.01, gpcn/hmala 0.5)")
    p.add_argument("--adapt", action="store_true", help="adapt the steps during burn-in (then frozen)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a case setting, as for pdeinv run (e.g. data.points=300, hIPPYlib's tutorial)")
    p.add_argument("--json", help="also write the JSON to this file")
    args = p.parse_args()
    default_steps = {"pcn": 0.01, "mala": 0.01, "gpcn": 0.5, "hmala": 0.5}
    steps = args.steps or [default_steps[k.removeprefix("da-")] for k in args.kernels]
    world = fd.COMM_WORLD
    ensemble = fd.Ensemble(world, world.size // args.chains) if args.chains > 1 else None
    meshes = [measure(args, n, steps, ensemble) for n in args.n]
    out = {"case": args.case, "settings": args.set, "ranks": world.size, "chains": args.chains, "samples": args.samples,
           "burn_in": args.burn_in, "meshes": meshes}
    if len(meshes) > 1:
        out["mesh_independence"] = spread(meshes)
    if world.rank == 0:
        text = json.dumps(out, indent=2)
        print(text)
        if args.json:
            with open(args.json, "w") as fh:
                fh.write(text)


if __name__ == "__main__":
    main()
