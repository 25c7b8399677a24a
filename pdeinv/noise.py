r"""Noise models: the negative log-likelihood of data given a prediction, its derivatives, sampling.

Each model defines, for predicted data :math:`p = F(m)` and observed data :math:`d` (both
data-space Functions, see :mod:`pdeinv.observation`):

- ``misfit(p, d)``: :math:`\Phi(p; d)`, the negative log-likelihood up to a constant;
- ``gradient(p, d)``: :math:`\partial\Phi/\partial p` as a data-space **Cofunction** — for the Gaussian
  model the weighted residual :math:`\Gamma^{-1}(p - d)`;
- ``gauss_newton_weight(p, d, dp)``: :math:`W\,\delta p`, the (Fisher) weight of the Gauss–Newton
  Hessian :math:`J^T W J` — :math:`\Gamma^{-1}` for the Gaussian model;
- ``sample(p, seed=...)``: synthetic data drawn from the model around :math:`p`.

- Gaussian: :math:`\Phi = \tfrac12\sum_i (p_i-d_i)^2/\sigma_i^2`, weight :math:`1/\sigma_i^2`;
- Laplace: :math:`\Phi = \sum_i \sqrt{r_i^2+\varepsilon^2}/b_i` with :math:`r = p - d`, weight
  :math:`\varepsilon^2/(b_i(r_i^2+\varepsilon^2)^{3/2})` (its exact second derivative);
- Poisson (counts, source intensity :math:`s`): :math:`\Phi = \sum_i s p_i - d_i\log(s p_i)`, weight
  :math:`s/p_i` (the Fisher information, positive where the exact Hessian need not be).

Random draws are made from one NumPy ``Generator(PCG64(seed))`` over the whole data array in the
order the points were given, so the same seed gives the same data on any number of ranks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pdeinv._tape import unannotated_methods
from pdeinv.linalg.arrays import local_values

__all__ = ["NoiseModel", "GaussianNoise", "LaplaceNoise", "PoissonNoise", "FieldGaussianNoise", "synthetic_data"]


def synthetic_data(forward_map, truth, noise, *, seed: int, name: str = "data"):
    """Synthetic observations: ``truth`` -> :math:`F(\text{truth})` -> one seeded draw of ``noise``.

    The same seed gives the same data on any number of ranks.
    """
    return noise.sample(forward_map(truth), seed=seed, name=name)


def _global_sum(comm, local: float) -> float:
    return comm.allreduce(float(local))


@unannotated_methods
class NoiseModel(ABC):
    """Base class; ``observation`` is the :class:`~pdeinv.observation.Observation` whose data
    space the model lives on."""

    def __init_subclass__(cls, **kwargs):
        # every subclass (a user's too) runs its public methods with pyadjoint annotation off
        super().__init_subclass__(**kwargs)
        unannotated_methods(cls)

    def __init__(self, observation):
        self.observation = observation
        self.space = observation.space
        self.comm = observation.comm

    # local views of dats (owned entries) ---------------------------------------------------------
    def _check(self, f, name):
        if f.function_space() != self.space:
            raise ValueError(f"{type(self).__name__}: {name} is not on the observation's data space")
        return f.dat.data_ro

    def _cofunction(self, values):
        import firedrake as fd

        c = fd.Cofunction(self.space.dual())
        c.dat.data[:] = values if self.observation.mask is None else values * self.observation.mask
        return c

    def _observed(self, values):
        """Zero the entries the observation does not observe (its mask)."""
        return values if self.observation.mask is None else values * self.observation.mask

    def _observed_array(self):
        """The mask as an (N, channels) array in input order, or None."""
        if self.observation.mask is None:
            return None
        import firedrake as fd

        f = fd.Function(self.space)
        f.dat.data[:] = self.observation.mask
        return self.observation.to_array(f) > 0.5

    @abstractmethod
    def misfit(self, pred, data) -> float: ...

    @abstractmethod
    def gradient(self, pred, data): ...

    @abstractmethod
    def gauss_newton_weight(self, pred, data, dpred): ...

    @abstractmethod
    def _draw(self, pred: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    def misfit_hessian(self, pred, data, dpred):
        r"""Exact :math:`\partial^2\Phi/\partial p^2\,\delta p` (for full Newton); equal to the
        Gauss–Newton weight except for the Poisson model, whose GN weight is the Fisher information."""
        return self.gauss_newton_weight(pred, data, dpred)

    def sample(self, pred, *, seed: int, name: str = "data"):
        """Synthetic data: one draw from the noise law around ``pred`` (same on any number of ranks)."""
        self._check(pred, "pred")
        rng = np.random.Generator(np.random.PCG64(seed))
        draw = self._sample_array(self.observation.to_array(pred), rng, self._observed_array())
        return self.observation.from_array(draw, name=name)

    def _sample_array(self, p, rng, observed):
        """The draw of :meth:`sample` on an (N, channels) array in input order (``observed``: the mask
        as a boolean array, or None).  Also used for the channels of several ensemble members at once."""
        if observed is not None:
            p = np.where(observed, p, 1.0)  # a harmless value where nothing is observed
        draw = self._draw(p, rng)
        if observed is not None:
            draw = np.where(observed, draw, 0.0)
        return draw

    def _broadcast(self, value, shape):
        """A scalar law parameter as is; a per-observation one as an (N, channels) array."""
        import firedrake as fd

        if np.ndim(value) == 0:
            return value
        if shape != (self.observation.n_points, self.observation.channels):  # e.g. several members' channels
            raise ValueError(f"{type(self).__name__}: per-observation parameters are given for this observation's "
                             f"{self.observation.channels} channel(s), not for a draw of shape {shape}")
        f = fd.Function(self.space)
        f.dat.data[:] = value
        return np.broadcast_to(self.observation.to_array(f), shape)

    def _per_observation(self, value, name):
        """A positive scalar or (N, channels) array -> local owned values of a data-space Function."""
        if isinstance(value, (str, bytes, bool)) or np.asarray(value).dtype.kind in "USOb":
            raise TypeError(f"{type(self).__name__}: {name} must be a number or an array of numbers, got {value!r}")
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f"{type(self).__name__}: {name} must be a number or an array of numbers, "
                            f"got {type(value).__name__}") from None
        if arr.ndim == 0:
            if not np.isfinite(arr) or arr <= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be positive and finite, got {value}")
            return float(arr)
        f = self.observation.from_array(arr, name=name)
        if np.any(np.asarray(value) <= 0):
            raise ValueError(f"{type(self).__name__}: every {name} must be positive, "
                             f"got minimum {np.min(value)}")
        return np.array(f.dat.data_ro)


class GaussianNoise(NoiseModel):
    r"""Independent Gaussian noise with standard deviation :math:`\sigma_i` per observation.

    Parameters
    ----------
    observation : pdeinv.observation.Observation
    sigma : float or array of shape (N, channels)
        Standard deviations, positive.
    """

    def __init__(self, observation, sigma):
        super().__init__(observation)
        self.sigma = self._per_observation(sigma, "sigma")
        self._inv_var = 1.0 / np.square(self.sigma)

    @classmethod
    def relative(cls, observation, data, fraction: float = 0.01):
        """Noise with :math:`\\sigma = \\text{fraction}\\cdot\\max_i |d_i|` (e.g. 1 % of the largest datum)."""
        if not (0 < fraction < np.inf):
            raise ValueError(f"GaussianNoise.relative: fraction must be positive, got {fraction}")
        dmax = observation.comm.allreduce(float(np.max(np.abs(data.dat.data_ro), initial=0.0)),
                                          op=_mpi_max())
        if dmax == 0:
            raise ValueError("GaussianNoise.relative: the data are identically zero, sigma would be 0")
        return cls(observation, fraction * dmax)

    def weighted_residual(self, r):
        """:math:`\\Gamma^{-1} r` as a data-space Cofunction."""
        return self._cofunction(self._check(r, "r") * self._inv_var)

    def misfit(self, pred, data) -> float:
        r = self._observed(self._check(pred, "pred") - self._check(data, "data"))
        return 0.5 * _global_sum(self.comm, np.sum(r * r * self._inv_var))

    def gradient(self, pred, data):
        return self._cofunction((self._check(pred, "pred") - self._check(data, "data")) * self._inv_var)

    def gauss_newton_weight(self, pred, data, dpred):
        return self.weighted_residual(dpred)

    def _draw(self, pred, rng):
        return pred + self._broadcast(self.sigma, pred.shape) * rng.standard_normal(pred.shape)


class LaplaceNoise(NoiseModel):
    r"""Independent Laplace (double-exponential) noise with scale :math:`b_i`: an L1 misfit, robust
    to outliers.

    Parameters
    ----------
    observation : pdeinv.observation.Observation
    scale : float or array of shape (N, channels)
        Scale :math:`b_i > 0` (standard deviation :math:`\sqrt2\,b_i`).
    smoothing : float
        :math:`\varepsilon \ge 0` in :math:`\sqrt{r^2+\varepsilon^2}`; must be positive for
        Gauss–Newton / Newton methods (the exact L1 misfit has no second derivative).
    """

    def __init__(self, observation, scale, *, smoothing: float = 0.0):
        super().__init__(observation)
        self.scale = self._per_observation(scale, "scale")
        if not (np.isfinite(smoothing) and smoothing >= 0):
            raise ValueError(f"LaplaceNoise: smoothing must be >= 0, got {smoothing}")
        self.smoothing = float(smoothing)

    def _r(self, pred, data):
        return self._observed(self._check(pred, "pred") - self._check(data, "data"))

    def misfit(self, pred, data) -> float:
        r = self._r(pred, data)
        terms = self._observed(np.sqrt(r * r + self.smoothing**2) / self.scale)
        return _global_sum(self.comm, np.sum(terms))

    def gradient(self, pred, data):
        r = self._r(pred, data)
        if self.smoothing > 0:
            g = r / np.sqrt(r * r + self.smoothing**2)
        else:
            g = np.sign(r)
        return self._cofunction(g / self.scale)

    def gauss_newton_weight(self, pred, data, dpred):
        if self.smoothing == 0:
            raise ValueError("LaplaceNoise: the exact L1 misfit has no Hessian; give smoothing > 0 to "
                             "use Gauss-Newton/Newton methods")
        r = self._r(pred, data)
        w = self.smoothing**2 / (self.scale * (r * r + self.smoothing**2) ** 1.5)
        return self._cofunction(w * self._check(dpred, "dpred"))

    def _draw(self, pred, rng):
        return pred + rng.laplace(0.0, 1.0, pred.shape) * self._broadcast(self.scale, pred.shape)


class PoissonNoise(NoiseModel):
    r"""Photon/particle counts: :math:`d_i \sim \mathrm{Poisson}(s\,p_i)` with source intensity
    :math:`s` (expected counts for :math:`p_i = 1`), the natural model of transmission tomography.

    Predictions must be positive.
    """

    def __init__(self, observation, intensity: float):
        super().__init__(observation)
        if not (np.isfinite(intensity) and intensity > 0):
            raise ValueError(f"PoissonNoise: intensity must be positive, got {intensity}")
        self.intensity = float(intensity)

    def _lam(self, pred):
        p = self._check(pred, "pred")
        if self.observation.mask is not None:
            p = np.where(self.observation.mask > 0.5, p, 1.0)  # unobserved entries: never used
        pmin = self.comm.allreduce(float(np.min(p, initial=np.inf)), op=_mpi_min())
        if pmin <= 0:
            raise ValueError(f"PoissonNoise: predicted intensities must be positive, got minimum {pmin}")
        return self.intensity * p

    def _counts(self, data):
        d = self._check(data, "data")
        dmin = self.comm.allreduce(float(np.min(d, initial=np.inf)), op=_mpi_min())
        if dmin < 0:
            raise ValueError(f"PoissonNoise: counts must be >= 0, got minimum {dmin}")
        return d

    def misfit(self, pred, data) -> float:
        lam, d = self._lam(pred), self._counts(data)
        return _global_sum(self.comm, np.sum(self._observed(lam - d * np.log(lam))))

    def gradient(self, pred, data):
        lam, d = self._lam(pred), self._counts(data)
        return self._cofunction(self.intensity * (1.0 - d / lam))

    def gauss_newton_weight(self, pred, data, dpred):
        lam = self._lam(pred)
        return self._cofunction(self.intensity**2 / lam * self._check(dpred, "dpred"))

    def misfit_hessian(self, pred, data, dpred):
        lam, d = self._lam(pred), self._counts(data)
        return self._cofunction(self.intensity**2 * d / lam**2 * self._check(dpred, "dpred"))

    def _draw(self, pred, rng):
        if np.min(pred) <= 0:
            raise ValueError("PoissonNoise.sample: predicted intensities must be positive")
        return rng.poisson(self.intensity * pred).astype(float)


def _mpi_max():
    from mpi4py import MPI

    return MPI.MAX


def _mpi_min():
    from mpi4py import MPI

    return MPI.MIN


class FieldGaussianNoise(NoiseModel):
    r"""Gaussian noise on a whole observed field (:class:`~pdeinv.observation.FieldObservation`),
    with the mass-weighted misfit of hIPPYlib's continuous-state observation:

    .. math::

        \Phi = \frac{1}{2\sigma^2}\sum_k \int_\Omega (p_k - d_k)^2\,dx
             = \frac{1}{2\sigma^2}\,r^T M r,\qquad
        \partial_p\Phi = \sigma^{-2} M r,\qquad W\delta p = \sigma^{-2} M\,\delta p.

    Synthetic data add i.i.d. :math:`N(0, \sigma^2)` noise at every node (as hIPPYlib does), drawn
    from a hash of the node coordinates so 1 and N ranks give the same data.
    """

    def __init__(self, observation, sigma: float):
        import firedrake as fd

        from pdeinv.observation import FieldObservation

        if not isinstance(observation, FieldObservation):
            raise TypeError("FieldGaussianNoise: needs a FieldObservation")
        super().__init__(observation)
        s = float(sigma) if isinstance(sigma, (int, float, np.floating)) else None
        if s is None or not (np.isfinite(s) and s > 0):
            raise ValueError(f"FieldGaussianNoise: sigma must be a positive number, got {sigma!r}")
        self.sigma = s
        D = self.space
        self._M = fd.assemble(fd.inner(fd.TrialFunction(D), fd.TestFunction(D)) * fd.dx, mat_type="aij").petscmat
        self._work = self._M.createVecLeft()

    def _weighted(self, values_from, values_sub=None):
        """:math:`\\sigma^{-2} M (a - b)` as a Cofunction."""
        import firedrake as fd

        out = fd.Cofunction(self.space.dual())
        with values_from.dat.vec_ro as a, out.dat.vec_wo as o:
            a.copy(self._work)
            if values_sub is not None:
                with values_sub.dat.vec_ro as b:
                    self._work.axpy(-1.0, b)
            self._M.mult(self._work, o)
            o.scale(1.0 / self.sigma**2)
        return out

    def misfit(self, pred, data) -> float:
        self._check(pred, "pred")
        self._check(data, "data")
        g = self._weighted(pred, data)
        with g.dat.vec_ro as gv:  # g = sigma^-2 M r, and _work still holds r
            return 0.5 * gv.dot(self._work)

    def gradient(self, pred, data):
        return self._weighted(pred, data)

    def gauss_newton_weight(self, pred, data, dpred):
        return self._weighted(dpred)

    def _draw(self, pred, rng):  # pragma: no cover - sample() is overridden
        raise NotImplementedError

    def sample(self, pred, *, seed: int, name: str = "data"):
        """``pred`` plus i.i.d. :math:`N(0,\\sigma^2)` nodal noise (partition-independent)."""
        from pdeinv.linalg.multivector import random_multifunction

        self._check(pred, "pred")
        obs = self.observation
        out = pred.copy(deepcopy=True)
        out.rename(name)
        xi = random_multifunction(obs.field_space, obs.channels, seed=seed)
        cols = obs._columns(out.dat.data)
        for k in range(obs.channels):
            cols[:, k] += self.sigma * local_values(xi[k])
        return out
