"""Growth methods behind one interface, and the baselines they are compared with.

``methods`` never imports ``benchmarks``: a method sees a net and a ``GrowthContext``, nothing of
how runs are scheduled or tracked.
"""

from growbench.methods.base import (
    Grower,
    GrowerConfig,
    GrowthContext,
    GrowthEvent,
    statistics_loss,
)
from growbench.methods.registry import available_methods, get_method, make_grower, register

__all__ = [
    "Grower",
    "GrowerConfig",
    "GrowthContext",
    "GrowthEvent",
    "available_methods",
    "get_method",
    "make_grower",
    "register",
    "statistics_loss",
]
