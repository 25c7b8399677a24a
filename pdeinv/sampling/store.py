r"""A chain's record as it runs, and its HDF5 checkpoint: what a batch job needs to stop and go on.

:class:`Progress` holds everything a chain has produced so far (the next step, traces, :math:`\log\alpha`,
thinned fields, running moments, counters).  :class:`ChainStore` writes it with the chain's current point
to ``<directory>/chain-<c>.h5`` every ``checkpoint_every`` steps and at the end, atomically: a temporary
file, then ``os.replace``, so a signal at any moment leaves the previous complete checkpoint.  Because the
random numbers are keyed by ``(seed, chain, step)`` (:mod:`pdeinv.sampling.chain`), the checkpoint needs no
generator state: a resumed chain repeats the uninterrupted one sample for sample.

The thinned fields are written once each: every checkpoint adds the fields kept since the previous one as
a segment file ``chain-<c>.fields-<first>.h5`` (atomically, before the checkpoint that lists it), so the
cost of a checkpoint does not grow with the number of fields kept.  A segment written after the last
complete checkpoint is not listed in it and is written again, to the same bits, by the resumed chain.

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
        self.directory, self.chain = directory, chain
        self.path = os.path.join(directory, f"chain-{chain}.h5")
        self.space, self.comm = space, space.mesh().comm
        self.fingerprint = dict(fingerprint, ranks=self.comm.size, dofs=space.dim(), format=FORMAT)
        self.segments: list[list[int]] = []  # [first, end) of the thinned fields in each segment file written

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def segment_path(self, first: int) -> str:
        return os.path.join(self.directory, f"chain-{self.chain}.fields-{first}.h5")

    # -------------------------------------------------------------------------------------- writing
    def write(self, progress: Progress, m, scalars: dict) -> None:
        """Collective over the chain's ranks: the checkpoint of ``progress`` at the current point ``m``
        (and a segment of the fields kept since the last one); ``scalars``: the chain's counters and step
        size (JSON numbers)."""
        first = self.segments[-1][1] if self.segments else 0
        new = [_gather(self.comm, local_values(f)) for f in progress.fields[first:]]
        vectors = {"state": local_values(m), "mean": progress.moments.mean, "m2": progress.moments.m2}
        full = {k: _gather(self.comm, v) for k, v in vectors.items()}
        if self.comm.rank == 0:
            os.makedirs(self.directory or ".", exist_ok=True)
            if new:
                _atomic(self.segment_path(first), lambda fh: [fh.create_dataset(f"field-{first + j}", data=v)
                                                               for j, v in enumerate(new)])
        if new:
            self.segments.append([first, len(progress.fields)])
        if self.comm.rank == 0:
            _atomic(self.path, lambda fh: self._fill(fh, progress, full, scalars))
        self.comm.barrier()

    def _fill(self, fh, progress: Progress, full: dict, scalars: dict) -> None:
        kept = progress.next_step - self.fingerprint["burn_in"]
        fh.attrs["fingerprint"] = json.dumps(self.fingerprint, sort_keys=True)
        fh.attrs["progress"] = json.dumps({
            "next_step": progress.next_step, "accepted": progress.accepted, "passed": progress.passed,
            "burn_solves": progress.burn_solves, "seconds": progress.seconds, "moments_n": progress.moments.n,
            "fields": len(progress.fields), "segments": self.segments, **scalars})
        for k, v in full.items():
            fh.create_dataset(k, data=v)
        fh.create_dataset("log_alpha", data=progress.log_alpha[:progress.next_step])
        for name, t in progress.traces.items():
            fh.create_dataset(f"traces/{name}", data=t[:max(kept, 0)])

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
            n = record["next_step"]
            progress.log_alpha[:n] = fh["log_alpha"][:]
            for name, t in progress.traces.items():
                saved = fh[f"traces/{name}"][:]
                t[:len(saved)] = saved
        self._read_fields(progress, record, lo, hi)
        progress.next_step, progress.moments.n = n, record["moments_n"]
        progress.accepted, progress.passed = record["accepted"], record["passed"]
        progress.burn_solves, progress.seconds = record["burn_solves"], record["seconds"]
        return m

    def _read_fields(self, progress: Progress, record: dict, lo: int, hi: int) -> None:
        """The thinned fields of the segments the checkpoint lists (one clear error for a missing one)."""
        import firedrake as fd
        import h5py

        self.segments = [list(map(int, seg)) for seg in record.get("segments", [])]
        if (self.segments[-1][1] if self.segments else 0) != record["fields"]:
            raise ValueError(f"sample: cannot resume from {self.path}: its field segments do not add up")
        for first, end in self.segments:
            try:
                with h5py.File(self.segment_path(first), "r") as fh:
                    for j in range(first, end):
                        f = fd.Function(self.space, name="sample")
                        set_local_values(f, fh[f"field-{j}"][lo:hi])
                        progress.fields.append(f)
            except (OSError, KeyError) as err:
                raise ValueError(f"sample: cannot resume from {self.path}: the thinned fields' segment "
                                 f"{self.segment_path(first)} is missing or incomplete ({err})") from None


def _atomic(path: str, fill) -> None:
    """Write the HDF5 file ``path`` through ``fill(h5py.File)`` into a temporary file, then rename it."""
    import h5py

    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as fh:
        fill(fh)
    os.replace(tmp, path)
