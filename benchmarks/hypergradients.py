"""Hypergradients of a reconstruction loss through an inversion: accuracy and cost.  Prints one JSON object.

    .venv/bin/python benchmarks/hypergradients.py --model heat|tomography [--n 24] [--unrolled-iterations 500]

The family: the benchmark problem (heat: initial condition from 30 sensors over 5 times; tomography:
emission source from an 8-direction sinogram, linear) with a BiLaplacian prior whose log correlation
length and log marginal variance are the hyperparameters theta (MaternParameters).  The outer loss is
the relative squared L2 error against the truth.  The reference is the central finite difference of
theta -> L(m*(theta)) (step 1e-3, inner Newton-CG to gradient rtol 1e-12), per component.

- implicit: inner Newton-CG to rtol 1e-10, then one prior-preconditioned CG solve with the Hessian;
- unrolled: K iterations of prior-preconditioned gradient descent from 0 with the optimal fixed step
  2/(lambda_max + lambda_min) of the preconditioned Hessian (Lanczos), reversed (stored and checkpointed
  with 10 snapshots in RAM);
- jfb: lambda = C dL/dm (prior covariance), no Hessian solve.

``*_solves`` are the forward model's linear (PDE) solves of the derivative phase (for unrolled: the
reverse sweep); ``*_total_solves`` include computing m* (for unrolled: its forward iterations).
Peak memory: the process's peak RSS (MB) and, for unrolled, the iterates held at once.
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
from pdeinv.learn import (  # noqa: E402
    GradientDescent,
    HyperProblem,
    MaternParameters,
    ReconstructionError,
    cosine,
    hypergradient,
    reverse_through,
    solve_inner,
)
from pdeinv.linalg.spectral import lanczos  # noqa: E402
from pdeinv.maps import Misfit  # noqa: E402
from pdeinv.noise import GaussianNoise  # noqa: E402
from pdeinv.optimize import NewtonCGOptions  # noqa: E402


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(model_name, n):
    mesh = fd.UnitSquareMesh(n, n)
    x, y = fd.SpatialCoordinate(mesh)
    rng = np.random.default_rng(0)
    if model_name == "heat":
        from pdeinv.forward.heat import HeatModel

        model = HeatModel(mesh, unknown="initial_condition", end_time=0.05, steps=50,
                          observation_points=0.1 + 0.8 * rng.random((30, 2)),
                          observation_times=[0.01, 0.02, 0.03, 0.04, 0.05])
        expr = fd.exp(-30 * ((x - 0.4) ** 2 + (y - 0.6) ** 2))
    else:
        from pdeinv.forward.transport import TransportModel, boundary_detectors

        angles = np.linspace(0, np.pi, 8, endpoint=False) + 0.1
        model = TransportModel(mesh, directions=np.c_[np.cos(angles), np.sin(angles)],
                               detectors=boundary_detectors(12), unknown="source")
        expr = fd.exp(-20 * ((x - 0.5) ** 2 + (y - 0.4) ** 2)) + 0.5 * fd.exp(-40 * ((x - 0.3) ** 2 + (y - 0.7) ** 2))
    truth = fd.Function(model.parameter_space, name="truth").interpolate(expr)
    clean = model(truth)
    noise = GaussianNoise.relative(model.observation, clean, 0.01)
    misfit = Misfit(model, noise, noise.sample(clean, seed=1))
    hyper = HyperProblem(misfit, MaternParameters(model.parameter_space))
    return model, hyper, truth


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("heat", "tomography"), default="heat")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--unrolled-iterations", type=int, default=500)
    p.add_argument("--fd-step", type=float, default=1e-3)
    args = p.parse_args()
    model, hyper, truth = build(args.model, args.n)
    V = hyper.parameter_space
    theta = np.array([np.log(0.2), np.log(0.5)])
    loss = ReconstructionError(truth)
    tight = NewtonCGOptions(gradient_rtol=1e-12, max_iterations=50, max_cg_iterations=1000, quiet=True)

    # reference: central differences of the converged map theta -> L(m*(theta))
    t0 = time.perf_counter()
    ref = np.zeros(2)
    m_ref = solve_inner(hyper, theta, options=tight).m
    for j in range(2):
        vals = []
        for s in (1, -1):
            th = theta.copy()
            th[j] += s * args.fd_step
            vals.append(loss(solve_inner(hyper, th, m_ref, options=tight).m, th))
        ref[j] = (vals[0] - vals[1]) / (2 * args.fd_step)
    t_ref = time.perf_counter() - t0

    def err(g):
        return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))

    out = {"model": args.model, "n": args.n, "parameter_dofs": V.dim(), "ranks": V.mesh().comm.size,
           "theta": theta.tolist(), "reference_gradient": ref.tolist(), "reference_s": t_ref}

    t0 = time.perf_counter()
    imp = hypergradient(hyper, loss, theta, method="implicit")
    out.update(implicit_error=err(imp.gradient), implicit_solves=imp.solves,
               implicit_total_solves=imp.solves + imp.inner_solves, implicit_cg_iterations=imp.cg_iterations,
               implicit_s=time.perf_counter() - t0, implicit_peak_rss_mb=rss_mb())

    jfb = hypergradient(hyper, loss, theta, method="jfb", m_star=imp.m)
    out.update(jfb_cosine=cosine(jfb.gradient, ref), jfb_error=err(jfb.gradient), jfb_solves=jfb.solves,
               jfb_total_solves=jfb.solves + imp.inner_solves, jfb_derivative_s=jfb.seconds)

    # unrolled: preconditioned gradient descent with the optimal fixed step
    problem = hyper.problem(theta)
    prior = problem.prior
    lz = lanczos(lambda q: problem.misfit.gauss_newton_action(imp.m, q), prior.covariance_action, V,
                 max_iterations=40, rtol=1e-8)
    lam_max, lam_min = 1.0 + lz.largest, 1.0  # spectrum of C H = I + C H_misfit (low rank)
    gd = GradientDescent(hyper, step=2.0 / (lam_max + lam_min), iterations=args.unrolled_iterations,
                         preconditioner=prior.covariance_action)
    t0 = time.perf_counter()
    unr = reverse_through(gd, loss, theta)
    t_unr = time.perf_counter() - t0
    state_mb = V.dim() * 8 / 1e6
    out.update(unrolled_iterations=args.unrolled_iterations, unrolled_step=gd.step,
               preconditioned_condition_number=lam_max / lam_min, unrolled_error=err(unr.gradient),
               unrolled_solves=unr.solves, unrolled_total_solves=unr.solves + unr.inner_solves, unrolled_s=t_unr,
               unrolled_states_held=unr.peak_stored_states, unrolled_states_mb=unr.peak_stored_states * state_mb,
               unrolled_iterate_error=float(np.sqrt(2 * loss(unr.m, theta))),
               implicit_iterate_error=float(np.sqrt(2 * loss(imp.m, theta))), unrolled_peak_rss_mb=rss_mb())
    t0 = time.perf_counter()
    ck = reverse_through(gd, loss, theta,
                       checkpointing=Checkpointing(snapshots_in_ram=10))
    out.update(checkpointed_states_held=ck.peak_stored_states, checkpointed_solves=ck.solves,
               checkpointed_s=time.perf_counter() - t0,
               checkpointed_gradient_difference=float(np.max(np.abs(ck.gradient - unr.gradient))))
    # gradient descent's error contracts by (kappa - 1)/(kappa + 1) per iteration: iterations to 1e-4
    out["unrolled_iterations_for_1e-4_estimate"] = float(np.log(1e-4) / np.log((lam_max - 1) / (lam_max + 1)))
    out["implicit_over_unrolled_solves"] = out["implicit_solves"] / max(out["unrolled_solves"], 1)
    out["jfb_over_implicit_solves"] = out["jfb_solves"] / max(out["implicit_solves"], 1)
    out["targets"] = {"implicit_error<=1e-4": out["implicit_error"] <= 1e-4,
                      "implicit_solves<=unrolled/5": out["implicit_solves"] * 5 <= out["unrolled_solves"],
                      "jfb_solves<=implicit/10": out["jfb_solves"] * 10 <= out["implicit_solves"]}
    if V.mesh().comm.rank == 0:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
