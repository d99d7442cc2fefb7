"""The module swaps that put the fused twins into a UNet or a VAE, and the restacking of the projection
weights after a move.

Each twin adopts the original's child modules under the same attribute names (accel/twins.py), so
state-dict keys, weights and the manager's moves are untouched. The Triton kernels behind the twins run only
for CUDA tensors with triton installed; everywhere else a twin computes the plain module's math (so CPU
results are identical). Before any swap on CUDA the kernels are checked once against the eager math
(kernels/checks.py).
"""

from __future__ import annotations

import logging

from torch import nn

from sd2_app.accel.fused.attention import FusedAttention
from sd2_app.accel.fused.ops import FusedGEGLU, FusedGroupNorm, triton_available
from sd2_app.accel.fused.resnet import FusedResnetBlock2D, SkipReadingCrossAttnUpBlock2D, SkipReadingUpBlock2D
from sd2_app.accel.fused.stacking import SharedInputProjections, pack, stacked_linear
from sd2_app.accel.fused.transformer import FusedTransformer2D, FusedTransformerBlock
from sd2_app.accel.fused.upsample import SubpixelUpsample2D
from sd2_app.accel.twins import replace_children
from sd2_app.nn.attention import GEGLU, Attention, BasicTransformerBlock, Transformer2D
from sd2_app.nn.resnet import ResnetBlock2D, Upsample2D
from sd2_app.nn.unet_blocks import CrossAttnUpBlock2D, UpBlock2D

logger = logging.getLogger(__name__)

# plain module type -> its twin, in the order they are swapped: the attentions first (the transformer
# blocks' twins adopt them), the Transformer2Ds after the blocks and norms inside them
_TWINS: tuple[tuple[type[nn.Module], type[nn.Module]], ...] = (
    (Attention, FusedAttention),
    (ResnetBlock2D, FusedResnetBlock2D),
    (GEGLU, FusedGEGLU),
    (BasicTransformerBlock, FusedTransformerBlock),
    (Upsample2D, SubpixelUpsample2D),
    (UpBlock2D, SkipReadingUpBlock2D),
    (CrossAttnUpBlock2D, SkipReadingCrossAttnUpBlock2D),
)


def fuse_modules(model: nn.Module, *, channels_last: bool = False) -> int:
    """Swap every module of `model` that has a fused twin for it, in place; returns the count.

    The twins: attention with stacked q, k, v projections (fused/attention.py); the resnet with GroupNorm+SiLU
    fused and, for channels_last activations, its biases folded into the norm and residual kernels; the up
    blocks whose resnets read their skip connection without a concatenation; GEGLU's gate; the transformer
    block's residual adds inside its LayerNorms; the sub-pixel upsampler (fused/upsample.py); each standalone
    GroupNorm; each Transformer2D's residual inside its proj_out matmul. Then the resnets' time-embedding
    projections become one shared matmul, and the cross-attentions' keys and values of the text context
    another (fused/stacking.py).

    On CUDA the kernels of the activation layout (`channels_last`) are first checked once against the eager
    math; if they disagree nothing is swapped.
    """
    first = next(model.parameters(), None)
    if first is not None and first.is_cuda and triton_available():
        from sd2_app.accel.kernels.checks import kernels_agree

        if not kernels_agree(first.device.index or 0, first.dtype, channels_last):
            return 0
    count = 0
    for kind, twin in _TWINS:
        make = (lambda block: FusedAttention(block, pack_now=False)) if twin is FusedAttention else twin
        count += replace_children(model, kind, make)
    norms = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.GroupNorm and not isinstance(parent, FusedResnetBlock2D)]
    for parent, name, child in norms:
        setattr(parent, name, FusedGroupNorm.adopt(child))
    count += len(norms) + _replace_transformer2d(model)
    _share_time_projections(model)
    _share_context_projections(model)
    restack(model)  # each attention's own q, k, v (the shared blocks above are packed already)
    logger.info("fused ops: swapped %d modules in %s", count, type(model).__name__)
    return count


def _replace_transformer2d(model: nn.Module) -> int:
    """Transformer2Ds, plain or layout-keeping (accel/layout.py), by the fused twin."""
    from sd2_app.accel.layout import LayoutKeepingTransformer2D

    return (replace_children(model, Transformer2D, FusedTransformer2D)
            + replace_children(model, LayoutKeepingTransformer2D, FusedTransformer2D))


def _share_time_projections(model: nn.Module) -> None:
    """The resnets' time-embedding projections, all of the same input, as one matmul per forward."""
    timed = [m for m in model.modules() if isinstance(m, FusedResnetBlock2D) and m.time_emb_proj is not None]
    if len(timed) > 1 and len({m.time_emb_proj.in_features for m in timed}) == 1:
        shared = SharedInputProjections([m.time_emb_proj for m in timed])
        for index, block in enumerate(timed):
            block.time_projection = (shared, index)


def _share_context_projections(model: nn.Module) -> None:
    """Every attention that always sees the text context (each block's attn2; attn1 too where a block has
    only cross-attention, as in the x4 UNet) gets its k and v from one shared matmul per forward. A forward
    pre-hook on `model` makes each forward compute it afresh (see SharedInputProjections.forget)."""
    crossing = []
    for block in model.modules():
        if isinstance(block, FusedTransformerBlock):
            crossing += [block.attn1] if block.only_cross_attention else []
            crossing.append(block.attn2)
    crossing = [a for a in crossing if isinstance(a, FusedAttention)]
    if len(crossing) < 2 or len({a.to_k.in_features for a in crossing}) != 1:
        return
    shared = SharedInputProjections([linear for a in crossing for linear in (a.to_k, a.to_v)])
    for index, attention in enumerate(crossing):
        attention.context_projection = (shared, 2 * index)
    model.register_forward_pre_hook(shared.forget)


def restack(model: nn.Module) -> int:
    """Stack the projection weights (attention, time embedding, text context) that are not stacked, e.g.
    after a move of `model` split them (the manager moves tensors one by one); returns how many groups
    were packed. Shared groups go first: an attention's k, v are then already rows of the shared block."""
    shared: dict[int, list[nn.Linear]] = {}
    own: dict[int, list[nn.Linear]] = {}
    for module in model.modules():
        projection = None
        if isinstance(module, FusedAttention):
            own[id(module)] = module.packed_group()
            projection = module.context_projection
        elif isinstance(module, FusedResnetBlock2D):
            projection = module.time_projection
        if projection is not None:
            shared[id(projection[0])] = projection[0].linears
    split = [group for group in [*shared.values(), *own.values()] if stacked_linear(group) is None]
    for group in split:
        pack(group)
    return len(split)
