"""Tiny checkpoints for the pipeline tests: our Components and diffusers' pipeline from the same folder.

diffusers is the reference oracle only (tests); both sides read the exact same files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sd2_app.checkpoints.components import Components

# diffusers scheduler class and extra config per sampler name, as used by the parity tests.
REFERENCE_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "Euler Exponential": ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
    "DPM++ 3M SDE Exponential": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                                                 "use_exponential_sigmas": True}),
    "UniPC Beta": ("UniPCMultistepScheduler", {"use_beta_sigmas": True}),
    # A1111's schedule types that diffusers has no switch for: its Euler given our sigmas (`sigmas=`)
    "Euler SGM Uniform": ("EulerDiscreteScheduler", {}),
    "Euler Align Your Steps": ("EulerDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
}

# diffusers' pipeline class of each tiny checkpoint (its model_index.json names the same class)
PIPELINES = {
    "sd2-base": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sd21": "StableDiffusionPipeline",
    "sd2-inpainting": "StableDiffusionInpaintPipeline",
    "sd2-depth": "StableDiffusionDepth2ImgPipeline",
    "x4-upscaler": "StableDiffusionUpscalePipeline",
}


def tiny_dir() -> Path:
    """Where the tiny repos are cached between runs (ensure_tiny_repos rewrites stale ones)."""
    default = Path(tempfile.gettempdir()) / f"sd2-app-tiny-{os.getuid()}"
    return Path(os.environ.get("SD2_TINY_DIR", default))


def tiny_repo(kind: str) -> Path:
    from sd2_app.testing.tiny import ensure_tiny_repos

    return ensure_tiny_repos(tiny_dir(), kinds=(kind,))[kind]


def load_components(kind: str, folder: Path | None = None) -> Components:
    """Our side: every component of a tiny repo on CPU in fp32."""
    from sd2_app import loading

    folder = tiny_repo(kind) if folder is None else folder
    device, dtype = torch.device("cpu"), torch.float32
    index = loading.read_model_index(folder)
    extras: dict[str, Any] = {}
    if kind == "x4-upscaler":
        extras["low_res_scheduler_config"] = loading.load_scheduler_config(folder, "low_res_scheduler")
        extras["max_noise_level"] = int(index.get("max_noise_level", 350))
    if kind == "sd2-depth":
        extras["depth_estimator"], extras["depth_processor"] = loading.load_depth_estimator(folder, device, dtype)
    return Components(
        key=kind,
        repo=str(folder),
        model_hash="",
        unet=loading.load_unet(folder, device, dtype),
        vae=loading.load_vae(folder, device, dtype),
        text_encoder=loading.load_text_encoder(folder, device, dtype),
        tokenizer=loading.load_tokenizer(folder),
        scheduler_config=loading.load_scheduler_config(folder),
        device=device,
        dtype=dtype,
        **extras,
    )


def reference_pipeline(kind: str, sampler: str, *, img2img: bool = False) -> Any:
    """diffusers' pipeline for the same tiny folder, with the scheduler matching `sampler`."""
    import diffusers

    folder = tiny_repo(kind)
    pipeline_cls = getattr(diffusers, "StableDiffusionImg2ImgPipeline" if img2img else PIPELINES[kind])
    kwargs: dict[str, Any] = {}
    if kind in ("sd2-base", "sd2", "sd21", "sd2-inpainting"):
        kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    # Our loader prefers the fp16 variant files (cast to fp32); read the same files on both sides.
    pipe = pipeline_cls.from_pretrained(folder, torch_dtype=torch.float32, variant="fp16", **kwargs)
    class_name, extra = REFERENCE_SCHEDULERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, deterministic RGB picture (gradients plus a disc) of the given size."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / max(width, 1) * 6.0 + seed)
    g = 0.5 + 0.5 * np.cos(y / max(height, 1) * 5.0 - seed)
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2).astype(np.float32)
    b = 0.3 + 0.6 * disc
    array = (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


def max_pixel_diff(ours: list[Image.Image], reference: np.ndarray) -> float:
    """Largest |difference| in [0, 1] units between our PIL images and diffusers' output_type="np" array."""
    array = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in ours])
    return float(np.abs(array - np.round(reference * 255) / 255).max())


def reference_run(pipe: Any, seed: int, **kwargs: Any) -> tuple[torch.Tensor, np.ndarray]:
    """diffusers' final latents and its np images for one call, each run with a fresh seeded CPU generator.

    `num_images_per_prompt` n > 1: diffusers' n single-image calls at seed, seed + 1, ..., concatenated, since
    each image of our batch is drawn from its own seed (sd2_app/api/requests.py, `numbered_seeds`)."""
    count = kwargs.pop("num_images_per_prompt", 1)
    if count > 1:
        runs = [reference_run(pipe, seed + index, **kwargs) for index in range(count)]
        return torch.cat([latents for latents, _ in runs]), np.concatenate([images for _, images in runs])
    latents = pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images
    images = pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images
    return latents, images


def latent_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |difference| of the final latents, relative to their scale when that exceeds 1."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float((ours - reference).abs().max() / max(1.0, float(reference.abs().max())))


PIXEL_TOLERANCE = 1.0 / 255 + 1e-6  # one 8-bit level: a rounding flip at most
LATENT_TOLERANCE = 1e-4


def assert_matches_reference(ours: Any, reference: tuple[torch.Tensor, np.ndarray]) -> None:
    """The parity check: our final latents (a PipelineOutput's) within LATENT_TOLERANCE of diffusers', relative
    to their scale, and our images within one 8-bit level of its images (`reference` as `reference_run` gives)."""
    ref_latents, ref_images = reference
    latents = latent_diff(ours.latents, ref_latents)
    assert latents < LATENT_TOLERANCE, f"final latents differ by {latents:.3g} (tolerance {LATENT_TOLERANCE})"
    pixels = max_pixel_diff(ours.images, ref_images)
    assert pixels <= PIXEL_TOLERANCE, f"images differ by {pixels:.4g} (tolerance {PIXEL_TOLERANCE:.4g})"


class ComponentCache:
    """Loads each tiny checkpoint once per test session (the `components` fixture in conftest.py)."""

    def __init__(self) -> None:
        self._components: dict[str, Components] = {}

    def __call__(self, kind: str) -> Components:
        if kind not in self._components:
            self._components[kind] = load_components(kind)
        return self._components[kind]


def count_plans(patch: Any) -> list[list[str]]:
    """From now on (until `patch`, a pytest MonkeyPatch, is undone), the texts of every prompt plan computed: one
    `prompt_plan.tokenize_prompts` call per `plan_prompts`, whoever plans (validation, the pipeline)."""
    from sd2_app.pipelines import prompt_plan

    planned: list[list[str]] = []
    tokenize = prompt_plan.tokenize_prompts

    def counted(tokenizer: Any, texts: Any, embeddings: Any = None) -> Any:
        planned.append(list(texts))
        return tokenize(tokenizer, texts, embeddings)

    patch.setattr(prompt_plan, "tokenize_prompts", counted)
    return planned
