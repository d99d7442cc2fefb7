"""What the benchmark runs: the cases, their inputs, and the timing/memory measurement of one call."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger("bench")

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 8k"
NEGATIVE = "blurry, low quality"
SEED = 1234


@dataclass(frozen=True)
class Case:
    name: str  # e.g. "txt2img-512-b1"
    task: str  # txt2img | inpaint | depth | upscale
    kind: str  # the repo kind (= registry key) it runs on
    size: int  # output side in pixels
    batch: int = 1
    input_size: int | None = None  # upscale: low-res side
    tile: int = 128  # upscale: latent tile side
    reps: int = 3  # timed runs after one warm-up run
    warmup: bool = True  # False: the first call is the timed one (long cases whose shapes were warmed before)
    ours_only: bool = False  # run by our variants only (diffusers' variants skip it)
    sampler: str = "DPM++ 2M"
    cfg_scale: float = 7.5


@dataclass
class Measurement:
    case: str
    variant: str
    task: str
    size: int
    batch: int
    steps: int
    first_s: float | None = None  # the warm-up call: graph capture, autotuning, compile
    times_s: list[float] = field(default_factory=list)
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    error: str | None = None
    load_s: float | None = None  # the variant's load of the checkpoint (compiled variants: + their set-up)
    images: Any = field(default=None, repr=False, compare=False)  # the last call's output (not serialised)

    @property
    def warmup_s(self) -> float | None:
        """What the first call cost beyond a timed one: compile, autotuning, graph capture, kernel JIT."""
        return None if self.first_s is None or self.call_s is None else self.first_s - self.call_s

    @property
    def call_s(self) -> float | None:
        return float(np.median(self.times_s)) if self.times_s else None

    @property
    def s_per_image(self) -> float | None:
        return None if self.call_s is None else self.call_s / self.batch

    @property
    def steps_per_s(self) -> float | None:
        return None if self.call_s is None else self.steps / self.call_s

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "images"}
        return {**values, "call_s": self.call_s, "s_per_image": self.s_per_image, "steps_per_s": self.steps_per_s,
                "warmup_s": self.warmup_s}


def make_cases(*, tiny: bool, quick: bool) -> list[Case]:
    """The issue's cases; tiny sizes keep the same structure (tiling included) for the CPU check."""
    reps = 1 if quick else 3
    if tiny:
        small, large, up_small, up_large, tile = 64, 96, 16, 32, 16
    else:
        small, large, up_small, up_large, tile = 512, 768, 128, 512, 128
    few = min(reps, 2)  # batch-4 cases: 4x the work per call, so fewer calls
    cases = [
        Case(f"txt2img-{small}-b1", "txt2img", "sd2-base", small, 1, reps=reps),
        Case(f"txt2img-{small}-b4", "txt2img", "sd2-base", small, 4, reps=few),
        Case(f"txt2img-{large}-b1", "txt2img", "sd2", large, 1, reps=reps),
        Case(f"txt2img-{large}-b4", "txt2img", "sd2", large, 4, reps=few),
        # SD 2.1-768 (upcast_attention): the same network as sd2 but for that flag; target within 5 % of sd2
        Case(f"txt2img-{large}-sd21-b1", "txt2img", "sd21", large, 1, reps=reps),
        Case(f"upscale-{up_small}-{up_small * 4}", "upscale", "x4-upscaler", up_small * 4,
             input_size=up_small, tile=tile, reps=reps, cfg_scale=9.0),
        # Ours only: the target is its memory (<= 16 GB); diffusers' untiled 2048 decode would spend minutes
        # of a short GPU lease. Its tiles have the 128->512 case's shape, so no separate warm-up call.
        Case(f"upscale-{up_large}-{up_large * 4}", "upscale", "x4-upscaler", up_large * 4,
             input_size=up_large, tile=tile, reps=1, cfg_scale=9.0, warmup=False, ours_only=True),
        Case(f"inpaint-{small}", "inpaint", "sd2-inpainting", small, reps=reps),
        Case(f"depth-{small}", "depth", "sd2-depth", small, reps=reps),
    ]
    return cases


def input_image(size: int) -> Image.Image:
    """A deterministic RGB gradient with some structure (content does not affect speed)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6.28 * (x + y))], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")


def input_mask(size: int) -> Image.Image:
    """White (repaint) square in the middle half."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    return Image.fromarray(mask, "L")


def input_depth(size: int) -> Image.Image:
    y = np.linspace(0, 255, size, dtype=np.float32)[:, None].repeat(size, axis=1)
    return Image.fromarray(y.astype(np.uint8), "L")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(case: Case, variant: str, steps: int, device: torch.device, call: Callable[[], object],
            *, warmup: bool = True) -> Measurement:
    """One warm-up call (timed as first_s), then `case.reps` timed calls; peak memory over the timed ones.

    Out-of-memory, or any other failure of one side, is a result, not a crash: it is recorded in `error`.
    """
    result = Measurement(case.name, variant, case.task, case.size, case.batch, steps)
    try:
        if warmup and case.warmup:
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            result.first_s = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(case.reps):
            synchronize(device)
            start = time.perf_counter()
            result.images = call()
            synchronize(device)
            result.times_s.append(time.perf_counter() - start)
        if device.type == "cuda":
            result.peak_allocated_gib = torch.cuda.max_memory_allocated(device) / 2**30
            result.peak_reserved_gib = torch.cuda.max_memory_reserved(device) / 2**30
    except torch.OutOfMemoryError as e:
        result.error = f"out of memory: {str(e).splitlines()[0][:160]}"
        release(device)
    except Exception as e:  # noqa: BLE001 - the run goes on to the next case; the log has the traceback
        logger.exception("%s %s failed", case.name, variant)
        first_line = str(e).splitlines()[0][:200] if str(e) else ""
        result.error = f"{type(e).__name__}: {first_line}"
        release(device)
    return result
