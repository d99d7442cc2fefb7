"""What every CUDA-graph wrapper shares: capture per input signature, replay, a bounded LRU of graphs.

A captured graph replays one launch instead of hundreds of kernels, at fixed memory addresses: every input
is copied into a static buffer first and the output comes back from a static buffer. One graph is kept per
input signature (shape, dtype, which optional inputs are present, the run-time modes that change which
kernels run); a wrapper's graphs share one memory pool, which is safe because they run one at a time on
the same stream and each graph's output is copied out at once.

A wrapper runs the module eagerly whenever a graph cannot be used: on CPU, with autograd on, inside another
capture, or after a capture failed for that signature (the reason is logged once).
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_FINGERPRINT_SAMPLES = 32  # parameters whose addresses are checked per call (all change when a module moves)
MAX_GRAPHS = 8  # graphs kept per wrapper; the least recently used one goes when a new signature comes

GraphKey = tuple[Hashable, ...]
ArgsT = TypeVar("ArgsT", bound=tuple[object, ...])  # one call's inputs, as a subclass's `_forward` reads them


@dataclass
class _Captured:
    """One captured forward and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: list[Tensor | None]  # static input buffers, in the order the wrapper's `_forward` reads them
    output: Tensor


class GraphedModule(Generic[ArgsT]):
    """One graph per input signature, a shared memory pool, capture with warm-up and a replay check, eager
    fallback, and re-capture when the wrapped module's weights move.

    `warmup_steps` eager forwards run on a side stream before each capture (cuDNN autotuning and lazy
    allocations must not happen inside the capture). At most `max_graphs` graphs are kept: a new signature
    beyond that evicts the least recently replayed one (its static buffers and its share of the pool go back
    to the pool for the next capture), so many image sizes cost re-captures, never unbounded memory.
    If the module's weights move behind the wrapper's back, the graphs point at freed memory: a sampled
    fingerprint of parameter addresses detects that and the graphs are re-captured. (The model manager
    tells accel about its moves directly: `Accelerator.on_moved`.)
    Subclasses say what a call's inputs are: `_static_inputs`, `_load_inputs` and `_forward`.
    """

    def __init__(self, module: nn.Module, *, warmup_steps: int = 2, max_graphs: int = MAX_GRAPHS,
                 clone_output: bool = True, weak: bool = False) -> None:
        # weak=True: the wrapper does not keep the module alive (a cache keyed by the module can then let go
        # of both when the manager frees it).
        self._module_ref: Callable[[], nn.Module | None] = weakref.ref(module) if weak else (lambda: module)
        self.warmup_steps = warmup_steps
        self.max_graphs = max_graphs
        self.clone_output = clone_output
        self._graphs: OrderedDict[GraphKey, _Captured] = OrderedDict()  # least recently used first
        self._failed: OrderedDict[GraphKey, str] = OrderedDict()
        self._pool: tuple[int, int] | None = None  # torch.cuda.graph_pool_handle()
        self._fingerprint: tuple[int, ...] | None = None
        self._sampled = self._sample_tensors()
        self.captures = 0  # how many graphs were captured so far (the bench reports it)
        self.evictions = 0  # how many were evicted to make room for another signature

    @property
    def module(self) -> nn.Module:
        """The wrapped module (raises ReferenceError once a weakly held one was freed)."""
        module = self._module_ref()
        if module is None:
            raise ReferenceError("the wrapped module was freed")
        return module

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The wrapped module's parameters (the loop reads the dtype from the first)."""
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

    def graph_keys(self) -> list[GraphKey]:
        """The signatures with a kept graph, least recently used first."""
        return list(self._graphs)

    # -- what a subclass defines -----------------------------------------------------------------------
    def _static_inputs(self, args: ArgsT) -> list[Tensor | None]:
        """Fresh device buffers shaped like one call's inputs (filled by `_load_inputs`)."""
        raise NotImplementedError

    def _load_inputs(self, static: list[Tensor | None], args: ArgsT) -> None:
        """Copy one call's inputs into the static buffers without a host synchronisation."""
        raise NotImplementedError

    def _forward(self, static: list[Tensor | None]) -> Tensor:
        """The module's forward on the static buffers; returns the one tensor the caller needs."""
        raise NotImplementedError

    # -- calls ---------------------------------------------------------------------------------------
    def _graphed(self, key: GraphKey, args: ArgsT, eager: Callable[[], Tensor]) -> Tensor:
        """Replay (capturing first if needed) the graph for `key`; `eager()` wherever a graph can't serve."""
        self._check_weights()
        captured = self._graphs.get(key)
        if captured is None:
            if key in self._failed:
                return eager()
            while len(self._graphs) >= self.max_graphs:
                evicted, _ = self._graphs.popitem(last=False)
                self.evictions += 1
                logger.info("evicted the least recently used CUDA graph of %s (%s)", type(self.module).__name__,
                            evicted[:2])
            captured = self._capture(key, args)
            if captured is None:
                return eager()
        else:
            self._graphs.move_to_end(key)
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

    def _capture(self, key: GraphKey, args: ArgsT) -> _Captured | None:
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
            while len(self._failed) > 8 * self.max_graphs:  # bounded like the graphs
                self._failed.popitem(last=False)
            logger.warning("CUDA graph capture of %s failed for %s, running eagerly: %s",
                           type(self.module).__name__, key[:2], reason)
            return None
        self._graphs[key] = static
        self.captures += 1
        logger.info("captured a CUDA graph of %s for %s %s (%d kept)", type(self.module).__name__, key[0], key[1],
                    len(self._graphs))
        return static


def _disagreement(replayed: Tensor, eager: Tensor) -> str | None:
    """Why a captured graph must not be used: its first replay differs from the eager forward it recorded.

    Both ran the same kernels on the same inputs, so anything beyond rounding noise means the capture
    recorded something else (an op that read host state, a stale buffer); eager is then the safe choice.
    """
    scale = eager.float().abs().max().clamp_min(1.0)
    diff = (replayed.float() - eager.float()).abs().max()
    ok = bool(torch.isfinite(replayed).all()) and bool(diff <= 1e-2 * scale)
    return None if ok else f"replay differs from eager by {float(diff):.3g}"
