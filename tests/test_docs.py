"""The Sphinx documentation builds, and its API reference really comes from the docstrings."""

import subprocess
import sys


def test_sphinx_build(tmp_path):
    out = tmp_path / "html"
    p = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", "docs", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "ERROR" not in p.stderr, p.stderr
    api = (out / "api.html").read_text()
    for name in ("HeatModel", "LaplaceApproximation", "newton_cg", "dot_test", "BiLaplacianPrior", "StationaryModel",
                 "TimeSteppingModel", "TapedMap", "IntegralObservation", "FieldGaussianNoise", "SamplingOptions",
                 "DesignOperator", "swap_greedy"):
        assert name in api, name
    assert (out / "cases" / "poisson.html").exists()
    assert (out / "own-model.html").exists()
