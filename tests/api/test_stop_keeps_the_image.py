"""Stop mid-sampling keeps the image so far, as A1111's Interrupt does: the run ends after the step Stop came in, and
its image is decoded from that step's x0 estimate, kept (saved, in History) with its PNG text saying where it
stopped. Runs on the tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.errors import Cancelled
from sd2_app.pipelines.metadata import read_png_parameters

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
    from sd2_app.pipelines.txt2img import prepare_txt2img

    seen: dict[int, torch.Tensor] = {}
    with service.use_checkpoint(request.checkpoint) as components:
        run = prepare_txt2img(components, request)
        run.job.denoise(run.start, on_step=lambda done, total, x0: seen.setdefault(done, x0.clone()))
        from sd2_app.pipelines.images import postprocess
        from sd2_app.pipelines.vae_io import decode

        return np.asarray(postprocess(decode(components.vae, seen[step]))[0])


def test_stop_at_step_5_of_20_keeps_the_x0_estimate_of_step_5(service) -> None:
    steps: list[int] = []
    result = service.run(BASE, on_progress=lambda done, total, preview: steps.append(done),
                         should_stop=lambda: len(steps) >= 4)
    assert steps == [1, 2, 3, 4]  # Stop came in while step 5 ran: the loop ended after it
    assert result.stopped_at == (5, 20)
    assert "Stopped at step 5/20; kept the image so far." in result.warnings
    assert len(result.images) == 1
    assert np.array_equal(np.asarray(result.images[0]), _x0_at(service, result.request, 5))
    assert result.saved and result.saved[0].exists()
    text = read_png_parameters(result.saved[0])
    assert text.endswith(", Stopped at step: 5") and "Steps: 20," in text
    assert service.history()[0].images[0].info["parameters"] == text


def test_stop_before_sampling_began_keeps_nothing(service) -> None:
    with pytest.raises(Cancelled):
        service.run(BASE, should_stop=lambda: True)
    assert service.history() == []
