"""Seamless tiling: every convolution of the UNet and the VAE pads circularly for one job.

A convolution that pads with zeros sees an edge; one that pads with the opposite edge's pixels (circular
padding, as A1111's "Tiling" option sets on every Conv2d) sees the image as a torus, so the result's left and
right (top and bottom) edges continue each other.

The switch is scoped to one job: `circular_padding` runs inside the model manager's job lock (one job at a
time), sets `padding_mode` and puts every convolution's previous mode back in `finally`, whatever happens,
so no other job ever sees it. The CUDA-graph wrapper keys its graphs on the UNet's padding mode
(accel/graphs/unet.py, `padding`), so a graph recorded with zero padding never replays for a tiled job, or
the reverse.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

CIRCULAR = "circular"


def _convolutions(modules: tuple[Any, ...]) -> list[nn.Conv2d]:
    found: dict[int, nn.Conv2d] = {}
    for module in modules:
        for child in module.modules():  # a CUDA-graph wrapper forwards .modules() to its UNet
            if isinstance(child, nn.Conv2d):
                found[id(child)] = child  # a VAE shared by two checkpoints is listed once
    return list(found.values())


@contextmanager
def circular_padding(*modules: Any, enabled: bool = True) -> Iterator[None]:
    """Within the block, every Conv2d in `modules` pads circularly; afterwards each has its old mode back."""
    if not enabled:
        yield
        return
    convolutions = _convolutions(modules)
    previous = [conv.padding_mode for conv in convolutions]
    try:
        for conv in convolutions:
            conv.padding_mode = CIRCULAR
        yield
    finally:
        for conv, mode in zip(convolutions, previous):
            conv.padding_mode = mode
