r"""Spectral estimates of :math:`A u = \lambda B u` from operator actions: power iteration and Lanczos.

:math:`A: V \to V^*` symmetric positive semi-definite (e.g. the Gauss–Newton misfit Hessian
:math:`J^T\Gamma^{-1}J`, applied by one JVP and one VJP), :math:`B` symmetric positive definite
with :math:`B^{-1}: V^* \to V` available (the prior covariance; or the inverse lumped mass
:math:`W^{-1}`, for the Lipschitz constant of a misfit gradient in the :math:`W`-metric, which sets
ISTA/FISTA's step :math:`1/L`).  Both methods work on Cofunctions :math:`q` with the inner product
:math:`\langle q, B^{-1}q'\rangle`, in which :math:`AB^{-1}` is self-adjoint; they need one action of
:math:`A` and one of :math:`B^{-1}` per iteration.

Power iteration
    :math:`q \leftarrow Ap/\|Ap\|`, :math:`p = B^{-1}q`; :math:`\lambda_{\max} \approx \langle Ap, p\rangle`
    with :math:`\langle q, p\rangle = 1`.  Converges like :math:`(\lambda_2/\lambda_1)^{2k}`.
Lanczos
    The Krylov basis :math:`q_j` (:math:`B^{-1}`-orthonormal, fully re-orthogonalised), the tridiagonal
    :math:`T_k = Q^TAB^{-1}Q`, whose eigenvalues (Ritz values) approximate the extreme eigenvalues of
    :math:`B^{-1}A` — the largest few to machine precision in far fewer actions than power iteration.

The start vector is a partition-independent random field (:func:`pdeinv.linalg.random_multifunction`),
so 1 and N ranks give the same estimates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pdeinv.linalg.arrays import local_values, scale, set_local_values
from pdeinv.linalg.multivector import MultiFunction, random_multifunction
from pdeinv.verify import dual_pairing

__all__ = ["SpectralResult", "power_iteration", "lanczos", "conditioning_report", "lipschitz_constant"]


@dataclass(frozen=True)
class SpectralResult:
    """Eigenvalue estimates of :math:`B^{-1}A`.

    Attributes
    ----------
    eigenvalues : numpy.ndarray
        Descending (power iteration: one).
    eigenvectors : MultiFunction or None
        :math:`B`-orthonormal Ritz vectors (Lanczos with ``vectors=True``; power iteration: the last iterate).
    iterations : int
        Actions of :math:`A` used.
    converged : bool
    residual : float
        Power iteration: relative change of the estimate at the last step; Lanczos: the largest
        Ritz value's residual bound :math:`\\beta_k|s_{k,1}|` relative to it.
    """

    eigenvalues: np.ndarray
    eigenvectors: object
    iterations: int
    converged: bool
    residual: float

    @property
    def largest(self) -> float:
        return float(self.eigenvalues[0])


def _start(name, max_iterations, apply_Binv, space, seed):
    """Check the iteration limit; a random Cofunction q (partition-independent) and p = B^{-1} q,
    scaled so that <q, p> = 1."""
    import firedrake as fd

    if not (isinstance(max_iterations, int) and max_iterations >= 1):
        raise ValueError(f"{name}: max_iterations must be a positive integer, got {max_iterations!r}")
    q = fd.Cofunction(space.dual())
    set_local_values(q, local_values(random_multifunction(space, 1, seed=seed)[0]))
    p = apply_Binv(q)
    s = math.sqrt(max(dual_pairing(q, p), 0.0))
    scale(q, 1.0 / s)
    scale(p, 1.0 / s)
    return q, p


def power_iteration(apply_A: Callable, apply_Binv: Callable, space, *, max_iterations: int = 200,
                    rtol: float = 1e-10, seed: int = 7) -> SpectralResult:
    """Largest eigenvalue of :math:`Au = \\lambda Bu` by power iteration (see module docstring).

    ``apply_A(p: Function) -> Cofunction``, ``apply_Binv(q: Cofunction) -> Function``.
    """
    q, p = _start("power_iteration", max_iterations, apply_Binv, space, seed)
    lam, change = 0.0, math.inf
    for k in range(1, max_iterations + 1):
        aq = apply_A(p)
        new = dual_pairing(aq, p)  # Rayleigh quotient <A p, p> / <B p, p>, <B p, p> = <q, p> = 1
        change = abs(new - lam) / max(abs(new), 1e-300)
        lam = new
        if change <= rtol:
            return SpectralResult(np.array([lam]), MultiFunction(space, [p]), k, True, change)
        q = aq
        p = apply_Binv(q)
        s = math.sqrt(max(dual_pairing(q, p), 0.0))
        if s == 0.0:
            return SpectralResult(np.array([0.0]), MultiFunction(space, [p]), k, True, 0.0)
        scale(q, 1.0 / s)
        scale(p, 1.0 / s)
    return SpectralResult(np.array([lam]), MultiFunction(space, [p]), max_iterations, False, change)


def lanczos(apply_A: Callable, apply_Binv: Callable, space, *, max_iterations: int = 30, rtol: float = 1e-10,
            seed: int = 7, vectors: bool = False) -> SpectralResult:
    """Ritz values of :math:`B^{-1}A` by Lanczos with full re-orthogonalisation; stops when the largest
    Ritz value's residual bound is below ``rtol`` relative (or the Krylov space is exhausted)."""
    q, p = _start("lanczos", max_iterations, apply_Binv, space, seed)
    Q, Pf, alpha, beta = [q], [p], [], []
    comm = space.mesh().comm
    converged, bound, k = False, math.inf, 0
    for k in range(1, max_iterations + 1):
        w = apply_A(Pf[-1])
        # full re-orthogonalisation (twice) in the <., B^{-1} .> inner product, done as one local product
        # and one allreduce per pass
        for _ in range(2):
            Pm = np.stack([local_values(f) for f in Pf], axis=-1)
            wv = local_values(w)
            coeff = comm.allreduce(wv @ Pm)
            if _ == 0:
                alpha.append(float(coeff[-1]))
            set_local_values(w, wv - np.stack([local_values(c) for c in Q], axis=-1) @ coeff)
        T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        vals, vecs = np.linalg.eigh(T)
        pw = apply_Binv(w)
        b = math.sqrt(max(dual_pairing(w, pw), 0.0))
        bound = b * abs(vecs[-1, -1]) / max(abs(vals[-1]), 1e-300)
        if bound <= rtol or b <= 1e-14 * max(abs(vals[-1]), 1e-300):
            converged = True
            break
        if k < max_iterations:
            scale(w, 1.0 / b)
            scale(pw, 1.0 / b)
            Q.append(w)
            Pf.append(pw)
            beta.append(b)
    order = np.argsort(vals)[::-1]
    U = MultiFunction(space, Pf[:len(alpha)]).combine(vecs[:, order]) if vectors else None
    return SpectralResult(vals[order], U, k, converged, bound)


def conditioning_report(problem, m, *, iterations: int = 30, seed: int = 7) -> dict:
    """Spectrum of the prior-preconditioned Gauss–Newton misfit Hessian at ``m`` (Lanczos):
    largest and smallest computed eigenvalue, data-informed dimension (#:math:`\\lambda > 1`),
    effective number of parameters :math:`\\sum\\lambda/(1+\\lambda)` and the condition number
    :math:`(1+\\lambda_1)/(1+\\lambda_k)` of the preconditioned Hessian on the Krylov space."""

    P = problem.preconditioner
    res = lanczos(lambda p: problem.misfit.gauss_newton_action(m, p), P, problem.parameter_space,
                  max_iterations=iterations, seed=seed)
    lam = np.maximum(res.eigenvalues, 0.0)
    return {"largest_eigenvalue": float(lam[0]), "smallest_computed_eigenvalue": float(lam[-1]),
            "data_informed_dimension": int(np.sum(lam > 1.0)),
            "effective_parameters": float(np.sum(lam / (1.0 + lam))),
            "condition_number": float((1.0 + lam[0]) / (1.0 + lam[-1])), "lanczos_iterations": res.iterations,
            "converged": bool(res.converged)}


def lipschitz_constant(misfit, weights, m=None, *, rtol: float = 1e-8, seed: int = 7) -> float:
    """:math:`L = \\lambda_{\\max}(W^{-1}J^T\\Gamma^{-1}J)` at ``m`` (default 0) by power iteration: the
    Lipschitz constant of the misfit gradient in the lumped-mass metric :math:`W` (``weights``: a
    Cofunction such as ``L1(...).weights``), exact for maps linear in m; FISTA's fixed step is :math:`1/L`."""
    import firedrake as fd

    V = misfit.parameter_space
    m = m if m is not None else fd.Function(V)
    w = weights.dat.data_ro

    def w_inverse(c):
        f = fd.Function(V)
        f.dat.data[:] = c.dat.data_ro / w
        return f

    return power_iteration(lambda p: misfit.gauss_newton_action(m, p), w_inverse, V, rtol=rtol, seed=seed).largest
