r"""A Gaussian prior on a product parameter space: one independent Gaussian per block.

A joint inversion of several fields, or of a field and a few scalars (a log-conductivity and three
material constants), has a *mixed* parameter space :math:`W = V_1\times\dots\times V_k` — in Firedrake
``W = V * R * R * R`` with ``R = FunctionSpace(mesh, "R", 0)``, the model using ``split(m)``.  A block of
the prior may span several consecutive sub-spaces: the three scalars' dense covariance is one
:class:`~pdeinv.prior.real.RealGaussianPrior` on ``R * R * R``.  With
independent blocks the prior is block diagonal,

.. math::

    \mathcal N\big((\bar m_1,\dots,\bar m_k),\ \operatorname{diag}(\mathcal C_1,\dots,\mathcal C_k)\big),
    \qquad R(m) = \sum_i \tfrac12\|m_i - \bar m_i\|^2_{\mathcal C_i^{-1}},

so precision, covariance and samples act block by block, each by its own prior (BiLaplacian or
autoregressive for a field, vector-valued too; :class:`~pdeinv.prior.real.RealGaussianPrior` for the
scalars).  The *posterior* couples the blocks: the Laplace approximation on :math:`W` carries the
cross-covariances (:meth:`pdeinv.posterior.LaplaceApproximation.block_covariance`).
"""

from __future__ import annotations

import numpy as np

from pdeinv.prior.base import GaussianPrior

__all__ = ["ProductPrior"]


def _same_space(block, sub) -> bool:
    """A block prior's (scalar-field) space is the sub-space ``sub`` of the product when element and mesh
    agree (``W.sub(i).collapse()`` or a space built the same way: the dof layouts are then identical)."""
    return block.ufl_element() == sub.ufl_element() and block.mesh() == sub.mesh()


def _offsets(space, priors) -> list[int]:
    """The first sub-space of each block prior (each covers ``len(prior.space)`` consecutive ones), checked."""
    from pdeinv._checks import describe_space

    offsets, at = [], 0
    for i, p in enumerate(priors):
        if not isinstance(p, GaussianPrior):
            raise TypeError(f"ProductPrior: block {i} must be a GaussianPrior, got {type(p).__name__}")
        offsets.append(at)
        for r, V in enumerate(p.space):
            if at + r >= len(space) or not _same_space(V, space.sub(at + r)):
                got = describe_space(space.sub(at + r)) if at + r < len(space) else "beyond the last sub-space"
                raise ValueError(f"ProductPrior: block {i}'s prior lives on {describe_space(V)}, but sub-space "
                                 f"{at + r} is {got}")
        at += len(p.space)
    if at != len(space):
        raise ValueError(f"ProductPrior: the parameter space has {len(space)} sub-spaces but the priors cover {at}")
    return offsets


class ProductPrior(GaussianPrior):
    r"""Block-diagonal Gaussian prior on a mixed parameter space.

    Parameters
    ----------
    space : firedrake.MixedFunctionSpace
        The parameter space :math:`W = V_1\times\dots\times V_k`.
    priors : sequence of GaussianPrior
        In order, each covering the next ``len(prior.space)`` sub-spaces: a field prior on
        ``space.sub(i).collapse()`` (or a space with the same element on the same mesh), a
        :class:`~pdeinv.prior.real.RealGaussianPrior` on ``R * R * R`` for three scalar blocks; each
        prior's mean is its blocks' mean.

    Samples draw block i with a seed derived from ``(seed, i)`` (keyword arguments such as
    ``reproducible=True`` go to every block).
    """

    def __init__(self, space, priors):
        priors = tuple(priors)
        super().__init__(space)
        self._offsets = _offsets(space, priors)
        self.blocks = priors
        for i, p in enumerate(priors):
            self._put(self.mean, i, p.mean)

    def _require_space(self, space) -> None:
        from pdeinv._checks import describe_space

        if len(space) < 2:
            raise ValueError(f"ProductPrior: expected a mixed parameter space (several blocks), got "
                             f"{describe_space(space)}; use the block's own prior")

    # ---------------------------------------------------------------------------- block copies
    def _get(self, f, i, *, dual: bool):
        """Block i of a mixed Function (Cofunction) as a Function (Cofunction) on the block prior's space."""
        import firedrake as fd

        V = self.blocks[i].space
        out = fd.Cofunction(V.dual()) if dual else fd.Function(V)
        for r, part in enumerate(out.subfunctions):  # same dof layouts: copies of the owned values
            part.dat.data[:] = f.subfunctions[self._offsets[i] + r].dat.data_ro
        return out

    def _put(self, f, i, block) -> None:
        for r, part in enumerate(block.subfunctions):
            f.subfunctions[self._offsets[i] + r].dat.data[:] = part.dat.data_ro

    # ------------------------------------------------------------------------------- actions
    def precision_action(self, dm):
        import firedrake as fd

        self._check(dm, "dm")
        out = fd.Cofunction(self.space.dual())
        for i, p in enumerate(self.blocks):
            self._put(out, i, p.precision_action(self._get(dm, i, dual=False)))
        return out

    def covariance_action(self, c):
        import firedrake as fd

        from pdeinv.maps import check_function

        check_function(c, self.space, "ProductPrior: c", dual=True)
        out = fd.Function(self.space, name="covariance_action")
        for i, p in enumerate(self.blocks):
            self._put(out, i, p.covariance_action(self._get(c, i, dual=True)))
        return out

    def sample_centered(self, *, seed: int, **kwargs):
        import firedrake as fd

        out = fd.Function(self.space)
        for i, p in enumerate(self.blocks):
            block_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
            self._put(out, i, p.sample_centered(seed=block_seed, **kwargs))
        return out
