"""Real time loops (issue #21): costs as ratios to one forward run, against plain Firedrake + pyadjoint on
the same discrete program, measured in one run.  Prints one JSON object.

    .venv/bin/python benchmarks/time_loops.py [--n 48] [--steps 200] [--nonlinear-n 24] [--nonlinear-steps 40]
    mpiexec -n 2 .venv/bin/python benchmarks/time_loops.py

- ``wave``: leapfrog for u_tt = div(c^2 grad u) + f on mass-lumped KMV elements (a diagonal step:
  explicit), the velocity c (P1) the parameter, receivers at every step.  pdeinv's forward, gradient,
  Gauss-Newton action and full Hessian action; pyadjoint's replay, derivative and Hessian of the same
  misfit (its solver a Jacobi preconditioner on the lumped mass: one pointwise scaling per step, exact).
- ``nonlinear``: BDF2 for u_t = div((1 + u^2) e^m grad u) + f (Newton every step), the same, plus the
  factorisations per Gauss-Newton action at a fixed m with and without ``keep_linearisations``.
- ``taped``: the nonlinear heat loop (backward Euler) as a TapedMap returning the time series, its
  gradient against pyadjoint's derivative of the same program (both replaying one tape).

Times are medians of ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from pdeinv._petsc import init_petsc

init_petsc()

import firedrake as fd  # noqa: E402
import numpy as np  # noqa: E402
from firedrake.adjoint import Control, ReducedFunctional  # noqa: E402

from pdeinv._tape import recording  # noqa: E402
from pdeinv.forward.taped import TapedMap  # noqa: E402
from pdeinv.forward.timestepping import TimeSteppingModel  # noqa: E402
from pdeinv.maps import Misfit  # noqa: E402
from pdeinv.noise import GaussianNoise  # noqa: E402
from pdeinv.observation import PointObservation  # noqa: E402

SIGMA = 0.01
TIGHT = {"snes_type": "newtonls", "snes_linesearch_type": "basic", "snes_rtol": 1e-11, "snes_atol": 1e-13,
         "snes_stol": 0.0, "ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}


def timed(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def receivers(k):
    return np.array([(a, b) for a in np.linspace(0.15, 0.85, k) for b in np.linspace(0.15, 0.85, k)])


def wave(n, steps):
    """(model, program(m) -> taped misfit pieces, truth, start point): the leapfrog wave."""
    mesh = fd.UnitSquareMesh(n, n)
    V, Vc = fd.FunctionSpace(mesh, "KMV", 1), fd.FunctionSpace(mesh, "CG", 1)
    dxl, x = fd.dx(scheme="KMV", degree=1), fd.SpatialCoordinate(mesh)
    dt = 0.25 / n  # CFL 0.25 for c ~ 1

    def residual(u, un, unm1, c, v, t):
        a = (np.pi * 15 * (t - dt - 0.05)) ** 2
        f = 100 * (1 - 2 * a) * fd.exp(-a) * fd.exp(-((x[0] - 0.5) ** 2 + (x[1] - 0.3) ** 2) / 0.002)
        return ((u - 2 * un + unm1) / dt**2 * v * dxl + c**2 * fd.inner(fd.grad(un), fd.grad(v)) * fd.dx
                - f * v * fd.dx)

    u, un, unm1, c, v, t = (fd.Function(V), fd.Function(V), fd.Function(V), fd.Function(Vc), fd.TestFunction(V),
                            fd.Constant(0.0))
    obs = PointObservation(V, receivers(4), channels=steps)
    model = TimeSteppingModel(residual(u, un, unm1, c, v, t), u, (un, unm1), c, steps=steps, dt=dt, time=t,
                              initial_condition=0.0, observation=obs)

    def program(m, d):
        # the clock a Function on the real space, which the tape records (a Constant is not taped: a replay
        # would see its last value at every step)
        a, b, uu = fd.Function(V), fd.Function(V), fd.Function(V)
        tt = fd.Function(fd.FunctionSpace(mesh, "R", 0))
        F = fd.replace(residual(uu, a, b, m, fd.TestFunction(V), tt), {uu: fd.TrialFunction(V)})
        solver = fd.LinearVariationalSolver(fd.LinearVariationalProblem(fd.lhs(F), fd.rhs(F), uu),
                                            solver_parameters={"ksp_type": "preonly", "pc_type": "jacobi"})
        return _loop(steps, solver, [(tt, dt)], [(b, a), (a, uu)], uu, obs, d, every=1)

    truth = fd.Function(Vc).interpolate(1.0 + 0.2 * fd.exp(-((x[0] - 0.5) ** 2 + (x[1] - 0.6) ** 2) / 0.02))
    return model, program, truth, fd.Function(Vc).assign(1.0)


def bdf2(n, steps):
    """The BDF2 nonlinear diffusion model and its plain program."""
    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    dt, x = 0.1 / steps, fd.SpatialCoordinate(mesh)
    u0 = fd.sin(fd.pi * x[0]) * fd.sin(fd.pi * x[1])

    def residual(u, un, unm1, m, v):
        return ((1.5 * u - 2 * un + 0.5 * unm1) / dt * v + (1 + u**2) * fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v))
                - 5.0 * v) * fd.dx

    def bcs():
        return [fd.DirichletBC(V, 0.0, "on_boundary")]

    u, un, unm1, m, v = fd.Function(V), fd.Function(V), fd.Function(V), fd.Function(V), fd.TestFunction(V)
    obs = PointObservation(V, receivers(5), channels=steps)
    model = TimeSteppingModel(residual(u, un, unm1, m, v), u, (un, unm1), m, steps=steps, dt=dt, observation=obs,
                              initial_condition=(u0, u0), bcs=bcs(), solver_parameters=TIGHT)

    def program(mm, d):
        a, b, uu = fd.Function(V).interpolate(u0), fd.Function(V).interpolate(u0), fd.Function(V)
        solver = fd.NonlinearVariationalSolver(
            fd.NonlinearVariationalProblem(residual(uu, a, b, mm, fd.TestFunction(V)), uu, bcs=bcs()),
            solver_parameters=TIGHT)
        return _loop(steps, solver, [], [(uu, a), (b, a), (a, uu)], uu, obs, d, every=1, first_guess=True)

    truth = fd.Function(V).interpolate(0.3 * fd.cos(2 * x[0]) * x[1])
    return model, program, truth, fd.Function(V)


def _loop(steps, solver, clocks, shifts, u, obs, d, *, every, first_guess=False):
    """The plain time loop, taped: solve, shift the history, accumulate the misfit at each observation."""
    P0 = fd.FunctionSpace(obs.vom, "DG", 0)
    data = np.asarray(d.dat.data_ro).reshape(-1, obs.channels)
    J, k = 0.0, 0
    for n in range(steps):
        for clock, step in clocks:
            clock.assign((n + 1) * step)
        if first_guess:
            shifts[0][0].assign(shifts[0][1])  # Newton from the previous state, as pdeinv
        solver.solve()
        for dst, src in shifts[1 if first_guess else 0:]:
            dst.assign(src)
        if (n + 1) % every == 0:
            y = fd.assemble(fd.interpolate(u, P0))
            dk = fd.Function(P0)
            dk.dat.data[:] = data[:, k]
            J = J + fd.assemble(0.5 * (y - dk) ** 2 / SIGMA**2 * fd.dx)
            k += 1
    return J


def costs(model, program, truth, m0, repeats, *, gn_factorisations=False):
    Vm = model.parameter_space
    noise = GaussianNoise(model.observation, SIGMA)
    data = noise.sample(model(truth), seed=1)
    misfit = Misfit(model, noise, data)
    x = fd.SpatialCoordinate(Vm.mesh())
    m = fd.Function(Vm).interpolate(m0 + 0.05 * fd.sin(3 * x[0]))
    dm = fd.Function(Vm).interpolate(fd.cos(2 * x[1]))
    points = [fd.Function(Vm).interpolate(m + 1e-3 * k * dm) for k in range(repeats + 1)]
    it = iter(points * 2)
    out = {"state_dofs": model.state_space.dim(), "parameter_dofs": Vm.dim(), "steps": model.steps,
           "diagonal_step": model.diagonal_step}
    out["forward_s"] = forward = timed(lambda: misfit(next(it)), repeats)  # a new m each time
    misfit(m)
    out["gradient_ratio"] = timed(lambda: misfit.gradient(m), repeats) / forward
    out["gn_action_ratio"] = timed(lambda: misfit.gauss_newton_action(m, dm), repeats) / forward
    out["full_hessian_ratio"] = timed(lambda: misfit.hessian_action(m, dm), repeats) / forward
    before = model.counts["factorisations"]
    misfit.gauss_newton_action(m, dm)
    out["factorisations_per_gn_action"] = model.counts["factorisations"] - before
    if gn_factorisations:
        model.keep_linearisations = True
        misfit(points[-1])
        misfit.gradient(points[-1])
        before = model.counts["factorisations"]
        misfit.gauss_newton_action(points[-1], dm)
        out["factorisations_per_gn_action_kept"] = model.counts["factorisations"] - before
        out["gn_action_ratio_kept"] = timed(lambda: misfit.gauss_newton_action(points[-1], dm), repeats) / forward
        model.keep_linearisations = False
    with recording():
        control = m.copy(deepcopy=True)
        rf = ReducedFunctional(program(control, data), Control(control))
    ref = [fd.Function(Vm).interpolate(m + 1e-3 * k * dm) for k in range(1, repeats + 2)]
    its = iter(ref * 2)
    out["pyadjoint_replay_ratio"] = timed(lambda: rf(next(its)), repeats) / forward
    rf(m)
    out["pyadjoint_gradient_ratio"] = timed(lambda: rf.derivative(), repeats) / forward
    out["pyadjoint_hessian_ratio"] = timed(lambda: rf.hessian(dm), repeats) / forward
    g_ref = rf.derivative()
    g = misfit.gradient(m)
    comm = Vm.mesh().comm
    from mpi4py import MPI

    err = comm.allreduce(float(np.max(np.abs(g.dat.data_ro - g_ref.dat.data_ro), initial=0.0)), MPI.MAX)
    out["gradient_agreement"] = err / comm.allreduce(float(np.max(np.abs(g_ref.dat.data_ro), initial=0.0)), MPI.MAX)
    return out


def taped(n, steps, repeats):
    """A TapedMap of a nonlinear heat loop against pyadjoint's derivative of the same program."""
    mesh = fd.UnitSquareMesh(n, n)
    V = fd.FunctionSpace(mesh, "CG", 1)
    dt, x = 0.1 / steps, fd.SpatialCoordinate(mesh)
    obs = PointObservation(V, receivers(5), channels=steps)

    def forward(m):
        u, uo, v = fd.Function(V), fd.Function(V), fd.TestFunction(V)
        F = ((u - uo) / dt * v + (1 + u**2) * fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) - 5.0 * v) * fd.dx
        solver = fd.NonlinearVariationalSolver(
            fd.NonlinearVariationalProblem(F, u, bcs=[fd.DirichletBC(V, 0.0, "on_boundary")]), solver_parameters=TIGHT)
        states = []
        for _ in range(steps):
            solver.solve()
            uo.assign(u)
            states.append(u.copy(deepcopy=True))
        return states

    model = TapedMap(forward, V, obs)
    truth = fd.Function(V).interpolate(0.3 * fd.cos(2 * x[0]) * x[1])
    noise = GaussianNoise(obs, SIGMA)
    data = noise.sample(model(truth), seed=1)
    misfit = Misfit(model, noise, data)
    m = fd.Function(V).interpolate(0.1 * x[1])
    misfit(m)
    tap = timed(lambda: misfit.gradient(m), repeats)
    P0 = fd.FunctionSpace(obs.vom, "DG", 0)
    d = np.asarray(data.dat.data_ro).reshape(-1, steps)
    with recording():
        control = m.copy(deepcopy=True)
        J = 0.0
        for k, y in enumerate(forward(control)):
            dk = fd.Function(P0)
            dk.dat.data[:] = d[:, k]
            J = J + fd.assemble(0.5 * (fd.assemble(fd.interpolate(y, P0)) - dk) ** 2 / SIGMA**2 * fd.dx)
        rf = ReducedFunctional(J, Control(control))
    rf(m)
    plain = timed(lambda: rf.derivative(), repeats)
    return {"steps": steps, "taped_gradient_s": tap, "pyadjoint_gradient_s": plain,
            "taped_over_pyadjoint": tap / plain, "recordings": model.recordings}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--nonlinear-n", type=int, default=24)
    p.add_argument("--nonlinear-steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    res = {"ranks": fd.COMM_WORLD.size}
    res["wave"] = costs(*wave(args.n, args.steps), args.repeats)
    res["nonlinear"] = costs(*bdf2(args.nonlinear_n, args.nonlinear_steps), args.repeats, gn_factorisations=True)
    res["taped"] = taped(args.nonlinear_n, args.nonlinear_steps, args.repeats)
    if fd.COMM_WORLD.rank == 0:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
