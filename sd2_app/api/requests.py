"""The vocabulary shared by the UI, the CLI, the service and the pipelines: one typed request per task.

Requests are plain frozen dataclasses with the defaults a user of the app expects. They carry no
validation: `sd2_app.api.service.validate` checks them (the API can bypass every UI limit) and resolves the
seed, so the pipelines always receive a request that is complete and in range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class CompareRequest:
    """One text-to-image job run through several samplers with the same seed."""

    base: Txt2ImgRequest
    samplers: tuple[str, ...] = ("DPM++ 2M", "Euler a", "Euler", "DDIM", "UniPC", "DPM++ 2M SDE")


Request = Txt2ImgRequest | Img2ImgRequest | InpaintRequest | UpscaleRequest | DepthRequest | CompareRequest
