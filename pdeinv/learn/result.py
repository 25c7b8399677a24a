"""What a hypergradient computation returns, and the solve counter it reports with (a leaf module: the
implicit / JFB driver (:mod:`pdeinv.learn.hypergradient`) and the unrolled one (:mod:`pdeinv.learn.unrolled`)
both build these, neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdeinv.problem import Hessian

__all__ = ["HypergradientResult", "SolveCounter"]


@dataclass(frozen=True)
class HypergradientResult:
    """A hypergradient and what it cost.

    Attributes
    ----------
    value : float
        :math:`L(m^*(\\theta), \\theta)`.
    gradient : numpy.ndarray
        :math:`\\mathrm dL/\\mathrm d\\theta`.
    method : str
    m : firedrake.Function
        The reconstruction :math:`m^*(\\theta)` (for ``"unrolled"``: the last iterate).
    solves : int
        Forward-model linear solves of the derivative phase.
    inner_solves : int
        Forward-model linear solves of computing ``m``.
    cg_iterations : int
        CG iterations of the implicit solve (0 otherwise).
    hessian_actions : int
        Hessian actions of the derivative phase.
    peak_stored_states : int
        Iterates held at once by the unrolled reverse sweep (0 otherwise).
    stored_mb : float
        Their size on this rank in MB (the memory that checkpointing bounds).
    seconds : float
        Wall time of the derivative phase.
    inner : OptimizationResult or None
        The inner solve (``None`` if ``m_star`` was given or for ``"unrolled"``).
    hessian : pdeinv.problem.Hessian or None
        The Hessian the implicit method used (``None`` for the other methods).
    """

    value: float
    gradient: np.ndarray
    method: str
    m: object
    solves: int
    inner_solves: int
    cg_iterations: int = 0
    hessian_actions: int = 0
    peak_stored_states: int = 0
    stored_mb: float = 0.0
    seconds: float = 0.0
    inner: object = None
    hessian: Hessian | None = None


class SolveCounter:
    """Forward-model linear solves (``map.counts["linear_solves"]``) since the last :meth:`lap`."""

    def __init__(self, forward_map):
        self.map = forward_map
        self._last = self._now()

    def _now(self):
        c = self.map.counts
        return int(c.get("linear_solves", 0))

    def lap(self) -> int:
        now = self._now()
        out, self._last = now - self._last, now
        return out
