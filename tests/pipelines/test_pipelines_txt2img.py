"""Text-to-image end to end on the tiny checkpoints: parity with diffusers, progress, cancellation, warnings."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest
import torch
from tests.pipeline_fixtures import ComponentCache, assert_matches_reference, reference_pipeline, reference_run

from sd2_app.errors import Cancelled
from sd2_app.pipelines import loop
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.pipelines.txt2img import txt2img
from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.samplers import SchedulerConfig, make_schedule
from sd2_app.samplers.registry import SCHEDULES

pytest.importorskip("diffusers")



# (checkpoint kind, sampler, batch, width, height, negative prompt, eta, guidance rescale, cfg)
CASES = [
    ("sd2-base", "DPM++ 2M", 2, 64, 48, "blurry", 0.0, 0.0, 7.5),
    ("sd2", "Euler a", 1, 48, 64, "", 0.0, 0.0, 7.5),  # v-prediction, ancestral noise
    ("sd21", "DDIM", 2, 64, 64, "low quality", 0.5, 0.0, 7.5),  # DDIM with eta > 0
    ("sd2-base", "PNDM", 1, 56, 40, "", 0.0, 0.0, 5.0),
    ("sd2", "DPM++ 2M Karras", 1, 64, 48, "dark", 0.0, 0.7, 7.5),  # guidance rescale on v
    ("sd2-base", "Euler", 1, 64, 48, "", 0.0, 0.0, 1.0),  # guidance off
    ("sd21", "Euler Exponential", 1, 48, 48, "", 0.0, 0.0, 7.5),  # the schedule type A1111 calls Exponential
    ("sd2-base", "DPM++ 3M SDE Exponential", 1, 48, 40, "", 0.0, 0.0, 7.5),  # SDE noise from the pipeline's seed
    ("sd2", "UniPC Beta", 1, 40, 48, "", 0.0, 0.0, 7.5),  # Beta quantiles, on v-prediction
    ("sd21", "Euler SGM Uniform", 1, 48, 40, "", 0.0, 0.0, 7.5),  # A1111's own schedule types: diffusers is
    ("sd2-base", "Euler Align Your Steps", 1, 40, 40, "dull", 0.0, 0.0, 7.5),  # given the sigmas
]
# The schedule types diffusers' schedulers cannot place themselves: its Euler is given our sigmas.
GIVEN_SIGMAS = ("SGM Uniform", "Align Your Steps")


@pytest.mark.parametrize(("kind", "sampler", "batch", "width", "height", "negative", "eta", "rescale", "cfg"), CASES)
def test_txt2img_matches_diffusers(
    components: ComponentCache, kind: str, sampler: str, batch: int, width: int, height: int,
    negative: str, eta: float, rescale: float, cfg: float,
) -> None:
    # "DPM++ 2M Karras": a schedule type after the sampler's name (the longest that fits: "SGM Uniform")
    schedule = max((s for s in SCHEDULES if sampler.endswith(" " + s)), key=len, default="Automatic")
    name = sampler.removesuffix(" " + schedule)
    sampling = Sampling(sampler=name, steps=5, schedule=schedule, cfg_scale=cfg,
                        guidance_rescale=rescale, eta=eta, seed=1234, batch_size=batch)
    request = Txt2ImgRequest(prompt="a red fox in snow", negative_prompt=negative, width=width, height=height,
                             sampling=sampling)
    ours = txt2img(components(kind), request)

    pipe = reference_pipeline(kind, sampler)
    extra = {"eta": eta} if sampler == "DDIM" else {}
    if schedule in GIVEN_SIGMAS:
        config = SchedulerConfig.from_dict(dict(pipe.scheduler.config))
        extra["sigmas"] = make_schedule(config, name, 5, schedule=schedule).sigmas
    assert len(ours.images) == batch and ours.images[0].size == (width, height)
    assert_matches_reference(ours, reference_run(
        pipe, 1234, prompt="a red fox in snow", negative_prompt=negative or None, width=width, height=height,
        num_inference_steps=5, guidance_scale=cfg, guidance_rescale=rescale, num_images_per_prompt=batch, **extra,
    ))


def test_progress_and_metadata(components: ComponentCache) -> None:
    calls: list[tuple[int, int, tuple[int, ...]]] = []
    request = Txt2ImgRequest(prompt="p", negative_prompt="n", width=64, height=48,
                             sampling=Sampling(sampler="Euler a", steps=4, seed=7, batch_size=2))
    out = txt2img(components("sd2-base"), request, on_step=lambda i, n, x: calls.append((i, n, tuple(x.shape))))
    assert calls == [(i, 4, (2, 4, 6, 8)) for i in range(1, 5)]
    params = parse_parameters(out.images[1].info["parameters"])
    assert params["Prompt"] == "p" and params["Negative prompt"] == "n"
    assert params["Steps"] == 4 and params["Sampler"] == "Euler a" and params["Seed"] == 8  # the second image's
    assert parse_parameters(out.images[0].info["parameters"])["Seed"] == 7
    assert params["Size"] == "64x48" and params["Model"] == "sd2-base" and params["Batch pos"] == 1


def test_cancel_mid_run_propagates_and_models_stay_usable(components: ComponentCache) -> None:
    request = Txt2ImgRequest(prompt="p", width=64, height=48, sampling=Sampling(steps=6, seed=3))
    seen: list[int] = []

    def stop_at_three(step: int, total: int, latents: torch.Tensor) -> None:
        seen.append(step)
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        txt2img(components("sd2-base"), request, on_step=stop_at_three)
    assert seen == [1, 2, 3]  # stopped promptly: no step after the one that cancelled
    first = txt2img(components("sd2-base"), request)
    second = txt2img(components("sd2-base"), request)
    assert torch.equal(first.latents, second.latents)  # same seed, same image after a cancelled run


def test_size_is_rounded_with_a_warning(components: ComponentCache) -> None:
    request = Txt2ImgRequest(prompt="p", width=60, height=43, sampling=Sampling(steps=2, seed=1))
    out = txt2img(components("sd2-base"), request)
    assert (out.width, out.height) == (64, 40) and out.images[0].size == (64, 40)
    assert any("60x43" in w and "64x40" in w for w in out.warnings)


def test_long_prompt_is_read_in_chunks_without_a_warning(components: ComponentCache) -> None:
    """Past 75 tokens the prompt is read in two chunks (issue 20), nothing is dropped or warned about."""
    long_prompt = " ".join(["red"] * 30)
    tokens = len(components("sd2-base").tokenizer(long_prompt).input_ids)  # with BOS and EOS
    assert 77 < tokens <= 152
    seen: list[int] = []
    unet = components("sd2-base").unet
    handle = unet.register_forward_pre_hook(lambda m, args: seen.append(args[2].shape[1]))
    try:
        request = Txt2ImgRequest(prompt=long_prompt, width=64, height=48, sampling=Sampling(steps=2, seed=1))
        out = txt2img(components("sd2-base"), request)
    finally:
        handle.remove()
    assert out.warnings == []
    assert seen and set(seen) == {154}  # two chunks of 77 tokens in every UNet call


@pytest.mark.parametrize(("negative", "cfg", "written"), [("", 7.5, True), (" ".join(["dark"] * 30), 7.5, None),
                                                           ("", 1.0, None)],
                         ids=["short negative", "long negative", "no guidance"])
def test_pad_conds_is_written_where_the_negative_prompt_was_padded(components: ComponentCache, negative: str,
                                                                  cfg: float, written: bool | None) -> None:
    """A prompt of two chunks beside a negative prompt of one: the negative prompt's context is padded with the
    encoded empty chunk, which A1111 does only with its "Pad prompt/negative prompt" setting, named "Pad conds" in
    its text (a text without it runs the two unpadded there). Written only where the padding happened."""
    long_prompt = " ".join(["red"] * 30)
    request = Txt2ImgRequest(prompt=long_prompt, negative_prompt=negative, width=48, height=48,
                             sampling=Sampling(steps=1, seed=1, cfg_scale=cfg))
    params = parse_parameters(txt2img(components("sd2-base"), request).images[0].info["parameters"])
    assert params.get("Pad conds") is written
    shorter = replace(request, prompt="red")  # a short prompt: the long negative prompt pads it instead
    params = parse_parameters(txt2img(components("sd2-base"), shorter).images[0].info["parameters"])
    assert params.get("Pad conds") is (True if negative and cfg > 1 else None)


def test_loop_has_no_host_sync() -> None:
    """.item()/.cpu()/.tolist() in the loop would stall the GPU every step."""
    source = inspect.getsource(loop)
    for call in (".item(", ".cpu(", ".tolist(", ".numpy("):
        assert call not in source
