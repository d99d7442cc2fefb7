"""A result sent to another tab, through the running app (fake pipelines), by raw HTTP as the page calls these
events: the image boxes keep it whole, and (review F15) "Send to image to image" sets the image's own size, where it
set the image's shape at the checkpoint's 512² area (a 256x192 result became 592x440, 5.3 times the pixels); the
tab's default-size event, which also follows the send (the image's change), keeps that size for that image, and a
new upload gets the checkpoint's rule."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from sd2_app.pipelines.metadata import attach_parameters, format_parameters, save_png

SESSION = "send-size"


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[httpx.Client, object]]:
    from sd2_app.ui import build_ui
    from tests.reliability_support import launched
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service())
    with launched(demo) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, demo


def _fn(demo: object, name: str):  # -> the BlockFunction of that api_name
    return next(f for f in demo.fns.values() if f.api_name == name)  # type: ignore[attr-defined]


def _queued(client: httpx.Client, demo: object, name: str, data: list) -> list:
    """The outputs of one queued call of the event `name` in this test's session."""
    join = {"data": data, "fn_index": _fn(demo, name)._id, "session_hash": SESSION}
    assert client.post("gradio_api/queue/join", json=join).status_code == 200
    with client.stream("GET", "gradio_api/queue/data", params={"session_hash": SESSION}) as stream:
        for line in stream.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                assert message["success"], message
                return message["output"]["data"]
    raise AssertionError(f"{name} did not complete")


def _uploaded(client: httpx.Client, image: Image.Image) -> dict:
    data = io.BytesIO()
    image.save(data, "PNG")
    path = client.post("gradio_api/upload", files={"files": ("r.png", data.getvalue(), "image/png")}).json()[0]
    return {"path": path, "orig_name": "r.png", "meta": {"_type": "gradio.FileData"}}


def _result(tmp_path, size: tuple[int, int]) -> Image.Image:
    """A result as the tabs save it: noise pixels (a lossy copy would differ) and its parameters text."""
    noise = Image.effect_noise(size, 60).convert("RGB")
    text = format_parameters("a lighthouse", "", {"Steps": 2, "Seed": 7, "Size": f"{size[0]}x{size[1]}"})
    return Image.open(save_png(attach_parameters(noise, text), tmp_path / "result.png"))


def _sent(client: httpx.Client, demo: object, name: str, data: list) -> dict[str, object]:
    """The outputs of the send `name` by the elem_id of the widget each sets."""
    return dict(zip((c.elem_id for c in _fn(demo, name).outputs), _queued(client, demo, name, data)))


def test_a_sent_image_reaches_each_image_box_whole(app, tmp_path) -> None:
    """The image boxes kept a sent image as Gradio's default WebP, which PIL saves lossy: the next run read a
    changed copy. Each now keeps it as a PNG, pixel for pixel."""
    client, demo = app
    result = _result(tmp_path, (64, 72))
    gallery = [{"image": _uploaded(client, result), "caption": None}]
    for target, box in (("img2img", "img2img-image"), ("outpaint", "outpaint-image"), ("upscale", "upscale-image"),
                        ("depth", "depth-image")):
        image = _sent(client, demo, f"history_send_to_{target}", [gallery, 0])[box]
        assert image["path"].endswith(".png"), target
        with Image.open(image["path"]) as kept:  # the app runs here: its cache is on this machine
            assert kept.tobytes() == result.tobytes(), target


def test_a_sent_image_keeps_its_own_size_in_image_to_image_and_a_new_upload_gets_the_checkpoints(
        app, tmp_path) -> None:
    client, demo = app
    result = _result(tmp_path, (256, 192))
    gallery = [{"image": _uploaded(client, result), "caption": None}]
    default = _fn(demo, "img2img_default_size").inputs[1].value  # the checkpoint preselected: SD 2.1 base (512)
    txt2img_rest = [c.value for c in _fn(demo, "txt2img_send_to_img2img").inputs[6:]]  # sampling, tiling as built
    sends = {"txt2img_send_to_img2img": [gallery, 0, "Generate", "a lighthouse", "", 7, *txt2img_rest],
             "history_send_to_img2img": [gallery, 0], "xyz_send_to_img2img": [gallery, 0]}
    for name, data in sends.items():
        sent = _sent(client, demo, name, data)
        assert (sent["img2img-width"], sent["img2img-height"]) == (256, 192), name  # was 592x440
        # The box's change follows with the image the page now holds: the sent size stays, whatever runs last.
        image = sent["img2img-image"]
        assert _queued(client, demo, "img2img_default_size", [image, default, None]) == [256, 192], name
    fresh = _uploaded(client, Image.new("RGB", (256, 192), (9, 90, 9)))  # another image of the same size
    assert _queued(client, demo, "img2img_default_size", [fresh, default, None]) == [592, 440]


def test_a_send_puts_the_gallerys_own_file_in_the_box_and_writes_none(app, tmp_path) -> None:
    """Given the picked image as PIL, Gradio encoded it again into a file named by its bytes, and rewrote that same
    file at every send of the image: a page still fetching it for an earlier send got it cut short. A send now
    hands the box the gallery's own file, untouched."""
    client, demo = app
    result = _result(tmp_path, (64, 72))
    gallery = [{"image": _uploaded(client, result), "caption": None}]
    picked = Path(gallery[0]["image"]["path"])
    content = picked.read_bytes()
    for target, box in (("img2img", "img2img-image"), ("outpaint", "outpaint-image"), ("upscale", "upscale-image"),
                        ("depth", "depth-image"), ("inpaint", "inpaint-editor")):
        for _ in range(2):  # the same image sent twice
            value = _sent(client, demo, f"history_send_to_{target}", [gallery, 0])[box]
            shown = value["background"]["path"] if target == "inpaint" else value["path"]
            assert Path(shown).resolve() == picked.resolve(), target
    assert picked.read_bytes() == content
