r"""Bilevel learning of hyperparameters from training pairs.

.. math::

    \min_\theta\ \bar L(\theta) = \frac1n\sum_{i=1}^n L_i\big(m_i^*(\theta), \theta\big),\qquad
    m_i^*(\theta) = \arg\min_m \mathcal J_i(m;\theta),

with :math:`\mathcal J_i` the family of a :class:`~pdeinv.learn.HyperProblem` on the data of pair
:math:`i` and :math:`L_i` (default) the relative squared reconstruction error against its truth.  The
hypergradient of every pair comes from :func:`~pdeinv.learn.hypergradient` (implicit or JFB), each
inner solve warm-started from the pair's previous reconstruction; the outer optimizer is SciPy's
L-BFGS-B (deterministic, optional bounds) or Adam (the usual choice for stochastic or noisy
hypergradients, e.g. JFB).  :math:`\theta` is a small replicated vector: the outer iteration runs
identically on every rank (the values come from global reductions; rank 0's copy is broadcast).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from pdeinv._checks import Choice, choice
from pdeinv._tape import unannotated
from pdeinv.learn.hypergradient import HypergradientMethod, HypergradientOptions

__all__ = ["TrainingPair", "LearningOptions", "OuterOptimizer", "LearningResult", "learn_hyperparameters",
           "learn_unrolled", "mean_loss"]


class OuterOptimizer(Choice):
    """The optimizer of the hyperparameters: bounded L-BFGS (SciPy) or Adam (strings accepted)."""

    LBFGS = "lbfgs"
    ADAM = "adam"


@dataclass(frozen=True)
class TrainingPair:
    """A truth and its observed data (a data-space Function)."""

    truth: object
    data: object


@dataclass(frozen=True)
class LearningOptions:
    """Options of :func:`learn_hyperparameters`.

    Attributes
    ----------
    method : HypergradientMethod or {"implicit", "jfb"}
    optimizer : OuterOptimizer or {"lbfgs", "adam"}
    max_iterations : int
        Outer iterations.
    gradient_tol : float
        Stop when :math:`\\|\\nabla\\bar L\\|_\\infty` falls below this.
    learning_rate : float
        Adam's step (in :math:`\\theta`, i.e. log units for log-parametrised hyperparameters).
    bounds : sequence of (low, high) or None
        Box constraints on :math:`\\theta` (L-BFGS-B only).
    hypergradient : HypergradientOptions
    """

    method: HypergradientMethod = HypergradientMethod.IMPLICIT
    optimizer: OuterOptimizer = OuterOptimizer.LBFGS
    max_iterations: int = 20
    gradient_tol: float = 1e-6
    learning_rate: float = 0.1
    bounds: tuple | None = None
    hypergradient: HypergradientOptions = field(default_factory=HypergradientOptions)

    def __post_init__(self):
        object.__setattr__(self, "method", choice(HypergradientMethod, self.method, "LearningOptions", "method"))
        object.__setattr__(self, "optimizer", choice(OuterOptimizer, self.optimizer, "LearningOptions", "optimizer"))
        if not (isinstance(self.max_iterations, int) and self.max_iterations >= 1):
            raise ValueError(f"LearningOptions: max_iterations must be a positive integer, got {self.max_iterations!r}")
        if not (self.gradient_tol > 0 and self.learning_rate > 0):
            raise ValueError("LearningOptions: gradient_tol and learning_rate must be positive")


@dataclass(frozen=True)
class LearningResult:
    """The learned hyperparameters and the outer iteration.

    Attributes
    ----------
    theta : numpy.ndarray
    loss : float
        :math:`\\bar L(\\theta)`.
    history : tuple of dict
        Per outer evaluation: ``evaluation, loss, gradient_norm, theta, seconds, solves``.
    iterations : int
    evaluations : int
        Outer-loss evaluations (each: one inner solve and one hypergradient per pair).
    converged : bool
    reason : str
    reconstructions : list of Function
        :math:`m_i^*(\\theta)` per training pair.
    """

    theta: np.ndarray
    loss: float
    history: tuple
    iterations: int
    evaluations: int
    converged: bool
    reason: str
    reconstructions: list


def mean_loss(hyper, pairs, theta, *, method="implicit", options=None, warm=None, loss_factory=None):
    """:math:`(\\bar L(\\theta), \\nabla\\bar L(\\theta), m_i^*, \\text{solves})` over ``pairs``.

    ``warm``: a list of starting points (updated in place with the new reconstructions).
    """
    from pdeinv.learn.hypergradient import hypergradient
    from pdeinv.learn.loss import ReconstructionError

    make = loss_factory or (lambda pair: ReconstructionError(pair.truth))
    prepared = [p if isinstance(p, _Prepared) else _Prepared(p, hyper.with_data(p.data), make(p)) for p in pairs]
    total, grad, ms, solves = 0.0, np.zeros(hyper.size), [], 0
    for i, item in enumerate(prepared):
        res = hypergradient(item.family, item.loss, theta, method=method, m0=None if warm is None else warm[i],
                            options=options)
        total += res.value
        grad += res.gradient
        ms.append(res.m)
        solves += res.solves + res.inner_solves
        if warm is not None:
            warm[i] = res.m
    n = len(pairs)
    return total / n, grad / n, ms, solves


@dataclass
class _Prepared:
    pair: TrainingPair
    family: object
    loss: object


@unannotated
def learn_hyperparameters(hyper, pairs, theta0, *, options: LearningOptions | None = None, loss_factory=None,
                          callback=None, log=None) -> LearningResult:
    """Learn :math:`\\theta` from ``pairs`` (see module docstring).

    Parameters
    ----------
    hyper : HyperProblem
        The family (its own data are not used: each pair brings its data).
    pairs : sequence of TrainingPair
    theta0 : array_like
    options : LearningOptions, optional
    loss_factory : callable ``TrainingPair -> OuterLoss``, optional
        Default: :class:`~pdeinv.learn.ReconstructionError` against the pair's truth (L2, relative).
    callback : callable ``(entry: dict) -> None``, optional
        After every outer evaluation.
    log : pdeinv.log.RankZeroLog, optional
    """
    from scipy.optimize import minimize

    from pdeinv.learn.loss import ReconstructionError
    from pdeinv.log import RankZeroLog

    opts = options or LearningOptions()
    theta0 = _checked(hyper, pairs, theta0, opts)
    comm = hyper.parameter_space.mesh().comm
    log = log or RankZeroLog(comm)
    make = loss_factory or (lambda pair: ReconstructionError(pair.truth))
    prepared = [_Prepared(p, hyper.with_data(p.data), make(p)) for p in pairs]
    warm = [None] * len(pairs)
    history, best = [], {}
    start = time.perf_counter()

    def evaluate(theta):
        theta = comm.bcast(np.array(theta, dtype=float), root=0)
        value, grad, ms, solves = mean_loss(hyper, prepared, theta, method=opts.method, options=opts.hypergradient,
                                            warm=warm)
        entry = {"evaluation": len(history) + 1, "loss": value, "gradient_norm": float(np.linalg.norm(grad)),
                 "theta": theta.tolist(), "seconds": time.perf_counter() - start, "solves": solves}
        history.append(entry)
        if not best or value < best["loss"]:
            best.update(loss=value, theta=theta.copy(), ms=list(ms))
        log.info(f"outer {entry['evaluation']:3d}  loss {value:.6e}  |grad| {entry['gradient_norm']:.3e}  "
                 f"theta {np.array2string(theta, precision=4)}  ({entry['seconds']:.1f} s)")
        if callback is not None:
            callback(entry)
        return value, grad

    if opts.optimizer is OuterOptimizer.LBFGS:
        res = minimize(evaluate, theta0, jac=True, method="L-BFGS-B", bounds=opts.bounds,
                       options={"maxiter": opts.max_iterations, "gtol": opts.gradient_tol})
        iterations, converged, reason = int(res.nit), bool(res.success), str(res.message)
    else:
        iterations, converged, reason = _adam(evaluate, theta0, opts)
    log.info(f"learn_hyperparameters: {reason} after {iterations} iterations, {len(history)} evaluations, "
             f"best loss {best['loss']:.6e} at theta {np.array2string(best['theta'], precision=4)}")
    return LearningResult(theta=best["theta"], loss=float(best["loss"]), history=tuple(history),
                          iterations=iterations, evaluations=len(history),
                          converged=converged or math.isclose(history[-1]["gradient_norm"], 0.0),
                          reason=reason, reconstructions=best["ms"])



def _checked(hyper, pairs, theta0, opts):
    theta0 = hyper.check_theta(theta0)
    if len(pairs) == 0:
        raise ValueError("learn_hyperparameters: give at least one training pair")
    if opts.bounds is not None and len(opts.bounds) != hyper.size:
        raise ValueError(f"learn_hyperparameters: bounds must have {hyper.size} (low, high) pairs")
    return theta0


def _adam(evaluate, theta0, opts):
    """Adam (Kingma & Ba 2015) on ``evaluate(theta) -> (value, gradient)``: (iterations, converged, reason)."""
    theta, mom, var = theta0.copy(), np.zeros_like(theta0), np.zeros_like(theta0)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for k in range(1, opts.max_iterations + 1):
        _, grad = evaluate(theta)
        if np.max(np.abs(grad)) <= opts.gradient_tol:
            return k, True, "gradient tolerance"
        mom = b1 * mom + (1 - b1) * grad
        var = b2 * var + (1 - b2) * grad * grad
        theta = theta - opts.learning_rate * (mom / (1 - b1**k)) / (np.sqrt(var / (1 - b2**k)) + eps)
    return opts.max_iterations, False, "iteration limit"

@unannotated
def learn_unrolled(solver_factory, pairs, theta0, *, max_iterations: int = 20, bounds=None, gradient_tol=1e-8,
                   checkpointing=None, loss_factory=None, log=None) -> LearningResult:
    r"""Train an unrolled solver's parameters end to end (LISTA-style): minimise
    :math:`\frac1n\sum_i L_i(m_K^{(i)}(\theta))` with :math:`m_K^{(i)}` the output of ``K`` iterations of
    the solver on pair :math:`i`'s data, by L-BFGS-B on the exact unrolled hypergradients.

    Parameters
    ----------
    solver_factory : callable ``TrainingPair -> UnrolledSolver``
        E.g. ``lambda p: ProximalGradient(Misfit(model, noise, p.data), l1, iterations=K)``.
    pairs : sequence of TrainingPair
    theta0 : array_like
        E.g. ``solver.constant_theta(1 / L, alpha)``: the classical solver's parameters.
    """
    from scipy.optimize import minimize

    from pdeinv.learn.loss import ReconstructionError
    from pdeinv.learn.unrolled import reverse_through
    from pdeinv.log import RankZeroLog

    if len(pairs) == 0:
        raise ValueError("learn_unrolled: give at least one training pair")
    solvers = [solver_factory(p) for p in pairs]
    theta0 = solvers[0].check_theta(theta0)
    comm = solvers[0].space.mesh().comm
    log = log or RankZeroLog(comm)
    make = loss_factory or (lambda pair: ReconstructionError(pair.truth))
    losses = [make(p) for p in pairs]
    history, best = [], {}
    start = time.perf_counter()

    def evaluate(theta):
        theta = comm.bcast(np.array(theta, dtype=float), root=0)
        value, grad, ms, solves = 0.0, np.zeros_like(theta), [], 0
        for s, loss in zip(solvers, losses, strict=True):
            r = reverse_through(s, loss, theta, None, checkpointing=checkpointing)
            value += r.value / len(solvers)
            grad += r.gradient / len(solvers)
            ms.append(r.m)
            solves += r.solves + r.inner_solves
        entry = {"evaluation": len(history) + 1, "loss": value, "gradient_norm": float(np.linalg.norm(grad)),
                 "theta": theta.tolist(), "seconds": time.perf_counter() - start, "solves": solves}
        history.append(entry)
        if not best or value < best["loss"]:
            best.update(loss=value, theta=theta.copy(), ms=ms)
        log.info(f"unrolled outer {entry['evaluation']:3d}  loss {value:.6e}  |grad| {entry['gradient_norm']:.3e} "
                 f"({entry['seconds']:.1f} s)")
        return value, grad

    res = minimize(evaluate, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iterations, "gtol": gradient_tol})
    log.info(f"learn_unrolled: {res.message} after {res.nit} iterations, best loss {best['loss']:.6e}")
    return LearningResult(theta=best["theta"], loss=float(best["loss"]), history=tuple(history),
                          iterations=int(res.nit), evaluations=len(history), converged=bool(res.success),
                          reason=str(res.message), reconstructions=best["ms"])
