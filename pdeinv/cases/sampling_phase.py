r"""The ``[sampling]`` phase of the heat and Poisson cases: MCMC chains after the Laplace approximation.

The quantities of interest are linear functionals of the parameter, :math:`q(m) = \langle\ell, m\rangle`:
its domain mean and its values at ``sampling.points`` (a point observation of the parameter space).  Being
linear, each has an exact Laplace marginal :math:`\mathcal N(\langle\ell, m_{MAP}\rangle,
\langle\ell, \Gamma_{post}\ell\rangle)`, which the histograms are drawn against: where the posterior is
close to Gaussian they agree, and where they do not, the samples show what the Laplace approximation misses.

Chains are checkpointed into ``checkpoint/chains/chain-<c>.h5`` (:mod:`pdeinv.sampling.store`); a run
stopped during sampling resumes each chain from its own file (a chain with none starts afresh, which, with
the keyed random numbers, is the same as having run it).  Outputs: ``traces.csv`` (every kept sample of
every quantity), ``chains.png`` (traces and autocorrelations), ``marginals.png`` (histograms against the
Laplace marginals), the ``sample_mean`` / ``sample_std`` fields next to Laplace's ``map`` /
``posterior_std``, and a ``sampling`` entry in ``summary.json``.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["Quantities", "quantities", "run_chains", "summary_entry", "write_traces", "plot_chains",
           "plot_marginals", "CHAINS_DIR"]

CHAINS_DIR = "chains"  # inside the run's checkpoint directory


class Quantities:
    """Named linear functionals of the parameter: ``functionals[name]`` (a Cofunction) and ``callables``."""

    def __init__(self, functionals: dict):
        from pdeinv.verify import dual_pairing

        self.functionals = functionals
        self.callables = {n: (lambda m, ell=ell: dual_pairing(ell, m)) for n, ell in functionals.items()}

    def laplace_marginals(self, laplace) -> dict:
        """``{name: (mean, sd)}`` of each quantity under the Laplace approximation (exact: q is linear)."""
        from pdeinv.verify import dual_pairing

        return {n: (dual_pairing(ell, laplace.mean), max(dual_pairing(ell, laplace.covariance_action(ell)), 0.0) ** 0.5)
                for n, ell in self.functionals.items()}


def quantities(V, points) -> Quantities:
    """The domain mean of the parameter and its values at ``points`` (raises ObservationPointsOutsideMesh
    naming a point outside the mesh)."""
    import firedrake as fd

    from pdeinv.linalg.arrays import scale
    from pdeinv.observation import PointObservation

    mesh = V.mesh()
    mean = fd.assemble(fd.TestFunction(V) * fd.dx)
    scale(mean, 1.0 / fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh)))
    out = {"mean": mean}
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    obs = PointObservation(V, pts)
    for i, (x, y) in enumerate(pts):
        e = np.zeros(len(pts))
        e[i] = 1.0
        w = fd.Cofunction(obs.space.dual(), val=obs.from_array(e).dat)
        ell = fd.Cofunction(V.dual())
        with ell.dat.vec as v:
            obs.observe_transpose_add(w, 0, v)
        out[f"m({x:g},{y:g})"] = ell
    return Quantities(out)


def run_chains(settings, problem, laplace, m_map, qs: Quantities, *, ckdir, ensemble, resume: bool, quiet: bool,
               on_checkpoint):
    """The chains of ``settings`` (a :class:`~pdeinv.cases.settings.SamplingSettings`) from the MAP point,
    checkpointed in ``ckdir/chains``; with ``resume``, each chain that has a checkpoint there goes on from it."""
    from pdeinv.sampling import sample

    store = os.path.join(ckdir, CHAINS_DIR)
    chain = 0 if ensemble is None else ensemble.ensemble_comm.rank
    comm = problem.parameter_space.mesh().comm
    mine = resume and comm.bcast(os.path.exists(os.path.join(store, f"chain-{chain}.h5")) if comm.rank == 0 else None)
    return sample(problem, settings.kernel_for(laplace), m_map, options=settings.options(quiet=quiet),
                  quantities=qs.callables, ensemble=ensemble, store=store, resume=bool(mine),
                  on_checkpoint=on_checkpoint)


def summary_entry(result, marginals: dict, setup_solves: int) -> dict:
    """The ``sampling`` entry of summary.json: settings that ran, per-chain counts, diagnostics per quantity
    (ArviZ) next to the Laplace marginal, effective samples per PDE solve (kept steps, and with the burn-in and
    the MAP + Laplace setup counted too) and per second."""
    diag = result.diagnostics()
    kept = int(result.pde_solves.sum())
    total = kept + int(result.burn_in_solves.sum()) + setup_solves
    per_q = {}
    for name, d in diag.items():
        m, sd = marginals[name]
        per_q[name] = d.as_dict() | {"laplace_mean": m, "laplace_sd": sd,
                                     "ess_per_pde_solve": d.ess_bulk / max(kept, 1),
                                     "ess_per_pde_solve_with_setup": d.ess_bulk / max(total, 1),
                                     "ess_per_second": d.ess_bulk / max(result.seconds, 1e-12)}
    return {"kernel": result.kernel, "chains": result.chains, "samples_per_chain": result.samples,
            "acceptance": result.acceptance.tolist(),
            "stage1_acceptance": None if result.stage1_acceptance is None else result.stage1_acceptance.tolist(),
            "step": result.step.tolist(), "pde_solves": result.pde_solves.tolist(),
            "burn_in_pde_solves": result.burn_in_solves.tolist(),
            "surrogate_pde_solves": result.surrogate_solves.tolist(),
            "setup_pde_solves": setup_solves, "seconds": result.seconds, "quantities": per_q}


def write_traces(path, result) -> None:
    """``traces.csv``: one row per (chain, kept sample), one column per quantity (rank 0; atomic)."""
    names = list(result.quantities)
    chains, n = result.quantities[names[0]].shape if names else (result.chains, 0)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(",".join(["chain", "sample"] + names) + "\n")
        for c in range(chains):
            for k in range(n):
                fh.write(",".join([str(c), str(k)] + [repr(float(result.quantities[q][c, k])) for q in names]) + "\n")
    os.replace(tmp, path)


def _autocorrelation(x, lags: int) -> np.ndarray:
    """Normalized autocorrelation of one chain up to ``lags`` (for the plot only; diagnostics use ArviZ)."""
    from arviz_stats.base import array_stats

    return np.asarray(array_stats.autocorr(np.asarray(x, dtype=float)))[:lags]


def plot_chains(path, result) -> None:
    """Per quantity: the trace of every chain, and its autocorrelation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdeinv.cases.output import save_figure

    names = list(result.quantities)
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 2.4 * len(names)), squeeze=False)
    for (tr, ac), name in zip(axes, names, strict=True):
        x = result.quantities[name]
        lags = min(100, x.shape[1])
        for c in range(x.shape[0]):
            tr.plot(x[c], lw=0.6, label=f"chain {c}")
            ac.plot(_autocorrelation(x[c], lags), lw=0.9)
        tr.set_ylabel(name)
        ac.axhline(0.0, color="k", lw=0.6)
        ac.set_ylabel("autocorrelation")
    axes[-1, 0].set_xlabel("kept sample")
    axes[-1, 1].set_xlabel("lag")
    axes[0, 0].set_title(f"{result.kernel}: acceptance {np.mean(result.acceptance):.2f}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_marginals(path, result, marginals: dict) -> None:
    """Histogram of every quantity (all chains) against its Laplace marginal density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdeinv.cases.output import save_figure

    names = list(result.quantities)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        x = np.ravel(result.quantities[name])
        m, sd = marginals[name]
        ax.hist(x, bins=30, density=True, alpha=0.6, label="MCMC")
        if sd > 0:
            t = np.linspace(min(x.min(), m - 4 * sd), max(x.max(), m + 4 * sd), 200)
            ax.plot(t, np.exp(-0.5 * ((t - m) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), "k-", lw=1, label="Laplace")
        ax.set_title(name)
    axes[0, 0].legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
