"""Batching across users at the pipeline level: a batch of different requests against their solo runs.

Two measurements, because the CPU's fp32 kernels are not batch-invariant:

- With a UNet that runs each request's rows as their own call (`RowwiseUNet`), the batched run is bit-identical
  to the solo runs, latents and uint8 images: the batching itself (each request's generator for the start and
  the ancestral noise, the stacked context, the slices, the per-request finish) changes nothing.
- With the real UNet in one call, images and latents come within rounding of the solo runs, not bit-identical:
  a row's last bits depend on its neighbours in the batch. Found layer by layer (forward hooks, 1 thread, torch
  2.13 CPU, MKL 2024.2 + oneDNN 3.12): the first differing output is the time embedding's first Linear
  (~4e-7) when a request has 2 guided rows (MKL's sgemm computes an M-row product in blocks of 4 rows and the
  M % 4 leftover rows with another kernel, summing in another order), else a 1x1 shortcut convolution
  (~1e-6; oneDNN blocks the N·H·W dimension). Grown over 4 guided steps it is ~2e-4 in the latents: a few
  pixels in ten thousand round to the next uint8 level. The tests print these figures (-s) and bound them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from tests.pipeline_fixtures import ComponentCache, sample_image

from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.batch import run_batch
from sd2_app.pipelines.img2img import img2img, prepare_img2img
from sd2_app.pipelines.output import PipelineOutput
from sd2_app.pipelines.txt2img import prepare_txt2img, txt2img
from sd2_app.api.requests import Img2ImgRequest, Sampling, SeedExtras, Txt2ImgRequest

KIND = "sd2-base"


def _txt(prompt: str, seed: int, batch: int = 1, sampler: str = "DPM++ 2M", **fields: object) -> Txt2ImgRequest:
    sampling = Sampling(sampler=sampler, steps=4, cfg_scale=7.0, seed=seed, batch_size=batch)
    return Txt2ImgRequest(prompt, checkpoint=KIND, width=64, height=48, sampling=sampling,
                          **fields)  # type: ignore[arg-type]


def four_requests(sampler: str) -> list[Txt2ImgRequest]:
    """Different prompts, negative prompts, seeds and batch sizes; one with a variation seed."""
    return [
        _txt("a red fox in snow", 11, sampler=sampler),
        _txt("a lighthouse at dusk", 22, batch=2, sampler=sampler, negative_prompt="blurry"),
        _txt("an oil painting of a cat", 33, sampler=sampler, seed_extras=SeedExtras(7, 0.3)),
        _txt("", 44, sampler=sampler),
    ]


def _pixels(output: PipelineOutput) -> list[np.ndarray]:
    return [np.asarray(image) for image in output.images]


@dataclass
class Difference:
    """Batched vs solo: the latents' largest difference, the pixels' largest (uint8 levels) and how many differ."""

    latents: float = 0.0
    pixels: int = 0
    pixels_differing: int = 0
    pixels_total: int = 0

    @property
    def none(self) -> bool:
        return self.latents == 0.0 and self.pixels == 0


def compare_with_solo(batched: list[PipelineOutput], solo: list[PipelineOutput]) -> Difference:
    """Same number of images, same parameters text and warnings; how far the pixels and latents are apart."""
    found = Difference()
    for ours, alone in zip(batched, solo, strict=True):
        assert isinstance(ours, PipelineOutput), ours
        assert len(ours.images) == len(alone.images)
        assert ours.images[0].info["parameters"] == alone.images[0].info["parameters"]
        assert ours.warnings == alone.warnings
        for got, want in zip(_pixels(ours), _pixels(alone)):
            assert got.dtype == np.uint8 and got.shape == want.shape
            gap = np.abs(got.astype(int) - want.astype(int))
            found.pixels = max(found.pixels, int(gap.max()))
            found.pixels_differing += int((gap > 0).sum())
            found.pixels_total += gap.size
        found.latents = max(found.latents, float((ours.latents - alone.latents).abs().max()))
    return found


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a", "DPM++ 2M SDE"])  # two with ancestral/SDE noise
def test_batch_of_four_equals_solo_runs(components: ComponentCache, sampler: str) -> None:
    c = components(KIND)
    requests = four_requests(sampler)
    solo = [txt2img(c, request) for request in requests]
    batched = run_batch(c, requests, [None] * 4, prepare_txt2img)
    found = compare_with_solo(batched, solo)
    print(f"\n{sampler}: batch vs solo {found}")
    # MKL's row blocks (module docstring): requests of one image may flip a rounding, never more than one level.
    assert found.latents < 1e-3 and found.pixels <= 1 and found.pixels_differing <= found.pixels_total // 1000
    assert not np.array_equal(_pixels(batched[0])[0], _pixels(batched[3])[0])  # the requests really differ


class RowwiseUNet(torch.nn.Module):
    """The UNet called once per request on that request's own [uncond; cond] rows, as its solo run calls it."""

    def __init__(self, unet: torch.nn.Module, images: list[int]) -> None:
        super().__init__()
        self.unet, self.images = unet, images

    @property
    def config(self) -> object:
        return self.unet.config

    def forward(self, batch: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **kwargs: object) -> torch.Tensor:
        total = sum(self.images)
        guided = batch.shape[0] == 2 * total
        outputs, start = [], 0
        for count in self.images:
            rows = list(range(start, start + count))
            if guided:
                rows += [total + row for row in rows]
            out = self.unet(batch[rows], t[rows], context[rows], **kwargs)
            outputs.append(out)
            start += count
        if not guided:
            return torch.cat(outputs)
        halves = [out.chunk(2) for out in outputs]
        return torch.cat([uncond for uncond, _ in halves] + [cond for _, cond in halves])


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a", "DPM++ 2M SDE"])
def test_batching_itself_is_exact(components: ComponentCache, sampler: str) -> None:
    """Batch-invariant UNet calls: the batched latents and images are bit-identical to the solo runs'."""
    c = components(KIND)
    requests = four_requests(sampler)
    solo = [txt2img(c, request) for request in requests]
    rowwise = replace(c, unet=RowwiseUNet(c.unet, [r.sampling.batch_size for r in requests]))
    found = compare_with_solo(run_batch(rowwise, requests, [None] * 4, prepare_txt2img), solo)
    assert found.none, found


def test_img2img_batch_equals_solo_runs(components: ComponentCache) -> None:
    c = components(KIND)
    sampling = Sampling(sampler="Euler a", steps=5, cfg_scale=6.0, seed=5)
    requests = [
        Img2ImgRequest("a castle", sample_image(64, 48, seed=1), checkpoint=KIND, strength=0.6, sampling=sampling),
        Img2ImgRequest("a forest", sample_image(64, 48, seed=2), checkpoint=KIND, strength=0.6,
                       sampling=replace(sampling, seed=6, batch_size=2)),
    ]
    solo = [img2img(c, request) for request in requests]
    found = compare_with_solo(run_batch(c, requests, [None] * 2, prepare_img2img), solo)
    print(f"\nimg2img: batch vs solo {found}")
    assert found.latents < 1e-3 and found.pixels <= 1  # one request of one image: MKL's row blocks


class RecordingUNet(torch.nn.Module):
    """The UNet, noting the (rows, tokens) of the context of every call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.calls = unet, set()

    @property
    def config(self) -> object:
        return self.unet.config

    def forward(self, batch: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **kwargs: object) -> torch.Tensor:
        self.calls.add(tuple(context.shape[:2]))
        return self.unet(batch, t, context, **kwargs)


def test_different_prompt_chunk_counts_run_in_separate_batches(components: ComponentCache) -> None:
    """A prompt over 75 tokens has a (2B, 154, D) context: it runs in a batch of its own, and still equals solo."""
    c = components(KIND)
    long_prompt = ", ".join(["a very detailed landscape"] * 4)
    requests = [_txt("a fox", 1), _txt(long_prompt, 2), _txt("a hen", 3)]
    solo = [txt2img(c, request) for request in requests]
    recording = RecordingUNet(c.unet)
    batched = run_batch(replace(c, unet=recording), requests, [None] * 3, prepare_txt2img)
    assert recording.calls == {(4, 77), (2, 154)}  # the two short prompts together, the long one alone
    found = compare_with_solo(batched, solo)
    assert found.latents < 1e-3 and found.pixels <= 1  # MKL's row blocks (module docstring)


def test_stop_of_one_member_drops_only_its_image(components: ComponentCache) -> None:
    c = components(KIND)
    requests = four_requests("Euler a")
    steps_seen = {index: [] for index in range(4)}

    def reporter(index: int):
        def on_step(step: int, steps: int, x0: torch.Tensor) -> None:
            steps_seen[index].append((step, tuple(x0.shape)))
            if index == 1 and step == 2:
                raise Cancelled

        return on_step

    batched = run_batch(c, requests, [reporter(i) for i in range(4)], prepare_txt2img)
    assert isinstance(batched[1], Cancelled)
    others = [requests[0], requests[2], requests[3]]
    found = compare_with_solo([batched[0], batched[2], batched[3]], [txt2img(c, request) for request in others])
    assert found.latents < 1e-3 and found.pixels <= 1  # MKL's row blocks (module docstring)
    assert [step for step, _ in steps_seen[1]] == [1, 2]  # no progress after its Stop
    assert steps_seen[1][0][1][0] == 2 and steps_seen[0][0][1][0] == 1  # each saw its own slice
    assert [step for step, _ in steps_seen[0]] == [1, 2, 3, 4]


def test_stop_of_every_member_stops_the_run(components: ComponentCache) -> None:
    c = components(KIND)
    calls: list[int] = []

    def stop(step: int, steps: int, x0: torch.Tensor) -> None:
        calls.append(step)
        raise Cancelled

    outcomes = run_batch(c, four_requests("DPM++ 2M")[:2], [stop, stop], prepare_txt2img)
    assert all(isinstance(outcome, Cancelled) for outcome in outcomes)
    assert calls == [1, 1]


def test_a_request_that_fails_to_prepare_fails_alone(components: ComponentCache) -> None:
    """One request's own error while it is prepared (here a refused prompt) is its outcome; the others still run
    as one batch, bit-identical to their solo runs (batch-invariant UNet calls)."""
    c = components(KIND)
    requests = four_requests("Euler a")
    refused = InvalidRequest("refused for the test")

    def prepare(components_: object, request: Txt2ImgRequest, mode: object):
        if request is requests[2]:
            raise refused
        return prepare_txt2img(components_, request, mode)  # type: ignore[arg-type]

    kept = [requests[0], requests[1], requests[3]]
    rowwise = replace(c, unet=RowwiseUNet(c.unet, [r.sampling.batch_size for r in kept]))
    outcomes = run_batch(rowwise, requests, [None] * 4, prepare)
    assert outcomes[2] is refused
    found = compare_with_solo([outcomes[0], outcomes[1], outcomes[3]], [txt2img(c, request) for request in kept])
    assert found.none, found
