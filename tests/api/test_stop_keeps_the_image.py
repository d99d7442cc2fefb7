"""Stop mid-sampling: the pipeline still raises `Cancelled`, carrying the task's own finish of the x0 estimate of
the step Stop came after (the image so far, as A1111's Interrupt keeps it). Runs on the tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.errors import Cancelled

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