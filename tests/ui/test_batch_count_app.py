"""Batch count through the running app (`python app.py --tiny`, in-process) with gradio_client: the tabs' last API
parameter `batch_count` runs that many batches one after another into one gallery, each batch at its own seed and
each image with its own parameters text; the progress line counts over the batches; a count over the server's bound
is refused in words (sd2_app/api/batch_count.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from tests.reliability_support import noise_image, one_thread, serve  # noqa: E402,F401  # one_thread: a fixture

FAST = {"width": 64, "height": 64, "steps": 2, "cfg_scale": 1.0, "sampler": "Euler"}


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    outputs = tmp_path_factory.mktemp("outputs")
    argv = ["--tiny", "--device", "cpu", "--outputs", str(outputs), "--queue-size", "8"]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as (url, _):
        yield Client(url, verbose=False), outputs


def _texts(gallery: list[dict]) -> list[str]:
    return [Image.open(item["image"]).info["parameters"] for item in gallery]


def test_two_batches_of_two_make_four_images_each_with_its_own_seed(app: tuple[Client, Path]) -> None:
    """Batch 2 follows on at seed + images per prompt, as the A1111 API's n_iter (A1111's numbering): the four
    images are seeds 40 to 43; each PNG's text has its image's seed and its place in the batch, and no batch count
    (A1111 writes none)."""
    client, outputs = app
    _, gallery, info = client.predict(prompt="two batches", seed=40, batch_size=2, batch_count=2, api_name="/txt2img",
                                      **FAST)
    texts = _texts(gallery)
    assert len(texts) == 4
    assert [(t.split("Seed: ")[1].split(",")[0], t.split("Batch pos: ")[1].split(",")[0]) for t in texts] == [
        ("40", "0"), ("41", "1"), ("42", "0"), ("43", "1")]
    assert all("Batch size: 2" in t and "Batch count" not in t and "n_iter" not in t for t in texts)
    assert info.startswith("**Seeds** 40–43 ·")
    saved = sorted(outputs.glob("*/*-txt2img.png"))
    assert sorted(path.name.split("-")[1] for path in saved[-4:]) == ["40", "41", "42", "43"]
    assert sorted(Image.open(path).info["parameters"] for path in saved[-4:]) == sorted(texts)


def test_the_image_tabs_take_a_batch_count_too(app: tuple[Client, Path], tmp_path: Path) -> None:
    client, _ = app
    path = tmp_path / "in.png"
    noise_image(64, 64).save(path)
    _, gallery, _ = client.predict(image=handle_file(str(path)), prompt="again", seed=3, batch_count=3, steps=2,
                                   strength=0.5, api_name="/img2img")
    assert [t.split("Seed: ")[1].split(",")[0] for t in _texts(gallery)] == ["3", "4", "5"]


def test_the_progress_line_says_the_batch_and_its_step(app: tuple[Client, Path]) -> None:
    """The live preview comes every 5 steps of a batch (`Service.preview_every`); the line then says which batch."""
    client, _ = app
    job = client.submit(prompt="progress", seed=1, batch_count=2, api_name="/txt2img", **{**FAST, "steps": 6})
    job.result()
    lines = [output[2] for output in job.outputs()]
    assert "Batch 1/2, step 1/6" in lines and "Batch 1/2, step 5/6" in lines and "Batch 2/2, step 5/6" in lines


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_count": 33}, "Batch count must be between 1 and 32, got 33."),
        ({"batch_count": 5, "batch_size": 8},
         "Batch count x Images per prompt is 40; this server makes at most 32 images per request."),
    ],
)
def test_a_batch_count_over_the_bound_is_refused_in_words(app: tuple[Client, Path], values: dict,
                                                         message: str) -> None:
    client, _ = app
    with pytest.raises(AppError) as error:
        client.predict(prompt="too many", seed=1, api_name="/txt2img", **{**FAST, **values})
    assert str(error.value) == message


@pytest.mark.slow
def test_stop_in_the_second_batch_keeps_the_first(app: tuple[Client, Path]) -> None:
    """Stop in batch 2 of 2 ends it at its next step; Stop's line says where, and the first batch's image is kept
    (saved, and in History) with the second's image so far, as A1111's Interrupt keeps the images made so far."""
    client, outputs = app
    before = set(outputs.glob("*/*.png"))
    job = client.submit(prompt="stop me", seed=70, batch_count=2, api_name="/txt2img", **{**FAST, "steps": 150})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("Batch 2/2" in str(out[2]) for out in job.outputs()):
        time.sleep(0.05)  # gradio_client's job has no event to wait on: its outputs are polled
    said = client.predict(api_name="/txt2img_stop")
    assert re.fullmatch(r"Stopped in batch 2/2 after \d+/150 steps\. 1 finished batch kept \(History\)\.", said)
    job.result(timeout=120)
    new = sorted(set(outputs.glob("*/*.png")) - before)
    assert [path.name.split("-", 1)[1] for path in new] == ["70-txt2img.png", "71-txt2img.png"]
    with Image.open(new[1]) as image:  # batch 2 (seed 71) stopped mid-sampling: its image so far, marked so
        assert re.search(r", Stopped at step: \d+$", image.info["parameters"]), image.info["parameters"]


def test_every_sampling_tab_has_a_batch_count_that_no_send_carries_over() -> None:
    """Text to image, Image to image, Inpaint, Outpaint, Depth and Upscale (the tabs with Images per prompt) each
    have a Batch count, 1 to the server's 32 images; "Send to", PNG info's send, ↙ and History's send fill a tab from
    a parameters text, which has no batch count (A1111 writes none, and its paste leaves n_iter as it is), so none
    of them sets it."""
    import gradio as gr

    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service())
    counts = [block for block in demo.blocks.values() if isinstance(block, gr.Slider) and block.label == "Batch count"]
    assert sorted(block.elem_id for block in counts) == [f"{tab}-batch-count" for tab in (
        "depth", "img2img", "inpaint", "outpaint", "txt2img", "upscale", "xyz")]
    # the X/Y/Z plot runs one image per cell: its batch sliders are hidden, as Images per prompt was
    assert [block.elem_id for block in counts if not block.visible] == ["xyz-batch-count"]
    counts = [block for block in counts if block.visible]
    assert {(block.minimum, block.maximum, block.value) for block in counts} == {(1, 32, 1)}
    runs = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("txt2img", "upscale", "inpaint")}
    assert all(fn.inputs[-1] in counts for fn in runs.values()) and len(runs) == 3  # the runs' last parameter
    writers = [fn.api_name for fn in demo.fns.values() if any(block in counts for block in fn.outputs)]
    assert writers == []
