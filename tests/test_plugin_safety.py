"""pdeinv inside a user's code: it never records on the user's tape or changes the annotation state,
and a forward solve that fails at a trial point is a failed trial, not a crash or a stale state."""

import io

import firedrake as fd
import numpy as np
import pyadjoint
import pytest
from derivative_checks import directions
from firedrake.adjoint import Control, ReducedFunctional
from pyadjoint.tape import annotate_tape

from pdeinv.forward.examples import grid_points, nonlinear_diffusion
from pdeinv.forward.poisson import PoissonModel
from pdeinv.forward.stationary import StationaryModel
from pdeinv.log import RankZeroLog
from pdeinv.maps import ForwardSolveError, Misfit
from pdeinv.noise import GaussianNoise
from pdeinv.observation import PointObservation
from pdeinv.optimize.newton_cg import NewtonCGOptions, armijo_backtracking, newton_cg
from pdeinv.posterior.laplace import LaplaceApproximation
from pdeinv.prior.bilaplacian import BiLaplacianPrior
from pdeinv.problem import InverseProblem
from pdeinv.verify import dual_pairing


@pytest.mark.parallel(nprocs=[1, 2])
def test_whole_inversion_with_user_annotation_on_leaves_user_tape_unchanged():
    mesh = fd.UnitSquareMesh(8, 8)
    with pyadjoint.set_working_tape() as user_tape:  # the user's own tape (the global one stays clean)
        pyadjoint.continue_annotation()
        try:
            # the user's own adjoint computation, recorded before calling pdeinv
            V = fd.FunctionSpace(mesh, "CG", 1)
            c = fd.Function(V).interpolate(fd.SpatialCoordinate(mesh)[0])
            J = fd.assemble(c * c * fd.dx)

            for taped in (False, True):  # the UFL-derived model and the pyadjoint-taped one
                Vm = fd.FunctionSpace(mesh, "CG", 1)
                x, y = fd.SpatialCoordinate(mesh)
                m_true = fd.Function(Vm).interpolate(0.5 * fd.sin(fd.pi * x) * y)  # the user's code: recorded
                m_start = fd.Function(Vm)
                n_blocks = len(user_tape.get_blocks())
                # from here on only pdeinv runs
                model = nonlinear_diffusion(mesh, taped=taped)
                prior = BiLaplacianPrior.from_correlation(Vm, correlation_length=0.3, variance=0.5)
                noise = GaussianNoise(model.observation, 0.02)
                data = noise.sample(model(m_true), seed=1)
                problem = InverseProblem(Misfit(model, noise, data), prior)
                result = newton_cg(problem, m_start, options=NewtonCGOptions(max_iterations=4, quiet=True))
                assert result.iterations >= 2
                laplace = LaplaceApproximation(problem, result.m, rank=4, oversampling=4)
                assert np.all(np.isfinite(laplace.eigenvalues))
                assert annotate_tape(), "pdeinv switched the user's annotation off"
                assert len(user_tape.get_blocks()) == n_blocks, "pdeinv recorded on the user's tape"

            # and the user's own derivative still works
            dJ = ReducedFunctional(J, Control(c)).derivative()
            assert abs(dJ.dat.data_ro.sum()) > 0
        finally:
            pyadjoint.pause_annotation()


def bratu(mesh):
    """-Δu = e^m e^u, u = 0 on the boundary: no solution for e^m above ~6.8 (constant m)."""
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, m, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - fd.exp(m) * fd.exp(u) * v * fd.dx
    params = {"snes_type": "newtonls", "snes_linesearch_type": "basic", "snes_max_it": 30, "snes_rtol": 1e-11,
              "ksp_type": "preonly", "pc_type": "lu"}
    return StationaryModel(F, u, m, observation=PointObservation(V, grid_points(3)),
                           bcs=[fd.DirichletBC(V, 0.0, "on_boundary")], solver_parameters=params)


def bratu_problem(n, *, m_data, sigma, seed, correlation_length, variance):
    """The Bratu model, data from a constant m_data, a BiLaplacian prior: (model, problem)."""
    mesh = fd.UnitSquareMesh(n, n)
    model = bratu(mesh)
    V = model.parameter_space
    noise = GaussianNoise(model.observation, sigma)
    data = noise.sample(model(fd.Function(V).assign(m_data)), seed=seed)
    prior = BiLaplacianPrior.from_correlation(V, correlation_length=correlation_length, variance=variance)
    return model, InverseProblem(Misfit(model, noise, data), prior)


@pytest.mark.parallel(nprocs=[1, 2])
def test_failing_solve_leaves_no_stale_linearisation():
    mesh = fd.UnitSquareMesh(8, 8)
    model, fresh = bratu(mesh), bratu(mesh)
    V = model.parameter_space
    good = fd.Function(V).assign(0.5)
    bad = fd.Function(V).assign(3.5)
    dm, _ = directions(V)
    noise = GaussianNoise(model.observation, 0.01)
    data = model(good)
    with pytest.raises(ForwardSolveError, match="forward solve failed"):
        model(bad)
    # after the failure: a Hessian action at a good point is that of a model that never failed
    m = fd.Function(V).assign(0.4)
    h = Misfit(model, noise, data).gauss_newton_action(m, dm)
    fresh_data = fresh.observation.from_array(model.observation.to_array(data))  # input order
    h_ref = Misfit(fresh, GaussianNoise(fresh.observation, 0.01), fresh_data).gauss_newton_action(m, dm)
    assert np.allclose(h.dat.data_ro, h_ref.dat.data_ro, rtol=1e-9, atol=1e-12)


@pytest.mark.parallel(nprocs=[1, 2])
def test_failing_trial_point_shortens_the_step_with_a_logged_reason():
    model, problem = bratu_problem(8, m_data=1.0, sigma=0.01, seed=4, correlation_length=0.3, variance=1.0)
    V, prior, mesh = model.parameter_space, problem.prior, model.parameter_space.mesh()
    m = fd.Function(V).assign(0.5)
    cost = problem.cost(m)
    g = problem.gradient(m)
    direction = prior.covariance_action(g)  # the preconditioned steepest-descent direction ...
    mean = float(fd.assemble(direction * fd.dx))
    assert mean < 0  # (the data come from a larger m: descent increases m)
    big = fd.Function(V).assign(direction * (4.0 / mean))  # -C g, scaled so the full step lands near m = 4.5
    slope_big = dual_pairing(g, big)
    assert slope_big < 0
    stream = io.StringIO()
    log = RankZeroLog(mesh.comm, stream=stream)
    found = armijo_backtracking(problem, m, big, cost, slope_big, c1=1e-4, max_backtracks=20, log=log)
    assert found is not None
    alpha, trial, new_cost = found
    assert alpha < 1.0 and new_cost.total < cost.total
    if mesh.comm.rank == 0:
        assert "trial point rejected" in stream.getvalue() and "forward solve failed" in stream.getvalue()


@pytest.mark.parallel(nprocs=[1, 2])
def test_nonfinite_prediction_is_a_solve_failure_and_nonfinite_parameter_a_clear_error():
    mesh = fd.UnitSquareMesh(4, 4)
    model = PoissonModel(mesh, observation_points=grid_points(2))
    V = model.parameter_space
    with pytest.raises(ForwardSolveError, match="NaN or inf|forward solve failed"):  # MUMPS: a factorisation error
        model(fd.Function(V).assign(800.0))  # exp overflows
    nan = fd.Function(V)
    nan.dat.data[:] = np.nan
    with pytest.raises(ValueError, match="parameter m: contains NaN or inf"):
        model(nan)
    assert np.all(np.isfinite(model(fd.Function(V)).dat.data_ro))


def test_newton_cg_runs_through_failed_trials():
    """Newton-CG from a start where full Newton steps overshoot into the no-solution region still
    converges (failed trials only shorten steps)."""
    model, problem = bratu_problem(6, m_data=1.6, sigma=0.001, seed=5, correlation_length=0.5, variance=4.0)
    V, mesh = model.parameter_space, model.parameter_space.mesh()
    stream = io.StringIO()
    result = newton_cg(problem, fd.Function(V).assign(-1.0), options=NewtonCGOptions(max_iterations=15),
                       log=RankZeroLog(mesh.comm, stream=stream))
    assert result.reason != "line search failed", stream.getvalue()
    assert result.cost.total < 1e-3 * problem.cost(fd.Function(V).assign(-1.0)).total
    if mesh.comm.rank == 0:  # the overshooting steps really were rejected, with the solver's reason
        assert "trial point rejected: StationaryModel: forward solve failed" in stream.getvalue()


@pytest.mark.parallel(nprocs=1)  # interactive Ctrl-C is a serial matter: mpiexec turns SIGINT into SIGTERM
def test_ctrl_c_at_random_moments_propagates_and_leaves_the_model_usable():
    """50 SIGINTs at random moments of an inversion with a nonlinear (SNES) model: each one is a
    KeyboardInterrupt (never swallowed as a failed trial, never a PETSc error), and afterwards the model
    solves and its derivatives pass the Taylor and dot tests (before the fix: PETSc error 73, a Vec left
    locked by the SNES, from the second interrupt on)."""
    import os
    import random
    import signal
    import threading
    import time

    from derivative_checks import assert_derivatives_ok, run_checks

    mesh = fd.UnitSquareMesh(6, 6)
    model = nonlinear_diffusion(mesh, points=grid_points(4))
    V = model.parameter_space
    x = fd.SpatialCoordinate(mesh)
    truth = fd.Function(V).interpolate(0.5 * fd.sin(3 * x[0]) * x[1])
    noise = GaussianNoise.relative(model.observation, model(truth), 0.01)
    problem = InverseProblem(Misfit(model, noise, noise.sample(model(truth), seed=1)),
                             BiLaplacianPrior(V, gamma=0.1, delta=1.0))
    options = NewtonCGOptions(quiet=True)
    t0 = time.perf_counter()
    reference = newton_cg(problem, problem.prior.mean, options=options)
    duration = time.perf_counter() - t0
    rng, outcomes = random.Random(3), []
    for _ in range(50):
        timer = threading.Timer(rng.uniform(0.0, duration), os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            newton_cg(problem, problem.prior.mean, options=options)
            timer.join()  # the signal came after the run (or exactly as it ended)
            outcomes.append("finished")
        except KeyboardInterrupt:
            outcomes.append("interrupted")
        except Exception as e:  # what the fix removes: a PETSc error, a swallowed interrupt
            outcomes.append(f"{type(e).__name__}: {e}"[:200])
        finally:
            timer.cancel()
            timer.join()
            time.sleep(0.01)  # a late signal is delivered here, not in the next run
    faults = [o for o in outcomes if o not in ("finished", "interrupted")]
    assert not faults and outcomes.count("interrupted") >= 30, outcomes
    again = newton_cg(problem, problem.prior.mean, options=options)
    # the nonlinear solves start from the last state: equal to the Newton tolerance, not to round-off
    assert abs(again.cost.total - reference.cost.total) <= 1e-6 * reference.cost.total
    assert_derivatives_ok(run_checks(model, truth, noise))


def test_petsc_errors_that_are_not_solver_failures_are_not_rejected_trials():
    """Only numerical failures of a solve (zero pivot, not converged, ...) count as a failed trial point;
    a Vec in the wrong state (73), out of memory (55) or a Python exception inside a PETSc callback (101)
    propagate."""
    from petsc4py import PETSc

    from pdeinv.maps import _is_solver_failure

    assert all(_is_solver_failure(PETSc.Error(code)) for code in (71, 72, 81, 82, 91))
    assert not any(_is_solver_failure(PETSc.Error(code)) for code in (55, 73, 101))
    wrapped = PETSc.Error(101)
    wrapped.__context__ = fd.ConvergenceError("diverged")
    assert _is_solver_failure(wrapped)
    wrapped.__context__ = KeyboardInterrupt()
    assert not _is_solver_failure(wrapped)


def test_the_solvers_take_declared_types_only():
    """InverseProblem, LaplaceApproximation and fista name the type they expected instead of failing deep
    inside on a missing attribute (no duck-typed protocols: pdeinv.maps.MisfitTerm, pdeinv.prior.Regularizer)."""
    import firedrake as fd

    from pdeinv.maps import MisfitTerm
    from pdeinv.optimize.proximal import fista
    from pdeinv.posterior import LaplaceApproximation
    from pdeinv.prior import L1, BiLaplacianPrior
    from pdeinv.problem import InverseProblem

    V = fd.FunctionSpace(fd.UnitSquareMesh(4, 4), "CG", 1)
    prior = BiLaplacianPrior.from_correlation(V, correlation_length=0.3, variance=1.0)

    class Quadratic(MisfitTerm):  # a user's own data term: Φ(m) = ½‖m‖² (mass-weighted)
        parameter_space = V

        def __call__(self, m):
            return 0.5 * fd.assemble(m * m * fd.dx)

        def gradient(self, m):
            return fd.assemble(fd.inner(m, fd.TestFunction(V)) * fd.dx)

        def gauss_newton_action(self, m, dm):
            return self.gradient(dm)

    problem = InverseProblem(Quadratic(), prior)
    m = fd.Function(V).assign(1.0)
    assert abs(problem.cost(m).misfit - 0.5) < 1e-12 and not problem.full_hessian_available
    assert problem.counts == {} and len(problem.hessian_action_block(m, [m, m])) == 2
    with pytest.raises(TypeError, match="MisfitTerm"):
        InverseProblem(object(), prior)
    with pytest.raises(TypeError, match="Regularizer"):
        InverseProblem(Quadratic(), object())
    with pytest.raises(TypeError, match="InverseProblem"):
        LaplaceApproximation(object(), m, rank=2)
    with pytest.raises(TypeError, match="MisfitTerm or InverseProblem"):
        fista(lambda m: 0.0, L1(V, alpha=1.0), m)
