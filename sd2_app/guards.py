"""Run-time guards around one task: NaN/inf never becomes an image, and an out-of-memory retry uses less memory.

fp16 overflows show up as inf/NaN either in the sampled latents (attention logits; SD2.1-768 is known for
it) or in the decoded pixels (the VAE decoder). Postprocessing would turn NaN into black pixels silently, so
the decode checks its input and output, read together after decoding (one host synchronisation per image,
which the copy to the host needs anyway): non-finite output is decoded again in fp32, non-finite latents
raise `NonFiniteError` and the service reruns the sampling with fp32 attention. What was repaired reaches
the user as a warning; the warnings travel through a per-thread list (the service runs one job per thread),
so no task signature changes. `low_memory()` marks the retry after an out-of-memory error: the decode then
works in tiles.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
_state = threading.local()  # .notes: list[str] | None, .low_memory: bool


class NonFiniteError(RuntimeError):
    """A tensor that must become an image holds NaN or inf; `stage` is "latents" or "image"."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        super().__init__(f"non-finite values (NaN/inf) in the {stage}")


def is_finite(x: torch.Tensor) -> bool:
    """True when every value of `x` is finite (one host synchronisation)."""
    return bool(torch.isfinite(x).all())


def warn(message: str) -> None:
    """Log `message` and, inside `collect_warnings`, hand it to the user with the result."""
    log.warning(message)
    notes = getattr(_state, "notes", None)
    if notes is not None:
        notes.append(message)


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """The list that `warn` fills on this thread while the block runs."""
    previous = getattr(_state, "notes", None)
    notes: list[str] = []
    _state.notes = notes
    try:
        yield notes
    finally:
        _state.notes = previous


@contextmanager
def low_memory(enabled: bool = True) -> Iterator[None]:
    """While enabled, memory-hungry steps (the VAE decode) trade speed for memory."""
    previous = getattr(_state, "low_memory", False)
    _state.low_memory = enabled
    try:
        yield
    finally:
        _state.low_memory = previous


def is_low_memory() -> bool:
    return bool(getattr(_state, "low_memory", False))


@contextmanager
def fp32_attention(unet: torch.nn.Module) -> Iterator[None]:
    """Compute every attention product of `unet` in fp32 for a while (nn.attention.Attention.force_fp32)."""
    from sd2_app.nn.attention import Attention

    modules = [m for m in unet.modules() if isinstance(m, Attention)]
    saved = [m.force_fp32 for m in modules]
    for m in modules:
        m.force_fp32 = True
    try:
        yield
    finally:
        for m, forced in zip(modules, saved):
            m.force_fp32 = forced


def run_with_fp32_fallback(call: Callable[[], T], components: Any) -> tuple[T, list[str]]:
    """`call()` and the warnings it raised; latents with NaN/inf get one rerun with fp32 attention.

    A second failure (or a decode that is not finite even in fp32) propagates as `NonFiniteError`.
    """
    with collect_warnings() as notes:
        try:
            return call(), notes
        except NonFiniteError as error:
            if error.stage != "latents":
                raise
        warn("The sampler produced NaN/inf latents (numerical overflow); the run was repeated with fp32 attention.")
        with fp32_attention(components.unet):
            return call(), notes
