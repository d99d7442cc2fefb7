"""A run's progress: the pipeline's steps turned into the caller's `ProgressFn`, with Stop and live previews.

The pipeline calls `on_step(step, steps, latents)` after every step (`sd2_app.pipelines.loop`). `step_callback`
builds that function from a caller's progress callback and Stop: it checks Stop first (raising `Cancelled`),
then reports the step with, every `preview_every` steps, a cheap preview of the latents. `placed` puts a job's
steps inside a longer job's progress (an X/Y/Z plot's cells, the SD2 x4 hires route's three jobs).
`mark_stopped` marks the image so far that a run Stop ended mid-sampling keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.api.requests import Request
from sd2_app.api.results import ProgressFn, Result, result_of
from sd2_app.api.timing import timed
from sd2_app.errors import Cancelled
from sd2_app.pipelines.metadata import attach_parameters

if TYPE_CHECKING:
    from sd2_app.pipelines.loop import LatentProgressFn
    from sd2_app.pipelines.output import PipelineOutput

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
    *,
    done_before: int = 0,
    total: int | None = None,
    so_far: bool = True,
) -> LatentProgressFn:
    """The pipeline's `on_step(step, steps, latents)`: stop check first, then progress and a cheap preview.

    It reports the pipeline's own count of steps: the steps it really runs, e.g. int(N * strength) for
    img2img, which is fewer than the requested N. The previews' seconds add up in `timings["preview"]`.
    Stop raises `Cancelled` at the step it came after, counted as `placed` counts the caller's progress
    (`done_before`, `total`): its `at`, which `mark_stopped` writes on the image so far; `so_far` False makes
    none (`Cancelled.so_far`).
    """
    reported = placed(on_progress, done_before, total)

    def on_step(step: int, steps: int, latents: Any) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled(at=(done_before + step, steps if total is None else total), so_far=so_far)
        if reported is None:
            return
        image = None
        if latents is not None and step < steps and step % preview_every == 0:
            with timed(timings, "preview"):
                image = preview(latents)
        reported(step, steps, image)

    return on_step


def kept_so_far_message(step: int, steps: int) -> str:
    """The warning of a result that Stop ended mid-sampling (its info line says it)."""
    return f"Stopped at step {step}/{steps}; kept the image so far."


def said_skipped(warnings: list[str], at: tuple[int, int], said: str) -> list[str]:
    """The warnings of an image so far that Skip, not Stop, ended at `at` (step, steps): Stop's warning
    (`kept_so_far_message`) replaced by Skip's, `said`."""
    return [*(w for w in warnings if w != kept_so_far_message(*at)), said]


def mark_stopped(output: PipelineOutput, step: int, steps: int) -> PipelineOutput:
    """A task's `output` made of the x0 estimate of `step` of `steps` (Stop ended its loop there), marked so: each
    image's parameters text gets "Stopped at step: k" after its settings (pasted back, those run every step),
    and a warning says it (`kept_so_far_message`)."""
    for image in output.images:
        text = image.info.get(keys.PARAMETERS_KEY)
        if text:
            attach_parameters(image, f"{text}, {keys.STOPPED_AT_STEP}: {step}")
    output.warnings = [*output.warnings, kept_so_far_message(step, steps)]
    return output


def with_result(stop: Cancelled, task: str, checked: Request, timings: dict[str, float]) -> Cancelled:
    """`stop` carrying `result`, the unkept Result of the image so far it carries (`output`, marked by
    `mark_stopped`), where it carries one; no device tensor or second copy rides on (or is pickled with) it."""
    if stop.output is not None and stop.at is not None:
        stop.result = result_of(task, checked, mark_stopped(stop.output, *stop.at), timings, stop.at)
    stop.output = stop.latents = None
    return stop


def kept_so_far(run: Callable[[], Result], keep_stopped: Callable[[], bool] | None) -> Result:
    """`run()`; where Stop ended it after a sampling step and `keep_stopped()` says so (a visitor's Stop, A1111's
    /interrupt; not the app's close), the image so far its `Cancelled` carries (`with_result`) instead."""
    try:
        return run()
    except Cancelled as stop:
        if stop.result is None or keep_stopped is None or not keep_stopped():
            raise
        return stop.result
