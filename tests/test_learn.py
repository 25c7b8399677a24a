"""Differentiating through the inversion (pdeinv.learn): hyperparameter derivatives, implicit / unrolled /
JFB hypergradients against a dense closed form and finite differences, LISTA-style unrolled FISTA,
spectral estimates against the Laplace eigensolver, parameter-choice rules and bilevel learning."""

import firedrake as fd
import numpy as np
import pytest

from pdeinv.checkpointing import Checkpointing
from pdeinv.forward.examples import grid_points
from pdeinv.forward.poisson import PoissonModel
from pdeinv.forward.stationary import StationaryModel
from pdeinv.learn import (
    GradientDescent,
    HeldOutMisfit,
    HypergradientOptions,
    HyperProblem,
    LearningOptions,
    MaternParameters,
    ProximalGradient,
    ReconstructionError,
    TrainingPair,
    WeightField,
    cosine,
    discrepancy_principle,
    gcv,
    grid_patches,
    hypergradient,
    l_curve,
    learn_hyperparameters,
    mean_loss,
    noise_level,
    prior_variance,
    regularization_weight,
    solve_inner,
)
from pdeinv.learn.unrolled import reverse_through, soft_threshold, soft_threshold_derivatives
from pdeinv.linalg.spectral import lanczos, lipschitz_constant, power_iteration
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.observation import PointObservation
from pdeinv.optimize import FISTAOptions, fista
from pdeinv.posterior import LaplaceApproximation
from pdeinv.prior import L1, BiLaplacianPrior, TikhonovH1
from pdeinv.problem import Hessian
from pdeinv.verify import dual_pairing, taylor_test


def source_problem(n=8, sigma=0.02):
    """-Laplace u = m, u = 0 on the boundary, 16 point sensors: a linear map, so with a Gaussian prior
    m*(theta) is available in closed form."""
    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, m, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - m * v * fd.dx
    obs = PointObservation(V, grid_points(4))
    model = StationaryModel(F, u, m, observation=obs, bcs=[fd.DirichletBC(V, 0, "on_boundary")])
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(V).interpolate(fd.sin(3 * x) * fd.cos(2 * y) + 1)
    noise = GaussianNoise(obs, sigma)
    misfit = Misfit(model, noise, noise.sample(model(truth), seed=1))
    prior = BiLaplacianPrior.from_correlation(V, correlation_length=0.3, variance=1.0)
    return model, misfit, prior, truth


def dense(apply, V):
    """The matrix of a linear V -> V* operator, from its actions on unit vectors (global numbering)."""
    comm = V.mesh().comm
    e = fd.Function(V)
    with e.dat.vec_ro as v:
        n, (lo, hi) = v.getSize(), v.getOwnershipRange()
    cols = []
    for i in range(n):
        with e.dat.vec_wo as v:
            v.set(0.0)
            if lo <= i < hi:
                v.array[i - lo] = 1.0
        c = apply(e)
        with c.dat.vec_ro as cv:
            cols.append(np.concatenate(comm.allgather(cv.array_r.copy())))
    return np.array(cols).T


def gathered(f):
    with f.dat.vec_ro as v:
        return np.concatenate(f.function_space().mesh().comm.allgather(v.array_r.copy()))


@pytest.mark.parallel(nprocs=[1, 2])
def test_hyperparameter_derivatives_taylor_and_transpose():
    """dJ/dtheta and d2J/dtheta dm of every kind of term (weights, noise level, Matérn correlation
    length and variance, patchwise weight field): Taylor rate 2, and mixed_transpose is the transpose."""
    model, misfit, prior, truth = source_problem()
    V = model.parameter_space
    x, y = fd.SpatialCoordinate(V.mesh())
    families = [
        (HyperProblem(noise_level(misfit), prior_variance(prior), regularization_weight(TikhonovH1(V, alpha=1.0))),
         np.array([0.1, 0.2, -3.0])),
        (HyperProblem(misfit, MaternParameters(V),
                      WeightField(V, lambda m, w: 0.5 * w * fd.inner(fd.grad(m), fd.grad(m)) * fd.dx,
                                  grid_patches(V.mesh(), 2))),
         np.array([np.log(0.3), 0.2, -2.0, -1.0, -3.0, -2.5])),
    ]
    m = fd.Function(V).interpolate(truth + 0.3 * x * y)
    dm = fd.Function(V).interpolate(fd.cos(4 * x) * y)
    rng = np.random.default_rng(0)
    for hyper, theta in families:
        h = rng.standard_normal(hyper.size)
        res = taylor_test(lambda th, hyper=hyper: hyper.problem(th).cost(m).total, theta, h,
                          derivative=hyper.partial_theta(m, theta), epsilon0=1e-2)
        assert res.min_rate > 1.95, (hyper.names, res.rates1)
        res = taylor_test(lambda th, hyper=hyper: dual_pairing(hyper.problem(th).gradient(m), dm), theta, h,
                          derivative=hyper.mixed(m, theta, dm), epsilon0=1e-2)
        assert res.min_rate > 1.95, (hyper.names, res.rates1)
        a = dual_pairing(hyper.mixed_transpose(m, theta, h), dm)
        b = float(h @ hyper.mixed(m, theta, dm))
        assert abs(a - b) <= 1e-12 * max(abs(b), 1e-300), (a, b)


@pytest.mark.parallel(nprocs=[1, 2])
def test_implicit_and_unrolled_match_the_closed_form():
    r"""Linear-Gaussian: m*(theta) = (e^{-2a} H_mis + e^{-b} C^{-1})^{-1} e^{-2a} J^T Gamma^{-1} d densely;
    implicit and unrolled-to-convergence hypergradients agree with its exact derivative to 1e-6, and
    JFB points uphill of L with the exact hypergradient (positive cosine, reported)."""
    model, misfit, prior, truth = source_problem()
    V = model.parameter_space
    zero = fd.Function(V)
    Hm = dense(lambda f: misfit.gauss_newton_action(zero, f), V)
    R = dense(prior.precision_action, V)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    M = dense(lambda f: fd.assemble(fd.action(u * v * fd.dx, f)), V)
    b = -gathered(misfit.gradient(zero))  # J^T Gamma^{-1} d
    t = gathered(truth)
    theta = np.array([0.1, 0.2])
    a_, b_ = theta
    H = np.exp(-2 * a_) * Hm + np.exp(-b_) * R
    ms = np.linalg.solve(H, np.exp(-2 * a_) * b)
    dLdm = M @ (ms - t) / (t @ M @ t)
    dms = [-np.linalg.solve(H, -2 * np.exp(-2 * a_) * (Hm @ ms - b)), -np.linalg.solve(H, -np.exp(-b_) * (R @ ms))]
    exact = np.array([dLdm @ d for d in dms])

    hyper = HyperProblem(noise_level(misfit), prior_variance(prior))
    loss = ReconstructionError(truth)
    imp = hypergradient(hyper, loss, theta, method="implicit")
    assert np.max(np.abs(gathered(imp.m) - ms)) < 1e-8 * np.max(np.abs(ms))
    assert np.max(np.abs(imp.gradient - exact)) <= 1e-6 * np.max(np.abs(exact)), (imp.gradient, exact)

    lam = np.sort(np.linalg.eigvals(np.linalg.solve(np.exp(-b_) * R, H)).real)  # spectrum of P H, P = C e^{b}
    gd = GradientDescent(hyper, step=2.0 / (lam[0] + lam[-1]), iterations=250,
                         preconditioner=lambda c: (lambda f: (f.dat.data.__imul__(np.exp(b_)), f)[1])(
                             prior.covariance_action(c)))
    unr = reverse_through(gd, loss, theta)
    assert np.max(np.abs(unr.gradient - exact)) <= 1e-6 * np.max(np.abs(exact)), (unr.gradient, exact)

    jfb = hypergradient(hyper, loss, theta, method="jfb", m_star=imp.m)
    assert jfb.gradient @ exact > 0  # (m* depends on b - 2a only: the two directions agree up to sign)
    print(f"solves: jfb {jfb.solves}, implicit {imp.solves}, unrolled {unr.solves}")
    # JFB costs at most one gradient at m* (forward + adjoint); implicit ~10 CG iterations of 2-solve full
    # Hessian actions (#10: 5 solves each before); unrolled to convergence far more
    assert jfb.solves <= 2 and jfb.solves < imp.solves / 5 and imp.solves < unr.solves / 5


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("sigma", [0.02, 0.002])
def test_jfb_is_a_descent_direction(sigma):
    """JFB (prior-covariance and L2 preconditioners) has a positive inner product with the implicit
    hypergradient for a prior variance + H1 weight, the Matérn (rho, sigma^2) and a 2x2 weight field;
    the cosines are printed (run with -s)."""
    model, misfit, prior, truth = source_problem(sigma=sigma)
    V = model.parameter_space
    loss = ReconstructionError(truth)
    families = {
        "variance + H1 weight": (HyperProblem(misfit, prior_variance(prior),
                                              regularization_weight(TikhonovH1(V, alpha=1.0))), [0.0, -3.0]),
        "Matern (rho, sigma^2)": (HyperProblem(misfit, MaternParameters(V)), [np.log(0.3), 0.0]),
        "variance + 2x2 weight field": (HyperProblem(misfit, prior_variance(prior), WeightField(
            V, lambda m, w: 0.5 * w * fd.inner(fd.grad(m), fd.grad(m)) * fd.dx, grid_patches(V.mesh(), 2))),
            [0.0, -3.0, -3.0, -3.0, -3.0]),
    }
    for name, (hyper, theta) in families.items():
        imp = hypergradient(hyper, loss, theta, method="implicit")
        for pc in ("prior", "identity"):
            jfb = hypergradient(hyper, loss, theta, method="jfb", m_star=imp.m,
                                options=HypergradientOptions(jfb_preconditioner=pc))
            c = cosine(jfb.gradient, imp.gradient)
            print(f"JFB ({pc}) cosine, {name}, sigma {sigma}: {c:.3f}")
            assert c > 0, (name, pc, c)


@pytest.mark.parallel(nprocs=[1, 2])
def test_unrolled_fixed_iterations_is_the_derivative_of_the_program():
    """K = 10 gradient-descent iterations: the unrolled hypergradient is the derivative of the K-iteration
    program (Taylor rate 2); checkpointed (RAM, RAM + disk) and stored unrolling give identical
    gradients; truncation to the last T iterations costs fewer solves."""
    model, misfit, prior, truth = source_problem()
    hyper = HyperProblem(noise_level(misfit), prior_variance(prior))
    loss = ReconstructionError(truth)
    theta = np.array([0.1, 0.2])
    gd = GradientDescent(hyper, step=0.2, iterations=10, preconditioner=prior.covariance_action)
    full = reverse_through(gd, loss, theta)
    res = taylor_test(lambda th: loss(gd.run(th, None), th), theta, np.array([0.3, -0.7]), derivative=full.gradient,
                      epsilon0=1e-2)
    assert res.min_rate > 1.95, res.rates1
    for cp in (Checkpointing(snapshots_in_ram=3), Checkpointing(snapshots_in_ram=1, snapshots_on_disk=2)):
        ck = reverse_through(gd, loss, theta, checkpointing=cp)
        assert np.allclose(ck.gradient, full.gradient, rtol=1e-12, atol=0)  # bitwise serially; MUMPS on 2 ranks
        assert ck.peak_stored_states < full.peak_stored_states
    tr = reverse_through(gd, loss, theta, truncate=3)
    assert tr.solves < full.solves and not np.allclose(tr.gradient, full.gradient)
    assert np.allclose(reverse_through(gd, loss, theta, truncate=10).gradient,
                       full.gradient, rtol=1e-12, atol=0)


@pytest.mark.parallel(nprocs=[1, 2])
def test_implicit_on_a_nonlinear_map_matches_finite_differences():
    """Poisson log-coefficient (nonlinear): the implicit hypergradient with the full Hessian is the
    derivative of theta -> L(m*(theta)) (Taylor rate 2 on converged inner solves)."""
    mesh = fd.UnitSquareMesh(8, 8)
    model = PoissonModel(mesh, observation_points=grid_points(5))
    Vm = model.parameter_space
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(Vm).interpolate(0.5 * fd.sin(2 * fd.pi * x) * y)
    noise = GaussianNoise(model.observation, 0.005)
    misfit = Misfit(model, noise, noise.sample(model(truth), seed=2))
    prior = BiLaplacianPrior.from_correlation(Vm, correlation_length=0.3, variance=0.5)
    hyper = HyperProblem(misfit, prior_variance(prior))
    loss = ReconstructionError(truth)
    theta = np.array([0.3])
    imp = hypergradient(hyper, loss, theta, method="implicit")
    assert imp.inner.converged and imp.hessian is Hessian.FULL  # the default AUTO: this map has F''
    res = taylor_test(lambda th: loss(solve_inner(hyper, th, imp.m).m, th), theta, np.array([1.0]),
                      derivative=imp.gradient, epsilon0=0.1, steps=3)
    assert res.min_rate > 1.9, (res.rates1, res.remainder1)
    jfb = hypergradient(hyper, loss, theta, method="jfb", m_star=imp.m)
    print(f"JFB cosine (Poisson log-coefficient, variance factor): {cosine(jfb.gradient, imp.gradient):.3f}")
    assert cosine(jfb.gradient, imp.gradient) > 0


def test_default_hessian_follows_what_the_map_supports():
    """HypergradientOptions() takes the full Hessian where the map has second derivatives (heat with
    log-conductivity: the time-stepping engine's second-order sweep) and runs with the Gauss-Newton
    Hessian, saying so, where it has none (the hand-written transport sweeps, log-absorption)."""
    from pdeinv.forward.heat import HeatModel
    from pdeinv.forward.transport import TransportModel, boundary_detectors

    mesh = fd.UnitSquareMesh(4, 4)
    heat = HeatModel(mesh, unknown="log_conductivity", end_time=0.02, steps=2, observation_points=grid_points(3))
    transport = TransportModel(mesh, directions=[(1.0, 0.2), (0.3, 1.0)], detectors=boundary_detectors(4),
                               unknown="log_absorption", source=0.5, absorption=1.0)
    for model, expected in ((heat, Hessian.FULL), (transport, Hessian.GAUSS_NEWTON)):
        assert model.second_derivatives == (expected is Hessian.FULL)
        Vm = model.parameter_space
        x, y = fd.SpatialCoordinate(mesh)
        truth = fd.Function(Vm).interpolate(0.3 * x * y)
        noise = GaussianNoise(model.observation, 0.01)
        misfit = Misfit(model, noise, noise.sample(model(truth), seed=2))
        prior = BiLaplacianPrior.from_correlation(Vm, correlation_length=0.3, variance=0.5)
        res = hypergradient(HyperProblem(misfit, prior_variance(prior)), ReconstructionError(truth),
                            np.array([0.3]), method="implicit")
        assert res.hessian is expected and np.all(np.isfinite(res.gradient))
    with pytest.raises(ValueError, match="hessian must be one of"):
        HypergradientOptions(hessian="newton")
    assert HypergradientOptions(hessian="full").hessian is Hessian.FULL


def test_soft_threshold_derivative_convention():
    """dS/du = 1{|u| > t}, dS/dt = -sign(u) 1{|u| > t}, and both 0 at the kink |u| = t."""
    u = np.array([-2.0, -0.5, 0.0, 0.5, 0.5 + 1e-12, 2.0, -0.5])
    du, dt = soft_threshold_derivatives(u, 0.5)
    assert np.array_equal(du, [1, 0, 0, 0, 1, 1, 0])
    assert np.array_equal(dt, [1, 0, 0, 0, -1, -1, 0])
    assert np.array_equal(soft_threshold(u, 0.5), np.sign(u) * np.maximum(np.abs(u) - 0.5, 0))


@pytest.mark.parallel(nprocs=[1, 2])
def test_lista_unrolled_fista():
    """ProximalGradient with constant parameters is FISTA (same iterates as pdeinv.optimize.fista with
    the fixed step 1/L, L from power iteration); its unrolled hypergradient in the 2K LISTA parameters
    has Taylor rate 2; checkpointing gives the identical gradient."""
    model, misfit, prior, truth = source_problem()
    V = model.parameter_space
    x, y = fd.SpatialCoordinate(V.mesh())
    sparse = fd.Function(V).interpolate(fd.conditional((x - 0.3) ** 2 + (y - 0.6) ** 2 < 0.02, 1.0, 0.0))
    data = misfit.noise.sample(model(sparse), seed=4)
    mis = Misfit(model, misfit.noise, data)
    l1 = L1(V, alpha=1e-3)
    L = lipschitz_constant(mis, l1.weights, rtol=1e-12)
    K = 12
    pg = ProximalGradient(mis, l1, iterations=K)
    theta = pg.constant_theta(1.0 / L, 1e-3)
    opts = FISTAOptions(max_iterations=K, initial_lipschitz=L, backtracking=False, quiet=True)
    ref = fista(mis, l1, fd.Function(V), options=opts)
    mK = pg.run(theta, None)
    assert np.max(np.abs(mK.dat.data_ro - ref.m.dat.data_ro)) <= 1e-10 * np.max(np.abs(ref.m.dat.data_ro))
    loss = ReconstructionError(sparse)
    r = reverse_through(pg, loss, theta)
    h = np.random.default_rng(1).standard_normal(2 * K)
    res = taylor_test(lambda th: loss(pg.run(th, None), th), theta, h, derivative=r.gradient, epsilon0=1e-3)
    assert res.min_rate > 1.95, res.rates1
    ck = reverse_through(pg, loss, theta,
                       checkpointing=Checkpointing(snapshots_in_ram=2, snapshots_on_disk=1))
    assert np.allclose(ck.gradient, r.gradient, rtol=1e-12, atol=0)


@pytest.mark.parallel(nprocs=[1, 2])
def test_power_iteration_and_lanczos_match_the_laplace_eigensolver():
    model, misfit, prior, truth = source_problem()
    hyper = HyperProblem(misfit, prior_variance(prior))
    problem = hyper.problem(np.array([0.0]))
    m = solve_inner(hyper, np.array([0.0])).m
    lap = LaplaceApproximation(problem, m, rank=10, oversampling=10)
    top = lap.eigen.eigenvalues[0] if hasattr(lap, "eigen") else lap.eigenvalues[0]
    V = model.parameter_space
    pw = power_iteration(lambda p: misfit.gauss_newton_action(m, p), prior.covariance_action, V, rtol=1e-14,
                         max_iterations=500)
    lz = lanczos(lambda p: misfit.gauss_newton_action(m, p), prior.covariance_action, V, rtol=1e-13)
    assert pw.converged and lz.converged
    assert abs(pw.largest - top) <= 1e-6 * top, (pw.largest, top)
    ev = lap.eigen.eigenvalues if hasattr(lap, "eigen") else lap.eigenvalues
    assert np.allclose(lz.eigenvalues[:3], ev[:3], rtol=1e-8), (lz.eigenvalues[:3], ev[:3])


@pytest.mark.parallel(nprocs=[1, 2])
def test_parameter_choice_rules_and_bilevel_learning():
    """Morozov meets its target; the L-curve corner and the GCV minimum lie inside their grids; the
    learned variance factor has a training loss no larger than any classical choice."""
    model, misfit, prior, truth = source_problem()
    V = model.parameter_space
    hyper = HyperProblem(misfit, prior_variance(prior))
    theta0 = np.array([0.0])
    dp = discrepancy_principle(hyper, theta0, bracket=(-6.0, 6.0))
    assert abs(2 * misfit(dp.m) / dp.curve["target"] - 1) < 1e-2
    grid = np.linspace(-6.0, 6.0, 7)
    lc = l_curve(hyper, theta0, grid=grid)
    assert grid[0] < lc.theta[0] < grid[-1]
    gc = gcv(hyper, theta0, grid=grid, probes=4)
    assert gc.theta[0] == grid[int(np.argmin(gc.curve["gcv"]))]
    assert np.all(np.diff(gc.curve["trace"]) > 0)  # weaker regularization, more effective parameters
    x, y = fd.SpatialCoordinate(V.mesh())
    pairs = []
    for i in range(2):
        tr = fd.Function(V).interpolate(fd.sin((2 + i) * x) * fd.cos((1 + i) * y) + 0.5 * i)
        pairs.append(TrainingPair(tr, misfit.noise.sample(model(tr), seed=10 + i)))
    res = learn_hyperparameters(hyper, pairs, theta0, options=LearningOptions(max_iterations=10))
    classical = [mean_loss(hyper, pairs, c.theta)[0] for c in (dp, lc, gc)]
    assert res.loss <= min(classical) + 1e-9, (res.loss, classical)
    assert res.history[-1]["gradient_norm"] < 1e-3 * res.history[0]["gradient_norm"] + 1e-8


def test_bad_input_is_one_clear_error():
    model, misfit, prior, truth = source_problem(n=4)
    hyper = HyperProblem(misfit, prior_variance(prior))
    loss = ReconstructionError(truth)
    with pytest.raises(ValueError, match="expected 1 hyperparameter"):
        hyper.problem([0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        hyper.problem([np.nan])
    with pytest.raises(ValueError, match="method must be one of"):
        hypergradient(hyper, loss, [0.0], method="magic")
    with pytest.raises(ValueError, match="through an unrolled solver use pdeinv.learn.reverse_through"):
        hypergradient(hyper, loss, [0.0], method="unrolled")
    with pytest.raises(ValueError, match="not a regularization weight"):
        discrepancy_principle(HyperProblem(noise_level(misfit), prior), [0.0])
    with pytest.raises(TypeError, match="Regularizers or regularizer"):
        HyperProblem(misfit, "tikhonov")


@pytest.mark.parallel(nprocs=[1, 2])
def test_held_out_misfit_loss_and_adam():
    """The outer loss may be the misfit of held-out data (no truth): the implicit hypergradient is the
    derivative of theta -> Phi_ho(m*(theta)) (Taylor rate 2); Adam on it lowers the loss."""
    model, misfit, prior, truth = source_problem()
    held_out = Misfit(model, misfit.noise, misfit.noise.sample(model(truth), seed=99))
    hyper = HyperProblem(misfit, prior_variance(prior), regularization_weight(TikhonovH1(model.parameter_space,
                                                                                         alpha=1.0)))
    loss = HeldOutMisfit(held_out)
    theta = np.array([0.5, -3.0])
    imp = hypergradient(hyper, loss, theta, method="implicit")
    res = taylor_test(lambda th: loss(solve_inner(hyper, th, imp.m).m, th), theta, np.array([1.0, -0.5]),
                      derivative=imp.gradient, epsilon0=0.1, steps=3)
    assert res.min_rate > 1.9, (res.rates1, res.remainder1)
    pair = TrainingPair(truth, misfit.data)
    out = learn_hyperparameters(hyper, [pair], theta, loss_factory=lambda p: loss,
                                options=LearningOptions(optimizer="adam", max_iterations=4, learning_rate=0.3))
    assert out.evaluations == 4 and out.loss < out.history[0]["loss"]
