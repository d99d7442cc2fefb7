"""The text encoder as a CUDA graph: 23 CLIP layers on 77 tokens are almost all launch cost, and they run
before the first step, when the GPU has nothing else queued."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sd2_app.accel.graphs.base import GraphedModule

if TYPE_CHECKING:
    from transformers import CLIPTextConfig


class CudaGraphTextEncoder(GraphedModule[tuple[Tensor]]):
    """A transformers CLIP text model replayed from CUDA graphs: `__call__(input_ids)` returns
    `(last_hidden_state,)`, which is all the pipelines read (`text_encoder(ids)[0]`), graphed or not. A call
    with any other argument is the module's own call, with its own output type. One graph per ids shape
    (batch and token count)."""

    @property
    def config(self) -> CLIPTextConfig:
        return self.module.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def __call__(self, input_ids: Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self.module(input_ids, *args, **kwargs)

        def eager() -> Tensor:
            return self.module(input_ids)[0]

        if not self._can_use_graph(input_ids):
            return (eager(),)
        key = (tuple(input_ids.shape), input_ids.dtype, torch.is_inference_mode_enabled())
        return (self._graphed(key, (input_ids,), eager),)

    def _static_inputs(self, args: tuple[Tensor]) -> list[Tensor | None]:
        return [args[0].clone()]

    def _load_inputs(self, static: list[Tensor | None], args: tuple[Tensor]) -> None:
        assert static[0] is not None
        static[0].copy_(args[0])

    def _forward(self, static: list[Tensor | None]) -> Tensor:
        return self.module(static[0])[0]  # (B, T, D) last_hidden_state
