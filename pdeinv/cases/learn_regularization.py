r"""Learning the regularization of the heat inversion from training pairs, against the classical rules.

The heat model of ``cases/heat`` (initial temperature from sparse sensors over time).  Truths are
random sums of Gaussian blobs (seeded); ``train.pairs`` of them with their noisy data train the prior,
``test.pairs`` others are held out.  Learned (bilevel: L-BFGS-B on implicit or JFB hypergradients of
the mean relative squared L2 error of the MAP reconstructions):

- ``variance``: the BiLaplacian prior's variance factor :math:`e^{\theta}` at the configured
  correlation length — the same one-parameter family the classical rules choose in;
- ``matern``: correlation length and marginal variance together (:class:`~pdeinv.learn.MaternParameters`);
- optionally (``learn.weight_field = k > 0``) a spatially varying :math:`H^1` weight on a k x k grid of
  patches added to the learned Matérn prior (the stretch goal: a weight *field*);
- LISTA-style (``lista.iterations = K > 0``): FISTA for the L1-regularized problem with per-iteration
  steps and weights trained end to end on the exact unrolled hypergradient, against classical FISTA
  (step 1/L from power iteration, weight ``lista.alpha``) after the same K iterations.

Classical, per test datum (they need no truth): discrepancy principle, L-curve, GCV.  The summary
reports each choice's test-set error, the outer iteration, and the conditioning of the
prior-preconditioned Hessian at the learned setting (Lanczos).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from pdeinv.cases.checkpoint_files import PHASES  # out/checkpoint/phases.json: the learned phases
from pdeinv.cases.common import DriverCase
from pdeinv.cases.settings import BiLaplacianSettings, MeshSettings

__all__ = ["CASE", "LearnRegularizationCase", "run_case"]

DEFAULTS = {
    "mesh": MeshSettings(n=16).table(),
    "model": {"end_time": 0.05, "steps": 20, "observation_times": [0.01, 0.02, 0.03, 0.04, 0.05]},
    "data": {"sensors": 20, "noise_fraction": 0.02, "seed": 1, "sensor_seed": 0},
    "truths": {"blobs": 3, "width": 0.12, "seed": 100},
    "prior": {"correlation_length": 0.1, "variance": 1.0},
    "train": {"pairs": 3},
    "test": {"pairs": 3},
    "learn": {"method": "implicit", "max_iterations": 12, "weight_field": 0, "matern": True},
    "lista": {"iterations": 10, "alpha": 0.001, "max_iterations": 15},
    "classical": {"grid": [-4.0, -2.0, 0.0, 2.0, 4.0], "gcv_probes": 4, "discrepancy_tau": 1.0,
                  "discrepancy_bracket": [-8.0, 8.0]},
}


def _check_observation_steps(cfg) -> None:
    """Observation times on the time grid of ``model``, as a ConfigError."""
    from pdeinv.cases.config import ConfigError
    from pdeinv.forward.timestepping import observation_steps

    T, N = cfg["model"]["end_time"], cfg["model"]["steps"]
    try:
        observation_steps(cfg["model"]["observation_times"], dt=T / N, steps=N, name="model.observation_times")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _truths(V, cfg, count, seed):
    import firedrake as fd

    rng = np.random.default_rng(seed)
    x, y = fd.SpatialCoordinate(V.mesh())
    out = []
    for i in range(count):
        expr = 0
        for _ in range(cfg["truths"]["blobs"]):
            cx, cy = 0.2 + 0.6 * rng.random(2)
            amp = 0.5 + rng.random()
            expr = expr + amp * fd.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * cfg["truths"]["width"] ** 2))
        out.append(fd.Function(V, name=f"truth_{i}").interpolate(expr))
    return out


@dataclass
class _Case:
    """What the phases of :func:`run_case` hand on (setup -> data -> learn -> LISTA -> test -> output)."""

    cfg: dict
    out: str
    comm: object
    log: object
    mesh: object = None
    points: object = None
    model: object = None
    V: object = None
    noise: object = None
    train_pairs: list = field(default_factory=list)
    test_pairs: list = field(default_factory=list)
    variance_family: object = None
    learned: dict = field(default_factory=dict)  # name -> (HyperProblem, theta)
    histories: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    reconstructions: dict = field(default_factory=dict)
    lista: dict = field(default_factory=dict)
    saved: dict = field(default_factory=dict)  # the completed learning phases (checkpoint/phases.json)
    sigterm_after: int | None = None  # test hook: SIGTERM to this process after that many saved phases



def run_case(cfg, out, *, quiet=False, log=None, resume=False, sigterm_after=None):
    """Run the case into ``out``; returns the summary dict.  Each learning phase's result is saved to
    ``out/checkpoint/phases.json`` as it completes; ``resume`` takes the saved ones instead of learning
    them again (everything else is recomputed: it is deterministic and cheap next to the learning)."""
    import firedrake as fd

    from pdeinv.linalg.spectral import conditioning_report
    from pdeinv.log import RankZeroLog

    comm = fd.COMM_WORLD
    c = _Case(cfg, out, comm, log or RankZeroLog(comm, quiet=quiet, announce_phases=True),
              sigterm_after=sigterm_after)
    if comm.rank == 0:
        os.makedirs(os.path.join(out, "checkpoint"), exist_ok=True)
    comm.barrier()
    if resume:
        c.saved = _read_phases(out, cfg)
    t_start = time.perf_counter()
    c.log.info(f"pdeinv case 'learn_regularization' on {comm.size} rank(s) -> {out}"
               + (f" (resumed: {', '.join(c.saved) or 'no phase'} from the checkpoint)" if resume else ""))
    _setup_and_data(c)
    _learn(c)
    K = cfg["lista"]["iterations"]
    if K > 0:
        with c.log.phase("lista"):
            c.lista = _lista(c)
            for name in ("fista", "lista"):
                c.errors[f"{name}_{K}"] = c.lista.pop(f"{name}_errors")
                c.reconstructions[f"{name}_{K}"] = c.lista.pop(f"{name}_m")
            c.histories[f"lista_{K}"] = c.lista.pop("result")
    with c.log.phase("test"):
        _test_priors(c, c.learned)
        _test_classical(c)
        _test_priors(c, {"configured": (c.variance_family, np.zeros(1))}, report=False)  # the prior as configured
    with c.log.phase("conditioning"):
        fam, theta = c.learned["learned_variance"]
        cond = conditioning_report(fam.with_data(c.test_pairs[0].data).problem(theta),
                                   c.reconstructions["learned_variance"])
    _output(c)
    return _summary(c, cond, t_start)


def _setup_and_data(c: _Case) -> None:
    """Mesh, sensors, the heat model, training and test truths, their noisy data, the variance family."""
    import firedrake as fd

    from pdeinv.forward.heat import HeatModel
    from pdeinv.learn import HyperProblem, TrainingPair, prior_variance
    from pdeinv.maps import Misfit
    from pdeinv.noise import GaussianNoise
    from pdeinv.prior import BiLaplacianPrior

    cfg, comm = c.cfg, c.comm
    with c.log.phase("setup"):
        c.mesh = fd.UnitSquareMesh(cfg["mesh"]["n"], cfg["mesh"]["n"], comm=comm, name="mesh")
        rng = np.random.default_rng(cfg["data"]["sensor_seed"])
        c.points = 0.1 + 0.8 * rng.random((cfg["data"]["sensors"], 2))
        mc = cfg["model"]
        c.model = HeatModel(c.mesh, unknown="initial_condition", end_time=mc["end_time"], steps=mc["steps"],
                            observation_points=c.points, observation_times=mc["observation_times"])
        c.V = c.model.parameter_space
        train = _truths(c.V, cfg, cfg["train"]["pairs"], cfg["truths"]["seed"])
        test = _truths(c.V, cfg, cfg["test"]["pairs"], cfg["truths"]["seed"] + 1)
    with c.log.phase("data"):
        clean = [c.model(t) for t in train + test]
        scale = max(comm.allreduce(float(np.max(np.abs(x.dat.data_ro), initial=0.0)), op=_max()) for x in clean)
        c.noise = GaussianNoise(c.model.observation, cfg["data"]["noise_fraction"] * scale)
        data = [c.noise.sample(x, seed=cfg["data"]["seed"] + i) for i, x in enumerate(clean)]
        pairs = [TrainingPair(t, d) for t, d in zip(train + test, data, strict=True)]
        c.train_pairs, c.test_pairs = pairs[:len(train)], pairs[len(train):]
    pc = cfg["prior"]
    base_prior = BiLaplacianPrior.from_correlation(c.V, correlation_length=pc["correlation_length"],
                                                   variance=pc["variance"])
    c.variance_family = HyperProblem(Misfit(c.model, c.noise, data[0]), prior_variance(base_prior))


def _learn(c: _Case) -> None:
    """Bilevel learning of the prior's variance factor, and (if configured) of its Matérn parameters with
    a patchwise H1 weight field."""
    import firedrake as fd

    from pdeinv.learn import (
        HypergradientOptions,
        HyperProblem,
        LearningOptions,
        MaternParameters,
        WeightField,
        grid_patches,
        learn_hyperparameters,
    )

    cfg, pc = c.cfg, c.cfg["prior"]
    hopts = HypergradientOptions()
    lopts = LearningOptions(method=cfg["learn"]["method"], max_iterations=cfg["learn"]["max_iterations"],
                            bounds=((-10.0, 10.0),), hypergradient=hopts)
    with c.log.phase("learn_variance"):
        _learned(c, "learned_variance", c.variance_family,
                 lambda: learn_hyperparameters(c.variance_family, c.train_pairs, np.zeros(1), options=lopts,
                                               log=c.log))
    if not cfg["learn"]["matern"]:
        return
    with c.log.phase("learn_matern"):
        terms = [MaternParameters(c.V)]
        theta0 = [np.log(pc["correlation_length"]), np.log(pc["variance"])]
        bounds = [(np.log(0.01), np.log(2.0)), (-10.0, 10.0)]
        k = cfg["learn"]["weight_field"]
        if k > 0:
            terms.append(WeightField(c.V, lambda m, w: 0.5 * w * fd.inner(fd.grad(m), fd.grad(m)) * fd.dx,
                                     grid_patches(c.mesh, k), name="log_h1_weight"))
            theta0 += [-8.0] * (k * k)
            bounds += [(-15.0, 5.0)] * (k * k)
        family = HyperProblem(c.variance_family.misfit, *terms)
        options = LearningOptions(method=lopts.method, max_iterations=lopts.max_iterations, bounds=tuple(bounds),
                                  hypergradient=hopts)
        _learned(c, "learned_matern" + ("_field" if k > 0 else ""), family,
                 lambda: learn_hyperparameters(family, c.train_pairs, np.array(theta0), options=options, log=c.log))


def _learned(c: _Case, name: str, family, learn) -> None:
    """Learning phase ``name`` of the prior ``family``: its result (checkpointed) recorded for the tests."""
    res = _checkpointed(c, name, learn)
    c.learned[name] = (family, res.theta)
    c.histories[name] = res


def _checkpointed(c: _Case, name: str, learn):
    """The LearningResult of phase ``name``: from the checkpoint when it was saved there, else ``learn()``
    and saved (every rank agrees: the file is written by rank 0 between barriers)."""
    from pdeinv.cases.config import config_hash
    from pdeinv.cases.output import atomic_json
    from pdeinv.learn.bilevel import LearningResult

    record = c.saved.get(name)
    if record is not None:
        res = LearningResult(theta=np.array(record["theta"]), loss=record["loss"], history=tuple(record["history"]),
                             iterations=record["iterations"], evaluations=record["evaluations"],
                             converged=record["converged"], reason=record["reason"], reconstructions=[])
        c.log.info(f"{name}: taken from the checkpoint (theta = {np.array2string(res.theta, precision=4)})")
    else:
        res = learn()
        c.saved[name] = {"theta": res.theta.tolist(), "loss": float(res.loss), "history": list(res.history),
                         "iterations": int(res.iterations), "evaluations": int(res.evaluations),
                         "converged": bool(res.converged), "reason": str(res.reason)}
        atomic_json(os.path.join(c.out, "checkpoint", PHASES),
                    {"format": 1, "config_hash": config_hash(c.cfg), "phases": c.saved}, c.comm)
        if c.sigterm_after is not None and len(c.saved) == c.sigterm_after:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)  # the batch-job path, tested: the phase is on disk
    return res


def _read_phases(out, cfg) -> dict:
    """The saved learning phases of the run in ``out`` (preflight has checked the file and the config)."""
    import json

    with open(os.path.join(out, "checkpoint", PHASES)) as fh:
        return dict(json.load(fh)["phases"])


def _test_priors(c: _Case, cases: dict, *, report: bool = True) -> None:
    """Test-set errors of the priors ``cases`` (name -> (HyperProblem, theta))."""
    from pdeinv.learn import solve_inner
    from pdeinv.learn.loss import ReconstructionError

    for name, (family, theta) in cases.items():
        errs = []
        for i, p in enumerate(c.test_pairs):
            m = solve_inner(family.with_data(p.data), theta).m
            errs.append(ReconstructionError(p.truth).relative_error(m))
            if i == 0:
                c.reconstructions[name] = m
        c.errors[name] = errs
        if report:
            c.log.info(f"{name}: test relative L2 errors {np.array2string(np.array(errs), precision=4)}")


def _test_classical(c: _Case) -> None:
    """The classical parameter-choice rules on every test pair: discrepancy principle, L-curve, GCV."""
    from pdeinv.learn import discrepancy_principle, gcv, l_curve
    from pdeinv.learn.loss import ReconstructionError

    cl = c.cfg["classical"]
    rules = {"discrepancy": lambda f: discrepancy_principle(f, np.zeros(1), bracket=tuple(cl["discrepancy_bracket"]),
                                                            tau=cl["discrepancy_tau"]),
             "l_curve": lambda f: l_curve(f, np.zeros(1), grid=cl["grid"]),
             "gcv": lambda f: gcv(f, np.zeros(1), grid=cl["grid"], probes=cl["gcv_probes"])}
    for rule, choose in rules.items():
        errs, thetas = [], []
        for i, p in enumerate(c.test_pairs):
            ch = choose(c.variance_family.with_data(p.data))
            errs.append(ReconstructionError(p.truth).relative_error(ch.m))
            thetas.append(float(ch.theta[0]))
            if i == 0:
                c.reconstructions[rule] = ch.m
                c.choices[rule] = ch
        c.errors[rule] = errs
        c.choices[rule + "_thetas"] = thetas
        c.log.info(f"{rule}: log variance factors {np.array2string(np.array(thetas), precision=3)}, "
                   f"test relative L2 errors {np.array2string(np.array(errs), precision=4)}")


def _output(c: _Case) -> None:
    """Fields (ParaView, HDF5) and the plots."""
    import firedrake as fd

    from pdeinv.cases import output

    K = c.cfg["lista"]["iterations"]
    with c.log.phase("output"):
        fields = {"truth": c.test_pairs[0].truth}
        for name, m in c.reconstructions.items():
            fields[name] = fd.Function(c.V, name=name).assign(m)
        output.write_fields(c.out, c.mesh, fields)
        if c.comm.rank == 0:
            _plots(c.out, c.histories, c.choices, c.errors)
            names = ["truth"] + [n for n in ("learned_variance", "learned_matern", "learned_matern_field",
                                             "discrepancy", "l_curve", "gcv") if n in c.reconstructions]
            if K > 0:
                names += [f"fista_{K}", f"lista_{K}"]
            output.plot_fields(os.path.join(c.out, "reconstructions.png"), os.path.join(c.out, "results.h5"), names,
                               [n.replace("_", " ") for n in names], points=c.points)
        c.comm.barrier()


def _summary(c: _Case, cond, t_start) -> dict:
    """summary.json and the closing line."""
    from pdeinv.cases import output
    from pdeinv.learn import mean_loss

    K, h = c.cfg["lista"]["iterations"], c.histories
    summary = {
        "case": "learn_regularization", "config": c.cfg, "ranks": c.comm.size, "parameter_dofs": c.V.dim(),
        "test_relative_error_mean": {k: float(np.mean(v)) for k, v in c.errors.items()},
        "test_relative_errors": c.errors,
        "learned": {k: {"theta": dict(zip(f.names, t.tolist(), strict=True)), "train_loss": h[k].loss,
                        "outer_iterations": h[k].iterations, "evaluations": h[k].evaluations, "reason": h[k].reason,
                        "loss_history": [e["loss"] for e in h[k].history]}
                    for k, (f, t) in c.learned.items()},
        "lista_loss_history": [e["loss"] for e in h[f"lista_{K}"].history] if K > 0 else [],
        "lista": c.lista,
        "classical_log_variance_factors": {r: c.choices[r + "_thetas"] for r in ("discrepancy", "l_curve", "gcv")},
        "train_loss_at_configured_prior": float(mean_loss(c.variance_family, c.train_pairs, np.zeros(1))[0]),
        "conditioning": cond,
        "timings_s": dict(c.log.timings), "total_s": time.perf_counter() - t_start,
    }
    output.atomic_json(os.path.join(c.out, "summary.json"), summary, c.comm)
    means = summary["test_relative_error_mean"]
    best = min(means, key=means.get)
    table = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
    c.log.result(f"learn_regularization: best on the test set: {best}; mean relative L2 errors: {table}")
    return summary


def _lista(c: _Case):
    """Classical FISTA vs LISTA-trained FISTA after the same number of iterations (the training is a
    checkpointed phase, ``lista_K``, like the learning phases)."""
    from pdeinv.learn import ProximalGradient, learn_unrolled
    from pdeinv.learn.loss import ReconstructionError
    from pdeinv.linalg.spectral import lipschitz_constant
    from pdeinv.maps import Misfit
    from pdeinv.prior import L1

    model, noise, V, train_pairs, test_pairs, log = c.model, c.noise, c.V, c.train_pairs, c.test_pairs, c.log
    lc = c.cfg["lista"]
    K, alpha = lc["iterations"], lc["alpha"]
    l1 = L1(V, alpha=alpha)
    L = lipschitz_constant(Misfit(model, noise, train_pairs[0].data), l1.weights)
    log.info(f"lista: Lipschitz constant of the misfit gradient (W-metric, power iteration) {L:.4e}")

    def factory(pair):
        return ProximalGradient(Misfit(model, noise, pair.data), l1, iterations=K)

    theta0 = factory(train_pairs[0]).constant_theta(1.0 / L, alpha)
    bounds = [(t - 3.0, t + 3.0) for t in theta0]  # steps within e^{+-3} of 1/L, weights of alpha
    res = _checkpointed(c, f"lista_{K}", lambda: learn_unrolled(factory, train_pairs, theta0, bounds=bounds, log=log,
                                                               max_iterations=lc["max_iterations"]))
    out = {"iterations": K, "alpha": alpha, "lipschitz": L,
           "learned_steps_times_L": (np.exp(res.theta[:K]) * L).tolist(),
           "learned_alphas": np.exp(res.theta[K:]).tolist(), "train_loss_classical": res.history[0]["loss"],
           "train_loss_learned": res.loss, "result": res}
    for name, theta in (("fista", theta0), ("lista", res.theta)):
        errs = []
        for i, p in enumerate(test_pairs):
            m = factory(p).run(theta, None)
            errs.append(ReconstructionError(p.truth).relative_error(m))
            if i == 0:
                out[f"{name}_m"] = m
        out[f"{name}_errors"] = errs
        log.info(f"{name} after {K} iterations: test relative L2 errors {np.array2string(np.array(errs), precision=4)}")
    return out


def _max():
    from mpi4py import MPI

    return MPI.MAX


def _plots(out, histories, choices, errors):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdeinv.cases.output import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, res in histories.items():
        ax.semilogy([h["evaluation"] for h in res.history], [h["loss"] for h in res.history], "o-", ms=3,
                    label=name.replace("_", " "))
    ax.set_xlabel("outer evaluation")
    ax.set_ylabel("mean training loss ½‖m* − m_true‖²/‖m_true‖²")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "learning_history.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    d = choices["discrepancy"].curve
    axes[0].semilogy(d["t"], d["residual2"], "o")
    axes[0].axhline(d["target"], color="k", ls="--", label="τN")
    axes[0].axvline(choices["discrepancy"].theta[0], color="r", label="chosen")
    axes[0].set_xlabel("log variance factor")
    axes[0].set_ylabel("‖r̃‖²")
    axes[0].set_title("discrepancy principle")
    axes[0].legend()
    lc = choices["l_curve"].curve
    axes[1].loglog(np.sqrt(lc["residual2"]), np.sqrt(lc["seminorm2"]), "o-")
    axes[1].set_xlabel("‖r̃‖")
    axes[1].set_ylabel("‖m‖ (prior norm)")
    axes[1].set_title(f"L-curve (corner at log variance factor {choices['l_curve'].theta[0]:.2f})")
    g = choices["gcv"].curve
    axes[2].semilogy(g["t"], g["gcv"], "o-")
    axes[2].axvline(choices["gcv"].theta[0], color="r")
    axes[2].set_xlabel("log variance factor")
    axes[2].set_title("GCV")
    names = list(errors)
    axes[3].bar(range(len(names)), [np.mean(errors[n]) for n in names])
    axes[3].set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
    axes[3].set_ylabel("mean test relative L2 error")
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "choice_rules.png"))
    plt.close(fig)


class LearnRegularizationCase(DriverCase):
    """The bilevel-learning case (its own driver, :func:`run_case`) as the runner sees it."""

    name = "learn_regularization"
    defaults = DEFAULTS

    def validate(self, cfg) -> None:
        from pdeinv.cases.common import require

        T, N = cfg["model"]["end_time"], cfg["model"]["steps"]
        g, br = cfg["classical"]["grid"], cfg["classical"]["discrepancy_bracket"]
        require(MeshSettings.of(cfg).problems() + [
            (0 < T < float("inf"), "model.end_time must be positive and finite"),
            (N >= 1, "model.steps must be >= 1"),
            (all(isinstance(t, (int, float)) for t in cfg["model"]["observation_times"]),
             "model.observation_times must be numbers"),
            (cfg["data"]["sensors"] >= 1, "data.sensors must be >= 1"),
            (0 < cfg["data"]["noise_fraction"] < float("inf"), "data.noise_fraction must be positive and finite"),
            (cfg["truths"]["blobs"] >= 1 and cfg["truths"]["width"] > 0, "truths.blobs must be >= 1, truths.width > 0"),
        ] + BiLaplacianSettings.of(cfg).problems() + [
            (cfg["train"]["pairs"] >= 1 and cfg["test"]["pairs"] >= 1, "train.pairs and test.pairs must be >= 1"),
            (cfg["learn"]["method"] in ("implicit", "jfb"), "learn.method must be 'implicit' or 'jfb'"),
            (cfg["learn"]["max_iterations"] >= 1, "learn.max_iterations must be >= 1"),
            (cfg["learn"]["weight_field"] >= 0, "learn.weight_field must be >= 0 (0: off)"),
            (len(g) >= 3 and all(isinstance(t, (int, float)) for t in g) and list(g) == sorted(set(g)),
             "classical.grid must hold at least 3 increasing numbers"),
            (cfg["lista"]["iterations"] >= 0, "lista.iterations must be >= 0 (0: off)"),
            (cfg["lista"]["alpha"] > 0 and cfg["lista"]["max_iterations"] >= 1,
             "lista.alpha must be > 0 and lista.max_iterations >= 1"),
            (cfg["classical"]["gcv_probes"] >= 1, "classical.gcv_probes must be >= 1"),
            (cfg["classical"]["discrepancy_tau"] > 0, "classical.discrepancy_tau must be > 0"),
            (len(br) == 2 and br[0] < br[1], "classical.discrepancy_bracket must be [low, high] with low < high"),
        ])
        _check_observation_steps(cfg)

    def size(self, cfg, vertices=None):
        """The run's :class:`~pdeinv.cases.resources.Size`: the heat model's P1 state and parameter."""
        from pdeinv.cases.resources import square_p1_size

        return square_p1_size(cfg)

    def run_case(self, cfg, out, *, quiet=False, resume=False, sigterm_after=None):
        return run_case(cfg, out, quiet=quiet, resume=resume, sigterm_after=sigterm_after)


CASE = LearnRegularizationCase()
