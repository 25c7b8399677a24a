"""The library's exceptions (a leaf module: the numerical kernels below the maps raise them too)."""

from __future__ import annotations

__all__ = ["ForwardSolveError"]


class ForwardSolveError(RuntimeError):
    """The forward model could not be solved at a parameter value (a nonlinear or linear solver
    diverged, or the prediction is NaN/inf).  Optimizers treat it as a failed trial point (the step is
    shortened / the trust region reduced) and log the message; called directly it is one clear error."""
