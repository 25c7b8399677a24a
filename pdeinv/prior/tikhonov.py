r"""Tikhonov regularization with a reference parameter :math:`m_0`.

- :class:`TikhonovL2`: :math:`R(m) = \tfrac\alpha2\|m - m_0\|^2_{L^2}`, :math:`R' = \alpha M(m-m_0)`.
- :class:`TikhonovH1`: :math:`R(m) = \tfrac\alpha2\|\nabla(m - m_0)\|^2_{L^2} + \tfrac\beta2\|m-m_0\|^2_{L^2}`.

Both are quadratic: the Hessian action is the assembled operator applied to :math:`\delta m`.
"""

from __future__ import annotations

from pdeinv.prior.base import Regularizer

__all__ = ["TikhonovL2", "TikhonovH1"]


class _Quadratic(Regularizer):
    """:math:`\\tfrac12\\langle Q(m - m_0), m - m_0\\rangle` for an assembled symmetric Q."""

    def __init__(self, space, form, reference=None):
        import firedrake as fd

        super().__init__(space)
        self.reference = fd.Function(space, name="reference")
        if reference is not None:
            self.reference.interpolate(reference) if not isinstance(reference, fd.Function) \
                else self.reference.assign(reference)
        self._Q = fd.assemble(form, mat_type="aij").petscmat

    def _apply(self, f):
        import firedrake as fd

        out = fd.Cofunction(self.space.dual())
        with f.dat.vec_ro as x, out.dat.vec_wo as y:
            self._Q.mult(x, y)
        return out

    def _deviation(self, m):
        import firedrake as fd

        self._check(m)
        return fd.Function(self.space).assign(m - self.reference)

    def __call__(self, m) -> float:
        from pdeinv.verify import dual_pairing

        d = self._deviation(m)
        return 0.5 * dual_pairing(self._apply(d), d)

    def gradient(self, m):
        return self._apply(self._deviation(m))

    def hessian_action(self, m, dm):
        self._check(dm, "dm")
        return self._apply(dm)


class TikhonovL2(_Quadratic):
    """:math:`\\tfrac\\alpha2\\|m - m_0\\|^2_{L^2}`."""

    def __init__(self, space, *, alpha: float, reference=None):
        import firedrake as fd

        from pdeinv._checks import real_number

        alpha = real_number("TikhonovL2", "alpha", alpha)
        u, v = fd.TrialFunction(space), fd.TestFunction(space)
        super().__init__(space, alpha * fd.inner(u, v) * fd.dx, reference)


class TikhonovH1(_Quadratic):
    """:math:`\\tfrac\\alpha2\\|\\nabla(m - m_0)\\|^2 + \\tfrac\\beta2\\|m - m_0\\|^2`."""

    def __init__(self, space, *, alpha: float, beta: float = 0.0, reference=None):
        import firedrake as fd

        from pdeinv._checks import real_number

        alpha = real_number("TikhonovH1", "alpha", alpha)
        beta = real_number("TikhonovH1", "beta", beta, strict=False)
        u, v = fd.TrialFunction(space), fd.TestFunction(space)
        form = alpha * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
        if beta > 0:
            form = form + beta * fd.inner(u, v) * fd.dx
        super().__init__(space, form, reference)
