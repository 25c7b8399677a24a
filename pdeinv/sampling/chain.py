r"""Markov chains: :func:`sample` runs one chain per ensemble member and returns a :class:`SamplingResult`.

Randomness is keyed, not streamed: step :math:`i` of chain :math:`c` draws its Gaussian with the seed
``SeedSequence([seed, c, i])`` and its uniform from ``SeedSequence([seed, c, i, 1])``.  A chain is
therefore a function of ``(seed, chain, i)`` and its current state only — the same on every rank of a
member, reproducible run to run, and a resumed chain repeats an uninterrupted one sample for sample
without storing any generator state.

Step-size adaptation (``adapt=True``) runs during burn-in only: a Robbins–Monro update
:math:`\log s \leftarrow \log s + i^{-0.6}(\text{accepted} - \alpha^\ast)` towards the kernel's target
acceptance.  It stops before the first kept sample because a kernel whose step depends on the chain's
past is no longer a fixed Markov kernel, and the samples of an adapting chain need not have the posterior
as their law; with the step frozen, the kept samples come from one fixed kernel that leaves the posterior
invariant.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from pdeinv._tape import unannotated_methods
from pdeinv.errors import ForwardSolveError
from pdeinv.linalg.arrays import local_values
from pdeinv.sampling.kernels import DelayedAcceptance, Kernel
from pdeinv.sampling.store import ChainStore, Moments, Progress
from pdeinv.sampling.targets import ProblemPotential

__all__ = ["SamplingOptions", "SamplingResult", "sample", "draw_seeds"]


@dataclass(frozen=True)
class SamplingOptions:
    """Options of :func:`sample`.

    Attributes
    ----------
    samples : int
        Samples kept per chain (after burn-in).
    burn_in : int
        Steps discarded first (and, with ``adapt``, the only steps whose step size changes).
    thin : int
        Keep every ``thin``-th kept sample as a field in :attr:`SamplingResult.fields` (0: none).  The
        quantities of interest, mean and variance use every kept sample.
    adapt : bool
        Adapt the step size during burn-in towards the kernel's target acceptance.
    seed : int
        Chains ``c = 0, 1, ...`` use independent keyed streams of this seed.
    quiet : bool
        No progress lines.
    progress_every : int
        A rank-0 progress line every this many steps.
    checkpoint_every : int
        With a ``store`` directory (:func:`sample`), write the chain's checkpoint every this many steps
        (and after the last).
    """

    samples: int = 1000
    burn_in: int = 100
    thin: int = 0
    adapt: bool = False
    seed: int = 0
    quiet: bool = True
    progress_every: int = 500
    checkpoint_every: int = 100

    def __post_init__(self):
        for name, v, low in (("samples", self.samples, 1), ("burn_in", self.burn_in, 0), ("thin", self.thin, 0),
                             ("progress_every", self.progress_every, 1),
                             ("checkpoint_every", self.checkpoint_every, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"SamplingOptions: {name} must be an integer >= {low}, got {v!r}")
        if self.burn_in >= self.samples:
            raise ValueError(f"SamplingOptions: burn_in ({self.burn_in}) must be smaller than samples "
                             f"({self.samples}, the samples kept after it): a chain that spends most of its "
                             "steps in burn-in is a configuration mistake")
        if self.adapt and self.burn_in == 0:
            raise ValueError("SamplingOptions: adapt=True needs burn_in > 0 (the step size is adapted during "
                             "burn-in only)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"SamplingOptions: seed must be a non-negative integer, got {self.seed!r}")


@dataclass
class SamplingResult:
    """What :func:`sample` returns (identical on every rank; ``fields`` are this member's chain).

    Attributes
    ----------
    kernel : str
    quantities : dict of str to ndarray
        Each quantity of interest as an array of shape ``(chains, samples)``.
    mean, variance : firedrake.Function
        Pointwise posterior mean and variance of the field, pooled over all chains' kept samples.
    fields : list of firedrake.Function
        The thinned kept samples of this member's chain.
    acceptance : ndarray
        Per chain, the fraction of kept steps whose proposal was accepted (both stages).
    stage1_acceptance : ndarray or None
        Delayed acceptance: per chain, the fraction that passed the surrogate stage.
    step : ndarray
        Per chain, the step size used for the kept samples.
    pde_solves : ndarray
        Per chain, the forward + adjoint solves of the problem during the kept steps (burn-in in
        ``burn_in_solves``).
    surrogate_solves : ndarray
        Per chain, solves of a PDE-based surrogate (0 for the Laplace surrogate).
    log_alpha : ndarray
        This chain's :math:`\\log\\alpha` at every step (the last stage evaluated; burn-in included).
    seconds : float
        Wall time of the longest chain.
    """

    kernel: str
    quantities: dict
    mean: object
    variance: object
    fields: list
    acceptance: np.ndarray
    stage1_acceptance: np.ndarray | None
    step: np.ndarray
    pde_solves: np.ndarray
    burn_in_solves: np.ndarray
    surrogate_solves: np.ndarray
    log_alpha: np.ndarray
    seconds: float
    samples: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def chains(self) -> int:
        return len(self.acceptance)

    def diagnostics(self) -> dict:
        """ESS, IACT, split-:math:`\\hat R`, MCSE per quantity of interest
        (:func:`pdeinv.sampling.diagnostics.summarize`)."""
        from pdeinv.sampling.diagnostics import summarize

        return summarize(self.quantities)


def draw_seeds(seed: int, chain: int, step: int) -> tuple[int, float]:
    """The Gaussian's seed and the uniform of step ``step`` of chain ``chain`` (see the module docstring)."""
    g = int(np.random.SeedSequence([seed, chain, step]).generate_state(1)[0])
    u = float(np.random.default_rng(np.random.SeedSequence([seed, chain, step, 1])).random())
    return g, u


@unannotated_methods
class _Chain:
    """One chain's state: kernel, reference, potentials, current point and its running statistics."""

    def __init__(self, problem, kernel, chain: int, opts: SamplingOptions):
        self.delayed = isinstance(kernel, DelayedAcceptance)
        self.kernel = kernel.kernel if self.delayed else kernel
        self.surrogate = kernel.surrogate if self.delayed else None
        self.reference = self.kernel.make_reference(problem)
        self.potential = ProblemPotential(problem)
        self.problem, self.chain, self.opts = problem, chain, opts
        self.step = self.kernel.step
        self.counts = {"pde": 0, "surrogate": 0}

    # ------------------------------------------------------------------------ evaluations
    def evaluate(self, m, potential, gradient: bool):
        """``Evaluation`` of ``potential`` at m, or None where the forward solve fails (rejected)."""
        try:
            e = potential.evaluate(m, self.reference, gradient=gradient)
        except (ForwardSolveError, ArithmeticError, FloatingPointError):
            return None
        return e if math.isfinite(e.psi) else None

    def start(self, m0):
        """Evaluate the starting point (the driving potential, and the PDE for delayed acceptance)."""
        drive = self.surrogate if self.delayed else self.potential
        self.u = self.evaluate(m0, drive, self.kernel.langevin)
        if self.u is None:
            raise ValueError("sample: the forward model cannot be solved at the starting point m0 (or its cost is "
                             "not finite); start from the MAP point or the prior mean")
        self.u_fine = self.evaluate(m0, self.potential, False) if self.delayed else self.u
        if self.u_fine is None:
            raise ValueError("sample: the forward model cannot be solved at the starting point m0")

    # ------------------------------------------------------------------------ one step
    def advance(self, i: int) -> tuple[bool, bool, float]:
        """Step ``i``: (passed stage 1, accepted, log alpha of the last stage evaluated)."""
        g_seed, uniform = draw_seeds(self.opts.seed, self.chain, i)
        xi = self.reference.sample_centered(seed=g_seed)
        v = self.kernel.propose(self.reference, self.u, xi, self.step)
        log_u = math.log(uniform) if uniform > 0.0 else -math.inf
        drive = self.surrogate if self.delayed else self.potential
        before, before_s = self.potential.solves(), drive.solves()
        ev = self.evaluate(v, drive, self.kernel.langevin)
        if not self.delayed:
            self.counts["pde"] += self.potential.solves() - before
            la = -math.inf if ev is None else self.kernel.log_ratio(self.reference, self.u, ev, self.step)
            if la >= log_u:
                self.u = self.u_fine = ev
            return la >= log_u, la >= log_u, la
        self.counts["surrogate"] += self.surrogate.solves() - before_s
        return self._second_stage(i, ev, log_u)

    def _second_stage(self, i, ev, log_u):
        """Delayed acceptance: stage 1 on the surrogate with this step's uniform; stage 2 with a fresh one."""
        la1 = -math.inf if ev is None else self.kernel.log_ratio(self.reference, self.u, ev, self.step)
        if la1 < log_u:
            return False, False, la1
        before = self.potential.solves()
        fine = self.evaluate(ev.m, self.potential, False)
        self.counts["pde"] += self.potential.solves() - before
        if fine is None:
            return True, False, -math.inf
        la2 = (self.u_fine.psi - self.u.psi) - (fine.psi - ev.psi)
        u2 = float(np.random.default_rng(np.random.SeedSequence([self.opts.seed, self.chain, i, 2])).random())
        if la2 >= (math.log(u2) if u2 > 0 else -math.inf):
            self.u, self.u_fine = ev, fine
            return True, True, la2
        return True, False, la2

    def scalars(self) -> dict:
        """What a checkpoint keeps of the chain beyond its point: step size and solve counts."""
        return {"step": self.step, "pde": self.counts["pde"], "surrogate": self.counts["surrogate"]}

    def restore(self, record: dict) -> None:
        """The step size and solve counts of a checkpoint record (:meth:`scalars`)."""
        self.step = float(record["step"])
        self.counts = {"pde": int(record["pde"]), "surrogate": int(record["surrogate"])}

    def adapt(self, i: int, accepted: bool) -> None:
        """Robbins–Monro on log s during burn-in (module docstring)."""
        gain = (i + 1) ** -0.6
        s = math.exp(math.log(self.step) + gain * (float(accepted) - self.kernel.target_acceptance))
        self.step = min(1.0, max(1e-4, s))


def _check(problem, kernel, m0, quantities, ensemble):
    from pdeinv.maps import check_function
    from pdeinv.problem import InverseProblem
    from pdeinv.sampling.targets import gaussian_parts

    if not isinstance(problem, InverseProblem):
        raise TypeError(f"sample: problem must be a pdeinv InverseProblem, got {type(problem).__name__}")
    if not isinstance(kernel, (Kernel, DelayedAcceptance)):
        raise TypeError(f"sample: kernel must be a pdeinv.sampling kernel (PCN, GPCN, MALA, HMALA or "
                        f"DelayedAcceptance), got {type(kernel).__name__}")
    gaussian_parts(problem)
    check_function(m0, problem.parameter_space, "sample: m0")
    for name, q in quantities.items():
        if not isinstance(name, str) or not callable(q):
            raise TypeError(f"sample: quantities must map names to callables q(m) -> float, got {name!r}: "
                            f"{type(q).__name__}")
    if ensemble is not None:
        from mpi4py import MPI

        if MPI.Comm.Compare(ensemble.comm, problem.parameter_space.mesh().comm) not in (MPI.IDENT, MPI.CONGRUENT):
            raise ValueError("sample: the problem's mesh must live on ensemble.comm (each chain is one ensemble "
                             "member with its own copy of the problem)")


def _pooled(moments: Moments, space, ensemble):
    """Mean and variance Functions pooled over the members' chains (equal sample counts)."""
    import firedrake as fd

    from pdeinv.linalg.arrays import set_local_values

    mean, m2, n = moments.mean, moments.m2, moments.n
    if ensemble is not None:
        chains = ensemble.ensemble_comm.size
        grand = ensemble.ensemble_comm.allreduce(mean) / chains
        m2 = ensemble.ensemble_comm.allreduce(m2 + n * (mean - grand) ** 2)
        mean, n = grand, n * chains
    out_mean, out_var = fd.Function(space, name="sample_mean"), fd.Function(space, name="sample_variance")
    set_local_values(out_mean, mean)
    set_local_values(out_var, m2 / max(n - 1, 1))
    return out_mean, out_var


def _step(chain: _Chain, opts: SamplingOptions, quantities, progress: Progress, i: int) -> None:
    """Step ``i`` of the chain and what it adds to ``progress`` (adaptation in burn-in, records after)."""
    p, a, progress.log_alpha[i] = chain.advance(i)
    if i < opts.burn_in:
        if opts.adapt:
            chain.adapt(i, a)
        if i == opts.burn_in - 1:
            progress.burn_solves = chain.counts["pde"]
        return
    k = i - opts.burn_in
    progress.accepted, progress.passed = progress.accepted + a, progress.passed + p
    m = chain.u_fine.m
    for name, q in quantities.items():
        # A rejected step leaves the chain where it was: its quantities are the previous sample's (exactly).
        progress.traces[name][k] = progress.traces[name][k - 1] if k > 0 and not a else float(q(m))
    progress.moments.add(m)
    if opts.thin and k % opts.thin == 0:
        f = m.copy(deepcopy=True)
        f.rename("sample")  # one name for all: a time series in ParaView
        progress.fields.append(f)


def _run(chain: _Chain, opts: SamplingOptions, quantities, progress: Progress, store, on_checkpoint, log):
    """Steps ``progress.next_step`` to the last, checkpointing into ``store`` (None: no checkpoint)."""
    total = opts.burn_in + opts.samples
    t0 = time.perf_counter() - progress.seconds
    for i in range(progress.next_step, total):
        _step(chain, opts, quantities, progress, i)
        progress.next_step = i + 1
        if store is not None and (i + 1 == total or (i + 1) % opts.checkpoint_every == 0):
            progress.seconds = time.perf_counter() - t0
            store.write(progress, chain.u_fine.m, chain.scalars())
            if on_checkpoint is not None:
                on_checkpoint(i + 1)
        if (i + 1) % opts.progress_every == 0:
            kept = max(i + 1 - opts.burn_in, 1)
            log.info(f"[sample] chain {chain.chain}: step {i + 1}/{total}, acceptance "
                     f"{progress.accepted / kept:.3f}, {time.perf_counter() - t0:.1f} s")
    progress.seconds = time.perf_counter() - t0


def _fingerprint(kernel, opts: SamplingOptions, quantities, chain: int) -> dict:
    """What a resumed chain must share with the run that wrote its checkpoint."""
    import hashlib

    inner = kernel.kernel if isinstance(kernel, DelayedAcceptance) else kernel
    out = {"kernel": kernel.name, "step": inner.step, "seed": opts.seed, "samples": opts.samples,
           "burn_in": opts.burn_in, "thin": opts.thin, "adapt": opts.adapt, "quantities": sorted(quantities),
           "chain": chain}
    if inner.laplace is not None:  # the proposal's geometry: a resumed chain must move in the same one
        out["laplace"] = hashlib.sha256(np.asarray(inner.laplace.eigenvalues, dtype=float).tobytes()).hexdigest()[:16]
    return out


def _open_store(store, resume, chain: _Chain, kernel, opts, quantities, space):
    """The chain's :class:`ChainStore` (None without ``store``) and its saved record when resuming;
    every check before any solve."""
    if store is None:
        if resume:
            raise ValueError("sample: resume=True needs the store directory the chain was checkpointed in")
        return None, None
    if not isinstance(store, (str, os.PathLike)):
        raise TypeError(f"sample: store must be a directory path, got {type(store).__name__}")
    st = ChainStore(os.fspath(store), chain.chain, space, _fingerprint(kernel, opts, quantities, chain.chain))
    if not resume:
        if st.exists():
            raise ValueError(f"sample: {st.path} already holds a chain: resume it (resume=True) or choose "
                             "another store directory (nothing is overwritten)")
        return st, None
    if not st.exists():
        raise ValueError(f"sample: nothing to resume: {st.path} does not exist")
    return st, st.read_header()


def sample(problem, kernel, m0, *, options: SamplingOptions | None = None, quantities=None, ensemble=None,
           store=None, resume: bool = False, on_checkpoint=None) -> SamplingResult:
    r"""Markov chain Monte Carlo for the posterior of ``problem``.

    Parameters
    ----------
    problem : pdeinv.problem.InverseProblem
        With a Gaussian prior (``GaussianPrior`` or ``GaussianPlus``).
    kernel : Kernel or DelayedAcceptance
        :class:`~pdeinv.sampling.kernels.PCN`, :class:`~pdeinv.sampling.kernels.GPCN`,
        :class:`~pdeinv.sampling.kernels.MALA`, :class:`~pdeinv.sampling.kernels.HMALA`, or a
        :class:`~pdeinv.sampling.kernels.DelayedAcceptance` of one.
    m0 : firedrake.Function
        Starting point (the MAP point is a good one: the burn-in is then short).
    options : SamplingOptions
    quantities : dict of str to callable, optional
        Quantities of interest ``q(m) -> float``, evaluated on every kept sample that moved the chain
        (a rejected step repeats the previous values; collectively: every
        rank of the member calls them).
    ensemble : firedrake.Ensemble, optional
        One chain per member (chain index = member index), the problem built on ``ensemble.comm``.
        The result (quantities of all chains, pooled mean and variance) is the same on every rank.
    store : str, optional
        A directory: chain ``c`` is checkpointed to ``store/chain-<c>.h5`` every
        ``options.checkpoint_every`` steps (:mod:`pdeinv.sampling.store`); an existing chain there is
        never overwritten.
    resume : bool
        Continue the chains checkpointed in ``store`` (same options, kernel, quantities, ranks and mesh);
        the result equals that of the uninterrupted run.
    on_checkpoint : callable, optional
        ``on_checkpoint(steps_done)``, called on every rank after each checkpoint is complete (e.g. to
        stop cleanly on a signal: raise there, and resume later).

    Returns
    -------
    SamplingResult
    """
    from pdeinv.log import RankZeroLog

    opts = options or SamplingOptions()
    quantities = dict(quantities or {})
    _check(problem, kernel, m0, quantities, ensemble)
    c = 0 if ensemble is None else ensemble.ensemble_comm.rank
    log = RankZeroLog(ensemble.global_comm if ensemble is not None else problem.parameter_space.mesh().comm,
                      quiet=opts.quiet)
    chain = _Chain(problem, kernel, c, opts)
    st, record = _open_store(store, resume, chain, kernel, opts, quantities, problem.parameter_space)
    progress = Progress.fresh(quantities, opts.samples, opts.burn_in + opts.samples, local_values(m0).size)
    if record is not None:
        m0 = st.read(progress, record)
        chain.restore(record)
        log.info(f"[sample] chain {c}: resumed after step {progress.next_step} from {st.path}")
    chain.start(m0)
    _run(chain, opts, quantities, progress, st, on_checkpoint, log)
    return _result(problem, kernel, chain, opts, progress, ensemble)


def _result(problem, kernel, chain: _Chain, opts: SamplingOptions, progress: Progress, ensemble) -> SamplingResult:
    """The :class:`SamplingResult` of every chain (gathered over the ensemble members)."""
    mean, variance = _pooled(progress.moments, problem.parameter_space, ensemble)
    burn = progress.burn_solves
    mine = (progress.accepted / opts.samples, progress.passed / opts.samples, chain.step, chain.counts["pde"] - burn,
            burn, chain.counts["surrogate"], progress.seconds)
    gather = (lambda x: [x]) if ensemble is None else ensemble.ensemble_comm.allgather
    per_chain = np.array(gather(mine), dtype=float)
    all_traces = {n: np.array(gather(t)) for n, t in progress.traces.items()}
    return SamplingResult(kernel=kernel.name, quantities=all_traces, mean=mean, variance=variance,
                          fields=progress.fields, acceptance=per_chain[:, 0],
                          stage1_acceptance=per_chain[:, 1] if chain.delayed else None, step=per_chain[:, 2],
                          pde_solves=per_chain[:, 3].astype(int), burn_in_solves=per_chain[:, 4].astype(int),
                          surrogate_solves=per_chain[:, 5].astype(int), log_alpha=progress.log_alpha,
                          seconds=float(per_chain[:, 6].max()), samples=opts.samples)
