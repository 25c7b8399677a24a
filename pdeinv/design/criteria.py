r"""Design criteria from the low-rank representation :math:`K \approx ZZ^T` (:mod:`pdeinv.design.operator`).

For weights :math:`w \in [0,1]^N` on the candidates (each candidate :math:`c` owns the rows :math:`Z_c` of
:math:`Z`), with :math:`M(w) = I_r + \sum_c w_c Z_c^T Z_c`:

- **EIG** (D-optimal): the expected information gain of the linear(ised) Gaussian problem,
  :math:`\tfrac12\log\det(I + \tilde H(w)) = \tfrac12\log\det M(w)` (Sylvester's identity moves the
  determinant from the parameter space to :math:`r\times r`); gradient
  :math:`\partial_{w_c} = \tfrac12\,\mathrm{tr}(Z_c M^{-1} Z_c^T)`.
- **goal variance** (goal-oriented A-optimal): minus the summed posterior variances of the goals
  :math:`q_i = \langle a_i, m\rangle`, by Woodbury

  .. math::

      \mathrm{Var}(q_i \mid w) = \langle a_i, \mathcal C a_i\rangle - \Big(\sum_c w_c \|b_{ic}\|^2 -
      t_i^T M^{-1} t_i\Big), \qquad t_i = \sum_c w_c Z_c^T b_{ic},

  with gradient :math:`\partial_{w_c}\mathrm{Var}(q_i) = -\|b_{ic} - Z_c M^{-1} t_i\|^2`.

Every criterion is a *utility*: larger is better.  :func:`gains` gives the utility of a design with each
candidate added, for all candidates at once (the rank-:math:`\mathrm{size}` updates of :math:`M`, by
Woodbury again), which is what greedy and swapping greedy need.
"""

from __future__ import annotations

import numpy as np

from pdeinv._checks import Choice

__all__ = ["Criterion", "design_value", "weighted_value", "gains"]


class Criterion(Choice):
    """What a design maximises."""

    EIG = "eig"
    GOAL_VARIANCE = "goal_variance"


def _check_goals(op, criterion: Criterion) -> None:
    if criterion is Criterion.GOAL_VARIANCE and op.n_goals == 0:
        raise ValueError("design: criterion 'goal_variance' needs goals (DesignOperator(..., goals=[...]))")


def _parts(op, w):
    """(M, t, sum_c w_c |b_c|^2) of the weights w (length n_candidates)."""
    Z, B = op.factor, op.goal_rows
    M = np.eye(Z.shape[2]) + np.einsum("c,cir,cis->rs", w, Z, Z)
    t = np.einsum("c,cir,cig->rg", w, Z, B)
    bwb = np.einsum("c,cig->g", w, B * B)
    return M, t, bwb


def _value(op, criterion, M, t, bwb) -> tuple[float, np.ndarray, np.ndarray]:
    """(utility, Cholesky factor of M, M^{-1} t)."""
    L = np.linalg.cholesky(M)
    s = np.linalg.solve(M, t) if t.size else t
    if criterion is Criterion.EIG:
        return float(np.sum(np.log(np.diag(L)))), L, s
    reduction = bwb - np.sum(t * s, axis=0)
    return -float(np.sum(op.goal_prior_variance - reduction)), L, s


def design_value(op, chosen, criterion: Criterion | str = Criterion.EIG) -> float:
    """The utility of the binary design ``chosen`` (candidate indices)."""
    criterion = Criterion(criterion)
    _check_goals(op, criterion)
    w = np.zeros(op.n_candidates)
    w[np.asarray(chosen, dtype=int)] = 1.0
    return _value(op, criterion, *_parts(op, w))[0]


def weighted_value(op, w, criterion: Criterion | str = Criterion.EIG) -> tuple[float, np.ndarray]:
    """(utility, gradient with respect to the weights) of the relaxed design ``w``."""
    criterion = Criterion(criterion)
    _check_goals(op, criterion)
    w = np.asarray(w, dtype=float)
    value, L, s = _value(op, criterion, *_parts(op, w))
    Z = op.factor
    if criterion is Criterion.EIG:
        A = np.linalg.solve(L, Z.reshape(-1, Z.shape[2]).T)  # L^{-1} Z^T: column j gives z_j M^{-1} z_j
        return value, 0.5 * np.sum(A * A, axis=0).reshape(op.n_candidates, -1).sum(axis=1)
    r = op.goal_rows - np.einsum("cir,rg->cig", Z, s)
    return value, np.sum(r * r, axis=(1, 2))


def gains(op, chosen, criterion: Criterion | str = Criterion.EIG) -> np.ndarray:
    """The utility of ``chosen`` plus candidate c, for every c (``-inf`` for the members of ``chosen``)."""
    criterion = Criterion(criterion)
    _check_goals(op, criterion)
    chosen = np.asarray(chosen, dtype=int)
    w = np.zeros(op.n_candidates)
    w[chosen] = 1.0
    M, t, bwb = _parts(op, w)
    base, L, s = _value(op, criterion, M, t, bwb)
    Z, B = op.factor, op.goal_rows
    A = np.linalg.solve(L, Z.reshape(-1, Z.shape[2]).T).T.reshape(Z.shape)  # rows of Z_c L^{-T}
    F = np.einsum("cir,cjr->cij", A, A)  # Z_c M^{-1} Z_c^T
    E = F + np.eye(op.size)
    if criterion is Criterion.EIG:
        out = base + 0.5 * np.linalg.slogdet(E)[1]
    else:
        zs = np.einsum("cir,rg->cig", Z, s)
        fb = np.einsum("cij,cjg->cig", F, B)
        y = zs + fb
        tmt = np.sum(t * s, axis=0) + np.sum(2.0 * zs * B + B * fb - y * np.linalg.solve(E, y), axis=1)
        reduction = bwb + np.sum(B * B, axis=1) - tmt
        out = -np.sum(op.goal_prior_variance - reduction, axis=1)
    out[chosen] = -np.inf
    return out
