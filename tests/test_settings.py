"""The typed tables the cases share (pdeinv.cases.settings): one place for each default, type and check."""

import dataclasses

import pytest

from pdeinv.cases.common import PhasedCase, load_case
from pdeinv.cases.config import ConfigError, load_config
from pdeinv.cases.runner import CASES
from pdeinv.cases.settings import (
    EXACT_VARIANCE_DOFS,
    BiLaplacianSettings,
    LaplaceSettings,
    MeshSettings,
    OptimizerSettings,
    TomographyPriorSettings,
)

PHASED = [c for c in CASES if isinstance(load_case(c), PhasedCase)]


@pytest.mark.parametrize("case", PHASED)
def test_every_phased_case_takes_its_shared_tables_from_the_settings(case):
    """A phased case's [optimizer] and [laplace] tables hold exactly the dataclass's keys, and what a case
    does not set is the shared default (one place): e.g. every case's laplace.variance_samples is 100."""
    c = load_case(case)
    for table in (OptimizerSettings, LaplaceSettings):
        names = [f.name for f in dataclasses.fields(table)]
        assert list(c.defaults[table.TABLE]) == names, (case, table)
        typed = table.of(load_config(c.defaults))
        assert isinstance(typed, table) and typed.table() == c.defaults[table.TABLE]
    shared = LaplaceSettings()
    assert c.defaults["laplace"]["variance_samples"] == shared.variance_samples
    assert c.defaults["laplace"]["prior_variance"] == shared.prior_variance
    assert c.defaults["optimizer"]["globalization"] == OptimizerSettings().globalization


def test_typed_values_and_what_they_make():
    """of() reads typed values from a loaded configuration; the tables make the solver's options, resolve
    prior_variance = "auto", and are frozen."""
    cfg = load_config(load_case("heat").defaults, None, ["optimizer.gradient_rtol=1e-7", "laplace.rank=7"])
    opt = OptimizerSettings.of(cfg)
    options = opt.newton_options(quiet=True)
    assert (options.gradient_rtol, options.max_iterations, options.quiet) == (1e-7, 30, True)
    lap = LaplaceSettings.of(cfg)
    assert (lap.rank, lap.vectors) == (7, 17)
    assert lap.variance_method(EXACT_VARIANCE_DOFS) == "exact"
    assert lap.variance_method(EXACT_VARIANCE_DOFS + 1) == "samples"
    assert dataclasses.replace(lap, prior_variance="exact").variance_method(10 ** 9) == "exact"
    with pytest.raises(dataclasses.FrozenInstanceError):
        lap.rank = 3


@pytest.mark.parametrize("table, key", [
    (OptimizerSettings(gradient_rtol=1.0), "optimizer.gradient_rtol"),
    (OptimizerSettings(max_cg_iterations=0), "optimizer.max_cg_iterations"),
    (OptimizerSettings(globalization="wolfe"), "optimizer.globalization"),
    (LaplaceSettings(oversampling=-1), "laplace.oversampling"),
    (LaplaceSettings(prior_variance="guess"), "laplace.prior_variance"),
    (LaplaceSettings(posterior_samples=-1), "laplace.posterior_samples"),
    (MeshSettings(n=1), "mesh.n"),
    (BiLaplacianSettings(variance=0.0), "prior.variance"),
    (TomographyPriorSettings(tv_epsilon=0.0), "prior.tv_epsilon"),
])
def test_each_range_check_names_its_key(table, key):
    """Every failed check of a table is a message naming the key; the defaults pass every check."""
    failed = [message for ok, message in table.problems() if not ok]
    assert len(failed) == 1 and key in failed[0], failed
    assert all(ok for ok, _ in type(table)().problems())


@pytest.mark.parametrize("case", CASES)
def test_a_shared_check_reaches_every_case(case):
    """mesh.n = 1 is refused by every case through MeshSettings (one check, one message)."""
    c = load_case(case)
    with pytest.raises(ConfigError, match=r"mesh\.n must be >= 2"):
        c.validate(load_config(c.defaults, None, ["mesh.n=1"]))
