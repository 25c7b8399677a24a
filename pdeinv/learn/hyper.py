r"""Hyperparameters as inputs of the cost: :math:`\mathcal J(m;\theta) = \sum_t T_t(m;\theta_t)`.

A :class:`HyperProblem` is a family of inverse problems indexed by a vector :math:`\theta` of
hyperparameters (one NumPy array, the same on every rank).  Each term owns a slice of :math:`\theta`
and gives, besides the term at fixed :math:`\theta` (an ordinary regularizer or misfit, so every
optimizer, the Laplace approximation and the spectral tools work unchanged), in closed form:

- :math:`\partial_\theta T(m;\theta)` (``partial_theta``, an array),
- :math:`\partial^2_{\theta m}T\,[\delta m]` (``mixed``, an array: how the gradient's pairing with
  :math:`\delta m` moves with each :math:`\theta_j`),
- :math:`\sum_j \delta\theta_j\,\partial_m\partial_{\theta_j}T` (``mixed_transpose``, a Cofunction on
  :math:`V_m^*`).

Positive hyperparameters are log-parametrised.  The terms:

:class:`Weight` (and :func:`regularization_weight`, :func:`prior_variance`, :func:`noise_level`)
    :math:`T = e^{s\theta}R(m)` for any regularizer, Gaussian prior or misfit :math:`R`:
    :math:`\partial_\theta T = sT`, :math:`\partial^2_{\theta m}T = s e^{s\theta}R'(m)`.
    :math:`s = 1`: a regularization weight :math:`\alpha = e^\theta`; :math:`s = -1` on a Gaussian prior:
    its variance scaled by :math:`e^\theta`; :math:`s = -2` on a misfit: the noise standard deviations
    scaled by :math:`e^\theta`.
:class:`MaternParameters`
    The BiLaplacian prior's :math:`(\log\rho, \log\sigma^2)` (correlation length, marginal variance):
    :math:`T = \tfrac12 d^TA M^{-1}A d`, :math:`d = m - \bar m`, :math:`A(\theta) = \gamma K + \delta M +
    \beta M_{\partial}` with :math:`\gamma \propto \rho^{\nu}\sigma^{-1}`,
    :math:`\delta \propto \rho^{\nu-2}\sigma^{-1}`, :math:`\beta = \sqrt{\gamma\delta}/1.42`, so
    :math:`\partial_j T = \langle A_j d, z\rangle` with :math:`z = M^{-1}Ad`, :math:`A_j = \partial_{\theta_j}A`, and
    :math:`\partial^2_{\theta_j m}T = A_j z + A M^{-1}A_j d`.
:class:`WeightField`
    A spatially varying weight :math:`w(x) = e^{\sum_j\theta_j\chi_j(x)}` over patches :math:`\chi_j`
    (e.g. a coarse grid, :func:`grid_patches`) inside any UFL functional the user writes, e.g.
    :math:`\tfrac12\int w\,|\nabla m|^2`; all derivatives by UFL.

The MAP objective omits the prior's log-determinant: hypergradients of a reconstruction loss need
only :math:`m^*(\theta) = \arg\min_m\mathcal J(m;\theta)`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from pdeinv._tape import unannotated_methods
from pdeinv.linalg.arrays import axpy, scale
from pdeinv.maps import MisfitTerm
from pdeinv.prior.base import GaussianPlus, GaussianPrior, Regularizer

__all__ = ["HyperTerm", "Weight", "regularization_weight", "prior_variance", "noise_level", "MaternParameters",
           "WeightField", "grid_patches", "HyperProblem", "RegularizerSum"]


def _scale_cofunction(c, factor):
    scale(c, factor)  # on the Vec: no kernel per call, any space
    return c


def as_theta(theta, size, name):
    arr = np.array(theta, dtype=float).reshape(-1) if not isinstance(theta, str) else None
    if arr is None or arr.shape != (size,):
        raise ValueError(f"{name}: expected {size} hyperparameter value(s), got {theta!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: hyperparameters must be finite, got {arr}")
    return arr


# ------------------------------------------------------------------------------- scaled objects
class _ScaledRegularizer(Regularizer):
    """:math:`c\\,R` for a fixed factor c."""

    def __init__(self, base, factor):
        super().__init__(base.space)
        self.base, self.factor = base, float(factor)

    def __call__(self, m):
        return self.factor * self.base(m)

    def gradient(self, m):
        return _scale_cofunction(self.base.gradient(m), self.factor)

    def hessian_action(self, m, dm):
        return _scale_cofunction(self.base.hessian_action(m, dm), self.factor)


class _ScaledGaussian(GaussianPrior):
    """The Gaussian prior with precision :math:`c\\,\\mathcal C^{-1}` (covariance :math:`\\mathcal C/c`)."""

    def __init__(self, base, factor):
        Regularizer.__init__(self, base.space)
        self.base, self.factor, self.mean = base, float(factor), base.mean

    def precision_action(self, dm):
        return _scale_cofunction(self.base.precision_action(dm), self.factor)

    def covariance_action(self, c):
        out = self.base.covariance_action(c)
        scale(out, 1.0 / self.factor)
        return out

    def sample_centered(self, *, seed, **kwargs):
        out = self.base.sample_centered(seed=seed, **kwargs)
        scale(out, 1.0 / math.sqrt(self.factor))
        return out


@unannotated_methods
class _ScaledMisfit(MisfitTerm):
    """:math:`c\\,\\Phi` with the Misfit interface (noise standard deviations scaled by :math:`c^{-1/2}`)."""

    def __init__(self, base, factor):
        self.base, self.factor = base, float(factor)
        self.map, self.noise, self.data = base.map, base.noise, base.data

    @property
    def parameter_space(self):
        return self.base.parameter_space

    @property
    def scale(self) -> float:
        return self.factor

    @property
    def second_derivatives(self) -> bool:
        return self.base.second_derivatives

    @property
    def counts(self):
        return self.base.counts

    def __call__(self, m):
        return self.factor * self.base(m)

    def gradient(self, m):
        return _scale_cofunction(self.base.gradient(m), self.factor)

    def gauss_newton_action(self, m, dm):
        return _scale_cofunction(self.base.gauss_newton_action(m, dm), self.factor)

    def hessian_action(self, m, dm):
        return _scale_cofunction(self.base.hessian_action(m, dm), self.factor)


class RegularizerSum(Regularizer):
    """:math:`\\sum_i R_i(m)` (cost, gradient and Hessian action are the sums)."""

    def __init__(self, *terms):
        if not terms:
            raise ValueError("RegularizerSum: give at least one regularizer")
        super().__init__(terms[0].space)
        for r in terms:
            if r.space != self.space:
                raise ValueError("RegularizerSum: every regularizer must live on one parameter space")
        self.terms = tuple(terms)

    def __call__(self, m):
        return sum(r(m) for r in self.terms)

    def _sum(self, parts):
        first = parts[0]
        for c in parts[1:]:
            axpy(first, 1.0, c)
        return first

    def gradient(self, m):
        return self._sum([r.gradient(m) for r in self.terms])

    def hessian_action(self, m, dm):
        return self._sum([r.hessian_action(m, dm) for r in self.terms])


# ---------------------------------------------------------------------------------------- terms
@unannotated_methods
class HyperTerm(ABC):
    """One term of :math:`\\mathcal J(m;\\theta)` owning ``len(names)`` hyperparameters.

    ``kind`` is ``"misfit"`` or ``"regularizer"``; :meth:`bind` returns the term at fixed
    :math:`\\theta` (a Misfit-like object or a Regularizer).
    """

    kind = "regularizer"
    names: tuple = ()

    def __init_subclass__(cls, **kwargs):
        # every subclass (a user's too) runs its public methods with pyadjoint annotation off
        super().__init_subclass__(**kwargs)
        unannotated_methods(cls)

    @property
    def size(self) -> int:
        return len(self.names)

    @abstractmethod
    def bind(self, theta): ...

    @abstractmethod
    def partial_theta(self, m, theta) -> np.ndarray: ...

    @abstractmethod
    def mixed(self, m, theta, dm) -> np.ndarray: ...

    @abstractmethod
    def mixed_transpose(self, m, theta, dtheta): ...

    def with_data(self, data):
        """The term for other observed data (misfit terms only)."""
        raise TypeError(f"{type(self).__name__}: only misfit terms depend on data")


class Weight(HyperTerm):
    r""":math:`T(m;\theta) = e^{s\theta}\,R(m)` for a regularizer, Gaussian prior or misfit :math:`R`.

    Parameters
    ----------
    target : Regularizer, GaussianPrior or Misfit
    exponent : float
        :math:`s` (non-zero).
    name : str
    """

    def __init__(self, target, *, exponent: float = 1.0, name: str = "log_weight"):
        from pdeinv.maps import Misfit

        if not (isinstance(exponent, (int, float)) and math.isfinite(exponent) and exponent != 0):
            raise ValueError(f"Weight: exponent must be a non-zero finite number, got {exponent!r}")
        if isinstance(target, Misfit):
            self.kind = "misfit"
        elif not isinstance(target, Regularizer):
            raise TypeError(f"Weight: target must be a pdeinv Regularizer, GaussianPrior or Misfit, "
                            f"got {type(target).__name__}")
        self.target, self.exponent, self.names = target, float(exponent), (str(name),)

    def factor(self, theta) -> float:
        return math.exp(self.exponent * float(theta[0]))

    def bind(self, theta):
        c = self.factor(theta)
        if self.kind == "misfit":
            return _ScaledMisfit(self.target, c)
        if isinstance(self.target, GaussianPrior):
            return _ScaledGaussian(self.target, c)
        return _ScaledRegularizer(self.target, c)

    def partial_theta(self, m, theta):
        return np.array([self.exponent * self.factor(theta) * self.target(m)])

    def mixed(self, m, theta, dm):
        from pdeinv.verify import dual_pairing

        return np.array([self.exponent * self.factor(theta) * dual_pairing(self.target.gradient(m), dm)])

    def mixed_transpose(self, m, theta, dtheta):
        return _scale_cofunction(self.target.gradient(m), self.exponent * self.factor(theta) * float(dtheta[0]))

    def with_data(self, data):
        from pdeinv.maps import Misfit

        if self.kind != "misfit":
            return super().with_data(data)
        return Weight(Misfit(self.target.map, self.target.noise, data), exponent=self.exponent, name=self.names[0])


def regularization_weight(regularizer, *, name: str = "log_alpha") -> Weight:
    """:math:`\\alpha R(m)` with :math:`\\theta = \\log\\alpha`."""
    return Weight(regularizer, exponent=1.0, name=name)


def prior_variance(prior, *, name: str = "log_variance_factor") -> Weight:
    """A Gaussian prior with its covariance scaled by :math:`e^\\theta` (precision by :math:`e^{-\\theta}`)."""
    if not isinstance(prior, GaussianPrior):
        raise TypeError(f"prior_variance: expected a GaussianPrior, got {type(prior).__name__}")
    return Weight(prior, exponent=-1.0, name=name)


def noise_level(misfit, *, name: str = "log_noise_factor") -> Weight:
    """The misfit with every noise standard deviation scaled by :math:`e^\\theta` (so :math:`e^{-2\\theta}\\Phi`)."""
    return Weight(misfit, exponent=-2.0, name=name)


class MaternParameters(HyperTerm):
    r"""The BiLaplacian prior's log correlation length and log marginal variance.

    Parameters
    ----------
    space : firedrake.FunctionSpace
        Scalar parameter space.
    mean : Function or UFL expression, optional
    names : tuple of str
    """

    def __init__(self, space, *, mean=None, names=("log_correlation_length", "log_variance")):
        import firedrake as fd

        from pdeinv.prior.bilaplacian import BiLaplacianPrior

        self.space, self.names = space, tuple(names)
        if len(self.names) != 2:
            raise ValueError(f"MaternParameters: names must be two strings, got {names!r}")
        self.dim = space.mesh().topological_dimension
        self.nu = 2.0 - self.dim / 2.0
        self._mean = mean
        u, v = fd.TrialFunction(space), fd.TestFunction(space)
        self._K = fd.assemble(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx, mat_type="aij").petscmat
        self._Mm = fd.assemble(u * v * fd.dx, mat_type="aij").petscmat
        self._Mb = fd.assemble(u * v * fd.ds, mat_type="aij").petscmat
        self._cache = {}
        self._prior_class = BiLaplacianPrior

    def coefficients(self, theta):
        """:math:`(\\gamma, \\delta, \\beta)` and their derivatives (rows: :math:`\\theta_0, \\theta_1`)."""
        from pdeinv.prior.bilaplacian import bilaplacian_coefficients

        rho, var = math.exp(theta[0]), math.exp(theta[1])
        g, d = bilaplacian_coefficients(rho, var, self.dim)
        b = math.sqrt(g * d) / 1.42
        dlog = np.array([[self.nu, self.nu - 2.0], [-0.5, -0.5]])  # d log(gamma, delta) / d theta
        dg, dd = g * dlog[:, 0], d * dlog[:, 1]
        db = b * 0.5 * (dlog[:, 0] + dlog[:, 1])
        return (g, d, b), np.stack([dg, dd, db], axis=1)

    def bind(self, theta):
        theta = as_theta(theta, 2, "MaternParameters")
        key = theta.tobytes()
        if key not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            (g, d, _), _ = self.coefficients(theta)
            self._cache[key] = self._prior_class(self.space, gamma=g, delta=d, mean=self._mean)
        return self._cache[key]

    # A_j x = dgamma_j K x + ddelta_j M x + dbeta_j Mb x
    def _apply_Aj(self, row, x, out):
        tmp = out.duplicate()
        self._K.mult(x, out)
        out.scale(row[0])
        self._Mm.mult(x, tmp)
        out.axpy(row[1], tmp)
        self._Mb.mult(x, tmp)
        out.axpy(row[2], tmp)

    def _vectors(self, m, theta):
        """(prior, d, A d, z = M^{-1} A d) as PETSc Vecs."""
        prior = self.bind(theta)
        prior._check(m)
        d = prior._deviation(m)
        with d.dat.vec_ro as dv:
            dvec = dv.copy()
        Ad = dvec.duplicate()
        prior._A.matrix.petscmat.mult(dvec, Ad)
        z = dvec.duplicate()
        prior._M.solve_homogeneous(Ad.copy(), z)
        return prior, dvec, z

    def partial_theta(self, m, theta):
        theta = as_theta(theta, 2, "MaternParameters")
        _, rows = self.coefficients(theta)
        _, d, z = self._vectors(m, theta)
        out, tmp = np.zeros(2), d.duplicate()
        for j in range(2):
            self._apply_Aj(rows[j], d, tmp)
            out[j] = tmp.dot(z)
        return out

    def mixed(self, m, theta, dm):
        theta = as_theta(theta, 2, "MaternParameters")
        _, rows = self.coefficients(theta)
        prior, d, z = self._vectors(m, theta)
        with dm.dat.vec_ro as dmv:
            x = dmv.copy()
        Adm, w, tmp = x.duplicate(), x.duplicate(), x.duplicate()
        prior._A.matrix.petscmat.mult(x, Adm)
        prior._M.solve_homogeneous(Adm, w)  # w = M^{-1} A dm
        out = np.zeros(2)
        for j in range(2):
            self._apply_Aj(rows[j], x, tmp)
            out[j] = tmp.dot(z)
            self._apply_Aj(rows[j], d, tmp)
            out[j] += tmp.dot(w)
        return out

    def mixed_transpose(self, m, theta, dtheta):
        import firedrake as fd

        theta = as_theta(theta, 2, "MaternParameters")
        _, rows = self.coefficients(theta)
        row = np.asarray(dtheta, dtype=float) @ rows
        prior, d, z = self._vectors(m, theta)
        out = fd.Cofunction(self.space.dual())
        tmp, y = d.duplicate(), d.duplicate()
        with out.dat.vec_wo as ov:
            self._apply_Aj(row, z, ov)  # A_theta z
            self._apply_Aj(row, d, tmp)
            prior._M.solve_homogeneous(tmp, y)
            prior._A.matrix.petscmat.mult(y, tmp)
            ov.axpy(1.0, tmp)  # + A M^{-1} A_theta d
        return out


def grid_patches(mesh, nx: int, ny: int = None):
    """Patch labels of an ``nx`` x ``ny`` grid over the mesh's bounding box (a DG0 Function of
    integers stored as floats) and the number of patches, for :class:`WeightField`."""
    import firedrake as fd
    from mpi4py import MPI

    ny = nx if ny is None else ny
    if not (isinstance(nx, (int, np.integer)) and isinstance(ny, (int, np.integer)) and nx >= 1 and ny >= 1):
        raise ValueError(f"grid_patches: nx and ny must be positive integers, got {nx!r}, {ny!r}")
    coords = mesh.coordinates.dat.data_ro
    lo, hi = np.empty(coords.shape[1]), np.empty(coords.shape[1])
    mesh.comm.Allreduce(np.ascontiguousarray(coords.min(axis=0)), lo, op=MPI.MIN)
    mesh.comm.Allreduce(np.ascontiguousarray(coords.max(axis=0)), hi, op=MPI.MAX)
    x = fd.SpatialCoordinate(mesh)
    Q = fd.FunctionSpace(mesh, "DG", 0)
    mid = fd.Function(fd.VectorFunctionSpace(mesh, "DG", 0)).interpolate(x)
    c = mid.dat.data_ro
    ix = np.clip(np.floor((c[:, 0] - lo[0]) / (hi[0] - lo[0]) * nx), 0, nx - 1)
    iy = np.clip(np.floor((c[:, 1] - lo[1]) / (hi[1] - lo[1]) * ny), 0, ny - 1)
    labels = fd.Function(Q, name="patches")
    labels.dat.data[:] = ix + nx * iy
    return labels, int(nx * ny)


class WeightField(HyperTerm):
    r"""A UFL functional :math:`R(m; w)` with a spatially varying weight
    :math:`w = e^{s}`, :math:`s = \sum_j\theta_j\chi_j` (piecewise constant over patches).

    Parameters
    ----------
    space : firedrake.FunctionSpace
        The parameter space.
    functional : callable ``(m, w) -> UFL 0-form``
        E.g. ``lambda m, w: 0.5 * w * fd.inner(fd.grad(m), fd.grad(m)) * fd.dx``.
    patches : (Function, int)
        DG0 patch labels and their number (from :func:`grid_patches`).
    name : str
        Prefix of the hyperparameter names (``name_0``, ``name_1``, ...).
    """

    def __init__(self, space, functional, patches, *, name: str = "log_weight"):
        import firedrake as fd

        labels, count = patches
        self.space, self.labels, self.count = space, labels, int(count)
        self.names = tuple(f"{name}_{j}" for j in range(self.count))
        self._label_index = np.asarray(labels.dat.data_ro, dtype=np.int64)
        if self._label_index.size and (self._label_index.min() < 0 or self._label_index.max() >= self.count):
            raise ValueError(f"WeightField: patch labels must be in [0, {self.count})")
        self._m, self._dm, self._s = fd.Function(space), fd.Function(space), fd.Function(labels.function_space())
        self._ds = fd.Function(labels.function_space())
        value = functional(self._m, fd.exp(self._s))
        v = fd.TestFunction(space)
        q = fd.TestFunction(labels.function_space())
        self._value = value
        self._grad = fd.derivative(value, self._m, v)
        self._hess = fd.derivative(self._grad, self._m, self._dm)
        self._dtheta = fd.derivative(value, self._s, q)  # a 1-form on DG0
        self._mixed = fd.derivative(fd.action(self._grad, self._dm), self._s, q)
        self._mixed_t = fd.derivative(self._grad, self._s, self._ds)

    def _set(self, m, theta, dm=None):
        theta = as_theta(theta, self.count, "WeightField")
        self._m.assign(m)
        self._s.dat.data[:] = theta[self._label_index]
        if dm is not None:
            self._dm.assign(dm)
        return theta

    def _reduce(self, cof):
        """:math:`\\sum_{K\\in\\text{patch }j} c_K` over this rank's cells, then over all ranks."""
        local = np.bincount(self._label_index, weights=cof.dat.data_ro, minlength=self.count)
        return self.space.mesh().comm.allreduce(local)

    def bind(self, theta):
        return _BoundField(self, as_theta(theta, self.count, "WeightField"))

    def partial_theta(self, m, theta):
        import firedrake as fd

        self._set(m, theta)
        return self._reduce(fd.assemble(self._dtheta))

    def mixed(self, m, theta, dm):
        import firedrake as fd

        self._set(m, theta, dm)
        return self._reduce(fd.assemble(self._mixed))

    def mixed_transpose(self, m, theta, dtheta):
        import firedrake as fd

        self._set(m, theta)
        self._ds.dat.data[:] = np.asarray(dtheta, dtype=float)[self._label_index]
        return fd.assemble(self._mixed_t)


class _BoundField(Regularizer):
    """:class:`WeightField` at fixed :math:`\\theta` (shares its forms; sets the values per call)."""

    def __init__(self, field, theta):
        super().__init__(field.space)
        self.field, self.theta = field, theta

    def __call__(self, m):
        import firedrake as fd

        self._check(m)
        self.field._set(m, self.theta)
        return float(fd.assemble(self.field._value))

    def gradient(self, m):
        import firedrake as fd

        self._check(m)
        self.field._set(m, self.theta)
        return fd.assemble(self.field._grad)

    def hessian_action(self, m, dm):
        import firedrake as fd

        self._check(m)
        self._check(dm, "dm")
        self.field._set(m, self.theta, dm)
        return fd.assemble(self.field._hess)


# ------------------------------------------------------------------------------------ the family
@unannotated_methods
class HyperProblem:
    r"""The family :math:`\theta \mapsto \mathcal J(\cdot;\theta)` of inverse problems.

    Parameters
    ----------
    misfit : pdeinv.maps.Misfit or HyperTerm
        The data misfit, fixed or with hyperparameters (:func:`noise_level`).
    *terms : Regularizer or HyperTerm
        Regularization terms; plain regularizers have no hyperparameters.

    Attributes
    ----------
    names : tuple of str
        The hyperparameters, in the order of :math:`\theta`.
    """

    def __init__(self, misfit, *terms):
        from pdeinv.maps import Misfit

        if not terms:
            raise ValueError("HyperProblem: give at least one regularization term")
        if isinstance(misfit, HyperTerm) and misfit.kind != "misfit":
            raise TypeError("HyperProblem: the first argument must be a misfit (or a misfit term)")
        if not isinstance(misfit, (Misfit, HyperTerm)):
            raise TypeError(f"HyperProblem: misfit must be a pdeinv Misfit or misfit term, got {type(misfit).__name__}")
        for t in terms:
            if not isinstance(t, (Regularizer, HyperTerm)) or (isinstance(t, HyperTerm) and t.kind != "regularizer"):
                raise TypeError(f"HyperProblem: regularization terms must be Regularizers or regularizer "
                                f"HyperTerms, got {type(t).__name__}")
        self.misfit, self.terms = misfit, tuple(terms)
        self._all = (misfit,) + self.terms
        self._slices, start = [], 0
        for t in self._all:
            n = t.size if isinstance(t, HyperTerm) else 0
            self._slices.append(slice(start, start + n))
            start += n
        self.size = start
        if self.size == 0:
            raise ValueError("HyperProblem: no term has hyperparameters")
        self.names = tuple(n for t in self._all if isinstance(t, HyperTerm) for n in t.names)
        base = misfit.target if isinstance(misfit, HyperTerm) else misfit
        self.map, self.parameter_space = base.map, base.parameter_space
        self._problems = {}

    def check_theta(self, theta) -> np.ndarray:
        """``theta`` as a float array of the right length (one clear error otherwise)."""
        return as_theta(theta, self.size, f"HyperProblem {self.names}")

    def problem(self, theta):
        """The :class:`~pdeinv.problem.InverseProblem` at :math:`\\theta` (cached for the last few)."""
        from pdeinv.problem import InverseProblem

        theta = self.check_theta(theta)
        key = theta.tobytes()
        if key not in self._problems:
            if len(self._problems) > 4:
                self._problems.clear()
            bound = [t.bind(theta[s]) if isinstance(t, HyperTerm) else t
                     for t, s in zip(self._all, self._slices, strict=True)]
            regs = bound[1:]
            gauss = [r for r in regs if isinstance(r, GaussianPrior)]
            if len(regs) == 1:
                prior = regs[0]
            elif gauss:
                prior = GaussianPlus(gauss[0], *[r for r in regs if r is not gauss[0]])
            else:
                prior = RegularizerSum(*regs)
            self._problems[key] = InverseProblem(bound[0], prior)
        return self._problems[key]

    def _each(self, theta):
        theta = self.check_theta(theta)
        return theta, [(t, s) for t, s in zip(self._all, self._slices, strict=True) if isinstance(t, HyperTerm)]

    def partial_theta(self, m, theta) -> np.ndarray:
        """:math:`\\partial_\\theta\\mathcal J(m;\\theta)`."""
        theta, terms = self._each(theta)
        out = np.zeros(self.size)
        for t, s in terms:
            out[s] = t.partial_theta(m, theta[s])
        return out

    def mixed(self, m, theta, dm) -> np.ndarray:
        """:math:`\\partial^2_{\\theta m}\\mathcal J\\,[\\delta m]` (one number per hyperparameter)."""
        theta, terms = self._each(theta)
        out = np.zeros(self.size)
        for t, s in terms:
            out[s] = t.mixed(m, theta[s], dm)
        return out

    def mixed_transpose(self, m, theta, dtheta):
        """:math:`\\sum_j\\delta\\theta_j\\,\\partial_m\\partial_{\\theta_j}\\mathcal J` (a Cofunction)."""
        import firedrake as fd

        theta, terms = self._each(theta)
        dtheta = as_theta(dtheta, self.size, "HyperProblem.mixed_transpose: dtheta")
        out = fd.Cofunction(self.parameter_space.dual())
        for t, s in terms:
            if np.any(dtheta[s] != 0):
                out.dat.data[:] += t.mixed_transpose(m, theta[s], dtheta[s]).dat.data_ro
        return out

    def with_data(self, data):
        """The same family for other observed data (a training or test pair)."""
        from pdeinv.maps import Misfit

        if isinstance(self.misfit, HyperTerm):
            misfit = self.misfit.with_data(data)
        else:
            misfit = Misfit(self.misfit.map, self.misfit.noise, data)
        return HyperProblem(misfit, *self.terms)
