"""A results directory is the user's: pdeinv removes only what it wrote, and only once nothing can fail.

Every results directory pdeinv makes holds a manifest, :data:`MARKER` (JSON): the top-level entries
(files and directories) that pdeinv runs created there.  ``--overwrite`` and a restart after a run that
stopped before its first checkpoint touch only those entries; a user's notes, job scripts and analysis
folders kept beside them stay, and a directory that holds a manifest of its own (another run below,
``--out results`` over ``results/a``) is never removed.  The earlier run's entries are first *moved
aside* into ``.pdeinv-previous`` (a rename, nothing deleted) and deleted only after the new run's setup
succeeded (mesh and model built): a new configuration that fails there puts the old run back.

A manifest from an older pdeinv (a one-line text marker, no list) records nothing; then only the entries
with the names pdeinv's outputs have (:data:`KNOWN_OUTPUTS`) count as pdeinv's.

Where the entries come from: the checkpoint directory and the manifest at the start of a run, and the
output phase's new top-level entries (compared with a listing taken just before it writes).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil

__all__ = ["MARKER", "ASIDE", "LOCK", "KNOWN_OUTPUTS", "check_location", "recorded", "record", "set_aside",
           "restore", "discard", "remove_own", "RunLock", "record_failure"]

MARKER = ".pdeinv-results"
ASIDE = ".pdeinv-previous"
KNOWN_OUTPUTS = ("checkpoint", "summary.json", "results.h5", "*.png", "*.pvd", "*.vtk", "*.vtu", "fields",
                 "posterior_samples")


def check_location(out: str) -> None:
    """Refuse a results directory whose clearing could reach the user's working or home directory:
    ``/``, the working directory, a home directory, or an ancestor of either (one ConfigError)."""
    from pdeinv.cases.config import ConfigError

    target = os.path.realpath(out)
    protected = {"the working directory": os.path.realpath(os.getcwd()),
                 "your home directory": os.path.realpath(os.path.expanduser("~"))}
    if target == os.path.realpath(os.sep):
        raise ConfigError(f"--out {out}: is the root directory; choose a directory of its own for the results")
    for what, path in protected.items():
        if path == target or path.startswith(target.rstrip(os.sep) + os.sep):
            raise ConfigError(f"--out {out}: is {what} or contains it; choose a directory of its own for the "
                              "results (e.g. results/NAME)")


def recorded(out: str) -> list[str]:
    """The top-level entries of ``out`` that pdeinv recorded as its own (existing ones only)."""
    path = os.path.join(out, MARKER)
    try:
        with open(path) as fh:
            names = json.load(fh).get("entries", [])
    except (OSError, ValueError, AttributeError, RecursionError):  # an older text marker: pdeinv's output names
        entries = os.listdir(out)
        names = [e for e in entries if any(fnmatch.fnmatch(e, p) for p in KNOWN_OUTPUTS)
                 or (os.path.isdir(os.path.join(out, e)) and f"{e}.pvd" in entries)]  # a VTKFile's folder
    names = [n for n in names if isinstance(n, str) and os.sep not in n
             and n not in ("", ".", "..", MARKER, ASIDE, ".pdeinv-lock")]
    return [n for n in names if os.path.lexists(os.path.join(out, n))
            and not os.path.exists(os.path.join(out, n, MARKER))]  # another run's directory stays


def record(out: str, names) -> None:
    """Add top-level entries to the manifest (written via a temporary name, never half-written)."""
    path = os.path.join(out, MARKER)
    try:
        with open(path) as fh:
            entries = list(json.load(fh).get("entries", []))
    except (OSError, ValueError, AttributeError, RecursionError):
        entries = []
    entries = sorted(set(entries) | {n for n in names if n not in (MARKER, ASIDE, ".pdeinv-lock")})
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"written_by": "pdeinv", "note": "pdeinv run --overwrite removes only these entries",
                   "entries": entries}, fh, indent=1)
    os.replace(tmp, path)


def set_aside(out: str) -> str | None:
    """Move pdeinv's recorded entries of ``out`` into ``out/.pdeinv-previous`` (renames only); the path,
    or None when there was nothing to move."""
    aside = os.path.join(out, ASIDE)
    if os.path.isdir(aside):  # set aside by a run killed during its setup: put back first, never lost
        restore(out, aside)
    names = recorded(out)
    if not names:
        return None
    os.makedirs(aside)
    for n in names:
        os.replace(os.path.join(out, n), os.path.join(aside, n))
    with open(os.path.join(aside, MARKER), "w") as fh:
        json.dump({"written_by": "pdeinv", "entries": names}, fh)
    return aside


def restore(out: str, aside: str | None) -> None:
    """Put set-aside entries back (the new run failed before it could replace them)."""
    if aside is None or not os.path.isdir(aside):
        return
    remove_own(out)
    for n in os.listdir(aside):
        if n != MARKER:
            os.replace(os.path.join(aside, n), os.path.join(out, n))
    with open(os.path.join(aside, MARKER)) as fh:
        names = json.load(fh)["entries"]
    shutil.rmtree(aside)
    record(out, names)


def discard(aside: str | None) -> None:
    """Delete set-aside entries (the new run's setup succeeded)."""
    if aside is not None and os.path.isdir(aside):
        shutil.rmtree(aside)


def remove_own(out: str) -> None:
    """Remove the entries this directory's manifest records (a run that failed during setup leaves
    nothing of its own behind); the user's entries stay."""
    for n in recorded(out):
        p = os.path.join(out, n)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)


LOCK = ".pdeinv-lock"
FAILED = "failed.json"  # in checkpoint/: why a run ended with an error (not a stop signal)


class RunLock:
    """One run per results directory: an exclusive ``flock`` on ``DIR/.pdeinv-lock``, held for the whole
    run, with the holder (host, pid, start time) written inside for the message a second run prints.

    The operating system releases the lock when the holding process ends however it ends (kill -9, a
    crashed node: on a network file system, when the server's lease of the dead client expires), so a
    stale lock cannot keep a directory locked and no pid check can be fooled into two writers.  The file
    is never unlinked (unlinking a locked file would let a waiting run lock a different inode)."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK)
        self._fd = None

    def holder(self) -> str | None:
        """Who holds the lock (a description), or None when nobody does."""
        import fcntl

        if not os.path.exists(self.path):
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(self.path)
        finally:
            os.close(fd)
        return None

    def acquire(self) -> None:
        """Take the lock or raise one ConfigError naming the holder."""
        import fcntl
        import socket
        import time

        from pdeinv.cases.config import ConfigError

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"--out {os.path.dirname(self.path)}: another pdeinv run is using it "
                              f"({_describe(self.path)}); wait for it, or choose another --out") from None
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _describe(path, wait: float = 2.0) -> str:
    """The holder record of a held lock.  A run that has just taken the lock writes its record right after
    (microseconds later), so an empty or half-written record is read again for up to ``wait`` seconds before
    it counts as unknown (measured: a second run started at the same moment read it in that window)."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            with open(path) as fh:
                info = json.load(fh)
            return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            if time.monotonic() >= deadline:
                return "holder unknown"
            time.sleep(0.02)


def record_failure(out: str, reason: str) -> None:
    """Write ``checkpoint/failed.json`` (what ``pdeinv status`` reports: a failed run is not resumable
    for a job script)."""
    import time

    ckdir = os.path.join(out, "checkpoint")
    if not os.path.isdir(ckdir):
        return
    tmp = os.path.join(ckdir, FAILED + ".tmp")
    with open(tmp, "w") as fh:
        json.dump({"reason": reason[-2000:], "time": time.strftime("%Y-%m-%d %H:%M:%S")}, fh)
    os.replace(tmp, os.path.join(ckdir, FAILED))
