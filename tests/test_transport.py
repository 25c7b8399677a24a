"""Transport model: Beer-Lambert attenuation, outflow masks, derivatives for both parameters and
all three noise models."""

import math

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import assert_derivatives_ok, run_checks

from pdeinv.forward.transport import TRANSPORT_PARAMETERS, TransportModel, boundary_detectors
from pdeinv.noise import GaussianNoise, LaplaceNoise, PoissonNoise

DIRECTIONS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]]


def path_length(x, omega):
    """Length of the ray from point x backwards along -omega to the boundary of the unit square."""
    omega = np.asarray(omega) / np.linalg.norm(omega)
    ts = []
    for d in range(2):
        if omega[d] > 0:
            ts.append(x[d] / omega[d])
        elif omega[d] < 0:
            ts.append((x[d] - 1.0) / omega[d])
    return min(ts)


# Rays from a corner of the square carry a kink of exp(-mu * length); these directions keep every
# detector at least 0.1 away from one, so the DG solution converges at its full rate there.
BL_DIRECTIONS = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]


def beer_lambert_error(n, mu=1.5, degree=1):
    """Max over outflow detectors of |psi_k - exp(-mu L_k)|, per direction; and the mask."""
    mesh = fd.UnitSquareMesh(n, n)
    det = boundary_detectors(5)
    model = TransportModel(mesh, directions=BL_DIRECTIONS, detectors=det, unknown="log_absorption",
                           degree=degree, inflow=1.0)
    m = fd.Function(model.parameter_space).assign(math.log(mu))
    sino = model.observation.to_array(model(m))
    mask = model.observation.to_array(_mask_function(model)) > 0.5
    exact = np.array([[math.exp(-mu * path_length(x, w)) for w in BL_DIRECTIONS] for x in det])
    return np.where(mask, np.abs(sino - exact), 0.0).max(axis=0), mask


def _mask_function(model):
    f = fd.Function(model.data_space)
    f.dat.data[:] = model.observation.mask
    return f


@pytest.mark.parallel(nprocs=[1, 2])
def test_beer_lambert_along_every_direction():
    coarse, mask = beer_lambert_error(9)  # odd n: no detector on a mesh vertex
    fine, _ = beer_lambert_error(27)
    # each direction is seen by the detectors of its outflow sides only
    assert mask.sum(axis=0).tolist() == [5, 5, 5, 10]
    # measured: axis directions 1.6e-4 -> 1.7e-5 (h/3: rate 2); the diagonal's detectors sit 0.1
    # from the kink of the corner ray, 2.9e-3 -> 1.3e-3
    assert np.all(fine[:3] < 5e-5) and fine[3] < 2e-3, fine
    assert np.all(coarse[:3] > 6 * fine[:3]) and coarse[3] > 2 * fine[3], (coarse, fine)


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("parameter", TRANSPORT_PARAMETERS)
@pytest.mark.parametrize("noise_model", ["gaussian", "poisson", "laplace"])
def test_derivatives(parameter, noise_model):
    mesh = fd.UnitSquareMesh(6, 6)
    model = TransportModel(mesh, directions=DIRECTIONS, detectors=boundary_detectors(4),
                           unknown=parameter, source=0.5, absorption=1.0)
    x, y = fd.SpatialCoordinate(mesh)
    m_true = fd.Function(model.parameter_space).interpolate(0.3 + 0.3 * fd.sin(fd.pi * x) * y)
    noise = {"gaussian": lambda o: GaussianNoise(o, 0.01),
             "poisson": lambda o: PoissonNoise(o, 1000.0),
             "laplace": lambda o: LaplaceNoise(o, 0.01, smoothing=0.05)}[noise_model](model.observation)
    assert_derivatives_ok(run_checks(model, m_true, noise, epsilon0=1e-3))


def test_source_operator_factorised_once_per_direction():
    mesh = fd.UnitSquareMesh(5, 5)
    model = TransportModel(mesh, directions=DIRECTIONS, detectors=boundary_detectors(2), unknown="source")
    m = fd.Function(model.parameter_space).assign(1.0)
    model(m)
    m.assign(2.0)
    model(m)
    model.jvp(m, m)
    assert model.counts["factorisations"] == len(DIRECTIONS)


def test_detectors_on_vertices_rejected():
    mesh = fd.UnitSquareMesh(6, 6)  # vertices at k/6: boundary_detectors(3) puts detectors at 1/6, 1/2, 5/6
    with pytest.raises(ValueError, match="detector\\(s\\) lie on mesh vertices"):
        TransportModel(mesh, directions=DIRECTIONS, detectors=boundary_detectors(3), unknown="source")


def test_bad_directions():
    mesh = fd.UnitSquareMesh(4, 4)
    with pytest.raises(ValueError, match="directions must have shape"):
        TransportModel(mesh, directions=[1.0, 0.0], detectors=boundary_detectors(2), unknown="source")
    with pytest.raises(ValueError, match="non-zero"):
        TransportModel(mesh, directions=[[0.0, 0.0]], detectors=boundary_detectors(2), unknown="source")
