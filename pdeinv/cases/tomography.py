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

from pdeinv.cases.common import PhasedCase, solver_parameters, unit_square_mesh

__all__ = ["CASE", "DEFAULTS", "validate", "size", "make_mesh", "build", "make_noise", "n_experiments"]

SYMMETRIC = False  # the state operator (picks Cholesky/CG or LU/GMRES for model.solver)

DEFAULTS = {
    "mesh": {"n": 30},
    "model": {"directions": 8, "degree": 1, "detectors_per_side": 12, "solver": {}},
    "data": {"noise": "gaussian", "noise_fraction": 0.01, "intensity": 1e4, "seed": 1},
    "prior": {"correlation_length": 0.2, "variance": 0.5, "mean": 0.0, "tv_weight": 0.0, "tv_epsilon": 0.05},
    "optimizer": {"gradient_rtol": 1e-8, "max_iterations": 40, "max_cg_iterations": 300,
                  "globalization": "line_search"},
    "laplace": {"rank": 60, "oversampling": 10, "prior_variance": "auto", "variance_samples": 100,
                "posterior_samples": 3},
    "parallel": {"ensemble": 1},
}


def validate(cfg) -> None:
    from pdeinv.cases.common import laplace_checks, require

    checks = [
        (cfg["model"]["directions"] >= 1, "model.directions must be >= 1"),
        (cfg["model"]["degree"] >= 0, "model.degree must be >= 0"),
        (cfg["model"]["detectors_per_side"] >= 1, "model.detectors_per_side must be >= 1"),
        (cfg["data"]["noise"] in ("gaussian", "poisson"), "data.noise must be 'gaussian' or 'poisson'"),
        (cfg["data"]["noise_fraction"] > 0 and cfg["data"]["intensity"] > 0,
         "data.noise_fraction and data.intensity must be > 0"),
        (cfg["prior"]["correlation_length"] > 0 and cfg["prior"]["variance"] > 0,
         "prior.correlation_length and prior.variance must be > 0"),
        (cfg["prior"]["tv_weight"] >= 0 and cfg["prior"]["tv_epsilon"] > 0,
         "prior.tv_weight must be >= 0 and prior.tv_epsilon > 0"),
        _detectors_off_vertices(cfg),
        (1 <= cfg["parallel"]["ensemble"] <= cfg["model"]["directions"],
         f"parallel.ensemble must be between 1 and model.directions = {cfg['model']['directions']} (every ensemble "
         f"member needs at least one direction), got {cfg['parallel']['ensemble']}"),
    ]
    require(laplace_checks(cfg) + checks)


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


def size(cfg):
    """The run's :class:`~pdeinv.cases.resources.Size`: a DG(p) state per direction on the 2 n^2 cells,
    a P1 parameter."""
    from pdeinv.cases.resources import Size, square_vertices

    n, p, lc = cfg["mesh"]["n"], cfg["model"]["degree"], cfg["laplace"]
    cells = 2 * n * n
    return Size(cells=cells, state_dofs=cells * (p + 1) * (p + 2) // 2, parameter_dofs=square_vertices(n),
                solves=cfg["model"]["directions"], rank_vectors=lc["rank"] + lc["oversampling"])


def make_mesh(cfg, comm, *, distribution_parameters=None):
    return unit_square_mesh(cfg, comm, distribution_parameters=distribution_parameters)


def n_experiments(cfg) -> int:
    """The independent experiments an ensemble may split: the directions."""
    return cfg["model"]["directions"]


def build(cfg, mesh, experiments=None):
    """Model (the directions in ``experiments``, default all), prior, truth and detectors."""
    import firedrake as fd

    from pdeinv.forward.transport import TransportModel, boundary_detectors
    from pdeinv.prior import BiLaplacianPrior, GaussianPlus, TotalVariation

    mc = cfg["model"]
    angles = np.linspace(0.0, np.pi, mc["directions"], endpoint=False) + 0.1  # +0.1: no ray along an edge
    if experiments is not None:
        angles = angles[list(experiments)]
    detectors = boundary_detectors(mc["detectors_per_side"])
    model = TransportModel(mesh, directions=np.c_[np.cos(angles), np.sin(angles)], detectors=detectors,
                           unknown="log_absorption", degree=mc["degree"], inflow=1.0,
                           solver_parameters=solver_parameters(mc["solver"], symmetric=SYMMETRIC))
    V = model.parameter_space
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(V, name="truth").interpolate(
        fd.ln(0.5 + 2.0 * fd.exp(-60 * ((x - 0.4) ** 2 + (y - 0.55) ** 2))
              + 1.2 * fd.exp(-90 * ((x - 0.68) ** 2 + (y - 0.3) ** 2))))
    pc = cfg["prior"]
    prior = BiLaplacianPrior.from_correlation(V, correlation_length=pc["correlation_length"],
                                              variance=pc["variance"], mean=fd.Constant(pc["mean"]))
    if pc["tv_weight"] > 0:  # BiLaplacian + smoothed TV (lagged-diffusivity Hessian: positive)
        prior = GaussianPlus(prior, TotalVariation(V, alpha=pc["tv_weight"], epsilon=pc["tv_epsilon"]))
    return model, prior, truth, detectors


def make_noise(cfg, model, clean, ensemble=None):
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


class TomographyCase(PhasedCase):
    """The tomography case (this module's functions) as the runner sees it."""

    name = "tomography"
    defaults = DEFAULTS
    symmetric = SYMMETRIC

    def validate(self, cfg):
        validate(cfg)

    def size(self, cfg, vertices=None):
        return size(cfg)

    def parameter_dofs(self, cfg):
        return size(cfg).parameter_dofs

    def make_mesh(self, cfg, comm, **kw):
        return make_mesh(cfg, comm, **kw)

    def build(self, cfg, mesh, **kw):
        return build(cfg, mesh, **kw)

    def n_experiments(self, cfg):
        return n_experiments(cfg)

    def make_noise(self, cfg, model, clean, ensemble=None):
        return make_noise(cfg, model, clean, ensemble)


CASE = TomographyCase()
