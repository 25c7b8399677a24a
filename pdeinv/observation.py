r"""Observation operators: point values of a state field, via Firedrake's VertexOnlyMesh.

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

import numpy as np

__all__ = ["PointObservation", "FieldObservation", "IntegralObservation", "ObservationPointsOutsideMesh"]


class ObservationPointsOutsideMesh(ValueError):
    """Some observation points do not lie in the mesh."""


class PointObservation:
    """Point observations of a scalar state field in ``channels`` channels.

    Parameters
    ----------
    state_space : firedrake.FunctionSpace
        Scalar space of the observed field.
    points : array_like, shape (N, gdim)
        Observation points, the same array on every rank.
    channels : int
        Number of channels (observation times, directions, ...); the data space has this many
        components.
    tolerance : float, optional
        Relative tolerance for points on the boundary of the mesh (passed to VertexOnlyMesh).
    mask : array_like of bool, shape (N, channels), optional
        Which (point, channel) pairs are observed (e.g. detectors that see a given direction).
        Unobserved entries are predicted as 0 and ignored by the noise models.

    Raises
    ------
    ObservationPointsOutsideMesh
        If any point lies outside the mesh; the message lists them.
    """

    def __init__(self, state_space, points, *, channels: int = 1, tolerance: float | None = None,
                 mask=None):
        import firedrake as fd

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
        if not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"PointObservation: channels must be a positive integer, got {channels!r}")
        if state_space.value_shape != ():
            raise ValueError("PointObservation: the observed state must be scalar-valued")
        kw = {} if tolerance is None else {"tolerance": tolerance}
        try:
            vom = fd.VertexOnlyMesh(mesh, points, missing_points_behaviour="error", **kw)
        except fd.VertexOnlyMeshMissingPointsError:
            raise ObservationPointsOutsideMesh(self._missing_message(mesh, points, tolerance)) from None
        self.state_space = state_space
        self.points = points
        self.n_points = points.shape[0]
        self.channels = int(channels)
        self.comm = mesh.comm
        self.vom = vom
        scalar = fd.FunctionSpace(vom, "DG", 0)
        self.space = fd.VectorFunctionSpace(vom, "DG", 0, dim=self.channels)
        self._io_space = fd.VectorFunctionSpace(vom.input_ordering, "DG", 0, dim=self.channels)
        # The interpolation matrix B: V -> P0(vom); one sparse Mat, applied per channel.
        self.matrix = fd.assemble(fd.interpolate(fd.TrialFunction(state_space), scalar)).petscmat
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

    def _columns(self, arr):
        """(points, channels) view of a data-space dat array (1-D when there is one channel)."""
        return arr.reshape(-1, self.channels)

    # ------------------------------------------------------------------------------------- B, B^T
    def observe(self, u_vec, data, channel: int) -> None:
        """Write :math:`B u` into channel ``channel`` of the data Function ``data``.

        ``u_vec`` is the PETSc Vec of a state Function (``u.dat.vec_ro``).
        """
        self.matrix.mult(u_vec, self._tmp)
        values = self._tmp.array_r
        if self.mask is not None:
            values = values * self._columns(self.mask)[:, channel]
        self._columns(data.dat.data)[:, channel] = values

    def observe_transpose_add(self, w, channel: int, out_vec) -> None:
        """Add :math:`B^T w_{channel}` to the PETSc Vec ``out_vec`` (a dual state vector)."""
        values = self._columns(w.dat.data_ro)[:, channel]
        self._tmp.array = values if self.mask is None else values * self._columns(self.mask)[:, channel]
        self.matrix.multTransposeAdd(self._tmp, out_vec, out_vec)

    def observe_block(self, U, channel: int = 0) -> list:
        """:math:`B` applied to every column of the dense PETSc Mat ``U`` (state layout) at once: one
        sparse x dense product; a data-space Function per column (the block version of :meth:`observe`)."""
        arr = self.matrix.matMult(U).getDenseArray(readonly=True)
        outs = []
        for j in range(arr.shape[1]):
            d = self.zero_data()
            values = arr[:, j] if self.mask is None else arr[:, j] * self._columns(self.mask)[:, channel]
            self._columns(d.dat.data)[:, channel] = values
            outs.append(d)
        return outs

    def transpose_block(self, ws, channel: int = 0):
        """:math:`B^T w_j` for data-space Cofunctions ``ws`` as the columns of a dense PETSc Mat (state
        layout): one sparse x dense product (the block version of :meth:`observe_transpose_add`)."""
        from petsc4py import PETSc

        rows = self.matrix.getSizes()[0]
        W = PETSc.Mat().createDense((rows, (PETSc.DECIDE, len(ws))), comm=self.matrix.getComm())
        W.setUp()
        arr = W.getDenseArray()
        for j, w in enumerate(ws):
            values = self._columns(w.dat.data_ro)[:, channel]
            arr[:, j] = values if self.mask is None else values * self._columns(self.mask)[:, channel]
        W.assemble()
        return self.matrix.transposeMatMult(W)

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
        n_local = io.dat.data_ro.shape[0]
        start = self.comm.exscan(n_local) or 0
        # Written on every rank (even with no local rows): a write marks halos dirty, and ranks that
        # disagree on that would enter different collectives in the interpolation below.
        io.dat.data[:] = arr[start:start + n_local].reshape(io.dat.data_ro.shape)
        return fd.Function(self.space, name=name).interpolate(io)

    def zero_data(self, name: str | None = None):
        """A zero data-space Function."""
        import firedrake as fd

        return fd.Function(self.space, name=name)


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


class FieldObservation:
    r"""The whole state field observed (hIPPYlib's continuous-state observation): :math:`B = I`.

    The data space is the state space itself (one channel) or, for ``channels`` > 1 (a field at
    several times), the vector-valued space of the same element with one component per channel.
    Use it with :class:`~pdeinv.noise.FieldGaussianNoise`, whose misfit is the mass-weighted
    :math:`\tfrac1{2\sigma^2}\sum_k\int_\Omega (p_k - d_k)^2\,dx` (mesh-independent, unlike a sum over
    nodes).

    Parameters
    ----------
    state_space : firedrake.FunctionSpace
        Scalar space of the observed field.
    channels : int
    """

    mask = None

    def __init__(self, state_space, *, channels: int = 1):
        import firedrake as fd

        if state_space.value_shape != ():
            raise ValueError("FieldObservation: the observed state must be scalar-valued")
        if not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"FieldObservation: channels must be a positive integer, got {channels!r}")
        self.state_space = state_space
        self.channels = int(channels)
        self.comm = state_space.mesh().comm
        el = state_space.ufl_element()
        self.space = state_space if channels == 1 else fd.VectorFunctionSpace(
            state_space.mesh(), el.family(), el.degree(), dim=self.channels)
        self.n_points = state_space.dim()

    def _columns(self, arr):
        return arr.reshape(-1, self.channels)

    def observe(self, u_vec, data, channel: int) -> None:
        """Copy the state (PETSc Vec of a state Function) into channel ``channel`` of ``data``."""
        self._columns(data.dat.data)[:, channel] = u_vec.array_r

    def observe_transpose_add(self, w, channel: int, out_vec) -> None:
        """Add channel ``channel`` of the data-space Cofunction ``w`` to ``out_vec``."""
        arr = out_vec.getArray()
        arr += self._columns(w.dat.data_ro)[:, channel]

    def zero_data(self, name: str | None = None):
        import firedrake as fd

        return fd.Function(self.space, name=name)

    def observe_block(self, U, channel: int = 0) -> list:
        return _observe_columns(self, U, channel)

    def transpose_block(self, ws, channel: int = 0):
        return _transpose_columns(self, ws, channel)

    def field(self, data, channel: int = 0):
        """Channel ``channel`` of a data Function as a state-space Function (for plotting/output)."""
        import firedrake as fd

        out = fd.Function(self.state_space, name=data.name())
        out.dat.data[:] = self._columns(data.dat.data_ro)[:, channel]
        return out


class IntegralObservation(PointObservation):
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
    :class:`~pdeinv.noise.GaussianNoise` with one :math:`\sigma` per functional).

    Parameters
    ----------
    state_space : firedrake.FunctionSpace
        Any space: scalar, vector-valued or mixed (a functional of one component or sub-field is
        written with the test function's components, e.g. ``lambda v: v[0] * dx`` or
        ``lambda v: split(v)[1] * dx``).
    functionals : dict of str -> callable, or sequence of callables
        :math:`\ell_k`: ``f(v)`` returns a UFL 1-form in the test function ``v`` (equivalently, a
        form linear in the state).
    channels : int
        Observation times (or other channels) at which every functional is recorded.
    """

    def __init__(self, state_space, functionals, *, channels: int = 1):
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
        self.names = tuple(names)
        # All data live at one interior point (one VertexOnlyMesh vertex per functional), so the data
        # space is an ordinary point-data space: arrays in input order, noise models unchanged.
        # The placeholder point lives on a scalar DG0 space: the functionals alone act on the state, so
        # any state space (vector, mixed) is observed through them.
        mesh = state_space.mesh()
        point = _interior_point(mesh)
        super().__init__(fd.FunctionSpace(mesh, "DG", 0), np.tile(point, (len(rows), 1)), channels=channels)
        self.state_space = state_space
        self.matrix = None  # the placeholder point's interpolation matrix is never applied
        self._row_vecs = []
        for r in rows:
            with r.dat.vec_ro as x:
                self._row_vecs.append(x.copy())
        ids = self.from_array(np.tile(np.arange(len(rows), dtype=float)[:, None], (1, self.channels)))
        self._local_ids = np.rint(self._columns(np.array(ids.dat.data_ro))[:, 0]).astype(int)

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

    # the inherited interpolation matrix is that of the placeholder point, not of the functionals
    def observe_block(self, U, channel: int = 0) -> list:
        return _observe_columns(self, U, channel)

    def transpose_block(self, ws, channel: int = 0):
        return _transpose_columns(self, ws, channel)


def _interior_point(mesh):
    """A point inside the mesh, the same on every rank (the centroid of the first rank's first cell)."""
    import firedrake as fd

    X = fd.Function(fd.VectorFunctionSpace(mesh, "DG", 0)).interpolate(fd.SpatialCoordinate(mesh))
    local = np.array(X.dat.data_ro).reshape(-1, mesh.geometric_dimension)
    candidates = mesh.comm.allgather(local[0] if len(local) else None)
    return next(c for c in candidates if c is not None)
