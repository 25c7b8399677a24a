"""The examples of docs/own-model.md run as written (each code block is a complete program)."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "own-model.md"
BLOCKS = {m.group(1): m.group(0) for m in re.finditer(r"# example: (\w+)\n.*?(?=```)", DOC.read_text(), re.S)}


def test_the_page_has_the_three_routes():
    assert set(BLOCKS) == {"stationary", "timestepping", "wave", "taped", "stokes", "burgers", "joint"}


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("name", ["stationary", "timestepping", "wave", "taped", "stokes", "burgers", "joint"])
def test_example_runs(name, capsys):
    namespace = {"__name__": f"own_model_example_{name}"}
    exec(compile(BLOCKS[name], f"{DOC}:{name}", "exec"), namespace)
    out = capsys.readouterr().out
    if name == "stationary":
        assert namespace["result"].converged, out
    elif name == "timestepping":
        assert namespace["result"].converged and namespace["model"].counts["factorisations"] == 1, out
    elif name == "wave":
        assert float(out.split()[0]) > 1.9, out
        assert all(f.map.diagonal_step and f.map.counts["factorisations"] == 0 for f in namespace["misfits"]), out
    elif name in ("stokes", "burgers"):
        assert namespace["result"].converged, out
    elif name == "joint":
        res = namespace["result"]
        assert res.converged and float(res.m.subfunctions[1].dat.data_ro[0]) == 1.0, out
    else:
        rate, dot_error = (float(s) for s in out.split()[:2])
        assert rate > 1.9 and dot_error < 1e-10, out
