"""Weight initialization shared by the avatar's networks: xavier-uniform weights, zero biases."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

Layer = TypeVar("Layer", nn.Linear, nn.Conv2d)


def leaky_gain(leaky_slope: float) -> float:
    """The xavier gain for a layer followed by LeakyReLU(leaky_slope)."""
    return nn.init.calculate_gain("leaky_relu", leaky_slope)


def xavier_init(layer: Layer, gain: float) -> Layer:
    """Xavier-uniform weights scaled by `gain` and a zero bias (if any), in place; returns `layer`."""
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer
