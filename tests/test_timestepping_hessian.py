"""Full (Newton) Hessian actions of TimeSteppingModel: the second-order adjoint through the steps, for
nonlinear, multistep and mapped-initial-condition models — pyadjoint's Hessian on the same discrete
program, Taylor rate 3, stored and checkpointed equal, the fused action equal to its parts."""

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import directions
from firedrake.adjoint import Control, ReducedFunctional
from mpi4py import MPI
from multistep_models import bdf2_nonlinear_diffusion, mapped_initial_condition

from pdeinv._tape import recording
from pdeinv.checkpointing import Checkpointing
from pdeinv.forward.examples import nonlinear_heat
from pdeinv.forward.heat import HeatModel
from pdeinv.maps import Misfit, ParameterToObservable
from pdeinv.noise import GaussianNoise
from pdeinv.verify import taylor_test

SIGMA = 0.01
POINTS = [[0.3, 0.3], [0.6, 0.5], [0.4, 0.8]]


def rel_diff(a, b):
    comm = a.function_space().mesh().comm
    err = comm.allreduce(float(np.max(np.abs(a.dat.data_ro - b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    return err / comm.allreduce(float(np.max(np.abs(b.dat.data_ro), initial=0.0)), op=MPI.MAX)


def setup(model, truth):
    Vm = model.parameter_space
    noise = GaussianNoise(model.observation, SIGMA)
    data = noise.sample(model(truth), seed=5)
    dm, dm2 = directions(Vm)
    m = fd.Function(Vm).interpolate(truth + 0.3 * dm2)
    return Misfit(model, noise, data), noise, data, m, dm


def assert_rate_3(misfit, m, dm, epsilon0=0.05):
    res = taylor_test(misfit, m, dm, derivative=misfit.gradient(m), hessian=misfit.hessian_action(m, dm),
                      epsilon0=epsilon0)
    assert res.min_rate >= 1.9, str(res)
    assert res.min_rate2 >= 2.9, res.rates2


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("make", ["nonlinear_heat", "bdf2_vector", "mapped_start", "heat_log_conductivity"])
def test_full_hessian_taylor_rate_3(make):
    mesh = fd.UnitSquareMesh(6, 6)
    if make == "nonlinear_heat":
        model = nonlinear_heat(mesh, steps=5)
        x, y = fd.SpatialCoordinate(mesh)
        truth = fd.Function(model.parameter_space).interpolate(0.3 * fd.sin(2 * x) * y)
    elif make == "heat_log_conductivity":
        model = HeatModel(mesh, unknown="log_conductivity", end_time=0.1, steps=5, observation_points=POINTS,
                          source=1.0)
        x, y = fd.SpatialCoordinate(mesh)
        truth = fd.Function(model.parameter_space).interpolate(0.3 * fd.sin(2 * x) * y)
    else:
        case = bdf2_nonlinear_diffusion(vector=True, mesh=mesh) if make == "bdf2_vector" else mapped_initial_condition()
        model, truth = case.model, case.truth
    assert model.second_derivatives
    misfit, _, _, m, dm = setup(model, truth)
    assert_rate_3(misfit, m, dm)


@pytest.mark.parallel(nprocs=[1, 2])
def test_full_hessian_stored_checkpointed_fused_equal():
    mesh = fd.UnitSquareMesh(6, 6)
    stored = nonlinear_heat(mesh, steps=9)
    ckpt = nonlinear_heat(mesh, steps=9, checkpointing=Checkpointing(snapshots_in_ram=2, snapshots_on_disk=1))
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(stored.parameter_space).interpolate(0.3 * fd.sin(2 * x) * y)
    misfit, noise, data, m, dm = setup(stored, truth)
    data2 = ckpt.observation.from_array(stored.observation.to_array(data))
    other = Misfit(ckpt, GaussianNoise(ckpt.observation, SIGMA), data2)
    h = misfit.hessian_action(m, dm)
    assert rel_diff(other.hessian_action(m, dm), h) <= 1e-12
    assert ckpt.counts["recomputed_steps"] > 0
    pred = stored.prediction(m)
    w = noise.gradient(pred, data)
    unfused = ParameterToObservable._hessian_vjp(stored, w, lambda j: noise.misfit_hessian(pred, data, j), dm)
    assert rel_diff(stored.hessian_vjp(m, w, lambda j: noise.misfit_hessian(pred, data, j), dm), unfused) <= 1e-11


@pytest.mark.parallel(nprocs=[1, 2])
def test_multistep_full_hessian_equals_pyadjoint():
    case = bdf2_nonlinear_diffusion()
    model, obs = case.model, case.model.observation
    misfit, noise, data, m, dm = setup(model, case.truth)
    P0 = fd.FunctionSpace(obs.vom, "DG", 0)
    d = np.asarray(data.dat.data_ro).reshape(-1, obs.channels)
    with recording():
        control = m.copy(deepcopy=True)
        observed = case.program(control)
        J = 0
        for k, (y,) in enumerate(observed):
            dk = fd.Function(P0)
            dk.dat.data[:] = d[:, k]
            J = J + fd.assemble(0.5 * (y - dk)**2 / SIGMA**2 * fd.dx)
        rf = ReducedFunctional(J, Control(control))
        rf.derivative()
        theirs = rf.hessian(dm)
    assert rel_diff(misfit.hessian_action(m, dm), theirs) <= 1e-10
