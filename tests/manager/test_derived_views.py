"""The seamless-tiling view is made once per loaded UNet and VAE and kept by the model manager (issue 24
section 3): later tiled jobs reuse it, with the same images; a move or an unload drops it."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import sd2_app.pipelines.seamless as seamless
from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.pipelines.txt2img import txt2img


@pytest.fixture
def manager(tmp_path: Path):
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    return ModelManager("cpu", registry=tiny_registry(ensure_tiny_repos(tiny_dir())), cache_dir=tmp_path)


@pytest.fixture
def views_made(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """The class of every module `tiled_view` derives."""
    made: list[type] = []
    original = seamless.tiled_view
    monkeypatch.setattr(seamless, "tiled_view", lambda module: made.append(type(module)) or original(module))
    return made


def _tiled(seed: int) -> Txt2ImgRequest:
    return Txt2ImgRequest("a tiled floor", width=64, height=64, tiling=True,
                          sampling=Sampling(steps=2, seed=seed, sampler="Euler a"))


def test_tiled_jobs_share_the_managers_view_with_the_same_images(manager, views_made: list[type]) -> None:
    with manager.use("sd2-base") as components:
        first = txt2img(components, _tiled(5))
        view = seamless.tiled_components(components).unet
    assert [cls.__name__ for cls in views_made] == ["UNet", "AutoencoderKL"]
    with manager.use("sd2-base") as components:
        again = txt2img(components, _tiled(5))
        assert seamless.tiled_components(components).unet is view
        alone = txt2img(replace(components, derived=None), _tiled(5))
    assert len(views_made) == 4  # the second job made none; the job without the manager's cache made its own
    assert torch.equal(first.latents, again.latents) and torch.equal(again.latents, alone.latents)
    assert first.images[0].tobytes() == again.images[0].tobytes()


def test_a_move_or_an_unload_drops_the_view(manager, views_made: list[type]) -> None:
    with manager.use("sd2-base") as components:
        view = weakref.ref(seamless.tiled_components(components).unet)
    manager.offload("sd2-base")  # a move between tiers: the view's own state could be stale
    with manager.use("sd2-base") as components:
        assert seamless.tiled_components(components).unet is not view()
    assert len(views_made) == 4
    manager.unload("sd2-base")
    del components
    gc.collect()
    assert view() is None
