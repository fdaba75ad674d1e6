"""Growable networks and the surgery every growth method works through.

``nn`` imports nothing else of growbench: it is the ground the methods and the harness stand on.
"""

from growbench.nn.activations import (
    ACTIVATIONS,
    Activation,
    RationalActivation,
    activation_info,
    make_activation,
)
from growbench.nn.counting import count_flops, count_params
from growbench.nn.growable import GrowableNet, Site, insert_layer
from growbench.nn.losses import loss_for_task
from growbench.nn.optim import carry_optimizer_state
from growbench.nn.taps import NonFiniteStatisticsError, Taps, collect_taps
from growbench.nn.units import DepthwiseConv2d, Slot, UnitChange
from growbench.nn.zoo import ModelConfig, available_models, build_model, register_model

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "DepthwiseConv2d",
    "GrowableNet",
    "ModelConfig",
    "NonFiniteStatisticsError",
    "RationalActivation",
    "Site",
    "Slot",
    "Taps",
    "UnitChange",
    "activation_info",
    "available_models",
    "build_model",
    "carry_optimizer_state",
    "collect_taps",
    "count_flops",
    "count_params",
    "insert_layer",
    "loss_for_task",
    "make_activation",
    "register_model",
]
