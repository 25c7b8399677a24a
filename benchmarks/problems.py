"""The benchmark problems shared by benchmarks/optimizers.py and benchmarks/laplace.py: synthetic
data (1 % Gaussian noise, seed 1) and a BiLaplacian prior for each model."""

from __future__ import annotations

import firedrake as fd
import numpy as np

from pdeinv.forward.heat import HeatModel
from pdeinv.forward.poisson import PoissonModel
from pdeinv.forward.transport import TransportModel, boundary_detectors
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.prior import BiLaplacianPrior
from pdeinv.problem import InverseProblem

__all__ = ["build"]


def build(name, n):
    """(InverseProblem, model, prior) of benchmark problem ``name`` on an n x n mesh."""
    rng = np.random.default_rng(0)
    mesh = fd.UnitSquareMesh(n, n)
    x, y = fd.SpatialCoordinate(mesh)
    if name == "poisson":
        model = PoissonModel(mesh, observation_points=np.c_[0.05 + 0.9 * rng.random(50), 0.05 + 0.9 * rng.random(50)])
        truth = np.log(2.0) * fd.sin(2 * fd.pi * x) * fd.cos(fd.pi * y) + 0.5 * x
        prior = BiLaplacianPrior(model.parameter_space, gamma=0.1, delta=0.5)
    elif name == "heat":
        model = HeatModel(mesh, unknown="initial_condition", end_time=0.05, steps=50,
                          observation_points=0.1 + 0.8 * rng.random((30, 2)),
                          observation_times=[0.01, 0.02, 0.03, 0.04, 0.05])
        truth = fd.exp(-30 * ((x - 0.4) ** 2 + (y - 0.6) ** 2))
        prior = BiLaplacianPrior.from_correlation(model.parameter_space, correlation_length=0.25, variance=0.5)
    else:
        angles = np.linspace(0, np.pi, 8, endpoint=False) + 0.1
        model = TransportModel(mesh, directions=np.c_[np.cos(angles), np.sin(angles)],
                               detectors=boundary_detectors(12), unknown="log_absorption")
        truth = 0.5 * fd.exp(-20 * ((x - 0.5) ** 2 + (y - 0.4) ** 2))
        prior = BiLaplacianPrior.from_correlation(model.parameter_space, correlation_length=0.2, variance=0.5)
    clean = model(fd.Function(model.parameter_space).interpolate(truth))
    noise = GaussianNoise.relative(model.observation, clean, 0.01)
    return InverseProblem(Misfit(model, noise, noise.sample(clean, seed=1)), prior), model, prior
