"""Replay the UNet and the text encoder as CUDA graphs: one launch per call instead of hundreds of kernels.

At 512x512 the SD2 UNet in eager mode is launch-bound (the GPU idles between small kernels); a captured
graph removes the per-kernel CPU cost. The text encoder (23 CLIP layers on 77 tokens) is almost all launch
cost, and it runs before the first step, when the GPU has nothing else queued. A graph replays fixed
memory addresses, so every input is copied into a static buffer first and the output comes back from a
static buffer. One graph is kept per input signature (shape, dtype, which optional inputs are present);
a wrapper's graphs share one memory pool, which is safe because they run one at a time on the same stream
and each graph's output is copied out at once.

Each wrapper is a drop-in for the module as the pipelines call it (it also forwards `parameters()`,
`config` and any other attribute), and runs the module eagerly whenever a graph cannot be used: on CPU,
with autograd on, inside another capture, or after a capture failed (the reason is logged once).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sd2_app.nn.attention import Attention

logger = logging.getLogger(__name__)

_FINGERPRINT_SAMPLES = 32  # parameters whose addresses are checked per call (all change when a module moves)

GraphKey = tuple[Any, ...]


@dataclass
class _Captured:
    """One captured forward and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor | None]  # static input buffers, in the order the wrapper's `_forward` reads them
    output: Tensor


def _signature(sample: Tensor, timestep: Tensor | float, context: Tensor, class_labels: Tensor | None,
               modes: tuple[bool, ...] = ()) -> GraphKey:
    """What a captured UNet graph is valid for. `modes` are run-time switches of the UNet's modules (the
    attention modules' `upcast` flags): a graph replays the kernels it
    recorded, so a graph captured with fp16 attention must never serve an fp32-attention call."""
    t_dtype = timestep.dtype if isinstance(timestep, Tensor) else torch.float32
    labels = None if class_labels is None else (tuple(class_labels.shape), class_labels.dtype)
    return (tuple(sample.shape), sample.dtype, sample.is_contiguous(memory_format=torch.channels_last),
            t_dtype, tuple(context.shape), context.dtype, labels, torch.is_inference_mode_enabled(), modes)


class GraphedModule:
    """What every graph wrapper shares: one graph per input signature, a shared memory pool, capture with
    warm-up and a replay check, eager fallback, and re-capture when the wrapped module's weights move.

    `warmup_steps` eager forwards run on a side stream before each capture (cuDNN autotuning and lazy
    allocations must not happen inside the capture). `max_graphs` bounds the number of signatures kept;
    further signatures run eagerly (tiled upscaling with ragged edge tiles could otherwise grow without end).
    If the module's weights move (the manager offloads it and brings it back), the graphs point at freed
    memory: a sampled fingerprint of parameter addresses detects that and the graphs are re-captured.
    Subclasses say what a call's inputs are: `_static_inputs`, `_load_inputs` and `_forward`.
    """

    def __init__(self, module: nn.Module, *, warmup_steps: int = 2, max_graphs: int = 8,
                 clone_output: bool = True, weak: bool = False) -> None:
        # weak=True: the wrapper does not keep the module alive (a cache keyed by the module can then let go
        # of both when the manager frees it).
        self._module_ref: Callable[[], nn.Module | None] = weakref.ref(module) if weak else (lambda: module)
        self.warmup_steps = warmup_steps
        self.max_graphs = max_graphs
        self.clone_output = clone_output
        self._graphs: dict[GraphKey, _Captured] = {}
        self._failed: dict[GraphKey, str] = {}
        self._pool: Any = None
        self._fingerprint: tuple[int, ...] | None = None
        self._sampled = self._sample_tensors()
        self.captures = 0  # how many graphs were captured so far (the bench reports it)

    # -- drop-in surface -------------------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        module = self._module_ref()
        if module is None:
            raise ReferenceError("the wrapped module was freed")
        return module

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not set on the wrapper: `config`, `dtype`, `down_blocks`, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.module, name)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.module.parameters(recurse)

    def reset(self) -> None:
        """Forget every graph (and the pool); the next call on the GPU captures again."""
        self._graphs.clear()
        self._failed.clear()
        self._pool = None
        self._fingerprint = None
        self._sampled = self._sample_tensors()

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def weights_unchanged(self) -> bool:
        """True while graphs exist and the weights are where they were captured (a cheap sampled check): the
        module was not moved since, so nothing about its tensors needs redoing before the next call."""
        return bool(self._graphs) and self._fingerprint == tuple(t.data_ptr() for t in self._sampled)

    # -- what a subclass defines -----------------------------------------------------------------------
    def _static_inputs(self, args: tuple[Any, ...]) -> list[Tensor | None]:
        """Fresh device buffers shaped like one call's inputs (filled by `_load_inputs`)."""
        raise NotImplementedError

    def _load_inputs(self, static: list[Tensor | None], args: tuple[Any, ...]) -> None:
        """Copy one call's inputs into the static buffers without a host synchronisation."""
        raise NotImplementedError

    def _forward(self, static: list[Tensor | None]) -> Tensor:
        """The module's forward on the static buffers; returns the one tensor the caller needs."""
        raise NotImplementedError

    # -- calls ---------------------------------------------------------------------------------------
    def _graphed(self, key: GraphKey, args: tuple[Any, ...], eager: Callable[[], Tensor]) -> Tensor:
        """Replay (capturing first if needed) the graph for `key`; `eager()` wherever a graph can't serve."""
        self._check_weights()
        captured = self._graphs.get(key)
        if captured is None:
            if key in self._failed or len(self._graphs) >= self.max_graphs:
                return eager()
            captured = self._capture(key, args)
            if captured is None:
                return eager()
        self._load_inputs(captured.inputs, args)
        captured.graph.replay()
        return captured.output.clone() if self.clone_output else captured.output

    def _can_use_graph(self, first_input: Tensor) -> bool:
        return (first_input.is_cuda and not torch.is_grad_enabled()
                and not torch.cuda.is_current_stream_capturing())

    def _sample_tensors(self) -> list[Tensor]:
        tensors = [*self.module.parameters(), *self.module.buffers()]
        if len(tensors) <= _FINGERPRINT_SAMPLES:
            return tensors
        stride = len(tensors) / _FINGERPRINT_SAMPLES
        return [tensors[int(i * stride)] for i in range(_FINGERPRINT_SAMPLES)] + [tensors[-1]]

    def _check_weights(self) -> None:
        fingerprint = tuple(t.data_ptr() for t in self._sampled)
        if self._fingerprint is not None and fingerprint != self._fingerprint:
            logger.info("weights moved since capture; dropping %d CUDA graph(s)", len(self._graphs))
            self.reset()
            fingerprint = tuple(t.data_ptr() for t in self._sampled)
        self._fingerprint = fingerprint

    def _capture(self, key: GraphKey, args: tuple[Any, ...]) -> _Captured | None:
        device = next(t for t in args if isinstance(t, Tensor)).device
        static = _Captured(graph=torch.cuda.CUDAGraph(), inputs=self._static_inputs(args), output=torch.empty(0))
        self._load_inputs(static.inputs, args)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup_steps):
                    eager = self._forward(static.inputs).clone()
            torch.cuda.current_stream(device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(static.graph, pool=self._pool, capture_error_mode="thread_local"):
                static.output = self._forward(static.inputs)
            static.graph.replay()
            reason = _disagreement(static.output, eager)  # one host sync per capture, never per step
        except RuntimeError as e:  # capture refused an op (host sync, CPU tensor, ...); eager still works
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if reason is not None:
            self._failed[key] = reason
            logger.warning("CUDA graph capture of %s failed for %s, running eagerly: %s",
                           type(self.module).__name__, key[:2], reason)
            return None
        self._graphs[key] = static
        self.captures += 1
        logger.info("captured a CUDA graph of %s for %s %s (%d kept)", type(self.module).__name__, key[0], key[1],
                    len(self._graphs))
        return static


class CudaGraphUNet(GraphedModule):
    """Wraps a UNet; `__call__(sample, timestep, encoder_hidden_states, class_labels=None)` as the UNet's.

    The graph key includes the attention precision switches (see `_signature`).
    """

    def __init__(self, unet: nn.Module, **kwargs: Any) -> None:
        super().__init__(unet, **kwargs)
        self._attention = [m for m in self.unet.modules() if isinstance(m, Attention)]

    @property
    def unet(self) -> nn.Module:
        return self.module

    def __call__(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                 class_labels: Tensor | None = None, *, upcast_attention: bool = False) -> Tensor:
        def eager() -> Tensor:
            return self.unet(sample, timestep, encoder_hidden_states, class_labels=class_labels,
                             upcast_attention=upcast_attention)

        # The per-call fp32 attention (the fallback ladder's rerun after NaN/inf) is rare: it runs eagerly,
        # so no graph recorded with fp16 attention ever serves it.
        if upcast_attention or not self._can_use_graph(sample):
            return eager()
        key = self.key(sample, timestep, encoder_hidden_states, class_labels)
        return self._graphed(key, (sample, timestep, encoder_hidden_states, class_labels), eager)

    def key(self, sample: Tensor, timestep: Tensor | float, context: Tensor,
            class_labels: Tensor | None = None) -> GraphKey:
        """The graph signature of one call, including the attention precision switches as they are now."""
        modes = tuple(m.upcast for m in self._attention)
        return _signature(sample, timestep, context, class_labels, modes)

    def _static_inputs(self, args: tuple[Any, ...]) -> list[Tensor | None]:
        sample, timestep, context, class_labels = args
        t_dtype = timestep.dtype if isinstance(timestep, Tensor) else torch.float32
        return [sample.clone(), torch.zeros(sample.shape[0], dtype=t_dtype, device=sample.device), context.clone(),
                None if class_labels is None else class_labels.to(sample.device).clone()]

    def _load_inputs(self, static: list[Tensor | None], args: tuple[Any, ...]) -> None:
        _copy_inputs(static, *args)

    def _forward(self, static: list[Tensor | None]) -> Tensor:
        sample, timestep, context, class_labels = static
        return self.unet(sample, timestep, context, class_labels=class_labels)


class CudaGraphTextEncoder(GraphedModule):
    """Wraps a transformers CLIP text model; `__call__(input_ids)` returns `(last_hidden_state,)`, which is
    all the pipelines read (`text_encoder(ids)[0]`), graphed or not. A call with any other argument is the
    module's own call, with its own output type."""

    def __call__(self, input_ids: Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self.module(input_ids, *args, **kwargs)

        def eager() -> Tensor:
            return self.module(input_ids)[0]

        if not self._can_use_graph(input_ids):
            return (eager(),)
        key = (tuple(input_ids.shape), input_ids.dtype, torch.is_inference_mode_enabled())
        return (self._graphed(key, (input_ids,), eager),)

    def _static_inputs(self, args: tuple[Any, ...]) -> list[Tensor | None]:
        return [args[0].clone()]

    def _load_inputs(self, static: list[Tensor | None], args: tuple[Any, ...]) -> None:
        assert static[0] is not None
        static[0].copy_(args[0])

    def _forward(self, static: list[Tensor | None]) -> Tensor:
        return self.module(static[0])[0]  # (B, 77, D) last_hidden_state


def _disagreement(replayed: Tensor, eager: Tensor) -> str | None:
    """Why a captured graph must not be used: its first replay differs from the eager forward it recorded.

    Both ran the same kernels on the same inputs, so anything beyond rounding noise means the capture
    recorded something else (an op that read host state, a stale buffer); eager is then the safe choice.
    """
    scale = eager.float().abs().max().clamp_min(1.0)
    diff = (replayed.float() - eager.float()).abs().max()
    ok = bool(torch.isfinite(replayed).all()) and bool(diff <= 1e-2 * scale)
    return None if ok else f"replay differs from eager by {float(diff):.3g}"


def _copy_inputs(static: list[Tensor | None], sample: Tensor, timestep: Tensor | float, context: Tensor,
                 class_labels: Tensor | None) -> None:
    """Copy one UNet call's inputs into the static buffers without a host synchronisation."""
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
