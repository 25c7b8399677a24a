r"""Initial conditions and multistep histories for :class:`~pdeinv.forward.timestepping.TimeSteppingModel`.

*Start*
    The initial state :math:`u_0` is one of: the parameter itself (:math:`u_0 = m`, same space); a map of
    the parameter, :math:`u_0 = \Pi_V P(m)` with :math:`P` any UFL expression of :math:`m` (linear or not,
    :math:`m` on another space of the same mesh, e.g. a coarser degree) interpolated onto the state space;
    or a fixed field.  Its tangent is :math:`\Pi_V P'(m)\,\delta m` and its adjoint
    :math:`P'(m)^T \Pi_V^T \lambda_0`, both from Firedrake's interpolation and its adjoint.

*History* (multistep schemes)
    A :math:`k`-step residual :math:`F(u_{n+1}, u_n, \dots, u_{n-k+1}, m; v)` is the one-step residual of
    the history :math:`z_n = (u_n, \dots, u_{n-k+1}) \in Z = V^k`:

    .. math::

        G(z_{n+1}, z_n, m; (v_0, \dots, v_{k-1})) = F(z_{n+1}^0, z_n^0, \dots, z_n^{k-1}, m; v_0)
          + \sum_{j=1}^{k-1} \langle z_{n+1}^j - z_n^{j-1}, v_j\rangle,

    whose step operator :math:`\partial_{z_{n+1}}G = \mathrm{diag}(\partial_{u_{n+1}}F, M, \dots, M)` is
    block diagonal (:math:`M` the copy's mass matrix, lumped — diagonal — for KMV elements).  The one-step
    engine then gives every derivative (tangent, adjoint, checkpointing, the nonlinear engine) of the
    multistep scheme exactly, with no second implementation; the cost is the copy blocks (a mass-matrix
    solve per copy and step, nothing for KMV).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from pdeinv.linalg.arrays import subspace_indices
from pdeinv.observation import Observation

__all__ = ["Start", "StartEntry", "start_entry", "History", "stack_history", "HistoryObservation"]


class Start(enum.Enum):
    """What the initial state is."""

    PARAMETER = "parameter"  # u_0 = m
    MAP = "map"  # u_0 = interpolate(P(m), V)
    FIXED = "fixed"  # u_0 independent of m


@dataclass
class StartEntry:
    """One initial state on ``space``: its kind, the fixed value or the expression :math:`P(m)`."""

    kind: Start
    space: object
    parameter: object
    value: object = None  # FIXED: a Function on space
    expr: object = None  # MAP: a UFL expression of the parameter

    @property
    def affine(self) -> bool:
        """Whether :math:`u_0` is affine in the parameter (its second derivative vanishes)."""
        import firedrake as fd
        import ufl
        from ufl.algorithms import expand_derivatives

        if self.kind is not Start.MAP:
            return True
        Vm = self.parameter.function_space()
        d = ufl.derivative(ufl.derivative(self.expr, self.parameter, fd.Function(Vm)), self.parameter,
                           fd.Function(Vm))
        return isinstance(expand_derivatives(d), ufl.constantvalue.Zero)

    def initial(self):
        """:math:`u_0` as a Function on :attr:`space` (at the parameter Function's current value)."""
        import firedrake as fd

        if self.kind is Start.PARAMETER:
            return self.parameter
        if self.kind is Start.FIXED:
            return self.value
        return fd.Function(self.space).interpolate(self.expr)

    def tangent(self, dm):
        """:math:`\\delta u_0` for the direction ``dm`` (None when zero)."""
        import firedrake as fd
        import ufl
        from ufl.algorithms import expand_derivatives

        if self.kind is Start.PARAMETER:
            return dm
        if self.kind is Start.FIXED:
            return None
        return fd.Function(self.space).interpolate(expand_derivatives(ufl.derivative(self.expr, self.parameter, dm)))

    def adjoint_add(self, lam, result) -> None:
        """Add :math:`(\\partial u_0/\\partial m)^T\\lambda` to the Cofunction ``result`` (``lam``: a
        Cofunction on the dual of :attr:`space`)."""
        import firedrake as fd
        import ufl
        from ufl.algorithms import expand_derivatives

        from pdeinv.linalg.arrays import axpy

        if self.kind is Start.FIXED:
            return
        if self.kind is Start.PARAMETER:
            with result.dat.vec as r, lam.dat.vec_ro as a:
                r.axpy(1.0, a)
            return
        Vm = self.parameter.function_space()
        d = expand_derivatives(ufl.derivative(self.expr, self.parameter, fd.TestFunction(Vm)))
        axpy(result, 1.0, fd.assemble(fd.interpolate(d, lam)))  # the adjoint interpolation of lam


    def second_order_add(self, lam, dm, result) -> None:
        """Add :math:`(P''(m)[\\delta m])^T\\lambda` to ``result`` (zero unless :math:`P` is nonlinear)."""
        import firedrake as fd
        import ufl
        from ufl.algorithms import expand_derivatives

        from pdeinv.linalg.arrays import axpy

        if self.kind is not Start.MAP:
            return
        Vm = self.parameter.function_space()
        d = expand_derivatives(ufl.derivative(ufl.derivative(self.expr, self.parameter, dm), self.parameter,
                                              fd.TestFunction(Vm)))
        if isinstance(d, ufl.constantvalue.Zero):
            return
        axpy(result, 1.0, fd.assemble(fd.interpolate(d, lam)))


def _is_continuous(V) -> bool:
    from ufl.sobolevspace import H1

    return V.ufl_element().sobolev_space == H1


def start_entry(value, V, parameter, name: str) -> StartEntry:
    """The initial state ``value`` on ``V`` — ``"parameter"``, a number, a Function on ``V``, or a UFL
    expression (of the parameter or not) — checked, with one clear error."""
    import firedrake as fd
    import ufl
    from ufl.algorithms import extract_coefficients

    if isinstance(value, str):
        if value != Start.PARAMETER.value:
            raise ValueError(f"{name}: initial_condition must be 'parameter', a number, a Function or a UFL "
                             f"expression, got {value!r}")
        value = parameter
    if isinstance(value, (int, float, np.floating)):
        return StartEntry(Start.FIXED, V, parameter, value=fd.Function(V).assign(float(value)))
    if not isinstance(value, ufl.core.expr.Expr):
        raise TypeError(f"{name}: initial_condition must be 'parameter', a number, a Function or a UFL "
                        f"expression, got {type(value).__name__}")
    if value is parameter and parameter.function_space() == V:
        return StartEntry(Start.PARAMETER, V, parameter)
    if value.ufl_shape != V.value_shape:
        raise ValueError(f"{name}: initial_condition has shape {value.ufl_shape}, the state {V.value_shape}")
    if parameter not in extract_coefficients(value):
        if isinstance(value, fd.Function) and value.function_space() == V:
            return StartEntry(Start.FIXED, V, parameter, value=value.copy(deepcopy=True))
        return StartEntry(Start.FIXED, V, parameter, value=fd.Function(V).interpolate(value))
    Vm = parameter.function_space()
    if Vm.mesh() is not V.mesh():
        raise ValueError(f"{name}: initial_condition = P(m) needs the parameter on the state's mesh")
    if _is_continuous(V) and not _is_continuous(Vm):
        raise ValueError(f"{name}: initial_condition = P(m) from a discontinuous parameter space onto a "
                         "continuous state space is not a well-defined interpolation (a node shared by cells "
                         "takes one cell's value); project the parameter first or use a continuous parameter")
    return StartEntry(Start.MAP, V, parameter, expr=value)


# ------------------------------------------------------------------------------------------- history
@dataclass
class History:
    """The one-step form of a ``k``-step scheme on :math:`Z = V^k` (see the module docstring)."""

    space: object  # Z
    user_space: object  # V
    state: object  # z_{n+1}
    previous: object  # z_n
    residual: object
    bcs: list
    index: list  # index[j]: local indices of copy j of V in a Vec of Z (V's own layout)


def _copies(Z, V, k):
    """The k copies of V inside Z: for each, the list of Z's sub-spaces that form it."""
    p = len(V)
    return [[Z.sub(j * p + i) for i in range(p)] for j in range(k)]


def _as_user_function(pieces, V):
    """A UFL expression of the shape of a Function on V from its pieces (split of a Function on Z)."""
    import ufl

    if len(V) == 1:
        return pieces[0]
    flat = []
    for q in pieces:
        flat += [q[i] for i in range(q.ufl_shape[0])] if q.ufl_shape else [q]
    return ufl.as_vector(flat)


def _copy_measure(V):
    """dx for the copy equations: the KMV quadrature for KMV elements (a diagonal copy block)."""
    import firedrake as fd

    el = V.ufl_element()
    if el.family() in ("KMV", "Kong-Mulder-Veldhuizen"):
        return fd.dx(scheme="KMV", degree=el.degree())
    return fd.dx(V.mesh())


def _history_bcs(bcs, V, Z, name):
    """The user's conditions on u_{n+1} (on V or its sub-spaces) as conditions on the first copy in Z."""
    import firedrake as fd

    out = []
    for bc in bcs:
        if type(bc) is not fd.DirichletBC:
            raise ValueError(f"{name}: a multistep model takes plain firedrake.DirichletBC conditions, got "
                             f"{type(bc).__name__}")
        path, W = [], bc.function_space()
        while W.parent is not None:
            path.append(W.index if W.index is not None else W.component)
            W = W.parent
        path.reverse()
        target = Z.sub(path[0]) if len(V) > 1 else Z.sub(0)
        for i in path[1:] if len(V) > 1 else path:
            target = target.sub(i)
        g = bc.function_arg
        if isinstance(g, fd.Function):  # the same values on the copy's own (equal) space
            h = fd.Function(target.collapse())
            h.dat.data[:] = g.dat.data_ro
            g = h
        out.append(fd.DirichletBC(target, g, bc.sub_domain))
    return out


def stack_history(residual, state, previous, test, bcs, name: str) -> History:
    """The history form of the ``k``-step ``residual`` (``previous`` = :math:`(u_n, \\dots, u_{n-k+1})`)."""
    import firedrake as fd
    import ufl

    V, k = state.function_space(), len(previous)
    Z = fd.MixedFunctionSpace(list(V) * k)
    z1, z0 = fd.Function(Z, name="history"), fd.Function(Z, name="previous_history")
    w = fd.TestFunction(Z)
    p = len(V)
    s1, s0, sw = ufl.split(z1), ufl.split(z0), ufl.split(w)
    piece = [lambda s, j=j: _as_user_function(s[j * p:(j + 1) * p], V) for j in range(k)]
    mapping = {state: piece[0](s1), test: piece[0](sw)}
    mapping.update({previous[j]: piece[j](s0) for j in range(k)})
    G = ufl.replace(residual, mapping)
    dxc = _copy_measure(V)
    for j in range(1, k):
        G = G + ufl.inner(piece[j](s1) - piece[j - 1](s0), piece[j](sw)) * dxc
    index = []
    for copy in _copies(Z, V, k):
        index.append(np.concatenate([subspace_indices(W) for W in copy]))
    return History(Z, V, z1, z0, G, _history_bcs(bcs, V, Z, name), index)


class HistoryObservation(Observation):
    """A user's observation of :math:`u_n` read from the history :math:`z_n` (its first copy)."""

    def __init__(self, inner: Observation, history: History):
        import firedrake as fd

        self.inner = inner
        self.state_space = history.space
        self.space = inner.space
        self.channels = inner.channels
        self.comm = inner.comm
        self.mask = inner.mask
        self._index = history.index[0]
        with fd.Function(history.user_space).dat.vec_ro as x:
            self._vec = x.duplicate()

    def observe(self, u_vec, data, channel: int) -> None:
        self._vec.array = u_vec.array_r[self._index]
        self.inner.observe(self._vec, data, channel)

    def observe_transpose_add(self, w, channel: int, out_vec) -> None:
        self._vec.zeroEntries()
        self.inner.observe_transpose_add(w, channel, self._vec)
        out_vec.getArray()[self._index] += self._vec.array_r

    def zero_data(self, name: str | None = None):
        return self.inner.zero_data(name)
