r"""Bound constraints :math:`l \le m \le u` (dof-wise) and a projected Newton–CG in the prior metric.

The problem is :math:`\min_{l\le m\le u}\mathcal J(m)`; the bounds act on the dof values of the parameter
(nodal values for Lagrange elements, the numbers themselves for a Real block), are :math:`\pm\infty` where
absent, and may be given per block of a mixed (product) parameter: a positive conductivity field, a
material constant in :math:`[\theta_{\min}, \theta_{\max}]`, nothing on a third block.

Method (Bertsekas 1982, *Projected Newton methods for optimization problems with simple constraints*;
Kelley 1999, §5.5).  At :math:`m_k` with gradient :math:`g_k` (a Cofunction) and preconditioner
:math:`P` (the prior covariance):

1. the :math:`\varepsilon`-binding set :math:`\mathcal A_k = \{i: m_i \le l_i + \varepsilon, g_i > 0\}
   \cup \{i: m_i \ge u_i - \varepsilon, g_i < 0\}` with
   :math:`\varepsilon = \min(\varepsilon_0, \|m - \Pi(m - Pg)\|_\infty)` (shrinks to 0 at a solution, so
   a dof wrongly held is released);
2. binding dofs go to their bound (:math:`p_{\mathcal A} = \text{bound} - m_{\mathcal A}`), the free dofs
   :math:`\mathcal F` take the Newton step of the reduced system
   :math:`H_{\mathcal F\mathcal F}\,p_{\mathcal F} = -(g + H p_{\mathcal A})_{\mathcal F}` by CG
   preconditioned with :math:`P_{\mathcal F\mathcal F}` (both SPD on the free dofs, so CG stays there),
   to a tight tolerance while the binding set still changes, superlinearly once it has settled;
3. the projected path :math:`m(\alpha) = \Pi(m + \alpha p)` is searched by halving for
   :math:`\mathcal J(m(\alpha)) \le \mathcal J(m) + c_1\langle g, m(\alpha) - m\rangle`.

It stops when the *projected gradient* (:math:`g_i`, zeroed where a bound holds :math:`m_i` and
:math:`g_i` pushes against it) has :math:`\|g^\Pi\|_P \le \max(\text{atol}, \text{rtol}\,\|g^\Pi_0\|_P)`:
the first-order (KKT) conditions.  The binding set changes by whole regions per step.  On an L²-type
(control-constrained) problem the Newton and CG counts are flat under refinement — measured 4, 4, 4
Newton and 33, 33, 35 CG iterations on 8², 16², 32² (tests/test_bounds.py) — as active-set Newton
theory predicts (Hintermüller & Ulbrich 2004).  With a smoothing prior (BiLaplacian, γ = 0.05) bounds
act like an obstacle for a fourth-order operator: 4, 5, 5 Newton but 47, 123, 297 CG iterations, since
the covariance restricted to the free dofs no longer inverts the restricted precision near the contact
set.

Why hand-written rather than TAO's ``bnls``/``bntr`` through petsc4py: TAO's bounded Newton methods build
the active-set tolerance and the stopping test from Euclidean norms of the dof vector (mesh dependent),
and precondition the reduced Hessian through a sub-matrix of the operator, which for our matrix-free
Gauss–Newton action would be a shell rebuilt at every active set; the prior-covariance preconditioner
on the free dofs is one masking here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from pdeinv._tape import unannotated
from pdeinv.linalg.arrays import local_values, set_local_values
from pdeinv.optimize.newton_cg import Globalization, NewtonCGOptions, conjugate_gradient, safe_cost
from pdeinv.optimize.result import OptimizationResult, StopReason, cost_resolution
from pdeinv.verify import dual_pairing

__all__ = ["Bounds", "projected_newton_cg"]


def _global_any(comm, flags) -> bool:
    return bool(comm.allreduce(int(np.any(flags))))


def _block_values(space, value, fill: float, name: str) -> np.ndarray:
    """Owned dof values of one bound: None (``fill``), a number, a Function on ``space``, or for a mixed
    space a sequence with one such entry per sub-space."""
    import firedrake as fd

    if isinstance(value, fd.Function):
        if value.function_space() != space:
            raise ValueError(f"Bounds: {name} is a Function on another space than the parameter space")
        return local_values(value)
    if value is None or np.isscalar(value):
        return np.full(len(local_values(fd.Function(space))), fill if value is None else float(value))
    if not isinstance(value, Sequence) or len(space) < 2 or len(value) != len(space):
        raise ValueError(f"Bounds: {name} must be None, a number, a Function on the parameter space, or (for a "
                         f"mixed space of {len(space)} blocks) one such entry per block; got {value!r}")
    out = fd.Function(space)
    for i, v in enumerate(value):
        sub = out.subfunctions[i]
        if isinstance(v, fd.Function):
            sub.dat.data[:] = v.dat.data_ro
        elif v is None or np.isscalar(v):
            sub.dat.data[:] = fill if v is None else float(v)
        else:
            raise ValueError(f"Bounds: {name}[{i}] must be None, a number or a Function on block {i}; got {v!r}")
    return local_values(out)


@dataclass(frozen=True)
class Bounds:
    """Dof-wise bounds :math:`l \\le m \\le u` on a parameter space (build with :meth:`on`).

    Attributes
    ----------
    space : firedrake.FunctionSpace
    lower, upper : numpy.ndarray
        Owned dof values (the Vec layout of :func:`pdeinv.linalg.arrays.local_values`), ``-inf`` / ``inf``
        where there is no bound.
    """

    space: object
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def on(cls, space, *, lower=None, upper=None) -> Bounds:
        """Bounds from numbers, Functions on ``space``, or per-block sequences (``None``: unbounded)."""
        lo = _block_values(space, lower, -math.inf, "lower")
        hi = _block_values(space, upper, math.inf, "upper")
        comm = space.mesh().comm
        if _global_any(comm, np.isnan(lo) | np.isnan(hi)):
            raise ValueError("Bounds: a bound is NaN")
        bad = comm.allreduce(int(np.sum(lo > hi)))
        if bad:
            raise ValueError(f"Bounds: the lower bound exceeds the upper bound at {bad} dof(s)")
        return cls(space, lo, hi)

    @property
    def comm(self):
        return self.space.mesh().comm

    def project(self, f) -> None:
        """Clip ``f`` into the box, in place."""
        set_local_values(f, np.clip(local_values(f), self.lower, self.upper))

    def contains(self, f) -> bool:
        x = local_values(f)
        return not _global_any(self.comm, (x < self.lower) | (x > self.upper))

    def active(self, m) -> tuple[np.ndarray, np.ndarray]:
        """Masks of the owned dofs of ``m`` at their lower and at their upper bound."""
        x = local_values(m)
        return x <= self.lower, x >= self.upper

    def projected_gradient(self, m, g):
        """The Cofunction :math:`g^\\Pi`: ``g`` with the components zeroed where a bound holds ``m`` and
        ``g`` pushes against it (zero exactly at a KKT point)."""
        at_lo, at_hi = self.active(m)
        gv = local_values(g)
        out = g.copy(deepcopy=True)
        set_local_values(out, np.where((at_lo & (gv > 0)) | (at_hi & (gv < 0)), 0.0, gv))
        return out

    def width(self) -> float:
        """The largest finite width :math:`u_i - l_i` (1 where no dof has both bounds): the scale of
        the binding tolerance."""
        w = self.upper - self.lower
        finite = w[np.isfinite(w)]
        return self.comm.allreduce(float(np.max(finite, initial=0.0)), op=MPI.MAX) or 1.0


def _masked(f, keep) -> object:
    out = f.copy(deepcopy=True)
    set_local_values(out, np.where(keep, local_values(out), 0.0))
    return out


def _binding(bounds, m, g, P, eps0) -> np.ndarray:
    """The epsilon-binding dofs (step 1 of the module's method)."""
    x, gv = local_values(m), local_values(g)
    trial = np.clip(x - local_values(P(g)), bounds.lower, bounds.upper)
    dist = bounds.comm.allreduce(float(np.max(np.abs(x - trial), initial=0.0)), op=MPI.MAX)
    eps = min(eps0, dist)
    return ((x <= bounds.lower + eps) & (gv > 0)) | ((x >= bounds.upper - eps) & (gv < 0))


def _reduced_step(problem, m, g, bounds, bind, eta, opts):
    """Step 2: binding dofs to their bound, the reduced Newton system on the free dofs by CG."""
    x, gv = local_values(m), local_values(g)
    free = ~bind
    p_bind = np.where(bind, np.where(gv > 0, bounds.lower, bounds.upper) - x, 0.0)
    rhs = g.copy(deepcopy=True)
    if _global_any(bounds.comm, p_bind != 0.0):
        move = m.copy(deepcopy=True)
        set_local_values(move, p_bind)
        set_local_values(rhs, gv + local_values(problem.hessian_action(m, move)))
    rhs = _masked(rhs, free)
    rhs *= -1.0
    P = problem.preconditioner
    cg = conjugate_gradient(lambda d: _masked(problem.hessian_action(m, _masked(d, free)), free), rhs,
                            lambda r: _masked(P(_masked(r, free)), free), rtol=eta,
                            max_iterations=opts.max_cg_iterations, space=problem.parameter_space)
    step = cg.solution
    set_local_values(step, np.where(free, local_values(step), p_bind))
    return step, cg


def _projected_search(problem, m, step, cost, g, bounds, opts, log):
    """Step 3: Armijo along the projected path; ``None`` if no halving decreases enough."""
    trial, alpha = m.copy(deepcopy=True), 1.0
    x, p = local_values(m), local_values(step)
    for _ in range(opts.max_backtracks + 1):
        set_local_values(trial, np.clip(x + alpha * p, bounds.lower, bounds.upper))
        moved = trial.copy(deepcopy=True)
        set_local_values(moved, local_values(trial) - x)
        slope = dual_pairing(g, moved)
        new_cost = safe_cost(problem, trial, log) if slope < 0 else None
        if new_cost is not None and new_cost.total <= cost.total + opts.armijo_c1 * slope:
            return alpha, trial, new_cost
        alpha *= 0.5
    return None


def _unresolved(cost, g, step, opts) -> bool:
    """Whether the decrease the step predicts is below what the cost can resolve (its round-off)."""
    return -dual_pairing(g, step) <= max(cost_resolution(cost), opts.stagnation_rtol * abs(cost.total))


def _globalized(problem, m, step, cost, g, bounds, opts, eta, pgnorm, log):
    """Armijo along the projected path, or — where the cost cannot resolve the step's decrease, or Armijo
    gives up — the full projected step judged on the projected gradient, as
    :func:`pdeinv.optimize.newton_cg.newton_cg` does: ``(alpha, trial, cost, on_gradient)`` or None."""
    found = None if _unresolved(cost, g, step, opts) else _projected_search(problem, m, step, cost, g, bounds,
                                                                            opts, log)
    if found is not None:
        return (*found, False)
    trial = m.copy(deepcopy=True)
    set_local_values(trial, np.clip(local_values(m) + local_values(step), bounds.lower, bounds.upper))
    new_cost = safe_cost(problem, trial, log)
    if new_cost is None or new_cost.total > cost.total + cost_resolution(cost):
        return None
    new_pg = _norm(problem, bounds.projected_gradient(trial, problem.gradient(trial)))
    if not new_pg <= 0.5 * (1.0 + eta) * pgnorm:  # an inexact Newton step's reduction; round-off has none
        log.info(f"    round-off floor: the projected step leaves ||Pg|| at {new_pg:.3e} (from {pgnorm:.3e})")
        return None
    return 1.0, trial, new_cost, True


def _forcing(opts, relative: float, comm, bind, previous) -> float:
    r"""CG tolerance: tight (1e-6) while the binding set is still changing — an inexact step there
    misplaces the next binding set, which costs a Newton iteration per wrongly bound region — then
    superlinear, :math:`\min(0.1, \|g^\Pi\|/\|g^\Pi_0\|)`; ``options.forcing`` if given."""
    if opts.forcing is not None:
        return opts.forcing
    settled = previous is not None and not _global_any(comm, bind != previous)
    return min(opts.max_forcing, 0.1, relative) if settled else 1e-6


def _norm(problem, pg) -> float:
    return math.sqrt(max(dual_pairing(pg, problem.preconditioner(pg)), 0.0))


@unannotated
def _check_projected(problem, m0, bounds, opts) -> None:
    """One clear error for an argument :func:`projected_newton_cg` cannot take."""
    from pdeinv.maps import check_function

    check_function(m0, problem.parameter_space, "projected_newton_cg: m0")
    if not isinstance(bounds, Bounds) or bounds.space != problem.parameter_space:
        raise ValueError("projected_newton_cg: bounds must be Bounds.on(the problem's parameter space, ...)")
    if opts.globalization is not Globalization.LINE_SEARCH or opts.levenberg_marquardt or \
            opts.full_newton_after is not None:
        raise ValueError("projected_newton_cg: only the line-search Gauss–Newton options apply with bounds")


def projected_newton_cg(problem, m0, bounds: Bounds, *, options: NewtonCGOptions | None = None,
                        log=None) -> OptimizationResult:
    """Minimise ``problem`` subject to ``bounds`` from ``m0`` (projected into the box; not modified).

    ``options``: :class:`~pdeinv.optimize.newton_cg.NewtonCGOptions` (iteration limits, tolerances on the
    projected gradient, forcing, Armijo); the line-search globalization only.  The history entries add
    ``active_lower`` / ``active_upper``, the numbers of dofs at each bound.
    """
    from pdeinv.log import RankZeroLog

    opts = options or NewtonCGOptions()
    _check_projected(problem, m0, bounds, opts)
    log = log or RankZeroLog(bounds.comm, quiet=opts.quiet)
    m = m0.copy(deepcopy=True)
    m.rename("m")
    bounds.project(m)
    cost, g = problem.cost(m), problem.gradient(m)
    pg0 = pgnorm = _norm(problem, bounds.projected_gradient(m, g))
    history, total_cg, reason, k, previous = [], 0, "iteration limit", 0, None
    log.info(f"{'it':>3} {'cost':>13} {'||Pg||':>10} {'cg':>4} {'step':>7} {'lower':>7} {'upper':>7}")
    log.info(f"{0:3d} {cost.total:13.6e} {pgnorm:10.3e}")
    eps0 = 1e-2 * bounds.width()
    for k in range(1, opts.max_iterations + 1):
        if pgnorm <= max(opts.gradient_atol, opts.gradient_rtol * pg0):
            reason, k = "projected gradient tolerance", k - 1
            break
        bind = _binding(bounds, m, g, problem.preconditioner, eps0)
        eta = _forcing(opts, pgnorm / pg0, bounds.comm, bind, previous)
        previous = bind
        step, cg = _reduced_step(problem, m, g, bounds, bind, eta, opts)
        total_cg += cg.iterations
        found = _globalized(problem, m, step, cost, g, bounds, opts, eta, pgnorm, log)
        if found is None:
            reason = StopReason.ROUNDOFF_FLOOR if _unresolved(cost, g, step, opts) else "line search failed"
            break
        alpha, trial, new_cost, on_gradient = found
        decrease = cost.total - new_cost.total
        m.assign(trial)
        cost, g = new_cost, problem.gradient(trial)
        pgnorm = _norm(problem, bounds.projected_gradient(m, g))
        history.append(_entry(k, cost, pgnorm, cg, alpha, eta, bounds, m, log))
        if pgnorm <= max(opts.gradient_atol, opts.gradient_rtol * pg0):
            reason = "projected gradient tolerance"
            break
        if not on_gradient and decrease <= opts.stagnation_rtol * abs(cost.total):
            reason = "cost stagnation"
            break
    else:
        if pgnorm <= max(opts.gradient_atol, opts.gradient_rtol * pg0):
            reason = "projected gradient tolerance"
    converged = pgnorm <= max(opts.gradient_atol, opts.gradient_rtol * pg0)  # the tolerance, nothing else
    log.info(f"projected_newton_cg: {reason} after {k} iterations, {total_cg} CG iterations, "
             f"||Pg|| = {pgnorm:.3e}")
    return OptimizationResult(m=m, cost=cost, converged=converged, reason=reason, iterations=k,
                              cg_iterations=total_cg, gradient_norm=pgnorm, history=tuple(history),
                              counts=problem.counts)


def _entry(k, cost, pgnorm, cg, alpha, eta, bounds, m, log) -> dict:
    at_lo, at_hi = bounds.active(m)
    n_lo, n_hi = (bounds.comm.allreduce(int(np.sum(a))) for a in (at_lo, at_hi))
    log.info(f"{k:3d} {cost.total:13.6e} {pgnorm:10.3e} {cg.iterations:4d} {alpha:7.4f} {n_lo:7d} {n_hi:7d}")
    return {"iteration": k, "cost": cost.total, "misfit": cost.misfit, "regularization": cost.regularization,
            "gradient_norm": pgnorm, "cg_iterations": cg.iterations, "cg_reason": cg.reason, "step_length": alpha,
            "forcing": eta, "active_lower": n_lo, "active_upper": n_hi}
