"""Hires fix, seed extras, tiling and 16-bit depth maps through the running app (gradio_client), on the tiny
checkpoints: the endpoints take the options by name, the PNGs carry A1111's keys, and the parameters read
back with PNG info reproduce the image exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

FAST = {"steps": 2, "seed": 7, "cfg_scale": 7.5, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched

    outputs = tmp_path_factory.mktemp("outputs")
    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache")),
                      outputs_dir=outputs)
    with launched(build_ui(service)) as url:
        yield Client(url, verbose=False), outputs


def _png(gallery: list[dict]) -> Image.Image:
    image = Image.open(gallery[0]["image"])
    image.load()
    return image


def test_hires_fix_endpoint_returns_the_target_size_with_a1111_keys(app) -> None:
    client, _ = app
    _, gallery, _ = client.predict(prompt="a castle", hires_fix=True, hires_upscaler="Lanczos", hires_scale=1.5,
                                   hires_steps=4, denoising_strength=0.5, api_name="/txt2img", **FAST)
    image = _png(gallery)
    assert image.size == (96, 96)
    text = image.info["parameters"]
    for part in ("Size: 64x64", "Denoising strength: 0.5", "Hires upscale: 1.5", "Hires steps: 4",
                 "Hires upscaler: Lanczos"):
        assert part in text


def test_hires_second_pass_runs_its_hires_steps_as_a1111(app, tmp_path: Path) -> None:
    """4 hires steps at strength 0.5 run as A1111 runs them: the last 4 of an 8-step schedule, i.e. image to
    image by hand with 8 steps at strength 0.5 on the Lanczos-upscaled first image (all through the app)."""
    client, _ = app
    common = {**FAST, "prompt": "a castle", "sampler": "Euler"}
    _, gallery, _ = client.predict(hires_fix=True, hires_upscaler="Lanczos", hires_scale=1.5, hires_steps=4,
                                   denoising_strength=0.5, api_name="/txt2img", **common)
    hires = _png(gallery)
    _, gallery, _ = client.predict(api_name="/txt2img", **common)
    _png(gallery).resize((96, 96), Image.Resampling.LANCZOS).save(tmp_path / "upscaled.png")
    _, gallery, _ = client.predict(image=handle_file(str(tmp_path / "upscaled.png")), strength=0.5,
                                   api_name="/img2img", **{**common, "steps": 8, "width": 96, "height": 96})
    assert np.array_equal(np.asarray(_png(gallery)), np.asarray(hires))


def test_hires_sizes_through_the_endpoint_are_a1111s(app) -> None:
    """One explicit side: the other in proportion, written as A1111 writes it ("80x0"); a width and height of
    another shape: covered, then cropped to exactly that size."""
    client, _ = app
    _, gallery, _ = client.predict(prompt="a castle", hires_fix=True, hires_width=80, hires_steps=2,
                                   api_name="/txt2img", **{**FAST, "width": 64, "height": 96})
    image = _png(gallery)
    assert image.size == (80, 120) and "Hires resize: 80x0" in image.info["parameters"]
    _, gallery, _ = client.predict(prompt="a castle", hires_fix=True, hires_width=96, hires_height=64,
                                   hires_steps=2, api_name="/txt2img", **FAST)
    image = _png(gallery)
    assert image.size == (96, 64) and "Hires resize: 96x64" in image.info["parameters"]


def test_png_info_parameters_reproduce_hires_variation_tiling_exactly(app) -> None:
    client, outputs = app
    _, gallery, _ = client.predict(
        prompt="a mossy wall", hires_fix=True, hires_upscaler="Latent (nearest-exact)", hires_width=80,
        hires_height=72, hires_steps=3, denoising_strength=0.6, hires_sampler="Euler", variation_seed=5,
        variation_strength=0.3, seed_resize_from_width=96, seed_resize_from_height=64, tiling=True,
        api_name="/txt2img", **FAST)
    first = _png(gallery)
    saved = sorted(outputs.glob("*/*-7-txt2img.png"))[-1]
    _, fields = client.predict(path=handle_file(str(saved)), api_name="/png_info")
    assert fields["Hires resize"] == "80x72" and fields["Hires sampler"] == "Euler"
    assert (fields["Variation seed"], fields["Variation seed strength"], fields["Seed resize from"]) == (5, 0.3, "96x64")
    assert fields["Tiling"] is True
    width, height = (int(v) for v in fields["Size"].split("x"))
    resize_width, resize_height = (int(v) for v in fields["Hires resize"].split("x"))
    from_width, from_height = (int(v) for v in fields["Seed resize from"].split("x"))
    _, again, _ = client.predict(
        prompt=fields["Prompt"], steps=fields["Steps"], sampler=fields["Sampler"], cfg_scale=fields["CFG scale"],
        seed=fields["Seed"], width=width, height=height, hires_fix=True, hires_upscaler=fields["Hires upscaler"],
        hires_width=resize_width, hires_height=resize_height, hires_steps=fields["Hires steps"],
        denoising_strength=fields["Denoising strength"], hires_sampler=fields["Hires sampler"],
        variation_seed=fields["Variation seed"], variation_strength=fields["Variation seed strength"],
        seed_resize_from_width=from_width, seed_resize_from_height=from_height, tiling=fields["Tiling"],
        api_name="/txt2img")
    assert first.size == (80, 72)
    assert np.array_equal(np.asarray(_png(again)), np.asarray(first))


def test_png_info_fields_fill_the_text_to_image_widgets_back() -> None:
    from sd2_app.pipelines.metadata import parse_parameters
    from sd2_app.ui.txt2img_extras import from_parameters, request_fields

    text = ("p\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 7, Size: 64x64, Denoising strength: 0.6, "
            "Hires resize: 80x72, Hires steps: 3, Hires upscaler: Lanczos, Hires sampler: DDIM, Variation seed: 5, "
            "Variation seed strength: 0.3, Seed resize from: 96x64, Tiling: True")
    values = from_parameters(parse_parameters(text), ["Euler", "DDIM"])
    fields = request_fields(*values)
    hires = fields["hires"]
    assert (hires.upscaler, hires.width, hires.height, hires.steps, hires.sampler) == ("Lanczos", 80, 72, 3, "DDIM")
    assert hires.denoising_strength == 0.6 and fields["tiling"] is True
    assert (fields["seed_extras"].variation_seed, fields["seed_extras"].variation_strength) == (5, 0.3)
    assert fields["seed_extras"].resize_from == (96, 64)
    assert request_fields(*from_parameters(parse_parameters("p\nSteps: 2, Seed: 1"), []))["hires"] is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hires_fix": True, "hires_scale": 4, "width": 512, "height": 512},
     "The hires target 2048x2048 is larger than this server's limit of 1024 pixels per side; lower the upscale "
     "or the size."),
    ({"variation_strength": 1.5}, "Variation strength must be between 0 and 1, got 1.5."),  # the service's check
    ({"seed_resize_from_width": 96}, "Seed resize from needs both a width and a height (0 for both turns it off)."),
])
def test_invalid_workflow_options_come_back_in_words(app, kwargs: dict, message: str) -> None:
    client, _ = app
    with pytest.raises(AppError) as caught:
        client.predict(prompt="x", api_name="/txt2img", **{**FAST, **kwargs})
    assert str(caught.value) == message


def test_16_bit_depth_upload_reaches_the_pipeline_at_full_precision(app, tmp_path: Path) -> None:
    client, _ = app
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    ramp = 30000 + 250 * x / 63 + 60 * y / 63  # about one 8-bit level from end to end
    Image.fromarray(np.round(ramp).astype(np.uint16)).save(tmp_path / "depth16.png")
    Image.fromarray(np.round(ramp / 65535 * 255).astype(np.uint8)).save(tmp_path / "depth8.png")
    Image.new("RGB", (64, 64), (120, 90, 60)).save(tmp_path / "image.png")
    used = {}
    for name in ("depth16", "depth8"):
        _, gallery, _, depth_used = client.predict(
            image=handle_file(str(tmp_path / "image.png")), depth_map=handle_file(str(tmp_path / f"{name}.png")),
            prompt="a statue", strength=0.7, steps=2, seed=7, api_name="/depth")
        used[name] = np.asarray(Image.open(depth_used).convert("L"), dtype=np.int32)
    assert len(np.unique(used["depth16"])) > 100  # the ramp, stretched to 0..255 as the condition sees it
    assert len(np.unique(used["depth8"])) <= 2  # its 8-bit rounding: one step


def test_png_info_send_fills_every_workflow_widget() -> None:
    """The PNG info tab's "Send to text to image" event returns one value per output, the options included."""
    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service())
    send = next(f for f in demo.fns.values() if f.api_name == "png_info_send")
    text = ("p\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 7, Size: 64x64, Denoising strength: 0.6, "
            "Hires upscale: 1.5, Hires steps: 3, Hires upscaler: Latent, Variation seed: 5, "
            "Variation seed strength: 0.3, Tiling: True")
    values = send.fn(text)
    assert len(values) == len(send.outputs)
    by_id = {getattr(block, "elem_id", None): value for block, value in zip(send.outputs, values)}
    assert by_id["txt2img-hires"] is True and by_id["txt2img-hires-scale"] == 1.5
    assert by_id["txt2img-hires-steps"] == 3 and by_id["txt2img-hires-strength"] == 0.6
    assert by_id["txt2img-variation-seed"] == 5 and by_id["txt2img-variation-strength"] == 0.3
    assert by_id["txt2img-tiling"] is True


def test_img2img_endpoint_takes_variation_and_tiling(app, tmp_path: Path) -> None:
    client, _ = app
    Image.new("RGB", (64, 64), (40, 120, 90)).save(tmp_path / "in.png")
    _, gallery, _ = client.predict(image=handle_file(str(tmp_path / "in.png")), prompt="moss", strength=0.6, steps=2,
                                   seed=7, variation_seed=11, variation_strength=0.4, tiling=True, api_name="/img2img")
    text = _png(gallery).info["parameters"]
    assert "Variation seed: 11, Variation seed strength: 0.4" in text and "Tiling: True" in text
