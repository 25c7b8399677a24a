"""Design case: where to put k thermometers for the heat inversion.

    mpiexec -n 2 python cases/design/run.py [--config cases/design/config.toml] [--set design.k=20] [--out DIR]
"""

import sys

from pdeinv.cases.runner import main

if __name__ == "__main__":
    sys.exit(main(case="design"))
