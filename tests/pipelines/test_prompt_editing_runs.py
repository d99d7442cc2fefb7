"""Prompt editing and alternation in runs on the tiny checkpoint: the context the UNet gets at each call.

A spy UNet records the context of every call; the expectation for each call is the plain prompt pair of that
step encoded on its own by `encode_prompt_pair` (the plain path, unchanged), picked by A1111's rule: call i
(from 0) reads the first schedule entry whose last step is >= i, over steps x the sampler's calls per step.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.pipeline_fixtures import ComponentCache, sample_image
import tests.pipelines.test_batch as batch_tests
import tests.samplers.test_samplers_no_sync as no_sync

from PIL import Image

from sd2_app.api.requests import (
    DepthRequest, HiresFix, Img2ImgRequest, InpaintRequest, OutpaintRequest, Sampling, Txt2ImgRequest, UpscaleRequest,
)
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.batch import run_batch
from sd2_app.pipelines.depth import depth2img
from sd2_app.pipelines.hires import hires_fix
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.inpaint import inpaint
from sd2_app.pipelines.outpaint import outpaint
from sd2_app.pipelines.loop import Conditioning, Tiling, run_sampling
from sd2_app.testing.prompt_pair import encode_prompt_pair
from sd2_app.pipelines.prompt_schedule import PromptSteps, encode_prompt_schedule
from sd2_app.pipelines.txt2img import prepare_txt2img, txt2img
from sd2_app.pipelines.upscale import upscale
from sd2_app.samplers import SAMPLERS, make_schedule

KIND = "sd2-base"
CPU = torch.device("cpu")


class SpyUNet(torch.nn.Module):
    """The UNet, keeping a copy of the context of every call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.contexts = unet, []

    @property
    def config(self) -> object:
        return self.unet.config

    def forward(self, batch: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **kwargs: object) -> torch.Tensor:
        self.contexts.append(context.clone())
        return self.unet(batch, t, context, **kwargs)


def _request(prompt: str, negative: str = "", sampler: str = "Euler", steps: int = 4,
             **fields: object) -> Txt2ImgRequest:
    sampling = Sampling(sampler=sampler, steps=steps, cfg_scale=7.0, seed=5)
    return Txt2ImgRequest(prompt, negative_prompt=negative, checkpoint=KIND, width=64, height=48, sampling=sampling,
                          **fields)  # type: ignore[arg-type]


def _pair(c, prompt: str, negative: str = "") -> torch.Tensor:
    return encode_prompt_pair(c.text_encoder, c.tokenizer, prompt, negative, batch_size=1, use_cfg=True,
                              device=CPU).context


def _spied(c):
    spy = SpyUNet(c.unet)
    return replace(c, unet=spy), spy


def _assert_calls(seen: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(seen) == len(expected)
    for call, (got, want) in enumerate(zip(seen, expected)):
        assert torch.equal(got, want), f"call {call}"


def test_unet_gets_from_before_the_switch_and_to_after(components: ComponentCache) -> None:
    c, spy = _spied(components(KIND))
    txt2img(c, _request("a [red:blue:2] fox", negative="blurry"))
    red, blue = _pair(c, "a red fox", "blurry"), _pair(c, "a blue fox", "blurry")
    assert not torch.equal(red, blue)
    _assert_calls(spy.contexts, [red, red, red, blue])  # calls 0, 1, 2 <= step 2: A1111's count


def test_alternation_cycles_and_the_negative_prompt_is_scheduled_too(components: ComponentCache) -> None:
    c, spy = _spied(components(KIND))
    txt2img(c, _request("[cat|dog|cow] on grass", negative="[dark::0.5]", steps=6))
    words = ["cat", "cat", "dog", "cow", "cat", "dog"]  # schedule entries 1..6 = cat, dog, cow, ...; call i -> i
    negatives = ["dark", "dark", "dark", "dark", "", ""]  # 0.5 of 6 steps: calls 0..3
    _assert_calls(spy.contexts, [_pair(c, f"{w} on grass", n) for w, n in zip(words, negatives)])


def test_without_guidance_only_the_prompt_is_scheduled(components: ComponentCache) -> None:
    c, spy = _spied(components(KIND))
    request = _request("[a|b] c", negative="[x|y]", steps=3)
    txt2img(c, replace(request, sampling=replace(request.sampling, cfg_scale=1.0)))
    a, b = (encode_prompt_pair(c.text_encoder, c.tokenizer, p, "", batch_size=1, use_cfg=False, device=CPU).context
            for p in ("a c", "b c"))
    assert a.shape == (1, 77, 32)
    _assert_calls(spy.contexts, [a, a, b])


def test_two_calls_per_step_double_the_schedule(components: ComponentCache) -> None:
    """Heun calls the UNet twice per step (once at the last): 3 steps are a 6-call schedule, 5 calls run."""
    c, spy = _spied(components(KIND))
    txt2img(c, _request("a [cat:dog:0.5]", sampler="Heun", steps=3))
    cat, dog = _pair(c, "a cat"), _pair(c, "a dog")
    _assert_calls(spy.contexts, [cat, cat, cat, cat, dog])


def test_image_to_image_counts_from_its_first_call_over_all_steps(components: ComponentCache) -> None:
    c, spy = _spied(components(KIND))
    request = Img2ImgRequest("a [cat|dog]", sample_image(64, 48), checkpoint=KIND, strength=0.5,
                             sampling=Sampling(sampler="Euler", steps=6, cfg_scale=7.0, seed=5))
    img2img(c, request)
    cat, dog = _pair(c, "a cat"), _pair(c, "a dog")
    _assert_calls(spy.contexts, [cat, cat, dog])


def _other_tasks() -> dict[str, tuple[str, object]]:
    """Each other task that takes a prompt: (its checkpoint, a run of it with `prompt`) on a 6-step schedule."""
    sampling = Sampling(sampler="Euler", steps=6, cfg_scale=7.0, seed=5)
    image, mask = sample_image(64, 48), Image.new("L", (64, 48), 0)
    mask.paste(255, (16, 8, 48, 40))
    return {
        "inpaint": ("sd2-inpainting", lambda c, p: inpaint(c, InpaintRequest(p, image, mask, strength=1.0,
                                                                            checkpoint="sd2-inpainting",
                                                                            sampling=sampling))),
        "outpaint": ("sd2-inpainting", lambda c, p: outpaint(c, OutpaintRequest(p, image, left=16, right=0, up=0, down=0,
                                                                               checkpoint="sd2-inpainting",
                                                                               sampling=sampling))),
        "depth": ("sd2-depth", lambda c, p: depth2img(c, DepthRequest(p, image, depth_map=mask, strength=1.0,
                                                                      checkpoint="sd2-depth", sampling=sampling))),
        "upscale": ("x4-upscaler", lambda c, p: upscale(c, UpscaleRequest(p, sample_image(24, 16),
                                                                          checkpoint="x4-upscaler",
                                                                          sampling=sampling))),
    }


@pytest.mark.parametrize("task", ["inpaint", "outpaint", "depth", "upscale"])
def test_every_task_with_a_prompt_follows_the_schedule(components: ComponentCache, task: str) -> None:
    kind, run = _other_tasks()[task]
    c, spy = _spied(components(kind))
    run(c, "a [cat|dog] [x::0.5]")
    cat_x, dog_x, cat, dog = (_pair(c, p) for p in ("a cat x", "a dog x", "a cat ", "a dog "))
    _assert_calls(spy.contexts, [cat_x, cat_x, dog_x, cat_x, dog, cat])


def test_hires_second_pass_counts_on_from_the_first(components: ComponentCache) -> None:
    """[b:c:6] after a 4-step first pass switches at the second pass's step 2; [d:e:1.5] half way into it."""
    c, spy = _spied(components(KIND))
    hires = HiresFix(upscaler="Latent", scale=1.5, steps=4, denoising_strength=0.5)  # 4 calls at the end of 8
    hires_fix(c, _request("a [b:c:6] [d:e:1.5]", hires=hires))
    first = [_pair(c, "a b d")] * 4
    second = [_pair(c, "a b d")] * 3 + [_pair(c, "a c e")]
    _assert_calls(spy.contexts, first + second)


def test_phases_of_different_lengths_are_padded_with_the_empty_chunk(components: ComponentCache) -> None:
    c, spy = _spied(components(KIND))
    long = ", ".join(["a very detailed landscape"] * 4)  # two chunks
    txt2img(c, _request(f"[a fox:{long}:1]", steps=3))
    ids = [c.tokenizer.bos_token_id, c.tokenizer.eos_token_id] + [0] * 75  # the empty chunk: BOS, EOS, padding
    with torch.no_grad():
        empty = c.text_encoder(torch.tensor([ids]))[0]  # (1, 77, D)
    short = torch.cat([_pair(c, "a fox"), empty.expand(2, -1, -1)], dim=1)
    assert short.shape == _pair(c, long).shape == (2, 154, 32)
    _assert_calls(spy.contexts, [short, short, _pair(c, long)])


def test_a_schedule_of_one_text_is_that_plain_prompt_bit_for_bit(components: ComponentCache) -> None:
    c = components(KIND)
    edited, plain = txt2img(c, _request("[cat:dog:0] on a hill")), txt2img(c, _request("dog on a hill"))
    assert torch.equal(edited.latents, plain.latents)
    assert np.array_equal(np.asarray(edited.images[0]), np.asarray(plain.images[0]))
    assert edited.images[0].info["parameters"].startswith("[cat:dog:0] on a hill\n")  # recorded as written


def test_a_plain_prompt_takes_the_plain_path(components: ComponentCache) -> None:
    """No editing: exactly `encode_prompt_pair`'s context, one phase (the parity tests then hold unchanged)."""
    c = components(KIND)
    for prompt, negative in [("a (red:1.2) fox BREAK snow", "[blurry]"), ("\\[a:b:3\\] | c [d:e:1]", "")]:
        encoded = encode_prompt_schedule(c, prompt, negative, batch_size=2, use_cfg=True, steps=PromptSteps(10))
        plain = encode_prompt_pair(c.text_encoder, c.tokenizer, prompt, negative, batch_size=2, use_cfg=True,
                                   device=CPU)
        assert encoded.phases == () and torch.equal(encoded.context, plain.context)


def test_too_many_phases_are_refused(components: ComponentCache) -> None:
    c = components(KIND)
    alternatives = "|".join(f"w{i}" for i in range(13))
    with pytest.raises(InvalidRequest, match=r"make 65 different prompt pairs of 1 chunk\(s\) each; at most 64"):
        txt2img(c, _request(f"[{alternatives}] [a|b|c|d|e]", steps=100))


def test_batched_schedules_equal_their_solo_runs(components: ComponentCache) -> None:
    """Requests with the same phases share a batch; a plain one and another schedule run apart; each image is
    its solo run's (RowwiseUNet: batch-invariant calls, tests/pipelines/test_batch.py)."""
    c = components(KIND)
    requests = [_request("a [fox:hen:2]"), _request("a [cat:dog:2]", negative="[x:y:2]"), _request("a fox"),
                _request("[a|b] c")]
    requests[1] = replace(requests[1], sampling=replace(requests[1].sampling, seed=9, batch_size=2))
    solo = [txt2img(c, request) for request in requests]
    spy = SpyUNet(batch_tests.RowwiseUNet(c.unet, [1, 2]))
    batched = run_batch(replace(c, unet=spy), requests[:2], [None] * 2, prepare_txt2img)
    assert [tuple(context.shape[:2]) for context in spy.contexts] == [(6, 77)] * 4  # one batch of 3 images
    assert batch_tests.compare_with_solo(batched, solo[:2]).none
    spy = SpyUNet(batch_tests.RowwiseUNet(c.unet, [1]))
    batched = run_batch(replace(c, unet=spy), requests[2:], [None] * 2, prepare_txt2img)
    assert [tuple(context.shape[:2]) for context in spy.contexts] == [(2, 77)] * 8  # two batches of one
    found = batch_tests.compare_with_solo(batched, solo[2:])
    assert found.none, found


class _PhaseUNet(no_sync._MetaUNet):
    """The meta stand-in, noting the context tensor of each call (meta tensors have no values to compare)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__(in_channels)
        self.contexts: list[torch.Tensor] = []

    def forward(self, sample, timestep, context, class_labels=None):  # type: ignore[no-untyped-def]
        self.contexts.append(context)
        return super().forward(sample, timestep, context, class_labels)


@pytest.mark.parametrize("tiled", [False, True])
def test_phases_are_picked_without_reading_the_device(tiled: bool) -> None:
    """On meta (tests/samplers/test_samplers_no_sync.py: any host read raises) each call gets its phase's
    context, one shape for all, with tiling one phase per call over all its tiles."""
    meta = no_sync.META
    unet = _PhaseUNet(in_channels=4)
    contexts = torch.empty(3, 4, 77, 16, device=meta, dtype=torch.float16)
    cond = Conditioning(context=contexts, phases=(0, 0, 2, 1))  # a 4-call schedule; a 5th call keeps the last
    x = torch.empty(2, 4, 24, 20, device=meta)
    run_sampling(unet, cond, x, make_schedule(no_sync.SD2, "Heun", 3), SAMPLERS["Heun"], cfg_scale=7.0,
                 guidance_rescale=0.0, prediction_type="v_prediction", generator=None,
                 tiling=Tiling(tile=16, overlap=8) if tiled else None)
    tiles = 4 if tiled else 1  # 24x20 latents in 16-pixel tiles with 8 overlap: 2 x 2
    assert len(unet.contexts) == 5 * tiles  # Heun: 2 calls per step, 1 at the last
    picked = [unet.contexts[call * tiles] for call in range(5)]
    for call, phase in enumerate([0, 0, 2, 1, 1]):
        assert picked[call].shape == (4, 77, 16)
        assert picked[call].storage_offset() == contexts[phase].storage_offset()  # a view of that phase, no copy
        same_call = unet.contexts[call * tiles:(call + 1) * tiles]
        assert all(c.storage_offset() == picked[call].storage_offset() for c in same_call)
