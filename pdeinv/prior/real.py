r"""Gaussian priors on finite-dimensional parameters: a few scalars held in a Real (R) space.

Material constants, source strengths, boundary fluxes — the finite-dimensional part of a model — are
Firedrake Functions on ``R = FunctionSpace(mesh, "R", 0)``, one per number, n numbers being the mixed
space ``R * R * ... * R`` (or n further blocks of a product parameter space ``V * R * R * R``): a UFL
``Constant`` is not a control, an R-space Function is, and Firedrake has no test functions on a
vector-valued R space, so a model cannot be differentiated with respect to one.  R dofs are global
(every rank sees all n values), and the dual pairing is the Euclidean one,
:math:`\langle c, m\rangle = \sum_i c_i m_i`, so the prior is a plain multivariate normal
:math:`\mathcal N(\bar\theta, \Sigma)` with

.. math::

    R(\theta) = \tfrac12 (\theta-\bar\theta)^T\Sigma^{-1}(\theta-\bar\theta),\qquad
    \mathcal C c = \Sigma c,\qquad \theta = \bar\theta + L\xi,\ \Sigma = LL^T,\ \xi\sim\mathcal N(0, I).

``Sigma`` is dense (n × n, symmetric positive definite) or given by its diagonal (``variance``).
"""

from __future__ import annotations

import numpy as np

from pdeinv.prior.base import GaussianPrior

__all__ = ["RealGaussianPrior", "real_values", "set_real_values", "is_real_space"]


def real_values(f) -> np.ndarray:
    """The n values of a Function or Cofunction on R or R * ... * R (the same on every rank)."""
    return np.array([float(np.ravel(s.dat.data_ro)[0]) for s in f.subfunctions])


def set_real_values(f, values) -> None:
    """Write n values (the same on every rank) into a Function or Cofunction on R or R * ... * R."""
    for s, v in zip(f.subfunctions, np.ravel(np.asarray(values, dtype=float)), strict=True):
        s.dat.data[:] = v


def is_real_space(V) -> bool:
    """True for R and for a mixed space of scalar R spaces."""
    return all(W.ufl_element().family() == "Real" and W.value_shape == () for W in V)


def _covariance_matrix(n: int, covariance, variance) -> np.ndarray:
    """Sigma from a dense matrix or a diagonal, checked: finite, symmetric, positive definite."""
    name = "RealGaussianPrior"
    if (covariance is None) == (variance is None):
        raise ValueError(f"{name}: give exactly one of covariance (an n x n matrix) or variance (n values)")
    if variance is not None:
        var = np.atleast_1d(np.asarray(variance, dtype=float))
        if var.shape != (n,) or not np.all(np.isfinite(var)) or np.any(var <= 0):
            raise ValueError(f"{name}: variance must be {n} finite positive values (the space holds {n} "
                             f"numbers), got {np.asarray(variance).tolist()}")
        return np.diag(var)
    S = np.atleast_2d(np.asarray(covariance, dtype=float))
    if S.shape != (n, n) or not np.all(np.isfinite(S)):
        raise ValueError(f"{name}: covariance must be a finite {n} x {n} matrix (the space holds {n} numbers), "
                         f"got shape {S.shape}")
    if not np.allclose(S, S.T, rtol=1e-12, atol=0.0):
        raise ValueError(f"{name}: covariance must be symmetric")
    try:
        np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name}: covariance must be positive definite (eigenvalues "
                         f"{np.linalg.eigvalsh(S).tolist()})") from None
    return 0.5 * (S + S.T)


class RealGaussianPrior(GaussianPrior):
    r"""Multivariate normal prior :math:`\mathcal N(\bar\theta, \Sigma)` on n scalars in a Real space.

    Parameters
    ----------
    space : firedrake.FunctionSpace
        ``R = FunctionSpace(mesh, "R", 0)`` for one number, ``R * R * ... * R`` for n (in a product
        parameter ``V * R * R * R`` the prior of the last three blocks is built on ``R * R * R``).
    covariance : array_like (n, n), optional
        :math:`\Sigma`, symmetric positive definite.
    variance : array_like (n,), optional
        The diagonal of :math:`\Sigma` instead (independent scalars).
    mean : array_like (n,), optional
        :math:`\bar\theta` (default 0).
    """

    def __init__(self, space, *, covariance=None, variance=None, mean=None):
        super().__init__(space)
        n = len(space)
        self.n = n
        self.covariance_matrix = _covariance_matrix(n, covariance, variance)
        self._chol = np.linalg.cholesky(self.covariance_matrix)
        self._precision = np.linalg.inv(self.covariance_matrix)
        self._precision = 0.5 * (self._precision + self._precision.T)
        if mean is not None:
            mu = np.atleast_1d(np.asarray(mean, dtype=float))
            if mu.shape != (n,) or not np.all(np.isfinite(mu)):
                raise ValueError(f"RealGaussianPrior: mean must be {n} finite values, got {np.asarray(mean).tolist()}")
            set_real_values(self.mean, mu)

    def _require_space(self, space) -> None:
        from pdeinv._checks import describe_space

        if not is_real_space(space):
            vector = any(W.ufl_element().family() == "Real" for W in space)
            hint = (" (Firedrake has no test functions on a vector-valued R space: use one FunctionSpace(mesh, "
                    "'R', 0) per number, R * R * R)") if vector else ""
            raise ValueError(f"RealGaussianPrior: expected FunctionSpace(mesh, 'R', 0) or a mixed space R * ... * R "
                             f"of them, got {describe_space(space)}{hint}")

    def precision_action(self, dm):
        import firedrake as fd

        self._check(dm, "dm")
        out = fd.Cofunction(self.space.dual())
        set_real_values(out, self._precision @ real_values(dm))
        return out

    def covariance_action(self, c):
        import firedrake as fd

        from pdeinv.maps import check_function

        check_function(c, self.space, "RealGaussianPrior: c", dual=True)
        out = fd.Function(self.space, name="covariance_action")
        set_real_values(out, self.covariance_matrix @ real_values(c))
        return out

    def sample_centered(self, *, seed: int, reproducible: bool = True):
        r""":math:`L\xi`, :math:`\xi` from NumPy's PCG64 seeded with ``seed`` — drawn identically on every
        rank, so the sample is the same on any partition (``reproducible`` is accepted for uniformity with
        the field priors; it is always so)."""
        import firedrake as fd

        xi = np.random.Generator(np.random.PCG64(int(seed))).standard_normal(self.n)
        out = fd.Function(self.space)
        set_real_values(out, self._chol @ xi)
        return out
