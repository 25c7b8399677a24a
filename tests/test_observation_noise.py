"""Observations (point values through VertexOnlyMesh) and noise models."""

import firedrake as fd
import numpy as np
import pytest

from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise, LaplaceNoise, PoissonNoise
from pdeinv.observation import ObservationPointsOutsideMesh, PointObservation
from pdeinv.verify import taylor_test

POINTS = np.array([[0.1, 0.2], [0.9, 0.3], [0.5, 0.5], [0.3, 0.85], [0.77, 0.66], [0.05, 0.95]])


def setup(channels=3):
    mesh = fd.UnitSquareMesh(5, 5)
    V = fd.FunctionSpace(mesh, "CG", 2)
    return V, PointObservation(V, POINTS, channels=channels)


@pytest.mark.parallel(nprocs=[1, 2])
def test_observe_gives_point_values_in_input_order():
    V, obs = setup()
    x, y = fd.SpatialCoordinate(V.mesh())
    u = fd.Function(V).interpolate(x * x + 2 * y)  # exactly representable in P2
    d = obs.zero_data()
    with u.dat.vec_ro as uv:
        obs.observe(uv, d, 1)
    arr = obs.to_array(d)
    np.testing.assert_allclose(arr[:, 1], POINTS[:, 0] ** 2 + 2 * POINTS[:, 1], rtol=1e-12)
    assert np.all(arr[:, [0, 2]] == 0)


@pytest.mark.parallel(nprocs=[1, 2])
def test_array_round_trip_and_transpose():
    V, obs = setup()
    rng = np.random.default_rng(0)
    values = rng.standard_normal((len(POINTS), 3))
    d = obs.from_array(values)
    np.testing.assert_array_equal(obs.to_array(d), values)
    # <w, B u> = <B^T w, u>
    x, y = fd.SpatialCoordinate(V.mesh())
    u = fd.Function(V).interpolate(fd.sin(3 * x) * y)
    w = fd.Cofunction(obs.space.dual())
    w.dat.data[:] = d.dat.data_ro
    bu = obs.zero_data()
    out = fd.Cofunction(V.dual())
    with u.dat.vec_ro as uv, out.dat.vec as ov:
        obs.observe(uv, bu, 2)
        obs.observe_transpose_add(w, 2, ov)
    lhs = np.dot(obs.to_array(bu)[:, 2], values[:, 2])
    with out.dat.vec_ro as ov, u.dat.vec_ro as uv:
        rhs = ov.dot(uv)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parallel(nprocs=[1, 2])
def test_sampling_is_seeded_and_identical_on_any_number_of_ranks():
    _, obs = setup()
    pred = obs.from_array(np.arange(18.0).reshape(6, 3))
    data = GaussianNoise(obs, 0.5).sample(pred, seed=42)
    expected = np.arange(18.0).reshape(6, 3) + 0.5 * np.random.Generator(np.random.PCG64(42)).standard_normal((6, 3))
    np.testing.assert_array_equal(obs.to_array(data), expected)


def test_points_outside_mesh_are_named():
    V = fd.FunctionSpace(fd.UnitSquareMesh(3, 3), "CG", 1)
    with pytest.raises(ObservationPointsOutsideMesh, match=r"1 of 3 observation points lie outside.*#1 \(1.5, 0.5\)"):
        PointObservation(V, [[0.5, 0.5], [1.5, 0.5], [0.2, 0.2]])


def test_data_of_wrong_length_or_with_nan():
    _, obs = setup(channels=2)
    with pytest.raises(ValueError, match=r"expected 6 points x 2 channels = shape \(6, 2\), got shape \(5, 2\)"):
        obs.from_array(np.zeros((5, 2)))
    bad = np.zeros((6, 2))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first at point 3, channel 1\)"):
        obs.from_array(bad)


@pytest.mark.parametrize("sigma", [0.0, -1.0, np.inf])
def test_nonpositive_sigma_rejected(sigma):
    _, obs = setup()
    with pytest.raises(ValueError, match="sigma must be positive"):
        GaussianNoise(obs, sigma)


def test_per_observation_sigma_checked():
    _, obs = setup(channels=1)
    with pytest.raises(ValueError, match="every sigma must be positive"):
        GaussianNoise(obs, [1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="expected 6 points"):
        GaussianNoise(obs, [1.0, 1.0])


def test_gaussian_misfit_and_relative_noise():
    _, obs = setup(channels=1)
    d = obs.from_array(np.array([1.0, -4.0, 2.0, 0.5, 3.0, 0.0]))
    noise = GaussianNoise.relative(obs, d, 0.01)
    assert noise.sigma == pytest.approx(0.04)
    pred = obs.from_array(np.array([1.0, -4.0, 2.0, 0.5, 3.0, 0.08]))
    assert noise.misfit(pred, d) == pytest.approx(0.5 * (0.08 / 0.04) ** 2)


def test_laplace_needs_smoothing_for_newton_and_poisson_needs_positive_predictions():
    _, obs = setup(channels=1)
    d = obs.from_array(np.ones(6))
    with pytest.raises(ValueError, match="give smoothing > 0"):
        LaplaceNoise(obs, 0.1).gauss_newton_weight(d, d, d)
    with pytest.raises(ValueError, match="predicted intensities must be positive"):
        PoissonNoise(obs, 100.0).misfit(obs.from_array(-np.ones(6)), d)


def test_misfit_rejects_nan_data():
    from pdeinv.forward.poisson import PoissonModel

    model = PoissonModel(fd.UnitSquareMesh(4, 4), observation_points=POINTS)
    data = model.observation.zero_data()
    data.dat.data[0] = np.nan
    with pytest.raises(ValueError, match="data contain NaN"):
        Misfit(model, GaussianNoise(model.observation, 0.1), data)


@pytest.mark.parallel(nprocs=[1, 2])
def test_noise_second_derivatives_and_fisher_weights():
    """misfit_hessian is the exact second derivative of every noise model (second-order Taylor rate 3);
    Gaussian and (smoothed) Laplace Gauss-Newton weights are that derivative; Poisson's is the Fisher
    information: the exact second derivative at the expected counts d = s p."""
    _, obs = setup(channels=1)
    rng = np.random.default_rng(3)
    pred = obs.from_array(1.0 + rng.random(6))
    dp = obs.from_array(rng.standard_normal(6))
    for noise, data in [(GaussianNoise(obs, 0.3), obs.from_array(rng.standard_normal(6))),
                        (LaplaceNoise(obs, 0.5, smoothing=0.2), obs.from_array(1.0 + rng.random(6))),
                        (PoissonNoise(obs, 40.0), obs.from_array(rng.poisson(60.0, 6).astype(float)))]:
        name = type(noise).__name__
        res = taylor_test(lambda p, noise=noise, data=data: noise.misfit(p, data), pred, dp,
                          derivative=noise.gradient(pred, data), hessian=noise.misfit_hessian(pred, data, dp),
                          epsilon0=1e-3)
        exact = max(res.remainder2) < 1e-10 * res.remainder0[0]  # quadratic (Gaussian): remainder is round-off
        assert res.min_rate > 1.9 and (res.min_rate2 > 2.9 or exact), (name, res.rates1, res.rates2)
        gn = noise.gauss_newton_weight(pred, data, dp)
        if isinstance(noise, PoissonNoise):
            expected = obs.from_array(noise.intensity * obs.to_array(pred))  # E[d] = s p
            ref = noise.misfit_hessian(pred, expected, dp)
        else:
            ref = noise.misfit_hessian(pred, data, dp)
        assert np.allclose(gn.dat.data_ro, ref.dat.data_ro, rtol=1e-12, atol=0), name
    # and the weights are not trivially the identity: Poisson's is s / p
    noise = PoissonNoise(obs, 40.0)
    w = noise.gauss_newton_weight(pred, pred, dp)
    assert np.allclose(w.dat.data_ro, 40.0 / pred.dat.data_ro * dp.dat.data_ro, rtol=1e-12)
