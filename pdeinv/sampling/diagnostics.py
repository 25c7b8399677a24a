r"""Chain diagnostics from ArviZ (``arviz-stats``' array interface): bulk and tail ESS, split-:math:`\hat R`
(rank-normalized, Vehtari et al. 2021), Monte Carlo standard errors of the mean and the standard deviation;
the integrated autocorrelation time is :math:`\tau = N_{\text{total}}/\text{ESS}_{\text{mean}}`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["QuantityDiagnostics", "summarize"]


@dataclass(frozen=True)
class QuantityDiagnostics:
    """One quantity of interest over all chains."""

    mean: float
    sd: float
    mcse_mean: float
    mcse_sd: float
    ess_bulk: float
    ess_tail: float
    ess_mean: float
    iact: float
    rhat: float

    def as_dict(self) -> dict:
        return asdict(self)


def _stats():
    try:
        from arviz_stats.base import array_stats
    except ImportError as err:  # pragma: no cover - the stack installs it (tools/stack/requirements-extra.txt)
        raise ImportError("pdeinv.sampling diagnostics need arviz-stats (pip install arviz-stats)") from err
    return array_stats


def _halves(x):
    """One chain as its two halves (ArviZ's split-R-hat is NaN for a single chain; split into halves it
    compares the chain's quarters, still a test of stationarity); several chains as they are."""
    if x.shape[0] > 1:
        return x
    n = x.shape[1] // 2
    return x[:, :2 * n].reshape(2, n)


def summarize(quantities: dict) -> dict:
    """:class:`QuantityDiagnostics` per name of ``quantities`` (arrays of shape ``(chains, draws)``).
    split-:math:`\\hat R` needs at least 4 draws per chain; one chain is given to it as its two halves.  A
    quantity that never changed (every proposal rejected) has ESS 0 and IACT inf, not ArviZ's N."""
    a = _stats()
    out = {}
    for name, x in quantities.items():
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] < 4:
            raise ValueError(f"summarize: {name!r} must be an array (chains, draws) with >= 4 draws, got {x.shape}")
        if np.all(x == x.flat[0]):  # never moved: ArviZ would call N equal draws N independent ones
            out[name] = QuantityDiagnostics(mean=float(x.flat[0]), sd=0.0, mcse_mean=math.nan, mcse_sd=math.nan,
                                            ess_bulk=0.0, ess_tail=0.0, ess_mean=0.0, iact=math.inf, rhat=math.nan)
            continue
        kw = {"chain_axis": 0, "draw_axis": 1}
        ess_mean = float(a.ess(x, method="mean", **kw))
        out[name] = QuantityDiagnostics(
            mean=float(x.mean()), sd=float(x.std(ddof=1)),
            mcse_mean=float(a.mcse(x, method="mean", **kw)), mcse_sd=float(a.mcse(x, method="sd", **kw)),
            ess_bulk=float(a.ess(x, method="bulk", **kw)),
            ess_tail=float(a.ess(x, method="tail", prob=(0.05, 0.95), **kw)),
            ess_mean=ess_mean, iact=float(x.size / ess_mean), rhat=float(a.rhat(_halves(x), **kw)))
    return out
