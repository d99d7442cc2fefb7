"""Every key a pipeline writes into a PNG's parameters text comes back: each task and option is generated through
the running tiny app (`python app.py --tiny --api --styles ... --embeddings-dir ...`, served in-process), the PNG
is read with PNG info (/png_info, gradio_client), its fields go through PNG info's "Send to text to image" (the
app's own `png_info_send` event, joined over raw HTTP as the page joins it), and each written value must be what
the send puts into text to image's widgets. Text to image's images are then made again from the sent widgets alone
(/txt2img): the same parameters text and the same pixels.

A written key that no widget reads (`READ_BACK`) and that is neither another task's own (`TASK_ONLY`) nor made
again with the other keys (`IMPLIED`) fails the case that wrote it: a writer's new key, or a typo between writer
and reader (sd2_app/infotext_keys.py names each once).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from sd2_app import infotext_keys as keys  # noqa: E402
from sd2_app.api.requests import HIRES_UPSCALERS  # noqa: E402
from sd2_app.pipelines.metadata import parse_parameters  # noqa: E402
from sd2_app.prompt_styles import read_styles  # noqa: E402
from tests.reliability_support import one_thread, serve  # noqa: E402, F401 (a fixture)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
STYLES_CSV = 'name,prompt,negative_prompt\noil,"oil painting of {prompt}, thick brush",photo\n'
FAST = {"steps": 2, "seed": 7, "cfg_scale": 6.5, "width": 64, "height": 64}
Sent = dict[str, Any]  # text to image's API parameter name -> the value the send put into that widget


def _size(width: Any, height: Any) -> str:
    return f"{width}x{height}"


# Each key the send reads: the value it stands for, rebuilt from the widgets the send filled.
READ_BACK: dict[str, Callable[[Sent], Any]] = {
    keys.STEPS: lambda sent: sent["steps"],
    keys.SAMPLER: lambda sent: sent["sampler"],
    keys.SCHEDULE_TYPE: lambda sent: sent["schedule_type"],
    keys.CFG_SCALE: lambda sent: sent["cfg_scale"],
    keys.SEED: lambda sent: sent["seed"],
    keys.SIZE: lambda sent: _size(sent["width"], sent["height"]),
    keys.MODEL: lambda sent: sent.get("checkpoint"),
    keys.GUIDANCE_RESCALE: lambda sent: sent.get("guidance_rescale"),
    keys.ETA_DDIM: lambda sent: sent.get("eta"),
    keys.BATCH_SIZE: lambda sent: sent.get("batch_size"),
    keys.HIRES_UPSCALE: lambda sent: sent["hires_fix"] and sent["hires_scale"],
    keys.HIRES_RESIZE: lambda sent: sent["hires_fix"] and _size(sent["hires_width"], sent["hires_height"]),
    keys.HIRES_STEPS: lambda sent: sent["hires_fix"] and sent["hires_steps"],
    keys.HIRES_UPSCALER: lambda sent: sent["hires_fix"] and sent["hires_upscaler"],
    keys.HIRES_SAMPLER: lambda sent: sent["hires_fix"] and sent["hires_sampler"],
    keys.HIRES_SCHEDULE_TYPE: lambda sent: sent["hires_fix"] and sent["hires_schedule"],
    keys.DENOISING_STRENGTH: lambda sent: sent["hires_fix"] and sent["denoising_strength"],
    keys.VARIATION_SEED: lambda sent: sent["variation_seed"],
    keys.VARIATION_SEED_STRENGTH: lambda sent: sent["variation_strength"],
    keys.SEED_RESIZE_FROM: lambda sent: _size(sent["seed_resize_from_width"], sent["seed_resize_from_height"]),
    keys.TILING: lambda sent: sent["tiling"],
}
# Made again with the other keys (checked by the remake): the embeddings the prompt names, the image's place in
# the batch, the padding of prompts of other lengths.
IMPLIED = {keys.TI_HASHES, keys.BATCH_POS, keys.PAD_CONDS}
# Settings of the other tasks, which text to image has no control for (the send is text to image's).
TASK_ONLY = {
    "img2img": {keys.DENOISING_STRENGTH},
    "inpaint": {keys.DENOISING_STRENGTH, keys.MASK_BLUR, keys.KEEP_UNMASKED, keys.INPAINT_AREA,
                keys.MASKED_AREA_PADDING, keys.MASKED_CONTENT, keys.MODEL},
    "outpaint": {keys.DENOISING_STRENGTH, keys.MASK_BLUR, keys.KEEP_UNMASKED, keys.OUTPAINT_FILL, keys.MODEL,
                 *keys.OUTPAINT_MARGINS.values()},
    "depth": {keys.DENOISING_STRENGTH, keys.DEPTH, keys.MODEL},
    "upscale": {keys.NOISE_LEVEL, keys.TILE_SIZE, keys.MODEL},
}


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Client, dict]]:
    """(url, client, the send's output widgets by text to image's API parameter names)."""
    folder = tmp_path_factory.mktemp("infotext")
    (folder / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    (folder / "embeddings").mkdir()
    weights = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))  # the tiny text encoder's width
    save_file({"emb_params": weights}, str(folder / "embeddings" / "tiny-style.safetensors"))
    argv = ["--tiny", "--device", "cpu", "--no-save", "--queue-size", "8", "--api", "--styles",
            str(folder / "styles.csv"), "--embeddings-dir", str(folder / "embeddings")]
    with serve(argv, folder / "cache") as (url, demo):
        fns = {fn.api_name: fn for fn in demo.fns.values()}
        names = [p["parameter_name"] for p in demo.get_api_info()["named_endpoints"]["/txt2img"]["parameters"]]
        by_widget = {id(widget): name for widget, name in zip(fns["txt2img"].inputs, names)}
        outputs = [by_widget.get(id(widget)) for widget in fns["png_info_send"].outputs]
        yield url.rstrip("/"), Client(url, verbose=False), {"outputs": outputs}


def _generated(client: Client, api_name: str, index: int = 0, **kwargs: Any) -> str:
    """The path of the image at `index` of those an endpoint made."""
    return client.predict(api_name=api_name, **kwargs)[1][index]["image"]


def _send(app: tuple[str, Client, dict], text: str) -> tuple[Sent, list[str]]:
    """PNG info's "Send to text to image" with the parameters `text`, through the app (queue join, then the event
    stream): the values it put into text to image's widgets (those it left alone are missing) and its warnings."""
    url, _, sends = app
    config = httpx.get(f"{url}/config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "png_info_send")
    body = {"data": [text], "fn_index": fn_index, "session_hash": "roundtrip1", "event_data": None,
            "trigger_id": None}
    joined = httpx.post(f"{url}/gradio_api/queue/join", json=body, headers={"x-gradio-user": "app"}, timeout=30)
    assert joined.status_code == 200, joined.text
    stream = httpx.get(f"{url}/gradio_api/queue/data", params={"session_hash": "roundtrip1"}, timeout=120).text
    messages = [json.loads(line[5:]) for line in stream.splitlines() if line.startswith("data:")]
    done = next(m for m in messages if m.get("msg") == "process_completed")
    assert done["success"], done
    left_alone = ({"__type__": "update"}, None)
    sent = {name: value for name, value in zip(sends["outputs"], done["output"]["data"])
            if name is not None and value not in left_alone}
    return sent, [m["log"] for m in messages if m.get("msg") == "log"]


def _png_info(client: Client, path: str) -> tuple[str, dict[str, Any]]:
    text, fields = client.predict(path=handle_file(path), api_name="/png_info")
    assert fields == parse_parameters(text)
    return text, fields


def _not_read_back(fields: dict[str, Any], sent: Sent, task: str) -> dict[str, tuple[Any, Any]]:
    """{key: (written, what the send set)} for each written key the send did not set to the written value."""
    expected_prompts = read_styles(STYLES_CSV).apply(sent["prompt"], sent["negative_prompt"], sent.get("styles", []))
    wrong = {}
    for key, written in fields.items():
        if key in TASK_ONLY.get(task, set()) or key in IMPLIED:
            continue
        if key in (keys.PROMPT, keys.NEGATIVE_PROMPT):
            got = expected_prompts[key == keys.NEGATIVE_PROMPT]
        else:
            got = READ_BACK[key](sent) if key in READ_BACK else "(no widget reads it)"
        if got != written:
            wrong[key] = (written, got)
    return wrong


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _round_trip(app: tuple[str, Client, dict], path: str, task: str = "txt2img") -> tuple[dict, Sent, list[str]]:
    """PNG info, then its send: (the fields read, what was sent, the send's warnings); every written key must
    come back (`_not_read_back`)."""
    _, client, _ = app
    text, fields = _png_info(client, path)
    sent, warnings = _send(app, text)
    assert _not_read_back(fields, sent, task) == {}
    return fields, sent, warnings


def _remade(app: tuple[str, Client, dict], path: str, sent: Sent, index: int = 0) -> tuple[dict[str, Any], bool]:
    """Text to image again from the sent widgets alone: (the fields of its image at `index`, whether its pixels
    equal `path`'s)."""
    _, client, _ = app
    again = _generated(client, "/txt2img", index, **sent)
    return _png_info(client, again)[1], np.array_equal(_pixels(again), _pixels(path))


TXT2IMG_CASES = {
    "karras and guidance rescale": {"sampler": "DPM++ 2M", "schedule_type": "Karras", "guidance_rescale": 0.5},
    "exponential": {"sampler": "DPM++ 2M SDE", "schedule_type": "Exponential"},
    **{f"hires fix, {upscaler}": {"hires_fix": True, "hires_upscaler": upscaler, "hires_scale": 1.5,
                                  "hires_steps": 2, "denoising_strength": 0.6, "hires_sampler": "DDIM"}
       for upscaler in HIRES_UPSCALERS},
    "hires resize": {"hires_fix": True, "hires_width": 80, "hires_height": 72, "denoising_strength": 0.4},
    "hires schedule type": {"hires_fix": True, "hires_scale": 1.5, "denoising_strength": 0.6,
                            "hires_schedule": "Exponential"},
    "hires sampler and automatic": {"hires_fix": True, "hires_scale": 1.5, "denoising_strength": 0.6,
                                    "schedule_type": "Karras", "hires_sampler": "DPM++ 2M",
                                    "hires_schedule": "Automatic"},
    "variation seed, seed resize, tiling": {"variation_seed": 5, "variation_strength": 0.3,
                                            "seed_resize_from_width": 96, "seed_resize_from_height": 64,
                                            "tiling": True},
    "styles": {"prompt": "a cat", "negative_prompt": "ugly", "styles": ["oil"]},
    "long prompt, padded negative": {"prompt": " ".join(["red"] * 30)},  # "Pad conds: True", no warning
    "embedding": {"prompt": "a tiny-style cat"},
    "second image of a batch": {"batch_size": 2},
}


@pytest.mark.parametrize("case", list(TXT2IMG_CASES))
def test_text_to_image_parameters_come_back_through_png_info(app, case: str) -> None:
    _, client, _ = app
    options = {"prompt": "a castle", "sampler": "Euler", **TXT2IMG_CASES[case]}
    index = options.get("batch_size", 1) - 1
    path = _generated(client, "/txt2img", index, **FAST, **options)
    fields, sent, warnings = _round_trip(app, path)
    assert warnings == []
    assert {key: fields[key] for key in fields if key.startswith("Hires")} == {
        key: value for key, value in EXPECTED_HIRES.get(case, {}).items()}
    # the image's own seed (A1111's numbering) makes it the first image of the batch it is remade in
    remade, same_pixels = _remade(app, path, sent, 0)
    assert same_pixels
    assert (fields.get(keys.BATCH_POS), remade.get(keys.BATCH_POS)) == ((1, 0) if index else (None, None))
    assert {**remade, keys.BATCH_POS: None} == {**fields, keys.BATCH_POS: None}
    assert fields[keys.SEED] == FAST["seed"] + index


EXPECTED_HIRES = {
    **{f"hires fix, {upscaler}": {keys.HIRES_UPSCALE: 1.5, keys.HIRES_STEPS: 2, keys.HIRES_UPSCALER: upscaler,
                                  keys.HIRES_SAMPLER: "DDIM"} for upscaler in HIRES_UPSCALERS},
    # no hires steps asked (0: the first pass's): none written, as A1111 writes none; the text still remakes it
    "hires resize": {keys.HIRES_RESIZE: "80x72", keys.HIRES_UPSCALER: "Latent"},
    "hires schedule type": {keys.HIRES_UPSCALE: 1.5, keys.HIRES_UPSCALER: "Latent",
                            keys.HIRES_SCHEDULE_TYPE: "Exponential"},
    # Automatic is written where the first pass's schedule type is another (A1111 leaves it out)
    "hires sampler and automatic": {keys.HIRES_UPSCALE: 1.5, keys.HIRES_UPSCALER: "Latent",
                                    keys.HIRES_SAMPLER: "DPM++ 2M", keys.HIRES_SCHEDULE_TYPE: "Automatic"},
}


def test_ddim_eta_set_in_text_to_image_changes_the_image_and_comes_back_through_png_info(app, tmp_path: Path) -> None:
    """Text to image's Eta (DDIM), its API's last parameter `eta`: 0.5 makes another image than the default 0 with
    the same seed, written as "Eta DDIM: 0.5" (A1111's key for DDIM's eta); PNG info's send puts 0.5 back into
    the Eta slider, without a word, and the sent widgets remake the image. So for an image of the A1111 API's
    `eta` (the send said "Eta DDIM (0.5) is not supported here" and remade it without eta)."""
    url, client, _ = app
    options = {"prompt": "a castle", "sampler": "DDIM", **FAST}
    plain, path = _generated(client, "/txt2img", **options), _generated(client, "/txt2img", **options, eta=0.5)
    assert not np.array_equal(_pixels(plain), _pixels(path))
    assert keys.ETA_DDIM not in _png_info(client, plain)[1]
    text, _ = _png_info(client, path)
    assert "Sampler: DDIM, Schedule type: Automatic, CFG scale: 6.5, Seed: 7, Size: 64x64, " in text
    assert ", Eta DDIM: 0.5" in text
    fields, sent, warnings = _round_trip(app, path)
    assert (fields[keys.ETA_DDIM], sent["eta"], warnings) == (0.5, 0.5, [])
    remade, same_pixels = _remade(app, path, sent)
    assert remade == fields and same_pixels

    answer = httpx.post(f"{url}/sdapi/v1/txt2img", json={**options, "sampler_name": "DDIM", "eta": 0.5}, timeout=300)
    assert answer.status_code == 200, answer.text
    (tmp_path / "a1111.png").write_bytes(base64.b64decode(answer.json()["images"][0]))
    fields, sent, warnings = _round_trip(app, str(tmp_path / "a1111.png"))
    assert (fields[keys.ETA_DDIM], sent["eta"], warnings) == (0.5, 0.5, [])


def _small(name: str, size: int, folder: Path) -> str:
    path = folder / f"{size}-{name}"
    Image.open(ASSETS / name).convert("RGB").resize((size, size)).save(path)
    return str(path)


def _task_inputs(task: str, folder: Path) -> dict[str, Any]:
    """The endpoint's inputs for one image of `task`, with its options on."""
    picture = handle_file(_small("landscape.png", 64, folder))
    if task == "img2img":
        return {"image": picture, "strength": 0.5, "variation_seed": 3, "variation_strength": 0.2, "tiling": True,
                "schedule_type": "Karras"}
    if task == "inpaint":
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        mask.save(folder / "mask.png")
        return {"image_and_mask": {"background": picture, "layers": [], "composite": None}, "only_masked": True,
                "mask": handle_file(str(folder / "mask.png")), "mask_blur": 2, "only_masked_padding": 8}
    if task == "outpaint":
        return {"image": picture, "left": 0, "right": 0, "up": 16, "down": 0, "fill": "blur"}
    if task == "depth":
        return {"image": picture, "strength": 0.7}
    return {"image": handle_file(_small("cat_128.png", 16, folder)), "noise_level": 30}


TASK_KEYS = {  # what each task writes beyond the shared settings
    "img2img": {keys.DENOISING_STRENGTH: 0.5, keys.VARIATION_SEED: 3, keys.VARIATION_SEED_STRENGTH: 0.2,
                keys.TILING: True, keys.SCHEDULE_TYPE: "Karras"},
    "inpaint": {keys.DENOISING_STRENGTH: 1.0, keys.MASK_BLUR: 2, keys.INPAINT_AREA: "Only masked",
                keys.MASKED_AREA_PADDING: 8, keys.KEEP_UNMASKED: True},
    "outpaint": {keys.OUTPAINT_FILL: "blur", keys.MASK_BLUR: 8, keys.OUTPAINT_UP: 16, keys.OUTPAINT_LEFT: 0},
    "depth": {keys.DENOISING_STRENGTH: 0.7, keys.DEPTH: "DPT"},
    "upscale": {keys.NOISE_LEVEL: 30},
}


@pytest.mark.parametrize("task", list(TASK_KEYS))
def test_the_other_tasks_parameters_come_back_where_text_to_image_has_them(app, task: str, tmp_path: Path) -> None:
    _, client, _ = app
    path = _generated(client, f"/{task}", prompt="a lighthouse", negative_prompt="fog", sampler="Euler",
                      **{key: FAST[key] for key in ("steps", "seed", "cfg_scale")}, **_task_inputs(task, tmp_path))
    fields, sent, warnings = _round_trip(app, path, task)
    assert warnings == []
    assert {key: fields.get(key) for key in TASK_KEYS[task]} == TASK_KEYS[task]
    assert (sent["prompt"], sent["negative_prompt"], sent["seed"], sent["steps"]) == ("a lighthouse", "fog", 7, 2)


def test_a_text_of_a1111s_with_unpadded_prompts_of_other_lengths_is_said_to_differ(app) -> None:
    """A1111 runs a prompt and a negative prompt of other chunk counts unpadded unless its text says "Pad conds";
    here they are padded, so the send says the image will differ (and says nothing where they are padded there
    too, have one length, or guidance is off)."""
    long = " ".join(["red"] * 30)  # two chunks with the tiny tokenizer
    said = ('The prompt (2 chunks of 75 tokens) and the negative prompt (1 chunk of 75 tokens) have other lengths '
            'and the text has no "Pad conds": A1111 ran them unpadded, here the shorter is padded with empty chunks, '
            'so the image will differ a little.')
    settings = "Steps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"
    assert _send(app, f"{long}\nNegative prompt: blurry\n{settings}")[1] == [said]
    for text in (f"{long}\nNegative prompt: blurry\n{settings}, Pad conds: True", f"a castle\n{settings}",
                 f"{long}\n{settings.replace('CFG scale: 7', 'CFG scale: 1')}",
                 f"{long}\nNegative prompt: {long}\n{settings}"):
        assert _send(app, text)[1] == [], text


def test_a_written_key_no_widget_reads_is_found() -> None:
    """The check above fails for a key the send does not read (a new writer's key, or a misspelt one)."""
    fields = parse_parameters("a cat\nSteps: 2, Sampler: Euler, Seed: 7, Size: 64x64, Hires stpes: 3")
    sent = {"prompt": "a cat", "negative_prompt": "", "steps": 2, "sampler": "Euler", "seed": 7, "width": 64,
            "height": 64}
    assert _not_read_back(fields, sent, "txt2img") == {"Hires stpes": (3, "(no widget reads it)")}
    assert _not_read_back({**fields, keys.SEED: 8}, sent, "txt2img")[keys.SEED] == (8, 7)
