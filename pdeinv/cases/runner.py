"""The common driver of every case: configuration → data → MAP (Newton–CG) → Laplace → outputs.

Phases, each timed and logged on rank 0: setup, data, map, laplace, output.  The optimizer's state is
checkpointed after every Newton iteration (``DIR/checkpoint/``: the iterate in an HDF5 file and the
state in ``state.json``, the JSON written last, both via temporary names, so the JSON always points at
a complete iterate).  ``--resume`` continues from it and reproduces the uninterrupted run.  SIGTERM
(what a batch system sends at its time limit) is honoured at the end of the current iteration: the
checkpoint is written and the run exits with status :data:`EXIT_INTERRUPTED`.

Exit statuses: 0 success, 2 configuration error (before any solve), 75 interrupted after
checkpointing (EX_TEMPFAIL: run again with ``--resume``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 75
CASES = ("heat", "tomography", "poisson", "learn_regularization")
EXACT_VARIANCE_DOFS = 5000  # below this many parameter dofs the prior variance is computed exactly

__all__ = ["main", "run", "EXIT_CONFIG", "EXIT_INTERRUPTED", "CASES"]


class Interrupted(Exception):
    """SIGTERM was received; the checkpoint has been written."""


class _SigtermFlag:
    def __init__(self):
        self.raised = False
        self._old = None

    def __enter__(self):
        self._old = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._old)


def _parser(prog, case=None):
    p = argparse.ArgumentParser(prog=prog, description="Run a pdeinv case (see cases/<name>/README.md).")
    if case is None:
        p.add_argument("config", help="a case's config.toml (its [case] name = ... picks the case)")
    else:
        p.add_argument("--config", help="TOML file overriding the defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set mesh.n=16 (repeatable)")
    p.add_argument("--out", help="results directory (default results/<case>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the results directory")
    p.add_argument("--quiet", action="store_true", help="only the final line")
    p.add_argument("--sigterm-after", type=int, metavar="K",
                   help="send this process SIGTERM after Newton iteration K (to test batch-job behaviour)")
    return p


def _case_name_from_file(path):
    import tomllib

    from pdeinv.cases.config import ConfigError

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (FileNotFoundError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    name = data.get("case", {}).get("name") if isinstance(data.get("case"), dict) else None
    if name not in CASES:
        raise ConfigError(f"config file {path}: [case] name must be one of {CASES}, got {name!r}")
    return name


def main(argv=None, *, case: str | None = None) -> int:
    """Entry point of ``pdeinv run CONFIG`` (``case=None``) and of ``cases/<case>/run.py``."""
    from pdeinv.cases.config import ConfigError, load_config

    args = _parser("pdeinv run" if case is None else f"cases/{case}/run.py", case).parse_args(argv)
    try:
        name = case or _case_name_from_file(args.config)
        module = importlib.import_module(f"pdeinv.cases.{name}")
        cfg = load_config(module.DEFAULTS, args.config, args.set)
        module.validate(cfg)
    except ConfigError as e:
        from mpi4py import MPI  # every rank found the same error: report it once

        if MPI.COMM_WORLD.rank == 0:
            sys.stderr.write(f"pdeinv: configuration error: {e}\n")
        return EXIT_CONFIG
    out = args.out or os.path.join("results", name)
    if hasattr(module, "run_case"):  # a case with its own driver (bilevel learning)
        from pdeinv._petsc import init_petsc

        init_petsc()
        module.run_case(cfg, out, quiet=args.quiet)
        return 0
    try:
        run(name, cfg, out, resume=args.resume, quiet=args.quiet, sigterm_after=args.sigterm_after)
    except Interrupted:
        return EXIT_INTERRUPTED
    return 0


def run(name: str, cfg: dict, out: str, *, resume: bool = False, quiet: bool = False,
        sigterm_after: int | None = None) -> dict:
    """Run case ``name`` with configuration ``cfg`` into directory ``out``; returns the summary."""
    from pdeinv._petsc import init_petsc

    init_petsc()
    import firedrake as fd
    import numpy as np

    from pdeinv.cases import output
    from pdeinv.log import RankZeroLog
    from pdeinv.maps import Misfit
    from pdeinv.noise import GaussianNoise
    from pdeinv.optimize import NewtonCGOptions, newton_cg
    from pdeinv.posterior import LaplaceApproximation
    from pdeinv.problem import InverseProblem

    module = importlib.import_module(f"pdeinv.cases.{name}")
    comm = fd.COMM_WORLD  # a case run owns the whole MPI job
    log = RankZeroLog(comm, quiet=quiet, announce_phases=True)
    ckdir = os.path.join(out, "checkpoint")
    if comm.rank == 0:
        os.makedirs(ckdir, exist_ok=True)
    comm.barrier()
    mesh_file = os.path.join(ckdir, "mesh.h5")
    state_file = os.path.join(ckdir, "state.json")
    t_start = time.perf_counter()
    log.info(f"pdeinv case '{name}' on {comm.size} rank(s) -> {out}")

    with log.phase("setup"):
        if resume:
            if not os.path.exists(state_file):
                raise FileNotFoundError(f"--resume: no checkpoint in {ckdir} (state.json missing)")
        else:
            tmp = mesh_file + ".tmp"
            with fd.CheckpointFile(tmp, "w", comm=comm) as ck:
                ck.save_mesh(module.make_mesh(cfg, comm))
            if comm.rank == 0:
                os.replace(tmp, mesh_file)
                if os.path.exists(state_file):
                    os.remove(state_file)  # a fresh run does not inherit an old checkpoint
            comm.barrier()
        # Fresh or resumed, the run works on the mesh as loaded from the checkpoint, so that both see
        # the same distribution and dof numbering and a resumed run repeats the uninterrupted one.
        with fd.CheckpointFile(mesh_file, "r", comm=comm) as ck:
            mesh = ck.load_mesh("mesh")
        model, prior, truth, points = module.build(cfg, mesh)
        V = model.parameter_space
    log.info(f"  state dofs {model.state_space.dim()}, parameter dofs {V.dim()}, "
             f"{model.observation.n_points} points x {model.observation.channels} channels")

    with log.phase("data"):
        clean = model(truth)
        if hasattr(module, "make_noise"):
            noise = module.make_noise(cfg, model, clean)
        else:
            noise = GaussianNoise.relative(model.observation, clean, cfg["data"]["noise_fraction"])
        data = noise.sample(clean, seed=cfg["data"]["seed"])
        problem = InverseProblem(Misfit(model, noise, data), prior)

    oc = cfg["optimizer"]
    options = NewtonCGOptions(gradient_rtol=oc["gradient_rtol"], max_iterations=oc["max_iterations"],
                              max_cg_iterations=oc["max_cg_iterations"], globalization=oc["globalization"],
                              quiet=quiet)
    m0, resume_state = prior.mean, None
    if resume:
        with open(state_file) as fh:
            saved = json.load(fh)
        with fd.CheckpointFile(os.path.join(ckdir, saved["iterate_file"]), "r", comm=comm) as ck:
            m0 = ck.load_function(mesh, "m")
        m0 = fd.Function(V).assign(m0)
        resume_state = saved["state"]

    with _SigtermFlag() as sigterm:

        def checkpoint(k, m, entry):
            fname = f"iterate-{k:04d}.h5"
            tmp = os.path.join(ckdir, fname + ".tmp")
            with fd.CheckpointFile(tmp, "w", comm=comm) as ck:
                ck.save_mesh(mesh)
                ck.save_function(m, name="m")
            if comm.rank == 0:
                os.replace(tmp, os.path.join(ckdir, fname))
            output.atomic_json(state_file, {"iterate_file": fname, "state": entry["state"]}, comm)
            if comm.rank == 0:  # older iterates are no longer referenced
                for old in os.listdir(ckdir):
                    if old.startswith("iterate-") and old.endswith(".h5") and old != fname:
                        os.remove(os.path.join(ckdir, old))
            if sigterm_after is not None and k == sigterm_after:
                os.kill(os.getpid(), signal.SIGTERM)  # the real signal path, as a batch system would
            if comm.allreduce(int(sigterm.raised)):
                log.result(f"SIGTERM: checkpoint written after iteration {k}; rerun with --resume")
                raise Interrupted

        with log.phase("map"):
            result = newton_cg(problem, m0, options=options, callback=checkpoint, log=log, resume=resume_state)
    m_map = result.m
    m_map.rename("map")
    solves_after_map = model.counts["linear_solves"]

    lc = cfg["laplace"]
    with log.phase("laplace"):
        la = LaplaceApproximation(problem, m_map, rank=lc["rank"], oversampling=lc["oversampling"])
        # exact prior variance (one covariance action per dof) where that is cheap; else sampled
        method = lc["prior_variance"]
        if method == "auto":
            method = "exact" if V.dim() <= EXACT_VARIANCE_DOFS else "samples"
        pv = la.prior_variance(method=method, samples=lc["variance_samples"])
        var = la.pointwise_variance(prior_variance=pv)
        std = fd.Function(V, name="posterior_std")
        std.dat.data[:] = np.sqrt(np.maximum(var.dat.data_ro, 0.0))
        reduction = la.variance_reduction(var, pv)
        samples = [la.sample(seed=1000 + i, name="posterior_sample") for i in range(lc["posterior_samples"])]
    log.info(f"  {la.data_informed_dimension} data-informed directions; {la.hessian_actions} Hessian actions")

    def rel_error(f):
        return float(np.sqrt(fd.assemble((f - truth) ** 2 * fd.dx) / fd.assemble(truth**2 * fd.dx)))

    with log.phase("output"):
        prior_mean = fd.Function(V, name="prior_mean").assign(prior.mean)
        fields = {"truth": truth, "map": m_map, "posterior_std": std, "prior_mean": prior_mean,
                  "variance_reduction": reduction}
        output.write_fields(out, mesh, fields, samples)
        output.write_points_vtk(os.path.join(out, "observation_points.vtk"), points, comm)
        observed = model.observation.to_array(data)
        predicted = model.observation.to_array(model(m_map))
        noise_free = model.observation.to_array(clean)
        if comm.rank == 0:
            output.plot_fields(os.path.join(out, "fields.png"), os.path.join(out, "results.h5"),
                               ["truth", "map", "posterior_std"], ["truth", "MAP", "posterior std"], points)
            output.plot_history(os.path.join(out, "convergence.png"), result.history)
            output.plot_spectrum(os.path.join(out, "eigenvalues.png"), la.eigenvalues)
            output.plot_data_fit(os.path.join(out, "data_fit.png"), observed, predicted, noise_free)
        comm.barrier()

    summary = {
        "case": name, "ranks": comm.size, "config": cfg,
        "dofs": {"state": model.state_space.dim(), "parameter": V.dim(),
                 "observations": model.observation.n_points * model.observation.channels},
        "newton_iterations": result.iterations, "cg_iterations": result.cg_iterations,
        "converged": bool(result.converged), "termination": result.reason,
        "pde_solves": {"map": solves_after_map, "total": model.counts["linear_solves"]},
        "hessian_actions_laplace": la.hessian_actions,
        "cost": result.cost.total, "cost_terms": {"misfit": result.cost.misfit,
                                                  "regularization": result.cost.regularization},
        "relative_error": rel_error(m_map), "prior_mean_relative_error": rel_error(prior_mean),
        "data_informed_dim": la.data_informed_dimension, "eigenvalues": la.eigenvalues.tolist(),
        "identifiability": la.identifiability(var, pv),
        "expected_information_gain": la.expected_information_gain(),
        "prior_variance_trace": float(fd.assemble(pv * fd.dx)),
        "posterior_variance_trace": float(fd.assemble(var * fd.dx)),
        "timings": dict(log.timings), "resumed": bool(resume),
    }
    output.atomic_json(os.path.join(out, "summary.json"), summary, comm)
    log.result(f"pdeinv case '{name}': MAP error {summary['relative_error']:.3f} (prior mean "
               f"{summary['prior_mean_relative_error']:.3f}), {result.iterations} Newton / {result.cg_iterations} "
               f"CG iterations, {la.data_informed_dimension} data-informed directions, "
               f"{time.perf_counter() - t_start:.1f} s -> {out}")
    return summary
