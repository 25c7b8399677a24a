"""Ensemble parallelism over experiments: the same MAP for any split of the ranks.  Prints one JSON object.

    mpiexec -n 4 [--oversubscribe] .venv/bin/python benchmarks/ensemble.py [--n 32] [--experiments 4]

The Poisson log-coefficient problem observed through ``--experiments`` experiments (each its own source
and 12 sensors, as in tests/test_ensemble.py) is solved by Newton–CG with every ensemble size that divides
the number of ranks (members x spatial ranks = ranks); reported per split: MAP at probe points (max
relative difference to the 1-member run), cost, Newton/CG iterations, seconds.  On this 2-core machine
``-n 4`` is oversubscribed: the times show that ensemble splits run, not how fast (see docs/performance.md).
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
from mpi4py import MPI  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tests")
from test_ensemble import PROBES, SOURCES, experiment  # noqa: E402

from pdeinv.ensemble import ENSEMBLE_DISTRIBUTION, EnsembleMisfit, experiments_of, make_ensemble  # noqa: E402
from pdeinv.optimize import NewtonCGOptions, newton_cg  # noqa: E402
from pdeinv.prior import BiLaplacianPrior  # noqa: E402
from pdeinv.problem import InverseProblem  # noqa: E402


def solve(members, n, n_experiments):
    ens = make_ensemble(MPI.COMM_WORLD, members)
    mesh = fd.UnitSquareMesh(n, n, comm=ens.comm, distribution_parameters=ENSEMBLE_DISTRIBUTION)
    misfit = EnsembleMisfit(ens, [experiment(e % len(SOURCES), mesh) for e in experiments_of(n_experiments, ens)])
    prior = BiLaplacianPrior.from_correlation(misfit.parameter_space, correlation_length=0.3, variance=0.02)
    MPI.COMM_WORLD.barrier()
    t0 = time.perf_counter()
    res = newton_cg(InverseProblem(misfit, prior), prior.mean, options=NewtonCGOptions(gradient_rtol=1e-10, quiet=True))
    MPI.COMM_WORLD.barrier()
    seconds = time.perf_counter() - t0
    values = np.asarray(fd.PointEvaluator(mesh, PROBES).evaluate(res.m), dtype=float)
    return values, {"members": members, "spatial_ranks": ens.comm.size, "newton": res.iterations,
                    "cg": res.cg_iterations, "cost": res.cost.total, "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--experiments", type=int, default=4)
    args = p.parse_args()
    size = MPI.COMM_WORLD.size
    runs, ref = [], None
    for members in [k for k in range(1, size + 1) if size % k == 0 and k <= args.experiments]:
        values, info = solve(members, args.n, args.experiments)
        if ref is None:
            ref = values
        info["map_max_rel_diff_vs_1_member"] = float(np.max(np.abs(values - ref)) / np.max(np.abs(ref)))
        runs.append(info)
    if MPI.COMM_WORLD.rank == 0:
        print(json.dumps({"ranks": size, "n": args.n, "experiments": args.experiments, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
