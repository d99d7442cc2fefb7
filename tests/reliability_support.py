"""Shared pieces of the reliability tests: a real Service on the tiny checkpoints, fast settings, test files."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sd2_app.api.requests import Sampling, Txt2ImgRequest

# Fast settings: 64x64, 2 steps, no guidance (one UNet pass per step instead of two).
FAST = Sampling(sampler="Euler", steps=2, cfg_scale=1.0, seed=1)


def fast(seed: int = 1, **changes: object) -> Sampling:
    return replace(FAST, seed=seed, **changes)  # type: ignore[arg-type]


def txt2img(prompt: str = "a cat", seed: int = 1, **changes: object) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt, checkpoint="sd21-base", width=64, height=64, sampling=fast(seed), **changes)  # type: ignore[arg-type]


def make_service(outputs: Path | None = None, device: str = "cpu", **kwargs: object):  # -> (Service, ModelManager)
    """A Service over a real ModelManager (CPU fp32 by default) whose registry points at the tiny repos."""
    from sd2_app.manager import ModelManager
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.api.service import Service
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    manager = ModelManager(device, registry=registry, cache_dir=Path(tempfile.mkdtemp(prefix="sd2-rel-")))
    return Service(manager, outputs_dir=outputs, allowed_repos=(), **kwargs), manager


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: on 2 shared cores, more threads only fight each other (10x slower measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(one_thread: None):  # -> (Service, ModelManager)
    return make_service()


def png_bytes(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def noise_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def app_launch_kwargs(argv: list[str]) -> dict[str, object]:
    """The keyword arguments app.main passes to `demo.launch` (`sd2_app.webapp.build` is replaced by a recorder)."""
    import app
    from sd2_app import webapp

    captured: dict[str, object] = {}

    class Recorder:
        def launch(self, **kwargs: object) -> None:
            captured.update(kwargs)

        def close(self) -> None:  # app.main closes the app when `launch` returns
            pass

    original = webapp.build
    webapp.build = lambda args: Recorder()  # type: ignore[assignment]
    try:
        app.main(argv)
    finally:
        webapp.build = original  # type: ignore[assignment]
    return captured


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def launched(demo, **launch: object) -> Iterator[str]:
    """A built app (gr.Blocks) queued as the tests run it (8 places, one job at a time), launched in-process on a
    free loopback port with `launch`'s extra settings; yields its URL and closes it afterwards."""
    demo.queue(max_size=8, default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            show_error=False, **launch)
    try:
        yield url
    finally:
        demo.close()


def link_tiny_cache(cache: Path) -> Path:
    """`cache` (a folder for $SD2APP_CACHE) with the shared tiny repos linked in: app.py's --tiny reads them from
    <cache>/tiny instead of writing its own."""
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    ensure_tiny_repos(tiny_dir())
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "tiny").symlink_to(tiny_dir(), target_is_directory=True)
    return cache


def linked_tiny_cache(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """$SD2APP_CACHE set to `folder`, with the shared tiny repos linked in (`link_tiny_cache`)."""
    monkeypatch.setenv("SD2APP_CACHE", str(link_tiny_cache(folder)))


@contextmanager
def serve(argv: list[str], cache: Path, bind: str | None = None) -> Iterator[tuple[str, object]]:
    """app.py's app for `argv` (`sd2_app.webapp.build`) launched with its launch settings, in-process on a free port.

    `bind` overrides the address listened on (a public-mode `--host 0.0.0.0` is tested on loopback).
    The tiny repos are linked into `cache` (app.py's --tiny reads them under $SD2APP_CACHE/tiny). Yields
    (url, demo); PIL's pixel cap, which the build sets, is restored afterwards.
    """
    import app
    from sd2_app import webapp

    link_tiny_cache(cache)
    args = app.parse_args(argv)
    pixels_before = Image.MAX_IMAGE_PIXELS
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("SD2APP_CACHE", str(cache))
    try:
        demo = webapp.build(args)
        kwargs = webapp.launch_settings(args, demo)
        kwargs.update(server_port=free_port(), prevent_thread_lock=True, quiet=True)
        if bind is not None:
            kwargs["server_name"] = bind
        _, url, _ = demo.launch(**kwargs)
        try:
            yield url, demo
        finally:
            demo.close()
    finally:
        monkeypatch.undo()
        Image.MAX_IMAGE_PIXELS = pixels_before


@pytest.fixture(scope="module")
def served_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """`python app.py --tiny --device cpu --no-save --queue-size 8`, served in-process (see `serve`)."""
    with serve(["--tiny", "--device", "cpu", "--no-save", "--queue-size", "8"],
               tmp_path_factory.mktemp("app-cache")) as served:
        yield served
