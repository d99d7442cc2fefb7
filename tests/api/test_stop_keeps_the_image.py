"""Stop mid-sampling keeps the image so far, as A1111's Interrupt does (review F6): the pipeline still raises
`Cancelled`, carrying the task's own finish of the x0 estimate of the step Stop came after; a user-facing run
(`Service.run`'s `keep_stopped`: the web UI's Stop, /interrupt) keeps it (saved, in History) with its PNG text
saying where it stopped. Runs on the tiny checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sd2_app.api.requests import HiresFix, InpaintRequest, Sampling, Txt2ImgRequest
from sd2_app.errors import Cancelled
from sd2_app.pipelines.metadata import read_png_parameters

KEEP = lambda: True  # noqa: E731  # the web UI's Stop and A1111's /interrupt keep the image so far
BASE = Txt2ImgRequest("a cat", checkpoint="sd21-base", width=64, height=64, sampling=Sampling(steps=20, seed=9))


@pytest.fixture
def service(tmp_path: Path):
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    return Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path / "cache"), outputs_dir=tmp_path / "out",
                   watermark=False)


def _x0_at(service, request: Txt2ImgRequest, step: int) -> torch.Tensor:
    """The x0 estimate of `step` in a run of `request` that nothing stops."""
    from sd2_app.pipelines.images import postprocess
    from sd2_app.pipelines.txt2img import prepare_txt2img
    from sd2_app.pipelines.vae_io import decode

    seen: dict[int, torch.Tensor] = {}
    with service.use_checkpoint(request.checkpoint) as components:
        run = prepare_txt2img(components, request)
        run.job.denoise(run.start, on_step=lambda done, total, x0: seen.setdefault(done, x0.clone()))
        return np.asarray(postprocess(decode(components.vae, seen[step]))[0])


def _stopped_after(steps: int):
    """(on_progress, should_stop) of a run that Stop ends while step `steps` + 1 runs."""
    seen: list[int] = []
    return (lambda done, total, preview: seen.append(done)), (lambda: len(seen) >= steps)


def test_stop_at_step_5_of_20_keeps_the_x0_estimate_of_step_5(service) -> None:
    steps: list[int] = []
    result = service.run(BASE, on_progress=lambda done, total, preview: steps.append(done),
                         should_stop=lambda: len(steps) >= 4, keep_stopped=KEEP)
    assert steps == [1, 2, 3, 4]  # Stop came in while step 5 ran: the loop ended after it
    assert result.stopped_at == (5, 20)
    assert result.warnings == ["Stopped at step 5/20; kept the image so far."]
    assert len(result.images) == 1
    assert np.array_equal(np.asarray(result.images[0]), _x0_at(service, result.request, 5))
    assert result.saved and result.saved[0].exists()
    text = read_png_parameters(result.saved[0])
    assert text.endswith(", Stopped at step: 5") and "Steps: 20," in text
    assert service.history()[0].images[0].info["parameters"] == text


def test_stop_before_sampling_began_keeps_nothing(service) -> None:
    with pytest.raises(Cancelled):
        service.run(BASE, should_stop=lambda: True, keep_stopped=KEEP)
    assert service.history() == []


def test_the_pipeline_still_raises_cancelled_with_the_image_so_far(service) -> None:
    """Stop stays an exception below the Service (a plot's cell, a Serve replica, the tests of every task's stop
    rely on it); it carries the task's own output of the step Stop came after."""
    from sd2_app.pipelines.txt2img import txt2img

    def on_step(done: int, total: int, x0: torch.Tensor) -> None:
        if done == 3:
            raise Cancelled(at=(done, total))

    with service.use_checkpoint("sd21-base") as components, pytest.raises(Cancelled) as stop:
        txt2img(components, BASE, on_step)
    assert stop.value.latents is None  # used by the finish: the exception no longer holds the device tensor
    assert [image.size for image in stop.value.output.images] == [(64, 64)]
    assert np.array_equal(np.asarray(stop.value.output.images[0]), _x0_at(service, BASE, 3))


def test_a_run_that_does_not_keep_stopped_images_still_raises_and_keeps_nothing(service) -> None:
    """Without `keep_stopped` (a plot's cell, the Serve replicas' callers, the tests of every stop path) Stop raises
    as before; the image so far rides on the exception, unkept."""
    on_progress, should_stop = _stopped_after(4)
    with pytest.raises(Cancelled) as stop:
        service.run(BASE, on_progress=on_progress, should_stop=should_stop)
    assert stop.value.result.stopped_at == (5, 20) and stop.value.result.saved == []
    assert service.history() == [] and not list((service.outputs_dir or Path("/nonexistent")).rglob("*.png"))


def test_hires_fix_stopped_in_its_second_pass_keeps_that_pass_at_the_target_size(service) -> None:
    request = replace(BASE, sampling=Sampling(steps=4, seed=9), hires=HiresFix(scale=2.0, steps=4))
    on_progress, should_stop = _stopped_after(5)  # both passes count on one bar: 4 first, then 4 second
    result = service.run(request, on_progress=on_progress, should_stop=should_stop, keep_stopped=KEEP)
    assert result.stopped_at == (6, 8) and result.warnings == ["Stopped at step 6/8; kept the image so far."]
    assert result.images[0].size == (128, 128)
    text = result.images[0].info["parameters"]
    assert "Hires upscale: 2.0" in text and text.endswith(", Stopped at step: 6")


def test_hires_fix_stopped_in_its_first_pass_keeps_nothing(service) -> None:
    request = replace(BASE, sampling=Sampling(steps=4, seed=9), hires=HiresFix(scale=2.0, steps=4))
    on_progress, should_stop = _stopped_after(2)
    with pytest.raises(Cancelled):
        service.run(request, on_progress=on_progress, should_stop=should_stop, keep_stopped=KEEP)
    assert service.history() == []


def test_upscale_keeps_its_4x_image_so_far(service) -> None:
    """Stop during Upscale x4 keeps the 4x decode of the last step's x0 estimate, as the other tasks do."""
    from sd2_app.api.requests import UpscaleRequest

    request = UpscaleRequest("sharp photo", image=Image.new("RGB", (24, 16), (30, 90, 200)), checkpoint="x4-upscaler",
                             sampling=Sampling(sampler="DDIM", steps=6, seed=5))
    on_progress, should_stop = _stopped_after(2)
    result = service.run(request, on_progress=on_progress, should_stop=should_stop, keep_stopped=KEEP)
    assert result.stopped_at == (3, 6) and result.warnings == ["Stopped at step 3/6; kept the image so far."]
    assert [image.size for image in result.images] == [(96, 64)]
    text = read_png_parameters(result.saved[0])
    assert "Noise level: 20" in text and text.endswith(", Stopped at step: 3")
    full = service.run(request)  # the same request run to its end differs: the image so far is not the end
    assert not np.array_equal(np.asarray(full.images[0]), np.asarray(result.images[0]))


def test_inpaint_keeps_the_image_so_far_pasted_back_as_its_end_would_be(service) -> None:
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    request = InpaintRequest("a dog", image, mask, checkpoint="sd2-inpainting", keep_unmasked=True,
                             sampling=Sampling(steps=6, seed=3))
    on_progress, should_stop = _stopped_after(2)
    result = service.run(request, on_progress=on_progress, should_stop=should_stop, keep_stopped=KEEP)
    assert result.stopped_at == (3, 6) and result.mask_image is not None
    kept = np.asarray(result.images[0])
    assert kept.shape == (64, 64, 3) and (kept[:8, :8] == (200, 30, 30)).all()  # outside the mask: as it was
    assert result.images[0].info["parameters"].endswith(", Stopped at step: 3")
    assert len(service.history()) == 1


def test_a_batch_count_keeps_its_finished_batches_and_the_stopped_batchs_image_so_far(service) -> None:
    request = replace(BASE, sampling=Sampling(steps=4, seed=9, batch_count=3))
    on_progress, should_stop = _stopped_after(5)  # batch 1's 4 steps, then Stop while batch 2's step 2 runs
    result = service.run(request, on_progress=on_progress, should_stop=should_stop, keep_stopped=KEEP)
    assert len(result.images) == 2 and result.stopped and result.stopped_at == (2, 4)
    assert result.warnings[-1] == "Stopped in batch 2/3: these are the images of the 1 batch before it and its image so far."
    assert result.images[1].info["parameters"].endswith(", Stopped at step: 2")
    assert "Stopped at step" not in result.images[0].info["parameters"]
