r"""Total variation and L1 regularization.

Smoothed total variation
    :math:`R(m) = \alpha\int_\Omega \sqrt{|\nabla m|^2 + \varepsilon^2}\,dx`, with gradient and exact
    Hessian action derived by UFL from that form (once, symbolically; never taped):

    .. math::

        R''(m)\,\delta m = \alpha\int \frac{\nabla\delta m\cdot\nabla v}{s}
          - \frac{(\nabla m\cdot\nabla\delta m)(\nabla m\cdot\nabla v)}{s^3},
        \qquad s = \sqrt{|\nabla m|^2+\varepsilon^2},

    and the *lagged-diffusivity* approximation (Vogel) that keeps only the first term — positive
    definite, the usual choice inside Gauss–Newton.  ``hessian="exact"`` or ``"lagged"``.

L1
    :math:`R(m) = \alpha\sum_i w_i |m_i|` with :math:`w_i = \int_\Omega\phi_i` (lumped mass): the
    finite-element L1 norm whose proximal map in the lumped-mass metric is nodewise soft
    thresholding, :math:`\operatorname{prox}_{tR}(z)_i = \operatorname{sign}(z_i)\max(|z_i| - t\alpha, 0)`.
    Not differentiable: used by :func:`pdeinv.optimize.fista`.
"""

from __future__ import annotations

import numpy as np

from pdeinv._checks import Choice, choice
from pdeinv.prior.base import Regularizer

__all__ = ["TotalVariation", "TVHessian", "L1"]


class TVHessian(Choice):
    """The Hessian of smoothed TV: lagged diffusivity (positive definite) or exact (strings accepted)."""

    LAGGED = "lagged"
    EXACT = "exact"


class TotalVariation(Regularizer):
    """Smoothed TV :math:`\\alpha\\int\\sqrt{|\\nabla m|^2+\\varepsilon^2}`.

    Parameters
    ----------
    space : firedrake.FunctionSpace
    alpha : float
        Weight (> 0).
    epsilon : float
        Smoothing (> 0); smaller is closer to TV and harder for Newton.
    hessian : TVHessian or {"lagged", "exact"}
    """

    def __init__(self, space, *, alpha: float, epsilon: float, hessian: TVHessian = TVHessian.LAGGED):
        import firedrake as fd

        from pdeinv._checks import real_number

        alpha = real_number("TotalVariation", "alpha", alpha)
        epsilon = real_number("TotalVariation", "epsilon", epsilon)
        hessian = choice(TVHessian, hessian, "TotalVariation", "hessian")
        super().__init__(space)
        self.alpha, self.epsilon, self.hessian = float(alpha), float(epsilon), hessian
        self._m = fd.Function(space)
        self._dm = fd.Function(space)
        v = fd.TestFunction(space)
        s = fd.sqrt(fd.inner(fd.grad(self._m), fd.grad(self._m)) + self.epsilon**2)
        self._value = self.alpha * s * fd.dx
        self._gradient = fd.derivative(self._value, self._m, v)
        self._exact = fd.derivative(self._gradient, self._m, self._dm)
        self._lagged = self.alpha * fd.inner(fd.grad(self._dm), fd.grad(v)) / s * fd.dx

    def __call__(self, m) -> float:
        import firedrake as fd

        self._check(m)
        self._m.assign(m)
        return float(fd.assemble(self._value))

    def gradient(self, m):
        import firedrake as fd

        self._check(m)
        self._m.assign(m)
        return fd.assemble(self._gradient)

    def hessian_action(self, m, dm):
        import firedrake as fd

        self._check(m)
        self._check(dm, "dm")
        self._m.assign(m)
        self._dm.assign(dm)
        return fd.assemble(self._exact if self.hessian is TVHessian.EXACT else self._lagged)


class L1(Regularizer):
    """Lumped-mass L1 norm :math:`\\alpha\\sum_i w_i|m_i|` with its proximal map."""

    def __init__(self, space, *, alpha: float):
        import firedrake as fd

        from pdeinv._checks import real_number

        alpha = real_number("L1", "alpha", alpha)
        super().__init__(space)
        self.alpha = float(alpha)
        self.weights = fd.assemble(fd.TestFunction(space) * fd.dx)  # lumped mass, a Cofunction

    def __call__(self, m) -> float:
        self._check(m)
        local = float(np.sum(self.weights.dat.data_ro * np.abs(m.dat.data_ro)))
        return self.alpha * self.comm.allreduce(local)

    def gradient(self, m):
        raise ValueError("L1 is not differentiable: use pdeinv.optimize.fista (proximal gradient)")

    def hessian_action(self, m, dm):
        raise ValueError("L1 is not differentiable: use pdeinv.optimize.fista (proximal gradient)")

    def prox(self, z, step: float):
        """:math:`\\operatorname{prox}_{tR}(z)` in the lumped-mass metric: soft thresholding at
        :math:`t\\alpha`.  Returns a new Function."""
        self._check(z, "z")
        out = z.copy(deepcopy=True)
        d = out.dat.data
        d[:] = np.sign(d) * np.maximum(np.abs(d) - step * self.alpha, 0.0)
        return out
