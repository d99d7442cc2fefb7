"""The vocabulary shared by the UI, the CLI, the service and the pipelines: one typed request per task.

Requests are plain frozen dataclasses with the defaults a user of the app expects. They carry no
validation: `sd2_app.api.service.validate` checks them (the API can bypass every UI limit) and resolves the
seed, so the pipelines always receive a request that is complete and in range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class Sampling:
    """How to sample: shared by every task."""

    sampler: str = "DPM++ 2M"  # a key of sd2_app.samplers.SAMPLERS
    steps: int = 25
    use_karras: bool = False  # Karras sigma spacing, where the sampler offers it
    cfg_scale: float = 7.5  # classifier-free guidance weight; <= 1 disables guidance
    guidance_rescale: float = 0.0  # phi of "Common Diffusion Noise Schedules are Flawed" (0 = off)
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic DDIM)
    seed: int | None = None  # None: the service draws one and reports it
    batch_size: int = 1  # images per prompt


@dataclass(frozen=True)
class Txt2ImgRequest:
    prompt: str
    negative_prompt: str = ""
    checkpoint: str = "sd21-base"  # a key of sd2_app.checkpoints.catalog.REGISTRY
    width: int | None = None  # None: the checkpoint's native resolution
    height: int | None = None
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Img2ImgRequest:
    prompt: str
    image: Image.Image
    negative_prompt: str = ""
    checkpoint: str = "sd21-base"
    strength: float = 0.75  # 1 = ignore the image's content, 0 = return it unchanged
    width: int | None = None  # None: the image's size, floored to a multiple of 8
    height: int | None = None
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class InpaintRequest:
    prompt: str
    image: Image.Image
    mask: Image.Image  # white = repaint, black = keep
    negative_prompt: str = ""
    checkpoint: str = "sd2-inpainting"
    strength: float = 1.0
    mask_blur: int = 4  # pixels of feathering for the paste-back edge
    only_masked: bool = False  # crop around the mask, work at the model's resolution, paste back
    only_masked_padding: int = 32  # pixels of context around the mask's box in only-masked mode
    keep_unmasked: bool = True  # paste the input's pixels back outside the mask (diffusers does not)
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class UpscaleRequest:
    prompt: str
    image: Image.Image
    negative_prompt: str = ""
    checkpoint: str = "x4-upscaler"
    noise_level: int = 20  # 0..350: noise added to the low-res input; higher lets the model invent more
    tile_size: int = 128  # latent/low-res pixels per tile side; larger inputs are tiled with overlap
    sampling: Sampling = field(default_factory=lambda: Sampling(sampler="DDIM", steps=50, cfg_scale=9.0))


@dataclass(frozen=True)
class DepthRequest:
    prompt: str
    image: Image.Image
    negative_prompt: str = ""
    checkpoint: str = "sd2-depth"
    depth_map: Image.Image | None = None  # grayscale, white = near; None: estimated with DPT
    strength: float = 0.7
    sampling: Sampling = field(default_factory=Sampling)


OUTPAINT_FILLS = {  # how outpainting pre-fills the added strips: key -> what the UI calls it
    "edge": "edge-extend + noise",  # the border pixels repeated outwards, plus a little seeded noise
    "blur": "blurred",  # the edge extension heavily blurred: a smooth field of the border's colours
    "solid": "solid colour",  # the image's mean colour
}


@dataclass(frozen=True)
class OutpaintRequest:
    """Extend the canvas by whole multiples of 8 pixels on any side and let the inpainting model fill it."""

    prompt: str
    image: Image.Image
    negative_prompt: str = ""
    checkpoint: str = "sd2-inpainting"
    left: int = 0  # pixels added on each side (multiples of 8)
    right: int = 0
    up: int = 0
    down: int = 0
    fill: str = "edge"  # how the new area starts: a key of OUTPAINT_FILLS
    mask_blur: int = 8  # pixels of feathering from the seam into the new area
    strength: float = 1.0  # below 1 the fill is the starting image of the new area
    keep_original: bool = True  # paste the input's pixels back unchanged
    sampling: Sampling = field(default_factory=Sampling)


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
    """

    base: Txt2ImgRequest | Img2ImgRequest
    x: PlotAxis
    y: PlotAxis | None = None
    z: PlotAxis | None = None


Request = (Txt2ImgRequest | Img2ImgRequest | InpaintRequest | OutpaintRequest | UpscaleRequest | DepthRequest
           | XYZPlotRequest)
