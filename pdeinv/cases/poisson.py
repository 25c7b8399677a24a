r"""Poisson case: hIPPYlib's subsurface log-coefficient benchmark.

:math:`-\nabla\cdot(e^m\nabla u) = 0` on the unit square, :math:`u = y` on the bottom and top
edges, zero flux on the sides; P2 state, P1 parameter; 50 observation points in
:math:`[0.1, 0.9]\times[0.1, 0.5]`; 1 % Gaussian noise; BiLaplacian prior :math:`\gamma = 0.1`,
:math:`\delta = 0.5` with the anisotropic :math:`\Theta` of :math:`\theta_0 = 2`, :math:`\theta_1 = 0.5`,
:math:`\alpha = \pi/4` (Robin boundary term).  The truth is a sample of that prior (seeded).
"""

from __future__ import annotations

import math

import numpy as np

from pdeinv.cases.common import PhasedCase, require, solver_parameters, unit_square_mesh
from pdeinv.cases.settings import LaplaceSettings, MeshSettings, OptimizerSettings, SamplingSettings, shared_problems

__all__ = ["CASE", "PoissonCase", "anisotropy_tensor"]

DEFAULTS = {
    "mesh": MeshSettings(n=64).table(),
    "model": {"degree": 2, "solver": {}},
    "data": {"points": 50, "noise_fraction": 0.01, "seed": 1, "point_seed": 0},
    "prior": {"gamma": 0.1, "delta": 0.5, "theta0": 2.0, "theta1": 0.5, "alpha": math.pi / 4, "mean": 0.0,
              "truth_seed": 7},
    "optimizer": OptimizerSettings(gradient_rtol=1e-9, max_iterations=40, max_cg_iterations=300).table(),
    "laplace": LaplaceSettings(rank=50, oversampling=20).table(),
    "sampling": SamplingSettings().table(),
}


def anisotropy_tensor(theta0, theta1, alpha):
    """hIPPYlib's :math:`\\Theta` for principal values θ0, θ1 rotated by α."""
    import firedrake as fd

    s, c = math.sin(alpha), math.cos(alpha)
    return fd.as_matrix([[theta0 * s * s + theta1 * c * c, (theta0 - theta1) * s * c],
                         [(theta0 - theta1) * s * c, theta0 * c * c + theta1 * s * s]])


class PoissonCase(PhasedCase):
    """The Poisson case as the runner sees it (see the module docstring)."""

    name = "poisson"
    defaults = DEFAULTS
    symmetric = True  # the state operator (picks Cholesky/CG or LU/GMRES for model.solver)

    def validate(self, cfg) -> None:
        p = cfg["prior"]
        require(shared_problems(cfg) + [
            (cfg["model"]["degree"] >= 1, "model.degree must be >= 1"),
            (cfg["data"]["points"] >= 1 and cfg["data"]["noise_fraction"] > 0,
             "data.points must be >= 1 and data.noise_fraction > 0"),
            (p["gamma"] > 0 and p["delta"] > 0 and p["theta0"] > 0 and p["theta1"] > 0,
             "prior.gamma, delta, theta0, theta1 must be > 0"),
        ])

    def size(self, cfg, vertices=None):
        """The run's :class:`~pdeinv.cases.resources.Size`: a P(degree) state, a P1 log-coefficient."""
        from pdeinv.cases.resources import Size, square_vertices

        n = cfg["mesh"]["n"]
        return Size(cells=2 * n * n, state_dofs=(cfg["model"]["degree"] * n + 1) ** 2,
                    parameter_dofs=square_vertices(n), rank_vectors=LaplaceSettings.of(cfg).vectors)

    def parameter_dofs(self, cfg):
        return self.size(cfg).parameter_dofs

    def make_mesh(self, cfg, comm, **kw):
        return unit_square_mesh(cfg, comm)

    def build(self, cfg, mesh, **kw):
        """(model, prior, truth, observation points): the truth a seeded sample of the prior."""
        import firedrake as fd

        from pdeinv.forward.poisson import PoissonModel
        from pdeinv.prior import BiLaplacianPrior

        rng = np.random.default_rng(cfg["data"]["point_seed"])
        n = cfg["data"]["points"]
        points = np.c_[0.1 + 0.8 * rng.random(n), 0.1 + 0.4 * rng.random(n)]
        model = PoissonModel(mesh, observation_points=points, degree=cfg["model"]["degree"],
                             solver_parameters=solver_parameters(cfg["model"]["solver"], symmetric=self.symmetric))
        p = cfg["prior"]
        prior = BiLaplacianPrior(model.parameter_space, gamma=p["gamma"], delta=p["delta"],
                                 anisotropy=anisotropy_tensor(p["theta0"], p["theta1"], p["alpha"]),
                                 mean=fd.Constant(p["mean"]))
        # the same truth on any number of ranks (a partition-independent white noise)
        truth = prior.sample(seed=p["truth_seed"], name="truth", reproducible=True)
        return model, prior, truth, points


CASE = PoissonCase()
