"""The one call the model manager (or the bench) makes per job: `Accelerator.prepare(components)`.

Switches that change modules in place (fused-op swaps, channels_last, compile) are applied once per
loaded module; the CUDA-graph wrapper of each UNet is kept here so its graphs survive between jobs.
The cache is keyed weakly by the module: when the manager frees a UNet, its wrapper and graphs go too.
"""

from __future__ import annotations

import dataclasses
import weakref

from torch import nn

from sd2_app.accel.cuda_graph import CudaGraphUNet
from sd2_app.accel.options import AccelOptions, accelerate_unet, accelerate_vae
from sd2_app.components import Components


class Accelerator:
    """Applies one AccelOptions to the modules it is shown, once each."""

    def __init__(self, options: AccelOptions | None = None) -> None:
        self.options = options or AccelOptions()
        self._unets: weakref.WeakKeyDictionary[nn.Module, nn.Module | CudaGraphUNet] = weakref.WeakKeyDictionary()
        self._vaes: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def unet(self, unet: nn.Module) -> nn.Module | CudaGraphUNet:
        """What the loop should call for `unet` (the same object on every call for the same UNet)."""
        if unet not in self._unets:
            accelerated = accelerate_unet(unet, self.options)
            if isinstance(accelerated, CudaGraphUNet):
                accelerated = CudaGraphUNet(unet, weak=True)  # the cache must not keep the UNet alive
            self._unets[unet] = accelerated
        return self._unets[unet]

    def vae(self, vae: nn.Module) -> nn.Module:
        if vae not in self._vaes:
            accelerate_vae(vae, self.options)
            self._vaes.add(vae)
        return vae

    def prepare(self, components: Components) -> Components:
        """A copy of `components` whose unet (and VAE modules) have the switches applied."""
        return dataclasses.replace(components, unet=self.unet(components.unet), vae=self.vae(components.vae))

    def graphs(self, unet: nn.Module) -> CudaGraphUNet | None:
        """The graph wrapper of `unet`, if one was made (for reporting captures)."""
        wrapped = self._unets.get(unet)
        return wrapped if isinstance(wrapped, CudaGraphUNet) else None
