"""Named results of the optimizers."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OptimizationResult"]


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
    reason : str
        Why the iteration stopped (gradient tolerance, stagnation, iteration cap, line search failure).
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
