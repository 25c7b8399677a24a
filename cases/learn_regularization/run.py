"""Learn the heat inversion's prior from training pairs; compare with the discrepancy principle,
the L-curve and GCV on held-out test data.

    mpiexec -n 2 python cases/learn_regularization/run.py [--config cases/learn_regularization/config.toml]
        [--set learn.weight_field=2] [--out DIR]
"""

import sys

from pdeinv.cases.runner import main

if __name__ == "__main__":
    sys.exit(main(case="learn_regularization"))
