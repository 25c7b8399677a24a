"""Suite-wide guards.

Every test must leave pyadjoint's global state as it found it: annotation off and the global tape
empty.  pdeinv records only on private tapes (pdeinv._tape.recording); this fixture makes any leak
a test failure instead of a silent slowdown of the user's own adjoint code.
"""

import pytest

from pdeinv._petsc import init_petsc

# Under pytest, sys.argv holds pytest's options: PETSc must not see them (PETSC_OPTIONS still works).
init_petsc()


@pytest.fixture(autouse=True)
def global_tape_untouched():
    from pyadjoint import get_working_tape
    from pyadjoint.tape import annotate_tape

    assert not annotate_tape(), "annotation was switched on before the test"
    def n_blocks():
        tape = get_working_tape()  # None until firedrake.adjoint has been imported
        return 0 if tape is None else len(tape.get_blocks())

    n_before = n_blocks()
    yield
    assert not annotate_tape(), "the test left annotation switched on"
    assert n_blocks() == n_before, "the test recorded on the global tape"
