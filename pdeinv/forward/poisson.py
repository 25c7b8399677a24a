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

Implementation
    A declaration on the generic engine :class:`~pdeinv.forward.stationary.StationaryModel`: the
    residual :math:`F(u, m; v) = \int e^m\nabla u\cdot\nabla v\,dx + (\text{Robin}) - \int f v\,dx
    - (\text{Neumann})`, from which UFL derives all of the above (the residual is affine in
    :math:`u`, so the forward solve is the one factorised operator the derivatives reuse).
"""

from __future__ import annotations

from pdeinv.forward.boundary import Dirichlet, as_coefficient, split_boundary_conditions
from pdeinv.forward.stationary import StationaryModel
from pdeinv.observation import PointObservation

__all__ = ["PoissonModel", "hippylib_boundary"]


def hippylib_boundary(mesh):
    """:math:`u = y` on the bottom and top edges of the unit square (markers 3 and 4)."""
    import firedrake as fd

    y = fd.SpatialCoordinate(mesh)[1]
    return (Dirichlet((3, 4), y),)


class PoissonModel(StationaryModel):
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
        boundary = hippylib_boundary(mesh) if boundary is None else boundary
        bcs, a_bdy, L_bdy = split_boundary_conditions(V, boundary)
        u, m, v = fd.Function(V, name="u"), fd.Function(Vm, name="m"), fd.TestFunction(V)
        F = fd.exp(m) * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx - as_coefficient(source) * v * fd.dx
        if a_bdy is not None:
            F = F + fd.action(a_bdy, u)
        if L_bdy is not None:
            F = F - L_bdy
        super().__init__(F, u, m, observation=PointObservation(V, observation_points, channels=1), bcs=bcs,
                         solver_parameters=solver_parameters)
