r"""Observed data and meshes from files: CSV, NPZ or HDF5 observations; Gmsh or Firedrake-checkpoint meshes.

Observations are values :math:`d_{ik}` at points :math:`x_i` (i = 1..N) and times :math:`t_k` (k = 1..T;
T = 1 and no times for a steady model), optionally with a standard deviation :math:`\sigma_{ik}` each.

CSV (``.csv``)
    A header line naming the columns, then one row per observation: ``x, y[, z], [t,] value[, sigma]``
    (any order; ``#`` starts a comment).  Rows with the same coordinates are one point; every point must
    be observed at every time (the data form an N × T table).  Points keep the order of their first row.
NPZ (``.npz``) or HDF5 (``.h5``, ``.hdf5``)
    Arrays (HDF5: datasets at the root) ``points`` (N, gdim), ``values`` (N,) or (N, T), optional
    ``times`` (T,) and ``sigma`` (a scalar, (N,) or (N, T)).

Everything is read and checked (shapes, finiteness, positive σ, distinct points) on the calling rank
with NumPy/h5py, before any Firedrake object exists, so a malformed file costs nothing; read on every
rank (or on one and broadcast) — the arrays are small.
"""

from __future__ import annotations

import csv
import os
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["ObservedData", "DataFileError", "read_observed_data", "read_mesh", "msh_vertex_count", "checked_path",
           "check_mesh_file", "DATA_FORMATS", "MESH_FORMATS"]

DATA_FORMATS = (".csv", ".npz", ".h5", ".hdf5")
MESH_FORMATS = (".msh", ".h5")


@dataclass(frozen=True)
class ObservedData:
    """Observations read from a file.

    Attributes
    ----------
    points : ndarray, shape (N, gdim)
    times : ndarray, shape (T,), or None for a steady model
    values : ndarray, shape (N, T) (T = 1 without times)
    sigma : ndarray, shape (N, T), or None if the file gives none
    source : str
        The file they came from.
    """

    points: np.ndarray
    times: np.ndarray | None
    values: np.ndarray
    sigma: np.ndarray | None
    source: str

    @property
    def n_points(self) -> int:
        return self.points.shape[0]


class DataFileError(ValueError):
    """A data or mesh file that cannot be used; the message names the file and what was expected."""


def _fail(path, message):
    raise DataFileError(f"{path}: {message}")


def checked_path(path, formats, kind: str, expected: str) -> tuple[str, str]:
    """(path, lower-case extension) of an existing file whose extension is one of ``formats``; else one
    DataFileError naming the file ("unknown {kind} '.x'; expected {expected}", or "no such file")."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        _fail(path, f"unknown {kind} {ext!r}; expected {expected}")
    if not os.path.isfile(path):
        _fail(path, "no such file")
    return path, ext


def check_mesh_file(path) -> tuple[str, str]:
    """:func:`checked_path` for the mesh formats :func:`read_mesh` reads (a ``.h5`` also through
    :func:`check_no_code`)."""
    path, ext = checked_path(path, MESH_FORMATS, "mesh format", "a Gmsh .msh file or a Firedrake checkpoint .h5")
    if ext == ".h5":
        check_no_code(path)
        import h5py

        with h5py.File(path, "r") as fh:  # readable: check_no_code opened it
            written_by_checkpointfile = "dmplex_storage_version" in fh.attrs
        if not written_by_checkpointfile:
            _fail(path, "an HDF5 file not written by Firedrake's CheckpointFile (no dmplex_storage_version); "
                        "expected a mesh saved with CheckpointFile.save_mesh, or a Gmsh .msh file")
    else:
        msh_vertex_count(path)
    return path, ext


# Pickle opcodes that look up or call objects: a pickle without them can only build plain data.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX",
                           "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})


def code_attributes(path) -> list[str]:
    """The attributes (``group:name``) of HDF5 file ``path`` holding a pickle that would import or call
    anything; raises OSError if ``path`` is not a readable HDF5 file.

    Firedrake's ``CheckpointFile`` stores some attributes as pickled dicts (plain names) and unpickles
    them on reading: a crafted file would run code when opened.  Every opaque (``np.void``/bytes)
    attribute that is a pickle is read here *statically* (``pickletools.genops``: nothing is executed)
    and listed if it uses an opcode that looks up a global or calls one."""
    import pickletools

    import h5py

    bad = []

    def visit(name, obj):
        for key, value in obj.attrs.items():
            raw = value.tobytes() if isinstance(value, np.void) else value if isinstance(value, bytes) else None
            if raw is None or not raw.startswith(b"\x80"):  # not a pickle (protocol 2+ header)
                continue
            try:
                ops = {op.name for op, _, _ in pickletools.genops(raw)}
            except Exception:  # a malformed pickle: Firedrake's unpickling would fail or worse
                ops = {"MALFORMED"}
            if ops & (_CODE_OPCODES | {"MALFORMED"}):
                bad.append(f"{name or '/'}:{key}")

    with h5py.File(path, "r") as fh:
        visit("", fh)
        fh.visititems(visit)
    return bad


def check_no_code(path) -> None:
    """Refuse (one DataFileError) an HDF5 file that is unreadable or whose attributes hold a pickle that
    would run code when opened (:func:`code_attributes`)."""
    try:
        bad = code_attributes(path)
    except OSError as e:
        _fail(path, f"not a readable HDF5 file ({e})")
    if bad:
        _fail(path, f"attribute(s) {', '.join(bad[:3])} hold a pickle that would run code when the file is opened; "
                    "refused (only files written by Firedrake's CheckpointFile, which pickle plain names, are read)")


def read_observed_data(path, *, gdim: int = 2) -> ObservedData:
    """Read observations from ``path`` (format from the extension: CSV, NPZ or HDF5; see the module
    docstring) and check them.  Raises :class:`DataFileError` naming the file and the problem."""
    path, ext = checked_path(path, DATA_FORMATS, "data format", f"one of {', '.join(DATA_FORMATS)}")
    if ext == ".csv":
        points, times, values, sigma = _read_csv(path, gdim)
    else:
        points, times, values, sigma = _read_arrays(path, ext)
    return _checked(path, gdim, points, times, values, sigma)


MAX_DATA_BYTES = 256 * 2**20  # a data file above this is refused before it is read (observations, not fields)


def _csv_rows(path):
    """(line number, row) of the data lines of a CSV file: UTF-8 with or without a byte-order mark (Excel's
    "CSV UTF-8"); comments (#) may be in any encoding; one DataFileError naming the line otherwise."""
    size = os.path.getsize(path)
    if size > MAX_DATA_BYTES:
        _fail(path, f"{size / 2**20:.0f} MB is more than the {MAX_DATA_BYTES // 2**20} MB a data file may have "
                    "(observations at points; give whole fields as an HDF5 file)")
    rows = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip() or raw.lstrip().startswith(b"#"):
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                _fail(path, f"line {number}: not UTF-8 text (save the file as CSV UTF-8)")
            rows.append((number, next(csv.reader([line]))))
    return rows


def _read_csv(path, gdim):
    numbered = _csv_rows(path)
    rows = [r for _, r in numbered]
    if len(rows) < 2:
        _fail(path, "expected a header line and at least one row of data")
    header = [h.strip().lower() for h in rows[0]]
    coords = ["x", "y", "z"][:gdim]
    missing = [c for c in coords + ["value"] if c not in header]
    if missing:
        _fail(path, f"missing column(s) {missing}; expected a header with {', '.join(coords)}, [t], value, [sigma], "
                    f"got {rows[0]}")
    unknown = [h for h in header if h not in (*coords, "t", "value", "sigma")]
    if unknown:
        _fail(path, f"unknown column(s) {unknown}; expected {', '.join(coords)}, [t], value, [sigma]")
    for number, r in numbered[1:]:
        if len(r) != len(header):
            _fail(path, f"line {number}: {len(r)} entries, expected {len(header)} like the header")
        for v in r:
            try:
                float(v)
            except ValueError:
                _fail(path, f"line {number}: {v.strip()!r} is not a number")
    table = np.array([[float(v) for v in r] for r in rows[1:]], dtype=float).reshape(-1, len(header))
    col = {h: table[:, header.index(h)] for h in header}
    xy = np.column_stack([col[c] for c in coords])
    # points in order of first appearance; times sorted
    _, first, point_index = np.unique(xy, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank_of = np.empty_like(order)
    rank_of[order] = np.arange(len(order))
    point_index = rank_of[point_index.ravel()]
    points = xy[np.sort(first)]
    if "t" in col:
        times, time_index = np.unique(col["t"], return_inverse=True)
    else:
        times, time_index = None, np.zeros(len(table), dtype=int)
    N, T = len(points), (len(times) if times is not None else 1)
    seen = np.zeros((N, T), dtype=int)
    np.add.at(seen, (point_index, time_index), 1)
    if np.any(seen > 1):
        i, k = np.argwhere(seen > 1)[0]
        when = f" at t = {times[k]}" if times is not None else ""
        _fail(path, f"point {points[i].tolist()} is observed twice{when}")
    if np.any(seen == 0):
        i, k = np.argwhere(seen == 0)[0]
        _fail(path, f"point {points[i].tolist()} has no observation at t = {times[k]}: every point must be "
                    f"observed at every time ({N} points x {T} times, {len(table)} rows)")
    values = np.empty((N, T))
    values[point_index, time_index] = col["value"]
    sigma = None
    if "sigma" in col:
        sigma = np.empty((N, T))
        sigma[point_index, time_index] = col["sigma"]
    return points, times, values, sigma


def _read_arrays(path, ext):
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: np.array(f[k]) for k in f.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:  # empty, truncated, not a zip
            _fail(path, f"not a readable NPZ file ({e})")
    else:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                arrays = {k: np.array(f[k]) for k in f if isinstance(f[k], h5py.Dataset)}
        except OSError as e:
            _fail(path, f"not a readable HDF5 file ({e})")
    for k in ("points", "values"):
        if k not in arrays:
            _fail(path, f"missing array {k!r}; expected points (N, gdim), values (N[, T]), optional times (T,), "
                        f"sigma; found {sorted(arrays)}")
    return arrays["points"], arrays.get("times"), arrays["values"], arrays.get("sigma")


def _checked(path, gdim, points, times, values, sigma) -> ObservedData:
    for name, a in (("points", points), ("values", values), ("times", times), ("sigma", sigma)):
        if a is not None and np.asarray(a).dtype.kind not in "fiu":
            _fail(path, f"{name} must be numbers, got dtype {np.asarray(a).dtype}")
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != gdim or len(points) == 0:
        _fail(path, f"points must have shape (N, {gdim}) with N >= 1, got {points.shape}")
    N = len(points)
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    if times is not None:
        times = np.atleast_1d(np.asarray(times, dtype=float))
        if times.ndim != 1 or np.any(np.diff(times) <= 0):
            _fail(path, f"times must be a strictly increasing list, got {times.tolist()}")
    T = len(times) if times is not None else 1
    if values.shape != (N, T):
        _fail(path, f"values must have shape (N, T) = ({N}, {T}), got {values.shape}")
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=float)
        if sigma.ndim == 1 and len(sigma) == N:  # one σ per point (per sensor), for all times
            sigma = sigma[:, None]
        try:
            sigma = np.array(np.broadcast_to(sigma, (N, T)))
        except ValueError:
            _fail(path, f"sigma must be a scalar or have shape ({N},) or ({N}, {T}), got {sigma.shape}")
        if not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
            bad = np.argwhere(~np.isfinite(sigma) | (sigma <= 0))[0]
            _fail(path, f"every sigma must be positive and finite: sigma = {sigma[tuple(bad)]} at point "
                        f"{int(bad[0])}{f', time {int(bad[1])}' if sigma.ndim > 1 else ''}")
    for name, a in (("points", points), ("values", values), ("times", times)):
        if a is not None and not np.all(np.isfinite(a)):
            _fail(path, f"{name} must be finite (found NaN or inf)")
    if len(np.unique(points, axis=0)) != N:
        _fail(path, "points must be distinct")
    return ObservedData(points=points, times=times, values=values, sigma=sigma, source=path)


def msh_vertex_count(path) -> int:
    """Number of nodes of a Gmsh ``.msh`` file (format 2 or 4, ASCII or binary), read from its header
    without building the mesh: the P1 dofs, for checks before any Firedrake object exists.  One
    DataFileError for a missing file or a header that is not Gmsh's."""
    path, _ = checked_path(path, (".msh",), "mesh format", "a Gmsh .msh file")
    version = None
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip() == b"$MeshFormat":
                version = _number(fh.readline().split()[:1], float)
                if version is None:
                    break
            elif line.strip() == b"$Nodes" and version is not None:
                count = _number(fh.readline().split()[1:2] if version >= 4 else fh.readline().split()[:1], int)
                if count is not None and count >= 1:
                    return count
                break
    _fail(path, "not a Gmsh .msh file (expected a $MeshFormat section with a version, then $Nodes with a "
                "positive node count)")


def _number(fields, kind):
    """``kind(fields[0])``, or None for no field or one that is not a number."""
    try:
        return kind(fields[0])
    except (IndexError, ValueError):
        return None


def read_mesh(path, *, comm, name: str | None = None):
    """A mesh from a Gmsh ``.msh`` file or a Firedrake ``CheckpointFile`` (``.h5``; ``name`` picks one of
    its meshes, default the only/default one).  Distributed over ``comm``."""
    import firedrake as fd

    path, ext = check_mesh_file(path)
    if ext == ".msh":
        return fd.Mesh(path, comm=comm, name=name or "mesh")
    with fd.CheckpointFile(path, "r", comm=comm) as ck:
        return ck.load_mesh(name) if name else ck.load_mesh()
