r"""Markov kernels defined in function space: acceptance does not collapse as the mesh is refined.

Every kernel here is a Crank–Nicolson move reversible with respect to a Gaussian reference
:math:`\nu = \mathcal N(m_r, \mathcal K)` (:mod:`pdeinv.sampling.targets`), optionally with a Langevin drift.
With step size :math:`s \in (0, 1]`, :math:`a = \sqrt{1-s^2}` and :math:`\xi \sim \mathcal N(0, \mathcal K)`:

.. math::

    v - m_r = a\,(u - m_r) \;-\; (1-a)\,\mathcal K\psi'(u)\,[\text{Langevin only}] \;+\; s\,\xi .

- **pCN** (Cotter, Roberts, Stuart, White 2013): reference = prior, no drift; accept with
  :math:`\min\{1, e^{\psi(u)-\psi(v)}\}`, :math:`\psi = \Phi`.
- **gpCN** (Pinski, Simpson, Stuart, Weber 2015; hIPPYlib's gpCN, MUQ's h-pCN): reference = the Laplace
  approximation.  When the posterior *is* that Gaussian, :math:`\psi` is constant and every proposal is
  accepted, for any :math:`s`.
- **∞-MALA** (Beskos et al. 2008; Cotter et al.'s pCN-Langevin) and **h-MALA** (the same around the Laplace
  approximation): the drift uses :math:`\psi'`.  With :math:`\delta = 2(1-a)/(1+a)` (the usual
  parameter: :math:`a = (2-\delta)/(2+\delta)`), :math:`\log\alpha = \rho(u,v) - \rho(v,u)`,

  .. math::

      \rho(u, v) = \psi(u) + \tfrac12\langle\psi'(u), v-u\rangle
        + \tfrac{\delta}{4}\langle\psi'(u), (u-m_r)+(v-m_r)\rangle + \tfrac{\delta}{4}\langle\psi'(u),
        \mathcal K\psi'(u)\rangle,

  the Metropolis–Hastings ratio of the Gaussian proposal with :math:`\nu`'s own part cancelled exactly
  (derived in docs/sampling.md).

The reference's part of the ratio cancels analytically, so no Cameron–Martin norm (infinite in the limit)
is ever formed: that is what keeps acceptance mesh independent.
"""

from __future__ import annotations

from pdeinv._checks import Choice, choice, real_number
from pdeinv.linalg.arrays import axpy
from pdeinv.sampling.targets import Evaluation, LaplaceReference, Potential, PriorReference, Reference
from pdeinv.verify import dual_pairing

__all__ = ["Kernel", "PCN", "GPCN", "MALA", "HMALA", "DelayedAcceptance", "KernelKind", "make_kernel", "check_step"]


def check_step(owner: str, step) -> float:
    """The step size :math:`s` as a float in (0, 1]; one clear error otherwise."""
    s = real_number(owner, "step", step, minimum=0.0)
    if s > 1.0:
        raise ValueError(f"{owner}: step must be in (0, 1] (s = 1 proposes an independent draw of the reference "
                         f"Gaussian), got {step!r}")
    return s


class Kernel:
    """A Crank–Nicolson kernel: a reference Gaussian, a step size, with or without the Langevin drift.

    Subclasses only choose the reference (:meth:`make_reference`) and ``langevin``.
    """

    langevin: bool = False
    needs_laplace: bool = False
    #: Acceptance rate the burn-in adaptation aims at (Roberts–Rosenthal: 0.234 random walk, 0.574 Langevin).
    target_acceptance: float = 0.25

    def __init__(self, step: float = 0.2, laplace=None):
        self.step = check_step(type(self).__name__, step)
        if self.needs_laplace and laplace is None:
            raise ValueError(f"{type(self).__name__}: needs a Laplace approximation (laplace=LaplaceApproximation"
                             "(problem, m_map, rank=...)); give one, or use PCN / MALA, which need none")
        self.laplace = laplace

    @property
    def name(self) -> str:
        return type(self).__name__

    def make_reference(self, problem) -> Reference:
        from pdeinv.sampling.targets import gaussian_parts

        return PriorReference(gaussian_parts(problem)[0])

    # ------------------------------------------------------------------------------ the move
    @staticmethod
    def coefficients(step: float) -> tuple[float, float]:
        """:math:`(a, \\delta)` of step size :math:`s`."""
        a = (1.0 - step * step) ** 0.5
        return a, 2.0 * (1.0 - a) / (1.0 + a)

    def propose(self, reference: Reference, u: Evaluation, xi, step: float):
        """:math:`v` from the current point ``u`` and a draw ``xi`` of :math:`\\mathcal N(0, \\mathcal K)`."""
        import firedrake as fd

        a, _ = self.coefficients(step)
        v = fd.Function(u.m.function_space()).assign(a * u.m + (1.0 - a) * reference.mean)
        axpy(v, step, xi)
        if self.langevin:
            axpy(v, -(1.0 - a), u.k_gradient)
        return v

    def log_ratio(self, reference: Reference, u: Evaluation, v: Evaluation, step: float) -> float:
        """:math:`\\log\\alpha(u, v)` of this kernel with the potentials in ``u`` and ``v``."""
        if not self.langevin:
            return u.psi - v.psi
        _, delta = self.coefficients(step)
        return _rho(reference, u, v, delta) - _rho(reference, v, u, delta)


def _rho(reference, u: Evaluation, v: Evaluation, delta: float) -> float:
    r""":math:`\Phi(u) + \tfrac12\langle g, v-u\rangle + \tfrac\delta4\langle g, u+v-2\mu\rangle
    + \tfrac\delta4\langle g, \mathcal K g\rangle` (:math:`g` the gradient at u), as pairings of g with
    u, v and :math:`\mu` alone: no Function is allocated per step."""
    g = u.gradient
    return (u.psi + (0.25 * delta - 0.5) * dual_pairing(g, u.m) + (0.5 + 0.25 * delta) * dual_pairing(g, v.m)
            - 0.5 * delta * dual_pairing(g, reference.mean) + 0.25 * delta * dual_pairing(g, u.k_gradient))


class PCN(Kernel):
    """Preconditioned Crank–Nicolson: prior reference, no gradient (one forward solve per step)."""


class MALA(Kernel):
    """∞-MALA (pCN-Langevin): prior reference with the gradient drift (forward + adjoint per step)."""

    langevin = True
    target_acceptance = 0.574


class GPCN(Kernel):
    """Generalized pCN around the Laplace approximation (hIPPYlib's gpCN, MUQ's h-pCN)."""

    needs_laplace = True

    def make_reference(self, problem) -> Reference:
        return LaplaceReference(self.laplace)


class HMALA(GPCN):
    """MALA around the Laplace approximation: its covariance preconditions the drift and the noise."""

    langevin = True
    target_acceptance = 0.574


class DelayedAcceptance:
    r"""Delayed acceptance (Christen & Fox 2005): ``kernel``'s move is first accepted or rejected with the
    cheap ``surrogate`` potential :math:`\Phi_s` (stage 1, which also drives the proposal's drift); only a
    proposal that passes is evaluated with the PDE and kept with probability

    .. math::

        \alpha_2 = \min\Big\{1, \exp\big(-[\Phi(v)-\Phi_s(v)] + [\Phi(u)-\Phi_s(u)]\big)\Big\},

    which makes the two stages together exact for the true posterior.  With an exact surrogate
    (:math:`\Phi - \Phi_s` constant) stage 2 never rejects.

    Parameters
    ----------
    kernel : Kernel
    surrogate : pdeinv.sampling.targets.Potential
        E.g. :class:`~pdeinv.sampling.targets.LaplaceSurrogate` (no PDE solve).
    """

    def __init__(self, kernel: Kernel, surrogate: Potential):
        if not isinstance(kernel, Kernel):
            raise TypeError(f"DelayedAcceptance: kernel must be a pdeinv.sampling Kernel (PCN, GPCN, MALA, HMALA), "
                            f"got {type(kernel).__name__}")
        if not isinstance(surrogate, Potential):
            raise TypeError(f"DelayedAcceptance: surrogate must be a pdeinv.sampling Potential (e.g. "
                            f"LaplaceSurrogate(laplace)), got {type(surrogate).__name__}")
        self.kernel, self.surrogate = kernel, surrogate

    @property
    def name(self) -> str:
        return f"DelayedAcceptance({self.kernel.name})"


class KernelKind(Choice):
    """The kernels by name (strings accepted): what a case's ``sampling.kernel`` chooses."""

    PCN = "pcn"
    GPCN = "gpcn"
    MALA = "mala"
    HMALA = "hmala"

    @property
    def needs_laplace(self) -> bool:
        return _KERNELS[self].needs_laplace


_KERNELS = {KernelKind.PCN: PCN, KernelKind.GPCN: GPCN, KernelKind.MALA: MALA, KernelKind.HMALA: HMALA}


def make_kernel(kind, step: float, *, laplace=None, surrogate: Potential | None = None):
    """The kernel ``kind`` (a :class:`KernelKind` or its string) with step ``step``; around ``laplace`` where it
    needs one; wrapped in :class:`DelayedAcceptance` with ``surrogate`` when one is given."""
    k = choice(KernelKind, kind, "make_kernel", "kind")
    cls = _KERNELS[k]
    kernel = cls(step, laplace=laplace) if cls.needs_laplace else cls(step)
    return kernel if surrogate is None else DelayedAcceptance(kernel, surrogate)
