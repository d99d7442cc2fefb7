"""Hires fix on the tiny checkpoints: each upscaler's result is text-to-image, that upscale and
image-to-image done by hand with the same seed; one progress bar; Stop in either pass; validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.pipeline_fixtures import ComponentCache, assert_matches_reference, reference_pipeline, reference_run
from PIL import Image

from sd2_app.api.requests import HiresFix, Img2ImgRequest, Sampling, Txt2ImgRequest, UpscaleRequest
from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.hires import crop_latents
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.pipelines.txt2img import txt2img

SAMPLING = Sampling(sampler="DPM++ 2M", steps=4, seed=11)


def _request(upscaler: str, **hires: object) -> Txt2ImgRequest:
    fix = HiresFix(upscaler=upscaler, scale=1.5, steps=6, denoising_strength=0.5, **hires)  # type: ignore[arg-type]
    return Txt2ImgRequest(prompt="a castle", negative_prompt="fog", width=64, height=64, sampling=SAMPLING,
                          hires=fix)


def test_lanczos_hires_equals_txt2img_lanczos_then_img2img_with_the_same_seed(components: ComponentCache) -> None:
    c = components("sd2-base")
    ours = txt2img(c, _request("Lanczos"))
    first = txt2img(c, replace(_request("Lanczos"), hires=None))
    upscaled = first.images[0].resize((96, 96), Image.Resampling.LANCZOS)
    by_hand = img2img(c, Img2ImgRequest(prompt="a castle", negative_prompt="fog", image=upscaled, strength=0.5,
                                        sampling=replace(SAMPLING, steps=12)))  # its last 6 steps, as A1111 runs
    assert ours.images[0].size == (96, 96)
    assert torch.equal(ours.latents, by_hand.latents)
    assert np.array_equal(np.asarray(ours.images[0]), np.asarray(by_hand.images[0]))


def test_a_hires_prompt_of_its_own_is_read_by_the_second_pass_only(components: ComponentCache) -> None:
    """A1111's "Hires prompt" and "Hires negative prompt": the first pass reads the prompt, the second its own;
    by hand, the first image upscaled and image to image with the hires prompts. The text keeps the prompt and
    adds the hires prompts (written only where they differ from the prompts, as A1111 writes them)."""
    c = components("sd2-base")
    request = _request("Lanczos", prompt="a castle, 8k", negative_prompt="blurry, fog")
    ours = txt2img(c, request)
    first = txt2img(c, replace(request, hires=None))
    upscaled = first.images[0].resize((96, 96), Image.Resampling.LANCZOS)
    by_hand = img2img(c, Img2ImgRequest(prompt="a castle, 8k", negative_prompt="blurry, fog", image=upscaled,
                                        strength=0.5, sampling=replace(SAMPLING, steps=12)))
    assert torch.equal(ours.latents, by_hand.latents)
    assert not torch.equal(ours.latents, txt2img(c, _request("Lanczos")).latents)
    params = parse_parameters(ours.images[0].info["parameters"])
    assert (params["Prompt"], params["Negative prompt"]) == ("a castle", "fog")
    assert (params["Hires prompt"], params["Hires negative prompt"]) == ("a castle, 8k", "blurry, fog")
    same = parse_parameters(txt2img(c, _request("Lanczos", prompt="a castle")).images[0].info["parameters"])
    assert "Hires prompt" not in same and "Hires negative prompt" not in same


@pytest.mark.parametrize(("first", "own", "written"), [
    ("Automatic", "Karras", "Karras"), ("Karras", "Automatic", "Automatic"), ("Karras", "", None),
    ("Karras", "Karras", None)])
def test_a_hires_schedule_type_of_its_own_is_the_second_passs(components: ComponentCache, first: str, own: str,
                                                             written: str | None) -> None:
    """A1111's "Hires schedule type": the second pass runs it (empty: the first pass's); by hand, the first image
    upscaled and image to image with that schedule type. The text says it where it differs from the first pass's,
    Automatic too (A1111 leaves an Automatic out, so its text would read back as the first pass's)."""
    c = components("sd2-base")
    request = _request("Lanczos", schedule=own)
    request = replace(request, sampling=replace(SAMPLING, schedule=first))
    ours = txt2img(c, request)
    upscaled = txt2img(c, replace(request, hires=None)).images[0].resize((96, 96), Image.Resampling.LANCZOS)
    second = replace(SAMPLING, steps=12, schedule=own or first)
    by_hand = img2img(c, Img2ImgRequest(prompt="a castle", negative_prompt="fog", image=upscaled, strength=0.5,
                                        sampling=second))
    assert torch.equal(ours.latents, by_hand.latents)
    other = replace(SAMPLING, steps=12, schedule="Exponential")
    assert not torch.equal(ours.latents, img2img(c, Img2ImgRequest(
        prompt="a castle", negative_prompt="fog", image=upscaled, strength=0.5, sampling=other)).latents)
    params = parse_parameters(ours.images[0].info["parameters"])
    assert (params["Schedule type"], params.get("Hires schedule type")) == (first, written)


@pytest.mark.parametrize(("prompt", "hires_prompt", "written"), [
    (" ".join(["red"] * 30), "a castle", True), ("a castle", " ".join(["red"] * 30), True), ("a castle", "", None)],
    ids=["first pass padded", "second pass padded", "neither"])
def test_pad_conds_is_written_where_either_pass_padded(components: ComponentCache, prompt: str, hires_prompt: str,
                                                       written: bool | None) -> None:
    """A prompt of two chunks beside the one-chunk negative prompt pads it; the text says "Pad conds" where the
    first pass or the second (its own hires prompt) did, as A1111 keeps the flag its first pass set."""
    request = replace(_request("Latent", prompt=hires_prompt), prompt=prompt)
    request = replace(request, sampling=replace(SAMPLING, steps=1))
    params = parse_parameters(txt2img(components("sd2-base"), request).images[0].info["parameters"])
    assert params.get("Pad conds") is written


@pytest.mark.parametrize(("upscaler", "mode"), [("Latent", "bilinear"), ("Latent (nearest-exact)", "nearest-exact")])
def test_latent_hires_equals_diffusers_img2img_on_the_resized_latents(
    components: ComponentCache, upscaler: str, mode: str
) -> None:
    """By hand: our text-to-image latents, resized with torch, then diffusers' img2img (it takes 4-channel
    latents as its image) with a generator seeded with the same seed."""
    c = components("sd2-base")
    ours = txt2img(c, _request(upscaler))
    first = txt2img(c, replace(_request(upscaler), hires=None)).latents  # (1, 4, 8, 8)
    options = {"align_corners": False} if mode == "bilinear" else {}
    resized = F.interpolate(first, size=(12, 12), mode=mode, **options)
    pipe = reference_pipeline("sd2-base", "DPM++ 2M", img2img=True)
    common = {"prompt": "a castle", "negative_prompt": "fog", "image": resized, "strength": 0.5,
              "num_inference_steps": 12, "guidance_scale": 7.5}  # the last 6 of 12 steps: the 6 hires steps
    assert_matches_reference(ours, reference_run(pipe, 11, **common))
    assert ours.images[0].size == (96, 96)


def test_explicit_size_of_another_shape_is_covered_then_centre_cropped(components: ComponentCache) -> None:
    """A1111's rule for a hires width and height of another shape than the first pass: upscale to cover them
    (64x64 -> 96x96, latents 12x12), then crop the latents to the target (rows 2..10 of 12: 96x64)."""
    c = components("sd2-base")
    request = _request("Latent", width=96, height=64)
    ours = txt2img(c, request)
    first = txt2img(c, replace(request, hires=None)).latents  # (1, 4, 8, 8)
    covered = F.interpolate(first, size=(12, 12), mode="bilinear", align_corners=False)
    pipe = reference_pipeline("sd2-base", "DPM++ 2M", img2img=True)
    common = {"prompt": "a castle", "negative_prompt": "fog", "image": covered[:, :, 2:10, :], "strength": 0.5,
              "num_inference_steps": 12, "guidance_scale": 7.5}
    assert_matches_reference(ours, reference_run(pipe, 11, **common))
    assert ours.images[0].size == (96, 64)


@pytest.mark.parametrize(("first", "hires", "upscaled", "target"), [
    ((512, 512), {"scale": 2.0}, (1024, 1024), (1024, 1024)),
    ((768, 512), {"scale": 1.3}, (998, 665), (992, 664)),  # int(768 x 1.3) = 998: whole latents of 8 -> 992
    ((512, 768), {"width": 1000}, (1000, 1500), (1000, 1496)),  # the other side in proportion, rounded down
    ((512, 512), {"height": 750}, (750, 750), (744, 744)),
    ((512, 512), {"width": 1024, "height": 768}, (1024, 1024), (1024, 768)),  # covered, then cropped
    ((512, 512), {"width": 1000, "height": 750}, (1000, 1000), (1000, 752)),  # A1111 crops whole latents: 94 x 8
    ((768, 512), {"width": 800, "height": 800}, (1200, 800), (800, 800)),
    ((64, 64), {"width": 80, "height": 72}, (80, 80), (80, 72)),
])
def test_hires_sizes_are_a1111s(first: tuple, hires: dict, upscaled: tuple, target: tuple) -> None:
    """modules/processing.py, calculate_target_resolution: the upscale, and the size the second pass keeps."""
    fix = HiresFix(**hires)
    assert (fix.upscale_size(*first), fix.target(*first)) == (upscaled, target)


@pytest.mark.parametrize(("steps", "strength", "schedule"), [
    (20, 0.5, 40), (20, 0.3, 66), (20, 0.7, 28), (20, 1.0, 20), (6, 0.5, 12), (4, 0.001, 1000), (20, 0.0, 0),
])
def test_the_second_pass_runs_its_steps_on_a1111s_schedule(steps: int, strength: float, schedule: int) -> None:
    """modules/sd_samplers_common.py, setup_img2img_steps: int(steps / min(strength, 0.999)), capped at the
    model's 1000 timesteps; the last `steps` of it run."""
    fix = HiresFix(steps=steps, denoising_strength=strength)
    assert (fix.second_pass_steps(25), fix.schedule_steps(25)) == (steps if strength else 0, schedule)
    assert HiresFix(denoising_strength=strength).second_pass_steps(25) == (25 if strength else 0)  # 0: the first's


def test_crop_latents_takes_the_odd_row_off_the_bottom() -> None:
    latents = torch.arange(2 * 4 * 7 * 5, dtype=torch.float32).reshape(2, 4, 7, 5)
    assert torch.equal(crop_latents(latents, (4, 5)), latents[:, :, 1:5, :])  # 3 rows off: 1 at the top, 2 below
    assert torch.equal(crop_latents(latents, (7, 2)), latents[:, :, :, 1:3])
    assert crop_latents(latents, (7, 5)) is not None and torch.equal(crop_latents(latents, (7, 5)), latents)


def test_metadata_uses_a1111_keys_and_reads_back(components: ComponentCache) -> None:
    request = _request("Latent", sampler="Euler")
    params = parse_parameters(txt2img(components("sd2-base"), request).images[0].info["parameters"])
    assert params["Size"] == "64x64"  # the first pass's size, as A1111 writes it
    assert (params["Hires upscale"], params["Hires steps"], params["Hires upscaler"]) == (1.5, 6, "Latent")
    assert (params["Denoising strength"], params["Hires sampler"]) == (0.5, "Euler")
    explicit = txt2img(components("sd2-base"), replace(request, hires=replace(request.hires, width=80, height=72)))
    assert explicit.images[0].size == (80, 72)
    assert parse_parameters(explicit.images[0].info["parameters"])["Hires resize"] == "80x72"
    one_side = txt2img(components("sd2-base"), replace(request, hires=replace(request.hires, width=80)))
    assert one_side.images[0].size == (80, 80)
    assert parse_parameters(one_side.images[0].info["parameters"])["Hires resize"] == "80x0"  # as A1111 writes it


@pytest.mark.parametrize(("sampler", "hires_sampler", "written"), [
    ("DDIM", None, 0.5), ("Euler", None, None), ("Euler", "DDIM", 0.5), ("DDIM", "Euler", 0.5)])
def test_eta_is_written_only_where_a_pass_runs_ddim(components: ComponentCache, sampler: str,
                                                    hires_sampler: str | None, written: float | None) -> None:
    request = _request("Latent", sampler=hires_sampler)
    request = replace(request, sampling=replace(request.sampling, sampler=sampler, eta=0.5))
    params = parse_parameters(txt2img(components("sd2-base"), request).images[0].info["parameters"])
    # A1111's name of DDIM's eta (modules/sd_samplers_timesteps.py, `initialize`); its "Eta" is the k-diffusion
    # samplers' ancestral eta, which a paste into A1111 would set instead
    assert (params.get("Eta DDIM"), params.get("Eta")) == (written, None)
    # Euler's step takes no eta: an image made without it doesn't claim it


def test_one_progress_bar_over_both_passes_and_stop_in_the_second(components: ComponentCache) -> None:
    seen: list[tuple[int, int]] = []
    txt2img(components("sd2-base"), _request("Latent"), on_step=lambda d, t, x: seen.append((d, t)))
    assert seen == [(d, 10) for d in range(1, 11)]  # 4 first-pass steps + the 6 hires steps
    seen.clear()
    request = _request("Latent")
    txt2img(components("sd2-base"), replace(request, hires=replace(request.hires, steps=5, denoising_strength=0.3)),
            on_step=lambda d, t, x: seen.append((d, t)))
    assert seen == [(d, 9) for d in range(1, 10)]  # all 5 hires steps (of 16), where int(16 * 0.3) would run 4

    def stop_in_second_pass(done: int, total: int, x0: torch.Tensor) -> None:
        if done == 5:
            raise Cancelled

    with pytest.raises(Cancelled):
        txt2img(components("sd2-base"), _request("Lanczos"), on_step=stop_in_second_pass)


def test_sd2_x4_hires_through_the_service_equals_the_three_steps_by_hand(tmp_path, monkeypatch) -> None:
    from tests.pipeline_fixtures import tiny_dir

    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    # No watermark: the by-hand chain feeds the 256x256 x4 result (which would carry it) into the next step.
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path / "cache"), outputs_dir=None,
                      watermark=False)
    request = Txt2ImgRequest(prompt="a castle", checkpoint="sd2-base", width=64, height=64, sampling=SAMPLING,
                             hires=HiresFix(upscaler="SD2 x4", scale=2.0, steps=4, denoising_strength=0.5))
    progress: list[tuple[int, int]] = []
    result = service.run(request, on_progress=lambda d, t, p: progress.append((d, t)))
    assert result.images[0].size == (128, 128)
    assert [d for d, _ in progress] == list(range(1, 13)) and {t for _, t in progress} == {12}  # 4 + 4 + 4

    first = service.run(replace(request, hires=None)).images[0]
    x4 = service.run(UpscaleRequest(prompt="a castle", image=first, checkpoint="x4-upscaler",
                                    sampling=Sampling(sampler="DDIM", steps=4, cfg_scale=9.0, seed=11))).images[0]
    assert x4.size == (256, 256)
    by_hand = service.run(Img2ImgRequest(prompt="a castle", image=x4.resize((128, 128), Image.Resampling.LANCZOS),
                                         checkpoint="sd2-base", strength=0.5,
                                         sampling=replace(SAMPLING, steps=8))).images[0]  # its last 4 of 8
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(by_hand))
    assert parse_parameters(result.parameters)["Hires upscaler"] == "SD2 x4"

    from sd2_app.pipelines import upscale as upscale_module
    from sd2_app.pipelines.images import postprocess

    decodes: list[int] = []  # the x4 stage's decodes: a Stop there keeps nothing, so it makes no image so far
    monkeypatch.setattr(upscale_module, "postprocess", lambda pixels: decodes.append(1) or postprocess(pixels))
    decoded = {}
    for stop_after in (2, 6, 9):  # Stop in the first pass, in the x4 stage, then in the second pass
        seen: list[int] = []
        before = len(decodes)
        with pytest.raises(Cancelled) as stop:
            service.run(request, on_progress=lambda d, t, p: seen.append(d), should_stop=lambda: len(seen) >= stop_after)
        assert seen[-1] == stop_after and stop.value.latents is None
        assert (stop.value.result is None) == (stop_after < 9)  # only the second pass makes its image so far
        decoded[stop_after] = len(decodes) - before
    assert decoded == {2: 0, 6: 0, 9: 1}  # a Stop inside the x4 stage decodes nothing; at 9 it had finished
    again = service.run(request).images[0]  # the manager is free again and the result unchanged
    assert np.array_equal(np.asarray(again), np.asarray(result.images[0]))

    # Two images per prompt: each first image goes through the x4 alone at its own seed (11, 12), so the second
    # is the image seed 12 makes alone; progress counts the x4 stage twice.
    progress.clear()
    pair = service.run(replace(request, sampling=replace(SAMPLING, batch_size=2)),
                       on_progress=lambda d, t, p: progress.append((d, t)))
    assert [d for d, _ in progress] == list(range(1, 17)) and {t for _, t in progress} == {16}  # 4 + 2 x 4 + 4
    second = service.run(replace(request, sampling=replace(SAMPLING, seed=12))).images[0]
    assert [image.size for image in pair.images] == [(128, 128)] * 2 and pair.image_seeds == [11, 12]
    for got, want in zip(pair.images, (result.images[0], second)):  # a batch's fp32 CPU kernels: a rounding
        assert np.abs(np.asarray(got, dtype=int) - np.asarray(want, dtype=int)).max() <= 1
    assert not np.array_equal(np.asarray(pair.images[0]), np.asarray(pair.images[1]))


@pytest.mark.parametrize(("hires", "batch", "message"), [
    (HiresFix(upscaler="ESRGAN"), 1, "Unknown hires upscaler 'ESRGAN'; choose one of: Latent, "
                                     "Latent (nearest-exact), Lanczos, SD2 x4."),
    (HiresFix(scale=4.0), 1, "The hires target 1024x1024 is larger than this server's limit of 512 pixels per "
                             "side; lower the upscale or the size."),
    (HiresFix(denoising_strength=0.0), 1, "Hires denoising strength 0 runs no hires step; raise it (or turn the "
                                          "hires fix off)."),
    (HiresFix(sampler="Nope"), 1, "Unknown hires sampler 'Nope'; choose one of:"),
    (HiresFix(steps=-3), 1, "Hires steps must be between 1 and 150, got -3."),
    (HiresFix(schedule="Turbo"), 1, "Hires schedule type must be one of Automatic, Uniform, Karras, Exponential, "
                                    "Polyexponential, SGM Uniform, KL Optimal, Align Your Steps, Simple, Normal, "
                                    "Beta; got 'Turbo'."),
    (HiresFix(sampler="DDIM", schedule="Karras"), 1, "Hires schedule type Karras is not available for the DDIM "
                                                     "sampler; pick Automatic, or a hires sampler that offers it."),
])
def test_validation_messages(hires: HiresFix, batch: int, message: str) -> None:
    from sd2_app.api.checks import Limits
    from sd2_app.api.validation import validate
    from tests.ui_doubles import fake_catalog

    catalog = fake_catalog()
    request = Txt2ImgRequest(prompt="p", checkpoint="sd2-base", width=256, height=256,
                             sampling=replace(SAMPLING, batch_size=batch), hires=hires)
    with pytest.raises(InvalidRequest) as error:
        validate(request, catalog, Limits(max_side=512))
    assert str(error.value).startswith(message)


def test_a_first_pass_schedule_type_the_hires_sampler_lacks_needs_one_of_its_own() -> None:
    """A hires sampler without schedule types (DDIM) after a Karras first pass: refused, unless the hires fix has
    a schedule type of its own it offers (Automatic); Euler takes the first pass's Karras."""
    from sd2_app.api.checks import Limits
    from sd2_app.api.validation import validate
    from tests.ui_doubles import fake_catalog

    def checked(**hires: object) -> HiresFix:
        request = Txt2ImgRequest(prompt="p", checkpoint="sd2-base", width=256, height=256,
                                 sampling=replace(SAMPLING, schedule="Karras"), hires=HiresFix(**hires))  # type: ignore[arg-type]
        fix = validate(request, fake_catalog(), Limits(max_side=512))[0].hires
        assert fix is not None
        return fix

    with pytest.raises(InvalidRequest) as error:
        checked(sampler="DDIM")
    assert str(error.value) == ("Schedule type Karras is not available for the hires sampler DDIM; pick a hires "
                                "schedule type of Automatic, or another hires sampler.")
    assert checked(sampler="DDIM", schedule="Automatic").sampler_and_schedule(SAMPLING) == ("DDIM", "Automatic")
    assert checked(sampler="Euler").sampler_and_schedule(replace(SAMPLING, schedule="Karras")) == ("Euler", "Karras")
    assert checked(schedule=None).schedule == ""  # None: the first pass's, as ""


def test_the_size_upscaled_to_before_the_crop_is_within_the_limit_too() -> None:
    """Hires width and height of another shape than the first pass: the first pass is upscaled to cover them
    (and VAE-encoded) before the crop, so that size is checked as well as the target."""
    from sd2_app.api.checks import Limits
    from sd2_app.api.validation import validate
    from tests.ui_doubles import fake_catalog

    def request(width: int, height: int) -> Txt2ImgRequest:
        return Txt2ImgRequest(prompt="p", checkpoint="sd2-base", width=width, height=height, sampling=SAMPLING,
                              hires=HiresFix(width=512, height=512))

    with pytest.raises(InvalidRequest) as error:
        validate(request(64, 256), fake_catalog(), Limits(max_side=512))
    assert str(error.value) == ("The hires fix upscales 64x256 to 512x2048 before cropping it to 512x512, larger "
                                "than this server's limit of 512 pixels per side; give the hires width and height "
                                "the image's shape, or only one of them.")
    validate(request(128, 256), fake_catalog(), Limits(max_side=1024))  # covered by 512x1024: within the limit


def test_job_cost_counts_both_passes_and_the_x4_stage() -> None:
    """The cost the cap and ZeroGPU's duration both read (api/cost.py, api/gpu_time.py)."""
    from sd2_app.api.checks import Catalog
    from sd2_app.api.cost import job_cost

    def work(request: Txt2ImgRequest, calls: dict[str, int] | None = None) -> int:
        return job_cost(request, Catalog(samplers={}, resolutions={}, tasks={}, calls_per_step=calls or {}))

    plain = replace(_request("Latent"), hires=None)
    assert work(plain) == 4 * 2 * 8 * 8  # steps x guided halves x latent pixels
    # + the second pass: its 6 hires steps at 96x96 (12x12 latent pixels), guided
    assert work(_request("Latent")) == 4 * 2 * 8 * 8 + 6 * 2 * 12 * 12
    # + the x4 model: 6 hires steps, guided, at the 64x64 first image's pixels
    assert work(_request("SD2 x4")) == 4 * 2 * 8 * 8 + 6 * 2 * 12 * 12 + 6 * 2 * 64 * 64
    assert work(_request("Latent", sampler="Heun"), {"Heun": 2}) == 4 * 2 * 8 * 8 + 6 * 2 * 2 * 12 * 12
