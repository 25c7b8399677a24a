r"""Hypergradients :math:`\mathrm dL(m^*(\theta),\theta)/\mathrm d\theta` of an outer loss through an inversion.

With :math:`m^*(\theta) = \arg\min_m\mathcal J(m;\theta)`, :math:`H = \partial^2_{mm}\mathcal J` and
:math:`\mathcal J_{m\theta} = \partial^2_{m\theta}\mathcal J` (:class:`~pdeinv.learn.hyper.HyperProblem`):

``method="implicit"``
    Differentiate the optimality condition :math:`\partial_m\mathcal J(m^*;\theta) = 0`:
    :math:`\mathrm dm^*/\mathrm d\theta = -H^{-1}\mathcal J_{m\theta}`, so

    .. math::

        H\lambda = \partial_m L,\qquad
        \frac{\mathrm dL}{\mathrm d\theta} = \partial_\theta L - \langle \mathcal J_{m\theta}, \lambda\rangle,

    one CG solve on Hessian actions (prior-preconditioned), exact when :math:`m^*` is converged.
``method="jfb"``
    Jacobian-free backpropagation: :math:`H^{-1}` replaced by the preconditioner :math:`P` (the prior
    covariance for a Gaussian prior, else the :math:`L^2` Riesz map): :math:`\lambda = P\,\partial_m L`,
    no Hessian action.  A descent direction when :math:`P` is close enough to :math:`H^{-1}`
    (e.g. :math:`P^{1/2}HP^{1/2}` within a factor 3 of the identity on the relevant subspace, Fung
    et al. 2022); its cosine with the exact hypergradient is what to check.
``method="unrolled"``
    Reverse mode through the iterations of an actual solver (:mod:`pdeinv.learn.unrolled`):
    exact for the executed program, whether converged or not.

``HypergradientResult.solves`` counts the forward model's linear (PDE) solves of the derivative
phase; ``inner_solves`` those of computing :math:`m^*` (for ``"unrolled"``, the forward iterations).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from pdeinv._tape import unannotated
from pdeinv.optimize.newton_cg import NewtonCGOptions

__all__ = ["HypergradientOptions", "HypergradientResult", "hypergradient", "solve_inner", "SolveCounter", "cosine"]

_METHODS = ("implicit", "jfb", "unrolled")


@dataclass(frozen=True)
class HypergradientOptions:
    """Options of :func:`hypergradient`.

    Attributes
    ----------
    inner : NewtonCGOptions
        The inner solve :math:`m^*(\\theta)` (tight by default: the implicit formula assumes it converged).
    cg_rtol : float
        Relative tolerance of the implicit method's CG solve :math:`H\\lambda = \\partial_m L`.
    max_cg_iterations : int
    hessian : {"full", "gauss_newton"}
        The Hessian of the implicit solve: ``"full"`` (exact; needs the map's second derivatives,
        present in every shipped and generic model) or Gauss–Newton (exact for maps linear in m, an
        approximation otherwise).
    jfb_preconditioner : {"prior", "identity"}
        :math:`P` of JFB: the problem's preconditioner (prior covariance) or the :math:`L^2` Riesz map.
    """

    inner: NewtonCGOptions = field(default_factory=lambda: NewtonCGOptions(gradient_rtol=1e-10, max_iterations=50,
                                                                         max_cg_iterations=500, quiet=True))
    cg_rtol: float = 1e-10
    max_cg_iterations: int = 500
    hessian: str = "full"
    jfb_preconditioner: str = "prior"

    def __post_init__(self):
        if not isinstance(self.inner, NewtonCGOptions):
            raise TypeError(f"HypergradientOptions: inner must be NewtonCGOptions, got {type(self.inner).__name__}")
        if not (0 < self.cg_rtol < 1):
            raise ValueError(f"HypergradientOptions: cg_rtol must be in (0, 1), got {self.cg_rtol!r}")
        if not (isinstance(self.max_cg_iterations, int) and self.max_cg_iterations >= 1):
            raise ValueError(f"HypergradientOptions: max_cg_iterations must be a positive integer, "
                             f"got {self.max_cg_iterations!r}")
        if self.hessian not in ("full", "gauss_newton"):
            raise ValueError(f"HypergradientOptions: hessian must be 'full' or 'gauss_newton', got {self.hessian!r}")
        if self.jfb_preconditioner not in ("prior", "identity"):
            raise ValueError(f"HypergradientOptions: jfb_preconditioner must be 'prior' or 'identity', "
                             f"got {self.jfb_preconditioner!r}")


@dataclass(frozen=True)
class HypergradientResult:
    """A hypergradient and what it cost.

    Attributes
    ----------
    value : float
        :math:`L(m^*(\\theta), \\theta)`.
    gradient : numpy.ndarray
        :math:`\\mathrm dL/\\mathrm d\\theta`.
    method : str
    m : firedrake.Function
        The reconstruction :math:`m^*(\\theta)` (for ``"unrolled"``: the last iterate).
    solves : int
        Forward-model linear solves of the derivative phase.
    inner_solves : int
        Forward-model linear solves of computing ``m``.
    cg_iterations : int
        CG iterations of the implicit solve (0 otherwise).
    hessian_actions : int
        Hessian actions of the derivative phase.
    peak_stored_states : int
        Iterates held at once by the unrolled reverse sweep (0 otherwise).
    stored_mb : float
        Their size on this rank in MB (the memory that checkpointing bounds).
    seconds : float
        Wall time of the derivative phase.
    inner : OptimizationResult or None
        The inner solve (``None`` if ``m_star`` was given or for ``"unrolled"``).
    """

    value: float
    gradient: np.ndarray
    method: str
    m: object
    solves: int
    inner_solves: int
    cg_iterations: int = 0
    hessian_actions: int = 0
    peak_stored_states: int = 0
    stored_mb: float = 0.0
    seconds: float = 0.0
    inner: object = None


class SolveCounter:
    """Forward-model linear solves (``map.counts["linear_solves"]``) since the last :meth:`lap`."""

    def __init__(self, forward_map):
        self.map = forward_map
        self._last = self._now()

    def _now(self):
        c = self.map.counts
        return int(c.get("linear_solves", 0))

    def lap(self) -> int:
        now = self._now()
        out, self._last = now - self._last, now
        return out


def solve_inner(hyper, theta, m0=None, *, options: NewtonCGOptions | None = None, log=None):
    """:math:`m^*(\\theta)` by Newton–CG from ``m0`` (default zero): an OptimizationResult."""
    import firedrake as fd

    from pdeinv.optimize.newton_cg import newton_cg

    opts = options or HypergradientOptions().inner
    m0 = m0 if m0 is not None else fd.Function(hyper.parameter_space)
    return newton_cg(hyper.problem(theta), m0, options=opts, log=log)


@unannotated
def hypergradient(hyper, loss, theta, *, method: str = "implicit", m0=None, m_star=None,
                  options: HypergradientOptions | None = None, unrolled=None, checkpointing=None,
                  truncate: int | None = None, log=None) -> HypergradientResult:
    r""":math:`\mathrm dL(m^*(\theta),\theta)/\mathrm d\theta` (see the module docstring).

    Parameters
    ----------
    hyper : pdeinv.learn.HyperProblem
        (For ``"unrolled"`` the solver carries the problem: ``hyper`` may be ``None``.)
    loss : pdeinv.learn.OuterLoss
    theta : array_like
    method : {"implicit", "jfb", "unrolled"}
    m0 : Function, optional
        Start of the inner solve (a warm start).
    m_star : Function, optional
        A converged :math:`m^*(\theta)`: skips the inner solve (implicit, jfb).
    options : HypergradientOptions, optional
    unrolled : pdeinv.learn.unrolled.UnrolledSolver
        The solver to reverse through (``"unrolled"`` only; its iterations start at ``m0``).
    checkpointing : pdeinv.checkpointing.Checkpointing, optional
        Bounded memory for ``"unrolled"``.
    truncate : int, optional
        ``"unrolled"``: reverse through the last ``truncate`` iterations only.
    """
    if method not in _METHODS:
        raise ValueError(f"hypergradient: method must be one of {_METHODS}, got {method!r}")
    opts = options or HypergradientOptions()
    if method == "unrolled":
        from pdeinv.learn.unrolled import UnrolledSolver, reverse_through

        if not isinstance(unrolled, UnrolledSolver):
            raise TypeError("hypergradient: method='unrolled' needs unrolled=<an UnrolledSolver>, "
                            f"got {type(unrolled).__name__}")
        return reverse_through(unrolled, loss, theta, m0, checkpointing=checkpointing, truncate=truncate)
    if unrolled is not None or checkpointing is not None or truncate is not None:
        raise ValueError(f"hypergradient: unrolled / checkpointing / truncate apply to method='unrolled' only, "
                         f"not {method!r}")
    theta = hyper.check_theta(theta)
    counter = SolveCounter(hyper.map)
    inner = None
    if m_star is None:
        inner = solve_inner(hyper, theta, m0, options=opts.inner, log=log)
        m_star = inner.m
    inner_solves = counter.lap()
    start = time.perf_counter()
    problem = hyper.problem(theta)
    b = loss.gradient(m_star, theta)
    value = loss(m_star, theta)
    from pdeinv.optimize.newton_cg import conjugate_gradient

    P = problem.preconditioner
    cg_its, actions = 0, 0
    if method == "implicit":
        full = opts.hessian == "full"

        def apply_h(d):
            return problem.hessian_action(m_star, d, gauss_newton=not full)

        cg = conjugate_gradient(apply_h, b, P, rtol=opts.cg_rtol, max_iterations=opts.max_cg_iterations,
                                space=hyper.parameter_space)
        if cg.reason == "negative curvature":
            raise ArithmeticError("hypergradient: the Hessian at m* is not positive definite (m* is not a "
                                  "minimiser, or use hessian='gauss_newton')")
        lam, cg_its, actions = cg.solution, cg.iterations, cg.iterations
    else:
        lam = P(b) if opts.jfb_preconditioner == "prior" else b.riesz_representation("L2")
    grad = loss.partial_theta(m_star, theta) - hyper.mixed(m_star, theta, lam)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(grad)):
        raise ArithmeticError(f"hypergradient: non-finite result {grad}")
    return HypergradientResult(value=float(value), gradient=grad, method=method, m=m_star, solves=counter.lap(),
                               inner_solves=inner_solves, cg_iterations=cg_its, hessian_actions=actions,
                               seconds=seconds, inner=inner)


def cosine(a, b) -> float:
    """Cosine of the angle between two hypergradients."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else math.nan
