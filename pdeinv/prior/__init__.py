"""Regularizers and Gaussian priors (closed form, never taped)."""

from pdeinv.prior.autoregressive import AutoregressivePrior
from pdeinv.prior.base import GaussianPlus, GaussianPrior, Regularizer
from pdeinv.prior.bilaplacian import BiLaplacianPrior, bilaplacian_coefficients
from pdeinv.prior.product import ProductPrior
from pdeinv.prior.real import RealGaussianPrior
from pdeinv.prior.tikhonov import TikhonovH1, TikhonovL2
from pdeinv.prior.tv import L1, TotalVariation

__all__ = ["Regularizer", "GaussianPrior", "BiLaplacianPrior", "bilaplacian_coefficients", "TikhonovL2",
           "TikhonovH1", "TotalVariation", "L1", "AutoregressivePrior", "GaussianPlus",
           "RealGaussianPrior", "ProductPrior"]
