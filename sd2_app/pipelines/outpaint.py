"""Outpainting: a larger canvas around the image, the added strips filled and masked, then inpainting.

The approach of A1111's "poor man's outpainting" and "outpainting mk2" scripts (scripts/poor_mans_outpainting.py,
scripts/outpainting_mk_2.py): the new area is pre-filled, masked, and repainted by the inpainting pipeline,
whose inward-feathered paste-back (sd2_app.pipelines.masks.paste_back) leaves every original pixel exactly as
it was while the generated strip fades in over `mask_blur` pixels from the seam.

SD2's inpainting UNet sees the masked image with the masked part blanked (diffusers
pipeline_stable_diffusion_inpaint.py, prepare_mask_latents), so at strength 1
the model never sees the fill: it only matters as the starting image when strength < 1 and as what the
feathered edge of the new strip blends with. Edge extension continues the border's colours into the strip,
so the blend at the seam is smooth; its noise gives a strength < 1 run texture to work from.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.api.requests import InpaintRequest, OutpaintRequest
from sd2_app.checkpoints.components import Components
from sd2_app.pipelines.inpaint import inpaint
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.mask_fill import fill_from_surroundings
from sd2_app.pipelines.output import PipelineOutput
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.sampling import changed

EDGE_NOISE_STD = 12.0  # grey levels of the noise added to the edge fill


def extend_canvas(
    image: Image.Image, left: int, right: int, up: int, down: int, fill: str, seed: int,
    device: torch.device | str = "cpu",
) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image placed at (left, up) on a canvas grown by the four margins; the mask is
    white exactly on the added strips. `fill` (a key of OUTPAINT_FILLS) paints the strips; `seed` draws the noise;
    the "blur" fill is computed on `device` (the pipeline's)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    pad = ((up, down), (left, right), (0, 0))
    mask = np.ones((height + up + down, width + left + right), dtype=bool)
    mask[up : up + height, left : left + width] = False
    if fill == "solid":
        canvas = np.broadcast_to(rgb.mean(axis=(0, 1)), mask.shape + (3,)).copy()
    elif fill == "blur":  # the inpainting "fill" (pipelines/mask_fill.py): blurred colours of the image nearby
        pixels, hole = torch.from_numpy(np.pad(rgb, pad)).to(device), torch.from_numpy(mask).to(device)
        canvas = fill_from_surroundings(pixels, hole).cpu().numpy()
    else:
        noise = np.random.default_rng(seed).normal(0.0, EDGE_NOISE_STD, mask.shape + (3,))
        canvas = np.pad(rgb, pad, mode="edge") + noise * mask[..., None]
    canvas[~mask] = rgb.reshape(-1, 3)  # the known region exactly as it was (row-major, like the mask)
    canvas_image = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8), mode="RGB")
    return canvas_image, Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def outpaint(
    components: Components, request: OutpaintRequest, on_step: LatentProgressFn | None = None, mode: RunMode = NORMAL
) -> PipelineOutput:
    """Extend, fill, inpaint the strips; the output's mask is the added strips (before feathering)."""
    canvas, mask = extend_canvas(request.image, request.left, request.right, request.up, request.down,
                                 request.fill, int(request.sampling.seed or 0), components.device)
    inner = InpaintRequest(
        prompt=request.prompt, image=canvas, mask=mask, negative_prompt=request.negative_prompt,
        checkpoint=request.checkpoint, strength=request.strength, mask_blur=request.mask_blur,
        keep_unmasked=request.keep_original, sampling=request.sampling,
    )
    settings = {key: getattr(request, side) for side, key in keys.OUTPAINT_MARGINS.items()}
    settings[keys.OUTPAINT_FILL] = request.fill
    return changed(lambda: inpaint(components, inner, on_step, mode, extra_settings=settings),
                   lambda output: replace(output, mask_image=mask))
