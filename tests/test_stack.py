"""The stack works: Firedrake solves converge at the theoretical order and pyadjoint differentiates.

These run on 1 and 2 ranks (mpi-pytest); the 2-rank runs use the same meshes distributed over two
processes, so the errors must agree with the serial ones to round-off.
"""

import math
import subprocess
import sys

import pytest
from firedrake import COMM_WORLD

from pdeinv.selfcheck import poisson_convergence, poisson_gradient_taylor


@pytest.mark.parallel(nprocs=[1, 2])
def test_poisson_p1_converges_at_rate_2():
    study = poisson_convergence((8, 16, 32), degree=1)
    assert study.ranks == COMM_WORLD.size
    # Rate 2 is the theory for P1 in L2; the window catches both a broken solve and a lucky
    # superconvergent artefact.
    assert all(1.9 < r < 2.2 for r in study.rates), study.rates
    assert study.errors[-1] < 2e-3  # 1.35e-3 measured at n = 32


# L2 errors of the P1 problem on n = 8, 16, 32, measured in serial.  The discrete problem does not
# depend on the partition, so every number of ranks must reproduce them to round-off.
P1_ERRORS_SERIAL = (0.021133637419633658, 0.005377489515533565, 0.0013504396629738557)


@pytest.mark.parallel(nprocs=[1, 2])
def test_errors_identical_on_any_number_of_ranks():
    study = poisson_convergence((8, 16, 32), degree=1)
    for got, ref in zip(study.errors, P1_ERRORS_SERIAL, strict=True):
        assert abs(got - ref) <= 1e-10 * ref


@pytest.mark.parallel(nprocs=[1, 2])
def test_poisson_p2_converges_at_rate_3():
    study = poisson_convergence((4, 8, 16), degree=2)
    assert all(2.85 < r < 3.3 for r in study.rates), study.rates


@pytest.mark.parallel(nprocs=[1, 2])
def test_adjoint_gradient_passes_taylor_test():
    result = poisson_gradient_taylor(n=8)
    assert result.min_rate > 1.9, str(result)
    # zeroth-order remainder has rate 1: the perturbation really moved J
    assert all(0.9 < r < 1.1 for r in result.rates0), str(result)


def test_poisson_convergence_rejects_non_doubling_meshes():
    with pytest.raises(ValueError, match="ns must double"):
        poisson_convergence((4, 6))


@pytest.mark.parallel(nprocs=[1, 2])
def test_taylor_test_detects_a_wrong_gradient():
    """The Taylor test must be able to fail: a gradient off by 5 % shows rate ~1, not 2."""
    import firedrake as fd

    from pdeinv.verify import taylor_test

    mesh = fd.UnitSquareMesh(6, 6)
    V = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(V).interpolate(x * y)
    h = fd.Function(V).interpolate(1 + x)

    def J(q):
        return fd.assemble(fd.exp(q) * fd.dx)

    dJ = fd.assemble(fd.exp(m) * fd.TestFunction(V) * fd.dx)  # exact derivative, a Cofunction
    good = taylor_test(J, m, h, derivative=dJ)
    wrong = fd.assemble(1.05 * fd.exp(m) * fd.TestFunction(V) * fd.dx)
    bad = taylor_test(J, m, h, derivative=wrong)
    assert good.min_rate > 1.95
    assert bad.min_rate < 1.2


def test_import_has_no_side_effects():
    """`import pdeinv` imports no Firedrake, prints nothing, starts no tape."""
    code = (
        "import sys, pdeinv\n"
        "assert 'firedrake' not in sys.modules and 'pyadjoint' not in sys.modules\n"
        "import pdeinv.verify, pdeinv.selfcheck, pdeinv.log, pdeinv._tape, pdeinv.cli\n"
        "from pyadjoint import get_working_tape\n"
        "from pyadjoint.tape import annotate_tape\n"
        "assert not annotate_tape()\n"
        "assert get_working_tape() is None or not get_working_tape().get_blocks()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""


def test_selfcheck_command_writes_json(tmp_path):
    import json

    summary = tmp_path / "selfcheck.json"
    out = subprocess.run([sys.executable, "-m", "pdeinv", "selfcheck", "--quiet", "--json", str(summary)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("PASSED")
    data = json.loads(summary.read_text())
    assert data["passed"] and data["ranks"] == 1
    assert math.isclose(min(data["convergence"]["rates"]), 2.0, abs_tol=0.1)
    assert not list(tmp_path.glob("*.tmp"))


def test_two_clones_each_import_their_own_pdeinv(tmp_path):
    """Every clone gets its own thin .venv on the shared cached stack: a second clone's `make stack`
    makes its own environment, which imports the second clone's pdeinv, and ours still imports ours."""
    import os
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / ".venv" / ".pdeinv-thin").is_file():
        pytest.skip("this clone uses an existing environment (PDEINV_VENV): shared by choice")
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "second-clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    # the cache our stack lives in (Firedrake points XDG_CACHE_HOME of this process into .venv: the
    # script would otherwise look for — and build — a stack there)
    stack_venv = Path((root / ".venv" / ".pdeinv-thin").read_text().strip())
    cache = stack_venv.parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PDEINV_VENV", "XDG_CACHE_HOME")}
    env["PDEINV_CACHE"] = str(cache)
    if not (cache / stack_venv.parent.name.removesuffix(".d")).is_symlink():
        pytest.skip(f"the stack is not a published one in {cache}")
    p = subprocess.run(["tools/stack/ensure.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "started" not in p.stdout + p.stderr, "the second clone rebuilt the stack instead of reusing it"
    probe = ["-c", "import pdeinv, sys; print(pdeinv.__file__); print(sys.prefix)"]

    def where(venv):
        # from a neutral directory: `python -c` puts the working directory first on sys.path
        out = subprocess.run([str(venv / "bin" / "python"), *probe], capture_output=True, text=True, env=env,
                             check=True, cwd=tmp_path).stdout.split()
        return Path(out[0]).resolve(), Path(out[1]).resolve()

    theirs, their_prefix = where(clone / ".venv")
    ours, our_prefix = where(root / ".venv")
    assert theirs == (clone / "pdeinv" / "__init__.py").resolve()
    assert ours == (root / "pdeinv" / "__init__.py").resolve()
    assert their_prefix != our_prefix
