"""Replay the UNet forward as a CUDA graph: one launch per step instead of ~1,500 kernel launches.

At 512x512 the SD2 UNet in eager mode is launch-bound (the GPU idles between small kernels); a captured
graph removes the per-kernel CPU cost. A graph replays fixed memory addresses, so every input is copied
into a static buffer first and the output comes back from a static buffer. One graph is kept per input
signature (shape, dtype, which optional inputs are present); all graphs share one memory pool, which is
safe because they run one at a time on the same stream and each graph's output is copied out at once.

The wrapper is a drop-in for `UNet.__call__` as `run_sampling` uses it (it also forwards `parameters()`,
`config` and any other attribute), and runs the UNet eagerly whenever a graph cannot be used: on CPU,
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
    sample: Tensor  # (B, Cin, h, w)
    timestep: Tensor  # (B,) float32
    context: Tensor  # (B, 77, D)
    class_labels: Tensor | None  # (B,) long
    output: Tensor  # (B, 4, h, w)


def _signature(sample: Tensor, timestep: Tensor | float, context: Tensor, class_labels: Tensor | None,
               modes: tuple[bool, ...] = ()) -> GraphKey:
    """What a captured graph is valid for. `modes` are run-time switches of the UNet's modules (the
    attention `upcast` flags that `guards.fp32_attention` turns on): a graph replays the kernels it
    recorded, so a graph captured with fp16 attention must never serve an fp32-attention call."""
    t_dtype = timestep.dtype if isinstance(timestep, Tensor) else torch.float32
    labels = None if class_labels is None else (tuple(class_labels.shape), class_labels.dtype)
    return (tuple(sample.shape), sample.dtype, sample.is_contiguous(memory_format=torch.channels_last),
            t_dtype, tuple(context.shape), context.dtype, labels, torch.is_inference_mode_enabled(), modes)


class CudaGraphUNet:
    """Wraps a UNet; `__call__(sample, timestep, encoder_hidden_states, class_labels=None)` as the UNet's.

    `warmup_steps` eager forwards run on a side stream before each capture (cuDNN autotuning and lazy
    allocations must not happen inside the capture). `max_graphs` bounds the number of signatures kept;
    further signatures run eagerly (tiled upscaling with ragged edge tiles could otherwise grow without end).
    If the UNet's weights move (the manager offloads it and brings it back), the graphs point at freed
    memory: a sampled fingerprint of parameter addresses detects that and the graphs are re-captured.
    """

    def __init__(self, unet: nn.Module, *, warmup_steps: int = 2, max_graphs: int = 8,
                 clone_output: bool = True, weak: bool = False) -> None:
        # weak=True: the wrapper does not keep the UNet alive (a cache keyed by the UNet can then let go
        # of both when the manager frees the UNet).
        self._unet_ref: Callable[[], nn.Module | None] = weakref.ref(unet) if weak else (lambda: unet)
        self.warmup_steps = warmup_steps
        self.max_graphs = max_graphs
        self.clone_output = clone_output
        self._graphs: dict[GraphKey, _Captured] = {}
        self._failed: dict[GraphKey, str] = {}
        self._pool: Any = None
        self._fingerprint: tuple[int, ...] | None = None
        self._sampled = self._sample_tensors()
        self._attention = [m for m in self.unet.modules() if isinstance(m, Attention)]
        self.captures = 0  # how many graphs were captured so far (the bench reports it)

    # -- drop-in surface -------------------------------------------------------------------------------
    @property
    def unet(self) -> nn.Module:
        unet = self._unet_ref()
        if unet is None:
            raise ReferenceError("the wrapped UNet was freed")
        return unet

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not set on the wrapper: `config`, `dtype`, `down_blocks`, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.unet, name)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.unet.parameters(recurse)

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

    # -- calls ---------------------------------------------------------------------------------------
    def __call__(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                 class_labels: Tensor | None = None) -> Tensor:
        if not self._can_use_graph(sample):
            return self.unet(sample, timestep, encoder_hidden_states, class_labels=class_labels)
        self._check_weights()
        key = self.key(sample, timestep, encoder_hidden_states, class_labels)
        captured = self._graphs.get(key)
        if captured is None:
            if key in self._failed or len(self._graphs) >= self.max_graphs:
                return self.unet(sample, timestep, encoder_hidden_states, class_labels=class_labels)
            captured = self._capture(key, sample, timestep, encoder_hidden_states, class_labels)
            if captured is None:
                return self.unet(sample, timestep, encoder_hidden_states, class_labels=class_labels)
        _copy_inputs(captured, sample, timestep, encoder_hidden_states, class_labels)
        captured.graph.replay()
        return captured.output.clone() if self.clone_output else captured.output

    def key(self, sample: Tensor, timestep: Tensor | float, context: Tensor,
            class_labels: Tensor | None = None) -> GraphKey:
        """The graph signature of one call, including the attention precision switches as they are now."""
        modes = tuple(m.upcast for m in self._attention)
        return _signature(sample, timestep, context, class_labels, modes)

    def _can_use_graph(self, sample: Tensor) -> bool:
        return (sample.is_cuda and not torch.is_grad_enabled()
                and not torch.cuda.is_current_stream_capturing())

    def _sample_tensors(self) -> list[Tensor]:
        tensors = [*self.unet.parameters(), *self.unet.buffers()]
        if len(tensors) <= _FINGERPRINT_SAMPLES:
            return tensors
        stride = len(tensors) / _FINGERPRINT_SAMPLES
        return [tensors[int(i * stride)] for i in range(_FINGERPRINT_SAMPLES)] + [tensors[-1]]

    def _check_weights(self) -> None:
        fingerprint = tuple(t.data_ptr() for t in self._sampled)
        if self._fingerprint is not None and fingerprint != self._fingerprint:
            logger.info("UNet weights moved since capture; dropping %d CUDA graph(s)", len(self._graphs))
            self.reset()
            fingerprint = tuple(t.data_ptr() for t in self._sampled)
        self._fingerprint = fingerprint

    def _capture(self, key: GraphKey, sample: Tensor, timestep: Tensor | float, context: Tensor,
                 class_labels: Tensor | None) -> _Captured | None:
        device = sample.device
        batch = sample.shape[0]
        t_dtype = timestep.dtype if isinstance(timestep, Tensor) else torch.float32
        static = _Captured(
            graph=torch.cuda.CUDAGraph(),
            sample=sample.clone(),
            timestep=torch.zeros(batch, dtype=t_dtype, device=device),
            context=context.clone(),
            class_labels=None if class_labels is None else class_labels.to(device).clone(),
            output=sample,  # placeholder until the capture returns the real output
        )
        _copy_inputs(static, sample, timestep, context, class_labels)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup_steps):
                    eager = self._run_static(static).clone()
            torch.cuda.current_stream(device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(static.graph, pool=self._pool, capture_error_mode="thread_local"):
                static.output = self._run_static(static)
            static.graph.replay()
            reason = _disagreement(static.output, eager)  # one host sync per capture, never per step
        except RuntimeError as e:  # capture refused an op (host sync, CPU tensor, ...); eager still works
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if reason is not None:
            self._failed[key] = reason
            logger.warning("CUDA graph capture failed for %s, running eagerly: %s", key[:2], reason)
            return None
        self._graphs[key] = static
        self.captures += 1
        logger.info("captured a CUDA graph for sample %s %s (%d kept)", key[0], key[1], len(self._graphs))
        return static

    def _run_static(self, static: _Captured) -> Tensor:
        return self.unet(static.sample, static.timestep, static.context, class_labels=static.class_labels)


def _disagreement(replayed: Tensor, eager: Tensor) -> str | None:
    """Why a captured graph must not be used: its first replay differs from the eager forward it recorded.

    Both ran the same kernels on the same inputs, so anything beyond rounding noise means the capture
    recorded something else (an op that read host state, a stale buffer); eager is then the safe choice.
    """
    scale = eager.float().abs().max().clamp_min(1.0)
    diff = (replayed.float() - eager.float()).abs().max()
    ok = bool(torch.isfinite(replayed).all()) and bool(diff <= 1e-2 * scale)
    return None if ok else f"replay differs from eager by {float(diff):.3g}"


def _copy_inputs(static: _Captured, sample: Tensor, timestep: Tensor | float, context: Tensor,
                 class_labels: Tensor | None) -> None:
    """Copy one call's inputs into the static buffers without a host synchronisation."""
    static.sample.copy_(sample)
    static.context.copy_(context)
    if isinstance(timestep, Tensor) and timestep.is_cuda:
        static.timestep.copy_(timestep.reshape(-1).expand(static.timestep.shape[0]))
    elif isinstance(timestep, Tensor) and timestep.numel() == 1:
        static.timestep.fill_(timestep.item())  # a CPU scalar: .item() reads host memory, no GPU sync
    elif isinstance(timestep, Tensor):
        static.timestep.copy_(timestep.reshape(-1), non_blocking=True)
    else:
        static.timestep.fill_(float(timestep))
    if static.class_labels is not None and class_labels is not None:
        static.class_labels.copy_(class_labels, non_blocking=True)
