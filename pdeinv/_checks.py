"""Input checks shared by the library: one clear error naming the input and what was expected."""

from __future__ import annotations

import math
import numbers
from enum import Enum

__all__ = ["real_number", "Choice", "choice", "renamed_choice", "describe_space", "describe_mismatch",
           "require_scalar_space", "require_field_space"]


def real_number(owner: str, name: str, value, *, minimum: float | None = 0.0, strict: bool = True) -> float:
    """``value`` as a float: a real, finite number (not a string or bool) above ``minimum``
    (``strict``: > minimum, else >=; ``minimum=None``: any finite value)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise ValueError(f"{owner}: {name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return v


class Choice(str, Enum):
    """An option family: members compare equal to their strings, print as them (``f"{x}"`` is the
    value, as Python 3.11's StrEnum; pdeinv supports 3.10) and are what :func:`choice` returns."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec) -> str:
        return format(self.value, spec)


def choice(enum_type, value, owner: str, name: str):
    """``value`` (a member of the str-valued ``enum_type`` or its string) as the member; one ValueError
    listing the choices otherwise (Firedrake's pattern: enums inside, strings accepted at the boundary)."""
    try:
        return enum_type(value)
    except ValueError:
        names = ", ".join(repr(m.value) for m in enum_type)
        raise ValueError(f"{owner}: {name} must be one of {names}, got {value!r}") from None


def renamed_choice(enum_type, value, old_value, owner: str, name: str, old_name: str):
    """:func:`choice` of a required keyword ``name`` that used to be called ``old_name`` (still accepted,
    with a DeprecationWarning)."""
    import warnings

    if old_value is not None:
        if value is not None:
            raise TypeError(f"{owner}: give {name}= only ({old_name}= is its former name)")
        warnings.warn(f"{owner}: {old_name}= is now called {name}= ({old_name} names the Function m)",
                      DeprecationWarning, stacklevel=3)
        value = old_value
    if value is None:
        raise TypeError(f"{owner}: {name} is required: one of {', '.join(repr(m.value) for m in enum_type)}")
    return choice(enum_type, value, owner, name)


def describe_space(V) -> str:
    """A readable name of a function space: element family and degree, value shape, mesh name and
    dimension (instead of Firedrake's full repr); ``dual of ...`` for dual spaces."""
    try:
        from firedrake.functionspaceimpl import FiredrakeDualSpace

        dual = isinstance(V, FiredrakeDualSpace)
        el = V.ufl_element()
        mesh = V.mesh()
        shape = f", value shape {V.value_shape}" if V.value_shape != () else ""
        text = (f"{el.family()} degree {el.embedded_superdegree}{shape} on mesh '{mesh.name}' "
                f"({mesh.topological_dimension}D)")
        return f"dual of {text}" if dual else text
    except Exception:  # an unusual space: fall back to Firedrake's own text
        return str(V)


def describe_mismatch(want, got) -> tuple[str, str]:
    """Descriptions of two different spaces; where they read the same (same element, another mesh
    object of the same name) the second says so."""
    a, b = describe_space(want), describe_space(got)
    return (a, b + " (a different mesh object)") if a == b else (a, b)


def require_field_space(owner: str, V) -> None:
    """One clear error unless ``V`` is a space of one field (scalar, vector or tensor-valued; not mixed,
    not Real)."""
    if len(V) > 1:
        raise ValueError(f"{owner}: expected the space of one field, got a mixed space ({describe_space(V)}); "
                         "a product parameter (several fields, or a field and scalars) is not supported by "
                         "this prior")
    if V.ufl_element().family() == "Real":
        raise ValueError(f"{owner}: expected a field space, got a Real (R) space; this prior is a "
                         "differential-operator prior for fields")


def require_scalar_space(owner: str, V) -> None:
    """One clear error unless ``V`` is a scalar function space."""
    if V.value_shape != ():
        raise ValueError(f"{owner}: expected a scalar function space, got {describe_space(V)}")
