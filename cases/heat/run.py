"""Heat case: recover the initial temperature from sparse sensors over time.

    mpiexec -n 2 python cases/heat/run.py [--config cases/heat/config.toml] [--set mesh.n=16] [--out DIR]
"""

import sys

from pdeinv.cases.runner import main

if __name__ == "__main__":
    sys.exit(main(case="heat"))
