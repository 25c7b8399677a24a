r"""Experiments in parallel: a misfit summed over experiments distributed with ``firedrake.Ensemble``.

Many inverse problems observe one parameter through several independent experiments — sources,
forcings, illumination directions.  The misfit is a sum :math:`\Phi(m) = \sum_e \Phi_e(m)` and so are its
gradient and Hessian actions.  With an ensemble of :math:`P` members, each member (a sub-communicator of
``COMM_WORLD``, holding its own copy of the mesh) owns a contiguous block of the experiments; each
quantity is summed over the member's experiments and then over the members in one place,
:class:`EnsembleMisfit`, with one ``MPI_Allreduce`` (``Ensemble.allreduce`` for Cofunctions).  Every
member therefore holds identical values, and the optimizers, priors and the Laplace approximation run
unchanged on top (redundantly per member, on the member's spatial communicator).

Ranks: ``COMM_WORLD.size = members × spatial ranks``.  ``mpiexec -n 4`` with ``members=2`` runs two
experiments side by side, each on 2 ranks.  The MAP is the same as on one rank up to round-off (tested).
Usage::

    ensemble = make_ensemble(COMM_WORLD, members=2)
    mesh = UnitSquareMesh(64, 64, comm=ensemble.comm,          # the member's spatial communicator
                          distribution_parameters=ENSEMBLE_DISTRIBUTION)  # identical partition on every member
    mine = experiments_of(n_experiments, ensemble)            # e.g. range(0, 2) on member 0
    misfits = [Misfit(model_for(e, mesh), noise_e, data_e) for e in mine]
    problem = InverseProblem(EnsembleMisfit(ensemble, misfits), prior)
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from pdeinv._tape import unannotated_methods
from pdeinv.linalg.arrays import axpy
from pdeinv.maps import MisfitTerm

__all__ = ["make_ensemble", "experiments_of", "EnsembleMisfit", "ENSEMBLE_DISTRIBUTION", "gather_channels",
           "sample_ensemble"]

# Mesh distribution for ensemble members: the members' meshes must be partitioned identically (the
# reductions pair up the dofs rank by rank), and the default graph partitioners are not reproducible
# from one sub-communicator to another (measured: 135 vs 136 owned dofs on two members' rank 0).
ENSEMBLE_DISTRIBUTION = {"partitioner_type": "simple"}


def make_ensemble(comm, members: int):
    """A ``firedrake.Ensemble`` of ``members`` members splitting ``comm`` (its size must be a multiple)."""
    import firedrake as fd

    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"make_ensemble: members must be a positive integer, got {members!r}")
    if comm.size % members:
        raise ValueError(f"make_ensemble: {comm.size} MPI ranks cannot be split into {members} ensemble members "
                         f"of equal size; use a number of ranks that is a multiple of {members}")
    return fd.Ensemble(comm, comm.size // members)


def experiments_of(n_experiments: int, ensemble) -> range:
    """The contiguous block of ``range(n_experiments)`` that this ensemble member owns (balanced: the
    first ``n % members`` members own one more)."""
    members = ensemble.ensemble_comm.size
    if n_experiments < members:
        raise ValueError(f"experiments_of: {n_experiments} experiment(s) for {members} ensemble members; every "
                         "member needs at least one")
    k = ensemble.ensemble_comm.rank
    base, extra = divmod(n_experiments, members)
    start = k * base + min(k, extra)
    return range(start, start + base + (k < extra))


def gather_channels(ensemble, array) -> np.ndarray:
    """Every member's (N, c_e) array (replicated on the member's ranks) joined along the channel axis,
    members in order: the (N, Σ c_e) array one model holding all members' channels would give."""
    arr = np.asarray(array)
    return np.concatenate(ensemble.ensemble_comm.allgather(arr.reshape(arr.shape[0], -1)), axis=1)


def sample_ensemble(ensemble, noise, pred, *, seed: int, name: str = "data"):
    """Synthetic data for this member's channels, drawn exactly as :meth:`NoiseModel.sample
    <pdeinv.noise.NoiseModel.sample>` would draw them for one model holding every member's channels
    (channels in member order).  The data therefore do not depend on the number of ensemble members —
    what makes an ensemble run reproduce the one-member run.

    Parameters
    ----------
    ensemble : firedrake.Ensemble
    noise : pdeinv.noise.NoiseModel
        This member's noise model, on a :class:`~pdeinv.observation.PointObservation`; its law's
        parameters (σ, scale, intensity) must be scalars, the same for every member.
    pred : firedrake.Function
        This member's noise-free prediction on ``noise.observation``'s data space.
    seed : int
    """
    from pdeinv.noise import FieldGaussianNoise

    if isinstance(noise, FieldGaussianNoise):
        raise TypeError("sample_ensemble: field observations are drawn node by node and are already "
                        "partition-independent; call noise.sample on each member")
    obs = noise.observation
    noise._check(pred, "pred")
    mine = obs.to_array(pred)
    mask = noise._observed_array()
    observed = gather_channels(ensemble, np.ones(mine.shape, dtype=bool) if mask is None else mask)
    widths = ensemble.ensemble_comm.allgather(mine.shape[1])
    start = sum(widths[:ensemble.ensemble_comm.rank])
    try:
        draw = noise._sample_array(gather_channels(ensemble, mine), np.random.Generator(np.random.PCG64(seed)),
                                   observed)
    except ValueError as e:
        if "per-observation parameters" not in str(e):
            raise
        raise ValueError(f"sample_ensemble: {type(noise).__name__} has per-observation parameters; give a scalar "
                         "(the same on every member), or draw each member's data with noise.sample") from None
    return obs.from_array(draw[:, start:start + mine.shape[1]], name=name)


@unannotated_methods
class EnsembleMisfit(MisfitTerm):
    """:math:`\\Phi(m) = \\sum_e \\Phi_e(m)` over the experiments of every ensemble member.

    Parameters
    ----------
    ensemble : firedrake.Ensemble
    misfits : list of pdeinv.maps.Misfit
        This member's experiments, all on one parameter space on the member's communicator
        (``ensemble.comm``).

    Values are summed over the member's misfits, then over the members (``ensemble_comm``): every
    method is collective over the communicator the ensemble splits.
    """

    def __init__(self, ensemble, misfits):
        misfits = list(misfits)
        if not misfits:
            raise ValueError("EnsembleMisfit: every ensemble member needs at least one misfit")
        space = misfits[0].parameter_space
        for i, f in enumerate(misfits):
            if f.parameter_space != space:
                raise ValueError(f"EnsembleMisfit: misfits[{i}] lives on another parameter space than misfits[0]")
        if space.mesh().comm.size != ensemble.comm.size:
            raise ValueError("EnsembleMisfit: the misfits' mesh must be on the ensemble member's communicator "
                             "(ensemble.comm)")
        self._check_same_partition(ensemble, space)
        self.ensemble = ensemble
        self.misfits = misfits
        self._space = space

    @property
    def parameter_space(self):
        return self._space

    @property
    def second_derivatives(self) -> bool:
        """Whether every experiment of this member provides a full Hessian (the same model on every member)."""
        return all(f.second_derivatives for f in self.misfits)

    @property
    def counts(self) -> Counter:
        """This member's experiments' work counters, summed."""
        total = Counter()
        for f in self.misfits:
            total.update(f.counts)
        return total

    @staticmethod
    def _check_same_partition(ensemble, space):
        """Every member's rank r must own the same dofs in the same order (one allgather)."""
        import hashlib

        from pdeinv.linalg.multivector import dof_coordinates

        coords = np.round(dof_coordinates(space), 10)
        digest = hashlib.sha256(coords.tobytes()).hexdigest()
        if len(set(ensemble.ensemble_comm.allgather(digest))) > 1:
            raise ValueError("EnsembleMisfit: the ensemble members' meshes are partitioned differently (their "
                             "reductions pair up dofs rank by rank); build each member's mesh with "
                             "distribution_parameters=pdeinv.ensemble.ENSEMBLE_DISTRIBUTION")

    # one place where the members' contributions meet
    def _sum_number(self, local: float) -> float:
        return float(self.ensemble.ensemble_comm.allreduce(local))

    def _sum_cofunctions(self, parts):
        import firedrake as fd

        local = fd.Cofunction(self.parameter_space.dual())
        for p in parts:
            axpy(local, 1.0, p)
        out = fd.Cofunction(self.parameter_space.dual())
        self.ensemble.allreduce(local, out)
        return out

    def __call__(self, m) -> float:
        return self._sum_number(sum(f(m) for f in self.misfits))

    def gradient(self, m):
        return self._sum_cofunctions(f.gradient(m) for f in self.misfits)

    def gauss_newton_action(self, m, dm):
        return self._sum_cofunctions(f.gauss_newton_action(m, dm) for f in self.misfits)

    def hessian_action(self, m, dm):
        return self._sum_cofunctions(f.hessian_action(m, dm) for f in self.misfits)

    def gauss_newton_action_block(self, m, dms):
        parts = [f.gauss_newton_action_block(m, dms) for f in self.misfits]
        return [self._sum_cofunctions(p[j] for p in parts) for j in range(len(dms))]

    def hessian_action_block(self, m, dms):
        parts = [f.hessian_action_block(m, dms) for f in self.misfits]
        return [self._sum_cofunctions(p[j] for p in parts) for j in range(len(dms))]
