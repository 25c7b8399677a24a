r"""Differentiating through the inversion: hyperparameters, hypergradients, bilevel learning,
classical parameter-choice rules and unrolled (LISTA-style) solvers.

The data path: hyperparameters :math:`\theta` (:mod:`~pdeinv.learn.hyper`) → the family of inverse
problems :math:`\mathcal J(m;\theta)` → reconstruction :math:`m^*(\theta)` → outer loss
:math:`L(m^*,\theta)` (:mod:`~pdeinv.learn.loss`) → hypergradient (:mod:`~pdeinv.learn.hypergradient`:
implicit, Jacobian-free; :mod:`~pdeinv.learn.unrolled`: reverse through a solver's iterations) →
outer optimizer (:mod:`~pdeinv.learn.bilevel`); baselines in :mod:`~pdeinv.learn.choice`.
"""

from pdeinv.learn.bilevel import (
    LearningOptions,
    LearningResult,
    TrainingPair,
    learn_hyperparameters,
    learn_unrolled,
    mean_loss,
)
from pdeinv.learn.choice import ParameterChoice, discrepancy_principle, gcv, l_curve, observation_count
from pdeinv.learn.hyper import (
    HyperProblem,
    HyperTerm,
    MaternParameters,
    RegularizerSum,
    Weight,
    WeightField,
    grid_patches,
    noise_level,
    prior_variance,
    regularization_weight,
)
from pdeinv.learn.hypergradient import HypergradientOptions, cosine, hypergradient, solve_inner
from pdeinv.learn.loss import HeldOutMisfit, OuterLoss, ReconstructionError
from pdeinv.learn.result import HypergradientResult, SolveCounter
from pdeinv.learn.unrolled import GradientDescent, ProximalGradient, UnrolledSolver, fista_momentum, reverse_through

__all__ = ["HyperProblem", "HyperTerm", "MaternParameters", "RegularizerSum", "Weight", "WeightField", "grid_patches",
           "noise_level", "prior_variance", "regularization_weight", "HypergradientOptions", "HypergradientResult",
           "SolveCounter", "cosine", "hypergradient", "solve_inner", "HeldOutMisfit", "OuterLoss",
           "ReconstructionError", "GradientDescent", "ProximalGradient", "UnrolledSolver", "fista_momentum",
           "reverse_through", "LearningOptions", "LearningResult", "TrainingPair", "learn_hyperparameters",
           "learn_unrolled",
           "mean_loss", "ParameterChoice", "discrepancy_principle", "gcv", "l_curve", "observation_count"]
