"""Fixes found in review, each with the check that failed before it: predictions across max pools
flagged in every splitting method, non-finite statistics one clear error in every method that
reads them, depth growth reported as layers (not units)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from growbench.methods import Grower, GrowerConfig, GrowthContext, make_grower
from growbench.nn import ModelConfig, NonFiniteStatisticsError, build_model, insert_layer
from growbench.nn.losses import classification_loss

from .conftest import make_task

SPLITTING = ("s2d", "signed-s2d", "fast-s2d")
READS_STATISTICS = ("s2d", "signed-s2d", "fast-s2d", "tiny", "gradmax", "firefly")
QUICK = {
    "fast-s2d": {"rayleigh": {"steps": 40}},
    "signed-s2d": {},
    "s2d": {},
    "tiny": {},
    "gradmax": {},
    "firefly": {"search_steps": 3},  # split a unit along a NaN direction, once, silently
}


def pooled_task(model: ModelConfig):
    net = build_model(model, seed=0).double().eval()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, *model.input_shape, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, model.num_outputs, (32,), generator=generator)
    ctx = GrowthContext(
        inputs, targets, classification_loss, "params", float("inf"), torch.Generator(), 32
    )
    return net, ctx


@pytest.mark.parametrize("name", SPLITTING)
@pytest.mark.parametrize(
    "model",
    [
        ModelConfig("cnn", (12, 6, 6), 3, (4, 3), activation="tanh", batchnorm=True),
        ModelConfig("pointnet", (8, 3), 3, width_multiplier=1 / 16, activation="tanh"),
    ],
    ids=["cnn-max-pool", "pointnet-global-max"],
)
def test_splits_before_a_max_pool_are_flagged_heuristic(name, model):
    """fast-s2d and signed-s2d used to check only for a surrogate σ'' (the flag was False with
    tanh before a max pool, where fast-s2d's realised/predicted ratio was 0.32)."""
    net, ctx = pooled_task(model)
    event = make_grower(name, {"epsilon": 1e-3, **QUICK[name]}).grow(net, ctx)
    assert event.grew
    assert event.extras["prediction_is_heuristic"] is True


@pytest.mark.parametrize("name", READS_STATISTICS)
@pytest.mark.parametrize("where", ["data", "weights"])
def test_non_finite_statistics_are_one_clear_error(name, where):
    """fast-s2d used to end with stop_reason "splitting-stable" and no error."""
    task = make_task("tanh_mlp")
    ctx = task.context()
    if where == "data":
        inputs = task.inputs.clone()
        inputs[7, 1] = float("nan")
        ctx = GrowthContext(inputs, task.targets, task.loss_fn, "params", float("inf"),
                            torch.Generator(), 128)  # fmt: skip
    else:
        with torch.no_grad():
            task.net.site(0).producer.weight[1, 0] = float("nan")
    with pytest.raises(NonFiniteStatisticsError, match=r"not finite|objective became nan"):
        make_grower(name, QUICK[name]).grow(task.net, ctx)


@dataclass
class DeepenConfig(GrowerConfig):
    units: int = 2


class Deepen(Grower):
    """Inserts a layer after the first site and widens the new layer's site."""

    name = "deepen-test"
    Config = DeepenConfig
    preserves_function = "exact"

    def grow_step(self, net, ctx, event):
        new = insert_layer(net, net.sites[0])
        d = new.fan_in_size - (new.producer.bias is not None)
        new.add_units(torch.zeros(self.config.units, d), torch.zeros(2, new.fan_out_size))
        old = net.site("block1")
        old.add_units(torch.zeros(1, old.fan_in_size - 1), torch.zeros(1, old.fan_out_size))


def test_depth_growth_is_reported_as_layers_and_units_count_units_only():
    task = make_task("relu_mlp")
    widths = task.net.widths()
    event = Deepen().grow(task.net, task.context())
    (inserted,) = event.layers_inserted
    assert inserted == "block0+1"
    assert inserted not in widths
    # block1 grew by one unit; the new layer (4 units, then 2 more) is a layer, not units
    assert event.units_added == {"block1": 1}
    assert task.net.widths()[inserted] == widths["block0"] + 2
    assert event.grew
