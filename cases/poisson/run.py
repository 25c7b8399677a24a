"""poisson case (see README.md).

    mpiexec -n 2 python cases/poisson/run.py [--config cases/poisson/config.toml] [--set mesh.n=16] [--out DIR]
"""

import sys

from pdeinv.cases.runner import main

if __name__ == "__main__":
    sys.exit(main(case="poisson"))
