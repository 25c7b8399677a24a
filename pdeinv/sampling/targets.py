r"""What a Markov chain samples, split the way function-space MCMC needs it.

The posterior of an :class:`~pdeinv.problem.InverseProblem` with a Gaussian prior
:math:`\mu_0 = \mathcal N(\bar m, \mathcal C)` (possibly with further regularizers, :class:`GaussianPlus`) is

.. math::

    \frac{d\mu}{d\mu_0}(m) \propto \exp(-\Phi(m)),\qquad \Phi = \text{misfit} + \text{non-Gaussian terms}.

A kernel proposes moves that are reversible with respect to a **reference Gaussian**
:math:`\nu = \mathcal N(m_r, \mathcal K)` — the prior (pCN, ∞-MALA) or the Laplace approximation
:math:`\mathcal N(m_{MAP}, \Gamma_{post})` (gpCN, h-MALA) — and needs only the potential of the posterior
relative to :math:`\nu`,

.. math::

    \psi(m) = -\log\frac{d\mu}{d\nu}(m) = \Phi(m) + \Big[\tfrac12\|m-\bar m\|^2_{\mathcal C^{-1}}
      - \tfrac12\|m - m_r\|^2_{\mathcal K^{-1}}\Big] + \text{const}.

For the prior reference the bracket is 0.  For the Laplace reference
(:math:`\Gamma_{post}^{-1} = \mathcal C^{-1} + \mathcal C^{-1}U\Lambda U^T\mathcal C^{-1}`) it is
:math:`\langle \mathcal C^{-1}(m_{MAP}-\bar m),\, m - m_{MAP}\rangle - \tfrac12\sum_i\lambda_i
(u_i^T\mathcal C^{-1}(m-m_{MAP}))^2`: a linear plus a rank-:math:`k` term, well defined as the mesh is
refined (the two Cameron–Martin norms are never formed, so nothing of the size of the dof count cancels).

A :class:`Potential` is where :math:`\Phi` comes from: the problem itself (a PDE solve per evaluation)
or a **surrogate** for the first stage of delayed acceptance (:class:`LaplaceSurrogate`: the quadratic
model of the Laplace approximation, no PDE solve).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from pdeinv._tape import unannotated_methods
from pdeinv.linalg.arrays import axpy

__all__ = ["Reference", "PriorReference", "LaplaceReference", "Potential", "ProblemPotential",
           "LaplaceSurrogate", "Evaluation", "gaussian_parts"]


def gaussian_parts(problem):
    """``(gaussian prior, non-Gaussian extras or None)`` of ``problem.prior``; one TypeError otherwise."""
    from pdeinv.prior.base import GaussianPlus, GaussianPrior

    if isinstance(problem.prior, GaussianPlus):
        return problem.prior.gaussian, problem.prior
    if isinstance(problem.prior, GaussianPrior):
        return problem.prior, None
    raise TypeError(f"sampling: the problem's prior must be a GaussianPrior or GaussianPlus (MCMC in function "
                    f"space needs a Gaussian reference measure), got {type(problem.prior).__name__}")


@dataclass
class Evaluation:
    """The potential at one point: :math:`\\psi(m)` and, for gradient-based kernels, :math:`\\psi'(m)`
    (a Cofunction) and :math:`\\mathcal K\\psi'(m)` (a Function)."""

    m: object
    psi: float
    gradient: object = None
    k_gradient: object = None


@unannotated_methods
class Reference(ABC):
    """A Gaussian reference measure :math:`\\mathcal N(m_r, \\mathcal K)` of a kernel."""

    mean = None

    @abstractmethod
    def sample_centered(self, *, seed: int):
        """A draw of :math:`\\mathcal N(0, \\mathcal K)`."""

    @abstractmethod
    def covariance_action(self, c):
        """:math:`\\mathcal K c` (Cofunction -> Function)."""

    def shift(self, m):
        """The bracket of the module docstring at ``m`` and its gradient: ``(value, Cofunction or None)``
        (None: zero)."""
        return 0.0, None


class PriorReference(Reference):
    """The prior :math:`\\mathcal N(\\bar m, \\mathcal C)`."""

    def __init__(self, prior):
        self.prior = prior
        self.mean = prior.mean

    def sample_centered(self, *, seed: int):
        return self.prior.sample_centered(seed=seed)

    def covariance_action(self, c):
        return self.prior.covariance_action(c)


class LaplaceReference(Reference):
    """The Laplace approximation :math:`\\mathcal N(m_{MAP}, \\Gamma_{post})`
    (:class:`pdeinv.posterior.LaplaceApproximation`)."""

    def __init__(self, laplace):
        import firedrake as fd

        self.laplace = laplace
        self.mean = laplace.mean
        prior = laplace.prior
        self._g0 = prior.precision_action(fd.Function(prior.space).assign(laplace.mean - prior.mean))

    def sample_centered(self, *, seed: int):
        return self.laplace.sample_centered(seed=seed)

    def covariance_action(self, c):
        return self.laplace.covariance_action(c)

    def shift(self, m):
        import firedrake as fd

        from pdeinv.verify import dual_pairing

        x = fd.Function(m.function_space()).assign(m - self.mean)
        quad, grad = self.laplace.misfit_hessian_form(x)
        value = dual_pairing(self._g0, x) - quad
        g = self._g0.copy(deepcopy=True)
        axpy(g, -1.0, grad)
        return value, g


@unannotated_methods
class Potential(ABC):
    """Where :math:`\\Phi` (the posterior's potential relative to the prior) comes from."""

    @abstractmethod
    def value(self, m) -> float:
        """:math:`\\Phi(m)`."""

    @abstractmethod
    def gradient(self, m):
        """:math:`\\Phi'(m)` as a Cofunction (after :meth:`value` at the same ``m``)."""

    def solves(self) -> int:
        """PDE solves (forward + adjoint) this potential has done so far (0: none needed)."""
        return 0

    def evaluate(self, m, reference: Reference, *, gradient: bool) -> Evaluation:
        """:math:`\\psi = \\Phi +` the reference's shift at ``m`` (and its gradients if asked)."""
        shift, dshift = reference.shift(m)
        e = Evaluation(m, self.value(m) + shift)
        if gradient:
            g = self.gradient(m)
            if dshift is not None:
                axpy(g, 1.0, dshift)
            e.gradient, e.k_gradient = g, reference.covariance_action(g)
        return e


class ProblemPotential(Potential):
    """:math:`\\Phi` = the problem's misfit plus its non-Gaussian regularizers (PDE solves)."""

    def __init__(self, problem):
        self.problem = problem
        self._extras = gaussian_parts(problem)[1]

    def solves(self) -> int:
        c = self.problem.counts
        return c.get("forward", 0) + c.get("vjp", 0)

    def value(self, m) -> float:
        phi = self.problem.misfit(m)
        if self._extras is not None:
            phi += sum(r(m) for r in self._extras.extras)
        return phi

    def gradient(self, m):
        g = self.problem.misfit.gradient(m)
        if self._extras is not None:
            for r in self._extras.extras:
                axpy(g, 1.0, r.gradient(m))
        return g


class LaplaceSurrogate(Potential):
    r"""The potential whose posterior is the Laplace approximation itself: the quadratic model
    :math:`\Phi_s(m) = -\langle\mathcal C^{-1}(m_{MAP}-\bar m), m - m_{MAP}\rangle
    + \tfrac12\sum_i\lambda_i(u_i^T\mathcal C^{-1}(m - m_{MAP}))^2` (the Gauss–Newton model at the MAP,
    with the gradient there taken from the optimality condition).  No PDE solve: the cheap first stage of
    delayed acceptance.
    """

    def __init__(self, laplace):
        self._reference = LaplaceReference(laplace)

    def value(self, m) -> float:
        return -self._reference.shift(m)[0]

    def gradient(self, m):
        from pdeinv.linalg.arrays import scale

        g = self._reference.shift(m)[1]
        scale(g, -1.0)
        return g
