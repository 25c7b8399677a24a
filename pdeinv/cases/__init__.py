"""The case layer: configuration, the common driver (MAP, Laplace, outputs, restart) and the cases.

Run a case with ``pdeinv run cases/<name>/config.toml`` or ``python cases/<name>/run.py`` (both under
``mpiexec``); see :mod:`pdeinv.cases.runner`.
"""
