r"""The inverse problem: data misfit plus regularization / prior.

.. math::

    \mathcal J(m) = \Phi(m) + R(m),\qquad
    \mathcal J'(m) = J^T \partial_p\phi + R'(m),\qquad
    H_{GN}\,\delta m = J^T W J\,\delta m + R''(m)\,\delta m .

``misfit_only=True`` drops the prior part of the Hessian (what the Laplace approximation's
generalized eigenproblem needs).
"""

from __future__ import annotations

from dataclasses import dataclass

from pdeinv._checks import Choice
from pdeinv._tape import unannotated_methods

__all__ = ["InverseProblem", "CostTerms", "Hessian"]


class Hessian(Choice):
    """Which Hessian a solver uses: the full one (with the map's second-order term), Gauss–Newton, or AUTO
    (the full Hessian where the map has second derivatives, else Gauss–Newton).  Strings are accepted:
    ``Hessian("full")``."""

    AUTO = "auto"
    FULL = "full"
    GAUSS_NEWTON = "gauss_newton"


@dataclass(frozen=True)
class CostTerms:
    """The cost and its parts at one point."""

    total: float
    misfit: float
    regularization: float


@unannotated_methods
class InverseProblem:
    """:math:`\\min_m \\Phi(m) + R(m)`.

    Parameters
    ----------
    misfit : pdeinv.maps.Misfit
    prior : pdeinv.prior.Regularizer
        A regularizer or Gaussian prior on the same parameter space.
    """

    def __init__(self, misfit, prior):
        from pdeinv.maps import MisfitTerm
        from pdeinv.prior.base import Regularizer

        if not isinstance(misfit, MisfitTerm):
            raise TypeError(f"InverseProblem: misfit must be a pdeinv.maps.MisfitTerm (a Misfit, an EnsembleMisfit or "
                            f"a subclass of your own), got {type(misfit).__name__}")
        if not isinstance(prior, Regularizer):
            raise TypeError(f"InverseProblem: prior must be a pdeinv.prior.Regularizer, got {type(prior).__name__}")
        if prior.space != misfit.parameter_space:
            raise ValueError("InverseProblem: the prior and the misfit live on different parameter spaces")
        self.misfit = misfit
        self.prior = prior
        self.parameter_space = misfit.parameter_space

    @property
    def preconditioner(self):
        """``P(c: Cofunction) -> Function`` for CG and the gradient norm: the prior's
        (:meth:`pdeinv.prior.Regularizer.preconditioner`: its covariance for a Gaussian prior)."""
        return self.prior.preconditioner()

    @property
    def full_hessian_available(self) -> bool:
        """Whether the misfit provides second derivatives (:attr:`pdeinv.maps.MisfitTerm.second_derivatives`:
        its map's, :attr:`pdeinv.maps.ParameterToObservable.second_derivatives`)."""
        return self.misfit.second_derivatives

    def resolve(self, hessian) -> Hessian:
        """:class:`Hessian` ``hessian`` (or its string) with AUTO decided for this problem."""
        h = Hessian(hessian)
        if h is Hessian.AUTO:
            return Hessian.FULL if self.full_hessian_available else Hessian.GAUSS_NEWTON
        return h

    @property
    def counts(self) -> dict:
        """The forward map's work counters (forward solves, JVPs, VJPs, linear solves)."""
        return dict(self.misfit.counts)

    def __call__(self, m) -> float:
        """:math:`\\mathcal J(m)` (so a problem with a smooth regularizer can be the smooth part of FISTA)."""
        return self.cost(m).total

    def cost(self, m) -> CostTerms:
        phi = self.misfit(m)
        reg = self.prior(m)
        return CostTerms(phi + reg, phi, reg)

    def gradient(self, m):
        """:math:`\\mathcal J'(m)` as a Cofunction."""
        g = self.misfit.gradient(m)
        g += self.prior.gradient(m)
        return g

    def hessian_action_block(self, m, dms, *, misfit_only: bool = False, hessian: Hessian = Hessian.GAUSS_NEWTON):
        """:meth:`hessian_action` of a list of directions, Gauss–Newton or full (``hessian``; AUTO: full where
        the misfit has second derivatives).  The misfit part is blocked (one pass of the forward/adjoint
        solves for all of them where the model supports it) — unless a subclass overrides
        :meth:`hessian_action`, whose own action is then applied to each direction."""
        full = self.resolve(hessian) is Hessian.FULL
        if full and not self.full_hessian_available:
            raise NotImplementedError(f"{type(self.misfit).__name__}: no full Hessian (its map has no second "
                                      "derivatives); use hessian='gauss_newton'")
        if type(self).hessian_action is not InverseProblem.hessian_action:  # a user's own action wins
            return [self.hessian_action(m, dm, misfit_only=misfit_only, gauss_newton=not full) for dm in dms]
        hs = self.misfit.hessian_action_block(m, dms) if full else self.misfit.gauss_newton_action_block(m, dms)
        if not misfit_only:
            for h, dm in zip(hs, dms, strict=True):
                h += self.prior.hessian_action(m, dm)
        return hs

    def hessian_action(self, m, dm, *, misfit_only: bool = False, gauss_newton: bool = True):
        """Hessian action :math:`(J^T W J + R'')\\,\\delta m` (a Cofunction); ``gauss_newton=False``
        adds the second-order term of the map (full Newton)."""
        h = self.misfit.gauss_newton_action(m, dm) if gauss_newton else self.misfit.hessian_action(m, dm)
        if not misfit_only:
            h += self.prior.hessian_action(m, dm)
        return h
