r"""Limited-memory BFGS in function space, with the inner product of a preconditioner.

The two-loop recursion works on primal steps :math:`s_i = m_{i+1} - m_i` (Functions) and gradient
differences :math:`y_i = g_{i+1} - g_i` (Cofunctions), pairing them with the dual pairing; the
initial inverse Hessian is :math:`H_0 = \tau P` with :math:`P` the prior covariance (or the L2 Riesz
map) and :math:`\tau = \langle y, s\rangle / \langle y, P y\rangle`.  So the method does not depend
on the mesh's dof numbering — unlike L-BFGS on the Euclidean dof vector, whose iteration count grows
under refinement.  Steps satisfy Armijo's condition by backtracking; updates with
:math:`\langle y, s\rangle \le 0` are skipped.

Why hand-written: PETSc TAO's LMVM works on Euclidean dof vectors (the inner product would have to be
injected as an H0 matrix), while the typed two-loop recursion here is twenty lines.  It serves as
the baseline that Gauss–Newton–CG is measured against (benchmarks/optimizers.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from pdeinv._tape import unannotated
from pdeinv.optimize.newton_cg import armijo_backtracking
from pdeinv.optimize.result import OptimizationResult
from pdeinv.verify import dual_pairing

__all__ = ["LBFGSOptions", "lbfgs"]


@dataclass(frozen=True)
class LBFGSOptions:
    """Options of :func:`lbfgs`.

    Attributes
    ----------
    max_iterations : int
    memory : int
        Number of (s, y) pairs kept.
    gradient_rtol, gradient_atol : float
        Stop when :math:`\\|g\\|_P \\le \\max(\\text{atol}, \\text{rtol}\\|g_0\\|_P)`.
    target_cost : float or None
        Also stop once the cost is at or below this value (for comparisons at equal accuracy).
    armijo_c1 : float
    max_backtracks : int
    quiet : bool
    """

    max_iterations: int = 500
    memory: int = 20
    gradient_rtol: float = 1e-6
    gradient_atol: float = 1e-14
    target_cost: float | None = None
    armijo_c1: float = 1e-4
    max_backtracks: int = 30
    quiet: bool = False

    def __post_init__(self):
        if self.memory < 1 or self.max_iterations < 0:
            raise ValueError("LBFGSOptions: memory must be >= 1 and max_iterations >= 0")


@unannotated
def lbfgs(problem, m0, *, options: LBFGSOptions | None = None, preconditioner=None, callback=None,
          log=None) -> OptimizationResult:
    """Minimise ``problem`` from ``m0`` by L-BFGS (see the module docstring)."""
    from pdeinv.log import RankZeroLog
    from pdeinv.maps import check_function

    opts = options or LBFGSOptions()
    check_function(m0, problem.parameter_space, "lbfgs: m0")
    P = preconditioner or problem.preconditioner
    log = log or RankZeroLog(problem.parameter_space.mesh().comm, quiet=opts.quiet)
    m = m0.copy(deepcopy=True)
    cost = problem.cost(m)
    g = problem.gradient(m)
    gnorm0 = gnorm = math.sqrt(max(dual_pairing(g, P(g)), 0.0))
    pairs: deque = deque(maxlen=opts.memory)
    tau = 1.0
    history, reason, converged, k = [], "iteration limit", False, 0
    for k in range(1, opts.max_iterations + 1):
        if gnorm <= max(opts.gradient_atol, opts.gradient_rtol * gnorm0):
            reason, converged, k = "gradient tolerance", True, k - 1
            break
        if opts.target_cost is not None and cost.total <= opts.target_cost:
            reason, converged, k = "target cost reached", True, k - 1
            break
        direction, slope = _direction(pairs, g, P, tau)
        # Without curvature pairs the scale of -P g is arbitrary: start with a unit-size step.
        found = armijo_backtracking(problem, m, direction, cost, slope, c1=opts.armijo_c1,
                                    max_backtracks=opts.max_backtracks, log=log,
                                    alpha=1.0 if pairs else min(1.0, 1.0 / max(gnorm, 1e-300)))
        if found is None:
            reason = "line search failed"
            break
        alpha, trial, new_cost = found
        new_g = problem.gradient(trial)
        tau = _update(pairs, problem.parameter_space, trial, m, new_g, g, P, tau)
        m.assign(trial)
        cost, g = new_cost, new_g
        gnorm = math.sqrt(max(dual_pairing(g, P(g)), 0.0))
        entry = {"iteration": k, "cost": cost.total, "misfit": cost.misfit, "regularization": cost.regularization,
                 "gradient_norm": gnorm, "step_length": alpha}
        history.append(entry)
        if k % 10 == 0 or k == 1:
            log.info(f"lbfgs {k:4d} cost {cost.total:13.6e} ||g|| {gnorm:10.3e} step {alpha:.3g}")
        if callback is not None:
            callback(k, m, entry)
    else:
        if gnorm <= max(opts.gradient_atol, opts.gradient_rtol * gnorm0):
            reason, converged = "gradient tolerance", True
    counts = problem.counts
    log.info(f"lbfgs: {reason} after {k} iterations, ||g|| = {gnorm:.3e}")
    return OptimizationResult(m=m, cost=cost, converged=converged, reason=reason, iterations=k, cg_iterations=0,
                              gradient_norm=gnorm, history=tuple(history), counts=counts)


def _direction(pairs, g, P, tau):
    """The two-loop recursion: :math:`-Hg` with :math:`H_0 = \tau P`, and its slope; the preconditioned
    steepest descent (and the memory cleared) where descent is lost."""
    q = g.copy(deepcopy=True)
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * dual_pairing(q, s)
        alphas.append(a)
        q.assign(q - a * y)
    r = P(q)
    r.assign(tau * r)
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
        b = rho * dual_pairing(y, r)
        r.assign(r + (a - b) * s)
    direction = r
    direction.assign(-1.0 * r)
    slope = dual_pairing(g, direction)
    if slope >= 0:  # lost descent: restart from the preconditioned gradient
        pairs.clear()
        direction = P(g)
        direction.assign(-1.0 * direction)
        slope = dual_pairing(g, direction)
    return direction, slope


def _update(pairs, space, trial, m, new_g, g, P, tau) -> float:
    """Store the pair (s, y) when :math:`\\langle y, s\rangle > 0` and rescale :math:`H_0`; the new tau."""
    import firedrake as fd

    s = fd.Function(space).assign(trial - m)
    y = new_g.copy(deepcopy=True)
    y.assign(new_g - g)
    ys = dual_pairing(y, s)
    if ys > 0:
        pairs.append((s, y, 1.0 / ys))
        return ys / dual_pairing(y, P(y))
    return tau
