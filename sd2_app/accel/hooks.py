"""The one call the model manager (or the bench) makes per job: `Accelerator.prepare(components)`.

Switches that change modules in place (fused-op swaps, channels_last, compile) are applied once per
loaded module; the CUDA-graph wrapper of each UNet and text encoder is kept here so its graphs survive
between jobs. The cache is keyed weakly by the module: when the manager frees one, its wrapper and graphs
go too.
"""

from __future__ import annotations

import dataclasses
import weakref

from torch import nn

from sd2_app.accel.cuda_graph import CudaGraphTextEncoder, CudaGraphUNet, GraphedModule
from sd2_app.accel.fused import restack
from sd2_app.accel.options import AccelOptions, accelerate_unet, accelerate_vae
from sd2_app.checkpoints.components import Components


class Accelerator:
    """Applies one AccelOptions to the modules it is shown, once each."""

    def __init__(self, options: AccelOptions | None = None) -> None:
        self.options = options or AccelOptions()
        self._unets: weakref.WeakKeyDictionary[nn.Module, nn.Module | CudaGraphUNet] = weakref.WeakKeyDictionary()
        self._text_encoders: weakref.WeakKeyDictionary[nn.Module, CudaGraphTextEncoder] = weakref.WeakKeyDictionary()
        self._vaes: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def unet(self, unet: nn.Module) -> nn.Module | CudaGraphUNet:
        """What the loop should call for `unet` (the same object on every call for the same UNet)."""
        if unet not in self._unets:
            accelerated = accelerate_unet(unet, self.options)
            if isinstance(accelerated, CudaGraphUNet):
                accelerated = CudaGraphUNet(unet, weak=True)  # the cache must not keep the UNet alive
            self._unets[unet] = accelerated
        elif self.options.stack_projections and not self._graphs_still_valid(unet):
            # A move to the host and back split the stacked projection weights. The check walks every
            # module (~4 ms of host time, while the GPU waits for the job's first kernel), so it is skipped
            # while the UNet's graphs show that nothing moved since they were captured.
            restack(unet)
        return self._unets[unet]

    def _graphs_still_valid(self, unet: nn.Module) -> bool:
        wrapped = self._unets[unet]
        return isinstance(wrapped, GraphedModule) and wrapped.weights_unchanged()

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

    def graphs(self, module: nn.Module) -> GraphedModule | None:
        """The graph wrapper of a UNet or text encoder, if one was made (to drop its graphs, report captures)."""
        wrapped = self._unets.get(module)
        if wrapped is None:
            wrapped = self._text_encoders.get(module)
        return wrapped if isinstance(wrapped, GraphedModule) else None
