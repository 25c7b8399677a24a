"""Named results of the optimizers."""

from __future__ import annotations

from dataclasses import dataclass, field

from pdeinv._checks import Choice

__all__ = ["OptimizationResult", "StopReason", "cost_resolution", "COST_ROUNDOFF"]


class StopReason(Choice):
    """Why an optimizer stopped (members compare equal to their strings).  Only GRADIENT_TOLERANCE means
    converged; ROUNDOFF_FLOOR: the cost and the gradient can no longer be reduced at working precision
    before the tolerance was met (the tolerance asked for more than the problem's round-off allows)."""

    GRADIENT_TOLERANCE = "gradient tolerance"
    PROJECTED_GRADIENT_TOLERANCE = "projected gradient tolerance"
    ROUNDOFF_FLOOR = "round-off floor"
    COST_STAGNATION = "cost stagnation"
    ITERATION_LIMIT = "iteration limit"
    LINE_SEARCH_FAILED = "line search failed"
    TRUST_REGION_COLLAPSED = "trust region collapsed"


# The cost is a sum of many assembled terms; its value is resolved to about this many ulps of its size
# (measured: the noise of J on the Poisson benchmark was ~200 eps |J|; 1000 leaves a margin).
COST_ROUNDOFF = 1e3


def cost_resolution(cost) -> float:
    r"""The smallest change of the cost that can be told from round-off: :math:`10^3\,\epsilon\,(|\Phi| + |R|)`
    (``cost``: :class:`~pdeinv.problem.CostTerms`)."""
    return COST_ROUNDOFF * 2.0 ** -52 * (abs(cost.misfit) + abs(cost.regularization) or abs(cost.total))


@dataclass(frozen=True)
class OptimizationResult:
    """What an optimizer returns.

    Attributes
    ----------
    m : firedrake.Function
        The final iterate (the MAP point when ``converged``).
    cost : pdeinv.problem.CostTerms
        Cost terms at ``m``.
    converged : bool
        True exactly when the requested gradient tolerance was met.
    reason : StopReason
        Why the iteration stopped (gradient tolerance, round-off floor, stagnation, iteration cap, line
        search failure); a string for optimizers of a user's own.
    iterations : int
        Outer (Newton) iterations taken.
    cg_iterations : int
        Inner CG iterations in all.
    gradient_norm : float
        :math:`\\|g\\|` at ``m`` in the preconditioner's norm :math:`\\sqrt{\\langle g, P g\\rangle}`.
    history : tuple of dict
        One entry per iteration: ``iteration, cost, misfit, regularization, gradient_norm,
        cg_iterations, step_length, forcing``.
    counts : dict
        The forward map's work counters at the end (forward solves, JVPs, VJPs, linear solves).
    """

    m: object
    cost: object
    converged: bool
    reason: str
    iterations: int
    cg_iterations: int
    gradient_norm: float
    history: tuple = field(default_factory=tuple)
    counts: dict = field(default_factory=dict)
