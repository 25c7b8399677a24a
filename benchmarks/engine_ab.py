"""In-process A/B: the heat and Poisson models of an earlier revision (hand-written sweeps) against
the current ones (declarations on the generic engines).  Prints one JSON object per line.

    .venv/bin/python benchmarks/engine_ab.py [--rev 81a9584] [--n 64] [--steps 200] [--repeats 15]

The old modules are taken from git (``git show REV:pdeinv/forward/heat.py``) and imported under other
names; both models run in the same process on the same mesh, their operations interleaved
(old, new, old, new, ...), so machine noise hits both alike.  Each line gives the medians of both and
``gn_ratio_change`` = (new GN action / new forward) / (old GN action / old forward) - 1.
"""
import argparse
import importlib.util
import json
import pathlib
import statistics
import subprocess
import tempfile
import time

from pdeinv._petsc import init_petsc

init_petsc()

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402
from derivative_costs import operations  # noqa: E402

from pdeinv.forward.heat import HeatModel  # noqa: E402
from pdeinv.forward.poisson import PoissonModel  # noqa: E402


def load(rev, path, name):
    """Module ``path`` as it was at git revision ``rev``, imported as ``name``."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    tmp = pathlib.Path(tempfile.mkdtemp()) / f"{name}.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def run(kind, par, n, steps, reps, old_heat, old_poisson):
    mesh = fd.UnitSquareMesh(n, n)
    rng = np.random.default_rng(1)
    pts = 0.1 + 0.8 * rng.random((50, 2))
    if kind == "heat":
        def mk(cls):
            return cls(mesh, unknown=par, end_time=0.1, steps=steps, observation_points=pts,
                       initial_condition=fd.Constant(0.0), source=fd.Constant(0.0))

        models = {"old": mk(old_heat.HeatModel), "new": mk(HeatModel)}
    else:
        models = {"old": old_poisson.PoissonModel(mesh, observation_points=pts),
                  "new": PoissonModel(mesh, observation_points=pts)}
    x, y = fd.SpatialCoordinate(mesh)
    res = {}
    for k, model in models.items():
        m = fd.Function(model.parameter_space).interpolate(0.5 + 0.3 * fd.sin(fd.pi * x) * fd.sin(fd.pi * y))
        dm = fd.Function(model.parameter_space).interpolate(fd.cos(2 * x) * y)
        res[k] = operations(model, m, dm)
        model(m)
        for f in res[k].values():
            f()  # warm up
    samples = {k: {op: [] for op in res[k]} for k in res}
    for _ in range(reps):                 # interleaved: old, new, old, new ...
        for op in ("forward", "gradient", "jvp", "vjp", "gn_action"):
            for k in ("old", "new"):
                t0 = time.perf_counter()
                res[k][op]()
                samples[k][op].append(time.perf_counter() - t0)
    out = {"model": kind, "parameter": par, "n": n, "steps": steps}
    for k in ("old", "new"):
        med = {op: statistics.median(v) for op, v in samples[k].items()}
        ratios = {f"{op}_ratio": med[op] / med["forward"] for op in med if op != "forward"}
        out[k] = {"forward_s": med["forward"], **ratios}
    out["gn_ratio_change"] = out["new"]["gn_action_ratio"] / out["old"]["gn_action_ratio"] - 1
    out["forward_change"] = out["new"]["forward_s"] / out["old"]["forward_s"] - 1
    return out

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rev", default="81a9584", help="git revision with the hand-written models")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    old_heat = load(args.rev, "pdeinv/forward/heat.py", "old_heat")
    old_poisson = load(args.rev, "pdeinv/forward/poisson.py", "old_poisson")
    for kind, par in (("heat", "initial_condition"), ("heat", "source"), ("heat", "log_conductivity"),
                      ("poisson", "log_coefficient")):
        out = run(kind, par, args.n, args.steps if kind == "heat" else 1, args.repeats, old_heat, old_poisson)
        if fd.COMM_WORLD.rank == 0:
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
