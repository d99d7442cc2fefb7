"""Module twins: an accelerated module takes over a plain one's children under the same attribute names
(same state-dict keys, the same weight tensors, nothing copied) and replaces it in its parent, in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

PlainT = TypeVar("PlainT", bound=nn.Module)


def adopt(twin: nn.Module, block: nn.Module, names: tuple[str, ...]) -> None:
    """Set `block`'s children and settings `names` on `twin`, in that order (the state-dict key order)."""
    for name in names:
        setattr(twin, name, getattr(block, name))


def replace_children(model: nn.Module, kind: type[PlainT], make: Callable[[PlainT], nn.Module]) -> int:
    """Replace every child module of exactly type `kind` inside `model` by `make(child)`, in place; returns
    how many (a subclass someone already swapped in is left alone)."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is kind]
    for parent, name, child in swaps:
        setattr(parent, name, make(child))
    return len(swaps)
