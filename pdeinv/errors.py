"""The library's exceptions (a leaf module: the numerical kernels below the maps raise them too)."""

from __future__ import annotations

__all__ = ["ForwardSolveError", "DeviceError"]


class ForwardSolveError(RuntimeError):
    """The forward model could not be solved at a parameter value (a nonlinear or linear solver
    diverged, or the prediction is NaN/inf).  Optimizers treat it as a failed trial point (the step is
    shortened / the trust region reduced) and log the message; called directly it is one clear error."""


class DeviceError(RuntimeError):
    """Solver options asked for a GPU (device) solve that this run cannot have: PETSc was built without
    CUDA, or a rank found no device.  Raised before any solve (never a quiet CPU fallback); the cases
    turn it into a configuration error (exit 2)."""
