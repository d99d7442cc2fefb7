"""Several Linear layers' weights as consecutive rows of one tensor, without copies or new state-dict keys.

Why: layers that read the same input (an attention's q, k and v; every resnet's time-embedding projection)
can then run as one matmul over the stacked weight. `pack` makes each weight (and bias) a view into one new
tensor, so the keys, the shapes and the manager's per-tensor moves stay as they were. A move splits the
views into separate tensors again (the manager copies tensor by tensor); `stacked` then finds no common
block and the caller falls back to one matmul per layer until it packs again.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def stacked(tensors: Sequence[Tensor]) -> Tensor | None:
    """The one tensor whose consecutive row blocks are `tensors` (same storage, back to back), or None.

    Built from the storage on every call rather than kept: a kept reference would hold device memory after
    the manager moved the weights away.
    """
    first = tensors[0]
    storage = first.untyped_storage()
    offset = first.storage_offset()
    for tensor in tensors:
        if (tensor.untyped_storage().data_ptr() != storage.data_ptr() or tensor.storage_offset() != offset
                or not tensor.is_contiguous() or tensor.shape[1:] != first.shape[1:]):
            return None
        offset += tensor.numel()
    rows = sum(t.shape[0] for t in tensors)
    return first.new_empty(0).set_(storage, first.storage_offset(), (rows, *first.shape[1:]))


def pack(linears: Sequence[nn.Linear]) -> None:
    """Point the weights (and biases, if all have one) of `linears` at consecutive rows of one new tensor."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            params = [getattr(linear, name) for linear in linears]
            if any(p is None for p in params) or stacked([p.data for p in params]) is not None:
                continue
            block = torch.cat([p.data for p in params])
            start = 0
            for p in params:
                p.data = block[start:start + p.shape[0]]
                start += p.shape[0]


def stacked_linear(linears: Sequence[nn.Linear]) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) of `linears` as one Linear when they are packed (bias None when none has one), else None."""
    weight = stacked([linear.weight for linear in linears])
    if weight is None:
        return None
    biases = [linear.bias for linear in linears]
    if all(b is None for b in biases):
        return weight, None
    bias = None if any(b is None for b in biases) else stacked(biases)
    return None if bias is None else (weight, bias)


class SharedInputProjections:
    """Linear layers that are applied to the same input tensor, as one matmul per input.

    The UNet's resnets (22 in SD2) each project the same time embedding: one (B, 1280) x (1280, sum of
    widths) matmul instead of 22 small ones; its cross-attentions (16 in SD2, 32 in the x4 UNet) each project
    the same text context to keys and values: one (B * 77, 1024) matmul instead of 16. The first layer asked
    for its output computes all of them for that input tensor (recognised by identity; a new forward passes
    a new tensor, or `forget` is called); the others take their columns. Under CUDA-graph capture this
    records one matmul and views of its output.
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        self.linears = list(linears)
        self._columns: list[slice] = []
        start = 0
        for linear in self.linears:
            self._columns.append(slice(start, start + linear.out_features))
            start += linear.out_features
        self._input: Tensor | None = None  # held, so its identity cannot pass to a new tensor
        self._output: Tensor | None = None
        pack(self.linears)

    def __deepcopy__(self, memo: dict[int, object]) -> SharedInputProjections:
        """A copy over the copied layers (a tiled view's, pipelines/seamless.py) with a cache of its own,
        empty: the view's forwards never read or clear the live modules' cached output."""
        twin = copy.copy(self)
        twin.linears = copy.deepcopy(self.linears, memo)
        twin.forget()
        return twin

    def forget(self, *_hook_args: object) -> None:
        """Drop the cached input and output, so the next call computes again even for the same tensor.

        For inputs that come from outside a forward (the text context): the same tensor object may hold new
        values by then (a CUDA graph's static input is refilled in place), and a capture must record the
        matmul rather than reuse an output from before it. Called by a forward pre-hook of the network (a
        bound method, so a copy of the network, which copies its hooks, calls its own copy's).
        """
        self._input = None
        self._output = None

    def __call__(self, x: Tensor, index: int) -> Tensor:
        """linears[index](x): a (..., width) column view of the shared matmul's output (the layer's own
        matmul while a move has split the stacked weights)."""
        if x is not self._input:
            weights = stacked_linear(self.linears)
            if weights is None:
                return self.linears[index](x)
            self._output = torch.nn.functional.linear(x, *weights)
            self._input = x
        assert self._output is not None
        return self._output[..., self._columns[index]]
