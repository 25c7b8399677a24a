r"""Tomography-like transport: absorption and emission along several directions.

Model, for each direction :math:`\omega_k` (:math:`k = 1..K`), an independent experiment:

.. math::

    \omega_k\cdot\nabla\psi_k + \mu\,\psi_k = q \quad\text{in }\Omega, \qquad
    \psi_k = g \quad\text{on } \Gamma_-(\omega_k) = \{x\in\partial\Omega: \omega_k\cdot n < 0\}.

Discretisation: upwind discontinuous Galerkin of degree :math:`p`; for test functions :math:`v`,

.. math::

    a_k(\psi, v) = \int_\Omega (\mu\psi v - \psi\,\omega_k\cdot\nabla v)\,dx
      + \int_{\mathcal F_i} [\![v]\!]\,\{\omega_k\cdot n\,\psi\}_{\text{up}}\,dS
      + \int_{\partial\Omega} (\omega_k\cdot n)^+ \psi v\,ds,
    \qquad
    \ell_k(v) = \int_\Omega q v\,dx - \int_{\partial\Omega} (\omega_k\cdot n)^- g v\,ds .

Parameter (``unknown=``, a :class:`TransportUnknown`): ``"log_absorption"`` (:math:`\mu = e^m`, positive by
construction) or ``"source"``
(:math:`q = m`, emission tomography).

Data: :math:`\psi_k` at detector points on the boundary, for every direction: a sinogram of shape
(detectors, directions).  A detector observes direction :math:`k` only if it lies on the outflow
boundary of :math:`\omega_k`; the other entries are masked out (:class:`PointObservation` mask).

Derivatives: tangent :math:`A_k\delta\psi_k = -\int e^m\delta m\,\psi_k v` (absorption) or
:math:`\int\delta m\, v` (source); adjoint :math:`A_k^T\lambda_k = B^T w_k`, then
:math:`J^T w = -\sum_k \int e^m\chi\,\psi_k\lambda_k` or :math:`\sum_k\int\chi\,\lambda_k`.
Each :math:`A_k` (non-symmetric) is factorised once per new :math:`m` (once in all for the source)
and reused for the tangent and, transposed, the adjoint solves.

Why these sweeps are written here and not declared on
:class:`~pdeinv.forward.stationary.StationaryModel`: the model is :math:`K` independent steady
problems sharing one parameter, observed in :math:`K` channels of one sinogram with a detector mask.
A ``StationaryModel`` is one residual and one channel; :math:`K` of them would be a sum of misfits
over experiments — :class:`pdeinv.ensemble.EnsembleMisfit`, which the tomography case uses to split
the directions over ``firedrake.Ensemble`` members — but one map keeps the K factorisations, the mask
and the sinogram's channels together on one communicator.
The derivative formulas above are the ones UFL derives from :math:`a_k`, checked by the same Taylor
and dot tests.
"""

from __future__ import annotations

import numpy as np

from pdeinv._checks import Choice, renamed_choice
from pdeinv.forward.boundary import as_coefficient
from pdeinv.linalg.operator import DirichletOperator
from pdeinv.maps import ParameterToObservable
from pdeinv.observation import PointObservation

__all__ = ["TransportModel", "TransportUnknown", "TRANSPORT_PARAMETERS", "boundary_detectors", "outflow_mask"]

class TransportUnknown(Choice):
    """What the parameter :math:`m` of a :class:`TransportModel` is (strings accepted)."""

    LOG_ABSORPTION = "log_absorption"
    SOURCE = "source"


TRANSPORT_PARAMETERS = tuple(u.value for u in TransportUnknown)


def boundary_detectors(n_per_side: int):
    """Detector points evenly spaced along the boundary of the unit square (corners excluded)."""
    if n_per_side < 1:
        raise ValueError(f"boundary_detectors: n_per_side must be >= 1, got {n_per_side}")
    s = (np.arange(n_per_side) + 0.5) / n_per_side
    zero, one = np.zeros_like(s), np.ones_like(s)
    return np.concatenate([np.c_[s, zero], np.c_[one, s], np.c_[s, one], np.c_[zero, s]])


def outflow_mask(mesh, points, directions, *, step: float = 1e-6):
    """(points, directions) bool array: True where point :math:`x` is on the outflow boundary of
    :math:`\\omega`, i.e. :math:`x - \\epsilon\\omega` is inside the mesh and :math:`x + \\epsilon\\omega` is not."""
    from mpi4py import MPI

    def inside(p):
        return mesh.locate_cell(p, tolerance=1e-12) is not None

    local = np.zeros((len(points), len(directions)), dtype=np.int32)
    for i, x in enumerate(points):
        for k, w in enumerate(directions):
            w = np.asarray(w) / np.linalg.norm(w)
            local[i, k] = 2 * inside(x - step * w) + inside(x + step * w)
    # combine over ranks (each rank sees its own cells): bit 2 "behind is inside", bit 1 "ahead is inside"
    glob = np.zeros_like(local)
    mesh.comm.Allreduce(local, glob, op=MPI.BOR)
    return (glob & 2 > 0) & (glob & 1 == 0)


def _reject_detectors_on_vertices(mesh, points, rtol=1e-9):
    """A DG field jumps across cells, so its value at a mesh vertex depends on which cell is asked
    (and so on the partition): refuse detectors that sit on a vertex."""
    from mpi4py import MPI
    from scipy.spatial import cKDTree

    coords = mesh.coordinates.dat.data_ro_with_halos.reshape(-1, points.shape[1])
    scale = rtol * max(1.0, float(np.max(np.abs(points))))
    dist, _ = cKDTree(coords).query(points) if len(coords) else (np.full(len(points), np.inf), None)
    on_vertex = np.zeros(len(points), dtype=np.int32)
    mesh.comm.Allreduce((dist <= scale).astype(np.int32), on_vertex, op=MPI.MAX)
    bad = np.flatnonzero(on_vertex)
    if len(bad):
        listed = ", ".join(f"#{i} {tuple(float(c) for c in points[i])}" for i in bad[:5])
        raise ValueError(f"TransportModel: {len(bad)} detector(s) lie on mesh vertices, where the DG "
                         f"solution is two-valued: {listed}; move them off the vertices")


def _unit_directions(directions, gdim) -> np.ndarray:
    directions = np.asarray(directions, dtype=float)
    if directions.ndim != 2 or directions.shape[1] != gdim or len(directions) == 0:
        raise ValueError(f"TransportModel: directions must have shape (K, {gdim}), got {directions.shape}")
    norms = np.linalg.norm(directions, axis=1)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError("TransportModel: directions must be finite and non-zero")
    return directions / norms[:, None]


class TransportModel(ParameterToObservable):
    """Multi-direction steady transport map :math:`m \\mapsto (\\psi_k(x_i))_{i,k}`.

    Parameters
    ----------
    mesh : firedrake.MeshGeometry
    directions : array_like, shape (K, gdim)
        Directions :math:`\\omega_k` (normalised internally).
    detectors : array_like, shape (P, gdim)
        Points on the boundary.
    unknown : TransportUnknown or {"log_absorption", "source"}
        What :math:`m` is (formerly ``parameter=``, still accepted with a DeprecationWarning).
    degree : int
        DG degree of :math:`\\psi` (default 1).
    parameter_space : firedrake.FunctionSpace, optional
        Default: P1 on the mesh.
    absorption, source, inflow : number or UFL expression
        The fixed :math:`\\mu`, :math:`q` (whichever is not the parameter) and the inflow value :math:`g`.
    solver_parameters : dict, optional
        PETSc options (default: sparse LU in serial, MUMPS in parallel).
    """

    def __init__(self, mesh, *, directions, detectors, unknown: TransportUnknown | None = None, degree: int = 1,
                 parameter_space=None, absorption=1.0, source=0.0, inflow=1.0, solver_parameters=None,
                 parameter=None):
        import firedrake as fd

        unknown = renamed_choice(TransportUnknown, unknown, parameter, "TransportModel", "unknown", "parameter")
        gdim = mesh.geometric_dimension
        self.directions = _unit_directions(directions, gdim)
        self.unknown = unknown
        V = fd.FunctionSpace(mesh, "DG", degree)
        Vm = fd.FunctionSpace(mesh, "CG", 1) if parameter_space is None else parameter_space
        if Vm.mesh() is not mesh:
            raise ValueError("TransportModel: parameter_space must be on the model's mesh")
        self.state_space = V
        detectors = np.asarray(detectors, dtype=float)
        if detectors.ndim == 2 and detectors.shape[1] == gdim:
            _reject_detectors_on_vertices(mesh, detectors)
            mask = outflow_mask(mesh, detectors, self.directions)
        else:
            mask = None  # PointObservation reports the shape error
        observation = PointObservation(V, detectors, channels=len(self.directions), mask=mask)
        super().__init__(Vm, observation)
        self.is_linear = unknown is TransportUnknown.SOURCE  # F'' = 0: full Newton = Gauss-Newton

        self._m = fd.Function(Vm, name="m")
        mu = fd.exp(self._m) if unknown is TransportUnknown.LOG_ABSORPTION else absorption
        q = self._m if unknown is TransportUnknown.SOURCE else as_coefficient(source)
        psi, v = fd.TrialFunction(V), fd.TestFunction(V)
        n = fd.FacetNormal(mesh)
        self._ops, self._loads = [], []
        for omega in self.directions:
            w = fd.as_vector([float(c) for c in omega])
            wn = 0.5 * (fd.dot(w, n) + abs(fd.dot(w, n)))  # (w.n)^+
            a = ((mu * psi * v - psi * fd.dot(w, fd.grad(v))) * fd.dx
                 + (v("+") - v("-")) * (wn("+") * psi("+") - wn("-") * psi("-")) * fd.dS
                 + wn * psi * v * fd.ds)
            L = q * v * fd.dx - (fd.dot(w, n) - wn) * as_coefficient(inflow) * v * fd.ds
            self._ops.append(DirichletOperator(a, (), solver_parameters=solver_parameters))
            self._loads.append(L)
        self.linear_solver = self._ops[0].solver_parameters
        self._load = fd.Cofunction(V.dual())
        self._states = [fd.Function(V, name=f"psi_{k}") for k in range(len(self.directions))]
        self._lam = fd.Function(V)
        self._dm = fd.Function(Vm)
        chi = fd.TestFunction(Vm)
        self._psi = fd.Function(V)  # the state the derivative forms refer to
        if unknown is TransportUnknown.LOG_ABSORPTION:
            self._tangent_form = -fd.exp(self._m) * self._dm * self._psi * v * fd.dx
            self._adjoint_form = -fd.exp(self._m) * chi * self._psi * self._lam * fd.dx
        else:
            self._tangent_form = self._dm * v * fd.dx
            self._adjoint_form = chi * self._lam * fd.dx
        self._rhs = fd.Cofunction(V.dual())
        self._assembled_loads = None

    @property
    def n_directions(self) -> int:
        return len(self.directions)

    def _counts(self):
        self.counts["linear_solves"] = sum(op.solves for op in self._ops)
        self.counts["factorisations"] = sum(op.factorisations for op in self._ops)
        self.counts["krylov_iterations"] = sum(op.iterations for op in self._ops)

    def _solve(self, m, prediction):
        import firedrake as fd

        self._m.assign(m)
        first = self._assembled_loads is None
        if first:
            self._assembled_loads = [fd.Cofunction(self.state_space.dual()) for _ in self._loads]
        for k, (op, L) in enumerate(zip(self._ops, self._loads, strict=True)):
            if self.unknown is TransportUnknown.LOG_ABSORPTION:
                op.reassemble()  # the operator depends on mu = e^m
            if self.unknown is TransportUnknown.SOURCE or first:
                fd.assemble(L, tensor=self._assembled_loads[k])
            with self._assembled_loads[k].dat.vec_ro as load, self._rhs.dat.vec as rhs, \
                    self._states[k].dat.vec_wo as x:
                load.copy(rhs)
                op.solve(rhs, x)
            with self._states[k].dat.vec_ro as x:
                self.observation.observe(x, prediction, k)
        self._counts()

    def states(self, m):
        """The fields :math:`\\psi_k(m)`, one new Function per direction."""
        self._linearise(m)
        return [s.copy(deepcopy=True) for s in self._states]

    def _jvp(self, dm):
        import firedrake as fd

        self._dm.assign(dm)
        out = self.observation.zero_data(name="jvp")
        dpsi = fd.Function(self.state_space)
        for k, op in enumerate(self._ops):
            self._psi.assign(self._states[k])
            fd.assemble(self._tangent_form, tensor=self._rhs)
            with self._rhs.dat.vec as rhs, dpsi.dat.vec_wo as x:
                op.solve_homogeneous(rhs, x)
            with dpsi.dat.vec_ro as x:
                self.observation.observe(x, out, k)
        self._counts()
        return out

    def _vjp(self, w):
        import firedrake as fd

        result = fd.Cofunction(self.parameter_space.dual(), name="vjp")
        tmp = fd.Cofunction(self.parameter_space.dual())
        for k, op in enumerate(self._ops):
            with self._rhs.dat.vec_wo as rhs:
                rhs.zeroEntries()
                self.observation.observe_transpose_add(w, k, rhs)
            with self._rhs.dat.vec as rhs, self._lam.dat.vec_wo as lam:
                op.solve_transpose(rhs, lam)
            self._psi.assign(self._states[k])
            fd.assemble(self._adjoint_form, tensor=tmp)
            result.dat.data[:] += tmp.dat.data_ro
        self._counts()
        return result
