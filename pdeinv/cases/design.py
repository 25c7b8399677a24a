r"""Design case: where to put k thermometers for the heat inversion (initial temperature from sensors).

The heat model of :mod:`pdeinv.cases.heat` observes a grid of candidate positions at the observation
times; :class:`pdeinv.design.DesignOperator` represents all of them once (offline PDE solves), then
greedy, swapping greedy and the relaxed optimisation choose ``design.k`` sensors by expected information
gain, against ``design.random`` random designs (no PDE solve).  The chosen and a random design are then
checked with a fresh Laplace approximation each: its EIG and its pointwise posterior standard deviation.

The model is linear in the parameter (the initial condition), so the design does not depend on a
linearisation point.  Outputs: ``design.png`` (candidates and designs), ``eig_vs_k.png`` (greedy against
random designs for every budget up to k), ``posterior_sd.png`` and ParaView files of the prior and posterior
standard deviations, ``summary.json``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from pdeinv.cases.common import DriverCase, require
from pdeinv.cases.settings import BiLaplacianSettings, MeshSettings

__all__ = ["CASE", "DesignCase", "run_case", "candidate_points", "heat_model"]

DEFAULTS = {
    "mesh": MeshSettings(n=32).table(),
    "model": {"end_time": 0.05, "steps": 25, "observation_times": [0.02, 0.04]},
    "prior": BiLaplacianSettings(correlation_length=0.25, variance=0.5).table(),
    "design": {"grid": 15, "margin": 0.05, "sigma": 0.01, "k": 10, "rank": 60, "oversampling": 10,
               "random": 100, "seed": 0},
}


def candidate_points(cfg) -> np.ndarray:
    g, a = cfg["design"]["grid"], cfg["design"]["margin"]
    t = np.linspace(a, 1 - a, g)
    return np.array([(x, y) for y in t for x in t])


def heat_model(cfg, mesh, points):
    from pdeinv.forward.heat import HeatModel

    mc = cfg["model"]
    return HeatModel(mesh, unknown="initial_condition", end_time=mc["end_time"], steps=mc["steps"],
                     observation_points=points, observation_times=mc["observation_times"])


def run_case(cfg, out, *, quiet=False, resume=False, sigterm_after=None):
    """Run the case into ``out``; returns the summary.  Nothing is checkpointed (the runner refuses
    ``--resume``): a rerun with ``--overwrite`` computes everything again, seconds to minutes."""
    import firedrake as fd

    from pdeinv.log import RankZeroLog

    comm = fd.COMM_WORLD
    log = RankZeroLog(comm, quiet=quiet, announce_phases=True)
    t0 = time.perf_counter()
    points = candidate_points(cfg)
    mesh = fd.UnitSquareMesh(cfg["mesh"]["n"], cfg["mesh"]["n"], comm=comm, name="mesh")
    log.info(f"pdeinv case 'design' on {comm.size} rank(s) -> {out}: {len(points)} candidates, "
             f"k = {cfg['design']['k']}")
    with log.phase("offline"):
        model = heat_model(cfg, mesh, points)
        prior = BiLaplacianSettings.of(cfg).prior(model.parameter_space)
        op = _operator(cfg, model, prior)
        log.info(f"offline: {op.offline_solves} in {time.perf_counter() - t0:.1f} s, eigenvalues "
                 f"{op.eigenvalues[0]:.3g} .. {op.eigenvalues[-1]:.3g}")
    with log.phase("designs"):
        designs, random = _designs(cfg, op)
        for name, d in designs.items():
            log.info(f"{name}: EIG {d.value:.4f} ({d.seconds:.2f} s)")
        log.info(f"random: best EIG of {len(random[-1])} {np.max(random[-1]):.4f}")
    with log.phase("check"):
        check = _check(cfg, mesh, prior, points, designs["swap_greedy"].chosen, op)
    with log.phase("output"):
        _outputs(out, mesh, points, designs, random, check, comm)
    summary = _summary(cfg, comm, op, designs, random, check, points, t0)
    from pdeinv.cases import output

    output.atomic_json(os.path.join(out, "summary.json"), summary, comm)
    log.result(f"design: swapping greedy EIG {designs['swap_greedy'].value:.4f} (fresh Laplace "
               f"{check['eig']['chosen']:.4f}); best of {len(random[-1])} random {np.max(random[-1]):.4f}")
    return summary


def _operator(cfg, model, prior):
    from pdeinv.design import DesignOperator

    dc = cfg["design"]
    return DesignOperator(model, prior, dc["sigma"], rank=dc["rank"], oversampling=dc["oversampling"],
                          seed=dc["seed"])


class _Timed:
    def __init__(self, result, seconds):
        self.result, self.seconds = result, seconds
        self.value, self.chosen = result.value, result.chosen


def _designs(cfg, op):
    """The three optimizers' designs (timed) and, per budget 1..k, the EIGs of the random designs."""
    from pdeinv.design import greedy, random_designs, relaxed, swap_greedy

    k, count, seed = cfg["design"]["k"], cfg["design"]["random"], cfg["design"]["seed"]
    designs = {}
    for name, fn in (("greedy", greedy), ("swap_greedy", swap_greedy), ("relaxed", relaxed)):
        t = time.perf_counter()
        res = fn(op, k)
        designs[name] = _Timed(res, time.perf_counter() - t)
    random = [random_designs(op, j, count, seed=seed + j) for j in range(1, k + 1)]
    return designs, random


def _check(cfg, mesh, prior, points, chosen, op) -> dict:
    """Fresh Laplace approximations with the chosen sensors and with a random design of the same size."""
    from pdeinv.maps import Misfit
    from pdeinv.noise import GaussianNoise
    from pdeinv.posterior import LaplaceApproximation
    from pdeinv.problem import InverseProblem

    k = len(chosen)
    other = tuple(sorted(np.random.default_rng(cfg["design"]["seed"]).choice(len(points), k, replace=False)))
    out, fields = {"eig": {}, "random_design": [int(c) for c in other]}, {}
    la = None
    for name, design in (("chosen", chosen), ("random", other)):
        model = heat_model(cfg, mesh, points[list(design)])
        data = model.observation.zero_data()
        problem = InverseProblem(Misfit(model, GaussianNoise(model.observation, cfg["design"]["sigma"]), data), prior)
        rows = model.observation.n_points * model.observation.channels
        la = LaplaceApproximation(problem, prior.mean, rank=rows, oversampling=10)
        out["eig"][name] = la.expected_information_gain()
        fields[name] = la
    prior_var = la.prior_variance(method="exact")
    import firedrake as fd

    sd = {"prior_sd": fd.Function(prior.space, name="prior_sd").interpolate(fd.sqrt(prior_var))}
    for name, la in fields.items():
        var = la.pointwise_variance(prior_variance=prior_var)
        sd[f"posterior_sd_{name}"] = fd.Function(prior.space, name=f"posterior_sd_{name}").interpolate(
            fd.sqrt(fd.max_value(var, 0.0)))
    out["fields"] = sd
    out["mean_sd"] = {n: float(fd.assemble(f * fd.dx)) for n, f in sd.items()}
    return out


def _outputs(out, mesh, points, designs, random, check, comm) -> None:
    from pdeinv.cases import output

    output.write_fields(out, mesh, check["fields"])
    output.write_points_vtk(os.path.join(out, "candidates.vtk"), points, comm)
    output.write_points_vtk(os.path.join(out, "chosen.vtk"), points[list(designs["swap_greedy"].chosen)], comm)
    if comm.rank == 0:
        _plot_designs(out, points, designs, check["random_design"])
        _plot_curve(out, designs["greedy"].result.history, random)
        names = list(check["fields"])
        titles = ["prior sd", "posterior sd, chosen design", "posterior sd, a random design"]
        output.plot_fields(os.path.join(out, "posterior_sd.png"), os.path.join(out, "results.h5"), names, titles)
    comm.barrier()


def _plot_designs(out, points, designs, random_design) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdeinv.cases.output import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(points[:, 0], points[:, 1], ".", color="0.75", ms=4, label="candidates")
    for (name, d), marker in zip(designs.items(), ("o", "s", "^"), strict=True):
        p = points[list(d.chosen)]
        ax.plot(p[:, 0], p[:, 1], marker, mfc="none", ms=9, label=f"{name} (EIG {d.value:.2f})")
    p = points[list(random_design)]
    ax.plot(p[:, 0], p[:, 1], "x", color="k", label="a random design")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "design.png"))
    plt.close(fig)


def _plot_curve(out, history, random) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdeinv.cases.output import save_figure

    k = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(k, history, "o-", label="greedy")
    ax.plot(k, [np.max(r) for r in random], "s--", label="best random")
    ax.fill_between(k, [np.min(r) for r in random], [np.max(r) for r in random], alpha=0.2, label="random range")
    ax.plot(k, [np.mean(r) for r in random], ":", label="mean random")
    ax.set_xlabel("sensors k"), ax.set_ylabel("expected information gain")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "eig_vs_k.png"))
    plt.close(fig)


def _summary(cfg, comm, op, designs, random, check, points, t0) -> dict:
    best_random = float(np.max(random[-1]))
    return {
        "case": "design", "config": cfg, "ranks": comm.size, "candidates": len(points),
        "parameter_dofs": op.model.parameter_space.dim(), "offline_solves": op.offline_solves,
        "rank": len(op.eigenvalues), "eigenvalues": op.eigenvalues,
        "designs": {n: {"chosen": [int(c) for c in d.chosen], "points": points[list(d.chosen)], "eig": d.value,
                        "seconds": d.seconds, "beats_every_random": bool(d.value > best_random)}
                    for n, d in designs.items()},
        "greedy_eig_vs_k": list(designs["greedy"].result.history),
        "random_eig_vs_k": {"mean": [float(np.mean(r)) for r in random], "max": [float(np.max(r)) for r in random]},
        "fresh_laplace_eig": check["eig"], "random_design": check["random_design"],
        "mean_standard_deviation": check["mean_sd"], "total_s": time.perf_counter() - t0,
    }


class DesignCase(DriverCase):
    """The design case (its own driver, :func:`run_case`) as the runner sees it."""

    name = "design"
    defaults = DEFAULTS

    def validate(self, cfg) -> None:
        mc, dc = cfg["model"], cfg["design"]
        T, N = mc["end_time"], mc["steps"]
        times = mc["observation_times"]
        require(MeshSettings.of(cfg).problems() + BiLaplacianSettings.of(cfg).problems() + [
            (0 < T < float("inf") and N >= 1, "model.end_time must be positive and model.steps >= 1"),
            (len(times) >= 1 and all(isinstance(t, (int, float)) and 0 < t <= T
                                     and abs(t * N / T - round(t * N / T)) < 1e-9 for t in times),
             f"model.observation_times must be time steps in (0, {T}] (dt = {T / max(N, 1)})"),
            (dc["grid"] >= 2, "design.grid must be >= 2 (grid x grid candidates)"),
            (0 <= dc["margin"] < 0.5, "design.margin must be in [0, 0.5) (candidates inside the unit square)"),
            (0 < dc["sigma"] < float("inf"), "design.sigma (the noise standard deviation) must be positive"),
            (1 <= dc["k"] <= dc["grid"] ** 2,
             f"design.k must be in [1, {dc['grid'] ** 2}] (the number of candidates), got {dc['k']}"),
            (dc["rank"] >= 1 and dc["oversampling"] >= 0, "design.rank must be >= 1, design.oversampling >= 0"),
            (dc["random"] >= 1 and dc["seed"] >= 0, "design.random must be >= 1 and design.seed >= 0"),
        ])

    def size(self, cfg, vertices=None):
        """The run's :class:`~pdeinv.cases.resources.Size`: the heat model's P1 state and parameter."""
        from pdeinv.cases.resources import square_p1_size

        return square_p1_size(cfg)

    def run_case(self, cfg, out, *, quiet=False, resume=False, sigterm_after=None):
        return run_case(cfg, out, quiet=quiet, resume=resume, sigterm_after=sigterm_after)


CASE = DesignCase()
