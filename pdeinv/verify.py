r"""Derivative verification that users run on their own models.

Taylor test
    For a smooth functional :math:`J`, a point :math:`m`, a direction :math:`h` and
    :math:`\varepsilon_k = \varepsilon_0 2^{-k}`,

    .. math::

        R_0(\varepsilon) = |J(m + \varepsilon h) - J(m)| = O(\varepsilon), \qquad
        R_1(\varepsilon) = |J(m + \varepsilon h) - J(m) - \varepsilon \langle J'(m), h\rangle|
                         = O(\varepsilon^2).

    A correct derivative shows rate 2 for :math:`R_1`; a wrong one drops it to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TaylorResult", "taylor_test", "dual_pairing", "data_pairing", "DotTestResult", "dot_test",
           "SymmetryResult", "symmetry_test"]


@dataclass(frozen=True)
class TaylorResult:
    """Remainders and observed convergence rates of a Taylor test.

    Attributes
    ----------
    epsilons : tuple of float
        Step sizes :math:`\\varepsilon_k`.
    remainder0, remainder1 : tuple of float
        :math:`R_0(\\varepsilon_k)` and :math:`R_1(\\varepsilon_k)`.
    rates0, rates1 : tuple of float
        Observed orders between consecutive steps (expected 1 and 2).
    """

    epsilons: tuple[float, ...]
    remainder0: tuple[float, ...]
    remainder1: tuple[float, ...]
    rates0: tuple[float, ...]
    rates1: tuple[float, ...]
    remainder2: tuple[float, ...] = ()
    rates2: tuple[float, ...] = ()

    @property
    def min_rate(self) -> float:
        """The smallest observed rate of :math:`R_1` (≈ 2 for a correct gradient)."""
        return min(self.rates1)

    @property
    def min_rate2(self) -> float:
        """The smallest observed rate of :math:`R_2` (≈ 3 for a correct Hessian), when one was given."""
        if not self.rates2:
            raise ValueError("taylor_test was run without a Hessian: no second-order remainder")
        return min(self.rates2)

    def __str__(self) -> str:
        rows = ["      eps        R0          R1       rate0  rate1"]
        for k, eps in enumerate(self.epsilons):
            r0 = f"{self.rates0[k - 1]:6.3f}" if k else "     -"
            r1 = f"{self.rates1[k - 1]:6.3f}" if k else "     -"
            rows.append(f"  {eps:9.3e}  {self.remainder0[k]:9.3e}  {self.remainder1[k]:9.3e}  {r0} {r1}")
        return "\n".join(rows)


def _rates(eps, rem):
    out = []
    for k in range(1, len(eps)):
        if rem[k] == 0.0 or rem[k - 1] == 0.0:
            out.append(math.inf)  # exact (e.g. a linear functional): nothing left to converge
        else:
            out.append(math.log(rem[k - 1] / rem[k]) / math.log(eps[k - 1] / eps[k]))
    return tuple(out)


def dual_pairing(cofunction, function) -> float:
    """Global dual pairing :math:`\\langle g, h\\rangle` of a Cofunction with a Function (all ranks agree)."""
    if cofunction.function_space().dual() != function.function_space():
        from pdeinv._checks import describe_mismatch

        a, b = describe_mismatch(cofunction.function_space().dual(), function.function_space())
        raise ValueError(f"dual_pairing: the Cofunction lives on the dual of {a} but the Function lives on {b}")
    with cofunction.dat.vec_ro as g, function.dat.vec_ro as h:
        return g.dot(h)


def taylor_test(
    functional: Callable,
    m,
    h,
    *,
    derivative,
    epsilon0: float = 1e-2,
    steps: int = 4,
    hessian=None,
) -> TaylorResult:
    """Taylor test of a scalar functional's derivative at ``m`` in direction ``h``.

    Parameters
    ----------
    functional : callable
        ``functional(m) -> float``; must not modify its argument.
    m, h : firedrake.Function or numpy.ndarray
        Point and direction, on the same space (or two arrays of one shape, e.g. hyperparameters).
    derivative : firedrake.Cofunction or float
        The derivative :math:`J'(m)` as a Cofunction (paired with ``h``), or the directional
        derivative :math:`\\langle J'(m), h\\rangle` as a number.
    epsilon0 : float
        Largest step.
    steps : int
        Number of halvings (at least 2).
    hessian : firedrake.Cofunction or float, optional
        :math:`H h` (paired with ``h``) or :math:`\\langle Hh, h\\rangle`: adds the second-order
        remainder :math:`R_2(\\varepsilon) = |J(m+\\varepsilon h) - J(m) - \\varepsilon\\langle J', h\\rangle
        - \\tfrac12\\varepsilon^2\\langle Hh, h\\rangle| = O(\\varepsilon^3)`.

    Returns
    -------
    TaylorResult
    """

    if steps < 2:
        raise ValueError(f"taylor_test: steps must be >= 2 to give a rate, got {steps}")
    pair, shifted = _pair_and_shift(m, h)
    dJdh = pair(derivative)
    hHh = None if hessian is None else pair(hessian)
    J0 = float(functional(m))
    eps = tuple(epsilon0 * 2.0**-k for k in range(steps))
    r0, r1, r2 = [], [], []
    for e in eps:
        Je = float(functional(shifted(e)))
        r0.append(abs(Je - J0))
        r1.append(abs(Je - J0 - e * dJdh))
        if hHh is not None:
            r2.append(abs(Je - J0 - e * dJdh - 0.5 * e * e * hHh))
    return TaylorResult(eps, tuple(r0), tuple(r1), _rates(eps, r0), _rates(eps, r1), tuple(r2),
                        _rates(eps, r2) if r2 else ())


def _pair_and_shift(m, h):
    """``pair(d)`` (a derivative paired with h) and ``shifted(e)`` (m + e h) for arrays or Functions."""
    import numpy as np

    if isinstance(m, np.ndarray):  # a vector of hyperparameters: derivatives are arrays
        m, h = np.asarray(m, dtype=float), np.asarray(h, dtype=float)
        if h.shape != m.shape:
            raise ValueError(f"taylor_test: direction h has shape {h.shape}, m has {m.shape}")
        return (lambda d: float(d) if np.ndim(d) == 0 else float(np.dot(d, h))), (lambda e: m + e * h)
    from firedrake import Function

    if h.function_space() != m.function_space():
        raise ValueError("taylor_test: direction h must be on the same space as m")
    mp = Function(m.function_space())
    return ((lambda d: float(d) if isinstance(d, (int, float)) else dual_pairing(d, h)),
            (lambda e: mp.assign(m + e * h)))


def _relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


@dataclass(frozen=True)
class DotTestResult:
    """:math:`\\langle w, J\\,\\delta m\\rangle` vs :math:`\\langle J^T w, \\delta m\\rangle`."""

    forward: float
    adjoint: float

    @property
    def relative_error(self) -> float:
        return _relative_difference(self.forward, self.adjoint)


def data_pairing(w, d) -> float:
    """Global pairing of a data-space Cofunction ``w`` with a data-space Function ``d``."""
    with w.dat.vec_ro as a, d.dat.vec_ro as b:
        return a.dot(b)


def dot_test(forward_map, m, dm, w) -> DotTestResult:
    """Check that ``vjp`` is the adjoint of ``jvp`` at ``m``: :math:`\\langle w, J\\delta m\\rangle
    = \\langle J^T w, \\delta m\\rangle`.  A correct pair gives a relative error near machine precision.
    """
    jdm = forward_map.jvp(m, dm)
    jtw = forward_map.vjp(m, w)
    return DotTestResult(data_pairing(w, jdm), dual_pairing(jtw, dm))


@dataclass(frozen=True)
class SymmetryResult:
    """:math:`\\langle \\delta m_1, H\\delta m_2\\rangle` vs :math:`\\langle \\delta m_2, H\\delta m_1\\rangle`."""

    a12: float
    a21: float

    @property
    def relative_error(self) -> float:
        return _relative_difference(self.a12, self.a21)


def symmetry_test(hessian_action, dm1, dm2) -> SymmetryResult:
    """Symmetry of a Hessian action ``hessian_action(dm) -> Cofunction`` (e.g. a Gauss–Newton
    action ``lambda dm: misfit.gauss_newton_action(m, dm)``)."""
    return SymmetryResult(dual_pairing(hessian_action(dm2), dm1), dual_pairing(hessian_action(dm1), dm2))
