"""Attention whose projections of one input run as one matmul: q, k, v of self-attention, k and v of
cross-attention.

Why: an SD2 UNet call makes 80 such projection matmuls (q, k, v of 16 self-attentions, k, v of 16
cross-attentions); the ones of the 16x16 level and of the 77 text tokens are too small to fill a
large GPU, so three (or two) launches cost about what one launch of the stacked weight does: 32 instead of
80. The cross-attentions' k, v all project the same text context, so fuse_modules goes further and gives
them one shared matmul per forward (`context_projection`, see stacking.SharedInputProjections): 17 in all.
Stacking the weights must not copy them (a second copy of 63M parameters) nor change the state-dict keys:
`pack` makes each Linear's weight a view into one new tensor of consecutive rows, so the keys, the shapes
and the manager's per-tensor moves all stay as they were (see stacking.py). A move splits the views
into separate tensors again; the module then runs one matmul per projection (the same numbers) until
`fused.swap.restack` restores the block (the model manager's moves reach accel through
`Accelerator.on_moved`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sd2_app.accel.fused.stacking import SharedInputProjections, pack, stacked_linear
from sd2_app.nn.attention import Attention


class FusedAttention(Attention):
    """Attention with stacked projections; adopts the original's children and settings (same keys).

    A subclass so that what looks for Attention modules (the graph key's precision switches, the fp32
    attention fallback) finds these too; the product is the plain module's `attend`, with its precision rules
    (and the per-call `fp32_attention` switch).
    """

    def __init__(self, block: Attention, pack_now: bool = True) -> None:  # noqa: D107 - adopts, does not build
        # pack_now=False: the caller packs later (fuse_modules first groups the cross-attentions' k, v of the
        # whole network into one block, so packing each pair here would copy them twice)
        nn.Module.__init__(self)
        self.heads, self.head_dim, self.upcast = block.heads, block.head_dim, block.upcast
        self.to_q, self.to_k, self.to_v, self.to_out = block.to_q, block.to_k, block.to_v, block.to_out
        # (the network's shared text-context projections, the index of this attention's k; v follows), set
        # by fuse_modules for attentions that always see the text context
        self.context_projection: tuple[SharedInputProjections, int] | None = None
        if pack_now:
            pack(self.packed_group())

    def packed_group(self) -> list[nn.Linear]:
        """What `pack` stacks: q, k, v when q's input can be k's (self-attention), else k, v. The k, v rows
        of a q, k, v block are a block too, so cross-attention finds its k, v stacked either way. A known
        cross-attention stacks k, v only (they belong to the shared context block)."""
        if self.to_q.in_features == self.to_k.in_features and self.context_projection is None:
            return [self.to_q, self.to_k, self.to_v]
        return [self.to_k, self.to_v]

    def forward(self, x: Tensor, context: Tensor | None = None, *, fp32_attention: bool = False) -> Tensor:
        # x: (B, N, query_dim); context: (B, M, context_dim) or None for self-attention
        b, n, _ = x.shape
        heads, hd = self.heads, self.head_dim
        if context is None:
            qkv = stacked_linear([self.to_q, self.to_k, self.to_v])
            if qkv is not None:  # (B, N, 3 * inner) -> three (B, heads, N, hd) views
                q, k, v = F.linear(x, *qkv).view(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
                return self._attend(q, k, v, b, n, fp32_attention)
            context = x
        q = self.to_q(x).view(b, n, heads, hd).transpose(1, 2)
        if self.context_projection is not None and context is not x:
            shared, index = self.context_projection  # column views of one matmul over every block's k, v
            k = shared(context, index).view(b, -1, heads, hd).transpose(1, 2)
            v = shared(context, index + 1).view(b, -1, heads, hd).transpose(1, 2)
            return self._attend(q, k, v, b, n, fp32_attention)
        kv = stacked_linear([self.to_k, self.to_v])
        if kv is not None:
            k, v = F.linear(context, *kv).view(b, context.shape[1], 2, heads, hd).permute(2, 0, 3, 1, 4)
        else:
            k = self.to_k(context).view(b, -1, heads, hd).transpose(1, 2)
            v = self.to_v(context).view(b, -1, heads, hd).transpose(1, 2)
        return self._attend(q, k, v, b, n, fp32_attention)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, b: int, n: int, fp32_attention: bool = False) -> Tensor:
        out = self.attend(q, k, v, fp32_attention=fp32_attention)  # (B, heads, N, hd)
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))
