r"""Boundary conditions of the scalar elliptic/parabolic models, as plain data.

For :math:`-\nabla\cdot(\kappa\nabla u)` on a boundary part :math:`\Gamma` (mesh markers, or
``"on_boundary"``):

- :class:`Dirichlet`: :math:`u = g` (strong);
- :class:`Neumann`: :math:`\kappa\nabla u\cdot n = g`, adds :math:`-\int_\Gamma g v\,ds` to the residual;
- :class:`Robin`: :math:`\kappa\nabla u\cdot n = \alpha(g - u)`, adds
  :math:`\int_\Gamma \alpha u v\,ds - \int_\Gamma \alpha g v\,ds`.

Boundaries without a condition are natural (zero flux).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Dirichlet", "Neumann", "Robin", "split_boundary_conditions", "as_coefficient"]


def as_coefficient(value):
    """Python numbers become Constants: UFL drops ``0 * v * dx`` to an empty form, which cannot be
    assembled, whereas ``Constant(0) * v * dx`` stays a form (and its value can change later)."""
    import firedrake as fd

    return fd.Constant(float(value)) if isinstance(value, (int, float)) else value


def _markers(markers):
    if markers == "on_boundary":
        return markers
    if isinstance(markers, int):
        return (markers,)
    try:
        out = tuple(int(m) for m in markers)
    except (TypeError, ValueError):
        raise ValueError(f"boundary markers must be 'on_boundary', an int or ints, got {markers!r}") from None
    if not out:
        raise ValueError("boundary markers must not be empty")
    return out


@dataclass(frozen=True)
class Dirichlet:
    """:math:`u = g` on ``markers``; ``value`` is a number, Constant or UFL expression."""

    markers: Any = "on_boundary"
    value: Any = 0.0

    def __post_init__(self):
        object.__setattr__(self, "markers", _markers(self.markers))


@dataclass(frozen=True)
class Neumann:
    """:math:`\\kappa\\nabla u\\cdot n = g` on ``markers``."""

    markers: Any
    flux: Any = 0.0

    def __post_init__(self):
        object.__setattr__(self, "markers", _markers(self.markers))


@dataclass(frozen=True)
class Robin:
    """:math:`\\kappa\\nabla u\\cdot n = \\alpha(g - u)` on ``markers``."""

    markers: Any
    alpha: Any
    value: Any = 0.0

    def __post_init__(self):
        object.__setattr__(self, "markers", _markers(self.markers))


def split_boundary_conditions(V, conditions):
    """Turn condition specs into (DirichletBC list, bilinear boundary form, linear boundary form).

    Returns
    -------
    bcs : list of firedrake.DirichletBC
    a_bdy : ufl.Form or None
        :math:`\\sum_{Robin} \\int \\alpha u v\\,ds` (trial u, test v).
    L_bdy : ufl.Form or None
        :math:`\\sum_{Neumann} \\int g v\\,ds + \\sum_{Robin} \\int \\alpha g v\\,ds`.
    """
    import firedrake as fd

    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    bcs, a_bdy, L_bdy = [], None, None

    def ds(markers):
        return fd.ds if markers == "on_boundary" else fd.ds(markers)

    def add(form, term):
        return term if form is None else form + term

    for c in conditions:
        if isinstance(c, Dirichlet):
            bcs.append(fd.DirichletBC(V, c.value, c.markers))
        elif isinstance(c, Neumann):
            L_bdy = add(L_bdy, c.flux * v * ds(c.markers))
        elif isinstance(c, Robin):
            a_bdy = add(a_bdy, c.alpha * u * v * ds(c.markers))
            L_bdy = add(L_bdy, c.alpha * c.value * v * ds(c.markers))
        else:
            raise TypeError(f"boundary condition {c!r} is not a Dirichlet, Neumann or Robin")
    return bcs, a_bdy, L_bdy
