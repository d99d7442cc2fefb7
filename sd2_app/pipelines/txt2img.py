"""Text-to-image: `generate`'s latents decoded (pipelines/generate.py: pure noise at the schedule's first sigma,
then the shared loop, after diffusers pipeline_stable_diffusion.py, __call__).

A request may add A1111's seed extras (pipelines/seeds.py), seamless tiling (pipelines/seamless.py) and the
hires fix (pipelines/hires.py, which runs `generate` as its first pass); this task sends a hires request there.
"""

from __future__ import annotations

import torch

from sd2_app.api.requests import HiresPassRequest, Txt2ImgRequest
from sd2_app.checkpoints.components import Components
from sd2_app.pipelines.generate import start_latents, txt2img_settings
from sd2_app.pipelines.hires import hires_fix, hires_pass
from sd2_app.pipelines.images import postprocess
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.output import PipelineOutput, label_images
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.sampling import PreparedRun
from sd2_app.pipelines.seamless import tiled_components
from sd2_app.pipelines.vae_io import decode_in


def prepare_txt2img(components: Components, request: Txt2ImgRequest, mode: RunMode = NORMAL) -> PreparedRun:
    """A plain text-to-image run (no hires fix) up to its loop; its finish decodes and labels the images.

    A tiled request's run holds its own circular view of the UNet and VAE (pipelines/seamless.py).
    """
    job, start, width, height, warnings = start_latents(tiled_components(components, request.tiling), request, mode)

    def finish(latents: torch.Tensor) -> PipelineOutput:
        images = postprocess(decode_in(mode, job.components.vae, latents))
        label_images(images, request.prompt, request.negative_prompt,
                     txt2img_settings(request, components, width, height, job))
        return PipelineOutput(images=images, latents=latents, width=width, height=height, warnings=warnings)

    return PreparedRun(job, start, finish)


@torch.inference_mode()
def txt2img(
    components: Components, request: Txt2ImgRequest | HiresPassRequest, on_step: LatentProgressFn | None = None,
    mode: RunMode = NORMAL,
) -> PipelineOutput:
    """Generate `batch_size` images from a prompt; one generator seeded with the request's seed."""
    if isinstance(request, HiresPassRequest):  # the SD2 x4 hires route's second pass (api/hires_x4.py)
        return hires_pass(components, request, on_step, mode)
    if request.hires is not None:
        return hires_fix(components, request, on_step, mode)
    return prepare_txt2img(components, request, mode).complete(on_step)
