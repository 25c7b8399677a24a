r"""Classical choices of one regularization hyperparameter: the baselines of bilevel learning.

All three vary one component :math:`t = \theta_i` of a :class:`~pdeinv.learn.HyperProblem` whose term
is a :class:`~pdeinv.learn.Weight` (a regularization weight :math:`e^t`, or a prior variance factor),
solve :math:`m_t = \arg\min\mathcal J(\cdot;\theta)` for each trial (warm-started), and return a
:class:`ParameterChoice` with the curve they used.  With :math:`\tilde r = \Gamma^{-1/2}(F(m_t) - d)`
the whitened residual (:math:`\|\tilde r\|^2 = 2\Phi(m_t)` for Gaussian noise) and :math:`N` the number
of observations:

Discrepancy principle (Morozov)
    :math:`\|\tilde r(t)\|^2 = \tau N`, solved for :math:`t` by Brent's method in a bracket
    (the residual grows monotonically with the regularization).
L-curve (Hansen)
    :math:`(\log\|\tilde r\|, \log\|m_t\|_R)` over a grid, :math:`\|m\|^2_R = 2R(m)` the unweighted
    regularizer; the corner is the point of maximum curvature of cubic splines through the grid values.
Generalized cross-validation
    :math:`G(t) = N\|\tilde r\|^2/(N - \operatorname{tr}A_t)^2` with the influence matrix
    :math:`A_t = \Gamma^{-1/2}J H_t^{-1}J^T\Gamma^{-1/2}` (linearised at :math:`m_t`), its trace by
    Hutchinson's estimator :math:`\operatorname{tr}A \approx \frac1p\sum_k z_k^TAz_k` with Rademacher
    :math:`z_k` (the same probes for every :math:`t`, drawn in input order: identical on any number of
    ranks); each probe costs a VJP, a prior-preconditioned CG solve with :math:`H_t` and a JVP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pdeinv._tape import unannotated

__all__ = ["ParameterChoice", "discrepancy_principle", "l_curve", "gcv", "observation_count"]


@dataclass(frozen=True)
class ParameterChoice:
    """A hyperparameter chosen by a rule.

    Attributes
    ----------
    rule : str
    theta : numpy.ndarray
        The full hyperparameter vector with the chosen component.
    index : int
        The component varied.
    m : firedrake.Function
        The reconstruction at ``theta``.
    curve : dict of numpy.ndarray
        What the rule computed, per trial value ``t`` (sorted by ``t``): ``residual2``
        (:math:`\\|\\tilde r\\|^2`), and ``seminorm2`` (L-curve), ``curvature`` (L-curve, on ``t_fine``),
        ``gcv``, ``trace`` (GCV).
    reconstructions : int
        Inner solves used.
    """

    rule: str
    theta: np.ndarray
    index: int
    m: object
    curve: dict = field(default_factory=dict)
    reconstructions: int = 0


def observation_count(misfit) -> int:
    """Number of observed values :math:`N` of a misfit (masked entries excluded)."""
    noise = misfit.noise
    observed = noise._observed_array()
    if observed is not None:
        return int(np.sum(observed))
    return int(np.asarray(noise.observation.to_array(misfit.data)).size)


def _setup(hyper, theta0, index, rule):
    from pdeinv.learn.hyper import HyperTerm, Weight
    from pdeinv.noise import GaussianNoise

    theta0 = hyper.check_theta(theta0)
    if not (isinstance(index, (int, np.integer)) and 0 <= index < hyper.size):
        raise ValueError(f"{rule}: index must be in [0, {hyper.size}), got {index!r}")
    owner, start = None, 0
    for t in hyper._all:
        n = t.size if isinstance(t, HyperTerm) else 0
        if start <= index < start + n:
            owner = t
        start += n
    if not isinstance(owner, Weight) or owner.kind != "regularizer":
        raise ValueError(f"{rule}: hyperparameter {hyper.names[index]!r} is not a regularization weight "
                         "(a Weight term on a regularizer or prior)")
    base = hyper.misfit.target if isinstance(hyper.misfit, HyperTerm) else hyper.misfit
    if not isinstance(base.noise, GaussianNoise):
        raise ValueError(f"{rule}: needs Gaussian noise (whitened residuals), got {type(base.noise).__name__}")
    return theta0, owner, base


class _Solver:
    """Warm-started inner solves along a sequence of trial values."""

    def __init__(self, hyper, theta0, index, options):
        from pdeinv.learn.hypergradient import HypergradientOptions

        self.hyper, self.theta0, self.index = hyper, theta0, index
        self.options = options or HypergradientOptions().inner
        self.m, self.count = None, 0

    def theta(self, t):
        th = self.theta0.copy()
        th[self.index] = t
        return th

    def __call__(self, t):
        from pdeinv.learn.hypergradient import solve_inner

        res = solve_inner(self.hyper, self.theta(t), self.m, options=self.options)
        self.m, self.count = res.m, self.count + 1
        return res.m


def _grid(grid, rule):
    g = np.sort(np.asarray(grid, dtype=float).reshape(-1))
    if g.size < 3 or not np.all(np.isfinite(g)) or np.any(np.diff(g) <= 0):
        raise ValueError(f"{rule}: grid must hold at least 3 distinct finite values, got {grid!r}")
    return g


@unannotated
def discrepancy_principle(hyper, theta0, *, index: int = 0, bracket=(-10.0, 5.0), tau: float = 1.0,
                          xtol: float = 1e-3, options=None) -> ParameterChoice:
    """Morozov's discrepancy principle :math:`\\|\\tilde r(t)\\|^2 = \\tau N` (see module docstring)."""
    from scipy.optimize import brentq

    theta0, owner, base = _setup(hyper, theta0, index, "discrepancy_principle")
    if not (isinstance(tau, (int, float)) and tau > 0):
        raise ValueError(f"discrepancy_principle: tau must be positive, got {tau!r}")
    lo, hi = (float(b) for b in bracket)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"discrepancy_principle: bracket must be two finite increasing values, got {bracket!r}")
    N = observation_count(base)
    solve = _Solver(hyper, theta0, index, options)
    trials = {}

    def f(t):
        r2 = 2.0 * base(solve(t))
        trials[t] = r2
        return math.log(r2 / (tau * N))

    flo, fhi = f(lo), f(hi)
    if flo * fhi > 0:
        raise ValueError(f"discrepancy_principle: no sign change in the bracket {bracket} "
                         f"(|r|^2/N = {math.exp(flo) * tau:.3g} and {math.exp(fhi) * tau:.3g}, target {tau}); "
                         "widen it")
    t = brentq(f, lo, hi, xtol=xtol)
    m = solve(t)
    ts = np.array(sorted(trials))
    return ParameterChoice("discrepancy", solve.theta(t), index, m,
                           {"t": ts, "residual2": np.array([trials[s] for s in ts]), "target": tau * N},
                           solve.count)


@unannotated
def l_curve(hyper, theta0, *, index: int = 0, grid, options=None) -> ParameterChoice:
    """The L-curve corner (maximum curvature; see module docstring)."""
    from scipy.interpolate import CubicSpline

    theta0, owner, base = _setup(hyper, theta0, index, "l_curve")
    g = _grid(grid, "l_curve")
    solve = _Solver(hyper, theta0, index, options)
    r2, s2 = [], []
    for t in g:
        m = solve(t)
        r2.append(2.0 * base(m))
        s2.append(2.0 * owner.target(m))
    x, y = 0.5 * np.log(np.array(r2)), 0.5 * np.log(np.maximum(np.array(s2), 1e-300))
    # orientation: the curve is traversed with increasing regularization strength
    sgn = math.copysign(1.0, owner.exponent)
    p = sgn * g
    order = np.argsort(p)
    sx, sy = CubicSpline(p[order], x[order]), CubicSpline(p[order], y[order])
    fine = np.linspace(p.min(), p.max(), 400)
    dx, dy, ddx, ddy = sx(fine, 1), sy(fine, 1), sx(fine, 2), sy(fine, 2)
    kappa = (dx * ddy - ddx * dy) / np.maximum((dx * dx + dy * dy) ** 1.5, 1e-300)
    inner = slice(5, len(fine) - 5)  # spline ends are unreliable
    t_best = sgn * fine[inner][int(np.argmax(kappa[inner]))]
    m = solve(t_best)
    return ParameterChoice("l_curve", solve.theta(t_best), index, m,
                           {"t": g, "residual2": np.array(r2), "seminorm2": np.array(s2), "t_fine": sgn * fine,
                            "curvature": kappa}, solve.count)


@unannotated
def gcv(hyper, theta0, *, index: int = 0, grid, probes: int = 8, seed: int = 11, cg_rtol: float = 1e-8,
        options=None) -> ParameterChoice:
    """Generalized cross-validation with a randomized trace (see module docstring)."""
    import firedrake as fd

    from pdeinv.optimize.newton_cg import conjugate_gradient
    from pdeinv.verify import dual_pairing

    theta0, owner, base = _setup(hyper, theta0, index, "gcv")
    if not (isinstance(probes, (int, np.integer)) and probes >= 1):
        raise ValueError(f"gcv: probes must be a positive integer, got {probes!r}")
    g = _grid(grid, "gcv")
    obs, noise, fmap = base.noise.observation, base.noise, base.map
    N = observation_count(base)
    shape = np.asarray(obs.to_array(base.data)).shape
    rng = np.random.Generator(np.random.PCG64(seed))
    Z = [obs.from_array(rng.choice([-1.0, 1.0], size=shape)) for _ in range(probes)]
    inv_sigma = 1.0 / np.asarray(noise.sigma)
    solve = _Solver(hyper, theta0, index, options)
    r2, traces, values = [], [], []
    for t in g:
        m = solve(t)
        problem = hyper.problem(solve.theta(t))
        factor = problem.misfit.scale  # a noise-level term scales the misfit
        P = problem.preconditioner
        est = []
        for z in Z:
            w = noise._cofunction(z.dat.data_ro * inv_sigma)  # Gamma^{-1/2} z (masked)
            b = fmap.vjp(m, w)
            b.dat.data[:] *= factor
            cg = conjugate_gradient(lambda d, m=m, problem=problem: problem.hessian_action(m, d), b, P,
                                    rtol=cg_rtol, max_iterations=500, space=hyper.parameter_space)
            jx = fmap.jvp(m, cg.solution)
            zw = fd.Cofunction(obs.space.dual())
            zw.dat.data[:] = noise._observed(z.dat.data_ro * inv_sigma)
            est.append(dual_pairing(zw, jx))
        tr = float(np.mean(est))
        res2 = 2.0 * base(m)
        r2.append(res2)
        traces.append(tr)
        values.append(N * res2 / max(N - tr, 1e-300) ** 2)
    best = int(np.argmin(values))
    m = solve(g[best])
    return ParameterChoice("gcv", solve.theta(g[best]), index, m,
                           {"t": g, "residual2": np.array(r2), "trace": np.array(traces), "gcv": np.array(values)},
                           solve.count)
