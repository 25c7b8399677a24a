"""The Laplace approximation of the posterior at the MAP point."""

from pdeinv.posterior.laplace import BlockCovariance, LaplaceApproximation

__all__ = ["LaplaceApproximation", "BlockCovariance"]
