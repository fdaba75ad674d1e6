"""The algebra of a site's layers, one interface for ``nn.Linear`` and ``nn.Conv2d``.

Every growth method reads a site's producer and consumer the same few ways: the producer's input
as patches (one fan-in row per output position, a constant-1 channel for the bias), the layer's
map with another weight (a candidate's fan-in or fan-out), what a consumer reads of the maps at
the end of the path (kernel taps × output positions), its weight gradient for given input and
output gradient, and a BatchNorm's slope. A Linear layer is the one-position, one-tap case of a
convolution; ``layer_map`` gives the object that knows which, so that the method modules state
their algebra once and never branch on the layer's type.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight


def pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """A conv hyperparameter (kernel, stride, padding, dilation) as two ints."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def with_ones(tensor: Tensor, bias: bool = True) -> Tensor:
    """``tensor`` (N × C × ...) with a constant-1 channel appended along dim 1 when ``bias``:
    the input a bias multiplies, so that a fan-in row can carry the bias as its last entry."""
    if not bias:
        return tensor
    return torch.cat([tensor, tensor.new_ones(tensor.shape[0], 1, *tensor.shape[2:])], dim=1)


def norm_slope(norm: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """b = γ / sqrt(running_var + eps): the per-channel slope of an eval-mode BatchNorm."""
    slope = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    return slope * norm.weight.detach() if norm.affine else slope


class LayerMap:
    """A Linear or Conv2d layer's linear map and the views of it that growth methods take.

    Shapes: a layer reads ``d`` channels and writes ``q``; a convolution's ``kernel_taps`` are
    its kh·kw kernel positions and its output ``positions`` the H'·W' places it is applied at.
    A Linear layer has one tap and one position, so each formula below holds for both.
    """

    def __init__(self, layer: nn.Linear | nn.Conv2d) -> None:
        self.layer = layer

    @property
    def is_conv(self) -> bool:
        return False

    @property
    def kernel_taps(self) -> int:
        """How many input positions one output position reads (kh·kw; 1 for Linear)."""
        return 1

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The layer's map with another weight (same geometry), e.g. a candidate's fan-in, or a
        fan-out held as rows × channels × taps."""
        raise NotImplementedError

    def same_shape(self, maps: Tensor, weight: Tensor) -> Tensor:
        """A width-preserving layer of this layer's kind applied to its output maps: a Linear
        map, or a convolution with stride 1 and "same" padding (odd square ``weight``)."""
        raise NotImplementedError

    def patches(self, x: Tensor) -> Tensor:
        """The input as N × d·taps × positions: column l is what output position l reads, laid
        out like a fan-in row without the bias (im2col; a Linear layer: one position)."""
        raise NotImplementedError

    def patch_maps(self, x: Tensor, patches: Tensor) -> Tensor:
        """``patches`` (N × p × positions, of input ``x``) laid out over the output's spatial
        shape, N × p × H' × W' (a Linear layer: 1 × 1)."""
        raise NotImplementedError

    def reads(self, maps: Tensor) -> Tensor:
        """What the layer reads of its input maps, N × C × taps × positions (a Linear layer
        after a flatten: every entry of a channel is one tap of the one output position)."""
        raise NotImplementedError

    def bias_gradient(self, grad_output: Tensor) -> Tensor:
        """Σ over samples (and positions) of ``grad_output``: the bias's gradient, q."""
        raise NotImplementedError

    def weight_gradient(self, x: Tensor, grad_output: Tensor) -> Tensor:
        """Σ over samples of ∂(⟨grad_output, layer(x)⟩)/∂W for input maps ``x`` of any channel
        count C: q × C (× kh × kw), the weight's layout."""
        raise NotImplementedError

    def output_rows(self, maps: Tensor) -> Tensor:
        """N × C × (positions...) maps as (N·positions) × C rows, channels last."""
        raise NotImplementedError

    def read_counts(self, maps: Tensor) -> Tensor | None:
        """How many (tap, output position) pairs read each position of ``maps`` (flattened;
        zero padding reads nothing); None when each is read exactly once (a Linear layer)."""
        return None

    def reads_gradient(self, maps: Tensor, grad_output: Tensor) -> Tensor:
        """Σ over samples of B_(t,a)·g_c: the weight gradient of the layer reading ``maps``
        (N × C × ...) for ``grad_output``, laid out per input channel, C × (q·taps)."""
        raise NotImplementedError

    def refusal(self) -> str | None:
        """Why the patch algebra cannot describe this layer (None when it can)."""
        return None


class DenseMap(LayerMap):
    """``nn.Linear``: one position, one tap."""

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(x.flatten(1), weight.flatten(1), bias)

    def same_shape(self, maps: Tensor, weight: Tensor) -> Tensor:
        return F.linear(maps, weight)

    def patches(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1, 1)

    def patch_maps(self, x: Tensor, patches: Tensor) -> Tensor:
        return patches.reshape(patches.shape[0], patches.shape[1], 1, 1)

    def reads(self, maps: Tensor) -> Tensor:
        return maps.reshape(maps.shape[0], maps.shape[1], -1, 1)

    def weight_gradient(self, x: Tensor, grad_output: Tensor) -> Tensor:
        return grad_output.T @ x.flatten(1)

    def bias_gradient(self, grad_output: Tensor) -> Tensor:
        return grad_output.sum(dim=0)

    def output_rows(self, maps: Tensor) -> Tensor:
        return maps.reshape(maps.shape[0], maps.shape[1], -1).transpose(1, 2).flatten(0, 1)

    def reads_gradient(self, maps: Tensor, grad_output: Tensor) -> Tensor:
        flat = maps.flatten(2)  # N × C × taps (the flattened positions of each channel)
        gradient = torch.einsum("iat,ic->act", flat, grad_output.flatten(1))
        return gradient.reshape(flat.shape[1], -1)


class ConvMap(LayerMap):
    """``nn.Conv2d`` (any kernel, stride, zero padding, dilation)."""

    @property
    def is_conv(self) -> bool:
        return True

    @property
    def kernel_taps(self) -> int:
        return math.prod(pair(self.layer.kernel_size))

    def geometry(self) -> dict[str, tuple[int, int]]:
        conv = self.layer
        return {
            "kernel_size": pair(conv.kernel_size),
            "dilation": pair(conv.dilation),
            "padding": pair(conv.padding),
            "stride": pair(conv.stride),
        }

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        conv = self.layer
        if weight.ndim == 3:  # rows × channels × taps, as a fan-out is often held
            weight = weight.reshape(*weight.shape[:2], *pair(conv.kernel_size))
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def same_shape(self, maps: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(maps, weight, None, 1, weight.shape[-1] // 2)

    def patches(self, x: Tensor) -> Tensor:
        return F.unfold(x, **self.geometry())

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """H' × W' of the output for an H × W input."""
        g = self.geometry()
        size = []
        for axis, length in enumerate((height, width)):
            span = g["dilation"][axis] * (g["kernel_size"][axis] - 1) + 1
            size.append((length + 2 * g["padding"][axis] - span) // g["stride"][axis] + 1)
        return size[0], size[1]

    def patch_maps(self, x: Tensor, patches: Tensor) -> Tensor:
        return patches.reshape(*patches.shape[:2], *self.output_size(*x.shape[2:]))

    def reads(self, maps: Tensor) -> Tensor:
        unfolded = F.unfold(maps, **self.geometry())
        return unfolded.reshape(maps.shape[0], maps.shape[1], -1, unfolded.shape[-1])

    def weight_gradient(self, x: Tensor, grad_output: Tensor) -> Tensor:
        shape = (grad_output.shape[1], x.shape[1], *pair(self.layer.kernel_size))
        g = self.geometry()
        return conv2d_weight(
            x, shape, grad_output, stride=g["stride"], padding=g["padding"], dilation=g["dilation"]
        )

    def bias_gradient(self, grad_output: Tensor) -> Tensor:
        return grad_output.sum(dim=(0, 2, 3))

    def output_rows(self, maps: Tensor) -> Tensor:
        return maps.flatten(2).transpose(1, 2).flatten(0, 1)

    def read_counts(self, maps: Tensor) -> Tensor:
        ones = maps.new_ones(1, 1, *maps.shape[2:])
        geometry = self.geometry()
        return F.fold(F.unfold(ones, **geometry), maps.shape[2:], **geometry).flatten()

    def reads_gradient(self, maps: Tensor, grad_output: Tensor) -> Tensor:
        gradient = self.weight_gradient(maps, grad_output)  # q × C × kh × kw
        return gradient.flatten(2).permute(1, 0, 2).reshape(maps.shape[1], -1)

    def refusal(self) -> str | None:
        conv = self.layer
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return "padding other than explicit zeros"
        return None


def layer_map(layer: nn.Module) -> LayerMap:
    """The ``LayerMap`` of a site's producer or consumer (an ``nn.Linear`` or ``nn.Conv2d``)."""
    if isinstance(layer, nn.Linear):
        return DenseMap(layer)
    if isinstance(layer, nn.Conv2d):
        return ConvMap(layer)
    raise TypeError(f"a site's layers are nn.Linear or nn.Conv2d, not {type(layer).__name__}")
