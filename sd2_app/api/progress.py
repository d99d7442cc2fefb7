"""A run's progress: the pipeline's steps turned into the caller's `ProgressFn`, with Stop and live previews.

The pipeline calls `on_step(step, steps, latents)` after every step (`sd2_app.pipelines.loop`). `StepCallback`
is that function from a caller's progress callback and Stop: it checks Stop first (raising `Cancelled`),
then reports the step with, every `preview_every` steps, a cheap preview of the latents. `placed` puts a job's
steps inside a longer job's progress (an X/Y/Z plot's cells, the SD2 x4 hires route's three jobs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.api.results import ProgressFn
from sd2_app.api.timing import timed
from sd2_app.errors import Cancelled
from sd2_app.pipelines.metadata import attach_parameters

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


def kept_so_far_message(step: int, steps: int) -> str:
    """What a run that Stop ended mid-sampling says (a warning of its result, in the info line)."""
    return f"Stopped at step {step}/{steps}; kept the image so far."


def mark_stopped(output: Any, step: int, steps: int) -> None:
    """A task's output that Stop ended after `step` of `steps` (its images decoded from that step's x0 estimate):
    each image's parameters text gets "Stopped at step: k" after its settings, so the PNG says it is not what the
    settings make (pasted back, they run all the steps), and the output says so (`stopped_at`, a warning)."""
    for image in output.images:
        text = image.info.get(keys.PARAMETERS_KEY)
        if text:
            attach_parameters(image, f"{text}, {keys.STOPPED_AT_STEP}: {step}")
    output.stopped_at = (step, steps)
    output.warnings = [*(getattr(output, "warnings", None) or []), kept_so_far_message(step, steps)]


def placed(on_progress: ProgressFn | None, done_before: int = 0, total: int | None = None) -> ProgressFn | None:
    """`on_progress` for a job whose steps follow `done_before` others, out of `total` (None: its own count)."""
    if on_progress is None or (not done_before and total is None):
        return on_progress

    def report(done: int, steps: int, preview: Image.Image | None) -> None:
        on_progress(done_before + done, steps if total is None else total, preview)

    return report


class StepCallback:
    """The pipeline's `on_step(step, steps, latents)`: stop check first, then progress and a cheap preview.

    It reports the pipeline's own count of steps: the steps it really runs, e.g. int(N * strength) for
    img2img, which is fewer than the requested N. The previews' seconds add up in `timings["preview"]`.
    `stopped_at` is (step, steps) of the step Stop ended the loop after (the loop then returns that step's x0
    estimate: `pipelines.loop.run_sampling`), None while it was not stopped.
    """

    def __init__(self, on_progress: ProgressFn | None, should_stop: Callable[[], bool] | None,
                 timings: dict[str, float], preview: PreviewFn = latent_preview, preview_every: int = 1) -> None:
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.timings = timings
        self.preview = preview
        self.preview_every = preview_every
        self.stopped_at: tuple[int, int] | None = None

    def __call__(self, step: int, steps: int, latents: Any) -> None:
        if self.should_stop is not None and self.should_stop():
            self.stopped_at = self.stopped_at or (step, steps)  # a later pass (the hires fix's) keeps the first
            raise Cancelled
        if self.on_progress is None:
            return
        image = None
        if latents is not None and step < steps and step % self.preview_every == 0:
            with timed(self.timings, "preview"):
                image = self.preview(latents)
        self.on_progress(step, steps, image)

    def marked(self, output: Any) -> Any:
        """The task's `output`, marked as the images so far (`mark_stopped`) when Stop ended its loop early."""
        if self.stopped_at is not None:
            mark_stopped(output, *self.stopped_at)
        return output

