r"""Randomized generalized eigensolvers for :math:`A u = \lambda B u` (Saibaba, Lee & Kitanidis 2016).

:math:`A` is symmetric positive semi-definite (the misfit Hessian at the MAP point,
:math:`V \to V^*`), :math:`B` symmetric positive definite (the prior precision, :math:`V \to V^*`)
with :math:`B^{-1}` available (the prior covariance).  The eigenvectors are :math:`B`-orthonormal:
:math:`U^T B U = I`.  Only operator actions are used; the dense algebra is on
:math:`(k+p)\times(k+p)` matrices.

Double pass (``double_pass``), :math:`2(k+p)` actions of :math:`A` (+ :math:`q(k+p)` per power iteration):

1. :math:`Y = A\Omega`, :math:`\bar Y = B^{-1}Y` for a random block :math:`\Omega` of :math:`k+p` columns;
2. :math:`Q = \bar Y R^{-T}`, :math:`B`-orthonormal, by Cholesky QR in the :math:`B` inner product
   (twice, for stability; :math:`BQ` comes for free as :math:`Y R^{-T}`);
3. :math:`T = Q^T A Q` (second pass), :math:`T = V\Lambda V^T`, :math:`U = QV`.

Single pass (``single_pass``), :math:`k+p` actions: the same :math:`Q`, and :math:`T` from
:math:`Q^T Y \approx T\,(Q^T B\Omega)` in the least-squares sense (symmetrised); :math:`Q^T B\Omega`
is paired from :math:`BQ` (which the orthonormalisation gives), so no action of :math:`B` is needed.
Less accurate for slowly decaying spectra.

``residuals`` (a-posteriori check): :math:`\|Au_i - \lambda_i Bu_i\|_{B^{-1}}` for each pair, at
:math:`k` more actions of :math:`A`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pdeinv.linalg.arrays import axpy
from pdeinv.linalg.multivector import MultiFunction, combine_cofunctions, random_multifunction

__all__ = ["EigenResult", "double_pass", "single_pass", "residuals"]


@dataclass(frozen=True)
class EigenResult:
    """Leading generalized eigenpairs.

    Attributes
    ----------
    eigenvalues : numpy.ndarray
        :math:`\\lambda_1 \\ge \\dots \\ge \\lambda_k`.
    eigenvectors : MultiFunction
        :math:`B`-orthonormal :math:`u_i`.
    B_eigenvectors : list of Cofunction
        :math:`B u_i` (needed by every Laplace-approximation operation, so kept).
    hessian_actions : int
        Actions of :math:`A` used.
    method : str
    """

    eigenvalues: np.ndarray
    eigenvectors: MultiFunction
    B_eigenvectors: list
    hessian_actions: int
    method: str

    @property
    def rank(self) -> int:
        return len(self.eigenvalues)


def _b_orthonormalize(Ybar: MultiFunction, BY: list):
    """Cholesky QR in the B inner product, twice.  Returns (Q, BQ)."""
    Q, BQ = Ybar, BY
    for _ in range(2):
        G = Q.pair(BQ)  # G_ij = <B q_i, q_j>
        G = 0.5 * (G + G.T)
        w, V = np.linalg.eigh(G)
        if w.size == 0 or w.max() <= 0.0:  # a zero operator (the data inform nothing): no directions at all
            return MultiFunction(Q.space, []), []
        keep = w > w.max() * 1e-14  # drop a numerically dependent column instead of failing
        Rinv = V[:, keep] / np.sqrt(w[keep])  # G^{-1/2} restricted: Q Rinv is B-orthonormal
        Q = Q.combine(Rinv)
        BQ = combine_cofunctions(BQ, Rinv)
    return Q, BQ


def _check(k, p):
    if k < 1 or p < 0:
        raise ValueError(f"randomized eigensolver: need rank k >= 1 and oversampling p >= 0, got k={k}, p={p}")


def _finish(T, Q, BQ, k, actions, method):
    T = 0.5 * (T + T.T)
    lam, V = np.linalg.eigh(T)
    order = np.argsort(lam)[::-1][:k]
    lam, V = lam[order], V[:, order]
    return EigenResult(lam, Q.combine(V), combine_cofunctions(BQ, V), actions, method)


def _blocked(apply_one, apply_block):
    """A function of a list: the blocked action where there is one, else one action per column."""
    if apply_block is not None:
        return lambda xs: apply_block(list(xs))
    return lambda xs: [apply_one(x) for x in xs]


def double_pass(apply_A: Callable, apply_B: Callable, apply_Binv: Callable, space, *, k: int, p: int = 20,
                power_iterations: int = 0, seed: int = 0, apply_A_block: Callable | None = None,
                apply_Binv_block: Callable | None = None) -> EigenResult:
    """Leading ``k`` eigenpairs of :math:`Au = \\lambda Bu` with oversampling ``p``: :math:`2(k+p)`
    actions of :math:`A` (``apply_A``: Function -> Cofunction).  ``apply_B`` is unused (kept for a
    uniform signature); ``apply_Binv``: Cofunction -> Function.  ``apply_A_block`` /
    ``apply_Binv_block`` (list -> list), where given, apply them to all k+p columns at once."""
    _check(k, p)
    A_blk, Binv_blk = _blocked(apply_A, apply_A_block), _blocked(apply_Binv, apply_Binv_block)
    omega = random_multifunction(space, k + p, seed=seed)
    Y = A_blk(omega.functions)
    actions = len(Y)
    Ybar = MultiFunction(space, Binv_blk(Y))
    for _ in range(power_iterations):
        Y = A_blk(Ybar.functions)
        actions += len(Y)
        Ybar = MultiFunction(space, Binv_blk(Y))
    Q, BQ = _b_orthonormalize(Ybar, Y)
    if len(Q) == 0:
        return EigenResult(np.zeros(0), Q, [], actions, "double pass")
    AQ = A_blk(Q.functions)
    actions += len(AQ)
    T = Q.pair(AQ)
    return _finish(T, Q, BQ, min(k, len(Q)), actions, "double pass")


def single_pass(apply_A: Callable, apply_B: Callable, apply_Binv: Callable, space, *, k: int, p: int = 20,
                seed: int = 0, apply_A_block: Callable | None = None,
                apply_Binv_block: Callable | None = None) -> EigenResult:
    """Leading ``k`` eigenpairs from one pass: :math:`k+p` actions of :math:`A` and of :math:`B^{-1}`;
    ``apply_B`` is not called (kept for the signature shared with :func:`double_pass`)."""
    _check(k, p)
    omega = random_multifunction(space, k + p, seed=seed)
    Y = _blocked(apply_A, apply_A_block)(omega.functions)
    Ybar = MultiFunction(space, _blocked(apply_Binv, apply_Binv_block)(Y))
    Q, BQ = _b_orthonormalize(Ybar, Y)
    if len(Q) == 0:
        return EigenResult(np.zeros(0), Q, [], len(Y), "single pass")
    W = omega.pair(BQ)  # W_ij = <B q_i, omega_j> = (Q^T B Omega)_ij
    Z = Q.pair(Y).T  # Z_ij = <y_j, q_i> = (Q^T Y)_ij
    # T W = Z  ->  T = Z W^+ (least squares), then symmetrise
    T = np.linalg.lstsq(W.T, Z.T, rcond=None)[0].T
    return _finish(T, Q, BQ, min(k, len(Q)), len(Y), "single pass")


def residuals(apply_A: Callable, apply_Binv: Callable, result: EigenResult) -> np.ndarray:
    """:math:`\\|Au_i - \\lambda_i Bu_i\\|_{B^{-1}}` for each computed pair (``rank`` actions of A)."""
    from pdeinv.verify import dual_pairing

    out = []
    for lam, u, Bu in zip(result.eigenvalues, result.eigenvectors, result.B_eigenvectors, strict=True):
        r = apply_A(u)
        axpy(r, -lam, Bu)
        out.append(np.sqrt(max(dual_pairing(r, apply_Binv(r)), 0.0)))
    return np.array(out)
