"""Pieces the cases share: the mesh, and validation helpers."""

from __future__ import annotations

__all__ = ["unit_square_mesh", "require", "laplace_checks", "solver_parameters", "ITERATIVE"]


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


def laplace_checks(cfg):
    """The checks of the [mesh], [optimizer] and [laplace] tables every case has."""
    lc, oc = cfg["laplace"], cfg["optimizer"]
    return [
        (0 < oc["gradient_rtol"] < 1, f"optimizer.gradient_rtol must be in (0, 1), got {oc['gradient_rtol']!r}"),
        (oc["max_iterations"] >= 1, f"optimizer.max_iterations must be >= 1, got {oc['max_iterations']!r}"),
        (oc["max_cg_iterations"] >= 1, f"optimizer.max_cg_iterations must be >= 1, got {oc['max_cg_iterations']!r}"),
        (oc["globalization"] in ("line_search", "trust_region"),
         f"optimizer.globalization must be 'line_search' or 'trust_region', got {oc['globalization']!r}"),
        (cfg["mesh"]["n"] >= 2, "mesh.n must be >= 2"),
        (lc["rank"] >= 1 and lc["oversampling"] >= 0, "laplace.rank must be >= 1 and laplace.oversampling >= 0"),
        (lc["prior_variance"] in ("auto", "exact", "samples"),
         "laplace.prior_variance must be 'auto', 'exact' or 'samples'"),
        (lc["variance_samples"] >= 2 and lc["posterior_samples"] >= 0,
         "laplace.variance_samples must be >= 2 and laplace.posterior_samples >= 0"),
    ]


# model.solver = "iterative": Krylov with a preconditioner that suits the operator (relative tolerance far
# below the optimizer's, so derivatives stay consistent to Taylor-test accuracy).
ITERATIVE = {True: {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": 1e-12, "ksp_atol": 0.0},
             False: {"ksp_type": "gmres", "pc_type": "bjacobi", "sub_pc_type": "ilu", "ksp_rtol": 1e-12,
                     "ksp_atol": 0.0}}


def solver_parameters(setting, *, symmetric: bool):
    """The PETSc options of ``model.solver``: None (pdeinv's default direct solver, see
    :func:`pdeinv.linalg.operator.default_solver_parameters`) for ``{}`` or ``"direct"``, the Krylov
    configuration of :data:`ITERATIVE` for ``"iterative"``, the table itself otherwise."""
    if setting in ({}, "direct"):
        return None
    if setting == "iterative":
        return dict(ITERATIVE[symmetric])
    return dict(setting)
