"""Prompt styles through the running app (`python app.py --tiny --api --styles STYLES.CSV`, served in-process):
the A1111 API lists the host's styles and applies a request's `styles` (the image is the one of the expanded
prompts, pixel for pixel), refuses an unknown name, reads the styles back out of a PNG's parameters; the web UI's
/txt2img endpoint (gradio_client) applies the picked styles alike; an oversized styles file leaves the app serving
without styles."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from tests.a1111_support import a1111_error_body
from tests.hosting_support import API_FAST
from tests.reliability_support import noise_image, one_thread, png_bytes, serve  # noqa: F401 (a fixture)

FAST = {**API_FAST, "cfg_scale": 7.0, "seed": 5}  # guidance on, so the negative prompt counts too
STYLES_CSV = (
    "name,prompt,negative_prompt\n"
    "oil,\"oil painting, thick brush\",photo\n"
    "broken,a,b,c\n"  # malformed: more fields than the header; skipped with a log line
    "frame,\"a picture of {prompt}, framed\",\"blurry, {prompt}\"\n"
)
LISTED = [{"name": "oil", "prompt": "oil painting, thick brush", "negative_prompt": "photo"},
          {"name": "frame", "prompt": "a picture of {prompt}, framed", "negative_prompt": "blurry, {prompt}"}]
EXPANDED = ("a picture of a cat, oil painting, thick brush, framed", "blurry, ugly, photo")  # oil, then frame


@contextmanager
def served_with_styles(tmp_path_factory: pytest.TempPathFactory, *flags: str, csv: str = STYLES_CSV) -> Iterator[str]:
    """`python app.py --tiny --device cpu --no-save FLAGS --styles <csv written to a file>`, served in-process;
    yields its URL without the trailing slash."""
    styles = tmp_path_factory.mktemp("styles") / "styles.csv"
    styles.write_text(csv, encoding="utf-8")
    argv = ["--tiny", "--device", "cpu", "--no-save", *flags, "--styles", str(styles)]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as (url, _):
        yield url.rstrip("/")


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_with_styles(tmp_path_factory, "--api") as url:
        yield url


def _post(url: str, route: str, body: dict) -> tuple[int, dict]:
    answer = httpx.post(f"{url}/sdapi/v1/{route}", json=body, timeout=300)
    return answer.status_code, answer.json()


def _pixels(b64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_png))).convert("RGB"))


def test_the_api_lists_the_host_s_styles_and_skips_the_malformed_row(app: str) -> None:
    assert httpx.get(f"{app}/sdapi/v1/prompt-styles", timeout=60).json() == LISTED


@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_api_styles_give_the_image_of_the_expanded_prompts(app: str, route: str) -> None:
    extra = {"init_images": [base64.b64encode(png_bytes(noise_image(64, 64))).decode()],
             "denoising_strength": 0.6} if route == "img2img" else {}
    status, styled = _post(app, route, {"prompt": "a cat", "negative_prompt": "ugly", "styles": ["oil", "frame"],
                                        **FAST, **extra})
    assert status == 200, styled
    _, expanded = _post(app, route, {"prompt": EXPANDED[0], "negative_prompt": EXPANDED[1], **FAST, **extra})
    _, plain = _post(app, route, {"prompt": "a cat", "negative_prompt": "ugly", **FAST, **extra})
    assert np.array_equal(_pixels(styled["images"][0]), _pixels(expanded["images"][0]))
    assert not np.array_equal(_pixels(styled["images"][0]), _pixels(plain["images"][0]))
    info = json.loads(styled["info"])
    # as A1111: the expanded prompts in the parameters text, the names in `styles`
    assert (info["prompt"], info["negative_prompt"], info["styles"]) == (*EXPANDED, ["oil", "frame"])
    assert info["infotexts"][0].startswith(f"{EXPANDED[0]}\nNegative prompt: {EXPANDED[1]}\n")


def test_an_unknown_style_is_refused_naming_it(app: str) -> None:
    status, body = _post(app, "txt2img", {"prompt": "a cat", "styles": ["oil", "watercolor"], **FAST})
    message = "Unknown style 'watercolor'; this server's styles: 'oil', 'frame'."
    assert (status, body) == (422, a1111_error_body(422, message))


def test_png_info_reads_the_styles_back(app: str) -> None:
    _, styled = _post(app, "txt2img", {"prompt": "a cat", "negative_prompt": "ugly", "styles": ["oil", "frame"],
                                       **FAST})
    status, read = _post(app, "png-info", {"image": styled["images"][0]})
    assert status == 200
    assert read["info"].startswith(EXPANDED[0])  # the text as written in the PNG
    fields = read["parameters"]
    assert (fields["Prompt"], fields["Negative prompt"], fields["Styles array"]) == ("a cat", "ugly", ["oil", "frame"])


def test_the_web_ui_endpoint_applies_the_picked_styles(app: str) -> None:
    client = Client(app + "/", verbose=False)
    common = {"steps": 2, "seed": 5, "cfg_scale": 7.0, "width": 64, "height": 64, "api_name": "/txt2img"}
    _, styled, _ = client.predict(prompt="a cat", negative_prompt="ugly", styles=["oil", "frame"], **common)
    _, expanded, _ = client.predict(prompt=EXPANDED[0], negative_prompt=EXPANDED[1], **common)
    _, plain, _ = client.predict(prompt="a cat", negative_prompt="ugly", **common)
    images = [Image.open(gallery[0]["image"]) for gallery in (styled, expanded, plain)]
    assert images[0].info["parameters"].startswith(f"{EXPANDED[0]}\nNegative prompt: {EXPANDED[1]}\n")
    pixels = [np.asarray(image.convert("RGB")) for image in images]
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])


def test_the_token_counter_counts_the_picked_styles(app: str) -> None:
    client = Client(app + "/", verbose=False)
    styled = client.predict(text="a cat", key="sd21-base", styles=["oil", "frame"], api_name="/count_tokens")
    expanded = client.predict(text=EXPANDED[0], key="sd21-base", styles=[], api_name="/count_tokens")
    plain = client.predict(text="a cat", key="sd21-base", styles=[], api_name="/count_tokens")
    assert styled == expanded != plain


def test_an_oversized_styles_file_leaves_the_app_serving_without_styles(
        one_thread: None, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    styles = tmp_path / "styles.csv"
    styles.write_bytes(b"name,prompt\n" + b"a,b\n" * 2**18)  # 1 MiB and 12 bytes: over the 1 MiB limit
    argv = ["--tiny", "--device", "cpu", "--no-save", "--api", "--styles", str(styles)]
    with serve(argv, tmp_path / "cache") as (url, _):
        api = url.rstrip("/") + "/sdapi/v1"
        assert httpx.get(f"{api}/prompt-styles", timeout=60).json() == []
        made = httpx.post(f"{api}/txt2img", json={"prompt": "a cat", **FAST}, timeout=300)
        assert made.status_code == 200, made.text
    assert f"--styles {styles}: no styles: the file is larger than 1024 KiB" in caplog.text


def test_styles_apply_to_a_missing_prompt_as_to_an_empty_one(app: str) -> None:
    """A null prompt is the empty prompt (validation's reading): the styles still apply, from both front ends."""
    status, styled = _post(app, "txt2img", {"prompt": None, "negative_prompt": None, "styles": ["oil"], **FAST})
    assert status == 200, styled
    info = json.loads(styled["info"])
    assert (info["prompt"], info["negative_prompt"], info["styles"]) == ("oil painting, thick brush", "photo", ["oil"])
    client = Client(app + "/", verbose=False)
    common = {"steps": 2, "seed": 5, "cfg_scale": 7.0, "width": 64, "height": 64, "api_name": "/txt2img"}
    _, gallery, _ = client.predict(prompt=None, negative_prompt=None, styles=["oil"], **common)
    assert Image.open(gallery[0]["image"]).info["parameters"].startswith(
        "oil painting, thick brush\nNegative prompt: photo\n")
