"""The Inpaint tab's "Masked content" (A1111's radio: fill, original, latent noise, latent nothing; default
original). The A1111 API took it as `inpainting_fill` but the tab had no control, so a visitor could only inpaint
from the original. Through the running app: the tab's /inpaint with each choice makes the A1111 API's pixels for
that `inpainting_fill` (the tiny checkpoints, `python app.py --tiny --api`), and a PNG's "Masked content" (A1111
writes it for all but original) comes back into the radio with the tab's ↙ and History's send. A1111's "Mask
mode" radio (Inpaint masked, Inpaint not masked) the same way: the tab's "Inpaint not masked" makes the A1111 API's
pixels for `inpainting_mask_invert` 1, and a PNG's "Mask mode" comes back with ↙."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sd2_app.api.requests import MASKED_CONTENT
from tests.reliability_support import noise_image, one_thread, png_bytes, serve  # noqa: F401 (a fixture)

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

QUICK = {"steps": 2, "seed": 7, "cfg_scale": 6.5}
SESSION = "masked-content"


def _queued(url: str, demo: object, name: str, data: list) -> tuple[list, list[str]]:
    """(the outputs, the warnings) of one queued call of the event `name`, as the page joins it."""
    fn_index = next(fn._id for fn in demo.fns.values() if fn.api_name == name)  # type: ignore[attr-defined]
    join = {"data": data, "fn_index": fn_index, "session_hash": SESSION}
    assert httpx.post(f"{url}gradio_api/queue/join", json=join, timeout=30).status_code == 200
    stream = httpx.get(f"{url}gradio_api/queue/data", params={"session_hash": SESSION}, timeout=120).text
    messages = [json.loads(line[5:]) for line in stream.splitlines() if line.startswith("data:")]
    done = next(m for m in messages if m.get("msg") == "process_completed")
    assert done["success"], done
    return done["output"]["data"], [m["log"] for m in messages if m.get("msg") == "log"]


def _radio(demo: object, name: str, outputs: list, radio: str = "inpaint-masked-content") -> object:
    """The value the event `name` put into the radio `radio` (an elem_id; default: Masked content)."""
    fn = next(fn for fn in demo.fns.values() if fn.api_name == name)  # type: ignore[attr-defined]
    return next(value for widget, value in zip(fn.outputs, outputs) if widget.elem_id == radio)


@pytest.mark.slow
def test_a_pngs_masked_content_and_mask_mode_come_back_with_read_parameters(tmp_path: Path) -> None:
    """↙ beside Inpaint's Stop reads "Masked content" (absent: original, which A1111 does not write; unknown: said,
    and the radio keeps its choice) and "Mask mode" (absent: Inpaint masked, likewise)."""
    from sd2_app.ui import build_ui
    from tests.reliability_support import launched
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service())
    text = "a cat\nSteps: 2, Sampler: Euler, Seed: 7, Size: 64x64{}"
    with launched(demo) as url:
        read = {}
        for written in ("latent noise", "fill", "latent nothing", None, "latent magic"):
            shown = "" if written is None else f", Masked content: {written}"
            outputs, warnings = _queued(url, demo, "inpaint_read_parameters", [text.format(shown), None, 0])
            read[written] = (_radio(demo, "inpaint_read_parameters", outputs), warnings)
        modes = {}
        for written in ("Inpaint not masked", "Inpaint masked", None, "Inpaint everything"):
            shown = "" if written is None else f", Mask mode: {written}"
            outputs, warnings = _queued(url, demo, "inpaint_read_parameters", [text.format(shown), None, 0])
            modes[written] = (_radio(demo, "inpaint_read_parameters", outputs, "inpaint-mask-mode"), warnings)
    assert read == {"latent noise": ("latent noise", []), "fill": ("fill", []),
                    "latent nothing": ("latent nothing", []), None: ("original", []),
                    "latent magic": ({"__type__": "update"}, [
                        "Masked content 'latent magic' is not available here; the current choice is kept."])}
    assert modes == {"Inpaint not masked": ("Inpaint not masked", []), "Inpaint masked": ("Inpaint masked", []),
                     None: ("Inpaint masked", []),
                     "Inpaint everything": ({"__type__": "update"}, [
                         "Mask mode 'Inpaint everything' is not available here; the current choice is kept."])}


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, Client]]:
    folder = tmp_path_factory.mktemp("masked")
    with serve(["--tiny", "--device", "cpu", "--no-save", "--queue-size", "8", "--api"], folder / "cache") as (url, demo):
        yield url, demo, Client(url, verbose=False)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _tab_and_api(app, folder: Path, picture: Image.Image, mask: Image.Image, tab: dict, api: dict, *,
                 strength: float, mask_blur: int) -> tuple[Image.Image, str, list]:
    """The Inpaint tab's /inpaint with the settings `tab` and the A1111 API's img2img with `api` (the same image,
    mask, prompt, strength and blur): their images are asserted equal, pixels and text. (The tab's image, the
    mask it used, its gallery.)"""
    url, _, client = app
    picture.save(folder / "picture.png")
    mask.save(folder / "mask.png")
    editor = {"background": handle_file(str(folder / "picture.png")), "layers": [], "composite": None}
    _, gallery, _, used = client.predict(image_and_mask=editor, mask=handle_file(str(folder / "mask.png")),
                                         prompt="a cat", strength=strength, mask_blur=mask_blur, sampler="Euler",
                                         api_name="/inpaint", **tab, **QUICK)
    body = {"prompt": "a cat", "sampler_name": "Euler", **QUICK, "denoising_strength": strength,
            "mask_blur": mask_blur, "width": 64, "height": 64, **api,
            "init_images": [base64.b64encode(png_bytes(picture)).decode()],
            "mask": base64.b64encode(png_bytes(mask)).decode()}
    answer = httpx.post(f"{url}sdapi/v1/img2img", json=body, timeout=300)
    assert answer.status_code == 200, answer.text
    api_image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
    tab_image = Image.open(gallery[0]["image"])
    assert np.array_equal(_pixels(tab_image), _pixels(api_image)), tab
    assert tab_image.text["parameters"] == json.loads(answer.json()["info"])["infotexts"][0], tab
    return tab_image, used, gallery


@pytest.mark.slow
def test_each_masked_content_of_the_tab_makes_the_a1111_apis_image_for_that_inpainting_fill(
        app, tmp_path: Path) -> None:
    url, demo, _ = app
    picture, mask = noise_image(64, 64), Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    made = {}
    for fill, content in enumerate(MASKED_CONTENT):
        tab_image, _, gallery = _tab_and_api(app, tmp_path, picture, mask, {"masked_content": content},
                                             {"inpainting_fill": fill}, strength=0.5, mask_blur=0)
        made[content] = (_pixels(tab_image), tab_image.text["parameters"])
    assert all(("Masked content" in text) == (content != "original") for content, (_, text) in made.items())
    assert len({pixels.tobytes() for pixels, _ in made.values()}) == 4  # each choice makes another image
    # History's send into Inpaint reads it back from the newest image's text ("latent nothing").
    newest = {"path": gallery[0]["image"], "meta": {"_type": "gradio.FileData"}}
    outputs, warnings = _queued(url, demo, "history_send_to_inpaint", [[{"image": newest, "caption": None}], 0])
    assert (_radio(demo, "history_send_to_inpaint", outputs), warnings) == ("latent nothing", [])


@pytest.mark.slow
def test_inpaint_not_masked_of_the_tab_makes_the_a1111_apis_image_for_inpainting_mask_invert(
        app, tmp_path: Path) -> None:
    url = app[0]
    picture, mask = noise_image(64, 64, seed=3), Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 16, 40, 56))
    made = {}
    for invert, mode in enumerate(("Inpaint masked", "Inpaint not masked")):
        tab_image, used, _ = _tab_and_api(app, tmp_path, picture, mask, {"mask_mode": mode},
                                          {"inpainting_mask_invert": invert, "inpainting_fill": 1}, strength=0.8,
                                          mask_blur=2)
        made[mode] = (_pixels(tab_image), tab_image.text["parameters"], np.asarray(Image.open(used).convert("L")))
    kept, repainted = made["Inpaint masked"], made["Inpaint not masked"]
    assert "Mask mode" not in kept[1] and "Mask mode: Inpaint not masked" in repainted[1]
    assert np.array_equal(repainted[2], 255 - kept[2])  # the mask used, beside the result, is the inverse
    box = (slice(16, 56), slice(8, 40))  # the white box (rows, columns): kept under "Inpaint not masked"
    assert np.array_equal(repainted[0][box], _pixels(picture)[box])
    assert not np.array_equal(kept[0][box], _pixels(picture)[box])
    refused = {"prompt": "a cat", "inpainting_mask_invert": 2, "init_images": [base64.b64encode(png_bytes(picture)).decode()],
               "mask": base64.b64encode(png_bytes(mask)).decode()}
    answer = httpx.post(f"{url}sdapi/v1/img2img", json=refused, timeout=60)
    assert answer.status_code == 422 and answer.json()["detail"] == (
        "inpainting_mask_invert must be one of 0 (Inpaint masked), 1 (Inpaint not masked); got 2.")
