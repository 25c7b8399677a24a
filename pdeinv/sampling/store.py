r"""A chain's record as it runs, and its HDF5 checkpoint: what a batch job needs to stop and go on.

:class:`Progress` holds everything a chain has produced so far (the next step, traces, :math:`\log\alpha`,
thinned fields, running moments, counters).  :class:`ChainStore` writes it with the chain's current point
to ``<directory>/chain-<c>.h5`` every ``checkpoint_every`` steps and at the end, atomically: a temporary
file, then ``os.replace``, so a signal at any moment leaves the previous complete checkpoint.  Because the
random numbers are keyed by ``(seed, chain, step)`` (:mod:`pdeinv.sampling.chain`), the checkpoint needs no
generator state: a resumed chain repeats the uninterrupted one sample for sample.

Fields are stored in the global order of their PETSc Vec (each rank's owned dofs, rank after rank), so a
resume must use the same number of ranks per chain and the same mesh; the file records both and a
mismatch is one clear error.  Everything read is numbers and JSON: nothing in a file can run code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from pdeinv.linalg.arrays import local_values, set_local_values

__all__ = ["Moments", "Progress", "ChainStore", "FORMAT"]

FORMAT = "pdeinv-chain-1"


class Moments:
    """Running pointwise mean and sum of squared deviations of the kept samples (Welford), local dofs."""

    def __init__(self, size: int):
        self.n, self.mean, self.m2 = 0, np.zeros(size), np.zeros(size)

    def add(self, m) -> None:
        x = local_values(m)
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)


@dataclass
class Progress:
    """A chain's record so far (the kept steps fill ``traces``; burn-in and kept fill ``log_alpha``)."""

    next_step: int
    traces: dict
    log_alpha: np.ndarray
    moments: Moments
    fields: list = field(default_factory=list)
    accepted: int = 0
    passed: int = 0
    burn_solves: int = 0
    seconds: float = 0.0

    @classmethod
    def fresh(cls, names, samples: int, total: int, local_size: int) -> Progress:
        return cls(0, {n: np.empty(samples) for n in names}, np.empty(total), Moments(local_size))


def _gather(comm, values):
    """The global array on rank 0 (rank-ordered owned parts), None elsewhere."""
    parts = comm.gather(values, root=0)
    return np.concatenate(parts) if comm.rank == 0 else None


class ChainStore:
    """The checkpoint file of chain ``chain`` in ``directory``, for a chain on ``space``'s communicator.

    Parameters
    ----------
    directory : str
    chain : int
    space : firedrake.FunctionSpace
        The parameter space (its mesh's communicator: the ranks of this chain).
    fingerprint : dict
        What must be equal for a resume (kernel, step, seed, samples, burn-in, thinning, adaptation,
        quantities, ranks, dofs); compared key by key.
    """

    def __init__(self, directory: str, chain: int, space, fingerprint: dict):
        self.path = os.path.join(directory, f"chain-{chain}.h5")
        self.space, self.comm = space, space.mesh().comm
        self.fingerprint = dict(fingerprint, ranks=self.comm.size, dofs=space.dim(), format=FORMAT)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    # -------------------------------------------------------------------------------------- writing
    def write(self, progress: Progress, m, scalars: dict) -> None:
        """Collective over the chain's ranks: the checkpoint of ``progress`` at the current point ``m``;
        ``scalars``: the chain's counters and step size (JSON numbers)."""
        vectors = {"state": local_values(m), "mean": progress.moments.mean, "m2": progress.moments.m2}
        vectors |= {f"field-{j}": local_values(f) for j, f in enumerate(progress.fields)}
        full = {k: _gather(self.comm, v) for k, v in vectors.items()}
        if self.comm.rank == 0:
            self._write_file(progress, full, scalars)
        self.comm.barrier()

    def _write_file(self, progress: Progress, full: dict, scalars: dict) -> None:
        import h5py

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        kept = progress.next_step - self.fingerprint["burn_in"]
        with h5py.File(tmp, "w") as fh:
            fh.attrs["fingerprint"] = json.dumps(self.fingerprint, sort_keys=True)
            fh.attrs["progress"] = json.dumps({
                "next_step": progress.next_step, "accepted": progress.accepted, "passed": progress.passed,
                "burn_solves": progress.burn_solves, "seconds": progress.seconds, "moments_n": progress.moments.n,
                "fields": len(progress.fields), **scalars})
            for k, v in full.items():
                fh.create_dataset(k, data=v)
            fh.create_dataset("log_alpha", data=progress.log_alpha[:progress.next_step])
            for name, t in progress.traces.items():
                fh.create_dataset(f"traces/{name}", data=t[:max(kept, 0)])
        os.replace(tmp, self.path)

    # -------------------------------------------------------------------------------------- reading
    def read_header(self) -> dict:
        """The saved progress record, after checking the file is this chain's (one clear error otherwise)."""
        import h5py

        try:
            with h5py.File(self.path, "r") as fh:
                saved = json.loads(fh.attrs["fingerprint"])
                record = json.loads(fh.attrs["progress"])
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"sample: {self.path} is not a readable pdeinv chain checkpoint ({err})") from None
        for key, want in self.fingerprint.items():
            if saved.get(key) != want:
                raise ValueError(f"sample: cannot resume from {self.path}: its {key} is {saved.get(key)!r}, this "
                                 f"run's is {want!r} (resume with the settings, ranks and mesh of the run that "
                                 "wrote it, or start afresh in another directory)")
        return record

    def read(self, progress: Progress, record: dict):
        """Fill ``progress`` from the file; returns the saved current point as a Function."""
        import firedrake as fd
        import h5py

        m = fd.Function(self.space)
        with m.dat.vec_ro as v:
            lo, hi = v.getOwnershipRange()
        with h5py.File(self.path, "r") as fh:
            set_local_values(m, fh["state"][lo:hi])
            progress.moments.mean[:], progress.moments.m2[:] = fh["mean"][lo:hi], fh["m2"][lo:hi]
            for j in range(record["fields"]):
                f = fd.Function(self.space, name="sample")
                set_local_values(f, fh[f"field-{j}"][lo:hi])
                progress.fields.append(f)
            n = record["next_step"]
            progress.log_alpha[:n] = fh["log_alpha"][:]
            for name, t in progress.traces.items():
                saved = fh[f"traces/{name}"][:]
                t[:len(saved)] = saved
        progress.next_step, progress.moments.n = n, record["moments_n"]
        progress.accepted, progress.passed = record["accepted"], record["passed"]
        progress.burn_solves, progress.seconds = record["burn_solves"], record["seconds"]
        return m
