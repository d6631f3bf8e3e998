"""Weight initialisation schemes, chosen with `init=...`.

Each function takes the model and re-initialises it in place. Only Linear layers are touched, as
in the notebook; conv layers keep PyTorch's default. Randomness comes from torch's global
generator, which the training run seeds first.
"""

from __future__ import annotations

import math

from torch import nn


def _linears(model: nn.Module):
    return (m for m in model.modules() if isinstance(m, nn.Linear))


def normal(model: nn.Module) -> None:
    """The notebook's rule: weights ~ N(0, 1/sqrt(fan_in)) (a standard deviation), bias 0."""
    for layer in _linears(model):
        nn.init.normal_(layer.weight, 0.0, 1.0 / math.sqrt(layer.in_features))
        nn.init.zeros_(layer.bias)


def xavier(model: nn.Module) -> None:
    for layer in _linears(model):
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)


def kaiming(model: nn.Module) -> None:
    for layer in _linears(model):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)


def default(model: nn.Module) -> None:
    """PyTorch's own initialisation, as the layers were built."""
