"""UFL helpers shared by the generic models: validation of user forms, dependency tests, derived
forms, homogeneous boundary conditions.

Everything here works on the user's own residual form; nothing is hand-typed per model.
"""

from __future__ import annotations

__all__ = ["expand", "derive", "is_zero", "depends_on", "at_zero", "homogeneous_bcs", "test_function_of",
           "check_residual", "check_parameter", "check_bcs", "check_observation", "is_symmetric_operator"]


def expand(form):
    """The form with derivatives applied (so its coefficients are the real dependencies)."""
    from ufl.algorithms import expand_derivatives

    return expand_derivatives(form)


def derive(form, coefficient, argument=None):
    """``firedrake.derivative`` with the derivative expanded once, here: a derived form kept
    unexpanded would be expanded again by UFL at every assembly (milliseconds per call)."""
    import firedrake as fd

    return expand(fd.derivative(form, coefficient, argument))


def is_zero(form) -> bool:
    """Whether ``form`` is identically zero after expanding derivatives (e.g. the derivative of a
    residual with respect to something it does not depend on)."""
    from ufl.form import Form, ZeroBaseForm

    f = expand(form)
    return isinstance(f, ZeroBaseForm) or (isinstance(f, Form) and f.empty())


def depends_on(form, *things) -> bool:
    """Whether the expanded ``form`` refers to any of ``things`` (Functions or Constants).

    Firedrake's ``Constant`` is a UFL constant *value* (not listed by ``form.constants()``), so
    non-Functions are found by walking the integrands, by identity (two Constants of equal value
    compare equal)."""
    from ufl import Coefficient
    from ufl.corealg.traversal import unique_pre_traversal

    f = expand(form)
    if is_zero(f):
        return False
    things = [t for t in things if t is not None]
    coeffs = set(f.coefficients())
    if any(t in coeffs for t in things if isinstance(t, Coefficient)):
        return True
    others = [t for t in things if not isinstance(t, Coefficient)]
    if not others:
        return False
    for integral in f.integrals():
        for node in unique_pre_traversal(integral.integrand()):
            if any(node is t for t in others):
                return True
    return False


def at_zero(form, *functions):
    """``form`` with ``functions`` replaced by UFL zeros: terms that vanish there disappear
    symbolically (e.g. :math:`e^m\\nabla u\\cdot\\nabla v` at :math:`u = 0`), so the result depends on
    fewer coefficients than a replacement by zero-valued Functions would."""
    import ufl

    return ufl.replace(form, {f: ufl.zero(f.ufl_shape) for f in functions})


def homogeneous_bcs(bcs):
    """Copies of Dirichlet conditions with zero values (the conditions tangent and adjoint solve
    with).

    Each copy is a shallow copy of the user's condition, homogenised: it keeps the condition's class and
    its dofs (a ``DirichletBC`` subclass that overrides ``nodes``, e.g. a condition pinning one point,
    stays that condition), and the user's object is left untouched.  Rebuilding a plain
    ``DirichletBC(V, 0, sub_domain)`` would lose both.
    """
    import copy

    import firedrake as fd

    out = []
    for bc in bcs:
        if not isinstance(bc, fd.DirichletBC):
            raise TypeError(f"bcs: expected firedrake.DirichletBC objects, got {type(bc).__name__} "
                            "(EquationBC and other kinds are not supported by the generic models)")
        h = copy.copy(bc)
        h.homogenize()  # sets the copy's own value attribute: the original keeps its value
        out.append(h)
    return out


def test_function_of(form, name: str):
    """The single Argument (test function) of a residual 1-form, with a clear error otherwise."""
    args = form.arguments()
    if len(args) != 1 or args[0].number() != 0:
        raise ValueError(f"{name}: the residual must be a 1-form F(u, m; v) with exactly one test function, "
                         f"got a form with {len(args)} arguments")
    return args[0]


def check_residual(residual, name: str, state, parameter, *others):
    """Validate a user's residual: a UFL 1-form whose test function lives on the state space and that
    refers to the state and the parameter Functions."""
    import ufl

    if not isinstance(residual, ufl.form.BaseForm):
        raise TypeError(f"{name}: residual must be a UFL Form (e.g. `inner(grad(u), grad(v))*dx - f*v*dx`), "
                        f"got {type(residual).__name__}")
    v = test_function_of(residual, name)
    if v.function_space() != state.function_space():
        raise ValueError(f"{name}: the residual's test function lives on {_space_name(v.function_space())} "
                         f"but the state on {_space_name(state.function_space())}")
    coeffs = set(residual.coefficients())
    if state not in coeffs:
        raise ValueError(f"{name}: the residual does not depend on the state Function {state.name()!r}; "
                         "write the form with the very Function object passed as `state`")
    if parameter not in coeffs:
        raise ValueError(f"{name}: the residual does not depend on the parameter Function {parameter.name()!r}; "
                         "write the form with the very Function object passed as `parameter`")
    return v


def has_real_block(V) -> bool:
    """Whether ``V`` is a mixed space with a Real (R) sub-space (Firedrake assembles no monolithic matrix
    with R rows or columns in a mixed space)."""
    return len(V) > 1 and any(W.ufl_element().family() == "Real" for W in V)


def check_state_space(V, name: str) -> None:
    """One clear error for a state space the direct solvers cannot take: a mixed space with an R block."""
    if has_real_block(V):
        raise ValueError(f"{name}: the state space is mixed with a Real (R) sub-space (a Lagrange multiplier); "
                         "Firedrake cannot assemble its monolithic matrix for the direct tangent/adjoint solves. "
                         "Fix the gauge without the multiplier: pass nullspace= (e.g. constant pressure) or pin "
                         "one dof with a DirichletBC subclass")


def check_parameter(parameter, name: str):
    import firedrake as fd

    if not isinstance(parameter, fd.Function):
        raise TypeError(f"{name}: parameter must be a firedrake.Function (the one the residual refers to), "
                        f"got {type(parameter).__name__}")


def check_bcs(bcs, state_space, name: str):
    """Dirichlet conditions on the state space (or one of its sub-spaces), with one clear error."""
    import firedrake as fd

    bcs = list(bcs or ())
    for bc in bcs:
        if not isinstance(bc, fd.DirichletBC):
            raise TypeError(f"{name}: bcs must be firedrake.DirichletBC objects, got {type(bc).__name__}")
        V = bc.function_space()
        while V.parent is not None:  # a condition on a component or sub-space
            V = V.parent
        if V != state_space:
            raise ValueError(f"{name}: a boundary condition lives on {_space_name(V)}, not on the state space "
                             f"{_space_name(state_space)}")
    return bcs


def check_observation(observation, state_space, name: str) -> None:
    """An :class:`~pdeinv.observation.Observation` of this state (or of one of its sub-fields), with one
    clear error otherwise."""
    from pdeinv.observation import Observation

    if not isinstance(observation, Observation):
        raise TypeError(f"{name}: observation must be a pdeinv.observation.Observation (PointObservation, "
                        f"FieldObservation, IntegralObservation or a subclass), got {type(observation).__name__}")
    if observation.state_space != state_space:
        raise ValueError(f"{name}: the observation is built on {_space_name(observation.state_space)}, not on "
                         f"the state space {_space_name(state_space)} (or one of its sub-spaces)")


def _space_name(V) -> str:
    el = V.ufl_element()
    kind = "mixed " if len(V) > 1 else ("vector " if V.value_shape else "")
    return f"{kind}{el.family()}{el.degree()} on mesh {V.mesh().name!r}"


def is_symmetric_operator(a, bcs, functions, *, seed: int = 0) -> bool:
    r"""Numerical symmetry test of the operator of the bilinear form ``a`` (with Dirichlet rows and
    columns eliminated), with the Functions ``functions`` it depends on replaced by random fields, so
    that terms vanishing at the current values (a zero state, a zero parameter) cannot hide an
    asymmetry.  The random values hash the dofs' coordinates (:func:`~pdeinv.linalg.random_multifunction`)
    and the test is :math:`\|A - A^T\|_F \le 10^{-12}\|A\|_F` on the distributed matrix, so 1 and N ranks
    decide alike (and parallel solves use Cholesky where it applies)."""
    import firedrake as fd
    import numpy as np

    from pdeinv.linalg.arrays import local_values, set_local_values
    from pdeinv.linalg.multivector import random_multifunction

    mapping = {}
    for k, f in enumerate(functions):
        if f is None or f not in a.coefficients():
            continue
        r = fd.Function(f.function_space())
        z = local_values(random_multifunction(f.function_space(), 1, seed=seed + k)[0])
        set_local_values(r, 0.2 + 0.1 * np.tanh(z))  # any space, mixed included; O(0.1): no overflow in exp(m)
        mapping[f] = r
    form = fd.replace(a, mapping) if mapping else a
    mat = fd.assemble(form, bcs=bcs, mat_type="aij").petscmat
    norm = mat.norm()
    if norm == 0:
        return True
    from petsc4py import PETSc

    diff = PETSc.Mat()
    mat.transpose(diff)  # into a new matrix (without an argument petsc4py transposes in place)
    diff.axpy(-1.0, mat)
    return bool(diff.norm() <= 1e-12 * norm)
