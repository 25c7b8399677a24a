"""Observed data and meshes from files (pdeinv.data), and the heat case run on them (1 and 2 ranks)."""

import os

import numpy as np
import pytest
from mpi4py import MPI

from pdeinv.data import DataFileError, msh_vertex_count, read_mesh, read_observed_data

EXAMPLE = "cases/heat/data/sensors.csv"
MESH = "cases/heat/data/domain.msh"


def test_csv_npz_hdf5_read_the_same(tmp_path):
    import h5py

    obs = read_observed_data(EXAMPLE)
    assert obs.points.shape == (24, 2) and obs.values.shape == (24, 4) and obs.sigma.shape == (24, 4)
    np.testing.assert_allclose(obs.times, [0.0125, 0.025, 0.0375, 0.05])
    # the file's first rows, by hand
    np.testing.assert_allclose(obs.points[0], [0.332615, 0.458162])
    np.testing.assert_allclose(obs.values[0], [-8.407663e-02, -6.491750e-02, -2.930785e-02, -3.143973e-02])
    np.testing.assert_allclose(obs.sigma[0], 9.209e-03)

    np.savez(tmp_path / "d.npz", points=obs.points, times=obs.times, values=obs.values, sigma=obs.sigma[:, 0])
    with h5py.File(tmp_path / "d.h5", "w") as f:
        for k in ("points", "times", "values", "sigma"):
            f[k] = getattr(obs, k)
    for other in (read_observed_data(tmp_path / "d.npz"), read_observed_data(tmp_path / "d.h5")):
        for k in ("points", "times", "values", "sigma"):
            np.testing.assert_array_equal(getattr(other, k), getattr(obs, k))

    # rows in any order give the same table (points in order of first appearance)
    lines = open(EXAMPLE).read().splitlines()
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    shuffled = tmp_path / "s.csv"
    shuffled.write_text("\n".join([body[0]] + body[1:][::4] + [r for i, r in enumerate(body[1:]) if i % 4]) + "\n")
    other = read_observed_data(shuffled)
    np.testing.assert_array_equal(other.values, obs.values)


@pytest.mark.parametrize("text, message", [
    ("x,y,value\n0.1,0.2,abc\n", "line 2: .abc. is not a number"),
    ("x,value\n0.1,1\n", "missing column(s) ['y']"),
    ("x,y,t,value,colour\n0.1,0.2,0.1,1,3\n", "unknown column(s) ['colour']"),
    ("x,y,t,value\n0.1,0.2,0.1,1\n0.1,0.2,0.2,1\n0.3,0.2,0.1,1\n", "has no observation at t = 0.2"),
    ("x,y,t,value\n0.1,0.2,0.1,1\n0.1,0.2,0.1,2\n", "observed twice at t = 0.1"),
    ("x,y,value,sigma\n0.1,0.2,1,-1\n", "every sigma must be positive"),
    ("x,y,value\n0.1,0.2,nan\n", "values must be finite"),
    ("x,y,value\n", "at least one row"),
])
def test_malformed_csv_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataFileError, match=".*" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        read_observed_data(path)


def test_malformed_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", points=np.zeros((3, 2)), values=np.ones(3))
    with pytest.raises(DataFileError, match="points must be distinct"):
        read_observed_data(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", points=np.random.default_rng(0).random((3, 2)), values=np.ones((3, 2)),
             times=[0.2, 0.1])
    with pytest.raises(DataFileError, match="strictly increasing"):
        read_observed_data(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", points=np.random.default_rng(0).random((3, 2)))
    with pytest.raises(DataFileError, match="missing array 'values'"):
        read_observed_data(tmp_path / "c.npz")


@pytest.mark.parallel(nprocs=[1, 2])
def test_gmsh_mesh(tmp_path_factory):
    mesh = read_mesh(MESH, comm=MPI.COMM_WORLD)
    import firedrake as fd

    assert fd.FunctionSpace(mesh, "CG", 1).dim() == msh_vertex_count(MESH) == 31 * 21
    assert abs(fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh)) - 1.5) < 1e-12
    assert abs(fd.assemble(fd.Constant(1.0) * fd.ds(domain=mesh)) - 5.0) < 1e-12


@pytest.mark.parallel(nprocs=[1, 2])
def test_heat_case_on_observed_data(tmp_path_factory):
    """The worked example (cases/heat/observed.toml): Gmsh mesh + CSV data with σ per observation.  With
    the right σ the misfit at the MAP is near its expectation (2Φ/N ≈ 1 − d_eff/N), which it would not be
    with σ misread; the warm blob of the hidden initial state (make_example.py) is found."""
    from pdeinv.cases import heat
    from pdeinv.cases.config import load_config
    from pdeinv.cases.runner import run

    comm = MPI.COMM_WORLD
    cfg = load_config(heat.CASE.defaults, "cases/heat/observed.toml",
                      ["laplace.rank=10", "laplace.posterior_samples=1"])
    heat.CASE.validate(cfg)
    out = str(tmp_path_factory.mktemp("observed")) if comm.rank == 0 else None
    out = comm.bcast(out, root=0)
    summary = run("heat", cfg, os.path.join(out, "r"), quiet=True)
    assert summary["converged"] and summary["data_source"] == EXAMPLE
    assert "relative_error" not in summary  # no truth for observed data
    n_obs = summary["dofs"]["observations"]
    assert n_obs == 96 and summary["dofs"]["parameter"] == 651
    ratio = 2 * summary["cost_terms"]["misfit"] / n_obs
    print(f"2 misfit / N = {ratio:.3f}, data-informed dimension {summary['data_informed_dim']}")
    assert 0.5 < ratio < 1.3

    import firedrake as fd

    with fd.CheckpointFile(os.path.join(out, "r", "results.h5"), "r", comm=comm) as ck:
        mesh = ck.load_mesh("mesh")
        m = ck.load_function(mesh, "map")
    # the hidden truth has its warm maximum at (1.0, 0.45) and a cool blob at (0.45, 0.6)
    warm, cool = fd.PointEvaluator(mesh, [[1.0, 0.45], [0.45, 0.6]]).evaluate(m)
    assert warm > 0.5 and cool < -0.1


@pytest.mark.parametrize("content, fragment", [
    (b"\xef\xbb\xbfx,y,t,value\n0.5,0.5,0.1,1.0\n", None),  # Excel's "CSV UTF-8": accepted
    (b"# caf\xe9 (latin-1 comment)\nx,y,t,value\n0.5,0.5,0.1,1.0\n", None),  # comments in any encoding
    (b"x,y,t,value\n0.5,0.5,0.1,caf\xe9\n", "line 2: not UTF-8 text"),
    (b"x,y,t,value\n0.5,0.5,0.1\n", "line 2: 3 entries, expected 4"),
    (b"x,y,t,value\n0.5,0.5,0.1,abc\n", "line 2: 'abc' is not a number"),
    (b"x,y,t,value,sigma\n0.5,0.5,0.1,1.0,inf\n", "sigma = inf at point 0"),
], ids=["bom", "latin1-comment", "latin1-value", "short-row", "not-a-number", "sigma-inf"])
def test_csv_encodings_and_errors_name_the_line(tmp_path, content, fragment):
    from pdeinv.data import DataFileError, read_observed_data

    path = tmp_path / "d.csv"
    path.write_bytes(content)
    if fragment is None:
        data = read_observed_data(path)
        assert data.values.shape == (1, 1)
        return
    with pytest.raises(DataFileError, match=fragment.replace("(", r"\(")):
        read_observed_data(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"], ids=["empty", "truncated"])
def test_broken_npz_is_one_data_file_error(tmp_path, content):
    from pdeinv.data import DataFileError, read_observed_data

    path = tmp_path / "d.npz"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match="not a readable NPZ file"):
        read_observed_data(path)
