r"""Laplace approximation :math:`\mathcal N(m_{MAP}, \Gamma_{post})`,
:math:`\Gamma_{post} = (H_{mis} + \Gamma_{pr}^{-1})^{-1}`.

With the generalized eigenpairs :math:`H_{mis}u_i = \lambda_i\Gamma_{pr}^{-1}u_i`
(:math:`U^T\Gamma_{pr}^{-1}U = I`, from :mod:`pdeinv.linalg.randomized`) of the Gauss–Newton misfit
Hessian at the MAP point,

.. math::

    \Gamma_{post} \approx \Gamma_{pr} - U D U^T,\quad D = \operatorname{diag}\frac{\lambda_i}{1+\lambda_i},
    \qquad
    \Gamma_{post}^{-1} \approx \Gamma_{pr}^{-1} + \Gamma_{pr}^{-1} U \Lambda U^T \Gamma_{pr}^{-1}.

Neglecting :math:`\lambda_{k+1}, \dots` costs at most :math:`\lambda_{k+1}/(1+\lambda_{k+1})` relative to
:math:`\Gamma_{pr}` (in the sense :math:`0 \le c^T(\Gamma_k - \Gamma_{post})c \le
\frac{\lambda_{k+1}}{1+\lambda_{k+1}} c^T\Gamma_{pr}c`).

Samples: :math:`m = m_{MAP} + (I - U P U^T\Gamma_{pr}^{-1})\,s`, :math:`s \sim \mathcal N(0, \Gamma_{pr})`,
:math:`P = \operatorname{diag}(1 - 1/\sqrt{1+\lambda_i})`: exactly the law
:math:`\mathcal N(m_{MAP}, \Gamma_{pr} - UDU^T)`.

Information: with :math:`\bar m` the prior mean,

.. math::

    D_{KL}(\text{post}\,\|\,\text{prior}) = \tfrac12\Big[\sum_i \log(1+\lambda_i) - \frac{\lambda_i}{1+\lambda_i}
      + \|m_{MAP} - \bar m\|^2_{\Gamma_{pr}^{-1}}\Big],
    \qquad
    \text{EIG} = \tfrac12\sum_i \log(1+\lambda_i)

(the expected information gain of a linear-Gaussian problem).  The *data-informed dimension* is the
number of :math:`\lambda_i > 1`: directions where the data outweigh the prior.

Pointwise variance: :math:`\operatorname{diag}\Gamma_{post} = \operatorname{diag}\Gamma_{pr} -
\sum_i d_i u_i^2` — the low-rank part exactly; :math:`\operatorname{diag}\Gamma_{pr}` either exactly
(one prior covariance action per dof: small problems) or estimated from :math:`N` prior samples
(unbiased, relative standard error :math:`\sqrt{2/N}` per dof).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pdeinv._checks import Choice, choice
from pdeinv._tape import unannotated_methods
from pdeinv.linalg.arrays import axpy, local_values, set_local_values
from pdeinv.linalg.randomized import double_pass, residuals, single_pass
from pdeinv.problem import Hessian

__all__ = ["LaplaceApproximation", "BlockCovariance", "EigenMethod", "VarianceMethod"]


class EigenMethod(Choice):
    """The randomized generalized eigensolver (Halko et al.; hIPPYlib's doublePassG / singlePassG)."""

    DOUBLE_PASS = "double_pass"
    SINGLE_PASS = "single_pass"


class VarianceMethod(Choice):
    """The pointwise prior variance: exact (one covariance action per dof) or sampled."""

    EXACT = "exact"
    SAMPLES = "samples"

MAX_BLOCK_DOFS = 1000  # block_covariance costs one covariance action per dof of the block


@dataclass(frozen=True)
class BlockCovariance:
    r"""The posterior covariance of one (small) block of the parameter, e.g. the scalars of a joint
    field + scalars inversion.

    Attributes
    ----------
    matrix : numpy.ndarray (n, n)
        :math:`\Gamma_{post}` restricted to the block's dofs (symmetric; identical on every rank).
    columns : tuple of firedrake.Function
        :math:`\Gamma_{post}e_j` for each dof j of the block: the covariance of *every* parameter dof with
        it — its restriction to another block is the cross-covariance (e.g. which part of the field is
        confounded with a material constant).
    correlation : numpy.ndarray (n, n)
        ``matrix`` scaled to unit diagonal.
    """

    matrix: np.ndarray
    columns: tuple
    correlation: np.ndarray


@unannotated_methods
class LaplaceApproximation:
    """The Gaussian approximation of the posterior at ``m_map``.

    Parameters
    ----------
    problem : pdeinv.problem.InverseProblem
        With a Gaussian prior.
    m_map : firedrake.Function
        The MAP point (e.g. ``newton_cg(...).m``).
    rank : int
        Number of eigenpairs :math:`k`.
    oversampling : int
        :math:`p`.
    method : EigenMethod or {"double_pass", "single_pass"}
    power_iterations : int
        Double pass only.
    seed : int
        Seed of the random block (partition independent).
    hessian : pdeinv.problem.Hessian or {"gauss_newton", "full", "auto"}
        The misfit Hessian :math:`H_{mis}` at the MAP point: Gauss–Newton :math:`J^TWJ` (the default:
        positive semidefinite, what most posterior codes use), or the full Hessian with the map's
        second-order term (hIPPYlib's ``gauss_newton_approx=False``; the exact Hessian of the cost, so
        the Laplace approximation proper — eigenvalues in :math:`(-1, 0)` are then legitimate, one
        :math:`\\le -1` means ``m_map`` is not a local minimum).  AUTO: full where the map has second
        derivatives.  Both are applied in blocks where the model supports it.
    """

    def __init__(self, problem, m_map, *, rank: int, oversampling: int = 20,
                 method: EigenMethod = EigenMethod.DOUBLE_PASS,
                 power_iterations: int = 0, seed: int = 0, hessian: Hessian = Hessian.GAUSS_NEWTON):
        from pdeinv.maps import check_function
        from pdeinv.prior.base import GaussianPlus, GaussianPrior

        self.hessian = _checked_hessian(problem, hessian)
        if isinstance(problem.prior, GaussianPlus):
            prior, extras = problem.prior.gaussian, problem.prior  # extra terms join the misfit Hessian
        elif isinstance(problem.prior, GaussianPrior):
            prior, extras = problem.prior, None
        else:
            raise TypeError("LaplaceApproximation: the problem's prior must be a GaussianPrior or GaussianPlus")
        method = choice(EigenMethod, method, "LaplaceApproximation", "method")
        check_function(m_map, problem.parameter_space, "LaplaceApproximation: m_map")
        self.problem, self.prior = problem, prior
        self.space = problem.parameter_space
        self.mean = m_map.copy(deepcopy=True)
        self.mean.rename("posterior_mean")
        self._count = 0
        gauss_newton = self.hessian is Hessian.GAUSS_NEWTON

        def apply_A(v):
            self._count += 1
            h = problem.hessian_action(self.mean, v, misfit_only=True, gauss_newton=gauss_newton)
            if extras is not None:
                axpy(h, 1.0, extras.extras_hessian_action(self.mean, v))
            return h

        def apply_A_block(vs):  # all columns through one pass of blocked forward/adjoint solves
            self._count += len(vs)
            return problem.hessian_action_block(self.mean, vs, misfit_only=True, hessian=self.hessian)

        self._apply_A = apply_A
        blocks = {"apply_A_block": apply_A_block if extras is None else None,
                  "apply_Binv_block": self.prior.covariance_action_block}
        if method is EigenMethod.DOUBLE_PASS:
            self.eig = double_pass(apply_A, self.prior.precision_action, self.prior.covariance_action, self.space,
                                   k=rank, p=oversampling, power_iterations=power_iterations, seed=seed, **blocks)
        else:
            self.eig = single_pass(apply_A, self.prior.precision_action, self.prior.covariance_action, self.space,
                                   k=rank, p=oversampling, seed=seed, **blocks)
        lam = _admissible(self.eig.eigenvalues, gauss_newton)
        self.eigenvalues = lam
        self._d = lam / (1.0 + lam)
        self._p = 1.0 - 1.0 / np.sqrt(1.0 + lam)

    # ---------------------------------------------------------------------------------- counts etc.
    @property
    def hessian_actions(self) -> int:
        """Actions of the misfit Hessian used so far (each one JVP + one VJP)."""
        return self._count

    @property
    def data_informed_dimension(self) -> int:
        return int(np.sum(self.eigenvalues > 1.0))

    def eigen_residuals(self) -> np.ndarray:
        """A-posteriori check: :math:`\\|H u_i - \\lambda_i\\Gamma_{pr}^{-1}u_i\\|_{\\Gamma_{pr}}` per pair."""
        return residuals(self._apply_A, self.prior.covariance_action, self.eig)

    # -------------------------------------------------------------------------------- operators
    def _coefficients(self, c):
        """:math:`U^T c` for a Cofunction c."""
        return self.eig.eigenvectors.pair([c])[0]

    def covariance_action(self, c):
        """:math:`\\Gamma_{post}c \\approx \\Gamma_{pr}c - UDU^Tc` (Cofunction -> Function)."""
        out = self.prior.covariance_action(c)
        coef = self._d * self._coefficients(c)
        axpy(out, -1.0, self.eig.eigenvectors.combine(coef[:, None])[0])
        return out

    def precision_action(self, x):
        """:math:`\\Gamma_{post}^{-1}x \\approx \\Gamma_{pr}^{-1}x
        + \\Gamma_{pr}^{-1}U\\Lambda U^T\\Gamma_{pr}^{-1}x` (Function -> Cofunction)."""
        from pdeinv.linalg.multivector import combine_cofunctions

        out = self.prior.precision_action(x)
        coef = np.array([_pair(Bu, x) for Bu in self.eig.B_eigenvectors]) * self.eigenvalues
        axpy(out, 1.0, combine_cofunctions(self.eig.B_eigenvectors, coef[:, None])[0])
        return out

    def sample_centered(self, *, seed: int):
        """A draw of :math:`\\mathcal N(0, \\Gamma_{post})`: a prior sample corrected by the low-rank update."""
        s = self.prior.sample_centered(seed=seed)
        coef = self._p * np.array([_pair(Bu, s) for Bu in self.eig.B_eigenvectors])
        axpy(s, -1.0, self.eig.eigenvectors.combine(coef[:, None])[0])
        return s

    def sample(self, *, seed: int, name: str = "posterior_sample"):
        """A draw of the Laplace approximation :math:`\\mathcal N(m_{MAP}, \\Gamma_{post})`."""
        s = self.sample_centered(seed=seed)
        axpy(s, 1.0, self.mean)
        s.rename(name)
        return s

    def misfit_hessian_form(self, x) -> float:
        """:math:`\\tfrac12\\sum_i\\lambda_i\\,(u_i^T\\Gamma_{pr}^{-1}x)^2`: half the low-rank misfit Hessian's
        quadratic form at ``x`` (so that :math:`\\tfrac12\\|x\\|^2_{\\Gamma_{post}^{-1}} = \\tfrac12\\|x\\|^2_
        {\\Gamma_{pr}^{-1}} +` this), and its gradient as a Cofunction: ``(value, gradient)``."""
        import firedrake as fd

        from pdeinv.linalg.multivector import combine_cofunctions

        if not len(self.eigenvalues):
            return 0.0, fd.Cofunction(self.space.dual())
        coef = np.array([_pair(Bu, x) for Bu in self.eig.B_eigenvectors])
        grad = combine_cofunctions(self.eig.B_eigenvectors, (self.eigenvalues * coef)[:, None])[0]
        return 0.5 * float(np.sum(self.eigenvalues * coef**2)), grad

    def block_covariance(self, subs) -> BlockCovariance:
        """:class:`BlockCovariance` of one sub-space (``W.sub(i)``) or several (``[W.sub(1), W.sub(2),
        W.sub(3)]``: three scalars together), of at most ``MAX_BLOCK_DOFS`` dofs in all; dofs ordered sub-space
        by sub-space.  One posterior covariance action per dof."""
        import firedrake as fd

        from pdeinv.linalg.arrays import root_space, subspace_indices

        subs = list(subs) if isinstance(subs, (list, tuple)) else [subs]
        if not subs or any(V.parent is None or root_space(V) != self.space for V in subs):
            raise ValueError("block_covariance: expected sub-spaces of the parameter space (W.sub(i))")
        n = sum(V.dim() for V in subs)
        if n > MAX_BLOCK_DOFS:
            raise ValueError(f"block_covariance: the block has {n} dofs (at most {MAX_BLOCK_DOFS}); for a field "
                             "use pointwise_variance")
        comm = self.space.mesh().comm
        index = [subspace_indices(V) for V in subs]
        # global position of this rank's first dof of each sub-space, within the block
        first = np.cumsum([0] + [V.dim() for V in subs])[:-1] + [comm.exscan(len(i)) or 0 for i in index]
        e = fd.Cofunction(self.space.dual())
        n_local = len(local_values(e))
        columns, rows = [], np.zeros((n, n))
        for j in range(n):
            values = np.zeros(n_local)
            for idx, start in zip(index, first, strict=True):
                if start <= j < start + len(idx):
                    values[idx[j - start]] = 1.0
            set_local_values(e, values)  # every rank writes (see prior_variance)
            col = self.covariance_action(e)
            col.rename(f"posterior_covariance_column_{j}")
            part, cv = np.zeros(n), local_values(col)
            for idx, start in zip(index, first, strict=True):
                part[start:start + len(idx)] = cv[idx]
            rows[j] = comm.allreduce(part)
            columns.append(col)
        matrix = 0.5 * (rows + rows.T)
        sd = np.sqrt(np.maximum(np.diag(matrix), np.finfo(float).tiny))
        return BlockCovariance(matrix, tuple(columns), matrix / np.outer(sd, sd))

    # -------------------------------------------------------------------------------- variance
    def prior_variance(self, *, method: VarianceMethod = VarianceMethod.SAMPLES, samples: int = 200,
                       seed: int = 12345):
        """Pointwise (nodal) prior variance: ``"exact"`` (one covariance action per dof; small
        problems) or ``"samples"`` (unbiased estimate, relative error :math:`\\sqrt{2/N}` per dof)."""
        import firedrake as fd

        method = choice(VarianceMethod, method, "prior_variance", "method")
        var = fd.Function(self.space, name="prior_variance")
        if method is VarianceMethod.EXACT:
            e = fd.Cofunction(self.space.dual())
            n_local = len(local_values(var))  # dofs (every component), in the Vec layout
            start = self.space.mesh().comm.exscan(n_local) or 0
            diag = np.zeros(n_local)
            for i in range(self.space.dim()):
                # every rank writes (possibly nothing): a write on some ranks only would leave their
                # halo state different and the next collective would hang
                local = i - start
                values = np.zeros(n_local)
                if 0 <= local < n_local:
                    values[local] = 1.0
                set_local_values(e, values)
                col = self.prior.covariance_action(e)
                if 0 <= local < n_local:
                    diag[local] = local_values(col)[local]
            set_local_values(var, diag)
        else:
            if samples < 2:
                raise ValueError("prior_variance: need at least 2 samples")
            acc = np.zeros_like(local_values(var))
            for j in range(samples):
                acc += local_values(self.prior.sample_centered(seed=seed + j)) ** 2
            set_local_values(var, acc / samples)
        return var

    def pointwise_variance(self, *, prior_variance=None, **kwargs):
        """:math:`\\operatorname{diag}\\Gamma_{post}`: the prior variance (given, or from
        :meth:`prior_variance` with ``kwargs``) minus the exact low-rank part :math:`\\sum_i d_i u_i^2`."""
        import firedrake as fd

        pv = prior_variance if prior_variance is not None else self.prior_variance(**kwargs)
        out = fd.Function(self.space, name="posterior_variance")
        low = np.zeros_like(local_values(out))
        for d, u in zip(self._d, self.eig.eigenvectors, strict=True):
            low += d * local_values(u) ** 2
        set_local_values(out, local_values(pv) - low)
        return out

    def variance_reduction(self, posterior_variance, prior_variance):
        """:math:`1 - \\sigma^2_{post}/\\sigma^2_{pr}`: 0 where the prior alone decides, near 1 where the
        data do."""
        import firedrake as fd

        out = fd.Function(self.space, name="variance_reduction")
        set_local_values(out, 1.0 - local_values(posterior_variance) / local_values(prior_variance))
        return out

    def identifiability(self, posterior_variance, prior_variance, *, low: float = 0.1, high: float = 0.9) -> dict:
        """How much the data constrain: the data-informed dimension, and the fractions of the domain
        (by area) where the variance reduction is below ``low`` (left to the prior) or above ``high``
        (determined by the data)."""
        import firedrake as fd

        red = self.variance_reduction(posterior_variance, prior_variance)
        V = self.space
        left = fd.Function(V).interpolate(fd.conditional(fd.lt(red, low), 1.0, 0.0))
        determined = fd.Function(V).interpolate(fd.conditional(fd.gt(red, high), 1.0, 0.0))
        area = fd.assemble(fd.Constant(1.0) * fd.dx(domain=V.mesh()))
        return {"data_informed_dim": self.data_informed_dimension,
                "fraction_left_to_prior": float(fd.assemble(left * fd.dx)) / area,
                "fraction_determined_by_data": float(fd.assemble(determined * fd.dx)) / area,
                "mean_variance_reduction": float(fd.assemble(red * fd.dx)) / area}

    def credible_interval(self, posterior_variance, *, level: float = 0.95):
        """Pointwise (marginal) credible bounds :math:`m_{MAP} \\pm z\\sigma` (two Functions)."""
        import firedrake as fd
        from scipy.stats import norm

        if not (0 < level < 1):
            raise ValueError(f"credible_interval: level must be in (0, 1), got {level}")
        z = norm.ppf(0.5 + level / 2.0)
        sd = np.sqrt(np.maximum(local_values(posterior_variance), 0.0))
        lo, hi = fd.Function(self.space, name="lower"), fd.Function(self.space, name="upper")
        set_local_values(lo, local_values(self.mean) - z * sd)
        set_local_values(hi, local_values(self.mean) + z * sd)
        return lo, hi

    # ------------------------------------------------------------------------------ information
    def expected_information_gain(self) -> float:
        """:math:`\\tfrac12\\sum_i\\log(1+\\lambda_i)`."""
        return 0.5 * float(np.sum(np.log1p(self.eigenvalues)))

    def kl_divergence_from_prior(self) -> float:
        """:math:`D_{KL}(\\mathcal N(m_{MAP},\\Gamma_{post}) \\| \\mathcal N(\\bar m, \\Gamma_{pr}))`."""
        import firedrake as fd

        dev = fd.Function(self.space).assign(self.mean - self.prior.mean)
        mahal = _pair(self.prior.precision_action(dev), dev)
        lam = self.eigenvalues
        return 0.5 * float(np.sum(np.log1p(lam) - lam / (1.0 + lam)) + mahal)

    def report(self) -> dict:
        """Numbers for a summary: rank, eigenvalues, data-informed dimension, information."""
        return {"rank": self.eig.rank, "method": self.eig.method, "eigenvalues": self.eigenvalues.tolist(),
                "data_informed_dim": self.data_informed_dimension, "hessian_actions": self.hessian_actions,
                "hessian": self.hessian.value,
                "expected_information_gain": self.expected_information_gain(),
                "kl_divergence_from_prior": self.kl_divergence_from_prior(),
                "smallest_retained_ratio": float(self._d[-1]) if len(self._d) else math.nan}


def _checked_hessian(problem, hessian):
    """The problem and the Hessian choice, checked before any solve: one error naming what is wrong."""
    from pdeinv.problem import InverseProblem

    if not isinstance(problem, InverseProblem):
        raise TypeError(f"LaplaceApproximation: problem must be a pdeinv InverseProblem, "
                        f"got {type(problem).__name__}")
    h = problem.resolve(choice(Hessian, hessian, "LaplaceApproximation", "hessian"))
    if h is Hessian.FULL and not problem.full_hessian_available:
        raise ValueError(f"LaplaceApproximation: hessian='full' needs second derivatives of the map, and "
                         f"{type(problem.misfit).__name__}'s has none; use hessian='gauss_newton'")
    return h


def _admissible(eigenvalues, gauss_newton: bool) -> np.ndarray:
    r"""The generalized eigenvalues the approximation uses.  Gauss–Newton: PSD, so negative ones are
    round-off and become 0.  Full Hessian: :math:`\lambda > -1` keeps :math:`H_{mis} + \Gamma_{pr}^{-1}`
    positive definite (a variance grows where :math:`\lambda < 0`); :math:`\lambda \le -1` does not."""
    lam = np.asarray(eigenvalues, dtype=float)
    if gauss_newton:
        return np.maximum(lam, 0.0)  # round-off can make tiny ones negative
    if lam.size and lam.min() <= -1.0:
        raise ValueError(f"LaplaceApproximation: the full Hessian at m_map has a generalized eigenvalue "
                         f"{lam.min():.3e} <= -1 (the cost's Hessian is not positive definite there): m_map is "
                         "not a local minimum; converge the optimizer further, or use hessian='gauss_newton'")
    return lam


def _pair(c, x) -> float:
    from pdeinv.verify import dual_pairing

    return dual_pairing(c, x)
