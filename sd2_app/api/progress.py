"""A run's progress: the pipeline's steps turned into the caller's `ProgressFn`, with Stop and live previews.

The pipeline calls `on_step(step, steps, latents)` after every step (`sd2_app.pipelines.loop`). `step_callback`
builds that function from a caller's progress callback and Stop: it checks Stop first (raising `Cancelled`),
then reports the step with, every `preview_every` steps, a cheap preview of the latents. `placed` puts a job's
steps inside a longer job's progress (an X/Y/Z plot's cells, the SD2 x4 hires route's three jobs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from sd2_app.api.results import ProgressFn
from sd2_app.api.timing import timed
from sd2_app.errors import Cancelled

if TYPE_CHECKING:
    from sd2_app.pipelines.loop import LatentProgressFn

PreviewFn = Callable[[Any], Image.Image | None]  # latents -> the live preview


def latent_preview(latents: Any) -> Image.Image | None:
    """The first image's preview at latent size (1/8 of the image): the job's thread pays a 4x3 product and a
    small copy; whoever shows it enlarges it (the UI's live preview, the A1111 progress route)."""
    from sd2_app.pipelines.preview import preview_images  # loads torch: the UI imports this module, and no torch

    return preview_images(latents[:1])[0]


def enlarged(preview: Image.Image, scale: int) -> Image.Image:
    """A latent-size preview `scale` times larger without smoothing: each latent pixel a square block."""
    if scale <= 1:
        return preview
    return preview.resize((preview.width * scale, preview.height * scale), Image.Resampling.NEAREST)


def placed(on_progress: ProgressFn | None, done_before: int = 0, total: int | None = None) -> ProgressFn | None:
    """`on_progress` for a job whose steps follow `done_before` others, out of `total` (None: its own count)."""
    if on_progress is None or (not done_before and total is None):
        return on_progress

    def report(done: int, steps: int, preview: Image.Image | None) -> None:
        on_progress(done_before + done, steps if total is None else total, preview)

    return report


def step_callback(
    on_progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
    timings: dict[str, float],
    preview: PreviewFn = latent_preview,
    preview_every: int = 1,
) -> LatentProgressFn:
    """The pipeline's `on_step(step, steps, latents)`: stop check first, then progress and a cheap preview.

    It reports the pipeline's own count of steps: the steps it really runs, e.g. int(N * strength) for
    img2img, which is fewer than the requested N. The previews' seconds add up in `timings["preview"]`.
    """

    def on_step(step: int, steps: int, latents: Any) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled
        if on_progress is None:
            return
        image = None
        if latents is not None and step < steps and step % preview_every == 0:
            with timed(timings, "preview"):
                image = preview(latents)
        on_progress(step, steps, image)

    return on_step
