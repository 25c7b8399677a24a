r"""The Poisson log-coefficient problem, the standard benchmark of the field.

Model
    :math:`-\nabla\cdot(e^m\nabla u) = f` in :math:`\Omega`, with Dirichlet / Neumann / Robin
    conditions.  The defaults are hIPPYlib's subsurface-flow problem: unit square,
    :math:`u = y` on the bottom (marker 3) and top (marker 4) edges, zero flux on the sides,
    :math:`f = 0`, P2 state, P1 parameter.

Derivatives (discrete, exact)
    With :math:`A(m)` the stiffness operator and :math:`K'[\delta m]u = \int e^m\delta m\,\nabla u\cdot\nabla v`:

    - tangent: :math:`A\,\delta u = -K'[\delta m]\,u`, :math:`J\delta m = B\,\delta u`;
    - adjoint: :math:`A^T\lambda = B^T w`, :math:`J^T w = -\int e^m\,\psi\,\nabla u\cdot\nabla\lambda\,dx`
      for :math:`\psi \in V_m`;
    - second order (full Newton): with :math:`\hat u` the tangent and :math:`A^T\hat\lambda = -K'[\delta m]^T\lambda`,
      :math:`\langle w, F''[\delta m,\psi]\rangle = -\int e^m\psi\,(\delta m\,\nabla u\cdot\nabla\lambda
      + \nabla\hat u\cdot\nabla\lambda + \nabla u\cdot\nabla\hat\lambda)\,dx`.

    :math:`A` is assembled and factorised once per new :math:`m` and reused by both (it is
    symmetric, so the adjoint solve is the same solve).
"""

from __future__ import annotations

from pdeinv.forward._linear import DirichletOperator
from pdeinv.forward.boundary import Dirichlet, as_coefficient, split_boundary_conditions
from pdeinv.maps import ParameterToObservable
from pdeinv.observation import PointObservation

__all__ = ["PoissonModel", "hippylib_boundary"]


def hippylib_boundary(mesh):
    """:math:`u = y` on the bottom and top edges of the unit square (markers 3 and 4)."""
    import firedrake as fd

    y = fd.SpatialCoordinate(mesh)[1]
    return (Dirichlet((3, 4), y),)


class PoissonModel(ParameterToObservable):
    """Map :math:`m \\mapsto (u(x_i))_i` for :math:`-\\nabla\\cdot(e^m\\nabla u) = f`.

    Parameters
    ----------
    mesh : firedrake.MeshGeometry
    observation_points : array_like, shape (P, gdim)
    degree : int
        Lagrange degree of the state (default 2).
    parameter_space : firedrake.FunctionSpace, optional
        Default: P1 on the mesh.
    source : number or UFL expression
        :math:`f` (default 0).
    boundary : sequence of Dirichlet / Neumann / Robin, optional
        Default :func:`hippylib_boundary`.
    solver_parameters : dict, optional
        PETSc options (default: sparse Cholesky in serial, MUMPS in parallel).
    """

    def __init__(self, mesh, *, observation_points, degree: int = 2, parameter_space=None, source=0.0,
                 boundary=None, solver_parameters=None):
        import firedrake as fd

        V = fd.FunctionSpace(mesh, "CG", degree)
        Vm = fd.FunctionSpace(mesh, "CG", 1) if parameter_space is None else parameter_space
        if Vm.mesh() is not mesh:
            raise ValueError("PoissonModel: parameter_space must be on the model's mesh")
        self.state_space = V
        super().__init__(Vm, PointObservation(V, observation_points, channels=1))
        boundary = hippylib_boundary(mesh) if boundary is None else boundary
        bcs, a_bdy, L_bdy = split_boundary_conditions(V, boundary)
        u, v = fd.TrialFunction(V), fd.TestFunction(V)
        self._m = fd.Function(Vm, name="m")
        a = fd.exp(self._m) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
        if a_bdy is not None:
            a = a + a_bdy
        L = as_coefficient(source) * v * fd.dx
        if L_bdy is not None:
            L = L + L_bdy
        self._A = DirichletOperator(a, bcs, solver_parameters=solver_parameters, symmetric=True)
        self._load = fd.assemble(L)
        self._u = fd.Function(V, name="u")
        self._lam = fd.Function(V, name="lambda")
        self._dm = fd.Function(Vm)
        psi = fd.TestFunction(Vm)
        self._dK_u = fd.exp(self._m) * self._dm * fd.inner(fd.grad(self._u), fd.grad(v)) * fd.dx
        self._dK_adj = fd.exp(self._m) * psi * fd.inner(fd.grad(self._u), fd.grad(self._lam)) * fd.dx
        self._rhs = fd.Cofunction(V.dual())
        # second order: uhat (tangent), lhat (second-order adjoint)
        self._uhat = fd.Function(V)
        self._lhat = fd.Function(V)
        self._dK_lam = -fd.exp(self._m) * self._dm * fd.inner(fd.grad(v), fd.grad(self._lam)) * fd.dx
        self._second = -fd.exp(self._m) * psi * (
            self._dm * fd.inner(fd.grad(self._u), fd.grad(self._lam))
            + fd.inner(fd.grad(self._uhat), fd.grad(self._lam))
            + fd.inner(fd.grad(self._u), fd.grad(self._lhat))) * fd.dx

    def _counts(self):
        self.counts["linear_solves"] = self._A.solves
        self.counts["factorisations"] = self._A.factorisations

    def _solve(self, m, prediction):
        self._m.assign(m)
        self._A.reassemble()
        with self._load.dat.vec_ro as load, self._rhs.dat.vec as rhs, self._u.dat.vec_wo as x:
            load.copy(rhs)
            self._A.solve(rhs, x)
        with self._u.dat.vec_ro as x:
            self.observation.observe(x, prediction, 0)
        self._counts()

    def state(self, m):
        """The state :math:`u(m)` (a new Function)."""
        self._linearise(m)
        return self._u.copy(deepcopy=True)

    def _jvp(self, dm):
        import firedrake as fd

        self._dm.assign(dm)
        fd.assemble(-self._dK_u, tensor=self._rhs)
        du = fd.Function(self.state_space)
        with self._rhs.dat.vec as rhs, du.dat.vec_wo as x:
            self._A.solve_homogeneous(rhs, x)
        out = self.observation.zero_data(name="jvp")
        with du.dat.vec_ro as x:
            self.observation.observe(x, out, 0)
        self._counts()
        return out

    def _vjp(self, w):
        import firedrake as fd

        with self._rhs.dat.vec_wo as rhs:
            rhs.zeroEntries()
            self.observation.observe_transpose_add(w, 0, rhs)
        with self._rhs.dat.vec as rhs, self._lam.dat.vec_wo as lam:
            self._A.solve_transpose(rhs, lam)
        out = fd.assemble(-self._dK_adj)
        self._counts()
        return out

    def _second_order_vjp(self, w, dm):
        import firedrake as fd

        self._vjp(w)  # lambda for this w
        self._dm.assign(dm)
        fd.assemble(-self._dK_u, tensor=self._rhs)  # tangent: A uhat = -K'[dm] u
        with self._rhs.dat.vec as rhs, self._uhat.dat.vec_wo as x:
            self._A.solve_homogeneous(rhs, x)
        fd.assemble(self._dK_lam, tensor=self._rhs)  # A^T lhat = -K'[dm]^T lambda
        with self._rhs.dat.vec as rhs, self._lhat.dat.vec_wo as x:
            self._A.solve_transpose(rhs, x)
        out = fd.assemble(self._second)
        self._counts()
        return out
