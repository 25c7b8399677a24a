r"""Heat case: recover the initial temperature from sparse point sensors over time.

:math:`\partial_t u - \kappa\Delta u = 0` on the unit square, :math:`u = 0` on the boundary,
:math:`u(0) = m`; data :math:`u(x_i, t_k)` at random sensors, with Gaussian noise of a given fraction
of the largest datum; BiLaplacian prior from a correlation length and a marginal variance.  The
truth is two Gaussian blobs.
"""

from __future__ import annotations

import numpy as np

from pdeinv.cases.common import unit_square_mesh

__all__ = ["DEFAULTS", "validate", "make_mesh", "build"]

DEFAULTS = {
    "mesh": {"n": 32},
    "model": {"end_time": 0.05, "steps": 50, "theta": 1.0, "conductivity": 1.0,
              "observation_times": [0.01, 0.02, 0.03, 0.04, 0.05], "solver": {}},
    "data": {"sensors": 30, "noise_fraction": 0.01, "seed": 1, "sensor_seed": 0},
    "prior": {"correlation_length": 0.25, "variance": 0.5, "mean": 0.0},
    "optimizer": {"gradient_rtol": 1e-10, "max_iterations": 30, "max_cg_iterations": 400,
                  "globalization": "line_search"},
    "laplace": {"rank": 40, "oversampling": 10, "prior_variance": "auto", "variance_samples": 100,
                "posterior_samples": 3},
}


def validate(cfg) -> None:
    from pdeinv.cases.common import laplace_checks, require
    from pdeinv.cases.config import ConfigError

    checks = [
        (cfg["model"]["end_time"] > 0, "model.end_time must be > 0"),
        (cfg["model"]["steps"] >= 1, "model.steps must be >= 1"),
        (0.5 <= cfg["model"]["theta"] <= 1.0, "model.theta must be in [0.5, 1]"),
        (cfg["model"]["conductivity"] > 0, "model.conductivity must be > 0"),
        (cfg["data"]["sensors"] >= 1, "data.sensors must be >= 1"),
        (cfg["data"]["noise_fraction"] > 0, "data.noise_fraction must be > 0"),
        (cfg["prior"]["correlation_length"] > 0 and cfg["prior"]["variance"] > 0,
         "prior.correlation_length and prior.variance must be > 0"),
    ]
    require(laplace_checks(cfg) + checks)
    T, N = cfg["model"]["end_time"], cfg["model"]["steps"]
    for t in cfg["model"]["observation_times"]:
        if not (0 < t <= T) or abs(round(t * N / T) - t * N / T) > 1e-9:
            raise ConfigError(f"model.observation_times: {t} is not a time step in (0, {T}] (dt = {T / N})")


def make_mesh(cfg, comm):
    return unit_square_mesh(cfg, comm)


def build(cfg, mesh):
    """(model, prior, truth, sensor points) for this configuration."""
    import firedrake as fd

    from pdeinv.forward.heat import HeatModel
    from pdeinv.prior import BiLaplacianPrior

    rng = np.random.default_rng(cfg["data"]["sensor_seed"])
    points = 0.1 + 0.8 * rng.random((cfg["data"]["sensors"], 2))
    mc = cfg["model"]
    model = HeatModel(mesh, parameter="initial_condition", end_time=mc["end_time"], steps=mc["steps"],
                      theta=mc["theta"], conductivity=mc["conductivity"], observation_points=points,
                      observation_times=mc["observation_times"], solver_parameters=mc["solver"] or None)
    V = model.parameter_space
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(V, name="truth").interpolate(
        fd.exp(-40 * ((x - 0.35) ** 2 + (y - 0.6) ** 2)) + 0.6 * fd.exp(-60 * ((x - 0.7) ** 2 + (y - 0.3) ** 2)))
    pc = cfg["prior"]
    prior = BiLaplacianPrior.from_correlation(V, correlation_length=pc["correlation_length"],
                                              variance=pc["variance"], mean=fd.Constant(pc["mean"]))
    return model, prior, truth, points
