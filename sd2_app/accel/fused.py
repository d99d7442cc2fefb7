"""Fused GroupNorm+SiLU, GEGLU, conv bias + residual, residual add + LayerNorm, and the module swaps that put
them into a UNet or a VAE.

The Triton kernels (`triton_kernels.py`, `triton_group_norm.py`) run only for contiguous CUDA tensors with
triton installed; everything else takes the eager path, which is the unfused math itself (so results on CPU
are identical). Before any swap on CUDA the kernels are checked once against the eager math
(kernel_checks.py).
The swaps replace `ResnetBlock2D`, `BasicTransformerBlock`, `GEGLU` (and `Attention`, see
fused_attention.py; `Transformer2D`, see fused_transformer2d.py; `Upsample2D`, see upsample.py) instances
by modules that adopt the same child modules under the same attribute names, so state-dict keys, weights
and the manager's moves are untouched.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd2_app.accel.kernel_checks import geglu_matmul_agrees, kernels_agree
from sd2_app.accel.stacking import SharedInputProjections, pack, stacked_linear
from sd2_app.nn.attention import GEGLU, Attention, BasicTransformerBlock, Transformer2D
from sd2_app.nn.resnet import ResnetBlock2D, Upsample2D

logger = logging.getLogger(__name__)


@cache
def triton_available() -> bool:
    """True when triton can be imported (CUDA builds of torch ship it); checked once per process."""
    return importlib.util.find_spec("triton") is not None


def _use_kernel(x: Tensor) -> bool:
    return x.is_cuda and x.is_contiguous() and triton_available()


def _use_norm_kernel(x: Tensor, norm: nn.GroupNorm) -> bool:
    """NCHW-contiguous or channels_last 4-D CUDA tensors of the norm's dtype (the kernels' layouts)."""
    layout_ok = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
    return (x.is_cuda and layout_ok and triton_available() and norm.affine and x.dim() >= 3
            and x.dtype == norm.weight.dtype)


# channels_last groups of up to this many elements take one kernel launch instead of three (0: never, the
# default). It was meant for the small groups of the 16x16 and 8x8 levels, where the three kernels are bound by
# launch and latency; but on an H200 (run 6 of bench.micro, UNet call at 512 b2 / x4 128x128 b2) the three
# kernels everywhere were fastest: 5.79 / 6.45 ms, against 5.96 / 6.65 with 16k, 6.17 / 6.69 with 32k and
# 6.69 / 7.18 with 64k (CUDA graphs hide the launches; the one kernel reads each group twice with few programs).
# Off, its kernels are neither checked nor compiled on the first image.
GROUP_NORM_ONE_KERNEL_MAX = 0


def group_norm_silu(x: Tensor, norm: nn.GroupNorm, *, apply_silu: bool = True,
                    one_kernel_max: int = GROUP_NORM_ONE_KERNEL_MAX) -> Tensor:
    """silu(norm(x)) (or norm(x)): fused kernels on CUDA in either layout, the eager ops elsewhere."""
    if _use_norm_kernel(x, norm):
        from sd2_app.accel import triton_kernels

        return triton_kernels.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                              apply_silu=apply_silu, one_kernel_max=one_kernel_max)
    y = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.silu(y) if apply_silu else y


def geglu(projected: Tensor) -> Tensor:
    """value * gelu(gate) over the two halves of the last dim (Shazeer 2020), fused on CUDA."""
    if _use_kernel(projected):
        from sd2_app.accel import triton_kernels

        return triton_kernels.geglu(projected)
    value, gate = projected.chunk(2, dim=-1)
    return value * F.gelu(gate)


def _adopt(fused: nn.Module, block: nn.Module, names: tuple[str, ...]) -> None:
    """Take over `block`'s children and settings under the same names, in the same order (same state-dict
    keys, the same weight tensors: nothing is copied)."""
    for name in names:
        setattr(fused, name, getattr(block, name))


def channels_last_kernels(x: Tensor, norm: nn.GroupNorm) -> bool:
    """The NHWC fast paths (resnets, Transformer2D): channels_last CUDA activations the NHWC kernels take."""
    return (x.is_cuda and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last) and triton_available() and norm.affine
            and x.dtype == norm.weight.dtype)


def _conv_without_bias(conv: nn.Conv2d, x: Tensor) -> Tensor:
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


class FusedResnetBlock2D(nn.Module):
    """ResnetBlock2D's math with GroupNorm+SiLU fused; adopts the original's children (same keys).

    For channels_last activations the convolutions run without their bias (cuDNN's convolution does not add
    it; PyTorch adds it in a separate pass): conv1's bias and the time embedding go into norm2's kernels as a
    per-(image, channel) shift, conv2's (and the shortcut conv's) bias into one bias + residual kernel. The
    sums are done in fp32 with one rounding instead of three fp16 roundings: the same math, ~1 fp16 ulp apart.
    """

    def __init__(self, block: ResnetBlock2D, one_kernel_max: int = GROUP_NORM_ONE_KERNEL_MAX,
                 read_skips: bool = True) -> None:
        super().__init__()
        _adopt(self, block, ("output_scale_factor", "norm1", "conv1", "time_emb_proj", "norm2", "conv2",
                             "conv_shortcut"))
        self.one_kernel_max = one_kernel_max
        self.read_skips = read_skips  # False: concatenate the skip connection first (the unfused way)
        # (the UNet's shared time projections, this block's index), set by fuse_modules(stack_projections=True)
        self.time_projection: tuple[SharedInputProjections, int] | None = None

    def _time(self, emb_act: Tensor | None) -> Tensor | None:
        """time_emb_proj(emb_act), (B, Cout), possibly a column view of the shared projection."""
        if self.time_emb_proj is None:
            return None
        if self.time_projection is not None:
            shared, index = self.time_projection
            return shared(emb_act, index)
        return self.time_emb_proj(emb_act)

    def forward(self, x: Tensor, emb_act: Tensor | None = None, skip: Tensor | None = None) -> Tensor:
        # x: (B, Cin, H, W), or with the up path's skip (B, Cs, H, W) the two make Cin channels together;
        # emb_act: (B, time_dim) already through SiLU, or None in the VAE
        if skip is not None and not self._reads_skip(x, skip):
            x, skip = torch.cat([x, skip], dim=1), None
        if channels_last_kernels(x, self.norm1) and self._has_biases():
            return self._forward_channels_last(x, emb_act, skip)
        h = self.conv1(group_norm_silu(x, self.norm1, one_kernel_max=self.one_kernel_max))
        if self.time_emb_proj is not None:
            h = h + self._time(emb_act)[:, :, None, None]
        h = self.conv2(group_norm_silu(h, self.norm2, one_kernel_max=self.one_kernel_max))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out  # (B, Cout, H, W)

    def _reads_skip(self, x: Tensor, skip: Tensor) -> bool:
        """Whether the NHWC path can take x and the skip connection apart (a 1x1 shortcut splits in two)."""
        return (self.read_skips and self.conv_shortcut is not None and self._has_biases()
                and channels_last_kernels(x, self.norm1) and channels_last_kernels(skip, self.norm1))

    def _has_biases(self) -> bool:
        """The NHWC path folds the convolutions' biases into other kernels, so it needs them (SD2's have)."""
        convs = (self.conv1, self.conv2) + (() if self.conv_shortcut is None else (self.conv_shortcut,))
        return all(conv.bias is not None for conv in convs)

    def _forward_channels_last(self, x: Tensor, emb_act: Tensor | None, skip: Tensor | None = None) -> Tensor:
        from sd2_app.accel import triton_kernels

        norm1, norm2 = self.norm1, self.norm2
        h = triton_kernels.group_norm_silu(x, norm1.num_groups, norm1.weight, norm1.bias, norm1.eps,
                                           one_kernel_max=self.one_kernel_max, concat=skip)
        h = _conv_without_bias(self.conv1, h)
        if not h.is_contiguous(memory_format=torch.channels_last):  # cuDNN keeps the layout; never pay for it
            h = h.contiguous(memory_format=torch.channels_last)
        temb = self._time(emb_act)  # (B, Cout) or None
        h = triton_kernels.group_norm_silu(h, norm2.num_groups, norm2.weight, norm2.bias, norm2.eps,
                                           shift_bias=self.conv1.bias, shift_temb=temb,
                                           one_kernel_max=self.one_kernel_max)
        h = _conv_without_bias(self.conv2, h)
        shortcut_bias = None
        if self.conv_shortcut is not None:
            x = _conv_without_bias(self.conv_shortcut, x) if skip is None else self._split_shortcut(x, skip)
            shortcut_bias = self.conv_shortcut.bias
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return triton_kernels.bias_residual(h, self.conv2.bias, x, 1.0 / self.output_scale_factor,
                                            bias2=shortcut_bias)

    def _split_shortcut(self, x: Tensor, skip: Tensor) -> Tensor:
        """The 1x1 shortcut conv of cat([x, skip]) without its bias, as two matmuls over channels_last
        memory, (pixels, C) @ weight[:, C columns].T: the second accumulates onto the first (one more fp16
        rounding, ~1 ulp), and the concatenation is never built. The weight slices are views."""
        batch, split, height, width = x.shape
        weight = self.conv_shortcut.weight[:, :, 0, 0]  # (Cout, Cin)
        pixels = x.permute(0, 2, 3, 1).reshape(-1, split)  # views of channels_last memory
        skipped = skip.permute(0, 2, 3, 1).reshape(-1, skip.shape[1])
        out = torch.mm(pixels, weight[:, :split].t())
        out.addmm_(skipped, weight[:, split:].t())
        return out.view(batch, height, width, -1).permute(0, 3, 1, 2)  # (B, Cout, H, W), channels_last


def _use_layer_norm_kernel(x: Tensor, norm: nn.LayerNorm) -> bool:
    return (x.is_cuda and x.is_contiguous() and triton_available() and norm.weight is not None
            and x.dtype == norm.weight.dtype and len(norm.normalized_shape) == 1)


class FusedTransformerBlock(nn.Module):
    """BasicTransformerBlock's math with each residual add fused into the next LayerNorm (one kernel writes
    the new residual stream and its normalised copy); adopts the original's children (same keys).

    The kernel holds whole rows in registers (each element read and written once) and saves the separate add's
    pass and launch: 32 kernels fewer per UNet call. The last residual add goes into the feed-forward's
    output matmul (the norm writes the stream plus that Linear's bias; addmm accumulates onto it): 16 more.
    """

    def __init__(self, block: BasicTransformerBlock) -> None:
        super().__init__()
        _adopt(self, block, ("only_cross_attention", "norm1", "attn1", "norm2", "attn2", "norm3", "ff"))

    def forward(self, x: Tensor, context: Tensor, *, upcast_attention: bool = False) -> Tensor:
        # x: (B, N, dim); context: (B, 77, context_dim)
        up = upcast_attention
        if not _use_layer_norm_kernel(x, self.norm1):
            x = self.attn1(self.norm1(x), context if self.only_cross_attention else None, upcast_attention=up) + x
            x = self.attn2(self.norm2(x), context, upcast_attention=up) + x
            return self.ff(self.norm3(x)) + x
        return self._forward_fused(x, context, up)

    def _forward_fused(self, x: Tensor, context: Tensor, upcast_attention: bool = False) -> Tensor:
        from sd2_app.accel import triton_kernels

        self_context = context if self.only_cross_attention else None

        def norm(v: Tensor, layer: nn.LayerNorm, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
            return triton_kernels.layer_norm(v, layer.weight, layer.bias, layer.eps, residual=residual)

        _, h = norm(x, self.norm1)
        x, h = norm(self.attn1(h, self_context, upcast_attention=upcast_attention), self.norm2, residual=x)
        out = self.ff.net[2]  # the feed-forward's last Linear
        if out.bias is None:
            x, h = norm(self.attn2(h, context, upcast_attention=upcast_attention), self.norm3, residual=x)
            return self.ff(h) + x
        # The stream comes out of the norm with the Linear's bias in it, and the matmul accumulates onto it:
        # ff(h) + x in one kernel instead of a matmul (with bias) and an add.
        attended = self.attn2(h, context, upcast_attention=upcast_attention)
        x, h = triton_kernels.layer_norm(attended, self.norm3.weight, self.norm3.bias, self.norm3.eps, residual=x,
                                         sum_bias=out.bias)
        inner = self.ff.net[0](h)  # (B, N, ff_inner)
        return torch.addmm(x.view(-1, x.shape[-1]), inner.view(-1, inner.shape[-1]), out.weight.t()).view(x.shape)


class FusedGroupNorm(nn.GroupNorm):
    """nn.GroupNorm through the Triton kernel (no SiLU): same parameters, same keys.

    Worth it mainly for channels_last activations, which PyTorch's CUDA GroupNorm copies to NCHW and back.
    """

    @classmethod
    def adopt(cls, norm: nn.GroupNorm, one_kernel_max: int = GROUP_NORM_ONE_KERNEL_MAX) -> FusedGroupNorm:
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.num_groups, fused.num_channels, fused.eps, fused.affine = (norm.num_groups, norm.num_channels,
                                                                         norm.eps, norm.affine)
        fused.weight, fused.bias = norm.weight, norm.bias
        fused.one_kernel_max = one_kernel_max
        return fused

    def forward(self, x: Tensor) -> Tensor:
        return group_norm_silu(x, self, apply_silu=False, one_kernel_max=self.one_kernel_max)


class FusedGEGLU(nn.Module):
    """GEGLU with the gate product fused; the projection stays a cuBLAS matmul unless `matmul` (the
    experiment in triton_geglu.py: projection and gate in one Triton matmul). Adopts `proj`."""

    def __init__(self, block: GEGLU, matmul: bool = False) -> None:
        super().__init__()
        self.proj = block.proj
        self.matmul = matmul

    def forward(self, x: Tensor) -> Tensor:
        if (self.matmul and _use_kernel(x) and x.dtype in (torch.float16, torch.bfloat16)
                and self.proj.bias is not None and x.dtype == self.proj.weight.dtype):
            from sd2_app.accel.triton_geglu import geglu_matmul

            return geglu_matmul(x, self.proj.weight, self.proj.bias)
        return geglu(self.proj(x))  # (..., inner)


def fuse_modules(model: nn.Module, *, channels_last: bool = False,
                 one_kernel_max: int = GROUP_NORM_ONE_KERNEL_MAX, stack_projections: bool = True,
                 geglu_matmul: bool = False, subpixel_upsample: bool = True, read_skips: bool = True,
                 residual_in_proj_out: bool = True) -> int:
    """Swap every ResnetBlock2D / BasicTransformerBlock / GEGLU / standalone GroupNorm (and with
    `stack_projections` every Attention) inside `model` for its fused twin, in place; returns the count.
    `one_kernel_max`: see GROUP_NORM_ONE_KERNEL_MAX. `stack_projections` also makes the resnets' time
    embedding projections one shared matmul, and the cross-attentions' keys and values of the text context
    another (see stacking.SharedInputProjections); `geglu_matmul` the
    GEGLU projections Triton matmuls with the gate inside (checked once on CUDA; see triton_geglu.py);
    `subpixel_upsample` every Upsample2D four 2x2 convs on its small input (see upsample.py); `read_skips`
    lets the up path's resnets read a skip connection without concatenating it (FusedResnetBlock2D);
    `residual_in_proj_out` puts each Transformer2D's residual add into its proj_out matmul
    (fused_transformer2d.py).

    On CUDA the kernels of the activation layout (`channels_last`) are first checked once against the eager
    math; if they disagree nothing is swapped.
    """
    first = next(model.parameters(), None)
    if first is not None and first.is_cuda and triton_available():
        if not kernels_agree(first.device.index or 0, first.dtype, channels_last, one_kernel_max > 0):
            return 0
        if geglu_matmul:  # (fp16/bf16 only: the kernel's inputs for tensor cores)
            geglu_matmul = (first.dtype in (torch.float16, torch.bfloat16)
                            and geglu_matmul_agrees(first.device.index or 0, first.dtype))
    replaced = 0  # by replace_children: the attentions first, the Transformer2Ds last
    if stack_projections:  # first: the transformer blocks' twins below adopt these
        from sd2_app.accel.fused_attention import FusedAttention

        replaced = replace_children(model, Attention, lambda block: FusedAttention(block, pack_now=False))
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is ResnetBlock2D:
                swaps.append((parent, name, FusedResnetBlock2D(child, one_kernel_max, read_skips)))
            elif type(child) is GEGLU:
                swaps.append((parent, name, FusedGEGLU(child, geglu_matmul)))
            elif type(child) is BasicTransformerBlock:
                swaps.append((parent, name, FusedTransformerBlock(child)))
            elif type(child) is Upsample2D and subpixel_upsample:
                from sd2_app.accel.upsample import SubpixelUpsample2D

                swaps.append((parent, name, SubpixelUpsample2D(child)))
            elif type(child) is nn.GroupNorm and not isinstance(parent, (ResnetBlock2D, FusedResnetBlock2D)):
                swaps.append((parent, name, FusedGroupNorm.adopt(child, one_kernel_max)))
    for parent, name, fused in swaps:
        setattr(parent, name, fused)
    if residual_in_proj_out:  # after the swaps above: it adopts the fused norm and transformer blocks
        from sd2_app.accel.fused_transformer2d import FusedTransformer2D

        replaced += replace_children(model, Transformer2D, FusedTransformer2D)
    if stack_projections:
        timed = [m for m in model.modules() if isinstance(m, FusedResnetBlock2D) and m.time_emb_proj is not None]
        if len(timed) > 1 and len({m.time_emb_proj.in_features for m in timed}) == 1:
            shared = SharedInputProjections([m.time_emb_proj for m in timed])
            for index, block in enumerate(timed):
                block.time_projection = (shared, index)
        _share_context_projections(model)
        restack(model)  # each attention's own q, k, v (the shared blocks above are packed already)
    logger.info("fused ops: swapped %d modules in %s", replaced + len(swaps), type(model).__name__)
    return replaced + len(swaps)


def _share_context_projections(model: nn.Module) -> None:
    """Every attention that always sees the text context (each block's attn2; attn1 too where a block has
    only cross-attention, as in the x4 UNet) gets its k and v from one shared matmul per forward. A forward
    pre-hook on `model` makes each forward compute it afresh (see SharedInputProjections.forget)."""
    from sd2_app.accel.fused_attention import FusedAttention

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
    model.register_forward_pre_hook(lambda module, args: shared.forget())


def replace_children(model: nn.Module, kind: type[nn.Module], make: Callable[[Any], nn.Module]) -> int:
    """Replace every child module of exactly type `kind` inside `model` by `make(child)`, in place; returns
    how many (a subclass someone already swapped in is left alone)."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is kind]
    for parent, name, child in swaps:
        setattr(parent, name, make(child))
    return len(swaps)


def restack(model: nn.Module) -> int:
    """Stack the projection weights (attention, time embedding, text context) that are not stacked, e.g.
    after a move of `model` split them (the manager moves tensors one by one); returns how many groups
    were packed. Shared groups go first: an attention's k, v are then already rows of the shared block."""
    from sd2_app.accel.fused_attention import FusedAttention

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
