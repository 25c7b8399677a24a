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
Unrolled
    Reverse mode through the iterations of an actual solver, exact for the executed program whether
    converged or not, is :func:`pdeinv.learn.unrolled.reverse_through` (same result type).

``HypergradientResult.solves`` counts the forward model's linear (PDE) solves of the derivative
phase; ``inner_solves`` those of computing :math:`m^*`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from pdeinv._checks import Choice, choice
from pdeinv._tape import unannotated
from pdeinv.learn.result import HypergradientResult, SolveCounter
from pdeinv.optimize.newton_cg import NewtonCGOptions
from pdeinv.problem import Hessian

__all__ = ["HypergradientOptions", "HypergradientResult", "HypergradientMethod", "JFBPreconditioner", "hypergradient",
           "solve_inner", "SolveCounter", "cosine"]


class HypergradientMethod(Choice):
    """Exact implicit differentiation, or Jacobian-free backpropagation (strings accepted)."""

    IMPLICIT = "implicit"
    JFB = "jfb"


class JFBPreconditioner(Choice):
    """:math:`P` of JFB: the problem's (prior covariance) or the :math:`L^2` Riesz map."""

    PRIOR = "prior"
    IDENTITY = "identity"


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
    hessian : pdeinv.problem.Hessian or {"auto", "full", "gauss_newton"}
        The Hessian of the implicit solve: ``FULL`` (exact; needs the map's second derivatives — StationaryModel,
        TimeSteppingModel, TapedMap and maps linear in m have them), ``GAUSS_NEWTON`` (exact for maps
        linear in m, an approximation otherwise), or ``AUTO`` (default): the full Hessian where the map has
        it, else Gauss–Newton; :attr:`HypergradientResult.hessian` says which ran.
    jfb_preconditioner : JFBPreconditioner or {"prior", "identity"}
        :math:`P` of JFB: the problem's preconditioner (prior covariance) or the :math:`L^2` Riesz map.
    """

    inner: NewtonCGOptions = field(default_factory=lambda: NewtonCGOptions(gradient_rtol=1e-10, max_iterations=50,
                                                                         max_cg_iterations=500, quiet=True))
    cg_rtol: float = 1e-10
    max_cg_iterations: int = 500
    hessian: Hessian = Hessian.AUTO
    jfb_preconditioner: JFBPreconditioner = JFBPreconditioner.PRIOR

    def __post_init__(self):
        if not isinstance(self.inner, NewtonCGOptions):
            raise TypeError(f"HypergradientOptions: inner must be NewtonCGOptions, got {type(self.inner).__name__}")
        if not (0 < self.cg_rtol < 1):
            raise ValueError(f"HypergradientOptions: cg_rtol must be in (0, 1), got {self.cg_rtol!r}")
        if not (isinstance(self.max_cg_iterations, int) and self.max_cg_iterations >= 1):
            raise ValueError(f"HypergradientOptions: max_cg_iterations must be a positive integer, "
                             f"got {self.max_cg_iterations!r}")
        object.__setattr__(self, "hessian", choice(Hessian, self.hessian, "HypergradientOptions", "hessian"))
        object.__setattr__(self, "jfb_preconditioner", choice(JFBPreconditioner, self.jfb_preconditioner,
                                                              "HypergradientOptions", "jfb_preconditioner"))


def solve_inner(hyper, theta, m0=None, *, options: NewtonCGOptions | None = None, log=None):
    """:math:`m^*(\\theta)` by Newton–CG from ``m0`` (default zero): an OptimizationResult."""
    import firedrake as fd

    from pdeinv.optimize.newton_cg import newton_cg

    opts = options or HypergradientOptions().inner
    m0 = m0 if m0 is not None else fd.Function(hyper.parameter_space)
    return newton_cg(hyper.problem(theta), m0, options=opts, log=log)


@unannotated
def hypergradient(hyper, loss, theta, *, method: str = "implicit", m0=None, m_star=None,
                  options: HypergradientOptions | None = None, log=None) -> HypergradientResult:
    r""":math:`\mathrm dL(m^*(\theta),\theta)/\mathrm d\theta` (see the module docstring).

    Parameters
    ----------
    hyper : pdeinv.learn.HyperProblem
    loss : pdeinv.learn.OuterLoss
    theta : array_like
    method : {"implicit", "jfb"}
        (Through an unrolled solver: :func:`pdeinv.learn.unrolled.reverse_through`.)
    m0 : Function, optional
        Start of the inner solve (a warm start).
    m_star : Function, optional
        A converged :math:`m^*(\theta)`: skips the inner solve.
    options : HypergradientOptions, optional
    """
    try:
        method = HypergradientMethod(method)
    except ValueError:
        hint = "; through an unrolled solver use pdeinv.learn.reverse_through" if method == "unrolled" else ""
        raise ValueError(f"hypergradient: method must be one of 'implicit', 'jfb', got {method!r}{hint}") from None
    opts = options or HypergradientOptions()
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
    cg_its, actions, used = 0, 0, None
    if method is HypergradientMethod.IMPLICIT:
        used = problem.resolve(opts.hessian)
        full = used is Hessian.FULL

        def apply_h(d):
            return problem.hessian_action(m_star, d, gauss_newton=not full)

        cg = conjugate_gradient(apply_h, b, P, rtol=opts.cg_rtol, max_iterations=opts.max_cg_iterations,
                                space=hyper.parameter_space)
        if cg.reason == "negative curvature":
            raise ArithmeticError("hypergradient: the Hessian at m* is not positive definite (m* is not a "
                                  "minimiser, or use hessian='gauss_newton')")
        lam, cg_its, actions = cg.solution, cg.iterations, cg.iterations
    else:
        lam = P(b) if opts.jfb_preconditioner is JFBPreconditioner.PRIOR else b.riesz_representation("L2")
    grad = loss.partial_theta(m_star, theta) - hyper.mixed(m_star, theta, lam)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(grad)):
        raise ArithmeticError(f"hypergradient: non-finite result {grad}")
    return HypergradientResult(value=float(value), gradient=grad, method=method, m=m_star, solves=counter.lap(),
                               inner_solves=inner_solves, cg_iterations=cg_its, hessian_actions=actions,
                               seconds=seconds, inner=inner, hessian=used)


def cosine(a, b) -> float:
    """Cosine of the angle between two hypergradients."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else math.nan
