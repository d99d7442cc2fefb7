"""The vocabulary shared by the UI, the CLI, the service and the pipelines: one typed request per task.

Requests are plain frozen dataclasses with the defaults a user of the app expects. They carry no
validation: `sd2_app.api.validation.validate` checks them (the API can bypass every UI limit) and resolves the
seed, so the pipelines always receive a request that is complete and in range. Each request names its
task (`Txt2ImgRequest.task == "txt2img"`); the defaults come from that task's row in `sd2_app.api.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from sd2_app.api.tasks import DEFAULT_CFG_SCALE, DEFAULT_SAMPLER, DEFAULT_STEPS, TASKS
from sd2_app.samplers.registry import AUTOMATIC


@dataclass(frozen=True)
class Sampling:
    """How to sample: shared by every task."""

    sampler: str = DEFAULT_SAMPLER  # a key of sd2_app.samplers.SAMPLERS
    steps: int = DEFAULT_STEPS
    schedule: str = AUTOMATIC  # A1111's "Schedule type" (sd2_app.samplers.registry.SCHEDULES), where offered
    cfg_scale: float = DEFAULT_CFG_SCALE  # classifier-free guidance weight; guidance runs only if `guidance_on`
    guidance_rescale: float = 0.0  # phi of "Common Diffusion Noise Schedules are Flawed" (0 = off)
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic DDIM); only ETA_SAMPLERS use it
    seed: int | None = None  # None: the service draws one and reports it
    batch_size: int = 1  # images per prompt (one UNet batch)
    batch_count: int = 1  # batches run one after another (A1111's "Batch count", n_iter): sd2_app/api/batch_count.py


def guidance_on(cfg_scale: float) -> bool:
    """Whether classifier-free guidance runs at `cfg_scale`: above 1 (diffusers pipeline_stable_diffusion.py,
    `do_classifier_free_guidance`). Without it the UNet sees the prompt's half of the batch only and the negative
    prompt is not read."""
    return cfg_scale > 1.0


ETA_SAMPLERS = ("DDIM",)  # the samplers whose step takes `Sampling.eta` (sd2_app.pipelines.sampling)


def task_sampling(task: str) -> Sampling:
    """The sampling defaults of `task`'s row in the task table."""
    spec = TASKS[task]
    return Sampling(sampler=spec.sampler, steps=spec.steps, cfg_scale=spec.cfg_scale)


def _sampling(task: str) -> Sampling:
    """A dataclass field whose default is `task_sampling(task)`."""
    return field(default_factory=lambda: task_sampling(task))


def _strength(task: str) -> float:
    strength = TASKS[task].strength
    assert strength is not None, f"{task} has no strength in the task table"
    return strength


MAX_SCHEDULE_STEPS = 1000  # the SD 2 schedulers' num_train_timesteps
LATENT_FACTOR = 8  # image pixels per latent pixel, per side (the SD 2 VAE's downsampling)
X4_UPSCALER = "SD2 x4"  # the hires upscaler that runs the x4 upscaler model (api/hires_x4.py)
LATENT_UPSCALERS = ("Latent", "Latent (nearest-exact)")  # the hires upscalers on the latents (A1111's names)
HIRES_UPSCALERS = (*LATENT_UPSCALERS, "Lanczos", X4_UPSCALER)  # A1111's names for the first three


@dataclass(frozen=True)
class HiresFix:
    """A1111's "Hires fix": generate at the request's size, upscale, then img2img at the target size.

    The second pass runs exactly its steps at the end of a longer schedule (`schedule_steps`) and draws its
    noise from fresh generators seeded with the images' seeds (A1111 does both), so it equals image-to-image
    on the upscaled first image with that seed and that schedule (where the strength cut runs those steps).
    """

    upscaler: str = "Latent"  # one of HIRES_UPSCALERS: latents bilinear / nearest-exact, pixels, the x4 model
    scale: float = 2.0  # target = first-pass size x scale (rounded down to LATENT_FACTOR), unless width/height are given
    width: int | None = None  # explicit target size (A1111's "Resize width to"); None or 0: from `scale`
    height: int | None = None
    steps: int | None = None  # steps the second pass runs; None or 0: the first pass's steps
    denoising_strength: float = 0.5
    sampler: str | None = None  # None or "": the first pass's sampler
    schedule: str = ""  # A1111's "Hires schedule type" (one of SCHEDULES); "": the first pass's
    prompt: str = ""  # A1111's "Hires prompt": the second pass's own prompt; "": the first pass's
    negative_prompt: str = ""  # its "Hires negative prompt"; "": the first pass's

    def prompts(self, prompt: str, negative_prompt: str) -> tuple[str, str]:
        """The (prompt, negative prompt) the second pass reads: its own where given, else the first pass's (A1111's
        modules/processing.py, StableDiffusionProcessingTxt2Img.init: an empty hr_prompt is the prompt)."""
        return self.prompt or prompt, self.negative_prompt or negative_prompt

    def sampler_and_schedule(self, first_pass: Sampling) -> tuple[str, str]:
        """The (sampler, schedule type) the second pass runs: its own where given, else the first pass's (A1111's
        modules/processing.py, StableDiffusionProcessingTxt2Img.init: hr_scheduler None is the scheduler)."""
        return self.sampler or first_pass.sampler, self.schedule or first_pass.schedule

    def upscale_size(self, width: int, height: int) -> tuple[int, int]:
        """What a first pass of `width` x `height` is upscaled to before the second pass: A1111's rule
        (modules/processing.py, `calculate_target_resolution`). `scale` times the size, rounded down; one explicit
        side and the other in proportion, rounded down; both sides: the first pass's shape scaled to cover them,
        which the second pass then crops to the target (`target`)."""
        if not self.width and not self.height:
            return int(width * self.scale), int(height * self.scale)
        if self.width and (not self.height or width / height < self.width / self.height):
            return self.width, self.width * height // width
        return self.height * width // height, self.height  # type: ignore[operator]

    def target(self, width: int, height: int) -> tuple[int, int]:
        """The second pass's (and the result's) size: `upscale_size` in whole latents (LATENT_FACTOR pixels), less
        A1111's crop of the part beyond an explicit width and height (whole latents too, `crop_latents`)."""
        cover = self.upscale_size(width, height)
        asked = (self.width, self.height) if self.width and self.height else cover
        f = LATENT_FACTOR
        return tuple(max(f, f * (side // f - (side - want) // f)) for side, want in zip(cover, asked))  # type: ignore[return-value]

    def second_pass_steps(self, first_steps: int) -> int:
        """The sampler steps the second pass runs: exactly its hires steps (or the first pass's), as A1111 runs
        them; none at strength 0."""
        return (self.steps or first_steps) if self.denoising_strength > 0 else 0

    def schedule_steps(self, first_steps: int) -> int:
        """The length of the schedule whose last `second_pass_steps` the second pass runs: A1111's
        int(steps / min(strength, 0.999)) (modules/sd_samplers_common.py, `setup_img2img_steps`), at most
        MAX_SCHEDULE_STEPS (a strength near 0 would ask for a schedule finer than the model's own timesteps)."""
        steps = self.second_pass_steps(first_steps)
        if steps == 0:
            return 0
        return max(steps, min(MAX_SCHEDULE_STEPS, int(steps / min(self.denoising_strength, 0.999))))


@dataclass(frozen=True)
class SeedExtras:
    """A1111's "Extra" seed options: a variation seed slerped into the start noise, and seed resize."""

    variation_seed: int | None = None  # None or -1 with strength > 0: the service draws one and reports it
    variation_strength: float = 0.0  # 0 = the seed's noise, 1 = the variation seed's noise
    resize_from: tuple[int, int] | None = None  # (width, height) the noise is drawn at; None: the image size


def numbered_seeds(seed: int, variation_seed: int | None, count: int) -> list[tuple[int, int | None]]:
    """(seed, variation seed) of each of `count` images from a first image's pair, as A1111 numbers them
    (modules/processing.py, `process_images_inner`: `all_seeds` and `all_subseeds`): image x has seed + x; with a
    variation seed in use (`variation_seed` not None) every image keeps the seed and image x has variation seed
    + x. Each image is drawn from its own seeds (pipelines/sampling.py, `noise_source`), so any image of a batch
    is remade alone, or first in a batch, from its pair."""
    if variation_seed is None:
        return [(seed + index, None) for index in range(count)]
    return [(seed, variation) for variation in numbered_variation_seeds(variation_seed, count)]


def numbered_variation_seeds(variation_seed: int, count: int) -> list[int]:
    """The variation seeds of `count` images with a variation seed in use (`numbered_seeds`): image x's is
    `variation_seed` + x."""
    return [variation_seed + index for index in range(count)]


def request_seeds(request: Any, count: int | None = None) -> list[tuple[int, int | None]]:
    """`numbered_seeds` of a validated request's images (its seed resolved; the variation seed counts only when
    its strength is above 0), `count` of them (default: its images per prompt)."""
    sampling = request.sampling
    extras = getattr(request, "seed_extras", None)
    variation = extras.variation_seed if extras is not None and extras.variation_strength > 0 else None
    return numbered_seeds(sampling.seed, variation, sampling.batch_size if count is None else count)


@dataclass(frozen=True)
class Txt2ImgRequest:
    task: ClassVar[str] = "txt2img"

    prompt: str
    negative_prompt: str = ""
    checkpoint: str = TASKS["txt2img"].checkpoint  # a key of sd2_app.checkpoints.catalog.REGISTRY
    width: int | None = None  # None: the checkpoint's native resolution
    height: int | None = None
    sampling: Sampling = _sampling("txt2img")
    hires: HiresFix | None = None  # None: off
    seed_extras: SeedExtras = field(default_factory=SeedExtras)
    tiling: bool = False  # convolutions pad circularly: the image tiles seamlessly


@dataclass(frozen=True)
class HiresPassRequest:
    """Internal (never validated from outside): a hires fix's second pass on images the x4 model upscaled."""

    base: Txt2ImgRequest  # the validated request, hires set
    images: tuple[Image.Image, ...]  # the upscaled first-pass images, one per batch row
    first_size: tuple[int, int]  # (width, height) of the first pass

    @property
    def checkpoint(self) -> str:
        return self.base.checkpoint

    @property
    def prompt(self) -> str:  # whose LoRA tags the pass runs with (Service.use_checkpoint)
        return self.base.prompt


@dataclass(frozen=True)
class Img2ImgRequest:
    task: ClassVar[str] = "img2img"

    prompt: str
    image: Image.Image
    negative_prompt: str = ""
    checkpoint: str = TASKS["img2img"].checkpoint
    strength: float = _strength("img2img")  # 1 = ignore the image's content, 0 = return it unchanged
    width: int | None = None  # None: the image's size, floored to a multiple of 8
    height: int | None = None
    sampling: Sampling = _sampling("img2img")
    seed_extras: SeedExtras = field(default_factory=SeedExtras)  # the variation seed (no seed resize)
    tiling: bool = False  # convolutions pad circularly: the image tiles seamlessly


# What the masked area starts from when strength < 1: A1111's "Masked content" choices, in its order (the A1111
# API's `inpainting_fill` is the index). "fill": the area painted from the pixels around it (pipelines/mask_fill.py);
# "original": the image as it is; "latent noise" / "latent nothing": the image encoded, then the area's start
# latents replaced by unit noise / zeros (A1111 modules/processing.py, StableDiffusionProcessingImg2Img.init).
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
# Which part of the mask is repainted: A1111's "Mask mode" choices, in its order (the A1111 API's
# `inpainting_mask_invert` is the index): the white part, or the rest (the mask inverted after it is binarised,
# before the blur: modules/processing.py, StableDiffusionProcessingImg2Img.init).
MASK_MODES = ("Inpaint masked", "Inpaint not masked")


@dataclass(frozen=True)
class InpaintRequest:
    task: ClassVar[str] = "inpaint"

    prompt: str
    image: Image.Image
    mask: Image.Image  # white = repaint, black = keep
    negative_prompt: str = ""
    checkpoint: str = TASKS["inpaint"].checkpoint
    strength: float = _strength("inpaint")
    mask_blur: int = 4  # pixels of feathering for the paste-back edge
    only_masked: bool = False  # crop around the mask, work at the model's resolution, paste back
    only_masked_padding: int = 32  # pixels of context around the mask's box in only-masked mode
    keep_unmasked: bool = True  # paste the input's pixels back outside the mask (diffusers does not)
    masked_content: str = "original"  # one of MASKED_CONTENT: what the masked area starts from (strength < 1)
    sampling: Sampling = _sampling("inpaint")
    mask_mode: str = MASK_MODES[0]  # one of MASK_MODES: repaint the mask's white part, or the rest


@dataclass(frozen=True)
class UpscaleRequest:
    task: ClassVar[str] = "upscale"

    prompt: str
    image: Image.Image
    negative_prompt: str = ""
    checkpoint: str = TASKS["upscale"].checkpoint
    noise_level: int = 20  # 0..350: noise added to the low-res input; higher lets the model invent more
    tile_size: int = 128  # latent/low-res pixels per tile side; larger inputs are tiled with overlap
    sampling: Sampling = _sampling("upscale")


@dataclass(frozen=True)
class DepthRequest:
    task: ClassVar[str] = "depth"

    prompt: str
    image: Image.Image
    negative_prompt: str = ""
    checkpoint: str = TASKS["depth"].checkpoint
    depth_map: Image.Image | None = None  # grayscale, white = near; None: estimated with DPT
    strength: float = _strength("depth")
    sampling: Sampling = _sampling("depth")


OUTPAINT_FILLS = {  # how outpainting pre-fills the added strips: key -> what the UI calls it
    "edge": "edge-extend + noise",  # the border pixels repeated outwards, plus a little seeded noise
    "blur": "blurred",  # the image's colours nearby, blurred into the strips (pipelines/mask_fill.py)
    "solid": "solid colour",  # the image's mean colour
}
OUTPAINT_MARGIN = 128
"""Pixels a side is extended by when the caller leaves it out (the Outpaint tab's sliders start there): the
default of A1111's outpainting scripts (scripts/outpainting_mk_2.py and poor_mans_outpainting.py, "Pixels to
expand" 128 on every side). A side to keep as it is takes 0."""


@dataclass(frozen=True)
class OutpaintRequest:
    """Extend the canvas by whole multiples of 8 pixels on any side and let the inpainting model fill it."""

    task: ClassVar[str] = "outpaint"

    prompt: str
    image: Image.Image
    negative_prompt: str = ""
    checkpoint: str = TASKS["outpaint"].checkpoint
    left: int = OUTPAINT_MARGIN  # pixels added on each side (multiples of 8; 0 keeps that side)
    right: int = OUTPAINT_MARGIN
    up: int = OUTPAINT_MARGIN
    down: int = OUTPAINT_MARGIN
    fill: str = "edge"  # how the new area starts: a key of OUTPAINT_FILLS
    mask_blur: int = 8  # pixels of feathering from the seam into the new area
    strength: float = _strength("outpaint")  # below 1 the fill is the starting image of the new area
    keep_original: bool = True  # paste the input's pixels back unchanged
    sampling: Sampling = _sampling("outpaint")


@dataclass(frozen=True)
class PlotAxis:
    """One axis of an X/Y/Z plot: what varies (a key of sd2_app.api.plot_axes.AXES) and its values.

    `values` is the text a user types (`20, 30, 40`, `10-40 (+10)`, `1-2 [5]`) or a sequence of values (the
    UI's multi-select for samplers and checkpoints; JSON lists through the API).
    """

    kind: str
    values: str | tuple[Any, ...] = ""


@dataclass(frozen=True)
class XYZPlotRequest:
    """A grid of runs of one request: each cell changes the base by one value per axis (A1111's X/Y/Z plot).

    The base is a text-to-image request, or an image-to-image one when an init image is given. Every cell
    uses the base's seed unless seed is an axis; X varies along a row, Y down a column, one grid per Z value.
    A1111's two options of the script (scripts/xyz_grid.py, `no_fixed_seeds` and `draw_legend`):
    `no_fixed_seeds` ("Keep -1 for seeds") keeps a random seed (-1) random in each cell, where otherwise it is
    drawn once for the whole plot (a -1 on a seed axis once per value); `draw_legend` off draws the grids without
    their axis labels and titles; with a Z axis the grids of its values come side by side in one image, and
    `include_sub_grids` adds each alone; `margin_size` is the "Grid margins (px)" between cells.
    """

    task: ClassVar[str] = "xyz_plot"

    base: Txt2ImgRequest | Img2ImgRequest
    x: PlotAxis
    y: PlotAxis | None = None
    z: PlotAxis | None = None
    no_fixed_seeds: bool = False
    draw_legend: bool = True
    include_sub_grids: bool = False
    margin_size: int = 0

    @property
    def checkpoint(self) -> str:
        """The checkpoint every cell runs on (the base's; a checkpoint axis changes it per cell)."""
        return self.base.checkpoint


TaskRequest = (Txt2ImgRequest | Img2ImgRequest | InpaintRequest | OutpaintRequest | UpscaleRequest
               | DepthRequest)  # one pipeline run
Request = TaskRequest | XYZPlotRequest

REQUEST_TYPES: dict[str, type[TaskRequest]] = {
    cls.task: cls
    for cls in (Txt2ImgRequest, Img2ImgRequest, InpaintRequest, OutpaintRequest, UpscaleRequest, DepthRequest)
}
