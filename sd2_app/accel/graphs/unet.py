"""The UNet as CUDA graphs: at 512x512 the SD2 UNet in eager mode is launch-bound (the GPU idles between
small kernels); a captured graph removes the per-kernel CPU cost."""

from __future__ import annotations

from collections.abc import Iterator
import torch
from torch import Tensor, nn

from sd2_app.accel.graphs.base import GraphedModule, GraphKey
from sd2_app.nn.config import UNetConfig


# (sample, timestep, encoder_hidden_states, class_labels): one UNet call's inputs
UNetInputs = tuple[Tensor, Tensor | float, Tensor, Tensor | None]


class CudaGraphUNet(GraphedModule[UNetInputs]):
    """A UNet's forward replayed from CUDA graphs: `__call__(sample, timestep, encoder_hidden_states,
    class_labels=None)` as the UNet's, plus the little the pipelines read of a UNet (`config`,
    `parameters()`, `modules()`). It is not a UNet: the wrapped module is `.unet`.

    The graph key is the shapes and dtypes of the inputs (any batch, size or text length gets its own
    graph). A call with the per-call `fp32_attention` switch (the fallback ladder's rerun after NaN/inf,
    nn/attention.py) runs eagerly: it is rare, and a graph recorded with fp16 attention must never serve it.
    A seamless-tiling job never calls this wrapper: it runs its own view of the wrapped UNet, un-graphed
    (pipelines/seamless.py).
    """

    @property
    def unet(self) -> nn.Module:
        return self.module

    @property
    def config(self) -> UNetConfig:
        return self.unet.config

    def modules(self) -> Iterator[nn.Module]:
        """The wrapped UNet's modules."""
        return self.unet.modules()

    def __call__(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                 class_labels: Tensor | None = None, *, fp32_attention: bool = False) -> Tensor:
        def eager() -> Tensor:
            return self.unet(sample, timestep, encoder_hidden_states, class_labels=class_labels,
                             fp32_attention=fp32_attention)

        if fp32_attention or not self._can_use_graph(sample):
            return eager()
        key = self.key(sample, timestep, encoder_hidden_states, class_labels)
        return self._graphed(key, (sample, timestep, encoder_hidden_states, class_labels), eager)

    def key(self, sample: Tensor, timestep: Tensor | float, context: Tensor,
            class_labels: Tensor | None = None) -> GraphKey:
        """The graph signature of one call."""
        t_dtype = timestep.dtype if isinstance(timestep, Tensor) else torch.float32
        labels = None if class_labels is None else (tuple(class_labels.shape), class_labels.dtype)
        return (tuple(sample.shape), sample.dtype, sample.is_contiguous(memory_format=torch.channels_last),
                t_dtype, tuple(context.shape), context.dtype, labels, torch.is_inference_mode_enabled())

    def _static_inputs(self, args: UNetInputs) -> list[Tensor | None]:
        sample, timestep, context, class_labels = args
        t_dtype = timestep.dtype if isinstance(timestep, Tensor) else torch.float32
        return [sample.clone(), torch.zeros(sample.shape[0], dtype=t_dtype, device=sample.device), context.clone(),
                None if class_labels is None else class_labels.to(sample.device).clone()]

    def _load_inputs(self, static: list[Tensor | None], args: UNetInputs) -> None:
        sample, timestep, context, class_labels = args
        s_sample, s_timestep, s_context, s_labels = static
        assert s_sample is not None and s_timestep is not None and s_context is not None
        s_sample.copy_(sample)
        s_context.copy_(context)
        if isinstance(timestep, Tensor) and timestep.is_cuda:
            s_timestep.copy_(timestep.reshape(-1).expand(s_timestep.shape[0]))
        elif isinstance(timestep, Tensor) and timestep.numel() == 1:
            s_timestep.fill_(timestep.item())  # a CPU scalar: .item() reads host memory, no GPU sync
        elif isinstance(timestep, Tensor):
            s_timestep.copy_(timestep.reshape(-1), non_blocking=True)
        else:
            s_timestep.fill_(float(timestep))
        if s_labels is not None and class_labels is not None:
            s_labels.copy_(class_labels, non_blocking=True)

    def _forward(self, static: list[Tensor | None]) -> Tensor:
        sample, timestep, context, class_labels = static
        return self.unet(sample, timestep, context, class_labels=class_labels)
