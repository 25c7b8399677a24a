"""The misfit and its gradient do not depend on the number of ranks.

Reference values were measured in serial; every model must reproduce them on 2 ranks to 1e-10
(relative).  The data are sampled with a fixed seed, which gives the same draw on any number of ranks.
"""

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import assert_derivatives_ok, run_checks

from pdeinv.forward.heat import HeatModel
from pdeinv.forward.poisson import PoissonModel
from pdeinv.forward.transport import TransportModel, boundary_detectors
from pdeinv.noise import GaussianNoise

POINTS = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.4, 0.6], [0.85, 0.15]])

# (misfit, gradient l2 norm) measured with `pytest -m parallel[1]`; see _measure() below.
REFERENCE = {
    "heat-initial_condition": (29.50420427098031, 241.74572156237224),
    "heat-log_conductivity": (11.928524557473292, 33.1500024797536),
    "heat-source": (8.753442526459333, 5.2874458208215716),
    "transport-source": (36.822088478189606, 222.30920525769264),
    "poisson": (1.9709536099888523, 21.571618938260716),
    "transport-log_absorption": (21.59415405031552, 110.92221278733258),
}


def _model(name):
    mesh = fd.UnitSquareMesh(6, 6)
    if name.startswith("heat"):
        return HeatModel(mesh, unknown=name.split("-")[1], end_time=0.1, steps=5, observation_points=POINTS,
                         initial_condition=fd.Constant(0.5), source=1.0)
    if name.startswith("transport"):
        return TransportModel(mesh, directions=[[1, 0], [1, 1], [0, -1]], detectors=boundary_detectors(4),
                              unknown=name.split("-")[1])
    return PoissonModel(mesh, observation_points=POINTS)


def _measure(name):
    model = _model(name)
    x, y = fd.SpatialCoordinate(model.parameter_space.mesh())
    m_true = fd.Function(model.parameter_space).interpolate(0.4 + 0.3 * fd.sin(fd.pi * x) * y)
    c = run_checks(model, m_true, GaussianNoise(model.observation, 0.01))
    assert_derivatives_ok(c)  # Taylor, dot and symmetry on this rank count too
    return c.misfit, c.gradient_norm


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_misfit_and_gradient_identical_on_1_and_2_ranks(name):
    misfit, gnorm = _measure(name)
    ref_misfit, ref_gnorm = REFERENCE[name]
    assert abs(misfit - ref_misfit) <= 1e-10 * abs(ref_misfit)
    assert abs(gnorm - ref_gnorm) <= 1e-10 * abs(ref_gnorm)
