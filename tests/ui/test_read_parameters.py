"""↙ on the image tabs and the run's note about a prompt holding parameters, through the app's registered event
functions (no server; the Service double of tests/ui_doubles.py). Text to image's ↙ in a real browser:
test_browser_sendto.py."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

PASTED = ("a fox\nNegative prompt: blurry\nSteps: 12, Sampler: Euler, Schedule type: Karras, CFG scale: 6.5, "
          "Seed: 42, Size: 64x72, Eta DDIM: 0.25, Tiling: True")


@pytest.fixture(scope="module")
def demo():
    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    return build_ui(fake_service(None))


def _fn(demo, api_name: str):  # the registered BlockFunction of an event
    return next(f for f in demo.fns.values() if f.api_name == api_name)


def _refusal(fn, *values) -> str:
    """The message of the gr.Error `fn(*values)` raises."""
    with pytest.raises(gr.Error) as error:
        fn(*values)
    return error.value.message


def test_image_to_image_reads_a_pasted_text_into_its_prompts_and_sampling(demo) -> None:
    read = _fn(demo, "img2img_read_parameters")
    # ... and its width and height from "Size", as A1111's paste sets img2img's
    assert read.fn(PASTED, None, 0) == ("a fox", "blurry", "Euler", "Karras", 12, 6.5, 42, 0.25, True, 64, 72)
    width, height = read.outputs[-2:]
    assert (width.label, height.label) == ("Width", "Height")
    sizes = {text: read.fn(PASTED.replace("Size: 64x72", text), None, 0)[-2:] for text in ("Size: 100x20", "")}
    assert sizes == {"Size: 100x20": (104, 64), "": (gr.skip(), gr.skip())}  # fitted to the boxes (8s, 64 up)


def test_with_the_prompt_empty_it_reads_the_picked_result(demo, tmp_path: Path) -> None:
    from sd2_app.pipelines.metadata import attach_parameters, save_png

    paths = [str(save_png(attach_parameters(Image.new("RGB", (8, 8)), PASTED.replace("Seed: 42", f"Seed: {seed}")),
                          tmp_path / f"{seed}.png")) for seed in (7, 8)]
    read = _fn(demo, "inpaint_read_parameters")  # no Tiling there
    assert read.fn("  ", [(path, None) for path in paths], 1) == ("a fox", "blurry", "Euler", "Karras", 12, 6.5, 8, 0.25,
                                                                 "original", "Inpaint masked")  # none written
    assert _refusal(read.fn, "", None, 0) == ("Paste a generation's parameters into the prompt, or generate an image "
                                              "first: with the prompt empty, ↙ reads the last result's.")
    bare = str(save_png(Image.new("RGB", (8, 8)), tmp_path / "bare.png"))
    assert _refusal(read.fn, "", [(bare, None)], 0) == "This image carries no generation parameters."


def test_a_plain_prompt_is_left_as_it_is_and_a_long_paste_refused(demo) -> None:
    read = _fn(demo, "outpaint_read_parameters")
    assert read.fn("a fox, (masterpiece:1.2)\nstyle: ink", None, 0) == (gr.skip(),) * len(read.outputs)
    assert _refusal(read.fn, "x" * 20_001, None, 0) == "Pasted parameters must be at most 20000 characters."
    assert _fn(demo, "depth_read_parameters").fn("a fox\nNegative prompt: rain", None, 0)[:2] == ("a fox", "rain")
    assert not [f for f in demo.fns.values() if f.api_name in ("upscale_read_parameters", "xyz_read_parameters")]


def test_an_image_dropped_onto_a_prompt_box_puts_its_parameters_text_into_the_prompt(demo, tmp_path: Path) -> None:
    """Each tab with ↙ has a reader for images dropped onto its prompt boxes (static/app.js): the text goes into
    the prompt and the reader empties; without parameters the prompt stays; a JPEG has no PNG text."""
    from sd2_app.pipelines.metadata import attach_parameters, save_png

    with_text = str(save_png(attach_parameters(Image.new("RGB", (8, 8)), PASTED), tmp_path / "with.png"))
    bare = str(save_png(Image.new("RGB", (8, 8)), tmp_path / "bare.png"))
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    for tab in ("txt2img", "img2img", "inpaint", "outpaint", "depth"):
        read = _fn(demo, f"{tab}_prompt_image")
        prompt, reader = read.outputs
        assert (prompt.elem_id, reader.elem_id) == (f"{tab}-prompt", f"{tab}-prompt-image")
        assert read.fn(with_text) == (PASTED, None)
        for unread in (bare, str(jpeg)):
            with pytest.warns(UserWarning, match="^This image carries no generation parameters.$"):
                assert read.fn(unread) == (gr.skip(), None)
    assert not [f for f in demo.fns.values() if f.api_name in ("upscale_prompt_image", "xyz_prompt_image")]


@pytest.mark.parametrize(("prompt", "noted"), [
    (PASTED, True),
    ("a fox\nSteps: 12, Sampler: Euler, Seed: 42", True),
    ("a fox\nSteps: 12, CFG scale: 6, Seed: 42", False),  # no Sampler: not A1111's settings line
    ("Steps: 12, Sampler: Euler, Seed: 42\na fox", False),  # not the last line: ↙ would not read it either
    ("a fox doing steps: 3", False),
])
def test_a_run_notes_a_prompt_that_holds_generation_parameters(prompt: str, noted: bool) -> None:
    from sd2_app.api.requests import Txt2ImgRequest
    from sd2_app.ui.read_parameters import parameters_in_prompt
    from tests.ui_doubles import fake_service

    note = ("The prompt holds generation parameters (\"Steps: …\"); use ↙ beside Stop to read them into the "
            "settings.")
    assert parameters_in_prompt(fake_service(None), Txt2ImgRequest(prompt)) == ([note] if noted else [])
