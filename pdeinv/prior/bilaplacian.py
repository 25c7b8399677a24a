r"""The BiLaplacian (Matérn, :math:`\nu = 2 - d/2`) Gaussian prior of hIPPYlib.

Covariance :math:`\mathcal C = \mathcal A^{-2}` with the elliptic operator

.. math::

    \mathcal A m = \delta m - \gamma\nabla\cdot(\Theta\nabla m)\ \text{in }\Omega,\qquad
    \gamma\,\Theta\nabla m\cdot n + \beta m = 0\ \text{on }\partial\Omega,

discretised as :math:`\mathcal C = A^{-1} M A^{-1}` and precision :math:`\mathcal C^{-1} = A M^{-1} A`
(:math:`A` the stiffness-plus-mass matrix, :math:`M` the mass matrix).  The Robin coefficient
:math:`\beta = \sqrt{\gamma\delta}/1.42` (hIPPYlib's choice) reduces the variance inflation that a
zero-flux boundary causes near the boundary.

Samples: :math:`m = \bar m + A^{-1} w` with white noise :math:`w \sim \mathcal N(0, M)` from
Firedrake's :class:`WhiteNoiseGenerator` (element-wise mass-matrix square roots), so that
:math:`\operatorname{Cov}(m) = A^{-1} M A^{-1}`.  The law does not depend on the number of ranks.

Parameters from correlation length :math:`\rho` and marginal variance :math:`\sigma^2` (isotropic,
:math:`\Theta = I`, away from the boundary): with :math:`\nu = 2 - d/2`,
:math:`\kappa = \sqrt{8\nu}/\rho`,

.. math::

    \gamma = \Big(\frac{\Gamma(\nu)}{(4\pi)^{d/2}\,\kappa^{2\nu}\,\sigma^2}\Big)^{1/2},\qquad
    \delta = \kappa^2\gamma.

(An anisotropic :math:`\Theta` scales the marginal variance by :math:`1/\sqrt{\det\Theta}`.)
"""

from __future__ import annotations

import math

from pdeinv.linalg.operator import DirichletOperator
from pdeinv.prior.base import GaussianPrior

__all__ = ["BiLaplacianPrior", "bilaplacian_coefficients"]


def bilaplacian_coefficients(correlation_length: float, variance: float, dim: int) -> tuple[float, float]:
    """:math:`(\\gamma, \\delta)` giving correlation length :math:`\\rho` and marginal variance
    :math:`\\sigma^2` in dimension ``dim`` (2 or 3)."""
    if dim not in (1, 2, 3):
        raise ValueError(f"bilaplacian_coefficients: dim must be 1, 2 or 3, got {dim}")
    from pdeinv._checks import real_number

    correlation_length = real_number("bilaplacian_coefficients", "correlation_length", correlation_length)
    variance = real_number("bilaplacian_coefficients", "variance", variance)
    nu = 2.0 - dim / 2.0
    kappa = math.sqrt(8.0 * nu) / correlation_length
    gamma = math.sqrt(math.gamma(nu) / ((4.0 * math.pi) ** (dim / 2.0) * kappa ** (2.0 * nu) * variance))
    return gamma, kappa**2 * gamma


class BiLaplacianPrior(GaussianPrior):
    """BiLaplacian Gaussian prior :math:`\\mathcal N(\\bar m, (\\delta I - \\gamma\\nabla\\cdot\\Theta\\nabla)^{-2})`.

    Parameters
    ----------
    space : firedrake.FunctionSpace
        Parameter space: scalar, or vector/tensor-valued (the same operator acts on every component,
        so the components are independent with equal correlation length and variance).
    gamma, delta : float
        Positive coefficients (see :meth:`from_correlation`).
    anisotropy : UFL 2-tensor, optional
        :math:`\\Theta` (symmetric positive definite); default identity.
    robin : bool
        Use the Robin boundary term (default True).
    mean : Function or UFL expression, optional
        :math:`\\bar m` (default 0).
    solver_parameters : dict, optional
        PETSc options for the solves with :math:`A` and :math:`M`.
    """

    def __init__(self, space, *, gamma: float, delta: float, anisotropy=None, robin: bool = True, mean=None,
                 solver_parameters=None):
        import firedrake as fd

        from pdeinv._checks import real_number

        gamma = real_number("BiLaplacianPrior", "gamma", gamma)
        delta = real_number("BiLaplacianPrior", "delta", delta)
        super().__init__(space, mean)
        self.gamma, self.delta = float(gamma), float(delta)
        u, v = fd.TrialFunction(space), fd.TestFunction(space)
        # a vector-valued field: the same operator on every component (grad u Theta, Theta symmetric)
        scalar = space.value_shape == ()
        flux = fd.grad(u) if anisotropy is None else (
            fd.dot(anisotropy, fd.grad(u)) if scalar else fd.dot(fd.grad(u), anisotropy))
        a = self.gamma * fd.inner(flux, fd.grad(v)) * fd.dx + self.delta * fd.inner(u, v) * fd.dx
        if robin:
            a = a + math.sqrt(self.gamma * self.delta) / 1.42 * fd.inner(u, v) * fd.ds
        self._A = DirichletOperator(a, (), solver_parameters=solver_parameters, symmetric=True)
        self._M = DirichletOperator(fd.inner(u, v) * fd.dx, (), solver_parameters=solver_parameters, symmetric=True)
        self._work = [fd.Function(space), fd.Cofunction(space.dual())]

    @classmethod
    def from_correlation(cls, space, *, correlation_length: float, variance: float, **kwargs):
        """The prior with correlation length :math:`\\rho` and marginal variance :math:`\\sigma^2`."""
        dim = space.mesh().topological_dimension
        gamma, delta = bilaplacian_coefficients(correlation_length, variance, dim)
        return cls(space, gamma=gamma, delta=delta, **kwargs)

    @property
    def solves(self) -> int:
        return self._A.solves + self._M.solves

    # A: V -> V*, A^{-1}: V* -> V, M^{-1}: V* -> V --------------------------------------------------
    def _apply_A(self, f, out):
        with f.dat.vec_ro as x, out.dat.vec_wo as y:
            self._A.matrix.petscmat.mult(x, y)

    def _solve(self, op, c, out):
        tmp = self._work[1]
        tmp.assign(c)
        with tmp.dat.vec as b, out.dat.vec_wo as x:
            op.solve_homogeneous(b, x)

    def precision_action(self, dm):
        """:math:`\\mathcal C^{-1}\\delta m = A M^{-1} A\\,\\delta m` (a Cofunction)."""
        import firedrake as fd

        self._check(dm, "dm")
        y = fd.Cofunction(self.space.dual())
        self._apply_A(dm, y)
        z = self._work[0]
        self._solve(self._M, y, z)
        out = fd.Cofunction(self.space.dual(), name="precision_action")
        self._apply_A(z, out)
        return out

    def covariance_action_block(self, cs):
        """:meth:`covariance_action` of a list of Cofunctions: both solves with :math:`A` blocked
        (``KSPMatSolve``), the mass matrix applied to the dense block."""
        from pdeinv.linalg.multivector import dense_block, from_dense_block
        from pdeinv.maps import check_function

        for i, c in enumerate(cs):
            check_function(c, self.space, f"{type(self).__name__}: cs[{i}]", dual=True)
        B = dense_block(cs)
        X = B.duplicate()
        self._A.solve_block(B, X)
        Y = self._M.matrix.petscmat.matMult(X)
        Z = Y.duplicate()
        self._A.solve_block(Y, Z)
        return from_dense_block(Z, self.space, name="covariance_action")

    def covariance_action(self, c):
        """:math:`\\mathcal C c = A^{-1} M A^{-1} c` for a Cofunction ``c`` (a Function)."""
        import firedrake as fd

        from pdeinv.maps import check_function

        check_function(c, self.space, f"{type(self).__name__}: c", dual=True)
        x = self._work[0]
        self._solve(self._A, c, x)
        y = fd.Cofunction(self.space.dual())
        with x.dat.vec_ro as xv, y.dat.vec_wo as yv:
            self._M.matrix.petscmat.mult(xv, yv)
        out = fd.Function(self.space, name="covariance_action")
        self._solve(self._A, y, out)
        return out

    def sample_centered(self, *, seed: int, reproducible: bool = False):
        """:math:`A^{-1} w`, :math:`w \\sim \\mathcal N(0, M)` (Firedrake's white noise), seeded.

        Firedrake's white noise has the same *law* on any number of ranks but not the same numbers.
        ``reproducible=True`` draws :math:`w = M_L^{1/2}\\xi` instead, with :math:`M_L` the lumped mass
        matrix and :math:`\\xi` from :func:`pdeinv.linalg.random_multifunction` (a hash of the dof
        coordinates): the same sample on any number of ranks, e.g. for a synthetic truth, with the
        law :math:`\\mathcal N(0, A^{-1}M_LA^{-1})` (the usual mass-lumping approximation).
        """
        import firedrake as fd

        out = fd.Function(self.space)
        if reproducible:
            import numpy as np

            from pdeinv.linalg.arrays import local_values, set_local_values
            from pdeinv.linalg.multivector import random_multifunction

            xi = random_multifunction(self.space, 1, seed=seed)[0]
            ones = fd.Function(self.space).assign(1.0)
            lumped = fd.assemble(fd.inner(ones, fd.TestFunction(self.space)) * fd.dx)
            w = fd.Cofunction(self.space.dual())
            set_local_values(w, np.sqrt(local_values(lumped)) * local_values(xi))
        else:
            from firedrake.adjoint import WhiteNoiseGenerator

            w = WhiteNoiseGenerator(self.space, seed=seed).sample()
        self._solve(self._A, w, out)
        return out
