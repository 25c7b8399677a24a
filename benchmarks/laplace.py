"""Cost and content of a low-rank Laplace approximation at the MAP point.  Prints one JSON object.

    .venv/bin/python benchmarks/laplace.py --model poisson --rank 50 --oversampling 20 [--n 64]
        [--plot eigenvalues.png] [--json out.json]

``hessian_actions`` are counted (each one JVP + one VJP); ``eig_s`` is the eigensolver's time (blocked
Hessian and covariance actions where the model has them; ``--compare`` also times one action at a time at
the same MAP and reports the speed-up and the eigenvalue difference),
``variance_s`` the time of the pointwise posterior variance (prior variance from ``--variance-samples``
prior samples + the exact low-rank part); traces are integrals of the pointwise variances over the
domain.  ``inversion_s`` is the Newton-CG time to the MAP, for the Laplace share of the whole.
"""

from __future__ import annotations

import argparse
import json
import time

from pdeinv._petsc import init_petsc

init_petsc()  # our options are not PETSc's

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402
from problems import build  # noqa: E402  (benchmarks/problems.py)

from pdeinv.optimize import NewtonCGOptions, newton_cg  # noqa: E402
from pdeinv.posterior import LaplaceApproximation  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["poisson", "heat", "transport"], required=True)
    p.add_argument("--n", type=int, default=None, help="cells per side (default: poisson 64, others 30)")
    p.add_argument("--rank", type=int, default=50)
    p.add_argument("--oversampling", type=int, default=20)
    p.add_argument("--method", choices=["double_pass", "single_pass"], default="double_pass")
    p.add_argument("--variance-samples", type=int, default=100)
    p.add_argument("--compare", action="store_true",
                   help="also time the eigensolve one action at a time (no blocks) at the same MAP")
    p.add_argument("--plot", help="write the eigenvalue decay as a PNG")
    p.add_argument("--json", help="also write the JSON to this file")
    args = p.parse_args()
    n = args.n or (64 if args.model == "poisson" else 30)
    problem, model, prior = build(args.model, n)
    t0 = time.perf_counter()
    res = newton_cg(problem, prior.mean, options=NewtonCGOptions(gradient_rtol=1e-6, quiet=True))  # as measured
    inversion_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    la = LaplaceApproximation(problem, res.m, rank=args.rank, oversampling=args.oversampling, method=args.method)
    eig_s = time.perf_counter() - t0
    compare = {}
    if args.compare:  # the same eigensolve at the same MAP, one Hessian/covariance action at a time
        from pdeinv.linalg.randomized import double_pass

        t0 = time.perf_counter()
        ref = double_pass(lambda v: problem.hessian_action(res.m, v, misfit_only=True), prior.precision_action,
                          prior.covariance_action, model.parameter_space, k=args.rank, p=args.oversampling)
        one_at_a_time = time.perf_counter() - t0
        lam_ref = np.maximum(ref.eigenvalues, 0.0)
        compare = {"eig_one_at_a_time_s": one_at_a_time, "eig_speedup": one_at_a_time / eig_s,
                   "eigenvalue_max_diff_rel_to_largest": float(np.max(np.abs(la.eigenvalues - lam_ref)) / lam_ref[0])}
    t0 = time.perf_counter()
    pv = la.prior_variance(method="samples", samples=args.variance_samples)
    post = la.pointwise_variance(prior_variance=pv)
    variance_s = time.perf_counter() - t0
    out = {"model": args.model, "n": n, "parameter_dofs": model.parameter_space.dim(), "ranks": fd.COMM_WORLD.size,
           "rank": la.eig.rank, "oversampling": args.oversampling, "method": args.method,
           "hessian_actions": la.hessian_actions, "eigenvalues": la.eigenvalues.tolist(),
           "data_informed_dim": la.data_informed_dimension, "eig_s": eig_s, **compare, "variance_s": variance_s,
           "variance_samples": args.variance_samples,
           "posterior_trace": float(fd.assemble(post * fd.dx)), "prior_trace": float(fd.assemble(pv * fd.dx)),
           "expected_information_gain": la.expected_information_gain(),
           "kl_divergence_from_prior": la.kl_divergence_from_prior(),
           "inversion_s": inversion_s, "newton_iterations": res.iterations,
           "laplace_share": (eig_s + variance_s) / (inversion_s + eig_s + variance_s),
           **{k: v for k, v in la.identifiability(post, pv).items() if k != "data_informed_dim"}}
    if fd.COMM_WORLD.rank == 0:
        text = json.dumps(out, indent=2)
        print(text)
        if args.json:
            with open(args.json + ".tmp", "w") as fh:
                fh.write(text)
            import os

            os.replace(args.json + ".tmp", args.json)
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.semilogy(np.arange(1, len(la.eigenvalues) + 1), np.maximum(la.eigenvalues, 1e-16), "o-", ms=3)
            ax.axhline(1.0, color="k", lw=0.8, ls="--", label="λ = 1 (data = prior)")
            ax.set_xlabel("i")
            ax.set_ylabel("λᵢ")
            ax.set_title(f"{args.model}: generalized eigenvalues ({la.data_informed_dimension} > 1)")
            ax.legend()
            fig.tight_layout()
            fig.savefig(args.plot + ".tmp.png", dpi=120)
            import os

            os.replace(args.plot + ".tmp.png", args.plot)


if __name__ == "__main__":
    main()
