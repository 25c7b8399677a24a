"""Cost of derivatives of user models on the generic engines, and of the same model as a TapedMap.
Prints one JSON object.

    .venv/bin/python benchmarks/own_model.py --model nonlinear_diffusion|advection_diffusion [--n N]
    .venv/bin/python benchmarks/own_model.py --checkpoint [--n N] [--steps 1000]

Ratios are each time divided by ``forward_s``, the generic model's forward solve at a new m, measured
in the same run (medians over ``--repeats`` after a warm-up, as in derivative_costs.py).  The taped
ratios use the same denominator, so the two routes compare directly; ``taped_forward_s`` is the
TapedMap's own forward (recording included).  ``gradient_agreement`` is the relative difference
(max norm) of the misfit gradients of the two routes at the same point.  ``linearisation_s`` is the
one-off cost of the derivatives at a new m (assembly and factorisation of the Jacobian at the
solution, steady model only), paid by the first derivative after a forward solve.

For advection-diffusion both routes observe the final state only (a TapedMap has one channel).

``--checkpoint`` runs the nonlinear heat model (Newton per step) for ``--steps`` steps and measures the
peak memory of forward + gradient with the trajectory stored and with binomial checkpointing
(``--snapshots`` in RAM), each in a fresh process: the growth of the peak resident set size and the
number of states held at once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from pdeinv._petsc import init_petsc

init_petsc()

import firedrake as fd  # noqa: E402
from derivative_costs import timed  # noqa: E402

from pdeinv.forward.examples import advection_diffusion, nonlinear_diffusion, nonlinear_heat  # noqa: E402
from pdeinv.forward.timestepping import Checkpointing  # noqa: E402
from pdeinv.maps import Misfit  # noqa: E402
from pdeinv.noise import GaussianNoise  # noqa: E402


def build(args, taped, mesh):
    if args.model == "nonlinear_diffusion":
        # Newton from u = 0 at every forward solve (as at a new parameter value): with the default warm
        # start, re-solving at the same m would take no Newton step and time nothing.
        model = nonlinear_diffusion(mesh, taped=taped, initial_guess="fixed")
    else:
        end = 0.5
        model = advection_diffusion(mesh, steps=args.steps, end_time=end, observation_times=[end], taped=taped)
    return mesh, model


def point(mesh, V):
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(V).interpolate(0.5 * fd.sin(fd.pi * x) * fd.sin(fd.pi * y) + 0.2 * x)
    dm = fd.Function(V).interpolate(fd.cos(2 * x) * y)
    return m, dm


def costs(model, mesh, args, data_values=None):
    """Timings of one route; ``data_values``: the data as an array in input order (two
    VertexOnlyMeshes may distribute the same points differently in parallel)."""
    m, dm = point(mesh, model.parameter_space)
    noise = GaussianNoise(model.observation, 0.01)
    clean = model(m)
    data = noise.sample(clean, seed=0) if data_values is None else model.observation.from_array(data_values)
    misfit = Misfit(model, noise, data)

    def forward():
        model.invalidate()
        model(m)

    out = {"forward_s": timed(forward, args.repeats)}
    if hasattr(model, "newton_iterations"):
        before = model.newton_iterations
        forward()
        out["newton_iterations_per_forward"] = model.newton_iterations - before
    model.jvp(m, dm)  # compile every derivative kernel before anything is timed
    model.invalidate()
    model(m)
    t0 = time.perf_counter()
    model.jvp(m, dm)  # the first derivative at a new m pays the linearisation
    first = time.perf_counter() - t0
    out["jvp_s"] = timed(lambda: model.jvp(m, dm), args.repeats)
    out["linearisation_s"] = max(first - out["jvp_s"], 0.0)
    out["gradient_s"] = timed(lambda: misfit.gradient(m), args.repeats)
    out["gn_action_s"] = timed(lambda: misfit.gauss_newton_action(m, dm), args.repeats)
    gradient = misfit.gradient(m)
    return out, gradient, model.observation.to_array(data)


def measure(args):
    mesh = fd.UnitSquareMesh(args.n, args.n)  # one mesh for both routes: their gradients are compared
    mesh, model = build(args, taped=False, mesh=mesh)
    res = {"model": args.model, "n": args.n, "dofs": model.state_space.dim(),
           "parameter_dofs": model.parameter_space.dim(), "ranks": fd.COMM_WORLD.size, "repeats": args.repeats,
           "engine": type(model).__name__}
    if args.model == "advection_diffusion":
        res["steps"] = args.steps
    gen, g_gen, data = costs(model, mesh, args)
    res["forward_s"] = gen["forward_s"]
    if "newton_iterations_per_forward" in gen:
        res["newton_iterations_per_forward"] = gen["newton_iterations_per_forward"]
    res["linearisation_s"] = gen["linearisation_s"]
    for k in ("gradient", "jvp", "gn_action"):
        res[f"{k}_s"] = gen[f"{k}_s"]
        res[f"{k}_ratio"] = gen[f"{k}_s"] / gen["forward_s"]
    _, taped = build(args, taped=True, mesh=mesh)
    tap, g_tap, _ = costs(taped, mesh, args, data_values=data)
    res["taped_forward_s"] = tap["forward_s"]
    for k in ("gradient", "jvp", "gn_action"):
        res[f"taped_{k}_s"] = tap[f"{k}_s"]
        res[f"taped_{k}_ratio"] = tap[f"{k}_s"] / gen["forward_s"]
    import numpy as np
    from mpi4py import MPI

    diff = fd.COMM_WORLD.allreduce(float(np.max(np.abs(g_gen.dat.data_ro - g_tap.dat.data_ro), initial=0)), MPI.MAX)
    scale = fd.COMM_WORLD.allreduce(float(np.max(np.abs(g_gen.dat.data_ro), initial=0)), MPI.MAX)
    res["gradient_agreement"] = diff / scale
    return res


def memory_run(args):
    """One mode of --checkpoint in this process (called by checkpoint_study in a subprocess)."""
    mesh = fd.UnitSquareMesh(args.n, args.n)
    ckpt = Checkpointing(snapshots_in_ram=args.snapshots) if args.mode == "checkpointed" else None
    warm = nonlinear_heat(mesh, steps=2, end_time=0.002, checkpointing=ckpt)  # compiles every kernel
    m, dm = point(mesh, warm.parameter_space)
    noise = GaussianNoise(warm.observation, 0.01)
    Misfit(warm, noise, noise.sample(warm(m), seed=0)).gradient(m)
    T = 0.1 * args.steps / 100

    def heat(checkpointing):
        return nonlinear_heat(mesh, steps=args.steps, end_time=T, checkpointing=checkpointing, observation_times=[T])

    # The data come from a model that stores no trajectory, so that the high-water mark read below
    # (ru_maxrss) is not already set by the data's forward run.
    source = heat(Checkpointing(snapshots_in_ram=1))
    noise = GaussianNoise(source.observation, 0.01)
    values = source.observation.to_array(noise.sample(source(m), seed=0))
    del source
    model = heat(ckpt)
    noise = GaussianNoise(model.observation, 0.01)
    data = model.observation.from_array(values)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    misfit = Misfit(model, noise, data)
    misfit(m)
    t_forward = time.perf_counter() - t0
    g = misfit.gradient(m)
    t_total = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state_mb = model.state_space.dof_dset.size * 8 / 2**20
    with g.dat.vec_ro as gv:
        gnorm = gv.norm()
    return {"mode": args.mode, "peak_rss_growth_mb": (rss1 - rss0) / 1024.0, "forward_s": t_forward,
            "forward_plus_gradient_s": t_total, "peak_states_held": model.peak_stored_states,
            "states_mb": model.peak_stored_states * state_mb, "recomputed_steps": model.counts["recomputed_steps"],
            "gradient_norm": gnorm}


def checkpoint_study(args):
    out = {"model": "nonlinear_heat", "n": args.n, "steps": args.steps, "snapshots_in_ram": args.snapshots,
           "dofs": (args.n + 1) ** 2}
    for mode in ("stored", "checkpointed"):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-run", "--mode", mode, "--n", str(args.n),
               "--steps", str(args.steps), "--snapshots", str(args.snapshots)]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        out[mode] = json.loads(text)
    out["gradient_relative_difference"] = abs(out["stored"]["gradient_norm"] - out["checkpointed"]["gradient_norm"]) \
        / out["stored"]["gradient_norm"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["nonlinear_diffusion", "advection_diffusion"], default="nonlinear_diffusion")
    p.add_argument("--n", type=int, default=None, help="cells per side (default 64; --checkpoint 48)")
    p.add_argument("--steps", type=int, default=None, help="time steps (default 50; --checkpoint 1000)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--checkpoint", action="store_true", help="memory of checkpointed vs stored trajectories")
    p.add_argument("--snapshots", type=int, default=10, help="snapshots in RAM for --checkpoint")
    p.add_argument("--memory-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["stored", "checkpointed"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.n is None:
        args.n = 48 if (args.checkpoint or args.memory_run) else 64
    if args.steps is None:
        args.steps = 1000 if (args.checkpoint or args.memory_run) else 50
    if args.memory_run:
        res = memory_run(args)
    elif args.checkpoint:
        res = checkpoint_study(args)
    else:
        res = measure(args)
    if fd.COMM_WORLD.rank == 0:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
