r"""Choosing k of N candidates: greedy, swapping greedy, and a relaxed (continuous-weight) optimisation.

- **Greedy** adds, k times, the candidate with the largest utility gain (:func:`pdeinv.design.criteria.gains`).
  The EIG is monotone submodular in the design, so greedy is within :math:`1 - 1/e` of the optimum
  (Nemhauser, Wolsey, Fisher 1978); in practice much closer.
- **Swapping greedy** (Wu, Chen, Ghattas 2023) starts from greedy and makes the best exchange of a chosen
  for an unchosen candidate while one improves the utility (by more than a relative ``1e-12``: round-off
  cannot cycle it).
- **Relaxed**: maximise :math:`U(w) - \beta_\varepsilon \sum_c w_c / (w_c + \varepsilon)` over
  :math:`\{0 \le w \le 1, \sum_c w_c = k\}` by projected gradient ascent (Armijo backtracking, an exact
  projection onto the capped simplex), for a decreasing sequence of :math:`\varepsilon`: the penalty tends to
  the number of nonzero weights (a sparsifying continuation, as Alexanderian et al.'s :math:`\ell_0`
  approximations), and :math:`\beta` doubles at the last :math:`\varepsilon` until the weights are
  binary; the design is the k largest weights.  :math:`\beta = \text{penalty}\cdot\bar g` with
  :math:`\bar g` the mean utility gradient at the uniform start (the penalty on the utility's scale).
  The relaxation of the EIG is concave but loose (fractional weights on every candidate carry far more
  information than any k of them), so the binary design it ends at is a local one: greedy and swapping
  greedy are usually better, and ``swap_greedy(start=relaxed(...).chosen)`` polishes it.

No PDE is solved here: all of it is linear algebra of the operator's rank.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from pdeinv.design.criteria import Criterion, design_value, gains, weighted_value

__all__ = ["DesignResult", "RelaxedOptions", "greedy", "swap_greedy", "relaxed", "relaxed_objective",
           "random_designs", "exhaustive"]


@dataclasses.dataclass(frozen=True)
class DesignResult:
    """A chosen design.

    Attributes
    ----------
    chosen : tuple of int
        Candidate indices, ascending.
    value : float
        Its utility (EIG, or minus the summed goal variances).
    criterion : Criterion
    method : str
    history : tuple of float
        The utility after each greedy addition, each swap, or each continuation stage.
    weights : ndarray or None
        The relaxed weights (relaxed only).
    """

    chosen: tuple
    value: float
    criterion: Criterion
    method: str
    history: tuple = ()
    weights: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class RelaxedOptions:
    """Options of :func:`relaxed` (module docstring)."""

    penalty: float = 3.0
    epsilons: tuple = (1.0, 0.3, 0.1, 0.03, 0.01)
    max_iterations: int = 300
    tolerance: float = 1e-9

    def __post_init__(self):
        if not (self.penalty >= 0 and np.isfinite(self.penalty)):
            raise ValueError(f"RelaxedOptions: penalty must be >= 0, got {self.penalty!r}")
        if not self.epsilons or any(not (e > 0) for e in self.epsilons):
            raise ValueError(f"RelaxedOptions: epsilons must be positive numbers, got {self.epsilons!r}")
        if self.max_iterations < 1 or not (self.tolerance > 0):
            raise ValueError("RelaxedOptions: max_iterations must be >= 1 and tolerance > 0")


def _budget(op, k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (1 <= k <= op.n_candidates):
        raise ValueError(f"design: the budget k must be an integer in [1, {op.n_candidates}] (the number of "
                         f"candidates), got {k!r}")
    return int(k)


def greedy(op, k: int, criterion: Criterion | str = Criterion.EIG) -> DesignResult:
    """k greedy additions (module docstring)."""
    k, criterion = _budget(op, k), Criterion(criterion)
    chosen, history = [], []
    for _ in range(k):
        values = gains(op, chosen, criterion)
        c = int(np.argmax(values))
        chosen.append(c)
        history.append(float(values[c]))
    return DesignResult(tuple(sorted(chosen)), history[-1], criterion, "greedy", tuple(history))


def swap_greedy(op, k: int, criterion: Criterion | str = Criterion.EIG, *, start=None,
                max_swaps: int = 1000) -> DesignResult:
    """Best exchanges from ``start`` (default: the greedy design) until none improves (module docstring)."""
    k, criterion = _budget(op, k), Criterion(criterion)
    chosen = list(greedy(op, k, criterion).chosen if start is None else start)
    if len(set(chosen)) != k or not all(0 <= c < op.n_candidates for c in chosen):
        raise ValueError(f"swap_greedy: start must be {k} distinct candidate indices in [0, {op.n_candidates})")
    value = design_value(op, chosen, criterion)
    history = [value]
    for _ in range(max_swaps):
        best = (value + 1e-12 * abs(value), None, None)
        for s in chosen:
            rest = [c for c in chosen if c != s]
            values = gains(op, rest, criterion)
            values[s] = -np.inf
            c = int(np.argmax(values))
            if values[c] > best[0]:
                best = (float(values[c]), s, c)
        if best[1] is None:
            break
        chosen = [best[2] if c == best[1] else c for c in chosen]
        value = best[0]
        history.append(value)
    return DesignResult(tuple(sorted(chosen)), value, criterion, "swap_greedy", tuple(history))


def relaxed_objective(op, w, criterion: Criterion | str, beta: float, eps: float) -> tuple[float, np.ndarray]:
    r""":math:`U(w) - \beta\sum_c w_c/(w_c+\varepsilon)` and its gradient."""
    value, grad = weighted_value(op, w, criterion)
    w = np.asarray(w, dtype=float)
    return value - beta * float(np.sum(w / (w + eps))), grad - beta * eps / (w + eps) ** 2


def _project(v: np.ndarray, k: int) -> np.ndarray:
    """The Euclidean projection onto {0 <= w <= 1, sum w = k}: clip(v - tau) with tau by bisection."""
    lo, hi = float(np.min(v)) - 1.0, float(np.max(v))
    for _ in range(200):
        tau = 0.5 * (lo + hi)
        if np.clip(v - tau, 0.0, 1.0).sum() > k:
            lo = tau
        else:
            hi = tau
    return np.clip(v - 0.5 * (lo + hi), 0.0, 1.0)


def _ascend(op, w, k, criterion, beta, eps, opts: RelaxedOptions, alpha: float):
    """Projected gradient ascent of the penalised utility from w: (w, alpha)."""
    J, g = relaxed_objective(op, w, criterion, beta, eps)
    for _ in range(opts.max_iterations):
        for _ in range(60):
            trial = _project(w + alpha * g, k)
            Jt, gt = relaxed_objective(op, trial, criterion, beta, eps)
            if Jt >= J + 1e-4 * float(g @ (trial - w)):
                break
            alpha *= 0.5
        moved = float(np.max(np.abs(trial - w)))
        w, J, g = trial, Jt, gt
        alpha *= 2.0
        if moved < opts.tolerance:
            break
    return w, alpha


def relaxed(op, k: int, criterion: Criterion | str = Criterion.EIG,
            options: RelaxedOptions | None = None) -> DesignResult:
    """Continuous weights with a sparsifying continuation, then the k largest (module docstring)."""
    k, criterion = _budget(op, k), Criterion(criterion)
    opts = options or RelaxedOptions()
    w = np.full(op.n_candidates, k / op.n_candidates)
    g_bar = float(np.mean(np.abs(weighted_value(op, w, criterion)[1]))) or 1.0
    alpha, history, beta = 1.0 / g_bar, [], opts.penalty * g_bar
    for eps in opts.epsilons:
        w, alpha = _ascend(op, w, k, criterion, beta, eps, opts, alpha)
        history.append(weighted_value(op, w, criterion)[0])
    for _ in range(30):  # not binary yet: a stronger penalty at the last epsilon
        if float(np.max(w * (1.0 - w))) <= 1e-6:
            break
        beta *= 2.0
        w, alpha = _ascend(op, w, k, criterion, beta, opts.epsilons[-1], opts, alpha)
        history.append(weighted_value(op, w, criterion)[0])
    chosen = tuple(sorted(int(c) for c in np.argsort(-w, kind="stable")[:k]))
    return DesignResult(chosen, design_value(op, chosen, criterion), criterion, "relaxed", tuple(history), w)


def random_designs(op, k: int, count: int = 100, *, seed: int = 0,
                   criterion: Criterion | str = Criterion.EIG) -> np.ndarray:
    """The utilities of ``count`` uniformly random k-subsets (seeded: the same on every rank)."""
    k, criterion = _budget(op, k), Criterion(criterion)
    rng = np.random.default_rng(seed)
    return np.array([design_value(op, rng.choice(op.n_candidates, k, replace=False), criterion)
                     for _ in range(count)])


def exhaustive(op, k: int, criterion: Criterion | str = Criterion.EIG, *, limit: int = 100_000) -> DesignResult:
    """The optimum over every k-subset (refused above ``limit`` subsets)."""
    import math

    k, criterion = _budget(op, k), Criterion(criterion)
    if math.comb(op.n_candidates, k) > limit:
        raise ValueError(f"exhaustive: C({op.n_candidates}, {k}) = {math.comb(op.n_candidates, k)} designs is "
                         f"more than limit={limit}")
    best = max(itertools.combinations(range(op.n_candidates), k), key=lambda s: design_value(op, s, criterion))
    return DesignResult(tuple(best), design_value(op, best, criterion), criterion, "exhaustive")
