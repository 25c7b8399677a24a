"""Multistep residuals (leapfrog, BDF2) and initial conditions u_0 = P(m) on TimeSteppingModel: gradient,
tangent and Gauss-Newton action equal pyadjoint's on the same discrete program, Taylor and dot tests."""

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import assert_derivatives_ok, directions, run_checks
from firedrake.adjoint import Control, ReducedFunctional
from mpi4py import MPI
from multistep_models import bdf2_nonlinear_diffusion, leapfrog_wave, mapped_initial_condition

from pdeinv._tape import recording
from pdeinv.checkpointing import Checkpointing
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise

SIGMA = 0.01


def rel_diff(a, b):
    """max |a - b| / max |b| over all ranks (Functions or Cofunctions on one space)."""
    comm = a.function_space().mesh().comm
    err = comm.allreduce(float(np.max(np.abs(a.dat.data_ro - b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    scale = comm.allreduce(float(np.max(np.abs(b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    return err / scale


def channel_functions(obs, d, P0):
    """A data-space Function as one P0 Function per (channel, component), the reference's layout."""
    arr = np.asarray(d.dat.data_ro).reshape(-1, obs.components, obs.channels)
    out = []
    for k in range(obs.channels):
        row = []
        for c in range(obs.components):
            f = fd.Function(P0)
            f.dat.data[:] = arr[:, c, k]
            row.append(f)
        out.append(row)
    return out


def reference(case, m, weights):
    """pyadjoint on the plain program: derivative of sum_k <W_k, B u_k> (weights: per channel and
    component, P0 Functions), and the tape for tangents."""
    with recording() as tape:
        control = m.copy(deepcopy=True)
        observed = case.program(control)
        pairs = [(W, y) for Ws, ys in zip(weights, observed, strict=True) for W, y in zip(Ws, ys, strict=True)]
        J = sum(fd.assemble(W * y * fd.dx) for W, y in pairs)
        grad = ReducedFunctional(J, Control(control)).derivative()
    return grad, tape, control, observed


def tangent(tape, control, observed, dm):
    """pyadjoint's tangent of every observed Function in direction dm (copies)."""
    tape.reset_tlm_values()
    control.block_variable.tlm_value = dm.copy(deepcopy=True)
    tape.evaluate_tlm()
    out = []
    for ys in observed:
        out.append([y.block_variable.tlm_value.copy(deepcopy=True) if y.block_variable.tlm_value is not None
                    else fd.Function(y.function_space()) for y in ys])
    return out


def compare_with_pyadjoint(case):
    model, obs = case.model, case.model.observation
    Vm = model.parameter_space
    noise = GaussianNoise(obs, SIGMA)
    data = noise.sample(model(case.truth), seed=11)
    misfit = Misfit(model, noise, data)
    dm, dm2 = directions(Vm)
    m = fd.Function(Vm).interpolate(case.truth + 0.05 * dm2)
    P0 = fd.FunctionSpace(obs.vom, "DG", 0)
    # misfit gradient: weights (B u_k - d_k) / sigma^2 at the prediction (a linear functional's derivative)
    residual = model(m).copy(deepcopy=True)
    residual.dat.data[:] -= data.dat.data_ro
    residual.dat.data[:] /= SIGMA**2
    grad_ref, tape, control, observed = reference(case, m, channel_functions(obs, residual, P0))
    assert rel_diff(misfit.gradient(m), grad_ref) <= 1e-10
    # tangent, then the Gauss-Newton action J^T Sigma^-1 J dm as the derivative of <Sigma^-1 J dm, B u>
    jdm_ref = tangent(tape, control, observed, dm)
    jdm = channel_functions(obs, model.jvp(m, dm), P0)
    ours = np.concatenate([f.dat.data_ro for fs in jdm for f in fs])
    theirs = np.concatenate([f.dat.data_ro for fs in jdm_ref for f in fs])
    comm = Vm.mesh().comm
    err = comm.allreduce(float(np.max(np.abs(ours - theirs), initial=0.0)), op=MPI.MAX)
    assert err <= 1e-10 * comm.allreduce(float(np.max(np.abs(theirs), initial=0.0)), op=MPI.MAX)
    weights = [[fd.Function(P0).assign(y / SIGMA**2) for y in ys] for ys in jdm_ref]
    gn_ref = reference(case, m, weights)[0]
    assert rel_diff(misfit.gauss_newton_action(m, dm), gn_ref) <= 1e-10
    return misfit, m, dm


@pytest.mark.parallel(nprocs=[1, 2])
def test_leapfrog_wave_equals_pyadjoint_and_is_explicit():
    case = leapfrog_wave()
    model = case.model
    assert model.constant_operator and model.diagonal_step
    compare_with_pyadjoint(case)
    assert model.counts["factorisations"] == 0  # every step a pointwise scaling
    assert_derivatives_ok(run_checks(model, case.truth, GaussianNoise(model.observation, SIGMA)))


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("vector", [False, True], ids=["scalar", "vector"])
def test_bdf2_nonlinear_diffusion_equals_pyadjoint(vector):
    case = bdf2_nonlinear_diffusion(vector=vector)
    assert not case.model.constant_operator
    compare_with_pyadjoint(case)
    assert_derivatives_ok(run_checks(case.model, case.truth, GaussianNoise(case.model.observation, SIGMA)))


@pytest.mark.parallel(nprocs=[1, 2])
def test_multistep_checkpointed_equals_stored():
    mesh = fd.UnitSquareMesh(6, 6)
    case = bdf2_nonlinear_diffusion(steps=7, mesh=mesh)
    stored = case.model
    ckpt = bdf2_nonlinear_diffusion(steps=7, checkpointing=Checkpointing(snapshots_in_ram=2), mesh=mesh).model
    Vm = stored.parameter_space
    m = case.truth
    dm, _ = directions(Vm)
    obs = stored.observation
    values = np.sin(np.arange(obs.n_points * obs.channels) + 1.0).reshape(obs.n_points, -1)
    w = obs.from_array(values)
    w_dual = fd.Cofunction(obs.space.dual())
    w_dual.dat.data[:] = w.dat.data_ro
    w2 = fd.Cofunction(ckpt.observation.space.dual())
    w2.dat.data[:] = w.dat.data_ro
    assert rel_diff(ckpt.vjp(m, w2), stored.vjp(m, w_dual)) <= 1e-12
    a, b = ckpt.observation.to_array(ckpt.jvp(m, dm)), obs.to_array(stored.jvp(m, dm))
    assert np.max(np.abs(a - b)) <= 1e-12 * np.max(np.abs(b))
    assert ckpt.counts["recomputed_steps"] > 0


@pytest.mark.parallel(nprocs=[1, 2])
def test_initial_condition_map_from_a_coarser_space():
    case = mapped_initial_condition()
    compare_with_pyadjoint(case)
    assert_derivatives_ok(run_checks(case.model, case.truth, GaussianNoise(case.model.observation, SIGMA)))


def test_multistep_and_initial_condition_errors():
    from pdeinv.forward.timestepping import TimeSteppingModel
    from pdeinv.observation import PointObservation

    mesh = fd.UnitSquareMesh(3, 3)
    V, Q = fd.FunctionSpace(mesh, "CG", 1), fd.FunctionSpace(mesh, "DG", 0)
    u, a, b, m = (fd.Function(V) for _ in range(4))
    v = fd.TestFunction(V)
    F = ((u - 2 * a + b) * v + m * fd.inner(fd.grad(a), fd.grad(v))) * fd.dx
    obs = PointObservation(V, [[0.5, 0.5]], channels=2)
    kw = dict(steps=2, dt=0.1, observation=obs)
    with pytest.raises(ValueError, match="needs 2 initial states"):
        TimeSteppingModel(F, u, (a, b), m, initial_condition=(0.0, 0.0, 0.0), **kw)
    with pytest.raises(ValueError, match="different Functions"):
        TimeSteppingModel(F, u, (a, a), m, initial_condition=0.0, **kw)
    q = fd.Function(Q)
    G = ((u - a) * v + fd.inner(fd.grad(u), fd.grad(v))) * fd.dx
    with pytest.raises(ValueError, match="discontinuous parameter space"):
        TimeSteppingModel(G, u, a, q, initial_condition=fd.exp(q), **kw)
    with pytest.raises(ValueError, match="initial_condition must be 'parameter'"):
        TimeSteppingModel(G, u, a, m, initial_condition="zero", **kw)
