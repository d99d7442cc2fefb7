"""The accel boundary: `Accelerator.prepare(components)` once per job, `Accelerator.on_moved(module)` after
the model manager moves a part. Nothing else outside accel/ knows which switches are on.

Switches that change modules in place (fused twins, channels_last, compile) are applied once per loaded
module; the CUDA-graph wrapper of each UNet and text encoder is kept here so its graphs survive between
jobs. The cache is keyed weakly by the module: when the manager frees one, its wrapper and graphs go too.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch
from torch import nn

from sd2_app.accel.capability import options_for_device
from sd2_app.accel.compile import compile_unet
from sd2_app.accel.fused import fuse_modules, restack, use_half_products
from sd2_app.accel.graphs import CudaGraphTextEncoder, CudaGraphUNet, GraphedModule
from sd2_app.accel.layout import to_channels_last
from sd2_app.accel.options import AccelOptions
from sd2_app.checkpoints.components import Components


def accelerate_unet(unet: nn.Module, options: AccelOptions, *, weak: bool = False) -> nn.Module | CudaGraphUNet:
    """Apply the UNet switches in place and return what the loop should call (the UNet or its graph wrapper;
    `weak`: one that does not keep the UNet alive).

    On CPU only the exact ones apply (fused twins and layouts are skipped, graphs fall back to eager), so
    the returned object computes the same numbers as `unet` there.
    """
    if isinstance(unet, CudaGraphUNet):
        return unet  # already accelerated (the switches change modules in place: apply them once)
    device = next(unet.parameters()).device
    options = options_for_device(options, device)
    on_cuda = device.type == "cuda"
    if options.channels_last and on_cuda:
        to_channels_last(unet)
    if options.compile:
        compile_unet(unet)
    elif options.fused_ops and on_cuda:
        fuse_modules(unet, channels_last=options.channels_last)
    return CudaGraphUNet(unet, weak=weak) if options.cuda_graphs else unet


def accelerate_vae(vae: nn.Module, options: AccelOptions) -> nn.Module:
    """Fused GroupNorm(+SiLU) in the VAE (its largest memory-bound ops), NHWC with them, and the fp16
    attention product of fp32 decodes."""
    device = next(vae.parameters()).device
    if device.type != "cuda":
        return vae
    options = options_for_device(options, device)
    # NHWC only once the fused kernels are in (a failed start-up check swaps nothing): PyTorch's GroupNorm
    # on NHWC activations is slower than NCHW
    fused = options.fused_ops and fuse_modules(vae, channels_last=options.vae_channels_last) > 0
    if options.vae_channels_last and fused:
        to_channels_last(vae)
    if options.vae_attention_fp16:
        use_half_products(vae)
    return vae


class Accelerator:
    """Applies one AccelOptions to the modules it is shown, once each."""

    def __init__(self, options: AccelOptions | None = None) -> None:
        self.options = options or AccelOptions()
        self._unets: weakref.WeakKeyDictionary[nn.Module, nn.Module | CudaGraphUNet] = weakref.WeakKeyDictionary()
        self._text_encoders: weakref.WeakKeyDictionary[nn.Module, CudaGraphTextEncoder] = weakref.WeakKeyDictionary()
        self._vaes: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._home: weakref.WeakKeyDictionary[nn.Module, torch.device] = weakref.WeakKeyDictionary()  # UNets'

    def unet(self, unet: nn.Module) -> nn.Module | CudaGraphUNet:
        """What the loop should call for `unet` (the same object on every call for the same UNet)."""
        if unet not in self._unets:
            self._home[unet] = next(unet.parameters()).device
            self._unets[unet] = accelerate_unet(unet, self.options, weak=True)  # the cache must not keep it alive
        return self._unets[unet]

    def text_encoder(self, text_encoder: nn.Module) -> nn.Module | CudaGraphTextEncoder:
        """What the prompt encoder should call: a graph wrapper when graphs are on and the module is on CUDA."""
        if not self.options.cuda_graphs or next(text_encoder.parameters()).device.type != "cuda":
            return text_encoder
        if text_encoder not in self._text_encoders:
            self._text_encoders[text_encoder] = CudaGraphTextEncoder(text_encoder, weak=True)
        return self._text_encoders[text_encoder]

    def vae(self, vae: nn.Module) -> nn.Module:
        if vae not in self._vaes:
            accelerate_vae(vae, self.options)
            self._vaes.add(vae)
        return vae

    def prepare(self, components: Components) -> Components:
        """A copy of `components` whose unet, text encoder (and VAE modules) have the switches applied."""
        return dataclasses.replace(components, unet=self.unet(components.unet), vae=self.vae(components.vae),
                                   text_encoder=self.text_encoder(components.text_encoder))

    def on_moved(self, module: nn.Module) -> None:
        """The model manager moved `module` between the device and the host, is about to free it, or needs
        the device memory accel holds for it: its CUDA graphs go (they hold a memory pool and recorded the
        old weight addresses; the next call on the GPU captures again), and a fused UNet back on the GPU gets
        its projection weights stacked again (the manager's tensor-by-tensor move split them; on the host they
        stay split, as the pinned tensors the manager made)."""
        graphs = self.graphs(module)
        if graphs is not None:
            graphs.reset()
        first = next(module.parameters(), None)
        if module in self._home and first is not None and first.device == self._home[module]:
            restack(module)

    def graphs(self, module: nn.Module) -> GraphedModule | None:
        """The graph wrapper of a UNet or text encoder, if one was made (the bench reports its captures)."""
        wrapped = self._unets.get(module)
        if wrapped is None:
            wrapped = self._text_encoders.get(module)
        return wrapped if isinstance(wrapped, GraphedModule) else None
