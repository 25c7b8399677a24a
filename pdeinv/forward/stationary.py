r"""Generic steady models from a user's residual form: :math:`F(u, m; v) = 0` for all :math:`v`.

The user writes the weak form in plain UFL with their own state Function :math:`u`, parameter
Function :math:`m` and test function :math:`v`, as for ``NonlinearVariationalProblem``; pdeinv
derives everything else with UFL (``derivative``, ``action``, ``replace``):

Forward
    Firedrake's nonlinear solver (SNES, the user's ``solver_parameters``; Newton starts from the
    previous solution).  A residual affine in :math:`u` is instead solved with one assembled,
    factorised operator, which the derivatives then reuse.

Derivatives (discrete, exact)
    With :math:`A = \partial_u F` at the solution (Dirichlet rows and columns eliminated),
    :math:`F_m = \partial_m F` and the observation :math:`B`:

    - tangent (JVP): :math:`A\,\delta u = -F_m\,\delta m`, :math:`J\delta m = B\,\delta u`;
    - adjoint (VJP): :math:`A^T\lambda = B^T w`, :math:`J^T w = -F_m^T\lambda`
      (assembled as :math:`-\partial_m F(u, m; \lambda)[\psi]`);
    - second order (full Newton): with :math:`L(u, m) = F(u, m; \lambda)`,
      :math:`A^T\hat\lambda = -(L_{uu}[\delta u] + L_{um}[\delta m])` and
      :math:`\langle w, F''[\delta m, \psi]\rangle = -(L_{mu}[\delta u] + L_{mm}[\delta m]
      + F_m^T\hat\lambda)[\psi]`.

Cost
    :math:`A` is assembled and factorised once per new :math:`m` — lazily, at the first derivative
    request, so line-search trial points pay only the forward solve — and reused by every JVP, VJP
    and second-order action at that :math:`m`: a JVP or VJP is one right-hand-side assembly, one pair
    of triangular solves and one observation; a Gauss–Newton action two of each.
"""

from __future__ import annotations

import itertools

from pdeinv._checks import Choice, choice
from pdeinv.forward._forms import (
    at_zero,
    check_bcs,
    check_observation,
    check_parameter,
    check_residual,
    check_state_space,
    depends_on,
    derive,
    has_real_block,
    homogeneous_bcs,
    is_symmetric_operator,
    is_zero,
)
from pdeinv.linalg.arrays import local_values
from pdeinv.linalg.device import check_device, linear_parameters
from pdeinv.linalg.operator import DirichletOperator, default_solver_parameters, petsc_nullspace
from pdeinv.maps import ParameterToObservable

__all__ = ["StationaryModel", "InitialGuess", "default_newton_parameters"]


class InitialGuess(Choice):
    """Where Newton starts a nonlinear solve: the previous solution, or the fixed initial state."""

    PREVIOUS = "previous"
    FIXED = "fixed"

_prefix = itertools.count()


def default_newton_parameters(comm, *, space=None, singular: bool = False) -> dict:
    """Newton with a backtracking line search and a direct linear solver, converged tightly (the
    derivatives are exact for the discrete solution, so the forward must be solved well); the linear
    solver is :func:`~pdeinv.linalg.operator.default_solver_parameters`' (MUMPS for a mixed ``space`` or
    a ``singular`` operator)."""
    params = {"snes_type": "newtonls", "snes_linesearch_type": "bt", "snes_rtol": 1e-11, "snes_atol": 1e-13,
              "snes_stol": 0.0, "snes_max_it": 50}
    params.update(default_solver_parameters(comm, symmetric=False, space=space, singular=singular))
    return params


def _check_inputs(name, residual, state, parameter, observation, bcs, initial_guess):
    """One clear error for each malformed input; the residual's test function and the checked conditions."""
    import firedrake as fd

    check_parameter(parameter, name)
    if not isinstance(state, fd.Function):
        raise TypeError(f"{name}: state must be a firedrake.Function, got {type(state).__name__}")
    v = check_residual(residual, name, state, parameter)
    check_observation(observation, state.function_space(), name)
    if observation.channels != 1:
        raise ValueError(f"{name}: a steady model has one observation channel, the observation has "
                         f"{observation.channels}")
    choice(InitialGuess, initial_guess, name, "initial_guess")
    bcs = check_bcs(bcs, state.function_space(), name)
    check_state_space(state.function_space(), name)
    return v, bcs


class StationaryModel(ParameterToObservable):
    r"""Parameter-to-observable map :math:`m \mapsto B\,u(m)` of a steady PDE given by its residual.

    Parameters
    ----------
    residual : ufl.Form
        :math:`F(u, m; v)`, a 1-form in one test function on the state space, written with the
        Functions ``state`` and ``parameter``.
    state : firedrake.Function
        :math:`u`; the model stores the current solution in it (do not modify it while the model is
        in use).
    parameter : firedrake.Function
        :math:`m` as it appears in the residual; its space is the parameter space.  The model
        assigns the value being evaluated into it.
    observation : observation operator
        :class:`~pdeinv.observation.PointObservation`, :class:`~pdeinv.observation.FieldObservation`
        or :class:`~pdeinv.observation.IntegralObservation` on the state space, one channel.
    bcs : sequence of firedrake.DirichletBC, optional
        Dirichlet conditions of the state (their values must not depend on :math:`m`).
    solver_parameters : dict, optional
        PETSc options of the forward nonlinear solve (default :func:`default_newton_parameters`;
        for a residual affine in :math:`u`, those of the one linear solve).
    linear_solver_parameters : dict, optional
        PETSc options of the tangent/adjoint solves with :math:`A` (default: direct — Cholesky when
        :math:`A` is symmetric, else LU; MUMPS in parallel).
    initial_guess : InitialGuess or {"previous", "fixed"}
        Newton starts from the previous solution (fast inside an optimizer), or always from the
        value ``state`` held at construction (results independent of the evaluation history).
    nullspace, transpose_nullspace : firedrake.VectorSpaceBasis or MixedVectorSpaceBasis, optional
        The nullspace of the state operator (e.g. the constant pressure of an enclosed flow:
        ``MixedVectorSpaceBasis(Z, [Z.sub(0), VectorSpaceBasis(constant=True)])``) and of its transpose
        (default: the same).  The state is returned orthogonal to the nullspace (Euclidean, over the dofs:
        e.g. pressure of zero dof mean), and tangent and adjoint are those of that gauge-fixed state.

    The default linear solver is direct: PETSc Cholesky/LU in serial, redundant in parallel for 2D, and
    MUMPS LU with pivoting for a mixed state space (saddle points) or a nullspace; ``linear_solver``
    says which was chosen.

    Notes
    -----
    Point and integral observations must be linear in :math:`u` and independent of :math:`m`.
    """

    def __init__(self, residual, state, parameter, *, observation, bcs=(), solver_parameters=None,
                 linear_solver_parameters=None, initial_guess: InitialGuess = InitialGuess.PREVIOUS,
                 nullspace=None, transpose_nullspace=None):
        name = "StationaryModel"
        v, bcs = _check_inputs(name, residual, state, parameter, observation, bcs, initial_guess)
        super().__init__(parameter.function_space(), observation)
        V = state.function_space()
        self._nullspaces = (nullspace, transpose_nullspace)  # Firedrake's objects, for its nonlinear solver
        self.state_space = V
        self.residual = residual
        self._u, self._m, self._v = state, parameter, v
        self._bcs = bcs
        self._hbcs = homogeneous_bcs(bcs)
        self._initial_guess = choice(InitialGuess, initial_guess, name, "initial_guess")
        self._u_start = state.copy(deepcopy=True)
        self._linear_params = linear_solver_parameters
        self._derive_forms(name)
        self._set_up_solvers(name, solver_parameters, linear_solver_parameters)
        self._jacobian_current = False
        self.newton_iterations = 0
        self._lam_key = None  # (linearisation point, w) of the adjoint held in self._lam
        self._C, self._C_point = None, None  # dF/dm, for blocked and repeated derivatives
        self._H, self._H_key = None, None  # second-derivative blocks for full Hessian actions
        self._uses_point, self._uses = None, 0
        # Firedrake cannot assemble a monolithic matrix with R-space rows or columns in a mixed space
        # (a product parameter V * R * R): those derivatives are assembled as vectors, action by action
        self._matrices_possible = not has_real_block(self.parameter_space)
        self._work_vecs = {}

    def _derive_forms(self, name):
        """Tangent, adjoint and second-order forms from the residual (UFL: derivative, action, replace)."""
        import firedrake as fd

        V, residual, state, parameter = self.state_space, self.residual, self._u, self._m
        self._J_form = derive(residual, state, fd.TrialFunction(V))  # A = dF/du
        self.affine = not depends_on(self._J_form, state)
        self._dm = fd.Function(self.parameter_space, name="dm")
        self._Fm_dm = fd.action(derive(residual, parameter), self._dm)  # F_m dm (in v)
        self._lam = fd.Function(V, name="adjoint")
        L = fd.replace(residual, {self._v: self._lam})  # F(u, m; lambda)
        self._Lm = derive(L, parameter, fd.TestFunction(self.parameter_space))  # F_m^T lambda (in psi)
        if is_zero(self._Lm):
            raise ValueError(f"{name}: the residual does not depend on the parameter (dF/dm = 0)")
        self._minus_Lm = -self._Lm
        # second order
        self._du = fd.Function(V, name="tangent")
        self._dlam = fd.Function(V, name="second_order_adjoint")
        Lu = derive(L, state, fd.TestFunction(V))
        self._soa_rhs = -(derive(Lu, state, self._du) + derive(Lu, parameter, self._dm))
        self._soa_zero = is_zero(self._soa_rhs)
        self._second = -(derive(self._Lm, state, self._du) + derive(self._Lm, parameter, self._dm)
                         + fd.replace(self._Lm, {self._lam: self._dlam}))
        self._rhs = fd.Cofunction(V.dual())

    def _set_up_solvers(self, name, solver_parameters, linear_solver_parameters):
        """One factorised operator for an affine residual (forward with lifting, tangent, adjoint); else
        Firedrake's nonlinear solver for the forward and the linearised operator for the derivatives."""
        import firedrake as fd

        V, residual, state = self.state_space, self.residual, self._u
        nullspace, transpose_nullspace = self._nullspaces
        ns, tns = (petsc_nullspace(b, V, name) for b in self._nullspaces)
        self._prefix = f"pdeinv_stationary_{next(_prefix)}_"
        symmetric = is_symmetric_operator(self._J_form, self._hbcs, (state, self._m))
        if self.affine:
            params = solver_parameters if solver_parameters is not None else linear_solver_parameters
            self._A = DirichletOperator(self._J_form, self._bcs, solver_parameters=params, symmetric=symmetric,
                                        options_prefix=self._prefix, nullspace=ns, transpose_nullspace=tns)
            self._F0 = at_zero(residual, state)  # F(0, m; v): A u = -F0
            self._F0_zero, self._F0_m = is_zero(self._F0), depends_on(self._F0, self._m)
            self._F0_value = fd.Cofunction(V.dual())
            if not self._F0_zero:
                fd.assemble(self._F0, tensor=self._F0_value)
            self._nonlinear = None
        else:
            params = default_newton_parameters(self.comm, space=V, singular=ns is not None) \
                if solver_parameters is None else solver_parameters
            check_device(params, self.comm, f"{name}: solver_parameters")  # OffloadPC alone would run on the CPU
            if linear_solver_parameters is None:  # device Newton solves: device tangent and adjoint solves too
                linear_solver_parameters = linear_parameters(params)
            problem = fd.NonlinearVariationalProblem(residual, state, bcs=self._bcs, J=self._J_form)
            self._nonlinear = fd.NonlinearVariationalSolver(
                problem, solver_parameters=params, options_prefix=self._prefix + "forward_",
                nullspace=nullspace, transpose_nullspace=transpose_nullspace)
            self._A = DirichletOperator(self._J_form, self._hbcs, solver_parameters=linear_solver_parameters,
                                        symmetric=symmetric, options_prefix=self._prefix + "linearised_",
                                        lift=False, nullspace=ns, transpose_nullspace=tns)
        self.linear_solver = self._A.solver_parameters

    # ----------------------------------------------------------------------------------- forward
    def _counts(self):
        self.counts["linear_solves"] = self._A.solves
        self.counts["factorisations"] = self._A.factorisations
        self.counts["krylov_iterations"] = self._A.iterations
        self.counts["newton_iterations"] = self.newton_iterations

    def _solve(self, m, prediction):
        import firedrake as fd

        self._jacobian_current = False
        self._m.assign(m)
        if self.affine:
            self._A.reassemble()
            if self._F0_m:
                fd.assemble(self._F0, tensor=self._F0_value)
            with self._F0_value.dat.vec_ro as f0, self._rhs.dat.vec_wo as b, self._u.dat.vec_wo as x:
                f0.copy(b)
                b.scale(-1.0)
                self._A.solve(b, x)
            self._jacobian_current = True
        else:
            if self._initial_guess is InitialGuess.FIXED:
                self._u.assign(self._u_start)
            try:
                self._nonlinear.solve()
            except Exception:
                self._u.assign(self._u_start)  # do not warm-start the next solve from a diverged iterate
                raise
            self.newton_iterations += self._nonlinear.snes.getIterationNumber()
            if self._A.nullspace is not None:  # the gauge the derivatives are taken in
                with self._u.dat.vec as x:
                    self._A.nullspace.remove(x)
        with self._u.dat.vec_ro as x:
            self.observation.observe(x, prediction, 0)
        self._counts()

    def _linearisation(self) -> DirichletOperator:
        """:math:`A` at the current solution, assembled (and factorised at its first solve) once."""
        if not self._jacobian_current:
            self._A.reassemble()
            self._jacobian_current = True
        return self._A

    def state(self, m):
        """The state :math:`u(m)` (a new Function)."""
        self._linearise(m)
        return self._u.copy(deepcopy=True)

    # ------------------------------------------------------------------------------- derivatives
    def _matrices_pay_off(self) -> bool:
        """Whether to work with assembled derivative matrices (dF/dm and, for full Hessians, the
        second-derivative blocks): from the second derivative action at one linearisation point on, as
        in Newton–CG's Hessian actions; a lone gradient keeps its one vector assembly."""
        if not self._matrices_possible:
            return False
        if self._uses_point is not self._point:
            self._uses_point, self._uses = self._point, 0
        self._uses += 1
        return self._uses >= 2

    def _tangent(self, dm, out):
        import firedrake as fd

        A = self._linearisation()
        self._dm.assign(dm)
        if self._matrices_pay_off():
            with dm.dat.vec_ro as d, self._rhs.dat.vec_wo as b:
                self._parameter_jacobian().mult(d, b)
        else:
            fd.assemble(self._Fm_dm, tensor=self._rhs)
        with self._rhs.dat.vec as b, out.dat.vec_wo as x:
            b.scale(-1.0)
            A.solve_homogeneous(b, x)

    def _adjoint(self, w, out):
        A = self._linearisation()
        with self._rhs.dat.vec_wo as b:
            b.zeroEntries()
            self.observation.observe_transpose_add(w, 0, b)
        with self._rhs.dat.vec as b, out.dat.vec_wo as x:
            A.solve_transpose(b, x)

    def _jvp(self, dm):
        self._tangent(dm, self._du)
        out = self.observation.zero_data(name="jvp")
        with self._du.dat.vec_ro as x:
            self.observation.observe(x, out, 0)
        self._counts()
        return out

    def _vjp(self, w):
        import firedrake as fd

        self._adjoint(w, self._lam)
        self._remember_adjoint(w)  # a gradient's adjoint is what the full Hessian actions that follow need
        if self._matrices_pay_off():
            out = fd.Cofunction(self.parameter_space.dual())
            with self._lam.dat.vec_ro as lam, out.dat.vec_wo as o:
                self._parameter_jacobian().multTranspose(lam, o)
                o.scale(-1.0)
        else:
            out = fd.assemble(self._minus_Lm)  # (Cofunction arithmetic would build a kernel per call)
        self._counts()
        return out

    # ------------------------------------------------------------------------ blocked derivatives
    def _parameter_jacobian(self):
        """:math:`C = \\partial F/\\partial m` as a sparse (state x parameter) matrix, assembled once per
        linearisation: a block of tangent right-hand sides is then one sparse-dense product."""
        import firedrake as fd

        if self._C_point is not self._point or self._C is None:
            form = derive(self.residual, self._m, fd.TrialFunction(self.parameter_space))
            self._C = fd.assemble(form, mat_type="aij", tensor=self._C) if self._C is not None else \
                fd.assemble(form, mat_type="aij")
            self._C_point = self._point
        return self._C.petscmat

    def _jvp_block(self, dms):
        from pdeinv.linalg.multivector import dense_block

        if not self._matrices_possible:
            return super()._jvp_block(dms)
        A = self._linearisation()
        C = self._parameter_jacobian()
        rhs = C.matMult(dense_block(dms))  # C dm_j for all j
        rhs.scale(-1.0)
        U = rhs.duplicate()
        A.solve_block(rhs, U)
        outs = self.observation.observe_block(U, 0)
        self._counts()
        return outs

    def _vjp_block(self, ws):
        from pdeinv.linalg.multivector import from_dense_block

        if not self._matrices_possible:
            return super()._vjp_block(ws)
        A = self._linearisation()
        C = self._parameter_jacobian()
        rhs = self.observation.transpose_block(ws, 0)  # B^T w_j
        Lam = rhs.duplicate()
        A.solve_block(rhs, Lam, transpose=True)
        out = from_dense_block(C.transposeMatMult(Lam), self.parameter_space, dual=True, scale=-1.0)
        self._counts()
        return out

    def _adjoint_cached(self, w):
        r""":math:`\lambda = A^{-T}B^T w` in ``self._lam``, solved once per (linearisation, w): the full
        Hessian actions of a Newton–CG iteration all use the gradient's adjoint.  Invariant: whoever
        writes ``self._lam`` records its w (:meth:`_remember_adjoint`)."""
        import numpy as np
        from mpi4py import MPI

        same = (self._lam_key is not None and self._lam_key[0] is self._point
                and self.comm.allreduce(bool(np.array_equal(self._lam_key[1], local_values(w))), op=MPI.LAND))
        if not same:
            self._adjoint(w, self._lam)
            self._remember_adjoint(w)

    def _remember_adjoint(self, w):

        self._lam_key = (self._point, local_values(w))

    def _work_vec(self, name, like):
        vec = self._work_vecs.get(name)
        if vec is None:
            vec = self._work_vecs[name] = like.duplicate()
        return vec

    def _second_derivative_matrices(self):
        """The second-derivative blocks of :math:`L(u, m; \\lambda)` at the current linearisation and
        cached adjoint, assembled once: :math:`L_{uu}, L_{um}` (state rows) and :math:`L_{mu}, L_{mm}`
        (parameter rows); None for a block that is zero."""
        import firedrake as fd

        if self._H_key is self._lam_key:
            return self._H
        V, Vm = self.state_space, self.parameter_space
        v2 = fd.TestFunction(V)
        Lu = derive(fd.replace(self.residual, {self._v: self._lam}), self._u, v2)
        forms = {"uu": derive(Lu, self._u, fd.TrialFunction(V)), "um": derive(Lu, self._m, fd.TrialFunction(Vm)),
                 "mu": derive(self._Lm, self._u, fd.TrialFunction(V)),
                 "mm": derive(self._Lm, self._m, fd.TrialFunction(Vm))}
        old = self._H or {}
        self._H = {k: None if is_zero(f) else
                   (fd.assemble(f, mat_type="aij", tensor=old[k]) if old.get(k) is not None
                    else fd.assemble(f, mat_type="aij")) for k, f in forms.items()}
        self._H_key = self._lam_key
        return self._H

    def _hessian_vjp(self, w, weight, dm):
        r"""Fused full Hessian action: the tangent solve, then ONE transpose solve whose right-hand side
        holds both the Gauss–Newton term :math:`B^T\phi''B\hat u` and the second-order adjoint terms
        :math:`-(L_{uu}\hat u + L_{um}\delta m)`; :math:`\lambda` for :math:`w` is reused and every
        second-derivative term is a product with a matrix assembled once per (linearisation, w).
        2 solves per action instead of 5, and no form assembly."""
        import firedrake as fd

        if not self._matrices_possible:  # the same terms, assembled as vectors (5 solves)
            return super()._hessian_vjp(w, weight, dm)
        self.counts["jvp"] += 1
        self.counts["second_order"] += 1
        self._adjoint_cached(w)
        H = self._second_derivative_matrices()
        C = self._parameter_jacobian()
        A = self._linearisation()
        du, dlam = self._du, self._dlam
        with dm.dat.vec_ro as d, self._rhs.dat.vec_wo as b, du.dat.vec_wo as x:
            C.mult(d, b)
            b.scale(-1.0)
            A.solve_homogeneous(b, x)
        jdm = self.observation.zero_data(name="jvp")
        with du.dat.vec_ro as x:
            self.observation.observe(x, jdm, 0)
        r = weight(jdm)
        with self._rhs.dat.vec_wo as b, du.dat.vec_ro as x, dm.dat.vec_ro as d:
            b.zeroEntries()
            self.observation.observe_transpose_add(r, 0, b)
            tmp = self._work_vec("state", b)
            for key, vec in (("uu", x), ("um", d)):
                if H[key] is not None:
                    H[key].petscmat.mult(vec, tmp)
                    b.axpy(-1.0, tmp)
        with self._rhs.dat.vec as b, dlam.dat.vec_wo as x:
            A.solve_transpose(b, x)
        out = fd.Cofunction(self.parameter_space.dual())
        with out.dat.vec_wo as o, du.dat.vec_ro as x, dm.dat.vec_ro as d, dlam.dat.vec_ro as y:
            C.multTranspose(y, o)
            tmp = self._work_vec("parameter", o)
            for key, vec in (("mu", x), ("mm", d)):
                if H[key] is not None:
                    H[key].petscmat.mult(vec, tmp)
                    o.axpy(1.0, tmp)
            o.scale(-1.0)
        self._counts()
        return out

    def _hessian_vjp_block(self, w, weight, dms):
        r"""The fused full Hessian of :meth:`_hessian_vjp` for a block of directions :math:`\delta M`: one
        blocked tangent solve :math:`\hat U = -A^{-1}C\,\delta M`, one blocked transpose solve
        :math:`\Lambda = A^{-T}(B^T\phi''B\hat U - L_{uu}\hat U - L_{um}\delta M)`, and
        :math:`-(C^T\Lambda + L_{mu}\hat U + L_{mm}\delta M)`: sparse x dense products throughout."""
        from pdeinv.linalg.multivector import dense_block, from_dense_block

        if not self._matrices_possible:
            return super()._hessian_vjp_block(w, weight, dms)
        self.counts["jvp"] += len(dms)
        self.counts["second_order"] += len(dms)
        self._adjoint_cached(w)
        H, C, A = self._second_derivative_matrices(), self._parameter_jacobian(), self._linearisation()
        D = dense_block(dms)
        rhs = C.matMult(D)
        rhs.scale(-1.0)
        U = rhs.duplicate()
        A.solve_block(rhs, U)
        R = self.observation.transpose_block([weight(j) for j in self.observation.observe_block(U, 0)], 0)
        for key, X in (("uu", U), ("um", D)):
            if H[key] is not None:
                R.axpy(-1.0, H[key].petscmat.matMult(X))
        Lam = R.duplicate()
        A.solve_block(R, Lam, transpose=True)
        out = C.transposeMatMult(Lam)
        for key, X in (("mu", U), ("mm", D)):
            if H[key] is not None:
                out.axpy(1.0, H[key].petscmat.matMult(X))
        self._counts()
        return from_dense_block(out, self.parameter_space, dual=True, scale=-1.0)

    def _second_order_vjp(self, w, dm):
        import firedrake as fd

        self._adjoint(w, self._lam)
        self._remember_adjoint(w)
        self._tangent(dm, self._du)  # also sets self._dm
        if self._soa_zero:
            self._dlam.zero()
        else:
            fd.assemble(self._soa_rhs, tensor=self._rhs)
            with self._rhs.dat.vec as b, self._dlam.dat.vec_wo as x:
                self._A.solve_transpose(b, x)
        out = fd.assemble(self._second)
        self._counts()
        return out
