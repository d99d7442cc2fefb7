"""The fallback ladder: the one place that decides what to try after a run fails, and in which order.

    normal -> fp32 (attention after NaN/inf latents, the VAE decode after NaN/inf pixels)
           -> free memory + tiled decode (after out of memory) -> a clear error

Each attempt gets its `RunMode` explicitly (the task function's `mode` argument); nothing is stored on
threads or on the shared modules. What a rung repaired comes back as a warning with the output; what no rung
can repair becomes an `InvalidRequest` whose message the user sees. The rungs are independent: a run that
overflows and then runs out of memory gets both switches, and each rung is climbed at most once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import torch

from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.run_mode import NORMAL, NonFiniteError, RunMode

log = logging.getLogger(__name__)

T = TypeVar("T")

FP32_ATTENTION_NOTE = "The sampler produced NaN/inf latents (numerical overflow); the run was repeated with fp32 attention."
FP32_DECODE_NOTE = "The VAE decode gave NaN/inf values; the run was repeated with a float32 decode."
LOW_MEMORY_NOTE = ("Out of memory: other models were moved off the GPU and the run was repeated with a tiled VAE "
                   "decode.")
OUT_OF_MEMORY_MESSAGE = ("The GPU ran out of memory; try a smaller size, fewer images per prompt or fewer loaded "
                         "models.")


def non_finite_message(stage: str) -> str:
    return (f"The model produced NaN/inf values in the {stage} even when rerun in float32, so no image was returned; "
            "try another seed or sampler, or a lower guidance scale.")


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The errors that say the device ran out of memory (also read by api/batching.py)."""
    return (torch.OutOfMemoryError,)


def _fp32_rung(mode: RunMode, error: NonFiniteError) -> tuple[RunMode, str] | None:
    """The mode that addresses `error`, with its note; None when that switch is on already."""
    if error.stage == "latents" and not mode.fp32_attention:
        return replace(mode, fp32_attention=True), FP32_ATTENTION_NOTE
    if error.stage == "image" and not mode.fp32_decode:
        return replace(mode, fp32_decode=True), FP32_DECODE_NOTE
    return None


def run_with_fallbacks(attempt: Callable[[RunMode], T], free_memory: Callable[[], None]) -> tuple[T, list[str]]:
    """`attempt(mode)` climbing the ladder until it succeeds; returns its result and the notes to show.

    `free_memory()` moves everything but the running checkpoint off the GPU (the model manager's
    `free_memory`). `Cancelled` and other errors pass through untouched.
    """
    oom = out_of_memory_errors()
    mode, notes = NORMAL, []
    while True:
        try:
            return attempt(mode), notes
        except NonFiniteError as error:
            rung = _fp32_rung(mode, error)
            if rung is None:
                log.warning("non-finite %s even in float32", error.stage)
                raise InvalidRequest(non_finite_message(error.stage)) from error
            mode, note = rung
        except oom as error:
            if mode.tiled_decode:
                log.warning("out of memory again after freeing memory: %s", error)
                raise InvalidRequest(OUT_OF_MEMORY_MESSAGE) from error
            log.warning("out of memory (%s); freeing memory and retrying with a tiled decode", error)
            free_memory()
            mode, note = replace(mode, tiled_decode=True), LOW_MEMORY_NOTE
        log.warning("%s", note)
        notes.append(note)
