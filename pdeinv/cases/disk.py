"""Disk space: checked before every checkpoint and output write, so a full disk is one line and exit 74.

Writing an HDF5 file collectively onto a full file system does not fail cleanly: on more than one rank
both ranks were seen spinning in h5py's flush inside ``CheckpointFile.close`` until the job's time limit.
So nothing is written that may not fit: before each write, rank 0 compares the free space of the
results directory's file system with a generous estimate of what is about to be written (:func:`estimate`)
and every rank receives the verdict (one broadcast), so all ranks stop together with :class:`DiskFull`
("no space left on DIR (need N MB, M MB free)"), exit status 74 (EX_IOERR), the last complete
checkpoint untouched and resumable once space is freed.

The estimates are upper bounds measured on Firedrake's files (an HDF5 mesh costs about 128 KiB of fixed
structure plus well under 300 bytes per vertex and cell; a VTK field about 100 bytes per mesh entity),
with a 20 % and 1 MiB margin on top.  A write that fails anyway (another job filled the disk between check
and write) raises ``OSError(ENOSPC)``, which :func:`pdeinv.cases.runner.main` turns into the same
message and status — on several ranks by ending the whole job, since the other ranks may wait in a
collective for the one that failed.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass

__all__ = ["EXIT_NO_SPACE", "DiskFull", "Sizes", "Write", "estimate", "ensure_space", "is_no_space"]

EXIT_NO_SPACE = 74  # EX_IOERR
MIB = 1 << 20
_MESH_FIXED = 128 * 1024  # bytes of HDF5 structure in every CheckpointFile mesh
_MESH_PER_ENTITY = 300  # coordinates + DMPlex topology, per vertex and per cell (upper bound)
_VTK_PER_ENTITY = 100  # one VTU field: coordinates, connectivity, offsets, types, values
_PLOTS = 2 * MIB  # the PNG figures (their size does not grow with the mesh)


class DiskFull(Exception):
    """What is about to be written does not fit on the results directory's file system."""


class Write(enum.Enum):
    """What is about to be written."""

    MESH = "mesh"  # checkpoint/mesh.h5
    ITERATE = "iterate"  # an iterate file: the mesh again and the parameter
    OUTPUTS = "outputs"  # results.h5, the ParaView fields, the plots, the summary


@dataclass(frozen=True)
class Sizes:
    """The global sizes the estimates need: mesh vertices and cells, parameter dofs."""

    vertices: int
    cells: int
    dofs: int

    @classmethod
    def of(cls, mesh, space) -> Sizes:
        """Collective over the mesh's communicator."""
        import firedrake as fd

        cells = mesh.comm.allreduce(mesh.cell_set.size)
        return cls(fd.FunctionSpace(mesh, "CG", 1).dim(), cells, space.dim() if space is not None else 0)


def estimate(sizes: Sizes, what: Write, *, fields: int = 0) -> int:
    """Upper bound in bytes of one write of kind ``what`` (``fields``: the ParaView fields of OUTPUTS)."""
    entities = sizes.vertices + sizes.cells
    mesh = _MESH_FIXED + _MESH_PER_ENTITY * entities
    if what is Write.MESH:
        return mesh
    if what is Write.ITERATE:
        return mesh + 16 * sizes.dofs
    per_field = _VTK_PER_ENTITY * entities + 24 * sizes.dofs + 16 * 1024
    return mesh + fields * per_field + _PLOTS


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system (``path`` need not exist yet:
    its nearest existing ancestor is asked, which is where it will be created)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def ensure_space(path: str, need: int, comm) -> None:
    """Collective: raise :class:`DiskFull` on every rank when ``need`` bytes (plus 20 % and 1 MiB) do not
    fit on ``path``'s file system (rank 0 looks; every rank gets the verdict)."""
    verdict = None
    if comm.rank == 0:
        want = int(1.2 * need) + MIB
        try:
            free = free_bytes(path)
        except OSError:  # cannot tell (e.g. no permission to look): the write itself will say
            free = want
        if free < want:
            verdict = (f"no space left on {os.path.abspath(path)} (need {want / MIB:.1f} MB, {free / MIB:.1f} MB "
                       "free); free some space, then rerun with --resume")
    verdict = comm.bcast(verdict, root=0)
    if verdict is not None:
        raise DiskFull(verdict)


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a full disk or an exceeded quota."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, OSError) and "No space left on device" in str(exc):  # h5py's wrapped errors
            return True
        exc = exc.__cause__ or exc.__context__
    return False
