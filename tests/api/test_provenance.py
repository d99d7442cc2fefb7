"""Provenance: the invisible "SDV2" watermark (read by invisible-watermark's own decoder) and the AI-generated
XMP marker, on every result the app returns or saves, while the A1111 `parameters` text stays readable."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd2_app.pipelines import watermark
from sd2_app.pipelines.metadata import DIGITAL_SOURCE_TYPE, digital_source_type, read_png_parameters, save_png
from tests.reliability_support import linked_tiny_cache

ASSETS = Path(__file__).resolve().parents[2] / "assets"
PSNR_BOUND_DB = 38.0


def reference_decode(image: Image.Image) -> bytes:
    """invisible-watermark's decoder, as Stability's scripts would read our images (BGR, as OpenCV loads them)."""
    imwatermark = pytest.importorskip("imwatermark")
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return imwatermark.WatermarkDecoder("bytes", 32).decode(bgr, "dwtDct")


@pytest.mark.parametrize("size", [(512, 512), (256, 256), (640, 384), (301, 259)])
def test_reference_decoder_reads_sdv2_and_the_change_is_small(size: tuple[int, int]) -> None:
    original = Image.open(ASSETS / "landscape.png").convert("RGB").resize(size)
    marked = watermark.embed(original)
    assert reference_decode(original) != b"SDV2"
    assert reference_decode(marked) == b"SDV2"
    assert watermark.read(marked) == b"SDV2"
    assert watermark.psnr(original, marked) >= PSNR_BOUND_DB
    assert marked.size == original.size and marked.mode == "RGB"


def test_embed_keeps_the_parameters_and_skips_images_too_small_to_decode() -> None:
    image = Image.open(ASSETS / "landscape.png").convert("RGB").resize((512, 512))
    image.info["parameters"] = "a cat\nSteps: 2, Seed: 1"
    assert watermark.embed(image).info["parameters"] == "a cat\nSteps: 2, Seed: 1"
    small = image.resize((255, 256))  # under 256x256 pixels: invisible-watermark refuses these
    assert np.array_equal(np.asarray(watermark.embed(small)), np.asarray(small))


def test_saved_png_carries_parameters_and_the_xmp_marker(tmp_path: Path) -> None:
    from sd2_app.pipelines.metadata import mark_ai_generated

    image = Image.new("RGB", (8, 8))
    image.info["parameters"] = "p\nSteps: 1"
    path = save_png(mark_ai_generated(image), tmp_path / "x.png")
    assert read_png_parameters(path) == "p\nSteps: 1"
    assert digital_source_type(path) == DIGITAL_SOURCE_TYPE
    with Image.open(path) as opened:  # an XMP reader's view: an iTXt chunk with XMP's keyword
        packet = opened.text["XML:com.adobe.xmp"]
    assert packet.startswith("<?xpacket begin=") and "Iptc4xmpExt:DigitalSourceType" in packet


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, object, Path]]:
    from sd2_app.api.a1111_routes import A1111Api, build_router
    from tests.reliability_support import free_port
    from tests.reliability_support import make_service
    from sd2_app.ui import build_ui

    outputs = tmp_path_factory.mktemp("outputs")
    service, _ = make_service(outputs)
    demo = build_ui(service)
    demo.queue(max_size=8, default_concurrency_limit=1)
    port = free_port()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                            show_error=False, ssr_mode=False, app_kwargs={"routes": build_router(A1111Api(service)).routes})
    try:
        yield url, port, service, outputs
    finally:
        demo.close()


BODY = {"prompt": "a cat", "sampler_name": "Euler", "steps": 2, "cfg_scale": 1.0, "width": 256, "height": 256,
        "seed": 3}


def _txt2img(port: int) -> tuple[Image.Image, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", data=json.dumps(BODY).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        body = json.loads(response.read())
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    image.load()
    return image, json.loads(body["info"])


@pytest.mark.slow
def test_every_result_is_marked_through_the_api_the_ui_and_on_disk(app) -> None:
    from gradio_client import Client

    url, port, service, outputs = app
    returned, info = _txt2img(port)
    assert reference_decode(returned) == b"SDV2"
    assert digital_source_type(returned) == DIGITAL_SOURCE_TYPE
    assert returned.info["parameters"] == info["infotexts"][0] and "Seed: 3" in returned.info["parameters"]
    saved = sorted(outputs.rglob("*-3-txt2img.png"))[-1]
    with Image.open(saved) as on_disk:
        assert reference_decode(on_disk) == b"SDV2"
        assert np.array_equal(np.asarray(on_disk.convert("RGB")), np.asarray(returned.convert("RGB")))
    assert read_png_parameters(saved) == returned.info["parameters"] and digital_source_type(saved) == DIGITAL_SOURCE_TYPE

    gallery = Client(url, verbose=False).predict(
        prompt="a cat", negative_prompt="", checkpoint="sd21-base", width=256, height=256, sampler="Euler",
        schedule_type="Automatic", steps=2, cfg_scale=1.0, guidance_rescale=0.0, seed=3, batch_size=1, api_name="/txt2img")[1]
    with Image.open(gallery[0]["image"]) as downloaded:  # the PNG a visitor downloads from the gallery
        downloaded.load()
        assert reference_decode(downloaded) == b"SDV2"
        assert downloaded.info["parameters"] == returned.info["parameters"]
        assert digital_source_type(downloaded) == DIGITAL_SOURCE_TYPE


@pytest.mark.slow
def test_no_watermark_leaves_pixels_alone_within_the_bound_and_keeps_the_marker(app) -> None:
    from sd2_app.api.requests import Sampling, Txt2ImgRequest

    _, port, service, _ = app
    marked, _ = _txt2img(port)
    service.watermark = False  # what --no-watermark sets
    try:
        plain = service.run(Txt2ImgRequest("a cat", width=256, height=256,
                                           sampling=Sampling(sampler="Euler", steps=2, cfg_scale=1.0, seed=3))).images[0]
    finally:
        service.watermark = True
    assert reference_decode(plain) != b"SDV2"
    assert digital_source_type(plain) == DIGITAL_SOURCE_TYPE
    assert PSNR_BOUND_DB <= watermark.psnr(plain, marked) < float("inf")


@pytest.mark.slow
def test_app_flag_turns_the_watermark_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import app as app_module
    import sd2_app.api.engine as engine_module
    from sd2_app import webapp

    seen: dict = {}

    class Recorder(engine_module.Service):
        def __init__(self, *args, **kwargs) -> None:
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine_module, "Service", Recorder)  # the one builder makes the app's Service
    linked_tiny_cache(monkeypatch, tmp_path)
    for argv, expected in ((["--tiny"], True), (["--tiny", "--no-watermark"], False)):
        webapp.build(app_module.parse_args(argv))
        assert seen["watermark"] is expected
