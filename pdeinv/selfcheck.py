r"""A self-check of the installed stack: Firedrake + PETSc solve correctly and pyadjoint differentiates.

Run it on a new machine or cluster with ``pdeinv selfcheck`` (or ``mpiexec -n N pdeinv selfcheck``).

1. **Convergence.** :math:`-\Delta u = f` on the unit square, :math:`u = 0` on the boundary, with the
   manufactured solution :math:`u = \sin(\pi x)\sin(\pi y)`, :math:`f = 2\pi^2 u`. For P\ :sub:`k`
   elements the :math:`L^2` error decays as :math:`h^{k+1}` (rate 2 for P1).
2. **Adjoint gradient.** :math:`J(m) = \int_\Omega u^2\,dx` with
   :math:`-\nabla\cdot(e^m \nabla u) = 1`, :math:`u = 0` on the boundary; the pyadjoint gradient,
   recorded on a private tape, passes a Taylor test (rate 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdeinv.verify import TaylorResult

__all__ = ["ConvergenceStudy", "SelfCheckResult", "poisson_convergence", "poisson_gradient_taylor",
           "run_selfcheck"]


@dataclass(frozen=True)
class ConvergenceStudy:
    """L2 errors of the manufactured-solution Poisson problem on a sequence of meshes.

    Attributes
    ----------
    n : tuple of int
        Cells per side of each ``UnitSquareMesh``.
    degree : int
        Lagrange degree.
    dofs : tuple of int
        Global number of degrees of freedom per mesh.
    errors : tuple of float
        :math:`\\|u_h - u\\|_{L^2}`.
    rates : tuple of float
        Observed orders :math:`\\log_2(e_{n}/e_{2n})` between consecutive meshes.
    ranks : int
        Size of the meshes' communicator.
    """

    n: tuple[int, ...]
    degree: int
    dofs: tuple[int, ...]
    errors: tuple[float, ...]
    rates: tuple[float, ...]
    ranks: int


@dataclass(frozen=True)
class SelfCheckResult:
    """What :func:`run_selfcheck` measured."""

    ranks: int
    convergence: ConvergenceStudy
    taylor: TaylorResult

    @property
    def passed(self) -> bool:
        k = self.convergence.degree
        return min(self.convergence.rates) > k + 1 - 0.1 and self.taylor.min_rate > 1.9

    def as_dict(self) -> dict:
        c, t = self.convergence, self.taylor
        return {
            "ranks": self.ranks,
            "passed": self.passed,
            "convergence": {"n": c.n, "degree": c.degree, "dofs": c.dofs, "l2_errors": c.errors,
                            "rates": c.rates},
            "taylor": {"epsilons": t.epsilons, "remainder1": t.remainder1, "rates": t.rates1},
        }


def poisson_convergence(ns=(8, 16, 32, 64), *, degree: int = 1, comm=None) -> ConvergenceStudy:
    """Solve the manufactured Poisson problem on ``UnitSquareMesh(n, n)`` for each ``n``.

    Parameters
    ----------
    ns : sequence of int
        Mesh sizes, each twice the previous.
    degree : int
        Lagrange degree of the discrete space.
    comm : mpi4py.MPI.Comm, optional
        Communicator of the meshes (default: Firedrake's default, COMM_WORLD).
    """
    import firedrake as fd

    from pdeinv._tape import no_annotations

    ns = tuple(int(n) for n in ns)
    if len(ns) < 2 or any(b != 2 * a for a, b in zip(ns, ns[1:], strict=False)):
        raise ValueError(f"poisson_convergence: ns must double at each step, got {ns}")
    errors, dofs = [], []
    kw = {} if comm is None else {"comm": comm}
    with no_annotations():
        for n in ns:
            mesh = fd.UnitSquareMesh(n, n, **kw)
            V = fd.FunctionSpace(mesh, "CG", degree)
            x, y = fd.SpatialCoordinate(mesh)
            u_exact = fd.sin(fd.pi * x) * fd.sin(fd.pi * y)
            f = 2 * fd.pi**2 * u_exact
            u, v = fd.TrialFunction(V), fd.TestFunction(V)
            uh = fd.Function(V)
            fd.solve(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx == f * v * fd.dx, uh,
                     bcs=fd.DirichletBC(V, 0, "on_boundary"),
                     solver_parameters={"ksp_type": "preonly", "pc_type": "lu"})
            err2 = fd.assemble((uh - u_exact) ** 2 * fd.dx(degree=degree + 4))
            errors.append(math.sqrt(err2))
            dofs.append(V.dim())
    rates = tuple(math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False))
    return ConvergenceStudy(ns, degree, tuple(dofs), tuple(errors), rates, mesh.comm.size)


def poisson_gradient_taylor(n: int = 8, *, comm=None, steps: int = 4) -> TaylorResult:
    """Taylor test of the pyadjoint gradient of :math:`J(m)=\\int u^2` for the log-coefficient Poisson
    problem (the gradient recorded on a private tape)."""
    import firedrake as fd
    from firedrake.adjoint import Control, ReducedFunctional

    from pdeinv._tape import recording
    from pdeinv.verify import taylor_test

    kw = {} if comm is None else {"comm": comm}
    mesh = fd.UnitSquareMesh(n, n, **kw)
    V = fd.FunctionSpace(mesh, "CG", 1)
    x, y = fd.SpatialCoordinate(mesh)
    m = fd.Function(V, name="m").interpolate(0.3 * fd.sin(2 * fd.pi * x) * y)
    h = fd.Function(V, name="h").interpolate(fd.cos(fd.pi * x) * (1 + y))
    with recording():
        u, v = fd.Function(V), fd.TestFunction(V)
        F = fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - v * fd.dx
        fd.solve(F == 0, u, bcs=fd.DirichletBC(V, 0, "on_boundary"))
        J = fd.assemble(u**2 * fd.dx)
        rf = ReducedFunctional(J, Control(m))
    gradient = rf.derivative()  # a Cofunction in V*
    return taylor_test(rf, m, h, derivative=gradient, steps=steps)


def run_selfcheck(*, comm=None, log=None) -> SelfCheckResult:
    """Run both checks; progress goes to ``log`` (a :class:`pdeinv.log.RankZeroLog`) if given."""
    conv = poisson_convergence(comm=comm)
    if log:
        log.info("Poisson, manufactured solution, P1: L2 error per mesh")
        log.info("     n     dofs       L2 error    rate")
        for k, n in enumerate(conv.n):
            rate = f"{conv.rates[k - 1]:6.3f}" if k else "     -"
            log.info(f"  {n:4d} {conv.dofs[k]:8d}   {conv.errors[k]:12.4e}  {rate}")
    taylor = poisson_gradient_taylor(comm=comm)
    if log:
        log.info("Taylor test of the pyadjoint gradient of J(m) = int u^2, -div(e^m grad u) = 1:")
        log.info(str(taylor))
    return SelfCheckResult(ranks=conv.ranks, convergence=conv, taylor=taylor)
