"""Stopping a case run on a batch system's signals: checkpoint, exit 75 on every rank.

Two ways to stop, because schedulers and MPI launchers give very different grace periods:

``SIGTERM`` / ``SIGINT`` — stop *now*
    Open MPI's ``mpiexec`` answers SIGTERM or SIGINT by sending SIGTERM to every rank and SIGKILL one
    second later; SLURM sends SIGTERM and SIGKILL ``KillWait`` (30 s) later.  Neither is time to finish a
    Newton iteration, but none is needed: the checkpoint of the last *completed* iteration is already on
    disk, complete (every file is written to a temporary name and renamed, ``state.json`` last).  So
    each rank exits at once with status 75, from a C-level signal handler that runs even while the
    rank is blocked inside an MPI collective or a MUMPS factorisation (a Python handler would wait for
    that call to return — forever, if a peer rank has already exited).  At most one iteration's work is
    lost.

``SIGUSR1`` — stop after the current iteration
    Handled in Python: the ranks agree at the end of the iteration (one allreduce), write its
    checkpoint and exit 75.  For long iterations ask the scheduler for SIGUSR1 early enough
    (``#SBATCH --signal=USR1@600``); Open MPI's ``mpiexec`` forwards SIGUSR1 to the ranks unchanged.

The C handler is a dozen lines compiled once with the C compiler Firedrake already needs, cached next to
Firedrake's kernels; where no compiler works, a Python handler that exits at the next bytecode takes its
place (the same on every rank that is not blocked in a collective).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sysconfig
import tempfile

__all__ = ["EXIT_INTERRUPTED", "exit_on_signals", "StopRequest", "handler_cache_path"]

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: run again (with --resume)

_SOURCE = r"""
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static char message[4096];
static volatile size_t length = 0;
static char report[4096];
static volatile int has_report = 0;
static volatile int status = 75;

static void handler(int sig)
{
    if (length) {
        ssize_t r = write(2, message, length);
        (void)r;
    }
    if (has_report) {  /* a per-rank record: which signal, which exit status */
        char text[64] = "stopped by signal ";
        size_t n = strlen(text);
        char digits[12];
        int k = 0;
        do { digits[k++] = (char)('0' + sig % 10); sig /= 10; } while (sig && k < 11);
        while (k) text[n++] = digits[--k];
        memcpy(text + n, ", exit ", 7); n += 7;
        text[n++] = (char)('0' + status / 10 % 10);
        text[n++] = (char)('0' + status % 10);
        text[n++] = '\n';
        int fd = open(report, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            ssize_t r = write(fd, text, n);
            (void)r;
            close(fd);
        }
    }
    _exit(status);  /* async-signal-safe; no atexit handlers, no MPI_Finalize */
}

int pdeinv_install(int sig, int code)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    status = code;
    return sigaction(sig, &sa, NULL);
}

void pdeinv_set_message(const char *text)
{
    size_t n = strlen(text);
    if (n >= sizeof message) n = sizeof message - 1;
    length = 0;
    memcpy(message, text, n);
    length = n;
}

void pdeinv_set_report(const char *path)
{
    size_t n = strlen(path);
    has_report = 0;
    if (n == 0 || n >= sizeof report) return;
    memcpy(report, path, n + 1);
    has_report = 1;
}
"""


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pdeinv")


def handler_cache_path() -> str:
    """Where the compiled signal handler is cached (``$XDG_CACHE_HOME/pdeinv``, default ``~/.cache``),
    one file per handler source and machine type."""
    digest = hashlib.sha256((_SOURCE + os.uname().machine).encode()).hexdigest()[:16]
    return os.path.join(_cache_dir(), f"exit_on_signal-{digest}.so")


def _private(path: str) -> bool:
    """Whether ``path`` (not a symbolic link) belongs to this user and nobody else may write it."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return not stat.S_ISLNK(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _compile(path: str) -> bool:
    """Compile the handler into ``path`` (atomically: ranks that build at once each rename a complete
    file); False if no compiler works."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    try:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
            src = os.path.join(tmp, "h.c")
            with open(src, "w") as fh:
                fh.write(_SOURCE)
            lib = os.path.join(tmp, "h.so")
            subprocess.run(cc + ["-shared", "-fPIC", "-O1", src, "-o", lib], check=True,
                           capture_output=True, timeout=60)
            os.replace(lib, path)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _library():
    """The compiled handler (built once per machine type), or None if no compiler works.

    A shared library is code: the cached one is loaded only when it and its directories belong to this
    user and no one else can write them; otherwise it is built afresh in a private temporary directory."""
    path = handler_cache_path()
    cache = os.path.dirname(path)
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
    except OSError:
        pass
    trusted = _private(cache) and _private(os.path.dirname(cache))
    private = None
    if not (trusted and (os.path.exists(path) or _compile(path)) and _private(path)):
        private = tempfile.mkdtemp(prefix="pdeinv-signals-")  # mode 0700
        path = os.path.join(private, "exit_on_signal.so")
    try:
        lib = ctypes.CDLL(path) if private is None or _compile(path) else None
    except OSError:
        lib = None
    finally:
        if private is not None:  # loaded (or not): the mapping outlives the file
            shutil.rmtree(private, ignore_errors=True)
    if lib is None:
        return None
    lib.pdeinv_install.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pdeinv_set_message.argtypes = [ctypes.c_char_p]
    lib.pdeinv_set_report.argtypes = [ctypes.c_char_p]
    return lib


class _Exit:
    """What :func:`exit_on_signals` yields: :meth:`set_message` changes the line printed at exit."""

    def __init__(self, lib, status):
        self._lib = lib
        self._status = status
        self._message = b""
        self._report = ""

    def set_message(self, text: str) -> None:
        self._message = text.encode()
        if self._lib is not None:
            self._lib.pdeinv_set_message(self._message)

    def set_report(self, path: str) -> None:
        """File this rank writes ("stopped by signal N, exit 75") when a signal ends it ("" for none)."""
        self._report = path
        if self._lib is not None:
            self._lib.pdeinv_set_report(path.encode())

    def _python_handler(self, signum, frame):  # fallback without a compiler
        if self._message:
            os.write(2, self._message)
        if self._report:
            with open(self._report, "w") as fh:
                fh.write(f"stopped by signal {signum}, exit {self._status}\n")
        os._exit(self._status)

    @property
    def native(self) -> bool:
        """Whether the C-level handler is in place (else the Python fallback)."""
        return self._lib is not None


@contextlib.contextmanager
def exit_on_signals(signals=(signal.SIGTERM, signal.SIGINT), *, status: int = EXIT_INTERRUPTED, message: str = ""):
    """Within the block, each of ``signals`` ends the process at once with ``status``, after writing
    ``message`` (changeable through the yielded object) to stderr.  The previous handlers come back on
    leaving the block."""
    previous = {s: signal.getsignal(s) for s in signals}
    handle = _Exit(_library(), status)
    handle.set_message(message)
    try:
        for s in signals:
            if handle.native:
                if handle._lib.pdeinv_install(int(s), int(status)) != 0:
                    raise OSError(f"sigaction({s!r}) failed")
            else:
                signal.signal(s, handle._python_handler)
        yield handle
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


class StopRequest:
    """SIGUSR1 (by default) asks the run to stop after the current iteration: a flag the ranks
    combine at the end of each iteration (:meth:`agreed`)."""

    def __init__(self, signals=(signal.SIGUSR1,)):
        self.signals = tuple(signals)
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame):
        self.requested = True

    def agreed(self, comm) -> bool:
        """Collective: whether any rank received the signal."""
        return bool(comm.allreduce(int(self.requested)))

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
