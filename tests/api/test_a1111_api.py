"""The A1111-compatible API (/sdapi/v1) through the running app, driven by the real `webuiapi` client.

The app is launched in-process on the tiny random-weight checkpoints with the A1111 routes and basic auth, as
app.py launches it. Covered: txt2img (batches, seeds, metadata, and the same pixels as the Service gives),
img2img, inpaint with a mask, the resize modes (as the Image to image tab's), progress polling and interrupt
mid-run, switching the checkpoint, refusals of what we do not have, one raw-HTTP request with A1111's documented field set, a call over its address's job limit
refused before its image is decoded, and that an API job and a web UI job never use the GPU at the same time
(the one gate).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from PIL import Image

webuiapi = pytest.importorskip("webuiapi")
from gradio_client import Client  # noqa: E402

from tests.a1111_support import a1111_error_body  # noqa: E402
from tests.hosting_support import API_FAST  # noqa: E402
from tests.reliability_support import noise_image, png_bytes  # noqa: E402
from tests.reliability_support import free_port  # noqa: E402

if TYPE_CHECKING:
    from sd2_app.api.job_admission import JobAdmission

USER, PASSWORD = "krita", "s3cret"
ADDRESS_LIMIT = 4  # the API's jobs per network address (this test's clients are all 127.0.0.1)
FAST = API_FAST


class GpuSpans:
    """Every task's pipeline wrapped (through the Service's public `tasks` table) to record when each job ran:
    the pipeline is called where a job holds the GPU."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = self.peak = 0
        self.spans: list[tuple[int, float, float]] = []  # (steps, start, end) per job

    def reset(self) -> None:
        with self.lock:
            self.peak, self.spans = self.active, []

    def wrap(self, pipeline):
        def counted(components, request, on_step, **kwargs):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            started = time.monotonic()
            try:
                return pipeline(components, request, on_step, **kwargs)
            finally:
                with self.lock:
                    self.active -= 1
                    self.spans.append((request.sampling.steps, started, time.monotonic()))

        return counted


@pytest.fixture(scope="module")
def gpu_spans() -> GpuSpans:
    return GpuSpans()


@pytest.fixture(scope="module")
def job_admission() -> "JobAdmission":
    from sd2_app.api.job_admission import JobAdmission

    return JobAdmission(limit=ADDRESS_LIMIT, queue_size=4)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, gpu_spans: GpuSpans,
        job_admission: "JobAdmission") -> Iterator[tuple[str, int, object]]:
    from sd2_app.api.a1111_routes import A1111Api, build_router
    from sd2_app.api.service import Service
    from sd2_app.api.tasks import TASKS, pipeline_of
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    manager = ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache"))
    tasks = {task: gpu_spans.wrap(pipeline_of(task)) for task in TASKS}
    service = Service(manager, outputs_dir=tmp_path_factory.mktemp("outputs"), allowed_repos=(), tasks=tasks)
    demo = build_ui(service)
    demo.queue(max_size=8, default_concurrency_limit=1)
    api = A1111Api(service, auth=[(USER, PASSWORD)], job_admission=job_admission)
    port = free_port()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                            show_error=False, ssr_mode=False, app_kwargs={"routes": build_router(api).routes})
    try:
        yield url, port, service
    finally:
        demo.close()


@pytest.fixture()
def client(app) -> "webuiapi.WebUIApi":
    _, port, _ = app
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler", steps=2, username=USER, password=PASSWORD)


def _post(port: int, path: str, body: dict, auth: bool = True) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sdapi/v1/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_txt2img_batches_seeds_and_metadata_match_the_service(app, client) -> None:
    from sd2_app.api.requests import Sampling, Txt2ImgRequest
    from sd2_app.pipelines.metadata import DIGITAL_SOURCE_TYPE, digital_source_type

    _, _, service = app
    result = client.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=11, batch_size=2, n_iter=2, **FAST)
    assert len(result.images) == 4 and all(image.size == (64, 64) for image in result.images)
    assert result.info["all_seeds"] == [11, 12, 13, 14]  # image x at seed + x (batch j starts at seed + 2j)
    assert result.info["all_subseeds"] == [-1] * 4 and result.info["subseed_strength"] == 0
    assert result.info["sd_model_name"] == "sd21-base" and result.info["sampler_name"] == "Euler"
    text = result.images[2].info["parameters"]
    assert text.startswith("a lighthouse\nNegative prompt: fog\nSteps: 2, Sampler: Euler") and "Seed: 13" in text
    assert result.info["infotexts"][2] == text
    assert digital_source_type(result.images[0]) == DIGITAL_SOURCE_TYPE
    # The same request through the Service gives the same pixels: one pipeline, one set of defaults.
    direct = service.run(Txt2ImgRequest("a lighthouse", negative_prompt="fog", width=64, height=64,
                                        sampling=Sampling(sampler="Euler", steps=2, cfg_scale=1.0, seed=13, batch_size=2)))
    for ours, theirs in zip(result.images[2:], direct.images):
        assert np.array_equal(np.asarray(ours.convert("RGB")), np.asarray(theirs))


def test_eta_is_written_in_the_infotext_only_when_the_sampler_uses_it(client) -> None:
    euler = client.txt2img(prompt="a lighthouse", seed=5, eta=0.5, **FAST)
    ddim = client.txt2img(prompt="a lighthouse", seed=5, eta=0.5, **{**FAST, "sampler_name": "DDIM"})
    assert "Eta" not in euler.info["infotexts"][0]  # Euler's step takes no eta: the image was made without it
    assert ", Eta DDIM: 0.5" in ddim.info["infotexts"][0]  # A1111's name of DDIM's eta


def test_a_refusal_repeats_at_most_sixty_characters_of_a_value_it_names(app) -> None:
    """A megabyte sent in a field comes back (and goes to the log) as its first 60 characters (errors.shown)."""
    _, port, _ = app
    long = "x" * 100_000
    for field in ({"sampler_name": long}, {"scheduler": long}, {"override_settings": {"sd_model_checkpoint": long}},
                  {"enable_hr": True, "hr_upscaler": long}, {"enable_hr": True, "hr_sampler_name": long},
                  {"steps": long}):
        status, body = _post(port, "txt2img", {"prompt": "a lighthouse", **FAST, **field})
        assert status == 422 and f"'{'x' * 60}'..." in body["detail"], field
        assert len(body["detail"]) < 400, field


def test_img2img_and_inpaint_with_a_mask(client) -> None:
    init = noise_image(64, 64, seed=3)
    result = client.img2img(images=[init], prompt="oil painting", denoising_strength=0.5, seed=2, **FAST)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.info["denoising_strength"] == 0.5 and result.info["sd_model_name"] == "sd21-base"

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    result = client.img2img(images=[init], mask_image=mask, prompt="a red door", denoising_strength=1.0,
                            inpainting_fill=1, mask_blur=0, inpaint_full_res=False, seed=2, **FAST)
    out = np.asarray(result.images[0].convert("RGB")).astype(int)
    assert result.info["sd_model_name"] == "sd2-inpainting"  # the current model cannot inpaint: the one that can
    assert result.info["is_using_inpainting_conditioning"] is True
    assert np.array_equal(out[:, 40:], np.asarray(init)[:, 40:])  # kept outside the mask (64 px: no watermark)
    assert not np.array_equal(out[:, :24], np.asarray(init)[:, :24])


def test_webuiapis_default_inpaint_call_starts_the_masked_area_from_a1111s_fill(client) -> None:
    """webuiapi's img2img with a mask sends inpainting_fill 0 (A1111's "fill", also its API's default) and
    denoising_strength 0.75: it was refused (422, "inpainting_fill 0 is not available")."""
    init = noise_image(64, 64, seed=3)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    result = client.img2img(images=[init], mask_image=mask, prompt="cat", seed=2, **FAST)
    text = result.info["infotexts"][0]
    assert "Denoising strength: 0.75," in text and "Masked content: fill" in text
    assert np.array_equal(np.asarray(result.images[0].convert("RGB"))[:, 40:], np.asarray(init)[:, 40:])


@pytest.mark.parametrize(("fill", "written"), [(None, "fill"), (0, "fill"), (1, None), (2, "latent noise"),
                                               (3, "latent nothing")])
def test_each_inpainting_fill_runs_as_its_masked_content(app, fill: int | None, written: str | None) -> None:
    _, port, _ = app
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    body = {"prompt": "x", **FAST, "seed": 1, "denoising_strength": 0.5, "mask_blur": 0,
            "init_images": [base64.b64encode(png_bytes(noise_image(64, 64))).decode()],
            "mask": base64.b64encode(png_bytes(mask)).decode(), **({} if fill is None else {"inpainting_fill": fill})}
    status, answer = _post(port, "img2img", body)
    assert status == 200, answer
    text = json.loads(answer["info"])["infotexts"][0]
    assert (f"Masked content: {written}" in text) if written else ("Masked content" not in text)


def test_composable_prompts_through_the_a1111_api(app) -> None:
    """A1111's AND runs as the web UI runs it (its info text keeps the prompt), and needs guidance: at CFG 1 the
    call is a 422 with the message."""
    _, port, _ = app
    status, answer = _post(port, "txt2img", {"prompt": "a cat AND a dog:0.5", **FAST, "seed": 3, "cfg_scale": 6})
    assert status == 200 and json.loads(answer["info"])["prompt"] == "a cat AND a dog:0.5"
    assert _post(port, "txt2img", {"prompt": "a cat AND a dog", **FAST, "cfg_scale": 1}) == (422, a1111_error_body(
        422, "The prompt's parts joined by AND need classifier-free guidance: set the CFG scale above 1."))


@pytest.mark.parametrize("fill", [4, -1, "fill", True, 1.5])
def test_an_inpainting_fill_a1111_lacks_is_refused_with_the_choices(app, fill: object) -> None:
    _, port, _ = app
    body = {"prompt": "x", **FAST, "init_images": [base64.b64encode(png_bytes(noise_image(64, 64))).decode()],
            "mask": base64.b64encode(png_bytes(Image.new("L", (64, 64), 255))).decode(), "inpainting_fill": fill}
    assert _post(port, "img2img", body) == (422, a1111_error_body(422, (
        "inpainting_fill must be one of 0 (fill), 1 (original), 2 (latent noise), 3 (latent nothing); "
        f"got {fill!r}.")))


def _b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_each_resize_mode_makes_what_the_image_to_image_tab_makes(app, mode: int, tmp_path) -> None:
    """resize_mode 0, 1, 2 are A1111's Just resize, Crop and resize, Resize and fill: the tab's choices of those
    names (only 0 was taken; a list there was a 500). A 120x64 image asked for 64x72, seed for seed."""
    from gradio_client import handle_file

    from sd2_app.api.resize_modes import RESIZE_MODES

    url, port, _ = app
    init = noise_image(120, 64, seed=4)
    init.save(tmp_path / "init.png")
    settings = {"width": 64, "height": 72, "steps": 2, "cfg_scale": 1.0, "seed": 2}
    status, answer = _post(port, "img2img", {"prompt": "a painting", "sampler_name": "Euler", **settings,
                                             "denoising_strength": 0.5, "resize_mode": mode,
                                             "init_images": [_b64(init)]})
    assert status == 200, answer
    by_api = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    _, gallery, _ = Client(url, verbose=False).predict(
        image=handle_file(str(tmp_path / "init.png")), checkpoint="sd21-base", prompt="a painting", strength=0.5,
        resize_mode=RESIZE_MODES[mode], sampler="Euler", **settings, api_name="/img2img")
    by_tab = Image.open(gallery[0]["image"])
    assert by_api.size == by_tab.size == (64, 72)
    assert np.array_equal(np.asarray(by_api.convert("RGB")), np.asarray(by_tab.convert("RGB")))
    if mode:
        status, stretched = _post(port, "img2img", {"prompt": "a painting", "sampler_name": "Euler", **settings,
                                                    "denoising_strength": 0.5, "init_images": [_b64(init)]})
        assert stretched["images"][0] != answer["images"][0]


def test_inpaint_runs_at_width_and_height_with_image_and_mask_in_the_resize_mode(app) -> None:
    """As A1111 inpaints (the whole picture): image and mask resized to width x height in the resize mode, the
    unmasked pixels those of the resized image (they were ignored: the image's own 120x64 came back)."""
    from sd2_app.api.resize_modes import resize_to

    _, port, _ = app
    init = noise_image(120, 64, seed=4)
    mask = Image.new("L", (120, 64), 0)
    mask.paste(255, (0, 0, 40, 64))  # the left third: cols 0-45 of the 135-wide cover, 0-10 after its crop
    body = {"prompt": "a red door", **FAST, "width": 64, "height": 72, "seed": 2, "denoising_strength": 1.0,
            "mask_blur": 0, "inpainting_fill": 1, "resize_mode": 1, "init_images": [_b64(init)], "mask": _b64(mask)}
    status, answer = _post(port, "img2img", body)
    assert status == 200, answer
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))
    cropped = np.asarray(resize_to(init, 64, 72, "Crop and resize"))
    assert out.shape == (72, 64, 3) and "Size: 64x72," in json.loads(answer["info"])["infotexts"][0]
    assert np.array_equal(out[:, 12:], cropped[:, 12:])
    assert not np.array_equal(out[:, :4], cropped[:, :4])
    rounded = json.loads(_post(port, "img2img", {**body, "width": 100})[1]["info"])
    assert rounded["width"] == 104 and rounded["warnings"][0].startswith("Width 100 was rounded to 104")
    full_res = _post(port, "img2img", {**body, "inpaint_full_res": True})[1]  # the crop works at 512x512 instead
    assert Image.open(io.BytesIO(base64.b64decode(full_res["images"][0]))).size == (120, 64)


@pytest.mark.parametrize("mode", [3, -1, 1.5, "1", [1], {"mode": 1}, None])
def test_a_resize_mode_a1111_lacks_is_refused_with_the_choices(app, mode: object) -> None:
    _, port, _ = app
    body = {"prompt": "x", **FAST, "init_images": [_b64(noise_image(64, 64))], "resize_mode": mode}
    assert _post(port, "img2img", body) == (422, a1111_error_body(422, (
        "resize_mode must be one of 0 (Just resize), 1 (Crop and resize), 2 (Resize and fill); "
        f"got {mode!r}.")))


@pytest.mark.slow
def test_progress_polling_and_interrupt_mid_run(app, client) -> None:
    assert client.get_progress()["state"]["job_count"] == 0  # idle (what util_wait_for_ready waits for)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(
        result=client.txt2img(prompt="slow", seed=1, **{**FAST, "steps": 150})))
    runner.start()
    seen = []
    deadline = time.time() + 60
    while time.time() < deadline:
        progress = client.get_progress()
        if progress["state"]["sampling_step"] >= 12:
            seen.append(progress)
            break
        if progress["state"]["job_count"]:
            seen.append(progress)
        time.sleep(0.05)
    assert seen and seen[-1]["state"]["sampling_steps"] == 150 and 0 < seen[-1]["progress"] < 1
    assert seen[-1]["state"]["job"] == "txt2img" and seen[-1]["eta_relative"] > 0
    preview = Image.open(io.BytesIO(base64.b64decode(seen[-1]["current_image"])))
    assert preview.size == (64, 64)  # the live preview (latents at 1/8, shown 8x)
    client.interrupt()
    runner.join(timeout=30)
    assert not runner.is_alive()
    # As A1111's Interrupt: the image so far (the x0 estimate of the step it stopped after), its text marked.
    images, info = outcome["result"].images, outcome["result"].info
    assert len(images) == 1 and images[0].size == (64, 64)
    stopped_at = int(images[0].info["parameters"].rsplit(", Stopped at step: ", 1)[1])
    assert 12 <= stopped_at < 150 and "Steps: 150," in images[0].info["parameters"]
    assert info["infotexts"] == [images[0].info["parameters"]]
    assert info["seed"] == 1 and info["all_seeds"] == [1]  # webuiapi reads these (result.info["all_seeds"])
    assert "Stopped at step" not in info["infotexts"][0].split("\n")[0]  # after the settings, not in the prompt
    assert client.get_progress()["state"]["job_count"] == 0


def test_skip_ends_the_running_batch_and_the_job_goes_on(app, client) -> None:
    """A1111's /skip (webuiapi's `skip()`): the running batch of the caller's job ends at its next step with its
    image so far, and the next batch runs whole."""
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(
        result=client.txt2img(prompt="skipped", seed=3, n_iter=2, **{**FAST, "steps": 150})))
    runner.start()
    deadline = time.time() + 60
    while client.get_progress()["state"]["sampling_step"] < 12 and time.time() < deadline:
        time.sleep(0.05)
    client.skip()
    runner.join(timeout=120)
    assert not runner.is_alive()
    images, info = outcome["result"].images, outcome["result"].info
    assert len(images) == 2 and info["all_seeds"] == [3, 4]
    skipped_at = int(images[0].info["parameters"].rsplit(", Stopped at step: ", 1)[1])
    assert 12 <= skipped_at < 150  # the first batch: its image so far
    assert "Stopped at step" not in images[1].info["parameters"]  # the second ran all its steps
    state = client.get_progress()["state"]
    assert (state["job_count"], state["skipped"]) == (0, False)


def test_hires_prompts_of_their_own(client) -> None:
    """hr_prompt / hr_negative_prompt: the second pass reads them, the info text says them (A1111's keys), and
    the image differs from the one the prompt gives in both passes; the prompt again is the same run."""
    own = client.txt2img(prompt="x", seed=4, enable_hr=True, hr_scale=1.5, denoising_strength=0.6,
                         hr_prompt="x, a castle, 8k", hr_negative_prompt="blurry", **FAST)
    text = own.images[0].info["parameters"]
    assert 'Hires prompt: "x, a castle, 8k", Hires negative prompt: blurry' in text
    plain = client.txt2img(prompt="x", seed=4, enable_hr=True, hr_scale=1.5, denoising_strength=0.6, **FAST)
    same = client.txt2img(prompt="x", seed=4, enable_hr=True, hr_scale=1.5, denoising_strength=0.6, hr_prompt="x",
                          **FAST)
    assert "Hires prompt" not in plain.images[0].info["parameters"]
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(same.images[0]))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(own.images[0]))


def test_hires_fix_variation_seed_and_tiling(client) -> None:
    result = client.txt2img(prompt="x", seed=4, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                            denoising_strength=0.5, hr_scheduler="Use same scheduler", **FAST)  # A1111's "same"
    assert result.images[0].size == (128, 128) and result.info["width"] == 128
    plain = client.txt2img(prompt="x", seed=4, **FAST).images[0]
    variations = client.txt2img(prompt="x", seed=4, subseed=9, subseed_strength=0.5, batch_size=2, n_iter=2, **FAST)
    varied = variations.images[0]
    # A1111's numbering with a variation seed: every image keeps the seed, the variation seeds count up, across
    # the batches too; each image's own text says the same
    assert (variations.info["all_seeds"], variations.info["all_subseeds"]) == ([4] * 4, [9, 10, 11, 12])
    assert (variations.info["subseed"], variations.info["subseed_strength"]) == (9, 0.5)
    assert [f"Variation seed: {subseed}," in image.info["parameters"]
            for image, subseed in zip(variations.images, [9, 10, 11, 12], strict=True)] == [True] * 4
    tiled = client.txt2img(prompt="x", seed=4, tiling=True, **FAST).images[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(varied))
    assert not np.array_equal(np.asarray(plain), np.asarray(tiled))
    assert "Variation seed: 9, Variation seed strength: 0.5" in varied.info["parameters"]
    assert "Tiling: True" in tiled.info["parameters"] and "Hires upscale: 2" in result.images[0].info["parameters"]


def test_switching_the_checkpoint(client) -> None:
    assert {"sd2-base", "sd21-base", "sd2-inpainting"} <= set(client.util_get_model_names())
    client.util_set_model("sd2-base")
    try:
        assert client.util_get_current_model() == "sd2-base"
        assert client.txt2img(prompt="x", seed=1, **FAST).info["sd_model_name"] == "sd2-base"
        override = {"sd_model_checkpoint": "sd21-base"}
        assert client.txt2img(prompt="x", seed=1, override_settings=override, **FAST).info["sd_model_name"] == "sd21-base"
    finally:
        client.util_set_model("sd21-base")
    assert client.get_options()["sd_model_checkpoint"] == "sd21-base"


def test_a1111_checkpoint_titles_select_ours(app, client) -> None:
    """POST /options with the title A1111 lists for Stability's file (what its clients send back) picks ours."""
    _, port, _ = app
    try:
        for title, key in (("v2-1_512-ema-pruned.safetensors [88ecb78256]", "sd21-base"),
                           ("512-base-ema", "sd2-base"), ("SD 2.1 BASE (512)", "sd21-base")):
            assert _post(port, "options", {"sd_model_checkpoint": title})[0] == 200
            assert client.get_options()["sd_model_checkpoint"] == key
        status, body = _post(port, "options", {"sd_model_checkpoint": "v2-1_512-nonema-pruned"})
        assert status == 422 and body["detail"].startswith("Unknown checkpoint 'v2-1_512-nonema-pruned'")
        override = {"sd_model_checkpoint": "512-base-ema.safetensors [0123456789]"}  # one call's model; hash unread
        status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "override_settings": override})
        assert status == 200 and json.loads(body["info"])["sd_model_name"] == "sd2-base"
    finally:
        _post(port, "options", {"sd_model_checkpoint": "sd21-base"})


@pytest.mark.parametrize(("name", "key"), [
    ("sd2-base", "sd2-base"),  # our key
    ("sd 2.1 BASE (512)", "sd21-base"),  # our label, in any case
    ("v2-1_512-ema-pruned.safetensors [88ecb78256]", "sd21-base"),  # A1111's title of Stability's file
    ("SD2\\512-base-ema.ckpt", "sd2-base"),  # the file's name in a folder, another extension
    ("v2-1_512-nonema-pruned", None),  # other weights
])
def test_options_and_override_settings_read_a_checkpoint_name_alike(app, name: str, key: str | None) -> None:
    """One reading of a checkpoint's name: POST /options and a call's override_settings take the same names to
    the same checkpoint, and refuse the same unknown name with the same message."""
    _, port, service = app
    unknown = f"Unknown checkpoint {name!r}; choose one of: {', '.join(service.catalog.tasks)}."
    override = {"override_settings": {"sd_model_checkpoint": name}}
    try:
        _post(port, "options", {"sd_model_checkpoint": "sd2" if key == "sd2-base" else "sd2-base"})
        set_status, set_body = _post(port, "options", {"sd_model_checkpoint": name})
        current = webuiapi.WebUIApi(port=port, username=USER, password=PASSWORD).get_options()["sd_model_checkpoint"]
        run_status, run_body = _post(port, "txt2img", {"prompt": "x", **FAST, "seed": 1, **override})
    finally:
        _post(port, "options", {"sd_model_checkpoint": "sd21-base"})
    if key is None:
        refusal = a1111_error_body(422, unknown)
        assert (set_status, set_body, run_status, run_body) == (422, refusal, 422, refusal)
    else:
        assert (set_status, current, run_status) == (200, key, 200), (set_body, run_body)
        assert json.loads(run_body["info"])["sd_model_name"] == key


def test_catalog_endpoints(client) -> None:
    assert "DPM++ 2M" in client.util_get_sampler_names()
    schedulers = client.get_schedulers()
    assert [(s["name"], s["label"]) for s in schedulers] == [
        ("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"), ("exponential", "Exponential"),
        ("polyexponential", "Polyexponential"), ("sgm_uniform", "SGM Uniform"), ("kl_optimal", "KL Optimal"),
        ("align_your_steps", "Align Your Steps"), ("simple", "Simple"), ("normal", "Normal"), ("beta", "Beta")]
    assert schedulers[5]["aliases"] == ["SGMUniform"] and schedulers[0]["aliases"] is None
    assert [s["default_rho"] for s in schedulers] == [-1, -1, 7.0, -1, 1.0, -1, -1, -1, -1, -1, -1]
    assert [s["name"] for s in schedulers if s["need_inner_model"]] == ["uniform", "sgm_uniform", "simple", "normal",
                                                                        "beta"]
    assert [(u["name"], u["model_name"]) for u in client.get_upscalers()] == [
        ("None", None), ("Lanczos", None), ("Nearest", None), ("SD2 x4", "x4-upscaler")]


def test_interrogate_answers_501_with_a1111s_error_body(app, client) -> None:
    """/interrogate was a 404 (webuiapi's interrogate raised RuntimeError(404, '{"detail":"Not Found"}'), as for a
    wrong URL); it answers 501 in the error body A1111's API gives, naming what the server does not offer."""
    from sd2_app.api.a1111_catalog import INTERROGATE_MESSAGE

    _, port, _ = app
    body = {"error": "HTTPException", "detail": INTERROGATE_MESSAGE, "body": "", "errors": f"501: {INTERROGATE_MESSAGE}"}
    image = base64.b64encode(png_bytes(noise_image(16, 16))).decode()
    assert _post(port, "interrogate", {"image": image, "model": "clip"}) == (501, body)
    with pytest.raises(RuntimeError) as refused:
        client.interrogate(noise_image(16, 16), model="deepdanbooru")
    assert refused.value.args[0] == 501 and json.loads(refused.value.args[1]) == body
    assert _post(port, "interrogate", {"image": image}, auth=False)[0] == 401  # behind the API's auth, as every route


def test_a_client_at_its_address_limit_is_refused_before_its_image_is_decoded(app, job_admission,
                                                                             monkeypatch) -> None:
    """The job's place is taken before its body is decoded: an img2img call over the address's limit is refused
    (429) without decoding its init image (up to about 33 MiB of base64); with its places back, the same call decodes
    the image once and runs."""
    from sd2_app.api import a1111
    from sd2_app.api.job_admission import too_many_jobs_from_address_message

    _, port, _ = app
    decoded: list[str] = []
    decode = a1111.decode_image

    def counted(value: object, what: str) -> Image.Image:
        decoded.append(what)
        return decode(value, what)

    monkeypatch.setattr(a1111, "decode_image", counted)
    init = base64.b64encode(png_bytes(noise_image(64, 64, seed=4))).decode("ascii")
    body = {"prompt": "over the limit", "init_images": [init], "denoising_strength": 0.5, "seed": 1, **FAST}
    for _ in range(ADDRESS_LIMIT):  # the address's other jobs, waiting or running
        assert job_admission.take("127.0.0.1") is None
    try:
        status, answer = _post(port, "img2img", body)
    finally:
        for _ in range(ADDRESS_LIMIT):
            job_admission.release("127.0.0.1")
    assert (status, answer["detail"]) == (429, too_many_jobs_from_address_message(ADDRESS_LIMIT))
    assert decoded == []
    status, answer = _post(port, "img2img", body)
    assert status == 200 and len(answer["images"]) == 1 and decoded == ["init_images[0]"]
    assert job_admission.count("127.0.0.1") == 0


def test_refusals_name_what_is_missing_and_unknown_fields_are_ignored(app, caplog) -> None:
    _, port, _ = app
    init = base64.b64encode(png_bytes(noise_image(64, 64))).decode()
    status, body = _post(port, "img2img", {"prompt": "x", **FAST, "init_images": [init], "enable_hr": True})
    assert status == 422 and body["detail"].startswith("hires fix (enable_hr) is available in txt2img only")
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "enable_hr": True, "hr_upscaler": "Bicubic"})
    assert status == 422 and body["detail"].startswith("Unknown hires upscaler 'Bicubic'")  # the Service's check
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "enable_hr": True, "hr_prompt": 5})
    assert (status, body["detail"]) == (422, "Hires prompt must be text, got int.")
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "enable_hr": True, "hr_scheduler": "turbo"})
    assert (status, body["detail"].split(";")[0]) == (422, "Hires schedule type must be one of Automatic, Uniform, "
                                                           "Karras, Exponential, Polyexponential, SGM Uniform, KL "
                                                           "Optimal, Align Your Steps, Simple, Normal, Beta")
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "enable_hr": True, "hr_scheduler": "karras",
                                           "hr_sampler_name": "DDIM"})
    assert (status, body["detail"]) == (422, "Hires schedule type Karras is not available for the DDIM sampler; "
                                             "pick Automatic, or a hires sampler that offers it.")
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "enable_hr": True, "hr_checkpoint_name": "sd21"})
    assert status == 422 and body["detail"].startswith("hr_checkpoint_name (a checkpoint of the hires pass's own)")
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "alwayson_scripts": {"ControlNet": {"args": []}}})
    assert status == 422 and "alwayson_scripts" in body["detail"]
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "sampler_name": "DPM fast"})
    assert status == 422 and body["detail"].startswith("Sampler 'DPM fast' is not available")
    # n_iter is the web UI's batch count in this API's words: one rule (sd2_app/api/batch_count.py)
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "n_iter": 17, "batch_size": 2})
    assert status == 422 and body["detail"] == "n_iter x batch_size is 34; this server makes at most 32 images per request."
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "n_iter": 0})
    assert status == 422 and body["detail"] == "n_iter must be between 1 and 32, got 0."
    # each batch of 150 steps at 1024x1024 fits the cost cap (4,915,200), two do not: they are one job's cost
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "n_iter": 2, "steps": 150, "cfg_scale": 7,
                                           "width": 1024, "height": 1024})
    assert status == 422 and body["detail"] == (
        "This job is too large for this server: it costs 9,830,400 UNet evaluations x latent pixels and the limit is "
        "6,553,600. Lower the steps, the batch count, the images per prompt, the width and height or the hires fix "
        "(at most 100 steps fit with the other settings unchanged).")
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "steps": 151})
    assert status == 422 and body["detail"] == "Steps must be between 1 and 150, got 151."  # the Service's check
    with caplog.at_level("INFO", logger="sd2_app.api.a1111"):
        status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "seed": 1, "my_extension_field": 3})
    assert status == 200 and len(body["images"]) == 1
    assert "ignoring unknown field(s) my_extension_field" in caplog.text
    assert _post(port, "txt2img", {"prompt": "x", **FAST}, auth=False)[0] == 401


def test_every_error_comes_in_a1111s_error_body(app, monkeypatch, caplog) -> None:
    """Refusals by the route (422), by its auth dependency (401, with its WWW-Authenticate header) and unexpected
    failures (500, a generic message; the traceback in the log only) all come in A1111's four fields, which clients
    such as modelfusion parse; a body that is not JSON stays FastAPI's 422 list, as in A1111."""
    from sd2_app.api import a1111
    from sd2_app.api.a1111_errors import FAILED_MESSAGE

    _, port, _ = app
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "sampler_name": "DPM fast"})
    assert status == 422 and body == a1111_error_body(422, body["detail"]) and body["detail"].startswith("Sampler 'DPM")
    refused = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json={"prompt": "x"}, timeout=30)
    assert (refused.status_code, refused.json()) == (401, a1111_error_body(401, "Incorrect username or password"))
    assert refused.headers["www-authenticate"] == "Basic"

    def failing(*args, **kwargs):
        raise RuntimeError("a bug's text naming /srv/private/path")

    monkeypatch.setattr(a1111, "txt2img_job", failing)
    with caplog.at_level("ERROR", logger="sd2_app.api.a1111_errors"):
        assert _post(port, "txt2img", {"prompt": "x", **FAST}) == (500, a1111_error_body(500, FAILED_MESSAGE))
    assert "/srv/private/path" in caplog.text and "POST /sdapi/v1/txt2img failed" in caplog.text
    not_json = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", content=b"{oops", auth=(USER, PASSWORD),
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert not_json.status_code == 422 and isinstance(not_json.json()["detail"], list)
    monkeypatch.undo()
    assert _post(port, "txt2img", {"prompt": "x", **FAST})[0] == 200  # the server kept serving


SAMPLER_NAMES = [  # (A1111's sampler name, its schedule or None) -> (our sampler, schedule type); None: not ours
    (("DPM++ 2M", None), ("DPM++ 2M", "Automatic")),  # exact
    (("dpm++ 2m", None), ("DPM++ 2M", "Automatic")),  # in lower case
    (("DPM++ 2M Karras", None), ("DPM++ 2M", "Karras")),  # the schedule in the name (A1111 before 1.9)
    (("dpm++ 2m karras", None), ("DPM++ 2M", "Karras")),
    (("DPM++ 2M SDE Exponential", None), ("DPM++ 2M SDE", "Exponential")),
    (("DPM++ 2M", "Karras"), ("DPM++ 2M", "Karras")),  # "Schedule type: Karras" / scheduler "Karras"
    (("DPM++ 2M", "karras"), ("DPM++ 2M", "Karras")),  # the scheduler's name rather than its label
    (("Euler", "exponential"), ("Euler", "Exponential")),
    (("UniPC", "beta"), ("UniPC", "Beta")),
    (("Euler", "sgm_uniform"), ("Euler", "SGM Uniform")),  # A1111's name of a schedule type
    (("Euler", "SGMUniform"), ("Euler", "SGM Uniform")),  # and its alias
    (("DPM++ 2M SGM Uniform", None), ("DPM++ 2M", "SGM Uniform")),  # not read as "... SGM" with Uniform
    (("DPM++ 2M", "KL Optimal"), ("DPM++ 2M", "KL Optimal")),
    (("Euler a", "align_your_steps"), ("Euler a", "Align Your Steps")),
    (("Heun", "simple"), ("Heun", "Simple")),
    (("PLMS", None), ("PNDM", "Automatic")),  # A1111's name of PNDM
    (("plms", None), ("PNDM", "Automatic")),
    (("DPM fast", None), None),  # not ours
    (("DPM fast Karras", None), None),
]


def _send_to_txt2img(url: str, text: str) -> dict:
    """PNG info's "Send to text to image" as the page sends it: a queue join of the event (found in /config, as
    the page finds it) with the parameters text; the values it puts into text to image, by elem_id (or label)."""
    config = httpx.get(f"{url}config", timeout=30).json()
    event = next(d for d in config["dependencies"] if d.get("api_name") == "png_info_send")
    elem_ids = {c["id"]: c.get("props", {}).get("elem_id") or c.get("props", {}).get("label")
                for c in config["components"]}
    session = f"send-{time.monotonic_ns()}"
    with httpx.Client(base_url=url, timeout=60) as http:
        joined = http.post("gradio_api/queue/join", json={"data": [text], "fn_index": event["id"],
                                                          "session_hash": session})
        assert joined.status_code == 200, joined.text
        with http.stream("GET", f"gradio_api/queue/data?session_hash={session}") as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    assert message["success"], message
                    return dict(zip((elem_ids[o] for o in event["outputs"]), message["output"]["data"]))
    raise AssertionError("the event did not complete")


@pytest.mark.parametrize(("a1111", "ours"), SAMPLER_NAMES, ids=[" + ".join(filter(None, a)) for a, _ in SAMPLER_NAMES])
def test_a1111_sampler_names_read_alike_by_the_api_and_the_paste(app, a1111: tuple, ours: tuple | None) -> None:
    """One reading of A1111's sampler names (`sd2_app.api.a1111_samplers.read_sampler`): the API's sampler_name
    and scheduler, and a parameters text's Sampler and Schedule type sent to text to image, give the same
    sampler and schedule; a name we do not have is refused by the API and leaves the dropdown as it is."""
    url, port, _ = app
    name, schedule = a1111
    body = {"prompt": "x", **FAST, "seed": 1, "sampler_name": name, **({"scheduler": schedule} if schedule else {})}
    status, answer = _post(port, "txt2img", body)
    schedule_text = f", Schedule type: {schedule}" if schedule else ""
    sent = _send_to_txt2img(url, f"x\nSteps: 20, Seed: 1, Sampler: {name}{schedule_text}")
    if ours is None:
        assert (status, answer["detail"].split(";")[0]) == (422, f"Sampler {name!r} is not available")
        assert sent["txt2img-sampler"] == {"__type__": "update"}  # gr.skip(): the current sampler stays
        return
    info = json.loads(answer["info"])
    assert (status, info["sampler_name"], info["scheduler"]) == (200, *ours)
    assert f"Sampler: {ours[0]}, Schedule type: {ours[1]}," in info["infotexts"][0]
    assert (sent["txt2img-sampler"], sent["txt2img-schedule"]) == ours


@pytest.mark.parametrize(("name", "ours"), [("PLMS", "PNDM"), ("dpm++ 2m", "DPM++ 2M"), ("DDIM", "DDIM")])
def test_a1111_hires_sampler_names_read_as_the_first_pass_names(app, name: str, ours: str) -> None:
    """hr_sampler_name and a pasted "Hires sampler" are read as the first pass's names are (any case, "PLMS")."""
    url, port, _ = app
    body = {"prompt": "x", **FAST, "seed": 1, "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5,
            "hr_sampler_name": name}
    status, answer = _post(port, "txt2img", body)
    assert status == 200, answer
    assert f"Hires sampler: {ours}" in json.loads(answer["info"])["infotexts"][0]
    text = f"x\nSteps: 20, Sampler: Euler, Denoising strength: 0.5, Hires upscale: 1.5, Hires sampler: {name}"
    assert _send_to_txt2img(url, text)["txt2img-hires-sampler"] == ours


@pytest.mark.parametrize(("fields", "written", "sent"), [
    ({"hr_scheduler": "karras"}, "Hires schedule type: Karras", ("Same as first pass", "Karras")),
    ({"hr_scheduler": "SGMUniform", "hr_sampler_name": "euler a"}, "Hires sampler: Euler a, Hires schedule type: "
     "SGM Uniform", ("Euler a", "SGM Uniform")),
    ({"hr_sampler_name": "DPM++ 2M Karras", "hr_scheduler": "exponential"}, "Hires sampler: DPM++ 2M, Hires "
     "schedule type: Karras", ("DPM++ 2M", "Karras")),  # the name's schedule wins, as in A1111
    ({"hr_scheduler": "Use same scheduler", "hr_sampler_name": "Use same sampler"}, None,
     ("Same as first pass", "Same as first pass")),
], ids=["scheduler", "alias and sampler", "name with a schedule", "use same"])
def test_a1111_hires_scheduler_runs_the_second_pass(app, fields: dict, written: str | None, sent: tuple) -> None:
    """hr_scheduler (A1111's names, labels and aliases) is the second pass's schedule type, and hr_sampler_name
    may carry one at its end; the image differs from the first pass's schedule type's, the text says it (after
    the hires sampler, in A1111's order) and PNG info's send sets both hires dropdowns from that text."""
    url, port, _ = app
    body = {"prompt": "x", **FAST, "sampler_name": "Euler", "seed": 1, "enable_hr": True, "hr_scale": 1.5,
            "denoising_strength": 0.5}
    status, plain = _post(port, "txt2img", body)
    status_own, own = _post(port, "txt2img", {**body, **fields})
    assert (status, status_own) == (200, 200), own
    text = json.loads(own["info"])["infotexts"][0]
    if written is None:
        assert own["images"] == plain["images"] and "Hires s" not in text
    else:
        assert own["images"] != plain["images"] and f"Hires upscaler: Latent, {written}" in text
    values = _send_to_txt2img(url, text)
    assert (values["txt2img-hires-sampler"], values["txt2img-hires-schedule"]) == sent


def test_info_gives_the_first_images_other_settings_as_extra_generation_params(app) -> None:
    """`info` as A1111's `Processed.js`: the settings of the first image's text that have no field of their own
    are `extra_generation_params` (with their text's values), `denoising_strength` is the hires fix's."""
    _, port, _ = app
    body = {"prompt": "x", **FAST, "sampler_name": "Euler", "scheduler": "karras", "seed": 3, "enable_hr": True,
            "hr_scale": 1.5, "denoising_strength": 0.4, "hr_scheduler": "exponential", "hr_prompt": "x, 8k"}
    status, answer = _post(port, "txt2img", body)
    assert status == 200, answer
    info = json.loads(answer["info"])
    assert info["extra_generation_params"] == {
        "Schedule type": "Karras", "Denoising strength": 0.4, "Hires upscale": 1.5, "Hires upscaler": "Latent",
        "Hires schedule type": "Exponential", "Hires prompt": "x, 8k"}
    assert (info["denoising_strength"], info["sd_model_hash"], info["scheduler"]) == (0.4, None, "Karras")
    status, plain = _post(port, "txt2img", {"prompt": "x", **FAST, "seed": 3})
    assert json.loads(plain["info"])["extra_generation_params"] == {"Schedule type": "Automatic"}
    assert json.loads(plain["info"])["denoising_strength"] is None


@pytest.mark.parametrize("name", [["Euler"], {"name": "Euler"}], ids=["list", "object"])
def test_a_hires_sampler_name_that_is_not_text_is_refused_in_words(app, name: object) -> None:
    """A list or an object as hr_sampler_name was HTTP 500 (TypeError: unhashable type, a traceback in the log)."""
    _, port, _ = app
    body = {"prompt": "x", **FAST, "enable_hr": True, "hr_scale": 1.5, "hr_sampler_name": name}
    status, answer = _post(port, "txt2img", body)
    assert (status, answer["detail"].split(";")[0]) == (422, f"Unknown hires sampler {name!r}")


def test_raw_http_with_the_field_set_of_a1111s_documentation(app) -> None:
    """The txt2img body of A1111's API documentation (its request model's fields at their documented
    defaults, as the wiki's example and /docs show them), sized down for the tiny model."""
    _, port, _ = app
    body = {
        "prompt": "puppy dog", "negative_prompt": "", "styles": [], "seed": 42, "subseed": -1,
        "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": "Euler a",
        "scheduler": "Automatic", "batch_size": 1, "n_iter": 1, "steps": 5, "cfg_scale": 7, "width": 64,
        "height": 64, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
        "do_not_save_grid": False, "eta": 0, "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0,
        "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True,
        "refiner_checkpoint": None, "refiner_switch_at": 0, "disable_extra_networks": False, "comments": {},
        "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_upscaler": None,
        "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None,
        "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "",
        "sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True,
        "save_images": False, "alwayson_scripts": {}, "infotext": None,
    }
    status, response = _post(port, "txt2img", body)
    assert status == 200, response
    assert set(response) == {"images", "parameters", "info"} and response["parameters"]["prompt"] == "puppy dog"
    image = Image.open(io.BytesIO(base64.b64decode(response["images"][0])))
    assert image.format == "PNG" and image.size == (64, 64)
    info = json.loads(response["info"])
    assert info["seed"] == 42 and info["all_seeds"] == [42] and info["steps"] == 5 and info["cfg_scale"] == 7
    assert info["sampler_name"] == "Euler a" and image.info["parameters"] == info["infotexts"][0]


def test_webuiapis_default_extras_call_returns_the_image_unscaled(client) -> None:
    """webuiapi's extra_single_image sends upscaler_1 "None" and upscaling_resize 2: it was a 422 ("Only 4x
    upscaling"), and with upscaling_resize 4 "None" ran the x4 upscaler; A1111's "None" upscales nothing."""
    small = noise_image(24, 16, seed=5)
    result = client.extra_single_image(small)
    assert result.image.size == (24, 16)
    assert np.array_equal(np.asarray(result.image.convert("RGB")), np.asarray(small))
    assert client.extra_single_image(small, upscaling_resize=4).image.size == (24, 16)


def test_webuiapis_lanczos_extras_call_doubles_the_image(client) -> None:
    """webuiapi's extra_single_image with A1111's "Lanczos" (it was "Unknown upscaler")."""
    small = noise_image(24, 16, seed=5)
    result = client.extra_single_image(small, upscaler_1="Lanczos", upscaling_resize=2)
    assert np.array_equal(np.asarray(result.image.convert("RGB")),
                          np.asarray(small.resize((48, 32), Image.Resampling.LANCZOS)))


@pytest.mark.slow
def test_extra_single_image_runs_the_x4_upscaler(client) -> None:
    small = noise_image(16, 16, seed=5)
    result = client.extra_single_image(small, upscaling_resize=4, upscaler_1="x4-upscaler")
    assert result.images[0].size == (64, 64)
    with pytest.raises(RuntimeError, match="Only 4x upscaling"):
        client.extra_single_image(small, upscaling_resize=2, upscaler_1="x4-upscaler")


def test_webuiapis_extra_batch_images_resizes_each_image_in_order(app, client) -> None:
    """webuiapi's extra_batch_images (A1111's /extra-batch-images): each image as /extra-single-image would answer
    it, in order; "None" gives them back unchanged."""
    images = [noise_image(24, 16, seed=5), noise_image(10, 30, seed=6)]
    lanczos = client.extra_batch_images(images, upscaler_1="Lanczos", upscaling_resize=2)
    singles = [client.extra_single_image(image, upscaler_1="Lanczos", upscaling_resize=2).image for image in images]
    assert [image.size for image in lanczos.images] == [(48, 32), (16, 56)]  # sides floored to multiples of 8
    assert all(np.array_equal(np.asarray(batch), np.asarray(single)) for batch, single in zip(lanczos.images, singles))
    unchanged = client.extra_batch_images(images)
    assert [np.asarray(image.convert("RGB")).tolist() for image in unchanged.images] == [
        np.asarray(image).tolist() for image in images]


def test_extra_batch_images_refuses_a_list_it_cannot_read_and_names_the_item(app) -> None:
    _, port, _ = app
    image = base64.b64encode(png_bytes(noise_image(8, 8, seed=1))).decode()
    listing = "imageList must list 1 to 32 images, each {\"data\": base64, \"name\": text}."
    assert _post(port, "extra-batch-images", {"imageList": []}) == (422, a1111_error_body(422, listing))
    many = {"imageList": [{"data": image, "name": "a.png"}] * 33}
    assert _post(port, "extra-batch-images", many) == (422, a1111_error_body(422, listing))
    status, answer = _post(port, "extra-batch-images", {"imageList": [{"data": image, "name": "a.png"},
                                                                      {"data": "not an image", "name": "b.png"}]})
    assert status == 422 and answer["detail"].startswith("imageList item 2: "), answer
    assert _post(port, "extra-batch-images", {"imageList": [image]}) == (
        422, a1111_error_body(422, "imageList item 1 must be {\"data\": base64, \"name\": text}."))


@pytest.mark.slow
def test_extra_batch_images_runs_the_x4_upscaler_on_each(client) -> None:
    images = [noise_image(16, 16, seed=5), noise_image(16, 8, seed=6)]
    result = client.extra_batch_images(images, upscaling_resize=4, upscaler_1="SD2 x4")
    assert [image.size for image in result.images] == [(64, 64), (64, 32)]  # each upscaled 4x, in order


@pytest.mark.slow
def test_api_and_web_ui_jobs_take_turns_on_the_gpu(app, gpu_spans: GpuSpans) -> None:
    """A web UI job (through Gradio's queue) and an API job sent while it runs never overlap."""
    url, port, _ = app
    gpu_spans.reset()
    ui = Client(url, verbose=False)
    job = ui.submit(prompt="ui job", negative_prompt="", checkpoint="sd21-base", width=64, height=64,
                    sampler="Euler", schedule_type="Automatic", steps=60, cfg_scale=1.0, guidance_rescale=0.0, seed=1,
                    batch_size=1, api_name="/txt2img")
    deadline = time.time() + 60
    while gpu_spans.active == 0 and time.time() < deadline:
        time.sleep(0.02)
    status, response = _post(port, "txt2img", {"prompt": "api job", **FAST, "steps": 3, "seed": 1})
    job.result(timeout=120)
    assert status == 200 and len(response["images"]) == 1
    assert gpu_spans.peak == 1
    (ui_steps, ui_start, ui_end), (api_steps, api_start, _) = sorted(gpu_spans.spans, key=lambda span: span[1])
    assert (ui_steps, api_steps) == (60, 3) and api_start >= ui_end


@pytest.mark.slow
def test_an_api_job_waiting_for_the_gpu_can_be_interrupted(app, client) -> None:
    """The gate lets a job that waits for its turn be stopped at once (the model manager's lock would not)."""
    url, _, service = app
    ui = Client(url, verbose=False)
    job = ui.submit(prompt="ui job", negative_prompt="", checkpoint="sd21-base", width=64, height=64,
                    sampler="Euler", schedule_type="Automatic", steps=150, cfg_scale=1.0, guidance_rescale=0.0, seed=1,
                    batch_size=1, api_name="/txt2img")
    deadline = time.time() + 60
    while service.gate.waiting == 0 and time.time() < deadline:
        time.sleep(0.02)
    outcome: dict = {}
    waiter = threading.Thread(target=lambda: outcome.update(result=client.txt2img(prompt="api", seed=1, **FAST)))
    waiter.start()
    # /progress says "Waiting for the GPU" from the job's admission on, a moment before it is in the gate's line
    while (client.get_progress()["textinfo"] != "Waiting for the GPU" or service.gate.waiting < 2) \
            and time.time() < deadline:
        time.sleep(0.02)
    assert service.gate.waiting == 2  # the UI job inside, the API job in line
    client.interrupt()
    waiter.join(timeout=20)
    assert not waiter.is_alive() and not job.done()  # back while the UI job still runs
    # Nothing was made, yet the info has A1111's shape (webuiapi's result.info["all_seeds"] must not KeyError)
    info = outcome["result"].info
    assert outcome["result"].images == [] and (info["seed"], info["all_seeds"], info["infotexts"]) == (1, [], [])
    assert len(job.result(timeout=120)[1]) == 1  # the UI job was not touched


@pytest.mark.slow
def test_app_mounts_the_api_locally_and_in_public_modes_only_when_asked(monkeypatch, tmp_path) -> None:
    import gradio as gr

    import app as app_module
    from tests.reliability_support import linked_tiny_cache

    linked_tiny_cache(monkeypatch, tmp_path)
    launches: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launches.append(kwargs))
    cases = {(): True, ("--host", "0.0.0.0"): False, ("--host", "0.0.0.0", "--api", "--api-auth", "a:b"): True,
             ("--share",): False, ("--no-api",): False}
    for extra in cases:
        app_module.main(["--tiny", "--no-save", *extra])
    for (extra, expected), kwargs in zip(cases.items(), launches):
        paths = {route.path for route in kwargs["app_kwargs"]["routes"]}
        assert ("/sdapi/v1/txt2img" in paths) is expected, extra
        assert kwargs["ssr_mode"] is False and kwargs["mcp_server"] is False


def test_progress_encodes_each_new_preview_once() -> None:
    """However often /progress is polled, a preview is enlarged and PNG-encoded once; a new one replaces it."""
    from sd2_app.api.a1111_routes import _Tracked

    job = _Tracked("txt2img", 1, "127.0.0.1")
    assert job.preview_png() is None
    job.on_progress(1, 10, Image.new("RGB", (8, 6), (200, 10, 10)))
    first = job.preview_png()
    assert job.preview_png() is first  # the same string: not encoded again
    assert Image.open(io.BytesIO(base64.b64decode(first))).size == (64, 48)  # latent pixels shown 8x
    job.on_progress(2, 10, Image.new("RGB", (8, 6), (10, 200, 10)))
    assert job.preview_png() != first



def test_progress_reads_the_job_count_and_the_callers_jobs_in_one_snapshot() -> None:
    """A job that arrives while /progress reads is either in both the count and the caller's jobs or in neither:
    here one arrives the moment the API's lock is first let go (as another thread's `_track` would)."""
    from sd2_app.api.a1111_routes import A1111Api, _Tracked
    from tests.ui_doubles import fake_service

    api = A1111Api(fake_service())
    inner = api._lock

    class ArrivalOnFirstRelease:
        released = 0

        def __enter__(self) -> None:
            inner.acquire()

        def __exit__(self, *exc: object) -> None:
            inner.release()
            self.released += 1
            if self.released == 1:
                with inner:
                    api._jobs.append(_Tracked("txt2img", 1, "127.0.0.1"))

    api._lock = ArrivalOnFirstRelease()  # type: ignore[assignment]
    answer = api.progress("127.0.0.1", skip_current_image=True)
    reported = answer["state"]["job"] != ""
    assert (reported, answer["state"]["job_count"]) in {(False, 0), (True, 1)}
    assert len(api._jobs) == 1  # the job did arrive
