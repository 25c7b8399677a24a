r"""Where to measure: Bayesian optimal experimental design on the Laplace machinery.

The data path: parameter → forward → observation → misfit + prior → derivatives → posterior (Laplace) →
**design** (which observations to make, before making them).

1. :class:`DesignOperator` (offline, PDE solves): the low-rank representation :math:`K \approx ZZ^T` of
   the noise-whitened prior predictive covariance of every candidate observation.
2. Criteria (:mod:`pdeinv.design.criteria`, no PDE solve): EIG (D-optimal) and the goal-oriented
   A-criterion, for binary or relaxed designs, with gradients.
3. Optimizers (:mod:`pdeinv.design.optimize`): greedy, swapping greedy, relaxed with a sparsifying
   continuation; random designs and the exhaustive optimum for comparison.
"""

from pdeinv.design.criteria import Criterion, design_value, gains, weighted_value
from pdeinv.design.operator import CandidateKind, DesignOperator
from pdeinv.design.optimize import (
    DesignResult,
    RelaxedOptions,
    exhaustive,
    greedy,
    random_designs,
    relaxed,
    relaxed_objective,
    swap_greedy,
)

__all__ = ["DesignOperator", "CandidateKind", "Criterion", "design_value", "weighted_value", "gains",
           "DesignResult", "RelaxedOptions", "greedy", "swap_greedy", "relaxed", "relaxed_objective",
           "random_designs", "exhaustive"]
