"""Seamless tiling: a tiled job's own view of the UNet and the VAE, whose convolutions pad circularly.

A convolution that pads with zeros sees an edge; one that pads with the opposite edge's pixels (circular
padding, as A1111's "Tiling" option sets on every Conv2d) sees the image as a torus, so the result's left and
right (top and bottom) edges continue each other.

A tiled job never changes a module another job can see: `tiled_components` gives it a view, a copy of each
module tree (`copy.deepcopy`) whose every tensor, parameters and buffers alike, is the live tree's own
tensor object (the memo maps each to itself), so the view costs no weight memory and follows the model
manager's moves (which swap `tensor.data` in place). Only the copied convolutions pad circularly; the live
modules keep padding with zeros while the view exists. State the modules keep besides their tensors (the
fused twins' shared-projection caches, accel/fused/stacking.py) is the view's own. No job changes a view
either, so tiled jobs share one: the model manager keeps it per loaded module until it moves or frees that
module (sd2_app/manager/derived.py).

The view is of the network itself: a wrapper the UNet came in (accel's CudaGraphUNet) is left out, so a
tiled job runs un-graphed, and a module compiled in place (`Module.compile`, `--speed compile`) runs its
view eagerly; fused twins are copied with the rest and pad circularly as their convolution says.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TypeVar

import torch
from torch import nn

from sd2_app.checkpoints.components import Components
from sd2_app.nn.unet import Denoiser

CIRCULAR = "circular"

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _held_tensors(root: nn.Module) -> dict[int, torch.Tensor]:
    """Every tensor the modules of `root` hold (parameters, buffers, plain tensor attributes and lists of
    them, e.g. the manager's pinned host copy), by id: the deepcopy memo that shares them with the view."""
    held: dict[int, torch.Tensor] = {}
    for module in root.modules():
        for value in vars(module).values():  # _parameters and _buffers are dicts; the manager's copy a list
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
            held.update((id(item), item) for item in items if isinstance(item, torch.Tensor))
    return held


def tiled_view(module: ModuleT) -> ModuleT:
    """A copy of `module`'s tree that shares every tensor with it and whose Conv2d layers pad circularly."""
    view = copy.deepcopy(module, memo=dict(_held_tensors(module)))
    for child in view.modules():
        if getattr(child, "_compiled_call_impl", None) is not None:  # Module.compile's: bound to the live module
            child._compiled_call_impl = None  # so the view runs eagerly
        if isinstance(child, nn.Conv2d):
            child.padding_mode = CIRCULAR
    return view


def network(denoiser: Denoiser) -> nn.Module:
    """The UNet behind `denoiser`: `modules()` starts with the network itself (nn.Module.modules' order;
    a wrapper's are its network's, nn/unet.py Denoiser)."""
    return next(iter(denoiser.modules()))


def tiled_components(components: Components, tiling: bool = True) -> Components:
    """A copy of `components` whose UNet and VAE are tiled views (`components` itself when not `tiling`): the
    model manager's, made once per loaded module (`Components.derived`), else new ones."""
    if not tiling:
        return components
    derived = components.derived

    def view(module: ModuleT) -> ModuleT:
        return tiled_view(module) if derived is None else derived.get(module, tiled_view)

    return dataclasses.replace(components, unet=view(network(components.unet)), vae=view(components.vae))
