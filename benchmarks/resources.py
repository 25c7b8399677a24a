"""Preflight's memory and time estimates (pdeinv.cases.resources) against measured runs.

Runs each case configuration below as ``pdeinv run`` in a subprocess (serial, and on 2 ranks with
``--ranks 2``), reads ``summary.json``'s ``memory`` record (peak RSS summed over ranks) and the map
phase's time, and prints one JSON object: for each run the estimate, the measurement and their ratio.
The estimate is meant as an upper bound: ``ratio_memory`` = estimated / measured should stay >= 1.

    python benchmarks/resources.py [--ranks 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

RUNS = [
    ("heat", ["mesh.n=64"]), ("heat", ["mesh.n=128"]), ("heat", ["mesh.n=128", "model.steps=200"]),
    ("heat", ["mesh.n=256"]),
    ("tomography", ["mesh.n=61"]), ("tomography", ["mesh.n=121"]),
    ("poisson", ["mesh.n=64"]), ("poisson", ["mesh.n=128"]),
]
QUICK = [("heat", ["mesh.n=64"]), ("tomography", ["mesh.n=61"]), ("poisson", ["mesh.n=64"])]
COMMON = ["laplace.rank=20", "laplace.posterior_samples=1", "laplace.variance_samples=10"]


def one(case, sets, ranks, where):
    out = os.path.join(where, f"{case}-{len(os.listdir(where))}")
    cmd = ([] if ranks == 1 else ["mpiexec", "-n", str(ranks)]) + [sys.executable, "-m", "pdeinv", "run",
                                                                   f"cases/{case}/config.toml", "--out", out,
                                                                   "--quiet"]
    for s in COMMON + sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"case": case, "set": sets, "ranks": ranks, "error": p.stderr[-400:]}
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    mem = s["memory"]
    return {"case": case, "set": sets, "ranks": ranks, "state_dofs": s["dofs"]["state"], "wall_s": round(wall, 1),
            "peak_mb": mem["peak_mb"], "estimated_mb": mem["estimated_mb"],
            "ratio_memory": round(mem["estimated_mb"] / mem["peak_mb"], 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as where:
        rows = [one(case, sets, args.ranks, where) for case, sets in (QUICK if args.quick else RUNS)]
    ok = [r for r in rows if "ratio_memory" in r]
    print(json.dumps({"ranks": args.ranks, "runs": rows,
                      "min_ratio_memory": min((r["ratio_memory"] for r in ok), default=None)}, indent=1))


if __name__ == "__main__":
    main()
