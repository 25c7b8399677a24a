"""Optimizers to the MAP point."""

from pdeinv.optimize.bounds import Bounds, projected_newton_cg
from pdeinv.optimize.lbfgs import LBFGSOptions, lbfgs
from pdeinv.optimize.newton_cg import CGResult, NewtonCGOptions, conjugate_gradient, newton_cg
from pdeinv.optimize.proximal import FISTAOptions, fista
from pdeinv.optimize.result import OptimizationResult

__all__ = ["lbfgs", "LBFGSOptions", "newton_cg", "NewtonCGOptions", "conjugate_gradient", "CGResult",
           "OptimizationResult", "fista", "FISTAOptions",
           "Bounds", "projected_newton_cg"]
