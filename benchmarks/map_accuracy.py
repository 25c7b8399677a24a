"""How close the shipped Newton–CG options get to the MAP point, on the documented examples.

For each example of docs/own-model.md that runs ``newton_cg``: the run as the page writes it (its
options: the defaults but an iteration cap), then a reference MAP converged from there to the round-off
floor (gradient_rtol = 1e-14).  Printed as JSON: converged, reason, Newton/CG iterations, the relative
gradient reached, and the distance to the reference — relative L2 and relative Cameron–Martin
(prior-precision) norm.  The cases are measured by their own runs (summary.json records
``converged`` and the reason).

    python benchmarks/map_accuracy.py
    mpiexec -n 2 python benchmarks/map_accuracy.py
"""

import json
import pathlib
import re

import firedrake as fd
import numpy as np

from pdeinv.optimize import NewtonCGOptions, newton_cg
from pdeinv.verify import dual_pairing

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "own-model.md"
RUN = re.compile(r"result = newton_cg\(problem, (.*?), options=(NewtonCGOptions\(.*?\))\)")


def examples():
    """{name: source} of the page's examples that call newton_cg on a ``problem``."""
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"# example: (\w+)\n.*?(?=```)", DOC.read_text(), re.S)}
    return {name: code for name, code in blocks.items() if RUN.search(code)}


def _norm_p(problem, g) -> float:
    return float(np.sqrt(max(dual_pairing(g, problem.preconditioner(g)), 0.0)))


def measure(code: str) -> dict:
    """Run the example up to its newton_cg call, then that call, then the reference."""
    start, options = RUN.search(code).groups()
    scope = {}
    exec(compile(code[: RUN.search(code).start()], str(DOC), "exec"), scope)
    problem = scope["problem"]
    m0 = eval(start, scope)
    run = newton_cg(problem, m0, options=eval(options, scope))
    ref = newton_cg(problem, run.m, options=NewtonCGOptions(gradient_rtol=1e-14, max_iterations=40, quiet=True))
    V, prior = problem.parameter_space, problem.prior
    diff = fd.Function(V).assign(run.m - ref.m)

    def cm(v):  # sqrt(<R'' v, v>): the Cameron-Martin norm for a Gaussian prior
        return float(np.sqrt(max(dual_pairing(prior.hessian_action(ref.m, v), v), 0.0)))

    l2 = float(np.sqrt(fd.assemble(fd.inner(diff, diff) * fd.dx) / fd.assemble(fd.inner(ref.m, ref.m) * fd.dx)))
    return {"converged": bool(run.converged), "reason": str(run.reason), "iterations": run.iterations,
            "cg_iterations": run.cg_iterations,
            "relative_gradient": run.gradient_norm / _norm_p(problem, problem.gradient(m0)),
            "relative_l2_distance_to_map": l2, "relative_cm_distance_to_map": cm(diff) / cm(ref.m),
            "reference": {"reason": str(ref.reason), "iterations": ref.iterations}}


if __name__ == "__main__":
    results = {name: measure(code) for name, code in examples().items()}
    if fd.COMM_WORLD.rank == 0:
        print(json.dumps({"ranks": fd.COMM_WORLD.size, "examples": results}, indent=1))
