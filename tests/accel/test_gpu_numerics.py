"""fp16 on the GPU, through the app's default path (manager + accelerator: CUDA graphs, fused ops).

Our fp16 images may differ from diffusers' fp32 images by no more than diffusers' own fp16 run does (plus
one 8-bit level), for the same tiny weights, seed and settings. Skipped without a CUDA GPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sd2_app.accel import AccelOptions
from sd2_app.manager import ModelManager
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.txt2img import txt2img
from sd2_app.checkpoints.catalog import REGISTRY
from sd2_app.api.requests import Img2ImgRequest, Sampling, Txt2ImgRequest
from tests.pipeline_fixtures import sample_image, tiny_repo

pytestmark = pytest.mark.gpu


def _reference(kind: str, dtype: torch.dtype, *, img2img_pipe: bool = False):
    import diffusers

    name = "StableDiffusionImg2ImgPipeline" if img2img_pipe else "StableDiffusionPipeline"
    pipe = getattr(diffusers, name).from_pretrained(tiny_repo(kind), torch_dtype=dtype, variant="fp16")
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda")


ACCEL = {"default": AccelOptions(), "nchw": AccelOptions(channels_last=False), "eager": AccelOptions.eager()}


def _manager(kind: str, tmp_path: Path, accel: str = "default", dtype: torch.dtype = torch.float16,
             device: str = "cuda") -> ModelManager:
    """The app's manager on CUDA in fp16 (accelerator on), with checkpoint `kind` pointed at its tiny repo."""
    registry = {kind: replace(REGISTRY[kind], repos=(str(tiny_repo(kind)),), revision=None)}
    return ModelManager(device, dtype, registry=registry, cache_dir=tmp_path, accel=ACCEL[accel])


def _as_array(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])


def _run_reference(pipe, seed: int, images: int = 1, **kwargs) -> np.ndarray:
    """diffusers' images; several drawn each from its own seed (seed + x, as ours: sd2_app/api/requests.py,
    `numbered_seeds`), diffusers' list of generators."""
    generators = [torch.Generator("cuda").manual_seed(seed + index) for index in range(images)]
    return pipe(generator=generators[0] if images == 1 else generators, output_type="np", **kwargs).images


@pytest.mark.parametrize("accel", ["default", "nchw"])  # NCHW, and NHWC with the NHWC GroupNorm kernels
@pytest.mark.parametrize("kind", ["sd2-base", "sd21"])  # epsilon, and v-prediction with fp32 attention
def test_fp16_default_path_is_as_close_to_fp32_as_diffusers_fp16(kind: str, accel: str, tmp_path: Path) -> None:
    manager = _manager(kind, tmp_path, accel)
    request = Txt2ImgRequest(prompt="two tigers", negative_prompt="blurry", width=64, height=48,
                             sampling=Sampling(sampler="DPM++ 2M", steps=12, seed=7, batch_size=2))
    with manager.use(kind) as components:
        ours = _as_array(txt2img(components, request).images)
        again = _as_array(txt2img(components, request).images)  # second run replays the captured graph
    settings = dict(prompt=["two tigers"] * 2, negative_prompt=["blurry"] * 2, width=64, height=48,
                    num_inference_steps=12, guidance_scale=7.5)
    ref32 = _run_reference(_reference(kind, torch.float32), 7, 2, **settings)
    ref16 = _run_reference(_reference(kind, torch.float16), 7, 2, **settings)
    budget = float(np.abs(ref16 - ref32).max()) + 1 / 255
    assert float(np.abs(ours - ref32).max()) <= budget
    assert np.array_equal(ours, again)  # graph replay is deterministic and equals the first (captured) run


def test_fp16_img2img_matches_diffusers_fp16_budget(tmp_path: Path) -> None:
    manager = _manager("sd2-base", tmp_path)
    image = sample_image(64, 64, seed=4)
    request = Img2ImgRequest(prompt="a white cat", image=image, strength=0.6,
                             sampling=Sampling(sampler="DPM++ 2M", steps=10, seed=3))
    with manager.use("sd2-base") as components:
        ours = _as_array(img2img(components, request).images)
    settings = dict(prompt="a white cat", image=image, strength=0.6, num_inference_steps=10, guidance_scale=7.5)
    ref32 = _run_reference(_reference("sd2-base", torch.float32, img2img_pipe=True), 3, **settings)
    ref16 = _run_reference(_reference("sd2-base", torch.float16, img2img_pipe=True), 3, **settings)
    assert float(np.abs(ours - ref32).max()) <= float(np.abs(ref16 - ref32).max()) + 1 / 255


def test_fp16_upscale_with_the_half_product_vae_attention_matches_diffusers_budget(tmp_path: Path) -> None:
    """x4: our fp16 UNet and fp32 VAE decode (its attention product from fp16 inputs) vs diffusers fp32,
    within diffusers' own fp16-vs-fp32 difference plus one 8-bit level."""
    import diffusers

    from sd2_app.accel.fused.vae_attention import HalfProductVAEAttention
    from sd2_app.pipelines.upscale import upscale
    from sd2_app.api.requests import UpscaleRequest

    manager = _manager("x4-upscaler", tmp_path)
    image = sample_image(32, 24, seed=2)
    request = UpscaleRequest(prompt="sharp photo", image=image, noise_level=20,
                             sampling=Sampling(sampler="DDIM", steps=8, seed=5, cfg_scale=9.0))
    with manager.use("x4-upscaler") as components:
        assert any(isinstance(m, HalfProductVAEAttention) for m in components.vae.modules())
        ours = _as_array(upscale(components, request).images)
    refs = []
    for dtype in (torch.float32, torch.float16):
        pipe = diffusers.StableDiffusionUpscalePipeline.from_pretrained(tiny_repo("x4-upscaler"), torch_dtype=dtype,
                                                                       variant="fp16")
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        refs.append(_run_reference(pipe.to("cuda"), 5, prompt="sharp photo", image=image, noise_level=20,
                                   num_inference_steps=8, guidance_scale=9.0))
    ref32, ref16 = refs
    assert float(np.abs(ours - ref32).max()) <= float(np.abs(ref16 - ref32).max()) + 1 / 255


def test_offload_and_back_restacks_the_projections_and_gives_the_same_image(tmp_path: Path) -> None:
    """A manager round trip splits the stacked projection weights (tensor-by-tensor moves); the next job
    stacks them again, recaptures its graphs, and makes the identical image."""
    from sd2_app.accel.fused.attention import FusedAttention
    from sd2_app.accel.fused.stacking import stacked_linear

    manager = _manager("sd2-base", tmp_path)
    request = Txt2ImgRequest(prompt="two tigers", width=64, height=64,
                             sampling=Sampling(sampler="DPM++ 2M", steps=6, seed=3))
    with manager.use("sd2-base") as components:
        first = _as_array(txt2img(components, request).images)
    manager.offload("sd2-base")
    with manager.use("sd2-base") as components:
        attentions = [m for m in components.unet.modules() if isinstance(m, FusedAttention)]
        assert len(attentions) == 32
        assert all(stacked_linear(a.packed_group()) is not None for a in attentions)
        second = _as_array(txt2img(components, request).images)
    assert np.array_equal(first, second)


def tiled_job_images(tmp_path: Path, device: str = "cuda") -> dict[str, np.ndarray]:
    """An untiled, a tiled and the same untiled job on the default path; the tiled job on the eager path in
    fp32 and fp16 (each manager in a folder of its own)."""
    plain = Txt2ImgRequest(prompt="moss on a stone wall", width=64, height=64,
                           sampling=Sampling(sampler="DPM++ 2M", steps=8, seed=5))
    tiled = replace(plain, tiling=True)
    found: dict[str, np.ndarray] = {}
    with _manager("sd2-base", tmp_path / "default", device=device).use("sd2-base") as components:
        for name, request in (("before", plain), ("tiled", tiled), ("after", plain)):
            found[name] = _as_array(txt2img(components, request).images)
    for name, dtype in (("eager32", torch.float32), ("eager16", torch.float16)):
        with _manager("sd2-base", tmp_path / name, "eager", dtype, device).use("sd2-base") as components:
            found[name] = _as_array(txt2img(components, tiled).images)
    return found


def test_tiled_job_on_the_default_path_is_as_close_to_fp32_as_eager_fp16_and_leaves_the_graphs(
    tmp_path: Path
) -> None:
    """A tiled job runs its own un-graphed view of the fused, channels_last UNet and VAE (pipelines/seamless.py):
    within the eager fp16 tiled job's distance from fp32 plus one 8-bit level; the untiled job after it replays
    the live modules' graph and makes the identical image."""
    found = tiled_job_images(tmp_path)
    assert np.array_equal(found["before"], found["after"])
    budget = float(np.abs(found["eager16"] - found["eager32"]).max()) + 1 / 255
    assert float(np.abs(found["tiled"] - found["eager32"]).max()) <= budget
    assert float(np.abs(found["tiled"] - found["before"]).max()) > 10 / 255  # tiling changed the image
