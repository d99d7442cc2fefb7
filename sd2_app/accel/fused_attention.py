"""Attention whose projections of one input run as one matmul: q, k, v of self-attention, k and v of
cross-attention.

Why: at 512 px a UNet call makes 48 such projection matmuls; the ones of the 16x16 level and of the 77 text
tokens are too small to fill an H100/H200, so three (or two) launches cost about what one launch of the
stacked weight does. Stacking the weights must not copy them (a second copy of 37M parameters) nor change
the state-dict keys: `pack` makes each Linear's weight a view into one new tensor of consecutive rows, so
the keys, the shapes and the manager's per-tensor moves all stay as they were. A move splits the views into
separate tensors again (the manager copies tensor by tensor); `stacked` then finds no common block, the
module falls back to one matmul per projection (the same numbers), and `repack` restores the block before
the next job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd2_app.nn.attention import Attention


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


def _stacked_linear(linears: Sequence[nn.Linear]) -> tuple[Tensor, Tensor | None] | None:
    weight = stacked([linear.weight for linear in linears])
    if weight is None:
        return None
    biases = [linear.bias for linear in linears]
    if all(b is None for b in biases):
        return weight, None
    bias = None if any(b is None for b in biases) else stacked(biases)
    return None if bias is None else (weight, bias)


class FusedAttention(Attention):
    """Attention with stacked projections; adopts the original's children and settings (same keys).

    A subclass so that what looks for Attention modules (the graph key's precision switches, the fp32
    attention fallback) finds these too; `upcast` is read at every call, as there.
    """

    def __init__(self, block: Attention) -> None:  # noqa: D107 - adopts, does not build (no Attention.__init__)
        nn.Module.__init__(self)
        self.heads, self.head_dim, self.upcast = block.heads, block.head_dim, block.upcast
        self.to_q, self.to_k, self.to_v, self.to_out = block.to_q, block.to_k, block.to_v, block.to_out
        self.repack()

    def packed_group(self) -> list[nn.Linear]:
        """What `pack` stacks: q, k, v when q's input can be k's (self-attention), else k, v. The k, v rows
        of a q, k, v block are a block too, so cross-attention finds its k, v stacked either way."""
        if self.to_q.in_features == self.to_k.in_features:
            return [self.to_q, self.to_k, self.to_v]
        return [self.to_k, self.to_v]

    def repack(self) -> None:
        """Stack the projections (again, if a move split them)."""
        pack(self.packed_group())

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        # x: (B, N, query_dim); context: (B, M, context_dim) or None for self-attention
        b, n, _ = x.shape
        heads, hd = self.heads, self.head_dim
        if context is None:
            qkv = _stacked_linear([self.to_q, self.to_k, self.to_v])
            if qkv is not None:  # (B, N, 3 * inner) -> three (B, heads, N, hd) views
                q, k, v = F.linear(x, *qkv).view(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
                return self._attend(q, k, v, b, n)
            context = x
        q = self.to_q(x).view(b, n, heads, hd).transpose(1, 2)
        kv = _stacked_linear([self.to_k, self.to_v])
        if kv is not None:
            k, v = F.linear(context, *kv).view(b, context.shape[1], 2, heads, hd).permute(2, 0, 3, 1, 4)
        else:
            k = self.to_k(context).view(b, -1, heads, hd).transpose(1, 2)
            v = self.to_v(context).view(b, -1, heads, hd).transpose(1, 2)
        return self._attend(q, k, v, b, n)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, b: int, n: int) -> Tensor:
        if self.upcast:
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, hd)
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def repack(model: nn.Module) -> int:
    """Restack every FusedAttention of `model` whose projections a move split; returns how many were."""
    count = 0
    for module in model.modules():
        if isinstance(module, FusedAttention) and _stacked_linear(module.packed_group()) is None:
            module.repack()
            count += 1
    return count
