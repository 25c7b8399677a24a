"""Dirichlet conditions on vector-valued states, on both generic engines (regression).

A vector space's PETSc dofs are ``bs*node + component``; the engines once used ``bc.nodes`` as dof
indices, so a no-slip condition on a vector state constrained the wrong dofs: the forward was right
(Firedrake's own solve) but the tangent and adjoint were wrong, with no error (Taylor rate 0.94, dot
test 0.31 on vector Burgers).  Here every engine route (constant operator with lifting, state-dependent
operator, steady affine, steady nonlinear) is run with conditions on the whole vector space, on one
component (``V.sub(0)``) and with non-zero boundary values; the forward is compared with a plain
Firedrake computation, the adjoint with pyadjoint's on the same discrete program, and the Taylor,
dot and Gauss-Newton symmetry tests must pass.
"""

import firedrake as fd
import numpy as np
import pytest
from derivative_checks import run_checks
from firedrake.adjoint import Control, ReducedFunctional
from mpi4py import MPI

from pdeinv._tape import recording
from pdeinv.forward.stationary import StationaryModel
from pdeinv.forward.timestepping import TimeSteppingModel
from pdeinv.noise import GaussianNoise
from pdeinv.observation import IntegralObservation

LU = {"snes_type": "ksponly", "ksp_type": "preonly", "pc_type": "lu"}
NEWTON = {"snes_type": "newtonls", "snes_rtol": 1e-14, "snes_atol": 1e-14, "ksp_type": "preonly",
          "pc_type": "lu"}
DT, STEPS, OBS_TIMES = 0.05, 3, [2 * 0.05, 3 * 0.05]


def bcs_of(V, kind):
    """No-slip on the whole vector space, a condition on one component only, or non-zero values on
    part of the boundary plus a component condition elsewhere (lifting of vector boundary values)."""
    if kind == "whole":
        return [fd.DirichletBC(V, fd.Constant((0.0, 0.0)), "on_boundary")]
    if kind == "component":  # u_0 on the whole boundary, u_1 on one side only (well posed when steady)
        return [fd.DirichletBC(V.sub(0), 0.0, "on_boundary"), fd.DirichletBC(V.sub(1), 0.0, 1)]
    return [fd.DirichletBC(V, fd.Constant((0.3, -0.2)), 1), fd.DirichletBC(V.sub(1), 0.1, (3, 4))]


def functionals(mesh):
    """Weighted integrals of each velocity component (integral observations of a vector state)."""
    x, y = fd.SpatialCoordinate(mesh)
    return {"u0_left": lambda v: (1 - x) * v[0] * fd.dx, "u1_top": lambda v: y * v[1] * fd.dx,
            "mixed": lambda v: (x * y * v[0] - x * v[1]) * fd.dx}


def residual(u, uo, m, v, *, nonlinear, steady):
    """Vector diffusion with log-conductivity m, a body force and (nonlinear) Burgers advection.

    The quadrature degree is fixed: Firedrake estimates one degree per integral, so with the estimate the
    Jacobian (no source term) would integrate exp(m) less accurately than the residual, and Newton's
    first step from zero (the plain-Firedrake reference) would leave a 1e-8 residual."""
    x, y = fd.SpatialCoordinate(u.function_space().mesh())
    dx = fd.dx(degree=4)
    f = fd.as_vector((fd.sin(fd.pi * x), fd.cos(fd.pi * y)))
    F = fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) * dx - fd.inner(f, v) * dx
    if not steady:
        F += fd.inner(u - uo, v) / DT * dx
    if nonlinear:
        F += fd.inner(fd.dot(fd.grad(u), u), v) * dx
    return F


def parameter(mesh):
    M = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    return fd.Function(M, name="m").interpolate(0.3 * fd.sin(fd.pi * x) * y - 0.2)


def build(mesh, kind, *, nonlinear, steady):
    V = fd.VectorFunctionSpace(mesh, "CG", 1)
    m = parameter(mesh)
    u, uo, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = residual(u, uo, m, v, nonlinear=nonlinear, steady=steady)
    if steady:
        obs = IntegralObservation(V, functionals(mesh))
        model = StationaryModel(F, u, m, observation=obs, bcs=bcs_of(V, kind),
                                solver_parameters=NEWTON if nonlinear else None)
    else:
        obs = IntegralObservation(V, functionals(mesh), channels=len(OBS_TIMES))
        model = TimeSteppingModel(F, u, uo, m, steps=STEPS, dt=DT, observation=obs, observation_times=OBS_TIMES,
                                  initial_condition=fd.as_vector((0.1, 0.0)), bcs=bcs_of(V, kind),
                                  solver_parameters=NEWTON if nonlinear else None)
        assert model.constant_operator is not nonlinear  # both engines are exercised
    return model, m


def plain_firedrake(mesh, kind, m, *, nonlinear, steady):
    """The same discrete program in plain Firedrake: the observed values as a list of AdjFloats."""
    V = fd.VectorFunctionSpace(mesh, "CG", 1)
    u, uo, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
    F = residual(u, uo, m, v, nonlinear=nonlinear, steady=steady)
    params = NEWTON if nonlinear else LU
    ells = list(functionals(mesh).values())
    if steady:
        fd.solve(F == 0, u, bcs=bcs_of(V, kind), solver_parameters=params)
        return [[fd.assemble(ell(u)) for ell in ells]]
    uo.interpolate(fd.as_vector((0.1, 0.0)))
    out = []
    for n in range(1, STEPS + 1):
        fd.solve(F == 0, u, bcs=bcs_of(V, kind), solver_parameters=params)
        uo.assign(u)
        if any(abs(n * DT - t) < 1e-12 for t in OBS_TIMES):
            out.append([fd.assemble(ell(u)) for ell in ells])
    return out


def global_max(comm, a):
    return comm.allreduce(float(np.max(np.abs(a), initial=0.0)), op=MPI.MAX)


CASES = [(kind, nonlinear, steady) for steady in (False, True) for nonlinear in (False, True)
         for kind in ("whole", "component", "values")]


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("kind,nonlinear,steady", CASES)
def test_vector_dirichlet_derivatives_equal_pyadjoint(kind, nonlinear, steady):
    mesh = fd.UnitSquareMesh(4, 4)
    model, m = build(mesh, kind, nonlinear=nonlinear, steady=steady)
    obs = model.observation
    predicted = obs.to_array(model(m))  # (functionals, channels)
    weights = np.array([[1.0, -0.5], [0.7, 2.0], [-1.3, 0.4]])[:, :obs.channels]
    w = fd.Cofunction(obs.space.dual(), val=obs.from_array(weights).dat)
    ours = model.vjp(m, w)
    with recording():
        control = m.copy(deepcopy=True)
        values = plain_firedrake(mesh, kind, control, nonlinear=nonlinear, steady=steady)
        J = sum(float(weights[k, c]) * values[c][k] for c in range(obs.channels) for k in range(3))
        theirs = ReducedFunctional(J, Control(control)).derivative()
    reference = np.array([[float(val) for val in channel] for channel in values]).T
    assert np.max(np.abs(predicted - reference)) <= 1e-10 * np.max(np.abs(reference))
    scale = global_max(mesh.comm, theirs.dat.data_ro)
    err = global_max(mesh.comm, ours.dat.data_ro - theirs.dat.data_ro)
    assert err <= 1e-10 * scale, err / scale


@pytest.mark.parallel(nprocs=[1, 2])
@pytest.mark.parametrize("steady", [False, True])
@pytest.mark.parametrize("kind", ["whole", "component"])
def test_vector_dirichlet_taylor_dot_symmetry(kind, steady):
    mesh = fd.UnitSquareMesh(4, 4)
    model, m = build(mesh, kind, nonlinear=True, steady=steady)
    sigma = [[1e-3] * model.observation.channels] * 3
    checks = run_checks(model, m, GaussianNoise(model.observation, sigma))
    assert abs(checks.taylor.rates1[-1] - 2.0) <= 0.05, str(checks.taylor)
    assert checks.dot.relative_error <= 1e-10, checks.dot
    assert checks.symmetry.relative_error <= 1e-10, checks.symmetry


def test_homogeneous_copies_keep_subclass_and_leave_the_original():
    """Tangent and adjoint solve with homogenised *copies* of the user's conditions: a DirichletBC
    subclass with its own dofs (a point-pinning condition) keeps them; the user's value is untouched."""
    from pdeinv.forward._forms import homogeneous_bcs
    from pdeinv.linalg.operator import dirichlet_dofs

    class PinFirstNode(fd.DirichletBC):
        def __init__(self, V, g):
            super().__init__(V, g, "on_boundary")

        @property
        def nodes(self):
            return np.array([0], dtype=np.int32)

    mesh = fd.UnitSquareMesh(3, 3)
    V = fd.VectorFunctionSpace(mesh, "CG", 1)
    bc = PinFirstNode(V.sub(1), 2.0)
    (h,) = homogeneous_bcs([bc])
    assert type(h) is PinFirstNode and list(h.nodes) == [0]
    g = fd.Function(V)
    bc.apply(g)
    assert g.dat.data_ro[0, 1] == 2.0 and g.dat.data_ro[0, 0] == 0.0
    g.assign(1.0)
    h.apply(g)
    assert g.dat.data_ro[0, 1] == 0.0
    assert list(dirichlet_dofs(V, [bc])) == [1]  # node 0, component 1: dof bs*0 + 1
    whole = fd.DirichletBC(V, 0, "on_boundary")
    dofs = dirichlet_dofs(V, [whole])
    assert len(dofs) == 2 * len(whole.nodes) and set(dofs // 2) == set(whole.nodes)
