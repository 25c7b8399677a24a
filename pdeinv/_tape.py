"""The only module of pdeinv that touches pyadjoint's global state.

pyadjoint records operations on a *working tape* while *annotation* is switched on; both are global.
pdeinv is a plugin called from modelling codes that may have annotation switched on (every
firedrake-adjoint code does).  A library that recorded on the user's tape, or changed the
annotation state, would silently change the user's own adjoint computations (and pyadjoint fails on
some of the Cofunction arithmetic pdeinv does).  So:

- every public method of pdeinv's maps, noise models, regularizers, misfits and problems, and every
  optimizer and posterior entry point, runs with annotation off (:func:`unannotated`,
  :func:`unannotated_methods`), restoring the caller's state on exit;
- the one map that *wants* a tape, :class:`pdeinv.forward.taped.TapedMap`, records on a private
  tape inside :func:`recording`, which restores the caller's working tape and annotation state on
  exit, whatever happens.
"""

from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager

from pdeinv._interrupt import interrupts_deferred

__all__ = ["recording", "no_annotations", "unannotated", "unannotated_methods"]


@contextmanager
def recording():
    """Record on a fresh private tape; yield it; restore the previous tape and annotation state.

    Yields
    ------
    pyadjoint.Tape
        The private tape holding what was recorded inside the ``with`` block.
    """
    import pyadjoint
    from pyadjoint.tape import annotate_tape

    was_annotating = annotate_tape()
    with pyadjoint.set_working_tape() as tape:  # restores the previous working tape on exit
        pyadjoint.continue_annotation()
        try:
            yield tape
        finally:
            if not was_annotating:
                pyadjoint.pause_annotation()


@contextmanager
def no_annotations():
    """Run a block with annotation switched off (plain, unrecorded Firedrake)."""
    from pyadjoint import stop_annotating

    with stop_annotating():
        yield


_WRAPPED: weakref.WeakSet = weakref.WeakSet()  # the wrappers made here (a subclass is not wrapped twice)


def unannotated(func):
    """Decorator: run ``func`` with annotation off, restoring the caller's annotation state after."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from pyadjoint import stop_annotating

        with interrupts_deferred(), stop_annotating():  # Ctrl-C waits for the call: see pdeinv._interrupt
            return func(*args, **kwargs)

    _WRAPPED.add(wrapper)
    return wrapper


def unannotated_methods(cls, *, skip=()):
    """Wrap ``__init__``, ``__call__`` and every public method defined on ``cls`` (but those named in
    ``skip``) with :func:`unannotated`.  Base classes call this from ``__init_subclass__`` so that every
    subclass, including a user's, is covered without decorating each method."""
    for name, attr in list(vars(cls).items()):
        public = (not name.startswith("_") or name in ("__init__", "__call__")) and name not in skip
        if public and callable(attr) and not isinstance(attr, (type, staticmethod, classmethod, property)) \
                and attr not in _WRAPPED:
            setattr(cls, name, unannotated(attr))
    return cls
