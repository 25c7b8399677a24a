"""Typed settings of the tables the cases share: ``[mesh]``, ``[optimizer]``, ``[laplace]`` and the
BiLaplacian ``[prior]``.

Each table is a frozen dataclass: its fields are the keys, their annotations the types the loader
enforces (:func:`pdeinv.cases.config.load_config` compares a given value with the default's type),
their defaults the one place a shared default lives, and :meth:`Settings.problems` the one place its
range checks live.  A case writes its defaults table as ``OptimizerSettings(gradient_rtol=1e-9).table()``
(what differs from the shared default, nothing else), and a phase reads typed values with
``OptimizerSettings.of(cfg)`` instead of string keys.  Tables a single case owns (its ``[model]`` and
``[data]``) stay that case's own.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["Settings", "MeshSettings", "MeshFileSettings", "OptimizerSettings", "LaplaceSettings",
           "BiLaplacianSettings", "TomographyPriorSettings", "SamplingSettings", "shared_problems",
           "EXACT_VARIANCE_DOFS"]

# laplace.prior_variance = "auto": exact prior variance (one solve per dof) up to this many parameter dofs
EXACT_VARIANCE_DOFS = 5000


@dataclass(frozen=True)
class Settings(abc.ABC):
    """One configuration table: ``table()`` is its defaults dict, ``of(cfg)`` its typed reading."""

    TABLE: ClassVar[str]

    def table(self) -> dict:
        """The table as the loader's defaults: ``{key: default}``."""
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, cfg: dict):
        """The typed table of the (loaded, type-checked) configuration ``cfg``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg[cls.TABLE].items() if k in names})

    @abc.abstractmethod
    def problems(self) -> list[tuple[bool, str]]:
        """``(ok, message)`` range checks, each message naming the key and what was expected."""


@dataclass(frozen=True)
class MeshSettings(Settings):
    """``[mesh]``: ``n`` x ``n`` cells of the unit square (each cut into two triangles)."""

    TABLE: ClassVar[str] = "mesh"
    n: int = 32

    def problems(self):
        return [(self.n >= 2, "mesh.n must be >= 2")]


@dataclass(frozen=True)
class MeshFileSettings(MeshSettings):
    """``[mesh]`` with a mesh file instead of the unit square: ``file`` (Gmsh ``.msh`` or a Firedrake
    checkpoint ``.h5``; empty: the square), ``name`` (which of a checkpoint's meshes; empty: the only one)."""

    file: str = ""
    name: str = ""


@dataclass(frozen=True)
class OptimizerSettings(Settings):
    """``[optimizer]``: Newton–CG to the MAP point (:class:`pdeinv.optimize.NewtonCGOptions`)."""

    TABLE: ClassVar[str] = "optimizer"
    gradient_rtol: float = 1e-9
    max_iterations: int = 40
    max_cg_iterations: int = 300
    globalization: str = "line_search"

    def problems(self):
        from pdeinv.optimize.newton_cg import Globalization

        return [
            (0 < self.gradient_rtol < 1, f"optimizer.gradient_rtol must be in (0, 1), got {self.gradient_rtol!r}"),
            (self.max_iterations >= 1, f"optimizer.max_iterations must be >= 1, got {self.max_iterations!r}"),
            (self.max_cg_iterations >= 1,
             f"optimizer.max_cg_iterations must be >= 1, got {self.max_cg_iterations!r}"),
            (self.globalization in [g.value for g in Globalization],
             f"optimizer.globalization must be 'line_search' or 'trust_region', got {self.globalization!r}"),
        ]

    def newton_options(self, *, quiet: bool = False):
        """The :class:`~pdeinv.optimize.NewtonCGOptions` of this table."""
        from pdeinv.optimize import NewtonCGOptions

        return NewtonCGOptions(gradient_rtol=self.gradient_rtol, max_iterations=self.max_iterations,
                               max_cg_iterations=self.max_cg_iterations, globalization=self.globalization,
                               quiet=quiet)


@dataclass(frozen=True)
class LaplaceSettings(Settings):
    """``[laplace]``: the low-rank Laplace posterior at the MAP point — ``rank`` eigenpairs of the
    prior-preconditioned Hessian from ``rank + oversampling`` random probes; the prior's pointwise
    variance ``"exact"``, from ``variance_samples`` samples, or ``"auto"`` (exact up to
    :data:`EXACT_VARIANCE_DOFS` dofs); ``posterior_samples`` samples written out; ``hessian`` the
    Hessian at the MAP: ``"gauss_newton"``, ``"full"`` (the better geometry for the [sampling] kernels
    gpCN and h-MALA where the model has second derivatives: docs/sampling.md) or ``"auto"``."""

    TABLE: ClassVar[str] = "laplace"
    rank: int = 40
    oversampling: int = 10
    prior_variance: str = "auto"
    variance_samples: int = 100
    posterior_samples: int = 3
    hessian: str = "gauss_newton"

    def problems(self):
        from pdeinv.posterior.laplace import VarianceMethod
        from pdeinv.problem import Hessian

        return [
            (self.rank >= 1 and self.oversampling >= 0, "laplace.rank must be >= 1 and laplace.oversampling >= 0"),
            (self.hessian in [h.value for h in Hessian],
             f"laplace.hessian must be one of {', '.join(repr(h.value) for h in Hessian)}, got {self.hessian!r}"),
            (self.prior_variance in ["auto"] + [v.value for v in VarianceMethod],
             "laplace.prior_variance must be 'auto', 'exact' or 'samples'"),
            (self.variance_samples >= 2 and self.posterior_samples >= 0,
             "laplace.variance_samples must be >= 2 and laplace.posterior_samples >= 0"),
        ]

    @property
    def vectors(self) -> int:
        """Random probes of the eigensolver (and vectors it keeps): rank + oversampling."""
        return self.rank + self.oversampling

    def variance_method(self, dofs: int) -> str:
        """``prior_variance`` with ``"auto"`` resolved for ``dofs`` parameter dofs."""
        if self.prior_variance != "auto":
            return self.prior_variance
        return "exact" if dofs <= EXACT_VARIANCE_DOFS else "samples"


@dataclass(frozen=True)
class SamplingSettings(Settings):
    """``[sampling]``: MCMC after the Laplace approximation (:func:`pdeinv.sampling.sample`) — ``kernel``
    ``"none"`` (no sampling), ``"pcn"``, ``"gpcn"``, ``"mala"`` or ``"hmala"`` (gpCN and h-MALA around the
    Laplace approximation), optionally screened by ``delayed_acceptance`` with the Laplace surrogate;
    ``chains`` chains in parallel (ensemble members of ranks / chains ranks each), ``samples`` kept after
    ``burn_in`` steps (the step size ``step`` adapted during burn-in with ``adapt``), every ``thin``-th kept
    sample written as a field (0: none), a checkpoint every ``checkpoint_every`` steps; the quantities of
    interest are the parameter's domain mean and its values at ``points``."""

    TABLE: ClassVar[str] = "sampling"
    kernel: str = "none"
    delayed_acceptance: bool = False
    samples: int = 1000
    burn_in: int = 100
    chains: int = 1
    step: float = 0.2
    adapt: bool = False
    seed: int = 0
    thin: int = 0
    checkpoint_every: int = 100
    points: list = dataclasses.field(default_factory=lambda: [[0.5, 0.5]])

    def problems(self):
        from pdeinv.sampling.kernels import KernelKind

        kinds = ["none"] + [k.value for k in KernelKind]
        pts = self.points
        return [
            (self.kernel in kinds,
             f"sampling.kernel must be one of {', '.join(map(repr, kinds))}, got {self.kernel!r}"),
            (0 < self.step <= 1, f"sampling.step must be in (0, 1], got {self.step!r}"),
            (self.samples >= 1, f"sampling.samples must be >= 1, got {self.samples!r}"),
            (0 <= self.burn_in < self.samples,
             f"sampling.burn_in must be >= 0 and smaller than sampling.samples ({self.samples}), got {self.burn_in!r}"),
            (not self.adapt or self.burn_in > 0, "sampling.adapt = true needs sampling.burn_in > 0"),
            (self.chains >= 1 and self.thin >= 0 and self.checkpoint_every >= 1,
             "sampling.chains and sampling.checkpoint_every must be >= 1 and sampling.thin >= 0"),
            (all(isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                              and math.isfinite(c) for c in p) for p in pts),
             f"sampling.points must be a list of [x, y] pairs of finite numbers, got {pts!r}"),
        ]

    @property
    def enabled(self) -> bool:
        return self.kernel != "none"

    def options(self, *, quiet: bool):
        """The :class:`~pdeinv.sampling.SamplingOptions` of this table."""
        from pdeinv.sampling import SamplingOptions

        return SamplingOptions(samples=self.samples, burn_in=self.burn_in, thin=self.thin, adapt=self.adapt,
                               seed=self.seed, quiet=quiet, checkpoint_every=self.checkpoint_every,
                               progress_every=max(1, (self.burn_in + self.samples) // 10))

    def kernel_for(self, laplace):
        """The configured kernel (around ``laplace``; screened by its Laplace surrogate if asked)."""
        from pdeinv.sampling import LaplaceSurrogate, make_kernel

        return make_kernel(self.kernel, self.step, laplace=laplace,
                           surrogate=LaplaceSurrogate(laplace) if self.delayed_acceptance else None)


@dataclass(frozen=True)
class BiLaplacianSettings(Settings):
    """``[prior]``: a BiLaplacian Gaussian prior from its ``correlation_length`` and marginal
    ``variance`` (:meth:`pdeinv.prior.BiLaplacianPrior.from_correlation`), constant ``mean``."""

    TABLE: ClassVar[str] = "prior"
    correlation_length: float = 0.25
    variance: float = 0.5
    mean: float = 0.0

    def problems(self):
        return [(self.correlation_length > 0 and self.variance > 0,
                 "prior.correlation_length and prior.variance must be > 0")]

    def prior(self, V):
        """The prior on the parameter space ``V``."""
        import firedrake as fd

        from pdeinv.prior import BiLaplacianPrior

        return BiLaplacianPrior.from_correlation(V, correlation_length=self.correlation_length,
                                                 variance=self.variance, mean=fd.Constant(self.mean))


@dataclass(frozen=True)
class TomographyPriorSettings(BiLaplacianSettings):
    """``[prior]`` of the tomography case: the BiLaplacian prior plus smoothed total variation of weight
    ``tv_weight`` (0: none) and smoothing ``tv_epsilon``."""

    tv_weight: float = 0.0
    tv_epsilon: float = 0.05

    def problems(self):
        return super().problems() + [(self.tv_weight >= 0 and self.tv_epsilon > 0,
                                      "prior.tv_weight must be >= 0 and prior.tv_epsilon > 0")]

    def prior(self, V):
        """BiLaplacian, plus TV when ``tv_weight > 0`` (its lagged-diffusivity Hessian stays positive)."""
        from pdeinv.prior import GaussianPlus, TotalVariation

        prior = super().prior(V)
        if self.tv_weight > 0:
            prior = GaussianPlus(prior, TotalVariation(V, alpha=self.tv_weight, epsilon=self.tv_epsilon))
        return prior


def shared_problems(cfg, mesh: type[MeshSettings] = MeshSettings) -> list[tuple[bool, str]]:
    """The range checks of the ``[optimizer]``, ``[mesh]`` and ``[laplace]`` tables of a phased case."""
    checks = OptimizerSettings.of(cfg).problems() + mesh.of(cfg).problems() + LaplaceSettings.of(cfg).problems()
    return checks + (SamplingSettings.of(cfg).problems() if SamplingSettings.TABLE in cfg else [])
