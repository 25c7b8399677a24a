r"""The offline stage of optimal experimental design: a low-rank representation of the candidates.

A design puts weights :math:`w_c \in [0, 1]` on the candidate observations :math:`c = 1..N` (points, or
single data: a sensor at one time).  For the (linearised) parameter-to-observable map :math:`J = F'(m_0)`
over *all* candidates, Gaussian noise :math:`\Gamma = \mathrm{diag}(\sigma_j^2)` and the Gaussian prior
:math:`\mathcal N(\bar m, \mathcal C)`, everything a design criterion needs is the noise-whitened prior
predictive covariance of the candidate data,

.. math::

    K = \Gamma^{-1/2} J\,\mathcal C\,J^* \Gamma^{-1/2} \approx Z Z^T, \qquad Z \in \mathbb R^{R\times r},

(:math:`R` data rows; :math:`Z Z^T` its rank-:math:`r` truncation), and for goal-oriented criteria the
vectors :math:`b_i = \Gamma^{-1/2} J \mathcal C a_i` of linear quantities of interest :math:`q_i = \langle
a_i, m\rangle` with their prior variances :math:`\langle a_i, \mathcal C a_i\rangle`.  One product
:math:`K y` is one adjoint (VJP), one prior covariance action and one tangent (JVP) solve; :math:`Z` comes
from a two-pass randomized eigendecomposition (Halko, Martinsson, Tropp 2011) with ``rank + oversampling``
products per pass, a number set by the data-informed dimension of the problem, not by the number of
candidates or the mesh.  Where ``rank + oversampling`` reaches :math:`R`, :math:`K` is formed column by
column instead (exact, :math:`R` products, one pass).

After this, any design's criterion is dense linear algebra of size :math:`r` (:mod:`pdeinv.design.criteria`):
no PDE solve.  Every rank holds the same (replicated) arrays — computed from data gathered in input order
and factorised on rank 0 — so every rank chooses the same design.

Why the randomized sketch is hand-written: :mod:`pdeinv.linalg.randomized` works on parameter-space
multivectors (the Laplace eigenproblem); here the operator lives on the small, replicated data space, where
NumPy's QR and symmetric eigensolver are the right tools and no PETSc/SLEPc object fits better.
"""

from __future__ import annotations

import numpy as np

from pdeinv._checks import Choice, choice

__all__ = ["CandidateKind", "DesignOperator"]


class CandidateKind(Choice):
    """What one candidate is: every datum of one observation point (all its components and channels:
    a sensor kept for the whole record), or one single datum (a sensor at one observation time)."""

    POINT = "point"
    DATUM = "datum"


def _positive_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"DesignOperator: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class DesignOperator:
    r"""The candidates' low-rank representation (module docstring), computed once.

    Parameters
    ----------
    model : pdeinv.maps.ParameterToObservable
        The forward map observing *every* candidate: its observation a
        :class:`~pdeinv.observation.PointObservation` (candidates = its points) or an
        :class:`~pdeinv.observation.IntegralObservation` (candidates = its functionals).
    prior : pdeinv.prior.GaussianPrior
    sigma : float or array_like
        Noise standard deviation: one number, one per candidate (shape ``(N,)``), or one per datum
        (shape ``(rows, channels)`` of the observation); positive and finite.
    m : firedrake.Function, optional
        Linearisation point (default: the prior mean — a design is chosen before the data exist; a MAP
        point of a pilot inversion is the other sensible choice).  For a linear model it does not matter.
    candidates : CandidateKind or {"point", "datum"}
    rank, oversampling : int
        Kept rank :math:`r` of :math:`K` and the sketch's oversampling.
    goals : sequence of firedrake.Cofunction, optional
        Linear quantities of interest :math:`a_i \in V_m^*` for the goal-oriented A-criterion.
    seed : int
        Seed of the random sketch (the same on every rank).
    block : int
        Products computed together (the models' blocked JVP/VJP).

    Attributes
    ----------
    n_candidates : int
    size : int
        Data rows per candidate.
    factor : ndarray, shape (n_candidates, size, r)
        :math:`Z`, candidate by candidate.
    goal_rows : ndarray, shape (n_candidates, size, len(goals))
    goal_prior_variance : ndarray, shape (len(goals),)
    eigenvalues : ndarray
        The kept eigenvalues of :math:`K`, descending.
    offline_solves : dict
        Work of the offline stage: the model's ``forward``, ``jvp`` and ``vjp`` solves and the prior's
        ``covariance_actions``.
    """

    def __init__(self, model, prior, sigma, *, m=None, candidates: CandidateKind | str = CandidateKind.POINT,
                 rank: int = 50, oversampling: int = 10, goals=(), seed: int = 0, block: int = 8):
        self._check_inputs(model, prior, m, goals)
        self.model, self.prior = model, prior
        obs = model.observation
        self.kind = choice(CandidateKind, candidates, "DesignOperator", "candidates")
        self.rows, self.channels = obs.n_points, obs.channels
        self.size = self._candidate_size(obs)
        self.n_candidates = self.rows * self.channels // self.size
        self.whitening = 1.0 / self._sigma_rows(sigma).reshape(-1)  # Gamma^{-1/2}, flat datum order
        self.rank = _positive_int(rank, "rank", 1)
        self.oversampling = _positive_int(oversampling, "oversampling", 0)
        self.block = _positive_int(block, "block", 1)
        self.seed = int(seed)
        self.m = (prior.mean if m is None else m).copy(deepcopy=True)
        self._covariance_actions = 0
        before = self._solve_counts()
        self.eigenvalues, z = self._factorise()
        self.factor = z.reshape(self.n_candidates, self.size, -1)
        self._goals(goals)
        after = self._solve_counts()
        self.offline_solves = {k: after[k] - before[k] for k in after}

    # ------------------------------------------------------------------------------ input
    @staticmethod
    def _check_inputs(model, prior, m, goals) -> None:
        import firedrake as fd

        from pdeinv.maps import ParameterToObservable, check_function
        from pdeinv.observation import IntegralObservation, PointObservation
        from pdeinv.prior.base import GaussianPrior

        if not isinstance(model, ParameterToObservable):
            raise TypeError(f"DesignOperator: model must be a pdeinv ParameterToObservable, got {type(model).__name__}")
        if not isinstance(model.observation, (PointObservation, IntegralObservation)):
            raise TypeError("DesignOperator: the model's observation must be a PointObservation or an "
                            f"IntegralObservation of every candidate, got {type(model.observation).__name__}")
        if not isinstance(prior, GaussianPrior):
            raise TypeError(f"DesignOperator: prior must be a pdeinv GaussianPrior, got {type(prior).__name__}")
        if prior.space != model.parameter_space:
            raise ValueError("DesignOperator: the prior and the model live on different parameter spaces")
        if m is not None:
            check_function(m, model.parameter_space, "DesignOperator: m")
        for i, a in enumerate(goals):
            if not isinstance(a, fd.Cofunction) or a.function_space() != model.parameter_space.dual():
                raise TypeError(f"DesignOperator: goals[{i}] must be a Cofunction on the parameter space's dual "
                                "(a linear quantity of interest, e.g. assemble(TestFunction(V) * dx))")

    def _candidate_size(self, obs) -> int:
        from pdeinv.observation import PointObservation

        if self.kind is CandidateKind.DATUM:
            return 1
        per_point = obs.components if isinstance(obs, PointObservation) else 1
        return per_point * self.channels

    def _sigma_rows(self, sigma) -> np.ndarray:
        """The noise standard deviation of every datum, shape (rows, channels)."""
        if isinstance(sigma, (str, bytes, bool)):
            raise TypeError(f"DesignOperator: sigma must be a number or an array of numbers, got {sigma!r}")
        arr = np.asarray(sigma, dtype=float)
        shape = (self.rows, self.channels)
        if arr.ndim == 0:
            arr = np.full(shape, float(arr))
        elif arr.shape == (self.n_candidates,):
            arr = np.repeat(arr, self.size).reshape(shape)
        elif arr.shape != shape:
            raise ValueError(f"DesignOperator: sigma must be a number, one per candidate (shape "
                             f"({self.n_candidates},)) or one per datum (shape {shape}), got shape {arr.shape}")
        bad = arr[~(np.isfinite(arr) & (arr > 0))]
        if bad.size:
            raise ValueError(f"DesignOperator: the noise standard deviation sigma must be positive and finite, "
                             f"got {bad[0]}")
        return arr

    # ------------------------------------------------------------------------------ products
    def _solve_counts(self) -> dict:
        counts = self.model.counts
        return {"forward": counts.get("forward", 0), "jvp": counts.get("jvp", 0), "vjp": counts.get("vjp", 0),
                "covariance_actions": self._covariance_actions}

    def _to_cofunction(self, column):
        import firedrake as fd

        obs = self.model.observation
        f = obs.from_array((column * self.whitening).reshape(self.rows, self.channels))
        c = fd.Cofunction(obs.space.dual())
        c.dat.data[:] = f.dat.data_ro
        return c

    def _data_rows(self, fs) -> np.ndarray:
        """Whitened data-space Functions as the columns of an (R, len(fs)) array (input order)."""
        obs = self.model.observation
        return np.column_stack([obs.to_array(f).reshape(-1) * self.whitening for f in fs])

    def apply(self, Y: np.ndarray) -> np.ndarray:
        """:math:`K Y` for an (R, n) array, ``block`` columns at a time (n VJPs, covariance actions, JVPs)."""
        out = []
        for j in range(0, Y.shape[1], self.block):
            cs = [self._to_cofunction(Y[:, i]) for i in range(j, min(j + self.block, Y.shape[1]))]
            g = self.model.vjp_block(self.m, cs)
            self._covariance_actions += len(g)
            out.append(self._data_rows(self.model.jvp_block(self.m, self.prior.covariance_action_block(g))))
        return np.hstack(out)

    def _factorise(self):
        """(eigenvalues, Z) of K: exact below the sketch size, else the two-pass randomized method."""
        R = self.whitening.size
        sketch = self.rank + self.oversampling
        comm = self.model.parameter_space.mesh().comm
        if sketch >= R:
            Q = np.eye(R)
            B = self.apply(Q)
        else:
            omega = np.random.default_rng(self.seed).standard_normal((R, sketch))
            Y = self.apply(omega)
            Q = comm.bcast(np.linalg.qr(Y)[0] if comm.rank == 0 else None, root=0)
            B = Q.T @ self.apply(Q)
        result = None
        if comm.rank == 0:
            lam, S = np.linalg.eigh(0.5 * (B + B.T))
            order = np.argsort(lam)[::-1][:self.rank]
            lam = np.clip(lam[order], 0.0, None)
            result = (lam, (Q @ S[:, order]) * np.sqrt(lam))
        return comm.bcast(result, root=0)

    def _goals(self, goals) -> None:
        """:math:`b_i` and the prior variances of the goal functionals (one covariance action and JVP each)."""
        n = len(goals)
        self.goal_rows = np.zeros((self.n_candidates, self.size, n))
        self.goal_prior_variance = np.zeros(n)
        if n == 0:
            return
        from pdeinv.verify import dual_pairing

        ca = self.prior.covariance_action_block(list(goals))
        self._covariance_actions += n
        self.goal_prior_variance = np.array([dual_pairing(a, c) for a, c in zip(goals, ca, strict=True)])
        self.goal_rows = self._data_rows(self.model.jvp_block(self.m, ca)).reshape(self.n_candidates, self.size, n)

    @property
    def n_goals(self) -> int:
        return self.goal_rows.shape[2]
