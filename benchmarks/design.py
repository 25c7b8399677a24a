"""Optimal sensor placement for the heat model (issue #23): offline PDE solves, online time and the
criterion of greedy / swapping greedy / relaxed / the best of 100 random designs, over mesh refinements.
Prints one JSON object.

    .venv/bin/python benchmarks/design.py [--n 16 32 64] [--grid 15] [--k 20] [--rank 60]
    mpiexec -n 2 .venv/bin/python benchmarks/design.py --grid 32 --k 20     # 1024 candidates on 2 ranks

The model is the design case's (``pdeinv.cases.design``: the heat equation's initial condition, observed
at two times, BiLaplacian prior, sigma 0.01).  Per mesh: the offline work (JVP and VJP solves: two passes
of a ``rank + oversampling`` sketch, independent of the mesh and of the number of candidates), the
smallest kept eigenvalue relative to the largest (how much of K the rank holds), and per optimizer its EIG,
chosen candidates and seconds (no PDE solve).
"""

from __future__ import annotations

import argparse
import json
import time

from pdeinv._petsc import init_petsc

init_petsc()

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402

from pdeinv.cases import design as case  # noqa: E402
from pdeinv.cases.config import load_config  # noqa: E402
from pdeinv.cases.settings import BiLaplacianSettings  # noqa: E402
from pdeinv.design import DesignOperator, greedy, random_designs, relaxed, swap_greedy  # noqa: E402


def measure(n, args):
    cfg = load_config(case.DEFAULTS, None, [f"mesh.n={n}", f"design.grid={args.grid}", f"design.k={args.k}"])
    points = case.candidate_points(cfg)
    mesh = fd.UnitSquareMesh(n, n)
    model = case.heat_model(cfg, mesh, points)
    prior = BiLaplacianSettings.of(cfg).prior(model.parameter_space)
    t0 = time.perf_counter()
    op = DesignOperator(model, prior, cfg["design"]["sigma"], rank=args.rank, oversampling=args.oversampling)
    out = {"n": n, "parameter_dofs": model.parameter_space.dim(), "candidates": len(points),
           "offline_solves": op.offline_solves, "offline_s": time.perf_counter() - t0,
           "smallest_kept_eigenvalue_relative": float(op.eigenvalues[-1] / op.eigenvalues[0]), "designs": {}}
    for name, fn in (("greedy", greedy), ("swap_greedy", swap_greedy), ("relaxed", relaxed)):
        t = time.perf_counter()
        res = fn(op, args.k)
        out["designs"][name] = {"eig": res.value, "chosen": list(res.chosen), "seconds": time.perf_counter() - t}
    t = time.perf_counter()
    rand = random_designs(op, args.k, 100, seed=1)
    out["random"] = {"best_eig": float(rand.max()), "mean_eig": float(rand.mean()), "seconds": time.perf_counter() - t}
    for d in out["designs"].values():
        d["beats_every_random"] = bool(d["eig"] > rand.max())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--grid", type=int, default=15, help="grid x grid candidates")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--rank", type=int, default=60)
    p.add_argument("--oversampling", type=int, default=10)
    args = p.parse_args()
    meshes = [measure(n, args) for n in args.n]
    solves = np.array([m["offline_solves"]["jvp"] + m["offline_solves"]["vjp"] for m in meshes], dtype=float)
    res = {"ranks": fd.COMM_WORLD.size, "k": args.k, "meshes": meshes,
           "offline_solves_spread": float(np.max(np.abs(solves / solves.mean() - 1)))}
    if fd.COMM_WORLD.rank == 0:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
