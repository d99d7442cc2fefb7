"""The hires fix with the "SD2 x4" upscaler: three model-manager jobs under one progress bar.

The first pass runs on the request's checkpoint, each decoded image goes through the x4 upscaler alone (the
manager brings that checkpoint in, offloading others as memory requires), and the second pass runs on the
request's checkpoint again (the txt2img pipeline, given a `HiresPassRequest`, runs pipelines/hires.py `hires_pass`,
which resizes the x4 output to the upscale size and crops its latents to the target). Each job holds the
manager's lock only while it runs, so no job ever holds two checkpoints' lock at once.

Stop in the second pass keeps its image so far (pipelines/hires.py); Stop before it keeps nothing.
The x4 stage uses the Upscale tab's defaults (DDIM, CFG 9, noise level 20) at the hires steps, with the
request's prompts and each image's own seed (api/requests.py, `numbered_seeds`), so an image of a batch is
upscaled as it is when made alone. Progress counts the x4 stage once per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from PIL import Image

from sd2_app.api.requests import HiresPassRequest, Txt2ImgRequest, UpscaleRequest, request_seeds
from sd2_app.api.results import ProgressFn
from sd2_app.api.upscaler_names import x4_checkpoint
from sd2_app.lora_tags import without_lora_tags

if TYPE_CHECKING:
    from sd2_app.api.service import Service  # the Service runs this route: it imports this module
    from sd2_app.pipelines.output import PipelineOutput


def x4_request(checked: Txt2ImgRequest, image: Image.Image | None, checkpoint: str,
               seed: int | None = None) -> UpscaleRequest:
    """What the x4 stage runs: a first-pass image, the request's prompts, the image's seed (default: the
    request's), the hires steps. The prompt's LoRA tags stay with the passes: the x4 stage is the hires fix's
    upscaler, which LoRAs leave alone as they leave A1111's upscalers (and a LoRA for the passes' model does not
    fit the x4 model)."""
    assert checked.hires is not None
    defaults = UpscaleRequest(prompt="", image=image).sampling
    steps = checked.hires.steps or checked.sampling.steps
    sampling = replace(defaults, steps=steps, seed=checked.sampling.seed if seed is None else seed)
    return UpscaleRequest(prompt=without_lora_tags(checked.prompt), negative_prompt=checked.negative_prompt,
                          image=image, checkpoint=checkpoint, sampling=sampling)


def run_hires_x4(service: Service, checked: Txt2ImgRequest, on_progress: ProgressFn | None,
                 should_stop: Callable[[], bool] | None, timings: dict[str, float]) -> PipelineOutput:
    """The three stages; returns the second pass's output with every stage's warnings."""
    upscaler = x4_checkpoint(service.catalog)
    assert upscaler is not None and checked.hires is not None, "validation checked both"
    first_steps = checked.sampling.steps
    x4 = x4_request(checked, None, upscaler)
    x4_steps = x4.sampling.steps * checked.sampling.batch_size
    total = first_steps + x4_steps + checked.hires.second_pass_steps(first_steps)
    # Stop before the second pass keeps nothing, as in the hires fix's first pass: those stages make no image so
    # far (`so_far=False`)
    first = service.run_task("txt2img", replace(checked, hires=None), timings, on_progress, should_stop,
                             done_before=0, total=total, so_far=False)
    upscaled = [service.run_task("upscale", x4_request(checked, image, upscaler, seed), timings, on_progress,
                                 should_stop, done_before=first_steps + index * x4.sampling.steps, total=total,
                                 so_far=False)
                for index, ((seed, _), image) in enumerate(zip(request_seeds(checked), first.images))]
    second = HiresPassRequest(base=checked, images=tuple(output.images[0] for output in upscaled),
                              first_size=(first.width, first.height))
    output = service.run_task("txt2img", second, timings, on_progress, should_stop,
                              done_before=first_steps + x4_steps, total=total)
    notes = list(dict.fromkeys([*first.warnings, *(w for stage in upscaled for w in stage.warnings)]))
    output.warnings = notes + [w for w in output.warnings if w not in notes]
    return output
