"""keep_linearisations: the general engine keeps each step's factorised linearisation at the current m, so
Gauss-Newton actions at a fixed point factorise nothing after the first; the derivatives are unchanged."""

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import directions
from mpi4py import MPI
from multistep_models import bdf2_nonlinear_diffusion

from pdeinv.forward.examples import nonlinear_heat
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise

STEPS = 6


def rel_diff(a, b):
    comm = a.function_space().mesh().comm
    err = comm.allreduce(float(np.max(np.abs(a.dat.data_ro - b.dat.data_ro), initial=0.0)), op=MPI.MAX)
    return err / comm.allreduce(float(np.max(np.abs(b.dat.data_ro), initial=0.0)), op=MPI.MAX)


def keeping(model_of):
    plain, kept = model_of(False), model_of(True)
    Vm = plain.parameter_space
    x, y = fd.SpatialCoordinate(Vm.mesh())
    m = fd.Function(Vm).interpolate(0.3 * fd.sin(2 * x) * y)
    noise = GaussianNoise(plain.observation, 0.01)
    data = noise.sample(plain(m), seed=4)
    data2 = kept.observation.from_array(plain.observation.to_array(data))
    return Misfit(plain, noise, data), Misfit(kept, GaussianNoise(kept.observation, 0.01), data2), m


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("model", ["nonlinear_heat", "bdf2_vector"])
def test_gauss_newton_actions_factorise_nothing_after_the_first(model):
    mesh = fd.UnitSquareMesh(6, 6)

    def make(keep):
        if model == "nonlinear_heat":
            built = nonlinear_heat(mesh, steps=STEPS)
        else:
            built = bdf2_nonlinear_diffusion(steps=STEPS, vector=True, mesh=mesh).model
        built.keep_linearisations = keep
        return built

    plain, kept, m = keeping(make)
    dm, dm2 = directions(m.function_space())
    assert rel_diff(kept.gradient(m), plain.gradient(m)) <= 1e-12
    counts = []
    for d in (dm, dm2, dm):
        before = kept.counts["factorisations"]
        gn = kept.gauss_newton_action(m, d)
        counts.append(kept.counts["factorisations"] - before)
        assert rel_diff(gn, plain.gauss_newton_action(m, d)) <= 1e-12
    assert counts == [0, 0, 0]  # the gradient's adjoint sweep already factorised every step at this m
    before = plain.counts["factorisations"]
    plain.gauss_newton_action(m, dm)
    assert plain.counts["factorisations"] - before == 2 * STEPS  # tangent and adjoint sweeps, every step
    # a new point: the kept operators are rebuilt once, then reused again
    m2 = fd.Function(m.function_space()).interpolate(m + 0.1 * dm)
    kept.gradient(m2)
    before = kept.counts["factorisations"]
    kept.gauss_newton_action(m2, dm)
    assert kept.counts["factorisations"] == before
    assert rel_diff(kept.gauss_newton_action(m2, dm2), plain.gauss_newton_action(m2, dm2)) <= 1e-12
