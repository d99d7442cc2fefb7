"""What a run gives back: the `Result`, the History view's `HistoryEntry`, the UI's progress callback, and the
`Backend` protocol of whatever runs validated requests (the Service itself, or a remote worker pool)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.api.requests import Request, request_seeds

if TYPE_CHECKING:
    from sd2_app.pipelines.output import PipelineOutput

ProgressFn = Callable[[int, int, Image.Image | None], None]  # (steps done, total steps, preview or None)


@dataclass
class Result:
    """What one run produced; `images` carry their A1111 `parameters` text in `image.info`."""

    task: str  # "txt2img", "img2img", "inpaint", "outpaint", "upscale", "depth" or "xyz_plot"
    request: Request  # the validated request (seed resolved, sizes filled in)
    images: list[Image.Image]
    seed: int
    warnings: list[str] = field(default_factory=list)
    # seconds per phase of the request (sd2_app.api.timing.PHASES: "validate", "gate", "load", "run", ...;
    # a plot adds up its cells' "load" and "run" and has its "total")
    timings: dict[str, float] = field(default_factory=dict)
    mask_image: Image.Image | None = None  # inpaint: the mask actually used
    depth_image: Image.Image | None = None  # depth: the depth map actually used
    captions: list[str] = field(default_factory=list)  # one per image (plot: the cell's values and seconds)
    cells: list[dict[str, Any]] = field(default_factory=list)  # plot: each cell's settings and seconds
    stopped: bool = False  # plot: Stop ended it early; the finished cells are here (so too a batch count's batches)
    stopped_at: tuple[int, int] | None = None  # Stop mid-sampling: (step, steps) of the image kept so far
    # each image's seed (api/requests.py, `numbered_seeds`; a batch count's batches: api/batch_count.py; a plot's
    # grids and cells: api/plot.py); empty: `seed` is every image's
    seeds: list[int] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)  # files written to the outputs folder
    # each image's PNG file (its text chunks included), encoded once when the result is kept: the outputs
    # folder and the browser get these bytes as they are
    png: list[bytes] = field(default_factory=list)
    # each PNG file's sha256 (hex), computed with the encode: what names the file the UI shows (`png_sha256`)
    png_sha256: list[str] = field(default_factory=list)
    # the mask ("mask") and the depth map ("depth") as PNG files, encoded with the images
    aux_png: dict[str, bytes] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def image_seed(self, index: int) -> int:
        """The seed image `index` was made with (what its saved file is named after)."""
        return self.seeds[index] if index < len(self.seeds) else self.seed

    @property
    def image_seeds(self) -> list[int]:
        """Each image's seed, in order (A1111's `all_seeds`); `seed` alone for a result without images."""
        return [self.image_seed(index) for index in range(len(self.images))] or [self.seed]

    @property
    def parameters(self) -> str:
        """The first image's parameters text ("" when it has none)."""
        return self.images[0].info.get(keys.PARAMETERS_KEY, "") if self.images else ""


def result_of(task: str, checked: Request, output: PipelineOutput, timings: dict[str, float],
              stopped_at: tuple[int, int] | None = None) -> Result:
    """The unkept `Result` of a task's `output` for the validated request `checked`, each image with its seed."""
    images = list(output.images)
    return Result(task=task, request=checked, images=images, seed=checked.sampling.seed,
                  seeds=[seed for seed, _ in request_seeds(checked, len(images))],
                  warnings=list(getattr(output, "warnings", []) or []), timings=timings,
                  mask_image=getattr(output, "mask_image", None), depth_image=getattr(output, "depth_image", None),
                  stopped_at=stopped_at)


class Backend(Protocol):
    """Runs a validated request and returns its unsaved Result: `Service` itself, or a remote worker pool."""

    def produce(
        self, checked: Request, on_progress: ProgressFn | None, should_stop: Callable[[], bool] | None
    ) -> Result: ...


@dataclass(frozen=True)
class HistoryEntry:
    """One line of the History view."""

    created: float
    task: str
    seed: int
    parameters: str
    images: tuple[Image.Image, ...]
    saved: tuple[Path, ...]
    owner: str | None = None  # the browser session that made it: History shows a visitor only their own
    png: tuple[bytes, ...] = ()  # the images' PNG files (`Result.png`), which History shows as they are
    png_sha256: tuple[str, ...] = ()  # their sha256 (`Result.png_sha256`): a History refresh hashes nothing
    seeds: tuple[int, ...] = ()  # each image's seed (`Result.image_seeds`); empty: `seed` is every image's

    @property
    def image_seeds(self) -> list[int]:
        """Each image's seed, in order."""
        return list(self.seeds) if len(self.seeds) == len(self.images) else [self.seed] * len(self.images)
