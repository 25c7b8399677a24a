r"""Unrolled solvers: :math:`K` iterations :math:`x_{k+1} = \Phi_k(x_k;\theta)` reversed exactly.

The program :math:`\theta \mapsto m_K(\theta)` of an actual solver with a fixed number of
iterations is differentiated in reverse mode: with :math:`\bar x_K = \partial_m L(m_K)`,

.. math::

    \bar x_k = (\partial_x\Phi_k)^T\bar x_{k+1},\qquad
    \bar\theta \mathrel{+}= (\partial_\theta\Phi_k)^T\bar x_{k+1},

backwards from :math:`k = K-1`.  The iterates are kept (:math:`K+1` of them) or, with
:class:`~pdeinv.checkpointing.Checkpointing`, recomputed from a few snapshots by the same
``checkpoint_schedules`` executor as the time-stepping adjoint; ``truncate=T`` reverses through the
last :math:`T` iterations only (a cheaper, biased hypergradient).  Adjoint variables are Cofunctions.

:class:`GradientDescent`
    :math:`m_{k+1} = m_k - \tau P\,\mathcal J'(m_k;\theta)` with a fixed preconditioner
    :math:`P: V^*\to V` (frozen: it must not depend on :math:`\theta`).  Reverse:
    :math:`\bar m_k = \bar m_{k+1} - \tau H(m_k;\theta)P\bar m_{k+1}`,
    :math:`\bar\theta \mathrel{-}= \tau\,\mathcal J_{\theta m}[P\bar m_{k+1}]` — one Hessian action per
    iteration (the *full* Hessian: exact when the problem's Hessian action is exact).
:class:`ProximalGradient`
    ISTA / FISTA for :math:`f(m) + \alpha\|m\|_{1,W}` with **per-iteration** steps :math:`\tau_k` and
    weights :math:`\alpha_k` as :math:`\theta = (\log\tau_1..\log\tau_K, \log\alpha_1..\log\alpha_K)`
    (LISTA-style):

    .. math::

        u_k = y_k - \tau_k W^{-1}f'(y_k),\quad m_{k+1} = S_{\tau_k\alpha_k}(u_k),\quad
        y_{k+1} = m_{k+1} + \beta_k(m_{k+1} - m_k)

    (:math:`\beta_k = 0`: ISTA; FISTA's :math:`\beta_k = (t_k - 1)/t_{k+1}`, fixed).  The soft
    threshold :math:`S_t(u) = \operatorname{sign}(u)\max(|u| - t, 0)` has derivative
    :math:`\mathbf 1\{|u| > t\}` in :math:`u` and :math:`-\operatorname{sign}(u)\mathbf 1\{|u|>t\}`
    in :math:`t`; **at the kink** :math:`|u| = t` **both are taken as 0** (the one-sided derivative
    from inside the dead zone, which keeps exact zeros exact).  Reverse: one gradient (recomputed)
    and one Hessian action of :math:`f` per iteration.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from pdeinv._tape import unannotated, unannotated_methods
from pdeinv.learn.result import HypergradientResult, SolveCounter
from pdeinv.verify import dual_pairing

__all__ = ["UnrolledSolver", "GradientDescent", "ProximalGradient", "reverse_through", "fista_momentum",
           "soft_threshold", "soft_threshold_derivatives"]


def soft_threshold(u: np.ndarray, t: float) -> np.ndarray:
    """:math:`S_t(u) = \\operatorname{sign}(u)\\max(|u| - t, 0)`, elementwise."""
    return np.sign(u) * np.maximum(np.abs(u) - t, 0.0)


def soft_threshold_derivatives(u: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """:math:`(\\partial S_t/\\partial u, \\partial S_t/\\partial t)` elementwise:
    :math:`(\\mathbf 1\\{|u|>t\\}, -\\operatorname{sign}(u)\\mathbf 1\\{|u|>t\\})`.  At the kink
    :math:`|u| = t` both are 0 (the convention of this module: the derivative from inside the dead zone)."""
    active = np.abs(u) > t
    return active.astype(float), np.where(active, -np.sign(u), 0.0)


def _hessian(obj, m, d):
    """The exact Hessian action of a problem or misfit."""
    from pdeinv.problem import InverseProblem

    if isinstance(obj, InverseProblem):
        return obj.hessian_action(m, d, gauss_newton=False)
    return obj.hessian_action(m, d)


@unannotated_methods
class UnrolledSolver(ABC):
    """A solver with a fixed number of iterations whose state is a tuple of Functions.

    Subclasses implement :meth:`check_theta`, :meth:`start`, :meth:`advance`, :meth:`output`,
    :meth:`seed` and :meth:`reverse`.
    """

    iterations: int
    space = None
    counted = None  # what the PDE solves are counted on (anything with ``counts``: a map, misfit or problem)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unannotated_methods(cls)

    @abstractmethod
    def check_theta(self, theta) -> np.ndarray: ...

    @abstractmethod
    def start(self, m0) -> tuple: ...

    @abstractmethod
    def advance(self, k, state, theta) -> tuple: ...

    def output(self, state):
        return state[0]

    def seed(self, state, m_bar) -> tuple:
        """Adjoint state :math:`\\bar x_K` from :math:`\\partial_m L` at the output."""
        import firedrake as fd

        return (m_bar,) + tuple(fd.Cofunction(s.function_space().dual()) for s in state[1:])

    @abstractmethod
    def reverse(self, k, state, adjoint, theta, theta_bar) -> tuple:
        """:math:`\\bar x_k` from :math:`\\bar x_{k+1}` (``adjoint``); adds to ``theta_bar`` in place."""

    def run(self, theta, m0):
        """The forward iterations only: the final iterate :math:`m_K`."""
        theta = self.check_theta(theta)
        state = self.start(m0)
        for k in range(self.iterations):
            state = self.advance(k, state, theta)
        return self.output(state)


class GradientDescent(UnrolledSolver):
    r"""Preconditioned gradient descent on a :class:`~pdeinv.learn.HyperProblem`.

    Parameters
    ----------
    hyper : HyperProblem
    step : float
        :math:`\tau > 0` (converges for :math:`\tau < 2/\lambda_{\max}(PH)`; see
        :func:`pdeinv.linalg.spectral.lanczos`).
    iterations : int
    preconditioner : callable ``Cofunction -> Function``
        Fixed :math:`P` (symmetric positive definite), e.g. ``prior.covariance_action`` of the prior
        at a reference :math:`\theta`.
    """

    def __init__(self, hyper, *, step: float, iterations: int, preconditioner):
        if not (isinstance(step, (int, float)) and np.isfinite(step) and step > 0):
            raise ValueError(f"GradientDescent: step must be a positive number, got {step!r}")
        if not (isinstance(iterations, (int, np.integer)) and iterations >= 1):
            raise ValueError(f"GradientDescent: iterations must be a positive integer, got {iterations!r}")
        if not callable(preconditioner):
            raise TypeError("GradientDescent: preconditioner must be callable (Cofunction -> Function)")
        self.hyper, self.step, self.iterations, self.P = hyper, float(step), int(iterations), preconditioner
        self.space, self.counted = hyper.parameter_space, hyper.map

    def check_theta(self, theta):
        return self.hyper.check_theta(theta)

    def start(self, m0):
        import firedrake as fd

        return ((m0 if m0 is not None else fd.Function(self.space)).copy(deepcopy=True),)

    def advance(self, k, state, theta):
        import firedrake as fd

        m = state[0]
        p = self.P(self.hyper.problem(theta).gradient(m))
        return (fd.Function(self.space).assign(m - self.step * p),)

    def reverse(self, k, state, adjoint, theta, theta_bar):
        m, m_bar = state[0], adjoint[0]
        p = self.P(m_bar)
        h = _hessian(self.hyper.problem(theta), m, p)
        out = m_bar.copy(deepcopy=True)
        out.dat.data[:] -= self.step * h.dat.data_ro
        theta_bar -= self.step * self.hyper.mixed(m, theta, p)
        return (out,)


def fista_momentum(iterations: int) -> np.ndarray:
    """FISTA's :math:`\\beta_k = (t_k - 1)/t_{k+1}`, :math:`t_0 = 1`, :math:`t_{k+1} = (1+\\sqrt{1+4t_k^2})/2`."""
    t, out = 1.0, []
    for _ in range(iterations):
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        out.append((t - 1.0) / t_next)
        t = t_next
    return np.array(out)


class ProximalGradient(UnrolledSolver):
    r"""ISTA / FISTA with per-iteration steps and L1 weights (LISTA-style parameters).

    Parameters
    ----------
    smooth : InverseProblem or Misfit
        :math:`f` (gradient and exact Hessian action).
    l1 : pdeinv.prior.L1
        Gives the lumped-mass weights :math:`W` (its own ``alpha`` is not used: :math:`\alpha_k` are
        hyperparameters).
    iterations : int
    accelerated : bool
        FISTA momentum (default) or ISTA.

    Notes
    -----
    The hyperparameters are :math:`\theta = (\log\tau_1, \dots, \log\tau_K, \log\alpha_1, \dots, \log\alpha_K)`;
    :meth:`constant_theta` gives the classical solver's constant step and weight.
    """

    def __init__(self, smooth, l1, *, iterations: int, accelerated: bool = True):
        from pdeinv.prior.tv import L1

        if not isinstance(l1, L1):
            raise TypeError(f"ProximalGradient: l1 must be a pdeinv.prior.L1, got {type(l1).__name__}")
        if not (isinstance(iterations, (int, np.integer)) and iterations >= 1):
            raise ValueError(f"ProximalGradient: iterations must be a positive integer, got {iterations!r}")
        self.smooth, self.l1, self.iterations = smooth, l1, int(iterations)
        self.space = l1.space
        from pdeinv.optimize.proximal import check_smooth

        check_smooth(smooth, "ProximalGradient")
        self.counted = smooth
        self.w = np.array(l1.weights.dat.data_ro)
        self.beta = fista_momentum(self.iterations) if accelerated else np.zeros(self.iterations)
        self.names = tuple(f"log_step_{k}" for k in range(self.iterations)) + tuple(
            f"log_alpha_{k}" for k in range(self.iterations))

    def constant_theta(self, step: float, alpha: float) -> np.ndarray:
        """:math:`\\theta` of the classical solver: :math:`\\tau_k = \\tau`, :math:`\\alpha_k = \\alpha`."""
        if not (step > 0 and alpha > 0):
            raise ValueError(f"ProximalGradient.constant_theta: step and alpha must be positive, got {step}, {alpha}")
        return np.r_[np.full(self.iterations, np.log(step)), np.full(self.iterations, np.log(alpha))]

    def check_theta(self, theta):
        from pdeinv.learn.hyper import as_theta

        return as_theta(theta, 2 * self.iterations, "ProximalGradient")

    def start(self, m0):
        import firedrake as fd

        m = (m0 if m0 is not None else fd.Function(self.space)).copy(deepcopy=True)
        return (m, m.copy(deepcopy=True))

    def _u(self, k, y, theta):
        """(u, f'(y), tau, threshold) of iteration k."""
        tau, alpha = np.exp(theta[k]), np.exp(theta[self.iterations + k])
        g = self.smooth.gradient(y)
        u = y.copy(deepcopy=True)
        u.dat.data[:] -= tau * g.dat.data_ro / self.w
        return u, g, tau, tau * alpha

    def advance(self, k, state, theta):
        import firedrake as fd

        m, y = state
        u, _, _, t = self._u(k, y, theta)
        z = fd.Function(self.space)
        z.dat.data[:] = soft_threshold(u.dat.data_ro, t)
        y_new = fd.Function(self.space)
        y_new.dat.data[:] = (1.0 + self.beta[k]) * z.dat.data_ro - self.beta[k] * m.dat.data_ro
        return (z, y_new)

    def reverse(self, k, state, adjoint, theta, theta_bar):
        import firedrake as fd

        m, y = state
        m_bar, y_bar = adjoint
        comm = self.space.mesh().comm
        u, g, tau, t = self._u(k, y, theta)
        du, dt = soft_threshold_derivatives(u.dat.data_ro, t)
        z_bar = m_bar.dat.data_ro + (1.0 + self.beta[k]) * y_bar.dat.data_ro
        u_bar = fd.Cofunction(self.space.dual())
        u_bar.dat.data[:] = du * z_bar
        # threshold t = tau * alpha: d t / d log tau = d t / d log alpha = t
        t_bar = comm.allreduce(float(np.sum(dt * z_bar))) * t
        # u = y - tau W^{-1} f'(y)
        winv_ubar = fd.Function(self.space)
        winv_ubar.dat.data[:] = u_bar.dat.data_ro / self.w
        tau_bar = -tau * dual_pairing(g, winv_ubar)
        theta_bar[k] += tau_bar + t_bar
        theta_bar[self.iterations + k] += t_bar
        h = _hessian(self.smooth, y, winv_ubar)
        y_bar_k = u_bar.copy(deepcopy=True)
        y_bar_k.dat.data[:] -= tau * h.dat.data_ro
        m_bar_k = fd.Cofunction(self.space.dual())
        m_bar_k.dat.data[:] = -self.beta[k] * y_bar.dat.data_ro
        return (m_bar_k, y_bar_k)


@unannotated
def reverse_through(solver: UnrolledSolver, loss, theta, m0=None, *, checkpointing=None, truncate: int | None = None):
    """Run ``solver`` from ``m0`` and reverse through it: a
    :class:`~pdeinv.learn.result.HypergradientResult` with ``method="unrolled"``."""
    from pdeinv.checkpointing import Checkpointing, SweepStatistics, reverse_sweep

    theta = solver.check_theta(theta)
    K = solver.iterations
    if truncate is not None and not (isinstance(truncate, (int, np.integer)) and 1 <= truncate <= K):
        raise ValueError(f"reverse_through: truncate must be an integer in [1, {K}], got {truncate!r}")
    if checkpointing is not None and not isinstance(checkpointing, Checkpointing):
        raise TypeError(f"reverse_through: checkpointing must be a pdeinv Checkpointing, "
                        f"got {type(checkpointing).__name__}")
    T = K if truncate is None else int(truncate)
    counter = SolveCounter(solver.counted) if solver.counted is not None else None
    state = solver.start(m0)
    for k in range(K - T):  # the untraced head of a truncated unrolling
        state = solver.advance(k, state, theta)
    shift = K - T
    theta_bar = np.zeros_like(theta)
    box = {}

    def advance(n, x):
        return solver.advance(shift + n, x, theta)

    def reverse(n, x_n, x_n1):
        if n == T - 1:  # the first reverse step: seed with dL/dm at the output
            m_out = solver.output(x_n1)
            box["m"] = m_out.copy(deepcopy=True)
            box["value"] = loss(m_out, theta)
            box["adjoint"] = solver.seed(x_n1, loss.gradient(m_out, theta))
            box["grad_theta"] = loss.partial_theta(m_out, theta)
            box["inner_solves"] = counter.lap() if counter else 0
            box["start"] = time.perf_counter()
        box["adjoint"] = solver.reverse(shift + n, x_n, box["adjoint"], theta, theta_bar)

    def to_array(x):
        return np.concatenate([f.dat.data_ro for f in x])

    def from_array(a):
        import firedrake as fd

        out, i = [], 0
        for _ in range(len(state)):
            f = fd.Function(solver.space)
            n = f.dat.data_ro.size
            f.dat.data[:] = a[i:i + n]
            out.append(f)
            i += n
        return tuple(out)

    stats = reverse_sweep(T, checkpointing, state, advance=advance, reverse=reverse,
                          copy=lambda x: tuple(f.copy(deepcopy=True) for f in x), to_array=to_array,
                          from_array=from_array, rank=solver.space.mesh().comm.rank, stats=SweepStatistics())
    grad = box["grad_theta"] + theta_bar
    return HypergradientResult(value=float(box["value"]), gradient=grad, method="unrolled", m=box["m"],
                               solves=counter.lap() if counter else 0, inner_solves=box["inner_solves"],
                               hessian_actions=T, peak_stored_states=stats.peak_stored_states,
                               stored_mb=stats.peak_stored_states * to_array(state).nbytes / 1e6,
                               seconds=time.perf_counter() - box["start"])
