r"""Regularizers and Gaussian priors: closed-form cost, gradient and Hessian action, never taped.

A :class:`Regularizer` :math:`R(m)` on a parameter space :math:`V_m` gives

- ``R(m)`` (a float),
- ``gradient(m)``: :math:`R'(m)` as a **Cofunction** in :math:`V_m^*`,
- ``hessian_action(m, dm)``: :math:`R''(m)\,\delta m` as a Cofunction.

A :class:`GaussianPrior` :math:`\mathcal N(\bar m, \mathcal C)` is the regularizer
:math:`\tfrac12\|m-\bar m\|^2_{\mathcal C^{-1}}` and also offers the covariance action
:math:`\mathcal C: V_m^* \to V_m` (the preconditioner of prior-preconditioned CG), the precision action
and samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pdeinv._tape import unannotated_methods

__all__ = ["Regularizer", "GaussianPrior", "GaussianPlus"]


@unannotated_methods
class Regularizer(ABC):
    """Base class.  ``space`` is the parameter space :math:`V_m`."""

    def __init_subclass__(cls, **kwargs):
        # every subclass (a user's too) runs its public methods with pyadjoint annotation off
        super().__init_subclass__(**kwargs)
        unannotated_methods(cls)

    def __init__(self, space):
        self.space = space
        self.comm = space.mesh().comm

    def _check(self, m, name="m"):
        from pdeinv.maps import check_function

        check_function(m, self.space, f"{type(self).__name__}: {name}")

    def preconditioner(self):
        r"""``P(c: Cofunction) -> Function``, the preconditioner an optimizer uses with this term: the
        :math:`L^2` Riesz map here; a Gaussian prior's covariance (:class:`GaussianPrior`)."""
        return lambda c: c.riesz_representation("L2")

    @abstractmethod
    def __call__(self, m) -> float: ...

    @abstractmethod
    def gradient(self, m): ...

    @abstractmethod
    def hessian_action(self, m, dm): ...


class GaussianPrior(Regularizer):
    r"""A Gaussian measure :math:`\mathcal N(\bar m, \mathcal C)` used as a regularizer.

    Subclasses implement :meth:`precision_action` (:math:`\mathcal C^{-1}`: Function -> Cofunction),
    :meth:`covariance_action` (:math:`\mathcal C`: Cofunction -> Function) and
    :meth:`sample_centered` (a draw of :math:`\mathcal N(0, \mathcal C)`).
    """

    def __init__(self, space, mean=None):
        import firedrake as fd

        self._require_space(space)
        super().__init__(space)
        self.mean = fd.Function(space, name="prior_mean")
        if mean is not None:
            self.mean.interpolate(mean) if not isinstance(mean, fd.Function) else self.mean.assign(mean)

    def _require_space(self, space) -> None:
        """One clear error unless this prior can live on ``space`` (default: one field, not mixed, not R)."""
        from pdeinv._checks import require_field_space

        require_field_space(type(self).__name__, space)

    def preconditioner(self):
        """The covariance action: the preconditioner of prior-preconditioned CG."""
        return self.covariance_action

    @abstractmethod
    def precision_action(self, dm): ...

    @abstractmethod
    def covariance_action(self, c): ...

    def covariance_action_block(self, cs):
        """:meth:`covariance_action` of a list of Cofunctions (one at a time unless a subclass blocks them)."""
        return [self.covariance_action(c) for c in cs]

    @abstractmethod
    def sample_centered(self, *, seed: int): ...

    def sample(self, *, seed: int, name: str = "prior_sample", **kwargs):
        """A draw of :math:`\\mathcal N(\\bar m, \\mathcal C)`, seeded (``kwargs`` go to
        :meth:`sample_centered`, e.g. ``reproducible=True`` for the BiLaplacian prior)."""
        s = self.sample_centered(seed=seed, **kwargs)
        s.assign(s + self.mean)
        s.rename(name)
        return s

    def _deviation(self, m):
        import firedrake as fd

        self._check(m)
        return fd.Function(self.space).assign(m - self.mean)

    def __call__(self, m) -> float:
        from pdeinv.verify import dual_pairing

        d = self._deviation(m)
        return 0.5 * dual_pairing(self.precision_action(d), d)

    def gradient(self, m):
        return self.precision_action(self._deviation(m))

    def hessian_action(self, m, dm):
        self._check(dm, "dm")
        return self.precision_action(dm)


class GaussianPlus(Regularizer):
    r"""A Gaussian prior plus further regularizers, e.g. :math:`\tfrac12\|m-\bar m\|^2_{\mathcal C^{-1}}
    + \alpha\,\mathrm{TV}(m)`.

    Cost, gradient and Hessian action are the sums.  ``gaussian`` stays available: Newton–CG uses its
    covariance as the preconditioner, and the Laplace approximation takes it as the reference measure
    with the other terms' Hessians added to the misfit Hessian (the posterior is then
    :math:`\propto \exp(-\Phi - R_{\text{extra}})\,\mathcal N(\bar m, \mathcal C)`).
    """

    def __init__(self, gaussian: GaussianPrior, *extras: Regularizer):
        super().__init__(gaussian.space)
        for r in extras:
            if r.space != gaussian.space:
                raise ValueError("GaussianPlus: every regularizer must live on the Gaussian prior's space")
        self.gaussian = gaussian
        self.extras = tuple(extras)
        self.mean = gaussian.mean

    def __call__(self, m) -> float:
        return self.gaussian(m) + sum(r(m) for r in self.extras)

    def preconditioner(self):
        return self.gaussian.covariance_action

    def _sum(self, first, rest):
        from pdeinv.linalg.arrays import axpy

        for c in rest:
            axpy(first, 1.0, c)
        return first

    def gradient(self, m):
        return self._sum(self.gaussian.gradient(m), [r.gradient(m) for r in self.extras])

    def hessian_action(self, m, dm):
        return self._sum(self.gaussian.hessian_action(m, dm), [r.hessian_action(m, dm) for r in self.extras])

    def extras_hessian_action(self, m, dm):
        """The Hessian action of the non-Gaussian terms only (a Cofunction)."""
        import firedrake as fd

        return self._sum(fd.Cofunction(self.space.dual()), [r.hessian_action(m, dm) for r in self.extras])
