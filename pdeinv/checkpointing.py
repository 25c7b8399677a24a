r"""Bounded-memory reverse sweeps: one executor of ``checkpoint_schedules``' multistage schedule.

Anything that runs :math:`N` steps :math:`x_{n+1} = \Phi_n(x_n)` forward and then needs the steps'
inputs in reverse order — the adjoint of a time-stepping model (:mod:`pdeinv.forward.timestepping`),
the reverse of an unrolled optimizer (:mod:`pdeinv.learn.unrolled`) — calls :func:`reverse_sweep`
with its own step, reverse step and state handling.  Without checkpointing every state is kept
(:math:`N+1` of them); with :class:`Checkpointing` at most ``snapshots_in_ram`` (+ the two a reverse
step works on) are held in memory and ``snapshots_on_disk`` on disk, the rest recomputed — the
binomial (Revolve-optimal) schedule of Griewank & Walther, as implemented by ``checkpoint_schedules``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Checkpointing", "SweepStatistics", "reverse_sweep"]


@dataclass(frozen=True)
class Checkpointing:
    """Bounded-memory derivatives (``checkpoint_schedules``' multistage schedule: binomial
    checkpointing, optimal in recomputations for a given number of snapshots).

    Attributes
    ----------
    snapshots_in_ram : int
        States kept in memory at most (besides the two a reverse step works on).
    snapshots_on_disk : int
        States written to disk at most (NumPy files, one per rank and snapshot).
    directory : str or None
        Where disk snapshots go (default: the system's temporary directory); removed afterwards.
    """

    snapshots_in_ram: int
    snapshots_on_disk: int = 0
    directory: str | None = None

    def __post_init__(self):
        for key, val in (("snapshots_in_ram", self.snapshots_in_ram), ("snapshots_on_disk", self.snapshots_on_disk)):
            if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 0:
                raise ValueError(f"Checkpointing: {key} must be a non-negative integer, got {val!r}")
        if self.snapshots_in_ram + self.snapshots_on_disk < 1:
            raise ValueError("Checkpointing: allow at least one snapshot (in RAM or on disk)")


@dataclass
class SweepStatistics:
    """What a sweep cost: steps recomputed and the most states held at once."""

    recomputed_steps: int = 0
    peak_stored_states: int = 0
    extra: dict = field(default_factory=dict)


def reverse_sweep(steps: int, checkpointing: Checkpointing | None, x0, *, advance: Callable, reverse: Callable,
                  copy: Callable, to_array: Callable, from_array: Callable, rank: int = 0,
                  stats: SweepStatistics | None = None) -> SweepStatistics:
    r"""Run ``steps`` forward steps from ``x0`` and the reverse steps :math:`N-1, \dots, 0`.

    Parameters
    ----------
    steps : int
    checkpointing : Checkpointing or None
        ``None``: keep all :math:`N+1` states.
    x0
        The initial state (not modified).
    advance : callable ``(n, x) -> x_next``
        Forward step :math:`n`; may return a reused buffer (the executor copies what it keeps).
    reverse : callable ``(n, x_n, x_{n+1})``
        Reverse step :math:`n`, with the step's input and output states.
    copy : callable ``x -> x'``
        A deep copy of a state.
    to_array, from_array : callables
        A state to a NumPy array of this rank's values and back (disk snapshots).
    rank : int
        This process's rank (names disk files).
    stats : SweepStatistics, optional
        Accumulated into (and returned).
    """
    stats = stats if stats is not None else SweepStatistics()
    if checkpointing is None:
        traj = [copy(x0)]
        x = traj[0]
        for n in range(steps):
            x = copy(advance(n, x))
            traj.append(x)
        stats.peak_stored_states = max(stats.peak_stored_states, len(traj))
        for n in range(steps - 1, -1, -1):
            reverse(n, traj[n], traj[n + 1])
        return stats
    _multistage(steps, checkpointing, x0, advance, reverse, copy, to_array, from_array, rank, stats)
    return stats


def _multistage(steps, cp, x0, advance, reverse, copy, to_array, from_array, rank, stats):
    """Interpret checkpoint_schedules' multistage (revolve-type) schedule: forward runs, snapshots in
    RAM or on disk (written then renamed), reverse steps on the stored adjoint dependencies."""
    from checkpoint_schedules import Copy, EndReverse, Forward, Move, MultistageCheckpointSchedule, Reverse, StorageType

    schedule = MultistageCheckpointSchedule(steps, cp.snapshots_in_ram, cp.snapshots_on_disk)
    disk_dir = tempfile.mkdtemp(prefix=f"pdeinv-ckpt-r{rank}-", dir=cp.directory) if cp.snapshots_on_disk else None
    st = _Snapshots(disk_dir, copy, to_array, from_array, stats)
    x, xn = copy(x0), 0
    try:
        for action in schedule:
            if isinstance(action, Forward):
                x, xn = _forward(action, steps, x, xn, advance, st, stats)
            elif isinstance(action, Reverse):
                for n in range(action.n1 - 1, action.n0 - 1, -1):
                    reverse(n, st.deps[n], st.deps[n + 1])
                if action.clear_adj_deps:
                    st.deps.clear()
            elif isinstance(action, (Copy, Move)):
                if action.to_storage != StorageType.WORK:
                    raise RuntimeError(f"checkpointing: unexpected action {action}")
                x, xn = st.load(action.from_storage, action.n, isinstance(action, Move)), action.n
            elif isinstance(action, EndReverse):
                break
    finally:
        if disk_dir is not None:
            shutil.rmtree(disk_dir, ignore_errors=True)


def _forward(action, steps, x, xn, advance, st, stats):
    """A Forward action: store the initial state if asked, advance, keep the adjoint dependencies."""
    n1 = min(action.n1, steps)
    if xn != action.n0:
        raise RuntimeError(f"checkpointing: at step {xn}, schedule asks to start at {action.n0}")
    if action.write_ics:
        st.store(action.storage, action.n0, x)
    if action.write_adj_deps:
        st.deps[action.n0] = st.copy(x)
    for n in range(action.n0, n1):
        x = advance(n, x)
        stats.recomputed_steps += 1
        if action.write_adj_deps:
            st.deps[n + 1] = st.copy(x)
    st.held()
    return x, n1


class _Snapshots:
    """The snapshots of a multistage schedule: in RAM, on disk, and the adjoint dependencies."""

    def __init__(self, disk_dir, copy, to_array, from_array, stats):
        self.disk_dir, self.copy, self.stats = disk_dir, copy, stats
        self.to_array, self.from_array = to_array, from_array
        self.ram, self.disk, self.deps = {}, {}, {}

    def held(self):
        self.stats.peak_stored_states = max(self.stats.peak_stored_states, len(self.ram) + len(self.deps) + 2)

    def store(self, storage, n, state):
        from checkpoint_schedules import StorageType

        if storage == StorageType.RAM:
            self.ram[n] = self.copy(state)
        elif storage == StorageType.DISK:
            path = os.path.join(self.disk_dir, f"{n}.npy")
            np.save(path + ".tmp.npy", self.to_array(state))  # written, then renamed: never half a file
            os.replace(path + ".tmp.npy", path)
            self.disk[n] = path
        self.held()

    def load(self, storage, n, delete):
        from checkpoint_schedules import StorageType

        if storage == StorageType.RAM:
            return self.ram.pop(n) if delete else self.copy(self.ram[n])
        state = self.from_array(np.load(self.disk[n]))
        if delete:
            os.remove(self.disk.pop(n))
        return state
