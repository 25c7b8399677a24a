"""Pieces the cases share: the declared interface of a case, the mesh, and validation helpers."""

from __future__ import annotations

import abc
import importlib
from typing import ClassVar

__all__ = ["Case", "PhasedCase", "DriverCase", "load_case", "unit_square_mesh", "require",
           "solver_parameters", "ITERATIVE"]


class Case(abc.ABC):
    """A case of ``pdeinv run``: its defaults, its checks and its size, all known before any mesh.

    Each case module ``pdeinv.cases.<name>`` holds one instance, ``CASE``; what it does not override is
    the common default below.  A :class:`PhasedCase` is run by the runner's phases (setup -> data -> MAP
    -> Laplace -> output); a :class:`DriverCase` runs itself inside the runner's results-directory rules.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict]
    symmetric: ClassVar[bool] = True  # the state operator: picks Cholesky/CG or LU/GMRES for model.solver

    @abc.abstractmethod
    def validate(self, cfg) -> None:
        """Raise ConfigError for the first setting out of range (types are checked by the loader)."""

    @abc.abstractmethod
    def size(self, cfg, vertices=None):
        """The run's :class:`~pdeinv.cases.resources.Size`, or None while unknown (a mesh file: known once
        its ``vertices`` are)."""

    def check_files(self, cfg) -> None:
        """Read and check the data and mesh files the configuration names (no Firedrake): none by default."""
        return None

    def parameter_dofs(self, cfg) -> int | None:
        """Parameter dofs from the configuration alone, or None if only the mesh tells."""
        return None


class PhasedCase(Case):
    """A case the runner's phases run: a mesh, then the model, prior, truth and observation points."""

    @abc.abstractmethod
    def make_mesh(self, cfg, comm, **kw):
        """The mesh on ``comm`` (``kw``: Firedrake's distribution parameters, for an ensemble)."""

    @abc.abstractmethod
    def build(self, cfg, mesh, **kw):
        """(model, prior, truth or None, observation points); ``kw``: ``experiments`` for an ensemble."""

    def n_experiments(self, cfg) -> int:
        """The independent experiments an ensemble may split (1: none)."""
        return 1

    def observed_data(self, cfg, model):
        """Data from a file (with its noise model), or None for synthetic data."""
        return None

    def make_noise(self, cfg, model, clean, ensemble=None):
        """The noise of synthetic data: Gaussian, σ a fraction ``data.noise_fraction`` of the largest datum."""
        from pdeinv.noise import GaussianNoise

        return GaussianNoise.relative(model.observation, clean, cfg["data"]["noise_fraction"])


class DriverCase(Case):
    """A case with its own driver (bilevel learning), run inside the runner's results-directory rules."""

    @abc.abstractmethod
    def run_case(self, cfg, out, *, quiet=False, resume=False, sigterm_after=None):
        """Run the case into ``out``; returns its summary.  ``resume``: continue from the phases saved in
        ``out/checkpoint`` (see :func:`pdeinv.cases.checkpoint_files.problems`); ``sigterm_after=K``: send
        this process SIGTERM once K phases are saved (the batch-job path, for tests)."""


def load_case(name: str) -> Case:
    """The :class:`Case` of module ``pdeinv.cases.<name>`` (its ``CASE``)."""
    case = importlib.import_module(f"pdeinv.cases.{name}").CASE
    if not isinstance(case, Case):
        raise TypeError(f"pdeinv.cases.{name}.CASE must be a pdeinv.cases.common.Case, got {type(case).__name__}")
    return case


def unit_square_mesh(cfg, comm, *, distribution_parameters=None):
    """``UnitSquareMesh(n, n)`` with ``n = cfg["mesh"]["n"]`` (named, for checkpoints)."""
    import firedrake as fd

    return fd.UnitSquareMesh(cfg["mesh"]["n"], cfg["mesh"]["n"], comm=comm, name="mesh",
                             distribution_parameters=distribution_parameters)


def require(checks) -> None:
    """Raise a ConfigError with the message of the first failed ``(ok, message)`` check."""
    from pdeinv.cases.config import ConfigError

    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# model.solver = "iterative": Krylov with a preconditioner that suits the operator (relative tolerance far
# below the optimizer's, so derivatives stay consistent to Taylor-test accuracy).
ITERATIVE = {True: {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-12, "ksp_atol": 0.0},
             False: {"ksp_type": "gmres", "pc_type": "bjacobi", "sub_pc_type": "ilu", "ksp_rtol": 1e-12,
                     "ksp_atol": 0.0}}


def solver_parameters(setting, *, symmetric: bool):
    """The PETSc options of ``model.solver``: None (pdeinv's default direct solver, see
    :func:`pdeinv.linalg.operator.default_solver_parameters`) for ``{}`` or ``"direct"``, the Krylov
    configuration of :data:`ITERATIVE` for ``"iterative"``, the device Krylov solve of
    :func:`pdeinv.linalg.device.device_solver_parameters` for ``"gpu"`` (checked for a device by the
    runner before any solve), the table itself otherwise."""
    if setting in ({}, "direct"):
        return None
    if setting == "iterative":
        return dict(ITERATIVE[symmetric])
    if setting == "gpu":
        from pdeinv.linalg.device import device_solver_parameters

        return device_solver_parameters(symmetric=symmetric)
    return dict(setting)
