r"""Inexact (Gauss–)Newton–CG with prior preconditioning, Eisenstat–Walker forcing, and Armijo
backtracking or a Steihaug trust region; optional Levenberg–Marquardt damping and full Newton.

At iterate :math:`m_k` with gradient :math:`g_k` (a Cofunction) the step solves

.. math::

    H_k\,p = -g_k,\qquad H_k = J^T W J + R''(m_k)

approximately by preconditioned CG with preconditioner :math:`P` (for a Gaussian prior the prior
covariance :math:`\mathcal C`, which makes the preconditioned operator a compact perturbation of
the identity — hence iteration counts that do not grow with the mesh), stopped when

.. math::

    \|r\|_P \le \eta_k \|g_k\|_P,\qquad \eta_k = \min\big(\eta_{\max}, \sqrt{\|g_k\|_P/\|g_0\|_P}\big)

(hIPPYlib's rule, the default; ``forcing_rule = "eisenstat_walker"`` is Eisenstat and Walker's choice 1),
or at negative curvature (then the CG iterate so far, or the preconditioned
steepest-descent direction at the first CG step, is used).  The step length satisfies the Armijo
condition :math:`\mathcal J(m_k + \alpha p) \le \mathcal J(m_k) + c_1\alpha\langle g_k, p\rangle`
by halving.  Everything is matrix-free: one Hessian action costs one JVP and one VJP.

``converged`` means exactly that :math:`\|g\|_P` met the tolerance.  Near the minimum the decrease a
Newton step predicts, :math:`-\tfrac12\langle g, p\rangle`, falls below what the cost can resolve
(:func:`~pdeinv.optimize.result.cost_resolution`, ~1e3 ulps of :math:`|\mathcal J|`): Armijo then
compares round-off with round-off.  There the full step is accepted on a gradient-norm test instead
(:math:`\|g(m + p)\|_P < \|g(m)\|_P`: the gradient, unlike the cost, still resolves progress; Newton
converges quadratically in it), and when even that fails the run stops with ``"round-off floor"``,
not converged: the tolerance asked for more than working precision gives.

Why hand-written: PETSc's TAO has Newton–CG (``nls``/``ntr``) but needs the Hessian as a Mat on the
Euclidean dof vector with an inner product we would have to inject, and offers neither the
Eisenstat–Walker forcing with a prior-preconditioner norm nor Function/Cofunction typing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pdeinv._checks import Choice, choice
from pdeinv._tape import unannotated
from pdeinv.linalg.arrays import axpy
from pdeinv.optimize.result import OptimizationResult, StopReason, cost_resolution
from pdeinv.verify import dual_pairing

__all__ = ["NewtonCGOptions", "ForcingRule", "Globalization", "newton_cg", "conjugate_gradient", "CGResult"]


class ForcingRule(Choice):
    """How the CG tolerance :math:`\\eta_k` of Newton iteration k follows the gradient (strings accepted)."""

    EISENSTAT_WALKER = "eisenstat_walker"
    SQRT = "sqrt"


class Globalization(Choice):
    """Armijo line search on the Newton step, or a Steihaug trust region (strings accepted)."""

    LINE_SEARCH = "line_search"
    TRUST_REGION = "trust_region"


@dataclass(frozen=True)
class NewtonCGOptions:
    r"""Options of :func:`newton_cg`.

    Attributes
    ----------
    max_iterations : int
        Newton iterations at most.
    gradient_rtol, gradient_atol : float
        Stop, converged, when :math:`\|g\|_P \le \max(\text{atol}, \text{rtol}\,\|g_0\|_P)`.
    stagnation_rtol : float
        Stop, not converged, when an Armijo step decreases the cost by less than this fraction; a step
        that predicts less than this (or than the cost's round-off) is judged on the gradient instead.
    forcing : float or None
        Constant CG relative tolerance; ``None`` for an adaptive rule (``forcing_rule``).
    forcing_rule : ForcingRule or {"eisenstat_walker", "sqrt"}
        ``"eisenstat_walker"`` (choice 1 of Eisenstat & Walker 1996, with their safeguard):
        :math:`\eta_k = |\,\|g_k\| - \|g_{k-1} + H_{k-1}p_{k-1}\|\,| / \|g_{k-1}\|`, which measures
        how well the quadratic model predicted the new gradient — tight where the problem is nearly
        linear (a linear problem converges in two steps), loose where it is not.  ``"sqrt"``:
        :math:`\eta_k = \sqrt{\|g_k\|/\|g_0\|}` (hIPPYlib's choice; the default: on the Poisson
        benchmark both need ~85 CG iterations, on the linear heat problem choice 1 needs 4 Newton but
        ~160 CG iterations against 6 and ~110 for "sqrt").
    max_forcing : float
    max_cg_iterations : int
    armijo_c1 : float
    max_backtracks : int
    globalization : Globalization or {"line_search", "trust_region"}
        Armijo backtracking on the Newton step, or a Steihaug trust region in the
        :math:`P^{-1}`-norm (radius halved/doubled by the ratio of actual to predicted decrease).
    initial_radius : float or None
        First trust-region radius; ``None``: the first step is unconstrained and sets it.
    full_newton_after : int or None
        Use the full Hessian (with the map's second-order term) from this Newton iteration on;
        ``None`` (default): Gauss–Newton throughout.  Negative curvature then ends CG early (the
        step so far is used), as it should.
    levenberg_marquardt : float
        Initial damping :math:`\mu_0 \ge 0`: the Hessian becomes :math:`H + \mu R''` (damping in
        the regularization's metric), :math:`\mu` divided by 3 after a full step, doubled after a
        shortened one.  0 (default) is plain Gauss–Newton.
    quiet : bool
        No progress output.
    """

    max_iterations: int = 30
    gradient_rtol: float = 1e-8
    gradient_atol: float = 1e-14
    stagnation_rtol: float = 1e-12
    forcing: float | None = None
    forcing_rule: ForcingRule = ForcingRule.SQRT
    max_forcing: float = 0.5
    max_cg_iterations: int = 200
    armijo_c1: float = 1e-4
    max_backtracks: int = 15
    globalization: Globalization = Globalization.LINE_SEARCH
    initial_radius: float | None = None
    levenberg_marquardt: float = 0.0
    full_newton_after: int | None = None
    quiet: bool = False

    def __post_init__(self):
        object.__setattr__(self, "forcing_rule", choice(ForcingRule, self.forcing_rule, "NewtonCGOptions",
                                                        "forcing_rule"))
        object.__setattr__(self, "globalization", choice(Globalization, self.globalization, "NewtonCGOptions",
                                                         "globalization"))
        if self.levenberg_marquardt < 0 or (self.initial_radius is not None and self.initial_radius <= 0):
            raise ValueError("NewtonCGOptions: levenberg_marquardt must be >= 0 and initial_radius > 0")
        if self.max_iterations < 0 or self.max_cg_iterations < 1:
            raise ValueError("NewtonCGOptions: iteration limits must be positive")
        if not (0 < self.armijo_c1 < 1):
            raise ValueError(f"NewtonCGOptions: armijo_c1 must be in (0, 1), got {self.armijo_c1}")
        if self.forcing is not None and not (0 < self.forcing < 1):
            raise ValueError(f"NewtonCGOptions: forcing must be in (0, 1), got {self.forcing}")


@dataclass(frozen=True)
class CGResult:
    r"""Approximate solution of :math:`H p = b` and how CG ended.

    ``model_decrease`` is :math:`-(\langle -b, p\rangle + \tfrac12\langle Hp, p\rangle)`, the decrease
    of the quadratic model (for trust-region ratios); ``on_boundary`` tells whether a trust-region
    radius stopped the iteration.
    """

    solution: object
    iterations: int
    reason: str
    residual_norm: float
    model_decrease: float = float("nan")
    on_boundary: bool = False
    step_norm: float = float("nan")


def _to_boundary(pp, pd, dd, radius):
    """tau >= 0 with ||p + tau d||_M = radius, from <p,Mp>, <p,Md>, <d,Md>."""
    disc = max(pd * pd + dd * (radius * radius - pp), 0.0)
    return (-pd + math.sqrt(disc)) / dd


def conjugate_gradient(apply_h: Callable, b, precondition: Callable, *, rtol: float, max_iterations: int,
                       space, radius: float | None = None) -> CGResult:
    r"""Preconditioned CG for :math:`H p = b` (Steihaug's truncated CG when ``radius`` is given).

    ``apply_h(d) -> Cofunction``, ``b`` a Cofunction, ``precondition(r) -> Function``.  Stops when
    :math:`\|r\|_P \le \text{rtol}\,\|b\|_P`, at non-positive curvature, or — with a trust region
    :math:`\|p\|_{P^{-1}} \le \Delta` — on its boundary.  The :math:`P^{-1}`-norms of the iterates
    come from the CG recurrences (Steihaug 1983; Conn, Gould & Toint 2000, §7.5), so :math:`P^{-1}`
    is never applied.
    """
    import firedrake as fd

    p, r = fd.Function(space, name="step"), b.copy(deepcopy=True)
    z = precondition(r)
    rz = dual_pairing(r, z)
    b_norm = math.sqrt(max(rz, 0.0))
    if b_norm == 0.0:
        return CGResult(p, 0, "zero right-hand side", 0.0, 0.0)
    tol = rtol * b_norm
    d = z.copy(deepcopy=True)
    pp, pd, dd = 0.0, 0.0, rz  # <p, M p>, <p, M d>, <d, M d> with M = P^{-1}

    def result(i, reason, boundary=False):
        # q(p) = <-b, p> + 1/2 <H p, p> = -1/2 (<b, p> + <r, p>) since H p = b - r
        decrease = 0.5 * (dual_pairing(b, p) + dual_pairing(r, p))
        return CGResult(p, i, reason, math.sqrt(max(dual_pairing(r, precondition(r)), 0.0)) if boundary
                        else math.sqrt(max(rz, 0.0)), decrease, boundary,
                        radius if boundary else math.sqrt(max(pp, 0.0)))

    for i in range(max_iterations):
        hd = apply_h(d)
        dhd = dual_pairing(hd, d)
        if dhd <= 0.0:
            if radius is not None:
                tau = _to_boundary(pp, pd, dd, radius)
                p.assign(p + tau * d)
                r.assign(r - tau * hd)
                return result(i + 1, "negative curvature", boundary=True)
            if i == 0:
                p.assign(d)  # preconditioned steepest descent
            return result(i + 1, "negative curvature")
        alpha = rz / dhd
        if radius is not None and pp + 2 * alpha * pd + alpha * alpha * dd >= radius * radius:
            tau = _to_boundary(pp, pd, dd, radius)
            p.assign(p + tau * d)
            r.assign(r - tau * hd)
            return result(i + 1, "trust-region boundary", boundary=True)
        p.assign(p + alpha * d)
        r.assign(r - alpha * hd)
        pp, pd = pp + 2 * alpha * pd + alpha * alpha * dd, pd + alpha * dd
        z = precondition(r)
        rz_new = dual_pairing(r, z)
        if math.sqrt(max(rz_new, 0.0)) <= tol:
            rz = rz_new
            return result(i + 1, "converged")
        beta = rz_new / rz
        d.assign(z + beta * d)
        pd, dd = beta * pd, rz_new + beta * beta * dd
        rz = rz_new
    return result(max_iterations, "iteration limit")


def safe_cost(problem, m, log=None):
    """Cost terms at a trial point, or None where the forward model cannot be solved there (a
    nonlinear solver diverges, a factorisation breaks down for an extreme coefficient, the prediction
    overflows): the line search then shortens the step, the trust region shrinks.  The reason is
    logged."""
    from pdeinv.errors import ForwardSolveError

    try:
        cost = problem.cost(m)
    except (ForwardSolveError, ArithmeticError, FloatingPointError) as err:
        if log is not None:
            log.info(f"    trial point rejected: {err}")
        return None
    if not math.isfinite(cost.total):
        if log is not None:
            log.info(f"    trial point rejected: cost is {cost.total}")
        return None
    return cost


def armijo_backtracking(problem, m, direction, cost, slope, *, c1: float, max_backtracks: int,
                        alpha: float = 1.0, log=None):
    """Halve ``alpha`` until :math:`\\mathcal J(m + \\alpha p) \\le \\mathcal J(m) + c_1\\alpha\\langle g, p\\rangle`.

    Returns ``(alpha, trial point, its cost terms)``, or ``None`` when ``max_backtracks`` halvings fail.
    Trial points where the forward model cannot be solved count as no decrease (:func:`safe_cost`).
    """
    import firedrake as fd

    trial = fd.Function(problem.parameter_space)
    for _ in range(max_backtracks + 1):
        trial.assign(m + alpha * direction)
        new_cost = safe_cost(problem, trial, log)
        if new_cost is not None and new_cost.total <= cost.total + c1 * alpha * slope:
            return alpha, trial, new_cost
        alpha *= 0.5
    return None


@unannotated
def newton_cg(problem, m0, *, options: NewtonCGOptions | None = None, preconditioner: Callable | None = None,
              callback: Callable | None = None, log=None, resume: dict | None = None) -> OptimizationResult:
    """Minimise ``problem`` (an :class:`~pdeinv.problem.InverseProblem`) from ``m0`` (not modified).

    Parameters
    ----------
    problem : InverseProblem
    m0 : firedrake.Function
        Starting point (a warm start is just a better ``m0``).
    options : NewtonCGOptions, optional
    preconditioner : callable, optional
        ``P(c: Cofunction) -> Function``; default the prior covariance (Gaussian prior) or the L2 Riesz map.
    callback : callable, optional
        ``callback(iteration, m, entry)`` after every iteration (e.g. to checkpoint); ``entry`` is the
        history dict, with ``entry["state"]`` the optimizer's state (JSON-serialisable).
    log : pdeinv.log.RankZeroLog, optional
        Progress output (default: a log on the parameter space's communicator).
    resume : dict, optional
        A state saved by a callback, with ``m0`` the iterate saved with it: the iteration continues
        exactly as the uninterrupted run would have (same forcing terms, radius, damping, history).
    """
    from pdeinv.log import RankZeroLog
    from pdeinv.maps import check_function

    opts = options or NewtonCGOptions()
    check_function(m0, problem.parameter_space, "newton_cg: m0")
    P = preconditioner or problem.preconditioner
    log = log or RankZeroLog(problem.parameter_space.mesh().comm, quiet=opts.quiet)
    it, start = _start(problem, m0, opts, P, resume, log)
    reason, k = StopReason.ITERATION_LIMIT, start - 1
    for k in range(start, opts.max_iterations + 1):
        if it.gnorm <= it.tolerance(opts):
            reason, k = StopReason.GRADIENT_TOLERANCE, k - 1
            break
        eta, minus_g, cg = _newton_direction(problem, it, k, P, opts)
        step, stop = _globalize(problem, it, cg, k, eta, minus_g, P, opts, log)
        if stop is not None:
            reason = stop
            break
        if step is None:  # a rejected trust-region step: same point, smaller region
            continue
        decrease = it.accept(problem, step, P)
        entry = _record(it, k, cg, step.alpha, eta, opts, log)
        if callback is not None:
            callback(k, it.m, {**entry, "state": it.state(k)})
        if _stagnated(it, step, decrease, opts):
            reason = StopReason.COST_STAGNATION
            break
    else:
        if it.gnorm <= it.tolerance(opts):
            reason = StopReason.GRADIENT_TOLERANCE
    converged = it.gnorm <= it.tolerance(opts)
    log.info(f"newton_cg: {reason} after {k} iterations, {it.total_cg} CG iterations, ||g|| = {it.gnorm:.3e}"
             + ("" if converged else f" (tolerance {it.tolerance(opts):.3e} not met)"))
    return it.result(problem, converged, reason, k)


def _stagnated(it, step, decrease, opts) -> bool:
    """The cost fell by less than ``stagnation_rtol`` of itself and the gradient not at a Newton rate either
    (a step taken on the gradient test changed the cost below its resolution by construction)."""
    prev_gnorm, _, eta = it.prev
    tiny = decrease <= opts.stagnation_rtol * abs(it.cost.total)
    return not step.on_gradient and tiny and it.gnorm > 0.5 * (1.0 + eta) * prev_gnorm


@dataclass
class _Step:
    """An accepted trial point: its step length, cost terms and (when the acceptance test needed it) its
    gradient; ``on_gradient``: accepted on the gradient-norm test below the cost's resolution."""

    alpha: float
    point: object
    cost: object
    gradient: object = None
    on_gradient: bool = False


@dataclass
class _Iterate:
    """What the Newton iteration carries from one step to the next (and saves for a resume)."""

    m: object
    cost: object
    g: object
    gnorm: float
    gnorm0: float
    history: list
    total_cg: int = 0
    mu: float = 0.0
    radius: float | None = None
    prev: tuple | None = None  # (||g||, CG residual norm, eta) of the previous iteration (Eisenstat-Walker)

    def tolerance(self, opts) -> float:
        return max(opts.gradient_atol, opts.gradient_rtol * self.gnorm0)

    def accept(self, problem, step, P) -> float:
        """Move to the accepted trial point (a :class:`_Step`); the decrease of the cost."""
        decrease = self.cost.total - step.cost.total
        self.m.assign(step.point)
        self.cost = step.cost
        self.g = step.gradient if step.gradient is not None else problem.gradient(self.m)
        self.gnorm = math.sqrt(max(dual_pairing(self.g, P(self.g)), 0.0))
        return decrease

    def result(self, problem, converged: bool, reason: str, k: int) -> OptimizationResult:
        return OptimizationResult(m=self.m, cost=self.cost, converged=converged, reason=reason, iterations=k,
                                  cg_iterations=self.total_cg, gradient_norm=self.gnorm,
                                  history=tuple(self.history), counts=problem.counts)

    def state(self, k: int) -> dict:
        return {"iteration": k, "gnorm0": self.gnorm0, "total_cg": self.total_cg, "mu": self.mu,
                "radius": self.radius, "prev": list(self.prev) if self.prev is not None else None,
                "history": list(self.history)}


def _start(problem, m0, opts, P, resume, log):
    """The first iterate (or the saved one, with its optimizer state) and the first iteration number."""
    m = m0.copy(deepcopy=True)
    m.rename("m")
    cost = problem.cost(m)
    g = problem.gradient(m)
    gnorm = math.sqrt(max(dual_pairing(g, P(g)), 0.0))
    it = _Iterate(m, cost, g, gnorm, gnorm, [], 0, opts.levenberg_marquardt, opts.initial_radius)
    start = 1
    if resume is not None:
        it.gnorm0, it.total_cg, it.mu, it.radius = resume["gnorm0"], resume["total_cg"], resume["mu"], resume["radius"]
        it.prev = tuple(resume["prev"]) if resume["prev"] is not None else None
        it.history = [dict(h) for h in resume["history"]]
        start = int(resume["iteration"]) + 1
        log.info(f"newton_cg: resuming after iteration {start - 1}")
    log.info(f"{'it':>3} {'cost':>13} {'misfit':>13} {'reg':>11} {'||g||':>10} {'cg':>4} {'step':>7} {'eta':>7}")
    log.info(f"{0:3d} {cost.total:13.6e} {cost.misfit:13.6e} {cost.regularization:11.4e} {gnorm:10.3e}")
    return it, start


def _newton_direction(problem, it, k, P, opts):
    """(eta, -g, CG result): the inexact Newton step of iteration k, to the forcing tolerance eta."""
    eta, minus_g = _forcing(opts, it), it.g.copy(deepcopy=True)
    minus_g *= -1.0
    gauss_newton = opts.full_newton_after is None or k <= opts.full_newton_after
    cg = conjugate_gradient(_hessian(problem, it.m, it.mu, gauss_newton), minus_g, P, rtol=eta,
                            max_iterations=opts.max_cg_iterations, space=problem.parameter_space,
                            radius=it.radius if opts.globalization is Globalization.TRUST_REGION else None)
    it.total_cg, it.prev = it.total_cg + cg.iterations, (it.gnorm, cg.residual_norm, eta)
    return eta, minus_g, cg


def _forcing(opts, it) -> float:
    """The CG tolerance of this iteration (see :class:`NewtonCGOptions`)."""
    if opts.forcing is not None:
        return opts.forcing
    if opts.forcing_rule is ForcingRule.SQRT or it.prev is None:
        return min(opts.max_forcing, math.sqrt(it.gnorm / it.gnorm0))
    prev_gnorm, prev_residual, prev_eta = it.prev  # Eisenstat-Walker choice 1 with safeguard
    eta = abs(it.gnorm - prev_residual) / prev_gnorm
    golden = (1.0 + math.sqrt(5.0)) / 2.0
    if prev_eta**golden > 0.1:
        eta = max(eta, prev_eta**golden)
    return min(opts.max_forcing, eta)


def _hessian(problem, m, mu, gauss_newton):
    """The Hessian action of this iteration, with Levenberg-Marquardt damping mu R''."""

    def apply_h(d):
        h = problem.hessian_action(m, d, gauss_newton=gauss_newton)
        if mu > 0:
            axpy(h, mu, problem.prior.hessian_action(m, d))
        return h

    return apply_h


def _globalize(problem, it, cg, k, eta, minus_g, P, opts, log):
    """The globalization (hIPPYlib's split): ``(_Step, None)`` for an accepted step, ``(None, None)`` for a
    rejected trust-region step, ``(None, reason)`` to stop.  A step whose predicted decrease the cost
    cannot resolve is judged on the gradient instead (:func:`_roundoff_step`), and so is the Newton step
    when the line search or trust region gives up: the cost's noise can exceed its estimate (it carries
    the error of ill-conditioned solves), the gradient's progress still shows."""
    floor = max(cost_resolution(it.cost), opts.stagnation_rtol * abs(it.cost.total))
    if -dual_pairing(it.g, cg.solution) <= floor:
        step = _roundoff_step(problem, it, cg.solution, P, eta, log)
        return step, (None if step is not None else StopReason.ROUNDOFF_FLOOR)
    if opts.globalization is Globalization.TRUST_REGION:
        step = _trust_region_step(problem, it, cg, k, eta, log)
        if step is None and it.radius < 1e-14:
            step = _roundoff_step(problem, it, cg.solution, P, eta, log)
            return step, (None if step is not None else StopReason.TRUST_REGION_COLLAPSED)
        return step, None
    step = _line_search_step(problem, it, cg.solution, minus_g, P, opts, log)
    if step is None:
        step = _roundoff_step(problem, it, cg.solution, P, eta, log)
    return step, (None if step is not None else StopReason.LINE_SEARCH_FAILED)


def _roundoff_step(problem, it, step, P, eta, log):
    r"""The full Newton step near the round-off floor, accepted when it reduces :math:`\|g\|_P` as an inexact
    Newton step does — by at least :math:`(1+\eta)/2` (locally :math:`\|g_+\| \le (\eta + O(\|g\|))\|g\|`),
    which round-off alone does not — and the cost does not rise beyond its resolution; None when it does
    not: the floor is reached."""
    import firedrake as fd

    trial = fd.Function(problem.parameter_space).assign(it.m + step)
    new_cost = safe_cost(problem, trial, log)
    if new_cost is None or new_cost.total > it.cost.total + cost_resolution(it.cost):
        return None
    g = problem.gradient(trial)
    gnorm = math.sqrt(max(dual_pairing(g, P(g)), 0.0))
    if not gnorm <= 0.5 * (1.0 + eta) * it.gnorm:
        log.info(f"    round-off floor: the Newton step leaves ||g|| at {gnorm:.3e} (from {it.gnorm:.3e})")
        return None
    return _Step(1.0, trial, new_cost, gradient=g, on_gradient=True)


def _trust_region_step(problem, it, cg, k, eta, log):
    """Steihaug trust region: the trial point and the radius update by the ratio of actual to predicted
    decrease; ``None`` when the step is rejected (same point, smaller region; recorded in the history)."""
    import firedrake as fd

    trial = fd.Function(problem.parameter_space).assign(it.m + cg.solution)
    new_cost = safe_cost(problem, trial, log)
    actual = -math.inf if new_cost is None else it.cost.total - new_cost.total
    rho = actual / cg.model_decrease if cg.model_decrease > 0 else -math.inf
    if rho < 0.25:
        it.radius = 0.25 * cg.step_norm
    elif rho > 0.75 and (cg.on_boundary or it.radius is None):
        it.radius = 2.0 * cg.step_norm if it.radius is None else 2.0 * it.radius
    elif it.radius is None:
        it.radius = cg.step_norm
    if rho > 1e-4:
        return _Step(1.0, trial, new_cost)
    log.info(f"{k:3d} step rejected (rho = {rho:.2e}), radius -> {it.radius:.3e}")
    if it.radius >= 1e-14:
        it.history.append({"iteration": k, "cost": it.cost.total, "misfit": it.cost.misfit,
                           "regularization": it.cost.regularization, "gradient_norm": it.gnorm,
                           "cg_iterations": cg.iterations, "cg_reason": cg.reason, "step_length": 0.0,
                           "forcing": eta, "radius": it.radius})
    return None


def _line_search_step(problem, it, step, minus_g, P, opts, log):
    """Armijo backtracking on the Newton step (preconditioned steepest descent if it is not a descent
    direction); the damping is relaxed after a full step, raised after a shortened one."""
    slope = dual_pairing(it.g, step)
    if slope >= 0:  # not a descent direction (should not happen with an SPD Hessian)
        step = P(minus_g)
        slope = dual_pairing(it.g, step)
    found = armijo_backtracking(problem, it.m, step, it.cost, slope, c1=opts.armijo_c1,
                                max_backtracks=opts.max_backtracks, log=log)
    if found is None:
        return None
    if it.mu > 0:
        it.mu = it.mu / 3.0 if found[0] == 1.0 else 2.0 * it.mu
    return _Step(*found)


def _record(it, k, cg, alpha, eta, opts, log) -> dict:
    """The history entry of an accepted step (also logged)."""
    c = it.cost
    entry = {"iteration": k, "cost": c.total, "misfit": c.misfit, "regularization": c.regularization,
             "gradient_norm": it.gnorm, "cg_iterations": cg.iterations, "cg_reason": cg.reason,
             "step_length": alpha, "forcing": eta}
    if opts.globalization is Globalization.TRUST_REGION:
        entry["radius"] = it.radius
    if it.mu > 0:
        entry["damping"] = it.mu
    it.history.append(entry)
    log.info(f"{k:3d} {c.total:13.6e} {c.misfit:13.6e} {c.regularization:11.4e} {it.gnorm:10.3e} "
             f"{cg.iterations:4d} {alpha:7.4f} {eta:7.1e}")
    return entry
