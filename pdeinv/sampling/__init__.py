r"""Sampling the posterior: function-space MCMC (pCN, gpCN, ∞-MALA, h-MALA, delayed acceptance),
chains over ``firedrake.Ensemble`` members, ArviZ diagnostics.

The data path: parameter → forward → observation → misfit + prior → derivatives → optimizer →
posterior (Laplace) → **sampler** (here: exact samples of the true posterior, with the Laplace
approximation as a proposal's geometry).
"""

from pdeinv.sampling.chain import SamplingOptions, SamplingResult, draw_seeds, sample
from pdeinv.sampling.diagnostics import QuantityDiagnostics, summarize
from pdeinv.sampling.kernels import GPCN, HMALA, MALA, PCN, DelayedAcceptance, Kernel, KernelKind, make_kernel
from pdeinv.sampling.targets import LaplaceReference, LaplaceSurrogate, Potential, PriorReference, ProblemPotential

__all__ = ["sample", "SamplingOptions", "SamplingResult", "draw_seeds", "summarize", "QuantityDiagnostics",
           "Kernel", "KernelKind", "make_kernel", "PCN", "GPCN", "MALA", "HMALA", "DelayedAcceptance", "Potential",
           "ProblemPotential", "LaplaceSurrogate", "PriorReference", "LaplaceReference"]
