r"""Heat case: recover the initial temperature from sparse point sensors over time.

:math:`\partial_t u - \kappa\Delta u = 0` on the unit square, :math:`u = 0` on the boundary,
:math:`u(0) = m`; data :math:`u(x_i, t_k)` at random sensors, with Gaussian noise of a given fraction
of the largest datum; BiLaplacian prior from a correlation length and a marginal variance.  The
truth is two Gaussian blobs.

Observed data instead of synthetic: ``data.file`` (CSV/NPZ/HDF5, see :mod:`pdeinv.data`) gives the
sensor positions, the observation times (which replace ``model.observation_times``; they must be time
steps), the values and optionally σ per observation (else ``data.noise_fraction`` of the largest
|datum|); ``mesh.file`` a Gmsh ``.msh`` or Firedrake checkpoint mesh (``mesh.name`` picks one of a
checkpoint's meshes).  Relative paths are relative to the working directory.  There is no truth then:
the summary reports the data residual instead of the reconstruction error.
"""

from __future__ import annotations

import numpy as np

from pdeinv.cases.common import PhasedCase, require, solver_parameters, unit_square_mesh
from pdeinv.cases.settings import (
    BiLaplacianSettings,
    LaplaceSettings,
    MeshFileSettings,
    OptimizerSettings,
    SamplingSettings,
    shared_problems,
)

__all__ = ["CASE", "HeatCase"]

DEFAULTS = {
    "mesh": MeshFileSettings(n=32).table(),
    "model": {"end_time": 0.05, "steps": 50, "theta": 1.0, "conductivity": 1.0,
              "observation_times": [0.01, 0.02, 0.03, 0.04, 0.05], "solver": {}},
    "data": {"sensors": 30, "noise_fraction": 0.01, "seed": 1, "sensor_seed": 0, "file": ""},
    "prior": BiLaplacianSettings(correlation_length=0.25, variance=0.5).table(),
    "optimizer": OptimizerSettings(gradient_rtol=1e-10, max_iterations=30, max_cg_iterations=400).table(),
    "laplace": LaplaceSettings(rank=40, oversampling=10).table(),
    "sampling": SamplingSettings().table(),
}


def _check_times(times, cfg, where):
    """Observation times: time steps in (0, T], strictly increasing (so at most ``model.steps`` of them;
    checked whole-array, so that two million of them are refused at once, not 30 s into the run)."""
    from pdeinv.cases.config import ConfigError

    T, N = cfg["model"]["end_time"], cfg["model"]["steps"]
    t = np.asarray(times, dtype=float).ravel()
    if t.size == 0:
        raise ConfigError(f"{where}: no observation times")
    k = t * N / T
    bad = ~((t > 0) & (t <= T * (1 + 1e-12)) & (np.abs(np.round(k) - k) <= 1e-9))
    if bad.any():
        raise ConfigError(f"{where}: {t[bad][0]} is not a time step in (0, {T}] (dt = {T / N})")
    order = np.diff(np.round(k)) <= 0
    if order.any():
        i = int(np.argmax(order))
        raise ConfigError(f"{where}: observation times must be strictly increasing; {t[i + 1]} follows {t[i]} "
                          f"({t.size} times given for {N} steps)")


def _observed(cfg):
    """The data file's contents (checked), or None for synthetic data."""
    from pdeinv.cases.config import ConfigError
    from pdeinv.data import DataFileError, read_observed_data

    if not cfg["data"]["file"]:
        return None
    try:
        return read_observed_data(cfg["data"]["file"], gdim=2)
    except DataFileError as e:
        raise ConfigError(f"data.file: {e}") from None


def _truth(V):
    """Two Gaussian blobs."""
    import firedrake as fd

    x, y = fd.SpatialCoordinate(V.mesh())
    return fd.Function(V, name="truth").interpolate(
        fd.exp(-40 * ((x - 0.35) ** 2 + (y - 0.6) ** 2)) + 0.6 * fd.exp(-60 * ((x - 0.7) ** 2 + (y - 0.3) ** 2)))


class HeatCase(PhasedCase):
    """The heat case as the runner sees it (see the module docstring)."""

    name = "heat"
    defaults = DEFAULTS
    symmetric = True  # the state operator (picks Cholesky/CG or LU/GMRES for model.solver)

    def validate(self, cfg) -> None:
        mc, dc = cfg["model"], cfg["data"]
        require(shared_problems(cfg, MeshFileSettings) + [
            (mc["end_time"] > 0, "model.end_time must be > 0"),
            (mc["steps"] >= 1, "model.steps must be >= 1"),
            (0.5 <= mc["theta"] <= 1.0, "model.theta must be in [0.5, 1]"),
            (mc["conductivity"] > 0, "model.conductivity must be > 0"),
            (dc["sensors"] >= 1, "data.sensors must be >= 1"),
            (dc["noise_fraction"] > 0, "data.noise_fraction must be > 0"),
        ] + BiLaplacianSettings.of(cfg).problems())
        _check_times(mc["observation_times"], cfg, "model.observation_times")

    def check_files(self, cfg) -> None:
        """Read and check the data and mesh files (no Firedrake): before any solve."""
        from pdeinv.cases.config import ConfigError
        from pdeinv.data import DataFileError, check_mesh_file

        obs = _observed(cfg)
        if obs is not None:
            if obs.times is None:
                raise ConfigError(f"data.file: {obs.source} has no observation times (a 't' column or a 'times' "
                                  "array); the heat case observes time series")
            _check_times(obs.times, cfg, f"data.file {obs.source} (times)")
        if cfg["mesh"]["file"]:
            try:
                check_mesh_file(cfg["mesh"]["file"])
            except DataFileError as e:
                raise ConfigError(f"mesh.file: {e}") from None

    def parameter_dofs(self, cfg):
        """P1 dofs (mesh vertices): of the generated mesh, or from a Gmsh file's header; None for a
        checkpoint mesh (known once it is read)."""
        path = cfg["mesh"]["file"]
        if not path:
            return (cfg["mesh"]["n"] + 1) ** 2
        if path.lower().endswith(".msh"):
            from pdeinv.cases.config import ConfigError
            from pdeinv.data import DataFileError, msh_vertex_count

            try:
                return msh_vertex_count(path)
            except DataFileError as e:
                raise ConfigError(f"mesh.file: {e}") from None
        return None

    def size(self, cfg, vertices=None):
        """The run's :class:`~pdeinv.cases.resources.Size` (P1 state and parameter on triangles: about two
        cells per vertex), or None for a checkpoint mesh file until its ``vertices`` are known."""
        from pdeinv.cases.resources import Size

        vertices = self.parameter_dofs(cfg) if vertices is None else vertices
        if vertices is None:
            return None
        cells = 2 * cfg["mesh"]["n"] ** 2 if not cfg["mesh"]["file"] else 2 * vertices
        return Size(cells=cells, state_dofs=vertices, parameter_dofs=vertices, steps=cfg["model"]["steps"],
                    rank_vectors=LaplaceSettings.of(cfg).vectors)

    def make_mesh(self, cfg, comm, **kw):
        ms = MeshFileSettings.of(cfg)
        if ms.file:
            from pdeinv.data import read_mesh

            return read_mesh(ms.file, comm=comm, name=ms.name or None)
        return unit_square_mesh(cfg, comm)

    def build(self, cfg, mesh, **kw):
        """(model, prior, truth, sensor points) for this configuration."""
        from pdeinv.cases.config import ConfigError
        from pdeinv.forward.heat import HeatModel
        from pdeinv.observation import ObservationPointsOutsideMesh

        obs = _observed(cfg)
        mc = cfg["model"]
        if obs is None:
            rng = np.random.default_rng(cfg["data"]["sensor_seed"])
            points, times = 0.1 + 0.8 * rng.random((cfg["data"]["sensors"], 2)), mc["observation_times"]
        else:
            points, times = obs.points, obs.times.tolist()
        try:
            model = HeatModel(mesh, unknown="initial_condition", end_time=mc["end_time"], steps=mc["steps"],
                              theta=mc["theta"], conductivity=mc["conductivity"], observation_points=points,
                              observation_times=times,
                              solver_parameters=solver_parameters(mc["solver"], symmetric=self.symmetric))
        except ObservationPointsOutsideMesh as e:
            raise ConfigError(f"data: {e}") from None
        V = model.parameter_space
        truth = None if obs is not None else _truth(V)
        return model, BiLaplacianSettings.of(cfg).prior(V), truth, points

    def observed_data(self, cfg, model):
        """(data, noise, source) from ``data.file``, or None for synthetic data."""
        from types import SimpleNamespace

        from pdeinv.noise import GaussianNoise

        obs = _observed(cfg)
        if obs is None:
            return None
        data = model.observation.from_array(obs.values, name="data")
        sigma = obs.sigma if obs.sigma is not None else (cfg["data"]["noise_fraction"]
                                                         * float(np.max(np.abs(obs.values))))
        return SimpleNamespace(data=data, noise=GaussianNoise(model.observation, sigma), source=obs.source)


CASE = HeatCase()
