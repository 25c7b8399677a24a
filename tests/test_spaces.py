"""Vector-valued and mixed models: observations of a vector state, of one component and of one sub-field
of a mixed state; Stokes / Navier–Stokes (Taylor–Hood, pressure nullspace, no-slip walls, a field
parameter) and vector Burgers (no-slip walls, initial velocity as parameter) on both engines; their
forward against plain Firedrake, their gradients against pyadjoint on the same discrete program, and the
Taylor, dot and Gauss–Newton symmetry tests."""

import firedrake as fd
import numpy as np
import pytest
from firedrake.adjoint import Control, ReducedFunctional
from mpi4py import MPI

from pdeinv._tape import recording
from pdeinv.forward.stationary import StationaryModel
from pdeinv.forward.timestepping import TimeSteppingModel
from pdeinv.maps import Misfit
from pdeinv.noise import FieldGaussianNoise, GaussianNoise
from pdeinv.observation import FieldObservation, IntegralObservation, Observation, PointObservation
from pdeinv.verify import dot_test, symmetry_test, taylor_test

POINTS = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.4, 0.6], [0.9, 0.15]])
MUMPS = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps", "mat_mumps_icntl_24": 1}
DX = fd.dx(degree=6)  # fixed: Jacobian and residual integrate exp(m) alike (see test_vector_dirichlet)


def global_max(comm, a):
    return comm.allreduce(float(np.max(np.abs(a), initial=0.0)), op=MPI.MAX)


def check_derivatives(model, m, dm, dm2, sigma):
    """Taylor rate 2 +- 0.05, dot test and GN symmetry <= 1e-10, on synthetic data at m."""
    noise = GaussianNoise(model.observation, sigma)
    data = noise.sample(model(m), seed=3)
    misfit = Misfit(model, noise, data)
    m1 = m.copy(deepcopy=True)
    m1 += 0.1 * dm2
    taylor = taylor_test(misfit, m1, dm, derivative=misfit.gradient(m1), epsilon0=1e-2)
    assert abs(taylor.rates1[-1] - 2.0) <= 0.05, str(taylor)
    dot = dot_test(model, m1, dm, noise.gradient(model(m1), data))
    assert dot.relative_error <= 1e-10, dot
    sym = symmetry_test(lambda v: misfit.gauss_newton_action(m1, v), dm, dm2)
    assert sym.relative_error <= 1e-10, sym


def weights_cofunction(obs, seed=1):
    rng = np.random.default_rng(seed)
    w = obs.from_array(rng.standard_normal((obs.n_points, obs.channels)))
    return fd.Cofunction(obs.space.dual(), val=w.dat)


# ------------------------------------------------------------------------------- observations
@pytest.mark.parallel(nprocs=[1, 2])
def test_point_field_integral_observations_of_vector_and_mixed_states():
    mesh = fd.UnitSquareMesh(5, 5)
    x, y = fd.SpatialCoordinate(mesh)
    V = fd.VectorFunctionSpace(mesh, "CG", 2)
    Q = fd.FunctionSpace(mesh, "CG", 1)
    Z = V * Q
    z = fd.Function(Z)
    z.sub(0).interpolate(fd.as_vector((x * x + y, x * y - 1)))
    z.sub(1).interpolate(x - 2 * y)
    exact = {"u": lambda p: np.array([p[0] ** 2 + p[1], p[0] * p[1] - 1]), "p": lambda p: p[0] - 2 * p[1]}
    cases = [(Z.sub(0), lambda p: exact["u"](p)), (Z.sub(0).sub(1), lambda p: exact["u"](p)[1:]),
             (Z.sub(1), lambda p: np.array([exact["p"](p)]))]
    for space, values in cases:
        obs = PointObservation(space, POINTS)
        assert isinstance(obs, Observation) and obs.state_space == Z
        d = fd.Function(obs.space)
        with z.dat.vec_ro as zv:
            obs.observe(zv, d, 0)
        expected = np.concatenate([values(p) for p in POINTS])
        assert np.allclose(obs.to_array(d)[:, 0], expected, atol=1e-12)
        # B^T is the transpose of B: <w, B z> = <B^T w, z>
        w = weights_cofunction(obs)
        bt = fd.Cofunction(Z.dual())
        with bt.dat.vec as b:
            obs.observe_transpose_add(w, 0, b)
        with w.dat.vec_ro as a, d.dat.vec_ro as b, bt.dat.vec_ro as c, z.dat.vec_ro as e:
            assert abs(a.dot(b) - c.dot(e)) <= 1e-12 * abs(a.dot(b))
    field = FieldObservation(Z.sub(0), channels=2)
    d = field.zero_data()
    with z.dat.vec_ro as zv:
        field.observe(zv, d, 1)
    got = field.field(d, 1)
    assert global_max(mesh.comm, got.dat.data_ro - z.subfunctions[0].dat.data_ro) == 0.0
    integral = IntegralObservation(Z, {"mean_u1": lambda v: fd.split(v)[0][1] * fd.dx,
                                       "p_weighted": lambda v: x * fd.split(v)[1] * fd.dx})
    d = integral.zero_data()
    with z.dat.vec_ro as zv:
        integral.observe(zv, d, 0)
    expected = [fd.assemble(z.sub(0)[1] * fd.dx), fd.assemble(x * z.sub(1) * fd.dx)]
    assert np.allclose(integral.to_array(d)[:, 0], expected, rtol=1e-12)


def test_observation_refusals_are_one_clear_error():
    mesh = fd.UnitSquareMesh(3, 3)
    Z = fd.VectorFunctionSpace(mesh, "CG", 2) * fd.FunctionSpace(mesh, "CG", 1)
    with pytest.raises(ValueError, match="observe one sub-field, e.g. Z.sub"):
        PointObservation(Z, POINTS)
    with pytest.raises(ValueError, match="Real-space"):
        PointObservation(fd.FunctionSpace(mesh, "R", 0), POINTS)
    with pytest.raises(ValueError, match="give the whole state space"):
        IntegralObservation(Z.sub(1), [lambda v: v * fd.dx])
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, m, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = (fd.inner(fd.grad(u), fd.grad(v)) + m * v) * fd.dx
    with pytest.raises(TypeError, match="must be a pdeinv.observation.Observation"):
        StationaryModel(F, u, m, observation=object())
    other = PointObservation(fd.FunctionSpace(mesh, "CG", 2), POINTS)
    with pytest.raises(ValueError, match="not on the state space"):
        StationaryModel(F, u, m, observation=other)
    # a Lagrange multiplier in the state (Boussinesq's pressure gauge): one error with the way out
    Y = V * fd.FunctionSpace(mesh, "R", 0)
    y, w = fd.Function(Y), fd.TestFunction(Y)
    (c, lam), (vc, vl) = fd.split(y), fd.split(w)
    G = (fd.inner(fd.grad(c), fd.grad(vc)) + lam * vc + c * vl + m * vc) * fd.dx
    for make in (lambda: StationaryModel(G, y, m, observation=PointObservation(Y.sub(0), POINTS)),
                 lambda: TimeSteppingModel(G, y, fd.Function(Y), m, steps=1, dt=0.1, initial_condition=0.0,
                                           observation=PointObservation(Y.sub(0), POINTS))):
        with pytest.raises(ValueError, match="Real .R. sub-space .a Lagrange multiplier.*pass nullspace="):
            make()


# -------------------------------------------------------------------------- Stokes / Navier–Stokes
def stokes_residual(z, m, w, *, nonlinear):
    u, p = fd.split(z)
    v, q = fd.split(w)
    x, y = fd.SpatialCoordinate(z.function_space().mesh())
    f = fd.as_vector((fd.sin(fd.pi * y), x * (1 - x)))
    F = (fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) - p * fd.div(v) - q * fd.div(u) - fd.inner(f, v)) * DX
    if nonlinear:
        F += 10.0 * fd.inner(fd.dot(fd.grad(u), u), v) * DX
    return F


def stokes_space(mesh):
    return fd.VectorFunctionSpace(mesh, "CG", 2) * fd.FunctionSpace(mesh, "CG", 1)


def pressure_nullspace(Z):
    return fd.MixedVectorSpaceBasis(Z, [Z.sub(0), fd.VectorSpaceBasis(constant=True, comm=Z.mesh().comm)])


def stokes_model(mesh, observed, *, nonlinear):
    Z = stokes_space(mesh)
    M = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(M, name="m").interpolate(0.3 * fd.sin(fd.pi * x) * y)
    z, w = fd.Function(Z), fd.TestFunction(Z)
    obs = PointObservation(observed(Z), POINTS)
    bcs = [fd.DirichletBC(Z.sub(0), 0, "on_boundary")]
    model = StationaryModel(stokes_residual(z, m, w, nonlinear=nonlinear), z, m, observation=obs, bcs=bcs,
                            nullspace=pressure_nullspace(Z))
    return model, m.copy(deepcopy=True)  # the evaluation point, not the model's own Function


OBSERVED = {"u_x": lambda Z: Z.sub(0).sub(0), "velocity": lambda Z: Z.sub(0)}


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("nonlinear", [False, True], ids=["stokes", "navier-stokes"])
@pytest.mark.parametrize("observed", list(OBSERVED))
def test_stokes_gradient_equals_pyadjoint(observed, nonlinear):
    mesh = fd.UnitSquareMesh(4, 4)
    model, m = stokes_model(mesh, OBSERVED[observed], nonlinear=nonlinear)
    assert model.linear_solver["pc_factor_mat_solver_type"] == "mumps"  # saddle point: pivoting LU
    obs = model.observation
    predicted = obs.to_array(model(m))[:, 0]
    w = weights_cofunction(obs)
    weights = obs.to_array(fd.Function(obs.space, val=w.dat))[:, 0]
    ours = model.vjp(m, w)
    Z = model.state_space
    P0 = fd.FunctionSpace(obs.vom, "DG", 0)
    with recording():
        control = m.copy(deepcopy=True)
        z = fd.Function(Z)
        F = stokes_residual(z, control, fd.TestFunction(Z), nonlinear=nonlinear)
        params = dict(MUMPS, snes_type="newtonls" if nonlinear else "ksponly", snes_rtol=1e-14, snes_atol=1e-14)
        fd.solve(F == 0, z, bcs=[fd.DirichletBC(Z.sub(0), 0, "on_boundary")], nullspace=pressure_nullspace(Z),
                 solver_parameters=params)
        u = fd.split(z)[0]
        flat = [u[0], u[1]] if observed == "velocity" else [u[0]]
        values = [fd.assemble(fd.interpolate(c, P0)) for c in flat]  # each component at every VOM vertex
        J = 0.0
        local_w = w.dat.data_ro.reshape(-1, len(flat))  # one vertex per point, its components in a row
        for c, vals in enumerate(values):
            wc = fd.Function(P0)
            wc.dat.data[:] = local_w[:, c]
            J += fd.assemble(fd.inner(vals, wc) * fd.dx(domain=obs.vom))
        theirs = ReducedFunctional(J, Control(control)).derivative()
    velocity = np.asarray(fd.PointEvaluator(mesh, POINTS).evaluate(model.state(m).subfunctions[0]))
    direct = velocity[:, :len(flat)].reshape(-1)
    assert np.max(np.abs(predicted - direct)) <= 1e-10 * np.max(np.abs(direct))
    assert np.isclose(float(J), float(np.dot(weights, predicted)), rtol=1e-10)
    scale = global_max(mesh.comm, theirs.dat.data_ro)
    err = global_max(mesh.comm, ours.dat.data_ro - theirs.dat.data_ro)
    assert err <= 1e-10 * scale, err / scale


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("nonlinear", [False, True], ids=["stokes", "navier-stokes"])
def test_stokes_taylor_dot_symmetry(nonlinear):
    mesh = fd.UnitSquareMesh(4, 4)
    model, m = stokes_model(mesh, OBSERVED["velocity"], nonlinear=nonlinear)
    x, y = fd.SpatialCoordinate(mesh)
    dm = fd.Function(m.function_space()).interpolate(fd.cos(2 * x) * y + 0.3)
    dm2 = fd.Function(m.function_space()).interpolate(x * x - y)
    check_derivatives(model, m, dm, dm2, 1e-3)
    if nonlinear:  # the full Hessian of the nonlinear steady model: Taylor rate 3
        noise = GaussianNoise(model.observation, 1e-3)
        misfit = Misfit(model, noise, noise.sample(model(m), seed=3))
        t = taylor_test(misfit, m, dm, derivative=misfit.gradient(m), hessian=misfit.hessian_action(m, dm),
                        epsilon0=1e-2)
        assert t.min_rate2 >= 2.9, str(t)


# ------------------------------------------------------------------------------------ Burgers
NU, DT, STEPS = 0.05, 0.02, 4


def burgers_residual(u, uo, v):
    return (fd.inner(u - uo, v) / DT + fd.inner(fd.dot(u, fd.nabla_grad(u)), v)
            + NU * fd.inner(fd.grad(u), fd.grad(v))) * fd.dx


def burgers_model(mesh):
    V = fd.VectorFunctionSpace(mesh, "CG", 2)
    u, uo, m, v = fd.Function(V), fd.Function(V), fd.Function(V, name="u0"), fd.TestFunction(V)
    obs = PointObservation(V, POINTS, channels=2)
    model = TimeSteppingModel(burgers_residual(u, uo, v), u, uo, m, steps=STEPS, dt=DT, observation=obs,
                              observation_times=[2 * DT, STEPS * DT], bcs=[fd.DirichletBC(V, 0, "on_boundary")])
    x, y = fd.SpatialCoordinate(mesh)
    m.interpolate(fd.as_vector((fd.sin(fd.pi * x) * fd.sin(fd.pi * y), x * y * (1 - x) * (1 - y))))
    return model, m.copy(deepcopy=True)  # the evaluation point, not the model's own Function


@pytest.mark.parallel(nprocs=[1, 2])
def test_vector_burgers_point_observations_equal_pyadjoint():
    mesh = fd.UnitSquareMesh(4, 4)
    model, m = burgers_model(mesh)
    assert not model.constant_operator
    obs = model.observation
    w = weights_cofunction(obs)
    ours = model.vjp(m, w)
    wa = obs.to_array(fd.Function(obs.space, val=w.dat))
    V = model.state_space
    with recording():
        control = m.copy(deepcopy=True)
        u, uo = fd.Function(V), fd.Function(V)
        uo.assign(control)
        F = burgers_residual(u, uo, fd.TestFunction(V))
        J = 0.0
        for n in range(1, STEPS + 1):
            u.assign(uo)
            fd.solve(F == 0, u, bcs=[fd.DirichletBC(V, 0, "on_boundary")],
                     solver_parameters=dict(MUMPS, snes_rtol=1e-14, snes_atol=1e-14))
            uo.assign(u)
            if n in (2, STEPS):
                k = 0 if n == 2 else 1
                P0 = fd.VectorFunctionSpace(fd.VertexOnlyMesh(mesh, POINTS), "DG", 0)
                pu = fd.assemble(fd.interpolate(u, P0))
                wk = fd.Function(P0)
                wk.dat.data[:] = wa[:, k].reshape(-1, 2)[_io_order(P0, mesh)]
                J += fd.assemble(fd.inner(pu, wk) * fd.dx(domain=P0.mesh()))
        theirs = ReducedFunctional(J, Control(control)).derivative()
    scale = global_max(mesh.comm, theirs.dat.data_ro)
    err = global_max(mesh.comm, ours.dat.data_ro - theirs.dat.data_ro)
    assert err <= 1e-10 * scale, err / scale


def _io_order(P0, mesh):
    """For each local vertex of P0's VertexOnlyMesh, its index in the input point order."""
    vom = P0.mesh()
    io = fd.Function(fd.FunctionSpace(vom.input_ordering, "DG", 0))
    n_local = io.dat.data_ro.shape[0]
    start = mesh.comm.exscan(n_local) or 0
    io.dat.data[:] = np.arange(start, start + n_local, dtype=float)
    ids = fd.Function(fd.FunctionSpace(vom, "DG", 0)).interpolate(io)
    return np.rint(ids.dat.data_ro).astype(int)


@pytest.mark.parallel(nprocs=[1, 2])
def test_vector_burgers_taylor_dot_symmetry():
    mesh = fd.UnitSquareMesh(4, 4)
    model, m = burgers_model(mesh)
    x, y = fd.SpatialCoordinate(mesh)
    V = model.parameter_space
    bubble = x * (1 - x) * y * (1 - y)
    dm = fd.Function(V).interpolate(fd.as_vector((bubble * fd.cos(2 * x), -bubble)))
    dm2 = fd.Function(V).interpolate(fd.as_vector((x * bubble, y * bubble)))
    check_derivatives(model, m, dm, dm2, 1e-3)


# ------------------------------------------------------------- unsteady Stokes / Navier-Stokes
def unsteady_stokes_residual(z, zo, m, w, *, nonlinear):
    (u, p), (uo, _), (v, q) = fd.split(z), fd.split(zo), fd.split(w)
    x, y = fd.SpatialCoordinate(z.function_space().mesh())
    f = fd.as_vector((fd.sin(fd.pi * y), x * (1 - x)))
    F = (fd.inner(u - uo, v) / DT + fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) - p * fd.div(v) - q * fd.div(u)
         - fd.inner(f, v)) * DX
    if nonlinear:
        F += 10.0 * fd.inner(fd.dot(fd.grad(u), u), v) * DX
    return F


def unsteady_stokes_model(mesh, *, nonlinear, steps=3):
    Z = stokes_space(mesh)
    M = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    z, zo, m, w = fd.Function(Z), fd.Function(Z), fd.Function(M), fd.TestFunction(Z)
    obs = PointObservation(Z.sub(0), POINTS, channels=2)
    model = TimeSteppingModel(unsteady_stokes_residual(z, zo, m, w, nonlinear=nonlinear), z, zo, m, steps=steps,
                              dt=DT, observation=obs, observation_times=[2 * DT, steps * DT], initial_condition=0.0,
                              bcs=[fd.DirichletBC(Z.sub(0), 0, "on_boundary")], nullspace=pressure_nullspace(Z))
    return model, fd.Function(M).interpolate(0.3 * fd.sin(fd.pi * x) * y)


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("nonlinear", [False, True], ids=["stokes", "navier-stokes"])
def test_unsteady_stokes_with_a_pressure_nullspace_equals_pyadjoint(nonlinear):
    mesh = fd.UnitSquareMesh(4, 4)
    model, m = unsteady_stokes_model(mesh, nonlinear=nonlinear)
    assert model.constant_operator != nonlinear and model.linear_solver["pc_factor_mat_solver_type"] == "mumps"
    obs = model.observation
    w = weights_cofunction(obs)
    ours = model.vjp(m, w)
    wa = obs.to_array(fd.Function(obs.space, val=w.dat))
    Z = model.state_space
    with recording():
        control = m.copy(deepcopy=True)
        z, zo = fd.Function(Z), fd.Function(Z)
        F = unsteady_stokes_residual(z, zo, control, fd.TestFunction(Z), nonlinear=nonlinear)
        params = dict(MUMPS, snes_type="newtonls" if nonlinear else "ksponly", snes_rtol=1e-14, snes_atol=1e-14)
        J = 0.0
        for n in range(1, 4):
            fd.solve(F == 0, z, bcs=[fd.DirichletBC(Z.sub(0), 0, "on_boundary")],
                     nullspace=pressure_nullspace(Z), solver_parameters=params)
            zo.assign(z)
            if n >= 2:
                P0 = fd.VectorFunctionSpace(fd.VertexOnlyMesh(mesh, POINTS), "DG", 0)
                pu = fd.assemble(fd.interpolate(fd.split(z)[0], P0))
                wk = fd.Function(P0)
                wk.dat.data[:] = wa[:, n - 2].reshape(-1, 2)[_io_order(P0, mesh)]
                J += fd.assemble(fd.inner(pu, wk) * fd.dx(domain=P0.mesh()))
        theirs = ReducedFunctional(J, Control(control)).derivative()
    scale = global_max(mesh.comm, theirs.dat.data_ro)
    err = global_max(mesh.comm, ours.dat.data_ro - theirs.dat.data_ro)
    assert err <= 1e-10 * scale, err / scale
    # every state in the gauge: pressure of zero dof mean
    pressure = model.state_at_end(m).subfunctions[1]
    total = mesh.comm.allreduce(float(np.sum(pressure.dat.data_ro)))
    assert abs(total) <= 1e-10 * max(1.0, global_max(mesh.comm, pressure.dat.data_ro))
    x, y = fd.SpatialCoordinate(mesh)
    dm = fd.Function(m.function_space()).interpolate(fd.cos(2 * x) * y + 0.3)
    dm2 = fd.Function(m.function_space()).interpolate(x * x - y)
    check_derivatives(model, m, dm, dm2, 1e-3)


@pytest.mark.parallel(nprocs=[1, 2])
def test_field_observation_of_a_vector_state_time_series():
    mesh = fd.UnitSquareMesh(4, 4)
    V = fd.VectorFunctionSpace(mesh, "CG", 1)
    u, uo, m, v = fd.Function(V), fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = (fd.inner(u - uo, v) / DT + fd.inner(fd.grad(u), fd.grad(v))) * fd.dx
    obs = FieldObservation(V, channels=2)
    model = TimeSteppingModel(F, u, uo, m, steps=2, dt=DT, observation=obs,
                              bcs=[fd.DirichletBC(V.sub(1), 0, "on_boundary")])
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(V).interpolate(fd.as_vector((x * y, fd.sin(x))))  # a point apart from the model's own m
    noise = FieldGaussianNoise(obs, 0.01)
    data = noise.sample(model(m), seed=2)
    misfit = Misfit(model, noise, data)
    dm = fd.Function(V).interpolate(fd.as_vector((y, x * x)))
    t = taylor_test(misfit, m, dm, derivative=misfit.gradient(m), epsilon0=1e-2)
    assert abs(t.rates1[-1] - 2.0) <= 0.05, str(t)


# ------------------------------------------------------------------- vector-valued parameters
def vector_heat_problem():
    """Linear vector diffusion with the initial velocity as parameter, point observations of both
    components, a vector BiLaplacian prior: a linear-Gaussian problem small enough for dense algebra."""
    from pdeinv.prior import BiLaplacianPrior
    from pdeinv.problem import InverseProblem

    mesh = fd.UnitSquareMesh(3, 3)
    V = fd.VectorFunctionSpace(mesh, "CG", 1)
    u, uo, m, v = fd.Function(V), fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = (fd.inner(u - uo, v) / DT + 0.2 * fd.inner(fd.grad(u), fd.grad(v))) * fd.dx
    obs = PointObservation(V, POINTS, channels=1)
    model = TimeSteppingModel(F, u, uo, m, steps=2, dt=DT, observation=obs, observation_times=[2 * DT],
                              bcs=[fd.DirichletBC(V.sub(0), 0, 1)])
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(V).interpolate(fd.as_vector((x * y, fd.cos(x))))
    noise = GaussianNoise(obs, 0.01)
    data = noise.sample(model(truth), seed=4)
    prior = BiLaplacianPrior(V, gamma=0.05, delta=0.5, mean=fd.as_vector((0.1, -0.1)))
    return InverseProblem(Misfit(model, noise, data), prior), model, noise, data, prior


def test_laplace_on_a_vector_parameter_equals_the_dense_posterior():
    from pdeinv.linalg.arrays import local_values, set_local_values
    from pdeinv.optimize import NewtonCGOptions, newton_cg
    from pdeinv.posterior import LaplaceApproximation

    problem, model, noise, data, prior = vector_heat_problem()
    V = problem.parameter_space
    n = V.dim()
    e = fd.Function(V)
    J = np.zeros((model.observation.n_points, n))
    for i in range(n):
        values = np.zeros(n)
        values[i] = 1.0
        set_local_values(e, values)
        J[:, i] = model.observation.to_array(model.jvp(e, e)).ravel()
    A = prior._A.matrix.petscmat.convert("dense").getDenseArray()
    M = prior._M.matrix.petscmat.convert("dense").getDenseArray()
    R = A @ np.linalg.solve(M, A)
    post = np.linalg.inv(J.T @ J / noise.sigma**2 + R)
    d = model.observation.to_array(data).ravel()
    mean = post @ (J.T @ d / noise.sigma**2 + R @ local_values(prior.mean))
    res = newton_cg(problem, fd.Function(V), options=NewtonCGOptions(forcing=1e-13, max_iterations=1, quiet=True))
    assert np.linalg.norm(local_values(res.m) - mean) <= 1e-8 * np.linalg.norm(mean)
    la = LaplaceApproximation(problem, res.m, rank=n, oversampling=0)
    var = la.pointwise_variance(prior_variance=la.prior_variance(method="exact"))
    assert np.abs(local_values(var) - np.diag(post)).max() <= 1e-8 * np.diag(post).max()


def test_vector_tikhonov_and_prior_refusals():
    from pdeinv.prior import BiLaplacianPrior, TikhonovH1, TikhonovL2

    mesh = fd.UnitSquareMesh(3, 3)
    V = fd.VectorFunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(V).interpolate(fd.as_vector((x, y * y)))
    assert np.isclose(TikhonovL2(V, alpha=2.0)(m), fd.assemble(fd.inner(m, m) * fd.dx), rtol=1e-12)
    assert np.isclose(TikhonovH1(V, alpha=2.0)(m), fd.assemble(fd.inner(fd.grad(m), fd.grad(m)) * fd.dx),
                      rtol=1e-12)
    Z = V * fd.FunctionSpace(mesh, "R", 0)
    with pytest.raises(ValueError, match="mixed space"):
        BiLaplacianPrior(Z, gamma=1.0, delta=1.0)
    with pytest.raises(ValueError, match="Real"):
        BiLaplacianPrior(fd.FunctionSpace(mesh, "R", 0), gamma=1.0, delta=1.0)


@pytest.mark.parallel(nprocs=[1, 2])
def test_points_that_differ_between_ranks_are_refused():
    mesh = fd.UnitSquareMesh(3, 3)
    V = fd.FunctionSpace(mesh, "CG", 1)
    shifted = POINTS + 0.01 * mesh.comm.rank
    if mesh.comm.size == 1:
        PointObservation(V, shifted)  # one rank: nothing to disagree with
        return
    with pytest.raises(ValueError, match="points differ between MPI ranks"):
        PointObservation(V, shifted)
