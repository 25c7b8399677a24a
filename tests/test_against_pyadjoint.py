"""pdeinv's hand-managed adjoints agree with the gradient pyadjoint derives from the same model.

pyadjoint records the plain Firedrake solve and the point observation on a private tape; its
``derivative()`` must match ``Misfit.gradient`` to round-off.
"""

import firedrake as fd
import numpy as np
import pytest
from firedrake.adjoint import Control, ReducedFunctional
from mpi4py import MPI

from pdeinv._tape import recording
from pdeinv.forward.poisson import PoissonModel, hippylib_boundary
from pdeinv.maps import Misfit
from pdeinv.noise import GaussianNoise, synthetic_data

POINTS = np.array([[0.2, 0.3], [0.5, 0.5], [0.7, 0.8], [0.4, 0.6], [0.9, 0.1]])


@pytest.mark.parallel(nprocs=[1, 2])
def test_poisson_gradient_equals_pyadjoint():
    mesh = fd.UnitSquareMesh(8, 8)
    model = PoissonModel(mesh, observation_points=POINTS)
    x, y = fd.SpatialCoordinate(mesh)
    truth = fd.Function(model.parameter_space).interpolate(0.5 * fd.sin(fd.pi * x) * fd.cos(y))
    sigma = 0.01
    noise = GaussianNoise(model.observation, sigma)
    data = synthetic_data(model, truth, noise, seed=5)
    m = fd.Function(model.parameter_space).interpolate(0.2 * x)
    ours = Misfit(model, noise, data).gradient(m)

    # the same problem, written in plain Firedrake and differentiated by pyadjoint
    V, vom = model.state_space, model.observation.vom
    P0 = fd.FunctionSpace(vom, "DG", 0)
    d = fd.Function(P0)
    d.dat.data[:] = data.dat.data_ro.reshape(-1)
    with recording():
        control = m.copy(deepcopy=True)
        u, v = fd.Function(V), fd.TestFunction(V)
        F = fd.exp(control) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
        bcs = [fd.DirichletBC(V, b.value, b.markers) for b in hippylib_boundary(mesh)]
        fd.solve(F == 0, u, bcs=bcs, solver_parameters={"snes_type": "ksponly", "ksp_type": "preonly",
                                                          "pc_type": "lu"})
        r = fd.assemble(fd.interpolate(u, P0)) - d
        J = fd.assemble(0.5 * r * r / sigma**2 * fd.dx)
        theirs = ReducedFunctional(J, Control(control)).derivative()
    diff = ours.dat.data_ro - theirs.dat.data_ro
    scale = mesh.comm.allreduce(float(np.max(np.abs(theirs.dat.data_ro), initial=0.0)), op=MPI.MAX)
    err = mesh.comm.allreduce(float(np.max(np.abs(diff), initial=0.0)), op=MPI.MAX)
    assert err <= 1e-10 * scale, err / scale
