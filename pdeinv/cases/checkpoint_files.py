"""What makes a case run's checkpoint resumable, checked before anything is loaded.

A checkpoint (``DIR/checkpoint/``) is resumable when

* ``config.json`` and ``state.json`` are complete JSON of this format (:data:`FORMAT`),
* the iterate and the mesh that ``state.json`` names exist and have the SHA-256 recorded there when they
  were written (a truncated, swapped or foreign file — an iterate of another mesh, an older checkpoint's
  leftovers — differs),
* the iterate holds finite numbers only, and no HDF5 attribute of either file holds a pickle that would
  run code (:func:`pdeinv.data.code_attributes`).

:func:`problems` lists what fails (empty: resumable); ``pdeinv status`` reports it and ``--resume``
refuses it in preflight, one line and exit 2, instead of a traceback ten seconds into the run.
"""

from __future__ import annotations

import hashlib
import json
import os

__all__ = ["FORMAT", "sha256", "problems", "state_record"]

FORMAT = 2  # 2: state.json carries the SHA-256 of the iterate and the mesh (1: no hashes)
_CHUNK = 1 << 22


def sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def state_record(ckdir: str, iterate_file: str, state: dict, mesh_hash: str) -> dict:
    """The content of ``state.json`` for a just-written iterate (rank 0: hashes the file)."""
    return {"format": FORMAT, "iterate_file": iterate_file,
            "iterate_sha256": sha256(os.path.join(ckdir, iterate_file)), "mesh_sha256": mesh_hash, "state": state}


def _read_json(path):
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None, f"{os.path.basename(path)} missing"
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        return None, f"{os.path.basename(path)} unreadable or truncated ({type(e).__name__})"
    if not isinstance(data, dict):
        return None, f"{os.path.basename(path)} is not a JSON object"
    return data, None


def _check_file(ckdir, name, expected, what):
    """None, or why file ``name`` is not the one the checkpoint recorded.  A code-running pickle is named
    before a checksum mismatch: a swapped file that would run code is the finding that matters."""
    from pdeinv.data import code_attributes

    if not isinstance(name, str) or os.sep in name or not os.path.isfile(os.path.join(ckdir, name)):
        return f"{what} {name!r} missing"
    path = os.path.join(ckdir, name)
    try:
        code = code_attributes(path)
    except OSError:  # unreadable as HDF5: the checksum below tells it was truncated or replaced
        code = []
    if code:
        return (f"{what} {name}: attribute(s) {', '.join(code[:3])} hold a pickle that would run code when the "
                "file is opened; refused")
    if sha256(path) != expected:
        return f"{what} {name} differs from the one the run wrote (truncated, damaged or replaced: SHA-256 mismatch)"
    return None


def _non_finite(path) -> str | None:
    """The first HDF5 dataset of ``path`` holding a NaN or infinity, or None."""
    import h5py
    import numpy as np

    found = []

    def visit(name, obj):
        if found or not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "fc" or not obj.size:
            return
        if obj.ndim == 0:
            found.extend([name] if not np.isfinite(obj[()]) else [])
            return
        rows = max(1, _CHUNK // (obj.dtype.itemsize * max(int(np.prod(obj.shape[1:])), 1)))
        for i in range(0, obj.shape[0], rows):  # in slices: a large iterate is never read whole
            if not np.all(np.isfinite(obj[i:i + rows])):
                found.append(name)
                return

    with h5py.File(path, "r") as fh:
        fh.visititems(visit)
    return found[0] if found else None


PHASES = "phases.json"  # the checkpoint of a case with its own driver: its completed phases' results


def record_file(out: str) -> str | None:
    """The file that makes ``out/checkpoint`` resumable: ``state.json`` (the runner's phases) or
    ``phases.json`` (a case with its own driver); None when neither is there."""
    for name in ("state.json", PHASES):
        path = os.path.join(out, "checkpoint", name)
        if os.path.exists(path):
            return path
    return None


def _phase_problems(ckdir) -> list[str]:
    """Why a driver case's ``phases.json`` cannot be resumed (empty: it can)."""
    import math

    record, why = _read_json(os.path.join(ckdir, PHASES))
    if why:
        return [why]
    phases = record.get("phases")
    if record.get("format") != 1 or not isinstance(phases, dict):
        return [f"{PHASES} is not of format 1 with a table of phases"]
    for name, entry in phases.items():
        theta = entry.get("theta") if isinstance(entry, dict) else None
        if not isinstance(theta, list) or not all(isinstance(t, (int, float)) and math.isfinite(t) for t in theta):
            return [f"{PHASES}: phase {name!r} holds no finite theta"]
    return []


def problems(out: str) -> list[str]:
    """Why the checkpoint in ``out`` cannot be resumed (empty list: it can).  Reads every file whole once."""
    ckdir = os.path.join(out, "checkpoint")
    found = []
    _, why = _read_json(os.path.join(ckdir, "config.json"))
    found += [why] if why else []
    if record_file(out) == os.path.join(ckdir, PHASES):
        return found + _phase_problems(ckdir)
    state, why = _read_json(os.path.join(ckdir, "state.json"))
    if why:
        return found + [why]
    if state.get("format") != FORMAT:
        return found + [f"state.json is of format {state.get('format', 1)!r}, written by an older pdeinv without "
                        f"checksums (this one reads format {FORMAT}); start afresh with --overwrite"]
    if not isinstance(state.get("state"), dict):
        return found + ["state.json holds no optimizer state"]
    for name, key, what in ((state.get("iterate_file"), "iterate_sha256", "iterate"),
                            ("mesh.h5", "mesh_sha256", "mesh")):
        why = _check_file(ckdir, name, state.get(key), what)
        if why:
            found.append(why)
            continue
        bad = _non_finite(os.path.join(ckdir, name)) if what == "iterate" else None
        if bad:
            found.append(f"iterate {name} holds NaN or infinite values (dataset {bad})")
    return found
