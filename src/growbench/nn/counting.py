"""Parameter and FLOP counts, the currency growth budgets are spent in.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts for one forward pass of one
sample (matrix multiplies and convolutions; a multiply-add is 2 FLOPs), so the numbers match what
torch users quote. The per-unit FLOP cost of a site is measured the same way, on a copy of the net
with one more unit, so budget checks and reported costs can never disagree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from growbench.nn.growable import Site


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_flops(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of one sample, measured in eval mode without autograd."""
    reference = next(net.parameters())
    sample = torch.zeros(1, *input_shape, dtype=reference.dtype, device=reference.device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(sample)
    finally:
        net.train(was_training)
    return int(counter.get_total_flops())


def flops_per_unit(site: Site) -> int:
    """FLOPs one more unit at ``site`` adds (exact: FLOPs are linear in a site's width)."""
    net = site.net
    trial = copy.deepcopy(net)
    trial_site = trial.site(site.index)
    reference = trial_site.producer.weight
    fan_in = torch.zeros(1, trial_site.fan_in_size - (trial_site.producer.bias is not None))
    fan_out = torch.zeros(1, trial_site.fan_out_size)
    trial_site.add_units(fan_in.to(reference), fan_out.to(reference))
    return count_flops(trial, net.input_shape) - count_flops(net, net.input_shape)
