"""Forward models wrapped as parameter-to-observable maps.

The shipped models: :class:`HeatModel` and :class:`PoissonModel` (declarations on the generic engines
below) and :class:`TransportModel` (hand-written sweeps, one factorisation per direction).  A user's
own model, derivatives derived automatically (``docs/own-model.md``): :class:`StationaryModel` (a
residual form), :class:`TimeSteppingModel`
(a one-step residual, optional :class:`Checkpointing`) and :class:`TapedMap` (any Firedrake callable,
pyadjoint on a private tape).  Importing this package does not import Firedrake.
"""

from pdeinv.forward.heat import HeatModel
from pdeinv.forward.poisson import PoissonModel
from pdeinv.forward.stationary import StationaryModel
from pdeinv.forward.taped import TapedMap
from pdeinv.forward.timestepping import Checkpointing, TimeSteppingModel
from pdeinv.forward.transport import TransportModel

__all__ = ["HeatModel", "PoissonModel", "TransportModel", "StationaryModel", "TimeSteppingModel", "Checkpointing",
           "TapedMap"]
