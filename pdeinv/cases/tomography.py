r"""Tomography case: recover an absorption map from multi-direction transport data (a sinogram).

For K directions :math:`\omega_k`: :math:`\omega_k\cdot\nabla\psi_k + e^{m}\psi_k = 0`, :math:`\psi_k = 1`
on the inflow boundary (upwind DG); detectors on the outflow boundary record :math:`\psi_k`.  Noise:
Gaussian (``data.noise = "gaussian"``, σ a fraction ``data.noise_fraction`` of the largest datum) or
Poisson counts (``"poisson"``, source intensity ``data.intensity`` photons).  BiLaplacian prior on :math:`m = \log\mu`,
optionally plus smoothed total variation (``prior.tv_weight > 0``).

The directions are independent experiments: ``parallel.ensemble = P`` splits them over P ensemble
members (``firedrake.Ensemble``; ``mpiexec -n P*S``: each member on S ranks), the same data and MAP as
one member (see :mod:`pdeinv.ensemble`).
"""

from __future__ import annotations

import numpy as np

from pdeinv.cases.common import PhasedCase, require, solver_parameters, unit_square_mesh
from pdeinv.cases.settings import (
    LaplaceSettings,
    MeshSettings,
    OptimizerSettings,
    TomographyPriorSettings,
    shared_problems,
)

__all__ = ["CASE", "TomographyCase"]

DEFAULTS = {
    "mesh": MeshSettings(n=30).table(),
    "model": {"directions": 8, "degree": 1, "detectors_per_side": 12, "solver": {}},
    "data": {"noise": "gaussian", "noise_fraction": 0.01, "intensity": 1e4, "seed": 1},
    "prior": TomographyPriorSettings(correlation_length=0.2, variance=0.5).table(),
    "optimizer": OptimizerSettings(gradient_rtol=1e-8, max_iterations=40, max_cg_iterations=300).table(),
    "laplace": LaplaceSettings(rank=60, oversampling=10).table(),
    "parallel": {"ensemble": 1},
}


def _on_vertices(n, k):
    """Positions along a side of the k detectors per side that fall on a vertex j/n of the n x n mesh."""
    from pdeinv.forward.transport import boundary_detectors

    s = boundary_detectors(k)[:k, 0]  # the bottom side's detectors; every side has the same positions
    return s[np.abs(s * n - np.round(s * n)) < 1e-9]


def _detectors_off_vertices(cfg):
    """(ok, message): no detector on a vertex of the n x n mesh, where the DG solution is two-valued."""
    n, k = cfg["mesh"]["n"], cfg["model"]["detectors_per_side"]
    if k < 1 or n < 1:
        return True, ""  # reported by the range checks
    on = _on_vertices(n, k)
    if len(on) == 0:
        return True, ""
    fix = next(j for j in range(k + 1, k + 2 * n + 2) if len(_on_vertices(n, j)) == 0)
    return False, (f"model.detectors_per_side = {k} puts detectors on vertices of the mesh.n = {n} mesh (at "
                   f"{', '.join(f'{x:g}' for x in on)} along each side), where the transported field is two-valued; "
                   f"choose another value, e.g. {fix}")


def _truth(V):
    """Two absorbing inclusions on a background of 0.5 (the log of the absorption)."""
    import firedrake as fd

    x, y = fd.SpatialCoordinate(V.mesh())
    return fd.Function(V, name="truth").interpolate(
        fd.ln(0.5 + 2.0 * fd.exp(-60 * ((x - 0.4) ** 2 + (y - 0.55) ** 2))
              + 1.2 * fd.exp(-90 * ((x - 0.68) ** 2 + (y - 0.3) ** 2))))


class TomographyCase(PhasedCase):
    """The tomography case as the runner sees it (see the module docstring)."""

    name = "tomography"
    defaults = DEFAULTS
    symmetric = False  # the state operator (picks Cholesky/CG or LU/GMRES for model.solver)

    def validate(self, cfg) -> None:
        mc, dc, members = cfg["model"], cfg["data"], cfg["parallel"]["ensemble"]
        require(shared_problems(cfg) + [
            (mc["directions"] >= 1, "model.directions must be >= 1"),
            (mc["degree"] >= 0, "model.degree must be >= 0"),
            (mc["detectors_per_side"] >= 1, "model.detectors_per_side must be >= 1"),
            (dc["noise"] in ("gaussian", "poisson"), "data.noise must be 'gaussian' or 'poisson'"),
            (dc["noise_fraction"] > 0 and dc["intensity"] > 0, "data.noise_fraction and data.intensity must be > 0"),
        ] + TomographyPriorSettings.of(cfg).problems() + [
            _detectors_off_vertices(cfg),
            (1 <= members <= mc["directions"],
             f"parallel.ensemble must be between 1 and model.directions = {mc['directions']} (every ensemble "
             f"member needs at least one direction), got {members}"),
        ])

    def size(self, cfg, vertices=None):
        """The run's :class:`~pdeinv.cases.resources.Size`: a DG(p) state per direction on the 2 n^2 cells,
        a P1 parameter."""
        from pdeinv.cases.resources import Size, square_vertices

        n, p = cfg["mesh"]["n"], cfg["model"]["degree"]
        cells = 2 * n * n
        return Size(cells=cells, state_dofs=cells * (p + 1) * (p + 2) // 2, parameter_dofs=square_vertices(n),
                    solves=cfg["model"]["directions"], rank_vectors=LaplaceSettings.of(cfg).vectors)

    def parameter_dofs(self, cfg):
        return self.size(cfg).parameter_dofs

    def make_mesh(self, cfg, comm, *, distribution_parameters=None):
        return unit_square_mesh(cfg, comm, distribution_parameters=distribution_parameters)

    def n_experiments(self, cfg) -> int:
        """The independent experiments an ensemble may split: the directions."""
        return cfg["model"]["directions"]

    def build(self, cfg, mesh, experiments=None):
        """Model (the directions in ``experiments``, default all), prior, truth and detectors."""
        from pdeinv.forward.transport import TransportModel, boundary_detectors

        mc = cfg["model"]
        angles = np.linspace(0.0, np.pi, mc["directions"], endpoint=False) + 0.1  # +0.1: no ray along an edge
        if experiments is not None:
            angles = angles[list(experiments)]
        detectors = boundary_detectors(mc["detectors_per_side"])
        model = TransportModel(mesh, directions=np.c_[np.cos(angles), np.sin(angles)], detectors=detectors,
                               unknown="log_absorption", degree=mc["degree"], inflow=1.0,
                               solver_parameters=solver_parameters(mc["solver"], symmetric=self.symmetric))
        V = model.parameter_space
        return model, TomographyPriorSettings.of(cfg).prior(V), _truth(V), detectors

    def make_noise(self, cfg, model, clean, ensemble=None):
        """Poisson counts, or Gaussian with σ a fraction of the largest datum of all directions (over every
        ensemble member's)."""
        from pdeinv.noise import GaussianNoise, PoissonNoise

        if cfg["data"]["noise"] == "poisson":
            return PoissonNoise(model.observation, cfg["data"]["intensity"])
        noise = GaussianNoise.relative(model.observation, clean, cfg["data"]["noise_fraction"])
        if ensemble is None:
            return noise
        from mpi4py import MPI

        return GaussianNoise(model.observation, ensemble.ensemble_comm.allreduce(noise.sigma, op=MPI.MAX))


CASE = TomographyCase()
