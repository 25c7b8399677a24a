r"""Firedrake's autoregressive covariance (Weaver & Mirouze 2013) as a pdeinv Gaussian prior.

:class:`firedrake.adjoint.AutoregressiveCovariance` builds an :math:`m`-th order autoregressive
correlation from :math:`m` implicit diffusion steps, normalised to marginal standard deviation
:math:`\sigma` and length scale :math:`L`:
:math:`\mathcal C = \lambda (K^{-1}M)^m M^{-1}\lambda`.  This class only adapts it to the
:class:`~pdeinv.prior.base.GaussianPrior` interface (precision and covariance actions, seeded
samples, a mean), so it can be swapped for the BiLaplacian prior anywhere.
"""

from __future__ import annotations

from pdeinv.prior.base import GaussianPrior

__all__ = ["AutoregressivePrior"]


class AutoregressivePrior(GaussianPrior):
    """Gaussian prior with Firedrake's m-th order autoregressive covariance.

    Parameters
    ----------
    space : firedrake.FunctionSpace
    length_scale : float
        Correlation length scale :math:`L`.
    sigma : float
        Marginal standard deviation.
    order : int
        Number of diffusion steps :math:`m`; Firedrake requires it to be even (then half the steps
        are an exact square root for sampling). Default 4.
    mean : Function or expression, optional
    **kwargs
        Passed to ``AutoregressiveCovariance`` (``solver_parameters``, ``bcs``, ``form``...).
    """

    def __init__(self, space, *, length_scale: float, sigma: float, order: int = 4, mean=None, **kwargs):
        from firedrake.adjoint import AutoregressiveCovariance

        if not (length_scale > 0 and sigma > 0):
            raise ValueError(f"AutoregressivePrior: length_scale and sigma must be positive, got "
                             f"{length_scale}, {sigma}")
        super().__init__(space, mean)
        self.covariance = AutoregressiveCovariance(space, length_scale, sigma, order, **kwargs)

    def precision_action(self, dm):
        self._check(dm, "dm")
        return self.covariance.apply_inverse(dm)

    def covariance_action(self, c):
        from pdeinv.maps import check_function

        check_function(c, self.space, "AutoregressivePrior: c", dual=True)
        return self.covariance.apply_action(c)

    def sample_centered(self, *, seed: int):
        from firedrake.adjoint import WhiteNoiseGenerator

        return self.covariance.sample(rng=WhiteNoiseGenerator(self.space, seed=seed))
