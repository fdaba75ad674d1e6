"""The model zoo: the registry, ModelConfig, and each model against an independent reference
(torchvision's ResNet-18 and VGG, hand counts for MobileNetV1 and PointNet)."""

from __future__ import annotations

import itertools
import math
import warnings
from importlib.metadata import EntryPoint

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from growbench.nn import ModelConfig, build_model
from growbench.nn.zoo import available_models, get_model, model_options
from growbench.nn.zoo import registry as zoo_registry
from growbench.nn.zoo.small import MLP

DTYPE = torch.float64
MODELS = ("mlp", "cnn", "vgg", "mobilenetv1", "resnet18", "pointnet")
TINY = {  # each model at a tiny width, with the data shape it is built for
    "mlp": ModelConfig("mlp", (5,), 3, (4, 6)),
    "cnn": ModelConfig("cnn", (2, 8, 8), 3, (3, 4), batchnorm=True),
    "vgg": ModelConfig("vgg", (3, 32, 32), 3, width_multiplier=1 / 32),
    "mobilenetv1": ModelConfig("mobilenetv1", (3, 32, 32), 3, width_multiplier=1 / 32),
    "resnet18": ModelConfig("resnet18", (3, 16, 16), 3, width_multiplier=1 / 16),
    "pointnet": ModelConfig("pointnet", (16, 3), 3, width_multiplier=1 / 32),
}


def flops(module: nn.Module, shape) -> int:
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, *shape, dtype=next(module.parameters()).dtype))
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------ registry
def test_the_six_models_are_registered_with_widths_and_activation_options():
    models = available_models()
    assert set(MODELS) <= set(models)
    for name in MODELS:
        options = model_options(name)
        assert {"widths", "activation"} <= set(options), name
        assert get_model(name).description


def test_unknown_model_and_option_are_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'transformer'; choose one of .*resnet18"):
        ModelConfig("transformer", (3, 32, 32), 10)
    with pytest.raises(ValueError, match=r"model 'vgg' has no option 'layers'.*depth"):
        ModelConfig("vgg", (3, 32, 32), 10, layers=11)


@pytest.mark.parametrize(
    ("name", "shape", "options", "message"),
    [
        ("vgg", (3, 32, 32), {"depth": 12}, r"vgg: depth must be one of 11, 13, 16, 19, got 12"),
        ("vgg", (3, 16, 16), {}, r"at least 32×32"),
        ("vgg", (3, 32, 32), {"widths": (8,) * 7}, r"8 growth sites.*got 7"),
        (
            "vgg",
            (3, 32, 32),
            {"width_multiplier": 0},
            r"width_multiplier must be a positive number",
        ),
        ("mobilenetv1", (3, 32, 32), {"form": "tiny"}, r"form must be one of"),
        ("resnet18", (3, 32, 32), {"widths": (4, 0) * 4}, r"positive integers"),
        ("pointnet", (3, 32, 32), {}, r"\(num_points, 3\)"),
        ("pointnet", (16, 3), {"dropout": 1.0}, r"dropout must lie in"),
        ("cnn", (3, 3, 8), {"widths": (4, 4, 4)}, r"at least 4×4.*fewer widths"),
        ("cnn", (64,), {}, r"\(channels, height, width\)"),
        ("mlp", (5,), {"activation": "swish"}, r"unknown activation 'swish'"),
    ],
)
def test_bad_options_are_one_clear_error(name, shape, options, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(name, shape, 10, **options)


def test_config_resolves_widths_and_is_immutable_and_hashable():
    config = ModelConfig("resnet18", [3, 32, 32], 10, inner_ratio=0.25)
    assert config.input_shape == (3, 32, 32)
    assert config.widths == (16, 16, 32, 32, 64, 64, 128, 128)
    assert config.options["form"] == "cifar"
    with pytest.raises(AttributeError, match="immutable"):
        config.name = "vgg"
    wider = config.with_widths([20] * 8)
    assert wider.widths == (20,) * 8
    assert config.widths[0] == 16
    assert wider.with_widths(config.widths) == config
    assert len({config, wider, wider.with_widths(config.widths)}) == 2
    assert config.to_dict() == {"name": "resnet18", "options": dict(config.options)}


def test_an_outside_model_plugs_in_through_the_entry_point_and_a_broken_one_warns(monkeypatch):
    class Wide(MLP):
        name = "wide-mlp"

    monkeypatch.setattr(zoo_registry, "Wide", Wide, raising=False)
    entries = [
        EntryPoint("wide-mlp", f"{__name__}:Wide", zoo_registry.ENTRY_POINT_GROUP),
        EntryPoint("broken", "no_such_package.models:Net", zoo_registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setitem(globals(), "Wide", Wide)
    monkeypatch.setattr(zoo_registry.MODELS, "entry_points", lambda: entries)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = available_models()
    assert "wide-mlp" in models
    assert "resnet18" in models
    assert any("'broken'" in str(w.message) and "no_such_package" in str(w.message) for w in caught)
    net = build_model(ModelConfig("wide-mlp", (3,), 2, (5,)))
    assert net.widths() == {"block0": 5}


# ------------------------------------------------------------------------------ building
@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_runs_and_names_its_sites(name):
    config = TINY[name]
    net = build_model(config).double()
    x = torch.randn(2, *config.input_shape, dtype=DTYPE)
    assert net(x).shape == (2, 3)
    names = [site.name for site in net.sites]
    assert len(names) == len(set(names)) == len(config.widths)
    assert tuple(net.widths().values()) == config.widths
    assert net.describe()["widths"] == net.widths()
    assert net.macs() * 2 == net.flops()


@pytest.mark.parametrize("name", MODELS)
def test_build_model_is_seeded_and_leaves_the_global_rng_alone(name):
    config = TINY[name]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = build_model(config, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # a different global state must not matter
    second = build_model(config, seed=7)
    other = build_model(config, seed=8)
    one, two, three = first.state_dict(), second.state_dict(), other.state_dict()
    assert one.keys() == two.keys() == three.keys()
    assert all(torch.equal(one[key], two[key]) for key in one)
    assert any(not torch.equal(one[key], three[key]) for key in one)


def _torchvision_resnet(form: str, classes: int) -> nn.Module:
    reference = torchvision.models.resnet18(num_classes=classes)
    if form == "cifar":
        reference.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        reference.maxpool = nn.Identity()
    return reference


def _copy_into_ours(reference: nn.Module, ours: nn.Module) -> None:
    """torchvision's parameters and buffers into our module names, in registration order."""
    theirs = [t for t in reference.state_dict().values()]
    mine = ours.state_dict()
    assert len(theirs) == len(mine)
    ours.load_state_dict(dict(zip(mine, theirs, strict=True)))


@pytest.mark.parametrize(("form", "shape"), [("cifar", (3, 32, 32)), ("imagenet", (3, 64, 64))])
def test_resnet18_is_torchvisions_resnet18(form, shape):
    """Same parameter count, same FLOPs, and with torchvision's weights the same function."""
    reference = _torchvision_resnet(form, 10).double().eval()
    ours = build_model(ModelConfig("resnet18", shape, 10, form=form)).double().eval()
    assert ours.params() == sum(p.numel() for p in reference.parameters())
    assert ours.flops() == flops(reference, shape)
    _copy_into_ours(reference, ours)
    x = torch.randn(2, *shape, dtype=DTYPE)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-12, atol=1e-12)


def test_resnet18_sites_are_the_inner_widths_only():
    net = build_model(ModelConfig("resnet18", (3, 32, 32), 10, inner_ratio=1 / 64))
    assert net.widths() == dict.fromkeys(["layer1.0", "layer1.1"], 1) | dict.fromkeys(
        ["layer2.0", "layer2.1"], 2
    ) | dict.fromkeys(["layer3.0", "layer3.1"], 4) | dict.fromkeys(["layer4.0", "layer4.1"], 8)
    for site in net.sites:
        assert site.consumer.out_channels == 2 * 64 * 2 ** (int(site.name[5]) - 1) // 2


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_matches_torchvisions_features_without_conv_biases(depth):
    reference = getattr(torchvision.models, f"vgg{depth}_bn")()
    convs = [m for m in reference.features if isinstance(m, nn.Conv2d)]
    expected = sum(p.numel() for p in reference.features.parameters()) - sum(
        c.out_channels for c in convs
    )
    net = build_model(ModelConfig("vgg", (3, 32, 32), 10, depth=depth))
    assert net.params() == expected + 512 * 10 + 10
    assert list(net.widths().values()) == [c.out_channels for c in convs]
    assert net.flops() == flops(reference.features, (3, 32, 32)) + 2 * 512 * 10
    assert net.sites[-1].positions == 1  # five pools: 32 → 1


def _mobilenet_params(widths, strides, classes: int) -> int:
    """By hand: stem 3×3 conv + BN, then per block a depthwise 3×3 + BN and pointwise + BN."""
    total = 27 * widths[0] + 2 * widths[0]
    for block in range(13):
        channels, out = widths[block], widths[block + 1]
        total += 9 * channels + 2 * channels + channels * out + 2 * out
    return total + widths[-1] * classes + classes


def test_mobilenetv1_parameters_and_macs_by_hand():
    widths = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
    strides = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
    imagenet = build_model(ModelConfig("mobilenetv1", (3, 224, 224), 1000, form="imagenet"))
    assert imagenet.params() == _mobilenet_params(widths, strides, 1000) == 4_231_976
    side, macs = 112, 27 * 32 * 112 * 112
    for block, stride in enumerate(strides):
        macs += 9 * widths[block] * (side // stride) ** 2
        side //= stride
        macs += widths[block] * widths[block + 1] * side**2
    assert imagenet.macs() == macs + 1024 * 1000
    cifar = build_model(ModelConfig("mobilenetv1", (3, 32, 32), 10, widths=[32] * 14))
    assert cifar.params() == _mobilenet_params((32,) * 14, strides, 10)
    stem = cifar.site("stem")
    assert stem.kind == "Conv2d+BN+depthwise"
    assert stem.consumer is cifar.site("pw1").producer
    assert cifar.site("pw13").kind == "Conv2d+BN"
    assert cifar.site("pw13").positions == 1


def test_pointnet_parameters_by_hand_and_point_order_invariance():
    widths = (64, 64, 64, 128, 1024, 512, 256)
    net = build_model(ModelConfig("pointnet", (1024, 3), 40)).double().eval()
    expected = 3 * 64 + 64 + 2 * 64
    for before, after in itertools.pairwise(widths):  # each conv or Linear with bias, and BN
        expected += before * after + after + 2 * after
    assert net.params() == expected + 256 * 40 + 40
    points = torch.randn(3, 1024, 3, dtype=DTYPE)
    shuffled = points[:, torch.randperm(1024)]
    with torch.no_grad():
        torch.testing.assert_close(net(points), net(shuffled), rtol=1e-12, atol=1e-12)
    assert net.site("conv5").max_pooled
    assert net.site("fc2").positions == 1


def test_pointnet_input_transform_starts_as_the_identity():
    plain = build_model(ModelConfig("pointnet", (32, 3), 4, width_multiplier=1 / 16), seed=3)
    with_transform = build_model(
        ModelConfig("pointnet", (32, 3), 4, width_multiplier=1 / 16, input_transform=True), seed=3
    )
    transform = with_transform.stages[0].transform
    points = torch.randn(2, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(transform.eval()(points), points)
    assert with_transform.widths() == plain.widths()  # the T-Net holds no growth sites


def test_mlp_with_no_hidden_layer_grows_from_its_input_slot():
    from growbench.nn import insert_layer

    net = build_model(ModelConfig("mlp", (4,), 2, ())).double()
    x = torch.randn(5, 4, dtype=DTYPE)
    before = net(x)
    site = insert_layer(net, "input", activation="identity")
    assert net.sites == [site]
    assert site.width == 4
    assert (net(x) - before).abs().max() <= 1e-12


def test_zoo_relu_lets_a_zero_fan_in_unit_learn():
    """A unit with zero fan-in in a built net receives a nonzero gradient."""
    net = build_model(ModelConfig("mlp", (3,), 2, (4,), activation="relu")).double()
    producer = net.site(0).producer
    with torch.no_grad():
        producer.weight[0].zero_()
        producer.bias[0] = 0.0
    x = torch.randn(8, 3, dtype=DTYPE)
    F.cross_entropy(net(x), torch.zeros(8, dtype=torch.long)).backward()
    assert producer.weight.grad[0].abs().sum() > 0


def test_resnet_inner_ratio_rounds_up():
    config = ModelConfig("resnet18", (3, 32, 32), 10, width_multiplier=0.5, inner_ratio=0.1)
    assert config.widths == tuple(math.ceil(0.1 * w) for w in (32, 32, 64, 64, 128, 128, 256, 256))
