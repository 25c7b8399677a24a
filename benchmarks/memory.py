"""Peak memory of long time-dependent derivatives with and without checkpointing.  Prints one JSON object.

    .venv/bin/python benchmarks/memory.py [--n 999] [--steps 100] [--snapshots 20] [--no-checkpointing]

Heat equation with the log-conductivity parameter (its derivatives need every state u_n), on an n x n P1
mesh ((n+1)² dofs: 10⁶ for n = 999): one forward solve, one misfit gradient and one Gauss-Newton action —
the operations an inversion repeats — and the process's peak resident memory (``ru_maxrss``) after them.
With ``Checkpointing(snapshots_in_ram=K)`` (checkpoint_schedules' binomial schedule) at most K + 2 states
are held at once whatever the number of steps; without it, steps + 1.  ``stored_states_bytes`` is what the
states held would take; ``full_trajectory_bytes`` what storing every state would.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from pdeinv._petsc import init_petsc

init_petsc()

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402

from pdeinv.checkpointing import Checkpointing  # noqa: E402
from pdeinv.forward.heat import HeatModel  # noqa: E402
from pdeinv.maps import Misfit  # noqa: E402
from pdeinv.noise import GaussianNoise  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=999)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--snapshots", type=int, default=20)
    p.add_argument("--no-checkpointing", action="store_true")
    args = p.parse_args()
    comm = fd.COMM_WORLD
    t_start = time.perf_counter()
    mesh = fd.UnitSquareMesh(args.n, args.n)
    pts = 0.1 + 0.8 * np.random.default_rng(1).random((50, 2))
    ck = None if args.no_checkpointing else Checkpointing(snapshots_in_ram=args.snapshots)
    dt = 1e-5
    model = HeatModel(mesh, unknown="log_conductivity", end_time=dt * args.steps, steps=args.steps,
                      observation_points=pts, observation_times=[dt * args.steps],
                      initial_condition=fd.sin(fd.pi * fd.SpatialCoordinate(mesh)[0]), checkpointing=ck)
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(model.parameter_space).interpolate(0.3 * fd.sin(3 * x) * y)
    dm = fd.Function(model.parameter_space).interpolate(fd.cos(2 * y))
    rss_setup = peak_rss_mb()
    t0 = time.perf_counter()
    clean = model(m)
    t_forward = time.perf_counter() - t0
    noise = GaussianNoise(model.observation, 1e-3)
    misfit = Misfit(model, noise, noise.sample(clean, seed=0))
    t0 = time.perf_counter()
    misfit.gradient(fd.Function(m).assign(0.9 * m))  # a new point: forward + reverse sweep
    t_gradient = time.perf_counter() - t0
    t0 = time.perf_counter()
    misfit.gauss_newton_action(m, dm)
    t_gn = time.perf_counter() - t0
    dofs = model.state_space.dim()
    held = model.peak_stored_states
    out = {"n": args.n, "dofs": dofs, "steps": args.steps, "ranks": comm.size,
           "checkpointing": None if ck is None else {"snapshots_in_ram": ck.snapshots_in_ram},
           "forward_s": t_forward, "gradient_s": t_gradient, "gn_action_s": t_gn,
           "peak_stored_states": held, "stored_states_bytes": held * dofs * 8,
           "full_trajectory_bytes": (args.steps + 1) * dofs * 8,
           "recomputed_steps": model.counts.get("recomputed_steps", 0),
           "peak_rss_mb_after_setup": rss_setup, "peak_rss_mb": peak_rss_mb(),
           "total_s": time.perf_counter() - t_start}
    peaks = comm.gather(out["peak_rss_mb"])
    if comm.rank == 0:
        out["peak_rss_mb_per_rank"] = peaks
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
