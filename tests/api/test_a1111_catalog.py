"""The A1111 API's read-only routes through the running app (`python app.py --tiny --api --embeddings-dir ...`,
served in-process): the embeddings and LoRAs (read again on /refresh-embeddings and /refresh-loras), the (empty)
styles and VAE lists, `/png-info` on our own result and on images without parameters, and the message for an
upscaler this server does not have."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.a1111_support import a1111_error_body
from tests.lora_support import write_test_loras
from tests.hosting_support import API_FAST as FAST
from tests.reliability_support import noise_image, one_thread, png_bytes, serve  # noqa: F401 (a fixture)

SEED = 21


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_loras(tmp_path_factory.mktemp("loras"))


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    g = torch.Generator().manual_seed(3)
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, str(folder / "tiny-style.safetensors"))
    save_file({"emb_params": torch.randn(1, 768, generator=g)}, str(folder / "sd15-style.safetensors"))
    return folder


@pytest.fixture(scope="module")
def url(one_thread: None, embeddings: Path, lora_folder: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    argv = ["--tiny", "--device", "cpu", "--no-save", "--api", "--embeddings-dir", str(embeddings), "--lora-dir",
            str(lora_folder)]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as (served, _):
        yield served.rstrip("/") + "/sdapi/v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_embeddings_list_the_usable_ones_and_explain_the_others(url: str) -> None:
    answer = httpx.get(f"{url}/embeddings", timeout=60).json()
    unknown = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
    assert answer["loaded"] == {"tiny-style": {**unknown, "shape": 32, "vectors": 2}}
    assert list(answer["skipped"]) == ["sd15-style.safetensors"]
    assert "an embedding for SD 1.x" in answer["skipped"]["sd15-style.safetensors"]["reason"]


def test_no_styles_and_no_separate_vaes(url: str) -> None:
    assert httpx.get(f"{url}/prompt-styles", timeout=60).json() == []
    assert httpx.get(f"{url}/sd-vae", timeout=60).json() == []


def test_the_latent_upscale_modes_are_the_hires_upscalers_that_work_on_latents(url: str) -> None:
    """What SillyTavern-like clients list with /upscalers for `hr_upscaler`: each listed mode runs the hires fix,
    and the parameters text names it; a checkpoint refresh answers as A1111's (null) and changes nothing."""
    modes = httpx.get(f"{url}/latent-upscale-modes", timeout=60).json()
    assert modes == [{"name": "Latent"}, {"name": "Latent (nearest-exact)"}]
    for mode in modes:
        made = httpx.post(f"{url}/txt2img", json={"prompt": "a hat", "seed": SEED, **FAST, "enable_hr": True,
                                                 "hr_upscaler": mode["name"], "hr_scale": 1.5,
                                                 "denoising_strength": 0.5}, timeout=300)
        assert made.status_code == 200, made.text
        assert json.loads(made.json()["info"])["infotexts"][0].endswith(f"Hires upscaler: {mode['name']}")
    models = httpx.get(f"{url}/sd-models", timeout=60).json()
    refreshed = httpx.post(f"{url}/refresh-checkpoints", timeout=60)
    assert (refreshed.status_code, refreshed.json()) == (200, None)
    assert httpx.get(f"{url}/sd-models", timeout=60).json() == models


def test_the_lists_of_what_this_server_has_none_of_are_empty(url: str) -> None:
    """A1111's hypernetwork, face restorer, Real-ESRGAN, script and extension lists: 200 with [] (they were 404,
    which clients that list them on connect take for a server that is not A1111's); /refresh-vae: null."""
    paths = ("hypernetworks", "face-restorers", "realesrgan-models", "script-info", "extensions")
    answers = [httpx.get(f"{url}/{path}", timeout=60) for path in paths]
    assert [(answer.status_code, answer.json()) for answer in answers] == [(200, [])] * len(paths)
    refreshed = httpx.post(f"{url}/refresh-vae", timeout=60)
    assert (refreshed.status_code, refreshed.json()) == (200, None)


def test_an_embedding_put_in_the_folder_is_listed_and_used_after_refresh_embeddings(url: str,
                                                                                       embeddings: Path) -> None:
    """A file written into the embeddings folder while the app runs: after /refresh-embeddings (null, as A1111's)
    /embeddings lists it and a prompt that names it records it in `TI hashes`; removed again, it is gone."""
    save_file({"emb_params": torch.randn(3, 32, generator=torch.Generator().manual_seed(4))},
              str(embeddings / "tiny-new.safetensors"))
    try:
        refreshed = httpx.post(f"{url}/refresh-embeddings", timeout=60)
        loaded = httpx.get(f"{url}/embeddings", timeout=60).json()["loaded"]
        made = httpx.post(f"{url}/txt2img", json={"prompt": "a hat, tiny-new", "seed": SEED, **FAST}, timeout=300)
    finally:
        (embeddings / "tiny-new.safetensors").unlink()
    assert (refreshed.status_code, refreshed.json()) == (200, None)
    assert sorted(loaded) == ["tiny-new", "tiny-style"] and loaded["tiny-new"]["vectors"] == 3
    assert made.status_code == 200, made.text
    assert 'TI hashes: "tiny-new: ' in json.loads(made.json()["info"])["infotexts"][0]
    httpx.post(f"{url}/refresh-embeddings", timeout=60)
    assert list(httpx.get(f"{url}/embeddings", timeout=60).json()["loaded"]) == ["tiny-style"]


def test_a_lora_put_in_the_folder_is_listed_and_used_after_refresh_loras(url: str, lora_folder: Path) -> None:
    """A file copied into the LoRA folder while the app runs: after /refresh-loras (null, as A1111's) /loras lists
    it and a prompt's tag uses it, without "LoRA not found"; removed again, it is gone from the list."""
    names = [item["name"] for item in httpx.get(f"{url}/loras", timeout=60).json()]
    shutil.copy(lora_folder / "tiny-detail.safetensors", lora_folder / "tiny-new.safetensors")
    try:
        refreshed = httpx.post(f"{url}/refresh-loras", timeout=60)
        listed = [item["name"] for item in httpx.get(f"{url}/loras", timeout=60).json()]
        made = httpx.post(f"{url}/txt2img", json={"prompt": "a hat <lora:tiny-new:0.9>", "seed": SEED, **FAST},
                          timeout=300)
    finally:
        (lora_folder / "tiny-new.safetensors").unlink()
    assert (refreshed.status_code, refreshed.json()) == (200, None)
    assert names == ["tiny-detail", "upscaler-detail"] and listed == ["tiny-detail", "tiny-new", "upscaler-detail"]
    assert made.status_code == 200, made.text
    info = json.loads(made.json()["info"])
    assert 'Lora hashes: "tiny-new: ' in info["infotexts"][0] and "LoRA not found" not in made.text
    httpx.post(f"{url}/refresh-loras", timeout=60)
    assert [item["name"] for item in httpx.get(f"{url}/loras", timeout=60).json()] == names


def test_loras_are_listed_and_a_tag_uses_one(url: str) -> None:
    """A1111's /loras items (the file's name as its path: no server folders), /refresh-loras' null, and a txt2img
    whose prompt names a LoRA: its infotext carries `Lora hashes`, and its image differs from the plain one; with
    the hires fix through the SD2 x4 model too."""
    assert httpx.get(f"{url}/loras", timeout=60).json() == [
        {"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}}
        for name in ("tiny-detail", "upscaler-detail")]
    refreshed = httpx.post(f"{url}/refresh-loras", timeout=60)
    assert (refreshed.status_code, refreshed.json()) == (200, None)
    made = [httpx.post(f"{url}/txt2img", json={"prompt": prompt, "seed": SEED, **FAST}, timeout=300)
            for prompt in ("a hat", "a hat <lora:tiny-detail:0.9>")]
    assert [answer.status_code for answer in made] == [200, 200], made[1].text
    infotext = json.loads(made[1].json()["info"])["infotexts"][0]
    assert infotext.startswith("a hat <lora:tiny-detail:0.9>\n") and 'Lora hashes: "tiny-detail: ' in infotext
    plain, with_lora = (np.asarray(Image.open(io.BytesIO(base64.b64decode(a.json()["images"][0]))), dtype=float)
                        for a in made)
    assert np.abs(plain - with_lora).mean() > 2
    # the hires fix through the SD2 x4 model: the passes run with the LoRA, the x4 stage without (it would not fit)
    hires = httpx.post(f"{url}/txt2img", json={"prompt": "a hat <lora:tiny-detail:0.9>", **FAST, "seed": 2,
                                              "enable_hr": True, "hr_upscaler": "SD2 x4"}, timeout=300)
    assert hires.status_code == 200, hires.text
    assert 'Lora hashes: "tiny-detail: ' in json.loads(hires.json()["info"])["infotexts"][0]


def test_png_info_reads_our_result_back(url: str) -> None:
    made = httpx.post(f"{url}/txt2img", json={"prompt": "a red (hat:1.2)", "seed": SEED, **FAST}, timeout=300)
    assert made.status_code == 200, made.text
    image = made.json()["images"][0]
    info = made.json()["info"]
    answer = httpx.post(f"{url}/png-info", json={"image": image}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["info"].startswith("a red (hat:1.2)\n") and f"Seed: {SEED}," in body["info"]
    assert json.loads(info)["infotexts"] == [body["info"]]  # the text txt2img's info gave
    assert body["items"] == {"parameters": body["info"]}
    assert body["parameters"]["Prompt"] == "a red (hat:1.2)"
    assert body["parameters"]["Seed"] == SEED and body["parameters"]["Steps"] == FAST["steps"]


def test_png_info_of_images_without_parameters(url: str) -> None:
    empty = {"info": "", "items": {}, "parameters": {}}
    for data in (png_bytes(noise_image(8, 8)), png_bytes(noise_image(8, 8), "JPEG"), png_bytes(noise_image(8, 8))[:40]):
        answer = httpx.post(f"{url}/png-info", json={"image": _b64(data)}, timeout=60)
        assert (answer.status_code, answer.json()) == (200, empty)
    assert httpx.post(f"{url}/png-info", json={"image": " "}, timeout=60).json() == empty  # as A1111 answers
    refused = httpx.post(f"{url}/png-info", json={"image": "not base64!"}, timeout=60)
    assert refused.status_code == 422 and refused.json()["detail"].startswith("image is not valid base64")
    text = httpx.post(f"{url}/png-info", json={"image": _b64(b"GIF89a" + bytes(20))}, timeout=60)
    assert (text.status_code, text.json()["detail"]) == (422, "image must be a PNG, JPEG or WebP image.")


def test_png_info_refusals_keep_their_status_and_message(url: str) -> None:
    """What clients get for an image that is not one: HTTP 422 and the message naming what is wrong (the API's
    one error mapping); a data URL and a padded string are read."""
    cases = {
        "no image": ({}, "image must be a base64-encoded PNG, JPEG or WebP image."),
        "a number": ({"image": 5}, "image must be a base64-encoded PNG, JPEG or WebP image."),
        "not base64": ({"image": "abc"}, "image is not valid base64 (Incorrect padding)."),
        "a GIF": ({"image": _b64(b"GIF89a" + bytes(20))}, "image must be a PNG, JPEG or WebP image."),
        "RIFF, not WebP": ({"image": _b64(b"RIFF" + bytes(4) + b"WAVE" + bytes(8))},
                           "image must be a PNG, JPEG or WebP image."),
    }
    for what, (body, message) in cases.items():
        answer = httpx.post(f"{url}/png-info", json=body, timeout=60)
        assert (answer.status_code, answer.json()) == (422, a1111_error_body(422, message)), what
    text = _png_with_chunk(b"tEXt", b"parameters\0a cat\nSteps: 2, Seed: 3, Size: 8x8")
    for image in (f"data:image/png;base64,{_b64(text)}", f"  {_b64(text)}\n"):
        answer = httpx.post(f"{url}/png-info", json={"image": image}, timeout=60)
        assert (answer.status_code, answer.json()["info"]) == (200, "a cat\nSteps: 2, Seed: 3, Size: 8x8")


def _png_with_chunk(kind: bytes, data: bytes) -> bytes:
    """A small PNG with one more text chunk of `kind` holding `data`, inserted before its pixels."""
    import zlib

    png = png_bytes(noise_image(8, 8))
    chunk = len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    return png[:33] + chunk + png[33:]  # after the signature (8) and IHDR (25)


def test_png_info_of_a_malformed_parameters_chunk_is_no_parameters(url: str) -> None:
    """A parameters chunk whose zlib data is broken, or an iTXt chunk cut short after its keyword, is an image
    without parameters (it was a 500)."""
    for kind, data in ((b"zTXt", b"parameters\0\0not zlib"), (b"iTXt", b"parameters\0")):
        answer = httpx.post(f"{url}/png-info", json={"image": _b64(_png_with_chunk(kind, data))}, timeout=60)
        assert (answer.status_code, answer.json()) == (200, {"info": "", "items": {}, "parameters": {}}), kind
    good = _png_with_chunk(b"tEXt", b"parameters\0a cat\nSteps: 2, Seed: 3, Size: 8x8")
    assert httpx.post(f"{url}/png-info", json={"image": _b64(good)}, timeout=60).json()["parameters"]["Seed"] == 3


def test_an_upscaler_this_server_lacks_is_named(url: str) -> None:
    image = _b64(png_bytes(noise_image(16, 16)))
    for name in ("R-ESRGAN 4x+", "sd21-base"):
        answer = httpx.post(f"{url}/extra-single-image", json={"image": image, "upscaler_1": name}, timeout=60)
        assert answer.status_code == 422
        assert answer.json()["detail"] == (f"Unknown upscaler {name!r}; this server has 'None', 'Lanczos', "
                                           "'Nearest', 'SD2 x4' (see /sdapi/v1/upscalers).")


@pytest.mark.slow
def test_the_x4_upscaler_has_one_name_and_is_read_in_every_spelling(url: str) -> None:
    """/upscalers listed "x4 upscaler" while the hires fix, the web UI and README call it "SD2 x4", and
    upscaler_1 "SD2 x4" was a 422 (review F5). One name now, listed beside A1111's "None"; the checkpoint's key and
    label still read, in any case, for upscaler_1 and hr_upscaler alike. A1111's resampling upscalers are listed
    between them, as A1111 lists them."""
    assert httpx.get(f"{url}/upscalers", timeout=60).json() == [
        {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 1},
        {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
        {"name": "Nearest", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
        {"name": "SD2 x4", "model_name": "x4-upscaler", "model_path": None, "model_url": None, "scale": 4}]
    image = _b64(png_bytes(noise_image(16, 16)))
    done = httpx.post(f"{url}/extra-single-image", json={"image": image, "upscaler_1": "SD2 x4"}, timeout=300)
    assert done.status_code == 200, done.text
    assert Image.open(io.BytesIO(base64.b64decode(done.json()["image"]))).size == (64, 64)
    for name in ("sd2 X4", "x4 upscaler", "X4-Upscaler"):  # each named the x4: refused only for the 2x asked
        answer = httpx.post(f"{url}/extra-single-image", json={"image": image, "upscaler_1": name,
                                                               "upscaling_resize": 2}, timeout=60)
        assert (answer.status_code, answer.json()["detail"]) == (
            422, "Only 4x upscaling is available (upscaling_resize 4, resize_mode 0)."), name
        hires = {"prompt": "x", **FAST, "seed": 2, "enable_hr": True, "hr_upscaler": name}
        answer = httpx.post(f"{url}/txt2img", json=hires, timeout=300)
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.json()["info"])["infotexts"][0].endswith("Hires upscaler: SD2 x4"), name
    lower = {"prompt": "x", **FAST, "seed": 1, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "latent"}
    answer = httpx.post(f"{url}/txt2img", json=lower, timeout=120)
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.json()["info"])["infotexts"][0].endswith("Hires upscaler: Latent")


@pytest.mark.parametrize("body", [{"upscaler_1": "None", "upscaling_resize": 2}, {"upscaler_1": "None"},
                                  {"upscaling_resize": 4}, {"upscaler_1": None, "upscaling_resize": 3.5}],
                         ids=["None-2", "None", "left-out", "null"])
def test_no_upscaler_returns_the_image_as_it_was(url: str, body: dict) -> None:
    """upscaler_1 "None" (A1111's default and webuiapi's) ran the x4 upscaler, or was a 422 at webuiapi's
    upscaling_resize 2; A1111 returns the image unscaled (scripts/postprocessing_upscale.py), as an RGB PNG."""
    picture = noise_image(24, 16).convert("RGBA")
    answer = httpx.post(f"{url}/extra-single-image", json={"image": _b64(png_bytes(picture)), **body}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["html_info"] == ""
    back = Image.open(io.BytesIO(base64.b64decode(answer.json()["image"])))
    assert (back.format, back.mode, back.size) == ("PNG", "RGB", (24, 16))
    assert np.array_equal(np.asarray(back), np.asarray(picture.convert("RGB")))


def test_no_upscaler_still_checks_the_image(url: str) -> None:
    answer = httpx.post(f"{url}/extra-single-image", json={"image": "bm90IGFuIGltYWdl", "upscaler_1": "None"},
                        timeout=60)
    assert (answer.status_code, answer.json()["detail"]) == (422, "image must be a PNG, JPEG or WebP image.")
    tiny = _b64(png_bytes(noise_image(4, 4)))
    answer = httpx.post(f"{url}/extra-single-image", json={"image": tiny}, timeout=60)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("The image is 4x4; each side needs")


def _extras(url: str, picture: Image.Image, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/extra-single-image", json={"image": _b64(png_bytes(picture)), **body}, timeout=60)


def _image(answer: httpx.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    back = Image.open(io.BytesIO(base64.b64decode(answer.json()["image"])))
    assert (back.format, back.mode) == ("PNG", "RGB")
    return np.asarray(back)


def test_nearest_and_lanczos_resize_as_a1111s_do(url: str) -> None:
    """upscaler_1 "Lanczos" and "Nearest" (A1111's resampling upscalers, webuiapi's usual call with
    upscaling_resize 2) were "Unknown upscaler". Nearest by 2 repeats each pixel; Lanczos is PIL's; a size that is
    not a multiple of 8 is floored to one (2.5 x 24x16 = 60x40 -> 56x40), as A1111's Upscaler.upscale does."""
    picture = noise_image(24, 16, seed=8)
    pixels = np.asarray(picture)
    assert np.array_equal(_image(_extras(url, picture, upscaler_1="Nearest", upscaling_resize=2)),
                          pixels.repeat(2, axis=0).repeat(2, axis=1))
    lanczos = _image(_extras(url, picture, upscaler_1="lanczos"))  # any case; A1111's default scale: 2
    assert np.array_equal(lanczos, np.asarray(picture.resize((48, 32), Image.Resampling.LANCZOS)))
    assert _image(_extras(url, picture, upscaler_1="Lanczos", upscaling_resize=2.5)).shape == (40, 56, 3)


def test_scale_to_a_size_crops_to_fit_or_keeps_the_whole_image(url: str) -> None:
    """resize_mode 1: scaled by the larger ratio (64/24, 64/16: 4), then centred on a 64x64 canvas and cut
    (upscaling_crop, A1111's default) or kept whole at 96x64."""
    picture = noise_image(24, 16, seed=9)
    four = np.asarray(picture).repeat(4, axis=0).repeat(4, axis=1)  # 64 rows, 96 columns
    size = {"upscaler_1": "Nearest", "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64}
    assert np.array_equal(_image(_extras(url, picture, **size)), four[:, 16:80])
    assert np.array_equal(_image(_extras(url, picture, **size, upscaling_crop=False)), four)


@pytest.mark.parametrize(("body", "detail"), [
    ({"upscaling_resize": 9}, "upscaling_resize must be between 1 and 8, got 9."),
    ({"upscaling_resize": "2"}, "upscaling_resize must be a number, got '2'."),
    ({"resize_mode": 2}, "resize_mode must be 0 (scale by upscaling_resize) or 1 (scale to upscaling_resize_w x "
                         "upscaling_resize_h), got 2."),
    ({"resize_mode": 1, "upscaling_resize_w": 0}, "upscaling_resize_w must be between 1 and 8192, got 0."),
    ({"resize_mode": 1, "upscaling_resize_w": 8192, "upscaling_resize_h": 8192},
     "Upscaling 24x16 to 8192x8192 gives an image that is 12288x8192; images up to 2048x2048 pixels (or the "
     "same area in another shape) are accepted."),
    ({"resize_mode": 1, "upscaling_resize_w": 4, "upscaling_resize_h": 4},
     "Upscaling 24x16 to 4x4 makes 0x0; each side needs at least 8 pixels."),
], ids=["scale-9", "scale-text", "mode-2", "width-0", "too-many-pixels", "too-small"])
def test_a_resize_the_server_would_not_make_is_refused_in_words(url: str, body: dict, detail: str) -> None:
    answer = _extras(url, noise_image(24, 16, seed=1), upscaler_1="Lanczos", **body)
    assert (answer.status_code, answer.json()["detail"]) == (422, detail)
