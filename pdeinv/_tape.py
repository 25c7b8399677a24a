"""The only module of pdeinv that touches pyadjoint's global state.

pyadjoint records operations on a *working tape* while *annotation* is switched on; both are global.
A library that recorded on the user's tape, or left annotation on, would silently change the user's
own adjoint computations.  So every map in pdeinv records on a private tape inside
:func:`recording`, which restores the previous tape and annotation state on exit, whatever happens.
"""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["recording", "no_annotations"]


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
