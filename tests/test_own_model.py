"""Bring your own model: the generic engines (StationaryModel, TimeSteppingModel, TapedMap) on linear
and nonlinear, steady and time-dependent user models; their derivatives against Taylor and dot
tests, against each other, against pdeinv's hand-written models and against pyadjoint."""

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import assert_derivatives_ok, directions, run_checks
from mpi4py import MPI

from pdeinv.forward.examples import advection_diffusion, nonlinear_diffusion, nonlinear_heat
from pdeinv.forward.heat import HeatModel
from pdeinv.forward.poisson import PoissonModel, hippylib_boundary
from pdeinv.forward.stationary import StationaryModel
from pdeinv.forward.timestepping import Checkpointing, TimeSteppingModel
from pdeinv.maps import Misfit
from pdeinv.noise import FieldGaussianNoise, GaussianNoise
from pdeinv.observation import FieldObservation, IntegralObservation, PointObservation
from pdeinv.verify import taylor_test

POINTS = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.4, 0.6], [0.9, 0.1]])


def max_rel_diff(a, b):
    """max |a - b| / max |b| over all ranks (Functions or Cofunctions on one space)."""
    comm = a.function_space().mesh().comm
    d = comm.allreduce(float(np.max(np.abs(a.dat.data_ro - b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    s = comm.allreduce(float(np.max(np.abs(b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    return d / max(s, 1e-300)


def transfer(d, src, dst, *, dual=False):
    """Data of one observation on another observation of the same points (input order: two
    VertexOnlyMeshes may distribute the points differently in parallel)."""
    f = dst.from_array(src.to_array(d))
    return fd.Cofunction(dst.space.dual(), val=f.dat) if dual else f


def assert_generic_ok(checks):
    """The issue's criteria for the generic engines: Taylor rate 2 +- 0.05 (at the smallest steps),
    dot test and Hessian symmetry <= 1e-10."""
    assert_derivatives_ok(checks)
    assert abs(checks.taylor.rates1[-1] - 2.0) <= 0.05, str(checks.taylor)


def truth(V, scale=0.5):
    x, y = fd.SpatialCoordinate(V.mesh())
    return fd.Function(V).interpolate(scale * fd.sin(fd.pi * x) * fd.cos(y))


# ------------------------------------------------------------------------------------ stationary
@pytest.mark.parallel(nprocs=[1, 2])
def test_stationary_nonlinear_diffusion_derivatives():
    model = nonlinear_diffusion(fd.UnitSquareMesh(8, 8))
    assert not model.affine
    m_true = truth(model.parameter_space)
    assert_generic_ok(run_checks(model, m_true, GaussianNoise(model.observation, 0.01)))


@pytest.mark.parallel(nprocs=[1, 2])
def test_stationary_linear_equals_handwritten_poisson():
    """The Poisson log-coefficient problem as a user residual reproduces PoissonModel to round-off."""
    mesh = fd.UnitSquareMesh(8, 8)
    ref = PoissonModel(mesh, observation_points=POINTS)
    V, Vm = ref.state_space, ref.parameter_space
    u, m, v = fd.Function(V), fd.Function(Vm), fd.TestFunction(V)
    F = fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
    bcs = [fd.DirichletBC(V, b.value, b.markers) for b in hippylib_boundary(mesh)]
    model = StationaryModel(F, u, m, observation=ref.observation, bcs=bcs)
    assert model.affine
    m0 = truth(Vm, 0.3)
    dm, _ = directions(Vm)
    assert max_rel_diff(model(m0), ref(m0)) < 1e-12
    assert max_rel_diff(model.jvp(m0, dm), ref.jvp(m0, dm)) < 1e-10
    w = transfer(ref.observation.from_array(np.linspace(-1, 2, len(POINTS))), ref.observation, ref.observation,
                 dual=True)
    assert max_rel_diff(model.vjp(m0, w), ref.vjp(m0, w)) < 1e-10
    assert max_rel_diff(model.second_order_vjp(m0, w, dm), ref.second_order_vjp(m0, w, dm)) < 1e-10
    # one factorisation serves forward, tangent and adjoint
    assert model.counts["factorisations"] == 1


def full_newton_setup(model):
    """Synthetic data (1 % noise) for ``model``, its misfit, a point m away from the truth, directions."""
    Vm = model.parameter_space
    noise = GaussianNoise(model.observation, 0.01)
    data = noise.sample(model(truth(Vm)), seed=3)
    dm, dm2 = directions(Vm)
    m = fd.Function(Vm).interpolate(truth(Vm) + 0.3 * dm2)
    return Misfit(model, noise, data), noise, data, m, dm, dm2


@pytest.mark.parallel(nprocs=[1, 2])
def test_stationary_full_newton_hessian_taylor_rate_3():
    misfit, _, _, m, dm, _ = full_newton_setup(nonlinear_diffusion(fd.UnitSquareMesh(8, 8)))
    res = taylor_test(misfit, m, dm, derivative=misfit.gradient(m), hessian=misfit.hessian_action(m, dm),
                      epsilon0=0.05)
    assert res.min_rate >= 1.9, str(res)
    assert res.min_rate2 >= 2.9, res.rates2


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("make", [nonlinear_diffusion, lambda mesh: PoissonModel(mesh, observation_points=POINTS)],
                         ids=["nonlinear", "poisson"])
def test_fused_full_hessian_equals_unfused_in_2_solves(make):
    """The steady engine's full Hessian action (one tangent + one combined transpose solve, the gradient's
    adjoint reused) equals jvp + vjp + second_order_vjp (5 solves) to round-off, and costs 2 solves."""
    from pdeinv.maps import ParameterToObservable

    model = make(fd.UnitSquareMesh(8, 8))
    misfit, noise, data, m, dm, dm2 = full_newton_setup(model)
    pred = model.prediction(m)
    w = noise.gradient(pred, data)
    unfused = ParameterToObservable._hessian_vjp(model, w, lambda j: noise.misfit_hessian(pred, data, j), dm)
    misfit.gradient(m)  # as in Newton-CG: the gradient, then Hessian actions at the same point
    for d in (dm, dm2, dm):  # the cached adjoint must not leak between directions
        solves = model.counts["linear_solves"]
        fused = misfit.hessian_action(m, d)
        assert model.counts["linear_solves"] - solves == 2
    assert max_rel_diff(fused, unfused) <= 1e-10  # measured 1e-11: one solve of the summed right-hand sides
    # after a gradient at another point (new adjoint), still exact
    m2 = fd.Function(model.parameter_space).interpolate(m + 0.1 * dm)
    misfit.gradient(m2)
    pred2 = model.prediction(m2)
    w2 = noise.gradient(pred2, data)
    ref = ParameterToObservable._hessian_vjp(model, w2, lambda j: noise.misfit_hessian(pred2, data, j), dm)
    assert max_rel_diff(misfit.hessian_action(m2, dm), ref) <= 1e-10  # (solves its own adjoint: 3 solves)


@pytest.mark.parallel(nprocs=[1, 2])
def test_taped_map_equals_generic_and_pyadjoint():
    """TapedMap (pyadjoint on the user's plain Firedrake code) and StationaryModel (UFL-derived
    adjoint) give the same misfit gradient, and the same second-order term."""
    mesh = fd.UnitSquareMesh(8, 8)
    generic = nonlinear_diffusion(mesh)
    taped = nonlinear_diffusion(mesh, taped=True)
    Vm = generic.parameter_space
    noise_g = GaussianNoise(generic.observation, 0.01)
    data = noise_g.sample(generic(truth(Vm)), seed=2)
    dm, dm2 = directions(Vm)
    m = fd.Function(Vm).interpolate(0.5 * dm2)
    noise_t = GaussianNoise(taped.observation, 0.01)
    data_t = transfer(data, generic.observation, taped.observation)
    g_gen = Misfit(generic, noise_g, data).gradient(m)
    g_tap = Misfit(taped, noise_t, data_t).gradient(m)
    assert max_rel_diff(g_tap, g_gen) < 1e-10
    h_gen = Misfit(generic, noise_g, data).hessian_action(m, dm)
    h_tap = Misfit(taped, noise_t, data_t).hessian_action(m, dm)
    assert max_rel_diff(h_tap, h_gen) < 1e-8
    assert_generic_ok(run_checks(taped, truth(Vm), noise_t))


# ------------------------------------------------------------------------------- time stepping
def heat_user_model(mesh, parameter, *, steps=6, theta=0.5, checkpointing=None):
    """The heat equation written by a user, as HeatModel discretises it (same observation object)."""
    ref = HeatModel(mesh, unknown=parameter, end_time=0.1, steps=steps, observation_points=POINTS, theta=theta,
                    source=1.0)
    V = ref.state_space
    u, uo, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    m = fd.Function(V, name="m")
    dt = 0.1 / steps
    kappa = fd.exp(m) if parameter == "log_conductivity" else fd.Constant(1.0)
    f = m if parameter == "source" else fd.Constant(1.0)
    th = fd.Constant(theta)
    F = ((u - uo) / dt * v + kappa * fd.inner(fd.grad(th * u + (1 - th) * uo), fd.grad(v)) - f * v) * fd.dx
    times = [n * dt for n in range(1, steps + 1)]
    ic = "parameter" if parameter == "initial_condition" else 0.0
    model = TimeSteppingModel(F, u, uo, m, steps=steps, dt=dt, observation=ref.observation, observation_times=times,
                              initial_condition=ic, bcs=[fd.DirichletBC(V, 0.0, "on_boundary")],
                              checkpointing=checkpointing)
    return model, ref


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("parameter", ["initial_condition", "source", "log_conductivity"])
def test_timestepping_equals_handwritten_heat(parameter):
    mesh = fd.UnitSquareMesh(6, 6)
    model, ref = heat_user_model(mesh, parameter)
    assert model.constant_operator
    assert model.is_linear == (parameter != "log_conductivity")
    V = model.parameter_space
    m0 = truth(V, 0.3)
    dm, _ = directions(V)
    assert max_rel_diff(model(m0), ref(m0)) < 1e-11
    assert max_rel_diff(model.jvp(m0, dm), ref.jvp(m0, dm)) < 1e-10
    obs = ref.observation
    w = transfer(obs.from_array(np.cos(np.arange(obs.n_points * obs.channels)).reshape(obs.n_points, -1)), obs, obs,
                 dual=True)
    assert max_rel_diff(model.vjp(m0, w), ref.vjp(m0, w)) < 1e-10


@pytest.mark.parallel(nprocs=[1, 2])
def test_advection_diffusion_derivatives():
    model = advection_diffusion(fd.UnitSquareMesh(8, 8), steps=8)
    assert model.constant_operator and model.is_linear and not model.needs_states
    assert_generic_ok(run_checks(model, truth(model.parameter_space), GaussianNoise(model.observation, 0.01)))
    assert model.counts["factorisations"] == 1  # one factorisation for every solve of every sweep


@pytest.mark.parallel(nprocs=[1, 2])
def test_nonlinear_time_dependent_derivatives():
    model = nonlinear_heat(fd.UnitSquareMesh(6, 6), steps=5)
    assert not model.constant_operator and model.needs_states
    assert_generic_ok(run_checks(model, truth(model.parameter_space), GaussianNoise(model.observation, 0.01)))


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("checkpointing", [Checkpointing(snapshots_in_ram=2),
                                           Checkpointing(snapshots_in_ram=1, snapshots_on_disk=1)],
                         ids=["ram", "ram+disk"])
def test_checkpointed_derivatives_equal_stored(checkpointing, tmp_path_factory):
    mesh = fd.UnitSquareMesh(6, 6)
    stored = nonlinear_heat(mesh, steps=9)
    ckpt = nonlinear_heat(mesh, steps=9, checkpointing=checkpointing)
    Vm = stored.parameter_space
    m0 = truth(Vm, 0.3)
    dm, _ = directions(Vm)
    obs = stored.observation
    values = np.sin(np.arange(obs.n_points * obs.channels) + 1.0).reshape(obs.n_points, -1)
    w = transfer(obs.from_array(values), obs, obs, dual=True)
    w2 = transfer(obs.from_array(values), obs, ckpt.observation, dual=True)
    assert max_rel_diff(ckpt.vjp(m0, w2), stored.vjp(m0, w)) < 1e-13
    assert max_rel_diff(transfer(ckpt.jvp(m0, dm), ckpt.observation, obs), stored.jvp(m0, dm)) < 1e-13
    assert ckpt.peak_stored_states < stored.peak_stored_states
    assert ckpt.counts["recomputed_steps"] > 0


def test_wrong_inputs_give_one_clear_error():
    mesh = fd.UnitSquareMesh(4, 4)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, m, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    obs = PointObservation(V, POINTS)
    with pytest.raises(ValueError, match="does not depend on the parameter"):
        StationaryModel(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx, u, m, observation=obs)
    with pytest.raises(TypeError, match="residual must be a UFL Form"):
        StationaryModel("u", u, m, observation=obs)
    with pytest.raises(ValueError, match="observation has 1 channels but there are 3"):
        TimeSteppingModel((u - m) * v * fd.dx, u, fd.Function(V), m, steps=3, dt=0.1, observation=obs)
    with pytest.raises(ValueError, match="not a time step"):
        TimeSteppingModel((u - m) * v * fd.dx, u, fd.Function(V), m, steps=3, dt=0.1, observation=obs,
                          observation_times=[0.15])
    with pytest.raises(ValueError, match="snapshots_in_ram"):
        Checkpointing(snapshots_in_ram=-1)
    other = fd.FunctionSpace(mesh, "CG", 2)
    with pytest.raises(ValueError, match="boundary condition lives on"):
        StationaryModel(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - m * v * fd.dx, u, m, observation=obs,
                        bcs=[fd.DirichletBC(other, 0.0, "on_boundary")])


# --------------------------------------------------------------------- observations beyond points
@pytest.mark.parallel(nprocs=[1, 2])
def test_field_observation_mass_weighted_misfit_and_derivatives():
    mesh = fd.UnitSquareMesh(8, 8)
    V = fd.FunctionSpace(mesh, "CG", 1)
    obs = FieldObservation(V)
    model = nonlinear_diffusion(mesh, observation=obs)
    noise = FieldGaussianNoise(obs, 0.05)
    m_true = truth(model.parameter_space)
    pred = model(m_true)
    data = noise.sample(pred, seed=3)
    expected = fd.assemble(0.5 / 0.05**2 * (pred - data) ** 2 * fd.dx)  # hIPPYlib's continuous misfit
    assert abs(noise.misfit(pred, data) - expected) < 1e-12 * expected
    assert_generic_ok(run_checks(model, m_true, noise))


@pytest.mark.parallel(nprocs=[1, 2])
def test_field_time_series_on_timestepping_model():
    mesh = fd.UnitSquareMesh(8, 8)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, uo, m, v = fd.Function(V), fd.Function(V), fd.Function(V), fd.TestFunction(V)
    dt = 0.02
    F = ((u - uo) / dt * v + 0.1 * fd.inner(fd.grad(u), fd.grad(v)) + u**3 * v) * fd.dx  # with a reaction term
    obs = FieldObservation(V, channels=2)
    model = TimeSteppingModel(F, u, uo, m, steps=5, dt=dt, observation=obs, observation_times=[0.04, 0.1],
                              bcs=[fd.DirichletBC(V, 0.0, "on_boundary")])
    assert not model.constant_operator
    assert_generic_ok(run_checks(model, truth(V), FieldGaussianNoise(obs, 0.01)))
    # the data hold the state itself
    uT = model.state_at_end(truth(V))
    assert max_rel_diff(obs.field(model(truth(V)), 1), uT) < 1e-14


@pytest.mark.parallel(nprocs=[1, 2])
def test_integral_observation_fluxes_and_means():
    mesh = fd.UnitSquareMesh(8, 8)
    V = fd.FunctionSpace(mesh, "CG", 2)
    n = fd.FacetNormal(mesh)
    x, y = fd.SpatialCoordinate(mesh)
    functionals = {"flux_bottom": lambda w: fd.dot(fd.grad(w), n) * fd.ds(3),
                   "flux_top": lambda w: fd.dot(fd.grad(w), n) * fd.ds(4),
                   "weighted_mean": lambda w: x * w * fd.dx}
    obs = IntegralObservation(V, functionals)
    model = nonlinear_diffusion(mesh, observation=obs, degree=2)
    m_true = truth(model.parameter_space)
    values = obs.to_array(model(m_true))[:, 0]
    u = model.state(m_true)
    expected = [fd.assemble(f(u)) for f in functionals.values()]
    assert np.allclose(values, expected, rtol=1e-12, atol=1e-14)
    assert obs.names == tuple(functionals)
    assert_generic_ok(run_checks(model, m_true, GaussianNoise(obs, [[0.01], [0.01], [0.001]])))


@pytest.mark.parallel(nprocs=[1, 2])
def test_time_dependent_forcing_matches_a_plain_firedrake_loop():
    """``time=`` is t_{n+1} in step n: the forward equals a hand-written Firedrake loop, and the
    derivatives of a parameter entering through a time-dependent term pass the checks."""
    mesh = fd.UnitSquareMesh(6, 6)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, uo, m, v, t = fd.Function(V), fd.Function(V), fd.Function(V), fd.TestFunction(V), fd.Constant(0.0)
    dt, steps = 0.05, 6
    F = ((u - uo) / dt * v + fd.inner(fd.grad(u), fd.grad(v)) - fd.sin(4 * t) * fd.exp(m) * v) * fd.dx
    bcs = [fd.DirichletBC(V, 0.0, "on_boundary")]
    obs = FieldObservation(V)
    model = TimeSteppingModel(F, u, uo, m, steps=steps, dt=dt, observation=obs, observation_times=[steps * dt],
                              initial_condition=0.0, bcs=bcs, time=t)
    assert model.constant_operator and model._F0_time and model._Fm_time
    m0 = truth(V, 0.3)
    # the same loop in plain Firedrake
    w, w_old, s = fd.Function(V), fd.Function(V), fd.Constant(0.0)
    G = ((w - w_old) / dt * v + fd.inner(fd.grad(w), fd.grad(v)) - fd.sin(4 * s) * fd.exp(m0) * v) * fd.dx
    for n in range(steps):
        s.assign((n + 1) * dt)
        fd.solve(G == 0, w, bcs=bcs, solver_parameters={"snes_type": "ksponly", "ksp_type": "preonly",
                                                         "pc_type": "lu"})
        w_old.assign(w)
    assert max_rel_diff(model(m0), w) < 1e-12
    assert_generic_ok(run_checks(model, m0, FieldGaussianNoise(obs, 0.01)))


def test_full_newton_on_a_user_model():
    """newton_cg with the full Hessian (UFL-derived second-order term) on a user's nonlinear model
    reaches the same MAP point as Gauss-Newton."""
    from pdeinv.optimize import NewtonCGOptions, newton_cg
    from pdeinv.prior import BiLaplacianPrior
    from pdeinv.problem import InverseProblem

    model = nonlinear_diffusion(fd.UnitSquareMesh(8, 8))
    Vm = model.parameter_space
    noise = GaussianNoise(model.observation, 0.01)
    data = noise.sample(model(truth(Vm)), seed=9)
    problem = InverseProblem(Misfit(model, noise, data),
                             BiLaplacianPrior.from_correlation(Vm, correlation_length=0.3, variance=0.5))
    opts = {"max_iterations": 30, "gradient_rtol": 1e-9, "quiet": True}
    gn = newton_cg(problem, fd.Function(Vm), options=NewtonCGOptions(**opts))
    full = newton_cg(problem, fd.Function(Vm), options=NewtonCGOptions(full_newton_after=1, **opts))
    assert gn.converged and full.converged
    assert max_rel_diff(full.m, gn.m) < 1e-6
    assert model.counts["second_order"] > 0


def test_taped_forward_that_modifies_its_argument_and_aliased_functions():
    """A TapedMap forward that modifies its argument in place is differentiated from the value it was
    given (its Control is made before it runs: the JVP was exactly half before); the same Function as
    state and previous of a TimeSteppingModel is refused."""
    from pdeinv.forward.taped import TapedMap

    mesh = fd.UnitSquareMesh(4, 4)
    V = fd.FunctionSpace(mesh, "CG", 1)

    def forward(m):
        m.assign(2 * m)
        return fd.Function(V).interpolate(m**2)  # (2 m)^2: derivative 8 m dm

    model = TapedMap(forward, V, FieldObservation(V))
    m, dm = truth(V, 0.7), truth(V, 0.3)
    m.assign(m + 1.0)
    jvp = model.jvp(m, dm)
    expected = fd.Function(V).interpolate(8 * m * dm)
    assert max_rel_diff(jvp, expected) <= 1e-12
    u, m2, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = (u * v + fd.inner(fd.grad(u), fd.grad(v)) - m2 * v) * fd.dx
    with pytest.raises(ValueError, match="must be different Functions"):
        TimeSteppingModel(F, u, u, m2, steps=2, dt=0.1, observation=FieldObservation(V, channels=2),
                          initial_condition=0.0)
