"""Every row of the hostile-input table (tests/hostile_table.py) is handled well: the documented exit
status, one line naming the input, no traceback, nothing of the user's changed, nothing executed.
Command-line rows run `pdeinv run` in a subprocess (serial pass only); reader rows run in-process."""

import pytest
from hostile_table import ROWS, outcome


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_hostile_input_is_handled_well(row, tmp_path):
    assert outcome(row, str(tmp_path)) == "well"
