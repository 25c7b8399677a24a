r"""What a case's configuration will cost, known before any mesh is built: memory and time estimates.

A configuration names its size (``mesh.n``, ``model.steps``, the directions, the Laplace rank); each case
turns it into a :class:`Size` (global counts), and :func:`check` refuses it in preflight when the
estimated peak memory of one node exceeds ``--max-memory`` (default: what the node has available,
cgroup limits included, as a batch job sees it) or one forward solve is estimated above ``--max-hours``.
Both estimates are deliberately simple upper bounds calibrated on this code's cases (direct solvers):

.. math::

    M \approx r\,\bigl(b_r + s\,n_u\,(2.5\,\mathrm{KB} + 100\,\mathrm{B}\cdot n_t)\bigr)
        + n_m\,(8\,\mathrm{KB} + 32\,\mathrm{B}\cdot k),
    \qquad T_\mathrm{forward} \approx s\,n_u\,(12 + 0.5\,n_t)\,\mu\mathrm{s}\,/\,r,

with :math:`r` ranks (:math:`b_1` = 350 MB serially, :math:`b_r` = 600 MB per rank in parallel; the
state part counts on every rank, as the default direct solver factors redundantly), :math:`s` state
solves per forward (tomography's directions), :math:`n_u` state dofs of one solve, :math:`n_t` time steps
(states kept for the adjoint), :math:`n_m` parameter dofs and :math:`k` the Laplace rank plus
oversampling.  Measured (``benchmarks/resources.py``): estimate / peak 1.21–1.84 serially (heat, tomography,
Poisson up to 88 000 state dofs), 1.1–1.4 on 2 ranks.  They exist to stop a mistyped ``mesh.n = 4000`` or
``model.steps = 10**21`` before it fills a node or runs forever, not to plan a job to the minute.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Size", "Limits", "square_vertices", "square_p1_size", "memory_bytes", "forward_seconds", "check",
           "describe", "available_memory", "parse_memory", "ranks_on_this_node"]

MB = 1024 ** 2
GB = 1024 ** 3
_BASE = 350 * MB            # Python + PETSc + Firedrake + the compiled kernels, serial
_BASE_PARALLEL = 600 * MB   # the same per rank of a parallel run (MPI buffers, MUMPS, halo copies)
_PER_STATE_DOF = 2560       # a state dof of one solve: the mesh, the assembled operator and its factors
_PER_STATE_DOF_STEP = 100   # each time step's state kept on the tape for the adjoint
_PER_PARAMETER_DOF = 8192   # the prior's operators, the optimizer's and Laplace's parameter vectors, outputs
_PER_RANK_VECTOR = 32       # each of the Laplace rank + oversampling vectors (and their images)
_SECONDS_PER_DOF = 12e-6    # assembly and factorization of one solve
_SECONDS_PER_DOF_STEP = 0.5e-6


@dataclass(frozen=True)
class Size:
    """A case's size from its configuration (global counts).

    Attributes
    ----------
    cells : mesh cells; state_dofs : dofs of one state solve; solves : state solves per forward
    (independent experiments); steps : time steps per solve (1: steady); parameter_dofs : dofs of the
    parameter; rank_vectors : parameter-sized vectors of the low-rank Laplace step (rank + oversampling).
    """

    cells: int
    state_dofs: int
    parameter_dofs: int
    solves: int = 1
    steps: int = 1
    rank_vectors: int = 0


@dataclass(frozen=True)
class Limits:
    """What a run may use: ``memory`` bytes per node (None: no limit), ``hours`` per forward solve."""

    memory: int | None
    hours: float = 168.0


def square_vertices(n: int) -> int:
    """Vertices of ``UnitSquareMesh(n, n)`` (cells: twice ``n**2``)."""
    return (n + 1) ** 2


def square_p1_size(cfg) -> Size:
    """The :class:`Size` of a time-stepping P1 state and parameter on ``UnitSquareMesh(mesh.n, mesh.n)``
    (``model.steps`` steps): the heat model of the learning and design cases."""
    n = cfg["mesh"]["n"]
    return Size(cells=2 * n * n, state_dofs=square_vertices(n), parameter_dofs=square_vertices(n),
                steps=cfg["model"]["steps"])


def memory_bytes(size: Size, ranks: int = 1) -> int:
    """Estimated peak memory of the whole run on ``ranks`` ranks (bytes).  In parallel the state part
    counts once per rank: the default direct solver factors the whole operator redundantly on every rank."""
    state = size.solves * size.state_dofs * (_PER_STATE_DOF + _PER_STATE_DOF_STEP * size.steps)
    parameter = size.parameter_dofs * (_PER_PARAMETER_DOF + _PER_RANK_VECTOR * size.rank_vectors)
    if ranks == 1:
        return _BASE + state + parameter
    return (_BASE_PARALLEL + state) * ranks + parameter


def forward_seconds(size: Size, ranks: int = 1) -> float:
    """Estimated wall time of one forward solve (seconds, ideal parallel speed-up)."""
    work = size.solves * size.state_dofs * (_SECONDS_PER_DOF + _SECONDS_PER_DOF_STEP * size.steps)
    return work / ranks


def _bytes(n: int) -> str:
    if n >= 1024 * GB:
        return f"{n / (1024 * GB):.3g} TB"
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MB:.0f} MB"


def _duration(s: float) -> str:
    for unit, length in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if s >= length:
            return f"{s / length:.3g} {unit}"
    return f"{s:.2g} s"


def describe(size: Size, ranks: int = 1) -> str:
    """One log line: the sizes and both estimates."""
    solves = f" x {size.solves} solves" if size.solves > 1 else ""
    steps = f" x {size.steps} steps" if size.steps > 1 else ""
    return (f"  size: {size.cells} cells, state dofs {size.state_dofs}{solves}{steps}, parameter dofs "
            f"{size.parameter_dofs}; estimated peak memory {_bytes(memory_bytes(size, ranks))}, one forward solve "
            f"~{_duration(forward_seconds(size, ranks))}")


def check(size: Size, limits: Limits, *, ranks: int = 1, ranks_per_node: int = 1) -> None:
    """Raise ConfigError when ``size`` cannot be indexed by this PETSc or exceeds ``limits``."""
    from pdeinv.cases.config import ConfigError

    biggest = max(size.cells, size.state_dofs, size.parameter_dofs)
    if biggest > _index_limit():
        raise ConfigError(f"the configuration asks for {biggest} mesh cells or dofs, more than the {_index_limit()} "
                          "this PETSc (32-bit indices) can number; reduce mesh.n")
    node = memory_bytes(size, ranks) * ranks_per_node // max(ranks, 1)
    if limits.memory is not None and node > limits.memory:
        raise ConfigError(f"estimated peak memory {_bytes(node)} per node ({size.cells} cells, state dofs "
                          f"{size.state_dofs} x {size.solves} solves x {size.steps} steps, parameter dofs "
                          f"{size.parameter_dofs}) exceeds the {_bytes(limits.memory)} allowed (--max-memory; "
                          "default: the memory this node has available); reduce mesh.n or model.steps, use more "
                          "nodes, or raise --max-memory")
    t = forward_seconds(size, ranks)
    if t > 3600.0 * limits.hours:
        raise ConfigError(f"one forward solve is estimated at {_duration(t)} (state dofs {size.state_dofs} x "
                          f"{size.solves} solves x {size.steps} steps on {ranks} rank(s)), beyond --max-hours = "
                          f"{limits.hours:g}, and an inversion takes tens to hundreds of them; reduce model.steps "
                          "or mesh.n, or raise --max-hours")


def _index_limit() -> int:
    import numpy as np
    from petsc4py import PETSc

    return int(np.iinfo(PETSc.IntType).max)


def available_memory() -> int | None:
    """Bytes this node can still give: ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup's
    ``memory.max`` (what a Slurm job is confined to); None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2 ** 60:  # "max" or a huge number: no limit
            found.append(int(text))
    return min(found) if found else None


def parse_memory(text: str) -> int:
    """``"6G"``, ``"512M"``, ``"2.5GB"``, ``"none"`` (no limit: returns 0) -> bytes; ValueError otherwise."""
    t = text.strip().upper().removesuffix("B")
    if t in ("NONE", "0"):
        return 0
    scale = {"K": 1024, "M": MB, "G": GB, "T": 1024 * GB}.get(t[-1:], None)
    number = t[:-1] if scale else t
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"--max-memory {text!r}: expected a size such as 6G, 512M or none") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"--max-memory {text!r}: expected a positive size such as 6G, or none")
    return int(value)


def ranks_on_this_node(comm) -> int:
    """Collective: how many ranks of ``comm`` share this rank's node (shared-memory split)."""
    from mpi4py import MPI

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.size
    finally:
        local.Free()

