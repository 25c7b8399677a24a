r"""Outer losses :math:`L(m, \theta)` of bilevel learning.

- :class:`ReconstructionError`: :math:`L = \tfrac12\|m - m_{true}\|^2_X / \|m_{true}\|^2_X` with
  :math:`X` the :math:`L^2` or :math:`H^1` norm (assembled once): the relative squared error of a
  reconstruction against a training truth, so that truths of different size weigh the same.
- :class:`HeldOutMisfit`: :math:`L = \Phi_{ho}(m)`, the misfit of held-out data (no truth needed).

Each gives ``L(m, theta)``, ``gradient(m, theta)`` (:math:`\partial_m L`, a Cofunction) and
``partial_theta(m, theta)`` (:math:`\partial_\theta L`; zero for both).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pdeinv._tape import unannotated_methods

__all__ = ["OuterLoss", "ReconstructionError", "HeldOutMisfit"]


@unannotated_methods
class OuterLoss(ABC):
    """Base class of outer losses."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unannotated_methods(cls)

    @abstractmethod
    def __call__(self, m, theta) -> float: ...

    @abstractmethod
    def gradient(self, m, theta): ...

    def partial_theta(self, m, theta) -> np.ndarray:
        """:math:`\\partial_\\theta L` (default: L does not depend on :math:`\\theta` directly)."""
        return np.zeros(np.size(theta))


class ReconstructionError(OuterLoss):
    r""":math:`\tfrac12\|m - m_{true}\|^2_X / \|m_{true}\|^2_X` (``normalize=False``: without the division).

    Parameters
    ----------
    truth : firedrake.Function
    norm : {"L2", "H1"}
    normalize : bool
    """

    def __init__(self, truth, *, norm: str = "L2", normalize: bool = True):
        import firedrake as fd

        from pdeinv.maps import check_finite

        if not isinstance(truth, fd.Function):
            raise TypeError(f"ReconstructionError: truth must be a firedrake.Function, got {type(truth).__name__}")
        if norm not in ("L2", "H1"):
            raise ValueError(f"ReconstructionError: norm must be 'L2' or 'H1', got {norm!r}")
        check_finite(truth, "ReconstructionError: truth")
        V = truth.function_space()
        u, v = fd.TrialFunction(V), fd.TestFunction(V)
        form = u * v * fd.dx + (fd.inner(fd.grad(u), fd.grad(v)) * fd.dx if norm == "H1" else 0)
        self.truth, self.norm, self.space = truth, norm, V
        self._X = fd.assemble(form, mat_type="aij").petscmat
        self._scale = 1.0
        if normalize:
            size = self._pair(truth)
            if size == 0:
                raise ValueError("ReconstructionError: the truth is zero; use normalize=False")
            self._scale = 1.0 / size

    def _pair(self, f):
        with f.dat.vec_ro as x:
            y = x.duplicate()
            self._X.mult(x, y)
            return y.dot(x)

    def relative_error(self, m) -> float:
        """:math:`\\|m - m_{true}\\|_X / \\|m_{true}\\|_X` (with ``normalize=True``)."""
        return float(np.sqrt(2.0 * self(m, None)))

    def __call__(self, m, theta) -> float:
        import firedrake as fd

        d = fd.Function(self.space).assign(m - self.truth)
        return 0.5 * self._scale * self._pair(d)

    def gradient(self, m, theta):
        import firedrake as fd

        d = fd.Function(self.space).assign(m - self.truth)
        out = fd.Cofunction(self.space.dual())
        with d.dat.vec_ro as x, out.dat.vec_wo as y:
            self._X.mult(x, y)
            y.scale(self._scale)
        return out


class HeldOutMisfit(OuterLoss):
    """:math:`\\Phi_{ho}(m)` for a :class:`~pdeinv.maps.Misfit` of held-out data."""

    def __init__(self, misfit):
        self.misfit = misfit

    def __call__(self, m, theta) -> float:
        return self.misfit(m)

    def gradient(self, m, theta):
        return self.misfit.gradient(m)
