r"""Proximal gradient with Nesterov acceleration (FISTA) for :math:`\min_m f(m) + g(m)`.

:math:`f` smooth (a misfit, possibly plus a smooth regularizer: anything with ``f(m)`` and
``f.gradient(m)``), :math:`g` with a proximal map in the lumped-mass metric :math:`W`
(:class:`pdeinv.prior.L1`).  One iteration:

.. math::

    z = \operatorname{prox}_{g/L}\big(y - L^{-1} W^{-1} f'(y)\big),\qquad
    t_{k+1} = \tfrac12\big(1 + \sqrt{1 + 4t_k^2}\big),\qquad
    y \leftarrow z + \tfrac{t_k - 1}{t_{k+1}}(z - m_k),

with the Lipschitz estimate :math:`L` doubled until the quadratic upper bound
:math:`f(z) \le f(y) + \langle f'(y), z - y\rangle + \tfrac L2\|z - y\|_W^2` holds (backtracking).
:math:`W^{-1}` turns the gradient Cofunction into a Function nodewise, which makes the step
independent of the mesh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pdeinv._tape import unannotated
from pdeinv.optimize.result import OptimizationResult
from pdeinv.problem import CostTerms
from pdeinv.verify import dual_pairing

__all__ = ["FISTAOptions", "fista", "check_smooth"]


@dataclass(frozen=True)
class FISTAOptions:
    """Options of :func:`fista`.

    Attributes
    ----------
    max_iterations : int
    step_rtol : float
        Stop when :math:`\\|m_{k+1} - m_k\\|_W \\le \\text{rtol}\\,\\|m_{k+1}\\|_W`.
    initial_lipschitz : float
        First estimate of :math:`L` (it only grows).
    backtrack_factor : float
    backtracking : bool
        ``False``: a fixed step :math:`1/L` with ``initial_lipschitz`` as :math:`L` (e.g. from
        :func:`pdeinv.linalg.spectral.lipschitz_constant`), no extra cost evaluations.
    quiet : bool
    """

    max_iterations: int = 500
    step_rtol: float = 1e-6
    initial_lipschitz: float = 1.0
    backtrack_factor: float = 2.0
    backtracking: bool = True
    quiet: bool = False

    def __post_init__(self):
        if not (self.initial_lipschitz > 0 and self.backtrack_factor > 1):
            raise ValueError("FISTAOptions: initial_lipschitz must be > 0 and backtrack_factor > 1")


def check_smooth(smooth, who: str) -> None:
    """TypeError unless ``smooth`` is a data term or a problem (what a proximal method's smooth part is)."""
    from pdeinv.maps import MisfitTerm
    from pdeinv.problem import InverseProblem

    if not isinstance(smooth, (MisfitTerm, InverseProblem)):
        raise TypeError(f"{who}: smooth must be a pdeinv MisfitTerm or InverseProblem, got {type(smooth).__name__}")


@unannotated
def fista(smooth, nonsmooth, m0, *, options: FISTAOptions | None = None, callback=None,
          log=None) -> OptimizationResult:
    """Minimise ``smooth(m) + nonsmooth(m)`` from ``m0`` (see module docstring)."""
    import firedrake as fd

    from pdeinv.log import RankZeroLog

    check_smooth(smooth, "fista")
    opts = options or FISTAOptions()
    V = nonsmooth.space
    nonsmooth._check(m0, "m0")
    comm = V.mesh().comm
    log = log or RankZeroLog(comm, quiet=opts.quiet)
    w = np.array(nonsmooth.weights.dat.data_ro)

    def wnorm2(f):
        return comm.allreduce(float(np.sum(w * f.dat.data_ro**2)))

    m = m0.copy(deepcopy=True)
    y = m0.copy(deepcopy=True)
    t, L = 1.0, opts.initial_lipschitz
    grad_fn = fd.Function(V)
    diff = fd.Function(V)
    history, reason, converged, k = [], "iteration limit", False, 0
    for k in range(1, opts.max_iterations + 1):
        fy = smooth(y)
        gy = smooth.gradient(y)
        grad_fn.dat.data[:] = gy.dat.data_ro / w
        while True:
            z = nonsmooth.prox(fd.Function(V).assign(y - (1.0 / L) * grad_fn), 1.0 / L)
            diff.assign(z - y)
            fz = smooth(z)
            if not opts.backtracking or fz <= fy + dual_pairing(gy, diff) + 0.5 * L * wnorm2(diff) + 1e-14 * abs(fy):
                break
            L *= opts.backtrack_factor
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        diff.assign(z - m)
        change = math.sqrt(wnorm2(diff))
        y.assign(z + ((t - 1.0) / t_next) * diff)
        m.assign(z)
        t = t_next
        gz = nonsmooth(m)
        entry = {"iteration": k, "cost": fz + gz, "misfit": fz, "regularization": gz, "lipschitz": L,
                 "step_change": change}
        history.append(entry)
        if k % 25 == 0 or k == 1:
            log.info(f"fista {k:4d} cost {fz + gz:13.6e} f {fz:12.5e} g {gz:11.4e} L {L:.3g}")
        if callback is not None:
            callback(k, m, entry)
        if change <= opts.step_rtol * max(math.sqrt(wnorm2(m)), 1e-300):
            reason, converged = "step tolerance", True
            break
    f_final, g_final = smooth(m), nonsmooth(m)
    counts = dict(smooth.counts)
    log.info(f"fista: {reason} after {k} iterations, cost {f_final + g_final:.6e}")
    return OptimizationResult(m=m, cost=CostTerms(f_final + g_final, f_final, g_final), converged=converged,
                              reason=reason, iterations=k, cg_iterations=0, gradient_norm=float("nan"),
                              history=tuple(history), counts=counts)
