r"""Observation operators: point values (via Firedrake's VertexOnlyMesh), whole fields, and integrals of a state.

An observation of a state :math:`u \in V` at points :math:`x_1, \dots, x_N` is the linear map
:math:`B u = (u(x_1), \dots, u(x_N))`.  pdeinv represents observed data as a ``Function`` on a
*data space*: a vector-valued P0 space on the VertexOnlyMesh with one component per *channel*
(observation time for the heat model, direction for transport, a single channel for a steady model).
So a time series at :math:`N` points and :math:`T` times is one Function with values of shape
:math:`(N, T)`, and data-space inner products are plain sums over points and channels.

:math:`B` is assembled once as a sparse interpolation matrix (PETSc Mat) and applied by
matrix-vector products; its transpose gives :math:`B^T` exactly, which the adjoint sweeps use.

Ordering across ranks
    The VertexOnlyMesh distributes points over the ranks that own them.  :meth:`to_array` and
    :meth:`from_array` convert to and from NumPy arrays in the *input* order (the order the points
    were given), identical on every rank and for any number of ranks.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import numpy as np

from pdeinv._tape import unannotated_methods
from pdeinv.linalg.arrays import root_space, subspace_indices

__all__ = ["Observation", "ObservedPart", "PointObservation", "FieldObservation", "IntegralObservation",
           "ObservationPointsOutsideMesh"]


def mesh_of(V):
    """The mesh of a space; for a mixed space on one mesh, that mesh (not Firedrake's MeshSequence)."""
    from ufl.domain import MeshSequence

    mesh = V.mesh()
    return mesh.unique() if isinstance(mesh, MeshSequence) else mesh


class ObservationPointsOutsideMesh(ValueError):
    """Some observation points do not lie in the mesh."""


class ObservedPart:
    """The part of a state an observation sees: the whole state, one sub-field of a mixed state
    (``Z.sub(1)``), one component of a vector state (``V.sub(0)``) or a component of a sub-field.

    ``space`` is the observed part as a space of its own (collapsed), ``state_space`` the model's state
    space.  :meth:`gather` and :meth:`scatter_add` move values between the state's PETSc Vec and a Vec
    of ``space``.  The local indices come from Firedrake's own dof maps (a numbering written into the
    sub-Function and read back from the state's Vec), so block sizes, mixed layouts and partitions
    need no index arithmetic here (:func:`~pdeinv.linalg.arrays.subspace_indices`).
    """

    def __init__(self, space):
        import firedrake as fd

        self.state_space = root_space(space)
        self.whole = space.parent is None
        self.space = space if self.whole else space.collapse()
        self.index = None
        if self.whole:
            return
        self.index = subspace_indices(space)
        with fd.Function(self.state_space).dat.vec_ro as x:
            self._state_vec = x.duplicate()
        with fd.Function(self.space).dat.vec_ro as x:
            self._vec = x.duplicate()

    def gather(self, u_vec):
        """The observed part of a state Vec, as a Vec of :attr:`space` (a work Vec; not a copy for the
        whole state)."""
        if self.whole:
            return u_vec
        self._vec.array = u_vec.array_r[self.index]
        return self._vec

    def scatter_add(self, w_vec, out_vec) -> None:
        """Add a Vec of :attr:`space` into the observed part of the state-layout Vec ``out_vec``."""
        if self.whole:
            out_vec.axpy(1.0, w_vec)
            return
        out_vec.getArray()[self.index] += w_vec.array_r

    def rows(self, arr):
        """The observed rows of a local (state layout) array."""
        return arr if self.whole else arr[self.index]

    def dense(self, U):
        """The observed rows of a dense PETSc Mat in state layout, as a dense Mat in :attr:`space` layout."""
        if self.whole:
            return U
        return _dense_from_array(self.rows(U.getDenseArray(readonly=True)), self._vec)

    def embed(self, T):
        """A dense PETSc Mat in :attr:`space` layout as one in state layout (zero rows elsewhere)."""
        if self.whole:
            return T
        arr = T.getDenseArray(readonly=True)
        full = np.zeros((self._state_vec.getLocalSize(), arr.shape[1]))
        full[self.index] = arr
        return _dense_from_array(full, self._state_vec)


def _dense_from_array(arr, like_vec):
    """A dense PETSc Mat whose local rows are ``arr``, rows distributed like ``like_vec``."""
    from petsc4py import PETSc

    n_local, n = like_vec.getLocalSize(), like_vec.getSize()
    X = PETSc.Mat().createDense(((n_local, n), (PETSc.DECIDE, arr.shape[1])), comm=like_vec.getComm())
    X.setUp()
    X.getDenseArray()[:] = arr
    X.assemble()
    return X


# B and B^T work on PETSc Vecs and run inside the maps' own unannotated methods, once per observed time
# step: not wrapped again (the hot path); construction and the NumPy conversions are.
_HOT = ("observe", "observe_transpose_add", "observe_block", "transpose_block")


class Observation(ABC):
    r"""An observation operator :math:`B: V \to D` from a state space to a data space: what a model needs.

    The models (:class:`~pdeinv.forward.stationary.StationaryModel`,
    :class:`~pdeinv.forward.timestepping.TimeSteppingModel`, the built-in ones) accept any subclass.

    A subclass **must** set

    ``state_space``
        The model's state space (the *whole* space, also for an observation of a sub-field or a component:
        the models check it against their state).
    ``space``
        The data space :math:`D` (data are Functions on it, misfit gradients Cofunctions on its dual).
    ``channels``
        Number of channels (observation times of a time-stepping model, 1 for a steady one).
    ``comm``
        The communicator of the state's mesh.

    and **must** implement :meth:`observe` (write :math:`B u` into one channel of a data Function) and
    :meth:`observe_transpose_add` (add :math:`B^T w` of one channel to a dual state Vec).  It **may**
    override :meth:`observe_block` and :meth:`transpose_block` (the default works column by column),
    :meth:`zero_data`, and set ``mask`` (observed entries, in data-space layout) and ``n_points`` (rows of
    the data, for noise models that take one :math:`\sigma` per row and for ``to_array``/``from_array``).
    """

    mask = None

    def __init_subclass__(cls, **kwargs):
        # every subclass (a user's too) runs its public methods with pyadjoint annotation off
        super().__init_subclass__(**kwargs)
        unannotated_methods(cls, skip=_HOT)

    @abstractmethod
    def observe(self, u_vec, data, channel: int) -> None:
        """Write :math:`B u` into channel ``channel`` of the data Function ``data`` (``u_vec``: the PETSc
        Vec of a state Function)."""

    @abstractmethod
    def observe_transpose_add(self, w, channel: int, out_vec) -> None:
        """Add :math:`B^T w_{channel}` (``w``: a data-space Cofunction) to the dual-state PETSc Vec
        ``out_vec``."""

    def zero_data(self, name: str | None = None):
        """A zero data-space Function."""
        import firedrake as fd

        return fd.Function(self.space, name=name)

    def observe_block(self, U, channel: int = 0) -> list:
        """:math:`B` applied to every column of the dense PETSc Mat ``U`` (state layout): a data-space
        Function per column."""
        return _observe_columns(self, U, channel)

    def transpose_block(self, ws, channel: int = 0):
        """:math:`B^T w_j` for data-space Cofunctions ``ws``, as the columns of a dense PETSc Mat (state
        layout)."""
        return _transpose_columns(self, ws, channel)

    def _columns(self, arr):
        """(rows, channels) view of a data-space dat array (1-D when there is one channel)."""
        return arr.reshape(-1, self.channels)


class _PointData(Observation):
    """Data on the vertices of a VertexOnlyMesh with one component per channel: arrays in input order
    (:meth:`to_array`, :meth:`from_array`), the same on every rank and for any number of ranks."""

    def _set_up_data(self, mesh, points, channels, tolerance=None, per_point: int = 1):
        """The VertexOnlyMesh of ``points`` and the data space: ``per_point`` data rows per point (the
        components of a vector field: row ``p * per_point + c``) and ``channels`` columns."""
        import firedrake as fd

        kw = {} if tolerance is None else {"tolerance": tolerance}
        try:
            vom = fd.VertexOnlyMesh(mesh, points, missing_points_behaviour="error", **kw)
        except fd.VertexOnlyMeshMissingPointsError:
            raise ObservationPointsOutsideMesh(PointObservation._missing_message(mesh, points, tolerance)) from None
        self.comm = mesh.comm
        self.vom = vom
        self.channels = int(channels)
        self._per_point = int(per_point)
        self.n_points = points.shape[0] * self._per_point
        # per vertex: component-major values (c * channels + k), so a (rows, channels) view has row
        # vertex * per_point + c, the layout of the interpolation matrix onto a vector P0 space
        dim = self._per_point * self.channels
        self.space = fd.VectorFunctionSpace(vom, "DG", 0, dim=dim)
        self._io_space = fd.VectorFunctionSpace(vom.input_ordering, "DG", 0, dim=dim)

    # -------------------------------------------------------------------------- NumPy, input order
    def to_array(self, d) -> np.ndarray:
        """Values of a data-space Function (or Cofunction) as an array of shape (N, channels), in the
        order the points were given, on every rank."""
        import firedrake as fd

        if d.function_space() not in (self.space, self.space.dual()):
            raise ValueError("to_array: argument is not on this observation's data space")
        src = d if isinstance(d, fd.Function) else fd.Function(self.space, val=d.dat)
        io = fd.Function(self._io_space).interpolate(src)
        arr = np.array(io.dat.data_ro).reshape(-1, self.channels)
        return self.comm.bcast(arr if self.comm.rank == 0 else None, root=0)

    def from_array(self, values, *, name: str = "data"):
        """A data-space Function holding ``values`` (shape (N, channels), or (N,) for one channel),
        given in the order of the points, the same array on every rank.

        Raises
        ------
        ValueError
            If ``values`` has the wrong shape or contains NaN/inf.
        """
        import firedrake as fd

        arr = np.asarray(values, dtype=float)
        if arr.ndim == 1 and self.channels == 1:
            arr = arr.reshape(-1, 1)
        expected = (self.n_points, self.channels)
        if arr.shape != expected:
            raise ValueError(f"{name}: expected {expected[0]} points x {expected[1]} channels = shape "
                             f"{expected}, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(f"{name}: contains NaN or inf (first at point {bad[0]}, channel {bad[1]})")
        io = fd.Function(self._io_space)
        n_local = io.dat.data_ro.shape[0] * self._per_point  # data rows of this rank's vertices
        start = self.comm.exscan(n_local) or 0
        # Written on every rank (even with no local rows): a write marks halos dirty, and ranks that
        # disagree on that would enter different collectives in the interpolation below.
        io.dat.data[:] = arr[start:start + n_local].reshape(io.dat.data_ro.shape)
        return fd.Function(self.space, name=name).interpolate(io)

    def _input_rows(self):
        """For each local data row, its row in input order (an int array)."""
        ids = self.from_array(np.tile(np.arange(self.n_points, dtype=float)[:, None], (1, self.channels)))
        return np.rint(self._columns(np.array(ids.dat.data_ro))[:, 0]).astype(int)


class PointObservation(_PointData):
    """Point observations of a state field in ``channels`` channels.

    Parameters
    ----------
    state_space : firedrake.FunctionSpace
        The observed field: the state space itself (scalar or vector-valued), one component of a vector
        state (``V.sub(0)``), or one sub-field of a mixed state (``Z.sub(1)``, or ``Z.sub(0).sub(1)`` for
        a component of a sub-field).  For a vector-valued field every point gives one datum per
        component: data row ``p * ncomp + c`` is component ``c`` at point ``p``.
    points : array_like, shape (N, gdim)
        Observation points, the same array on every rank.
    channels : int
        Number of channels (observation times, directions, ...); the data space has this many
        components.
    tolerance : float, optional
        Relative tolerance for points on the boundary of the mesh (passed to VertexOnlyMesh).
    mask : array_like of bool, shape (rows, channels), optional
        Which (row, channel) pairs are observed (e.g. detectors that see a given direction).
        Unobserved entries are predicted as 0 and ignored by the noise models.

    Raises
    ------
    ObservationPointsOutsideMesh
        If any point lies outside the mesh; the message lists them.
    """

    def __init__(self, state_space, points, *, channels: int = 1, tolerance: float | None = None,
                 mask=None):
        mesh = state_space.mesh()
        points = np.asarray(points, dtype=float)
        gdim = mesh.geometric_dimension
        if points.ndim == 1 and gdim == 1:
            points = points.reshape(-1, 1)
        if points.ndim != 2 or points.shape[1] != gdim or points.shape[0] == 0:
            raise ValueError(f"PointObservation: points must have shape (N, {gdim}) with N >= 1, "
                             f"got {points.shape}")
        if not np.all(np.isfinite(points)):
            raise ValueError("PointObservation: points contain NaN or inf")
        digest = hashlib.sha256(np.ascontiguousarray(points).tobytes()).hexdigest()
        if len(set(mesh.comm.allgather(digest))) > 1:  # rank 0's would be used silently
            raise ValueError("PointObservation: the points differ between MPI ranks; give the same array on "
                             "every rank (e.g. read or draw them on every rank alike)")
        if not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"PointObservation: channels must be a positive integer, got {channels!r}")
        self.part = ObservedPart(_checked_observed_space(state_space, "PointObservation"))
        self.state_space = self.part.state_space
        W = self.part.space
        self.components = int(np.prod(W.value_shape, dtype=int))
        self.points = points
        self._set_up_data(mesh, points, channels, tolerance, per_point=self.components)
        self.matrix = _point_matrix(W, self.vom)
        self._tmp = self.matrix.createVecLeft()
        self.mask = None  # local (owned) 0/1 array in data-space layout, or None: all observed
        if mask is not None:
            mask_arr = np.asarray(mask, dtype=bool).reshape(self.n_points, -1) if np.ndim(mask) else None
            if mask_arr is None or mask_arr.shape != (self.n_points, self.channels):
                raise ValueError(f"PointObservation: mask must have shape ({self.n_points}, {self.channels})")
            self.mask = np.array(self.from_array(mask_arr.astype(float), name="mask").dat.data_ro)

    @staticmethod
    def _missing_message(mesh, points, tolerance):
        tol = 0.5 if tolerance is None else tolerance
        local = np.array([mesh.locate_cell(p, tolerance=tol) is not None for p in points], dtype=np.int32)
        found = np.zeros_like(local)
        from mpi4py import MPI

        mesh.comm.Allreduce(local, found, op=MPI.MAX)
        missing = np.flatnonzero(found == 0)
        listed = ", ".join(f"#{i} {tuple(float(c) for c in points[i])}" for i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return (f"PointObservation: {len(missing)} of {len(points)} observation points lie outside the "
                f"mesh: {listed}{more}")

    def _masked(self, values, channel):
        return values if self.mask is None else values * self._columns(self.mask)[:, channel]

    # ------------------------------------------------------------------------------------- B, B^T
    def observe(self, u_vec, data, channel: int) -> None:
        """Write :math:`B u` into channel ``channel`` of the data Function ``data``.

        ``u_vec`` is the PETSc Vec of a state Function (``u.dat.vec_ro``).
        """
        self.matrix.mult(self.part.gather(u_vec), self._tmp)
        self._columns(data.dat.data)[:, channel] = self._masked(self._tmp.array_r, channel)

    def observe_transpose_add(self, w, channel: int, out_vec) -> None:
        """Add :math:`B^T w_{channel}` to the PETSc Vec ``out_vec`` (a dual state vector)."""
        self._tmp.array = self._masked(self._columns(w.dat.data_ro)[:, channel], channel)
        if self.part.whole:
            self.matrix.multTransposeAdd(self._tmp, out_vec, out_vec)
            return
        y = self.part.gather(out_vec)  # work Vec of the observed part
        self.matrix.multTranspose(self._tmp, y)
        self.part.scatter_add(y, out_vec)

    def observe_block(self, U, channel: int = 0) -> list:
        """:math:`B` applied to every column of the dense PETSc Mat ``U`` (state layout) at once: one
        sparse x dense product; a data-space Function per column (the block version of :meth:`observe`)."""
        arr = self.matrix.matMult(self.part.dense(U)).getDenseArray(readonly=True)
        outs = []
        for j in range(arr.shape[1]):
            d = self.zero_data()
            self._columns(d.dat.data)[:, channel] = self._masked(arr[:, j], channel)
            outs.append(d)
        return outs

    def transpose_block(self, ws, channel: int = 0):
        """:math:`B^T w_j` for data-space Cofunctions ``ws`` as the columns of a dense PETSc Mat (state
        layout): one sparse x dense product (the block version of :meth:`observe_transpose_add`)."""
        W = _dense_from_array(np.stack([self._masked(self._columns(w.dat.data_ro)[:, channel], channel)
                                        for w in ws], axis=-1), self._tmp)
        return self.part.embed(self.matrix.transposeMatMult(W))


def _checked_observed_space(space, name):
    """``space`` if an observation can be built on it, else one clear error."""
    import firedrake as fd

    if not isinstance(space, fd.functionspaceimpl.WithGeometry):
        raise TypeError(f"{name}: expected a Firedrake function space (or a sub-space), got {type(space).__name__}")
    if len(space) > 1:
        raise ValueError(f"{name}: cannot observe a whole mixed space at points; observe one sub-field, "
                         "e.g. Z.sub(0), with one observation each")
    if space.ufl_element().family() == "Real":
        raise ValueError(f"{name}: a Real-space (R) field has no point values; observe it with an "
                         "IntegralObservation")
    return space


def _point_matrix(W, vom):
    """Firedrake's sparse interpolation matrix :math:`W \to` P0(vom) of the same value shape: rows
    vertex-major, components interleaved (``vertex * ncomp + c``)."""
    import firedrake as fd

    shape = W.value_shape
    P0 = fd.FunctionSpace(vom, "DG", 0) if shape == () else fd.TensorFunctionSpace(vom, "DG", 0, shape=shape) \
        if len(shape) > 1 else fd.VectorFunctionSpace(vom, "DG", 0, dim=shape[0])
    return fd.assemble(fd.interpolate(fd.TrialFunction(W), P0)).petscmat


def _observe_columns(obs, U, channel):
    """:meth:`observe` of each column of a dense PETSc Mat (observations without a sparse matrix)."""
    outs = []
    for j in range(U.getSize()[1]):
        d = obs.zero_data()
        col = U.getDenseColumnVec(j, "r")
        obs.observe(col, d, channel)
        U.restoreDenseColumnVec(j, "r")
        outs.append(d)
    return outs


def _transpose_columns(obs, ws, channel):
    """:meth:`observe_transpose_add` of each Cofunction into the columns of a dense PETSc Mat."""
    import firedrake as fd

    from pdeinv.linalg.multivector import dense_block

    X = dense_block([fd.Function(obs.state_space) for _ in ws])  # zeros, state layout
    for j, w in enumerate(ws):
        col = X.getDenseColumnVec(j, "rw")
        obs.observe_transpose_add(w, channel, col)
        X.restoreDenseColumnVec(j, "rw")
    return X


class FieldObservation(Observation):
    r"""The whole observed field (hIPPYlib's continuous-state observation): :math:`B = I` on the observed part.

    The data space is the observed field's own space (one channel) or, for ``channels`` > 1 (a field at
    several times), the space of the same element with one more index of length ``channels``.
    Use it with :class:`~pdeinv.noise.FieldGaussianNoise`, whose misfit is the mass-weighted
    :math:`\tfrac1{2\sigma^2}\sum_k\int_\Omega |p_k - d_k|^2\,dx` (mesh-independent, unlike a sum over
    nodes).

    Parameters
    ----------
    state_space : firedrake.FunctionSpace
        The observed field: the state space (scalar or vector-valued), one component ``V.sub(c)`` or one
        sub-field ``Z.sub(i)`` of a mixed state.
    channels : int
    """

    def __init__(self, state_space, *, channels: int = 1):
        import firedrake as fd

        if not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"FieldObservation: channels must be a positive integer, got {channels!r}")
        if len(state_space) > 1:
            raise ValueError("FieldObservation: cannot observe a whole mixed space as one field; observe one "
                             "sub-field, e.g. Z.sub(0)")
        self.part = ObservedPart(state_space)
        self.state_space = self.part.state_space
        W = self.field_space = self.part.space
        self.channels = int(channels)
        self.comm = W.mesh().comm
        if channels == 1:
            self.space = W
        elif W.value_shape == ():
            self.space = fd.VectorFunctionSpace(W.mesh(), W.ufl_element(), dim=self.channels)
        else:
            self.space = fd.TensorFunctionSpace(W.mesh(), W.ufl_element().sub_elements[0],
                                                shape=(*W.value_shape, self.channels))
        self.n_points = W.dim()

    def observe(self, u_vec, data, channel: int) -> None:
        """Copy the observed field (from the PETSc Vec of a state Function) into channel ``channel``."""
        self._columns(data.dat.data)[:, channel] = self.part.gather(u_vec).array_r

    def observe_transpose_add(self, w, channel: int, out_vec) -> None:
        """Add channel ``channel`` of the data-space Cofunction ``w`` to ``out_vec``."""
        if self.part.whole:
            out_vec.getArray()[:] += self._columns(w.dat.data_ro)[:, channel]
            return
        y = self.part.gather(out_vec)
        y.array = self._columns(w.dat.data_ro)[:, channel]
        self.part.scatter_add(y, out_vec)

    def field(self, data, channel: int = 0):
        """Channel ``channel`` of a data Function as a Function on the observed field's space."""
        import firedrake as fd

        out = fd.Function(self.field_space, name=data.name())
        out.dat.data[:] = self._columns(data.dat.data_ro)[:, channel].reshape(out.dat.data.shape)
        return out


class IntegralObservation(_PointData):
    r"""Linear functionals of the state: boundary fluxes, subdomain means, weighted integrals.

    Datum :math:`k` is :math:`\ell_k(u)`, with each :math:`\ell_k` a UFL form linear in :math:`u`,
    given as a callable of a test function, e.g. ::

        n = FacetNormal(mesh)
        IntegralObservation(V, {"flux_right": lambda u: dot(grad(u), n) * ds(2),
                                "mean":       lambda u: u * dx})

    Each :math:`\ell_k` is assembled once into a dual vector; :math:`Bu` is a set of global dot
    products and :math:`B^T w = \sum_k w_k \ell_k`.  The functionals must not depend on the
    parameter.  The data have one row per functional (in the order given) and ``channels`` columns;
    ``to_array`` / ``from_array`` and the noise models work as for point data (e.g. a
    :class:`~pdeinv.noise.GaussianNoise` with one :math:`\sigma` per functional): the data space is that
    of point data at one interior point, one vertex per functional.

    Parameters
    ----------
    state_space : firedrake.FunctionSpace
        Any state space: scalar, vector-valued, mixed, with Real-space (R) blocks.  A functional of one
        component or sub-field is written with the test function's components, e.g.
        ``lambda v: v[0] * dx`` or ``lambda v: split(v)[1] * dx``.
    functionals : dict of str -> callable, or sequence of callables
        :math:`\ell_k`: ``f(v)`` returns a UFL 1-form in the test function ``v`` (equivalently, a
        form linear in the state).
    channels : int
        Observation times (or other channels) at which every functional is recorded.
    """

    def __init__(self, state_space, functionals, *, channels: int = 1):
        if not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"IntegralObservation: channels must be a positive integer, got {channels!r}")
        names, rows = _assembled_functionals(state_space, functionals)
        self.names = tuple(names)
        self.state_space = root_space(state_space)
        if self.state_space != state_space:
            raise ValueError("IntegralObservation: give the whole state space; a functional selects a "
                             "sub-field or component itself (e.g. lambda v: split(v)[1] * dx)")
        mesh = mesh_of(state_space)
        self._set_up_data(mesh, np.tile(_interior_point(mesh), (len(rows), 1)), channels)
        self._row_vecs = []
        for r in rows:
            with r.dat.vec_ro as x:
                self._row_vecs.append(x.copy())
        self._local_ids = self._input_rows()

    def observe(self, u_vec, data, channel: int) -> None:
        values = np.array(u_vec.mDot(self._row_vecs))  # global: l_k(u) for all k, on every rank
        self._columns(data.dat.data)[:, channel] = values[self._local_ids]

    def observe_transpose_add(self, w, channel: int, out_vec) -> None:
        from mpi4py import MPI

        local = np.zeros(len(self._row_vecs))
        local[self._local_ids] = self._columns(w.dat.data_ro)[:, channel]
        coeffs = np.empty_like(local)
        self.comm.Allreduce(local, coeffs, op=MPI.SUM)
        out_vec.maxpy(coeffs, self._row_vecs)


def _assembled_functionals(state_space, functionals):
    """Names and assembled dual vectors of the functionals of an :class:`IntegralObservation`."""
    import firedrake as fd
    import ufl

    if isinstance(functionals, dict):
        names, funcs = list(functionals), list(functionals.values())
    else:
        funcs = list(functionals)
        names = [f"functional_{k}" for k in range(len(funcs))]
    if not funcs:
        raise ValueError("IntegralObservation: give at least one functional")
    v = fd.TestFunction(state_space)
    rows = []
    for name, f in zip(names, funcs, strict=True):
        form = f(v) if callable(f) else f
        if not isinstance(form, ufl.form.BaseForm) or len(form.arguments()) != 1:
            raise ValueError(f"IntegralObservation: functional {name!r} must give a UFL form linear in the "
                             "state (a 1-form in the test function passed to it)")
        rows.append(fd.assemble(form))
    return names, rows


def _interior_point(mesh):
    """A point inside the mesh, the same on every rank (the centroid of the first rank's first cell)."""
    import firedrake as fd

    X = fd.Function(fd.VectorFunctionSpace(mesh, "DG", 0)).interpolate(fd.SpatialCoordinate(mesh))
    local = np.array(X.dat.data_ro).reshape(-1, mesh.geometric_dimension)
    candidates = mesh.comm.allgather(local[0] if len(local) else None)
    return next(c for c in candidates if c is not None)
