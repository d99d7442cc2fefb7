"""A web run plans its prompts once per pass (issue 24 section 3), through the running app (gradio_client) on the
tiny checkpoints, with a stand-in `spaces` package that does what ZeroGPU's `spaces.GPU` does with a duration
function (tests/zerogpu_double.py): it calls it with the call's arguments (sd2_app/api/gpu_time.py: the request
validated, its prompts planned), then runs the handler in a forked process, its arguments and yields pickled
through pipes (the web handler passed the gr.Request, whose state holds the job's stop flag, and failed there).
Before, the estimate, the Service's validation and the pipeline each planned the prompts: 3 plans per pass.
Plans computed are counted at `prompt_plan.tokenize_prompts` (one call each)."""

from __future__ import annotations

import base64
import io
import json
import sys
import types
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from tests.pipeline_fixtures import count_plans  # noqa: E402

FAST = {"steps": 3, "seed": 5, "cfg_scale": 7.5, "width": 64, "height": 64, "sampler": "Euler"}
EDITED = "a [red:blue:0.5] hat on a [cat|dog]"


@pytest.fixture(scope="module")
def zerogpu_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(client, durations asked, prompts planned, the app's Service, its outputs folder)."""
    from sd2_app.api.a1111_routes import A1111Api, build_router
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from sd2_app.ui.mcp_tools import add_mcp_tools
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched
    from tests.zerogpu_double import forking_spaces_gpu

    durations: list[int] = []
    patch = pytest.MonkeyPatch()
    patch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=forking_spaces_gpu(durations)))
    planned = count_plans(patch)
    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    outputs = tmp_path_factory.mktemp("outputs")
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache")),
                      outputs_dir=outputs, allowed_repos=(), save_in_background=True)  # as the app saves
    try:
        demo = build_ui(service)
        add_mcp_tools(demo, service)  # the MCP tools' endpoints, as `--mcp` adds them
        a1111 = {"routes": build_router(A1111Api(service)).routes}  # the A1111 API, as `--api` adds it
        with launched(demo, app_kwargs=a1111) as url:
            yield Client(url, verbose=False), durations, planned, service, outputs
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def app(zerogpu_app) -> tuple[Client, list[int], list[list[str]]]:
    return zerogpu_app[:3]


def _image(gallery: list[dict]) -> Image.Image:
    image = Image.open(gallery[0]["image"])
    image.load()
    return image


def test_a_web_run_plans_its_prompts_once(app) -> None:
    client, durations, planned = app
    durations.clear()
    planned.clear()
    _, gallery, _ = client.predict(prompt=f"{EDITED}, once", negative_prompt="blurry", api_name="/txt2img", **FAST)
    assert _image(gallery).size == (64, 64)
    assert durations == [15]  # the estimate ran (ZeroGPU's minimum for this small job)
    # one plan: both prompts and every phase's text in one tokenizer call (was 3: estimate, validation, pipeline)
    assert planned == [["a red hat on a cat, once", "blurry", "a blue hat on a dog, once"]]  # A1111's picks


def test_a_hires_run_plans_each_pass_once(app) -> None:
    client, durations, planned = app
    durations.clear()
    planned.clear()
    _, gallery, _ = client.predict(prompt=f"{EDITED}, hires", negative_prompt="blurry", hires_fix=True,
                                   hires_upscaler="Lanczos", hires_scale=1.5, hires_steps=2, denoising_strength=0.5,
                                   api_name="/txt2img", **FAST)
    assert _image(gallery).size == (96, 96) and len(durations) == 1
    # the first pass (3 calls) and the second pass (2 hires calls, counted on from the first pass's 3): was 6
    assert planned == [["a red hat on a cat, hires", "blurry", "a blue hat on a dog, hires"],
                       ["a blue hat on a cat, hires", "blurry"]]


def test_a_repeated_prompt_is_not_planned_again_and_gives_the_same_image(app) -> None:
    """The same prompts and schedule with another seed take the kept plan; the same seed gives the same image."""
    client, _, planned = app
    request = {"prompt": "a plain castle", "negative_prompt": "", "api_name": "/txt2img", **FAST}
    planned.clear()
    first = _image(client.predict(**request)[1])
    assert planned == [["a plain castle", ""]]
    client.predict(**{**request, "seed": 6})
    again = _image(client.predict(**request)[1])
    assert planned == [["a plain castle", ""]]
    assert again.tobytes() == first.tobytes()


@pytest.fixture(scope="module")
def counted(app) -> Iterator[dict[str, list]]:
    """From now on (the module's app), each validation (`Service.validate`, `Service.check_plot`) and each build of
    an inpaint request's image and mask from the editor's value (`ui.inpaint.split_editor`)."""
    from sd2_app.api.service import Service
    from sd2_app.ui import inpaint

    calls: dict[str, list] = {"validate": [], "check_plot": [], "split_editor": []}
    patch = pytest.MonkeyPatch()
    for owner, name in ((Service, "validate"), (Service, "check_plot"), (inpaint, "split_editor")):
        original = getattr(owner, name)

        def spy(*args, _original=original, _seen=calls[name]):
            _seen.append(args[-1] if _original is not inpaint.split_editor else args[0])
            return _original(*args)

        patch.setattr(owner, name, spy)
    try:
        yield calls
    finally:
        patch.undo()


def test_a_web_run_builds_and_validates_its_request_once(app, counted, tmp_path) -> None:
    """ZeroGPU asks the duration of the request the run then runs: built from the widget values once, validated
    once (before, the duration function and the run each built and validated it: 2 of each)."""
    from gradio_client import handle_file

    client, durations, _ = app
    for seen in (durations, *counted.values()):
        seen.clear()
    _, gallery, _ = client.predict(prompt="counted", api_name="/txt2img", **FAST)
    assert _image(gallery).size == (64, 64)
    assert (len(counted["validate"]), durations) == (1, [15])
    picture, mask = Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (16, 16, 48, 48))
    picture.save(tmp_path / "picture.png")
    mask.save(tmp_path / "stroke.png")
    editor = {"background": handle_file(str(tmp_path / "picture.png")), "layers": [handle_file(str(tmp_path / "stroke.png"))],
              "composite": None}
    counted["validate"].clear()
    durations.clear()
    _, gallery, _, mask_used = client.predict(image_and_mask=editor, prompt="a cat", api_name="/inpaint",
                                              **{k: v for k, v in FAST.items() if k not in ("width", "height")})
    assert _image(gallery).size == (64, 64) and Image.open(mask_used).getbbox() == (16, 16, 48, 48)
    assert (len(counted["split_editor"]), len(counted["validate"]), durations) == (1, 1, [15])


def test_a_plot_is_checked_once_and_asks_for_all_its_cells(app, counted) -> None:
    client, durations, _ = app
    durations.clear()
    counted["check_plot"].clear()
    _, gallery, _, _ = client.predict(prompt="plotted", x_type="steps", x_values="2, 3", seed=3, width=64, height=64,
                                      api_name="/xyz_plot")
    assert len(gallery) == 1 + 2
    assert (len(counted["check_plot"]), durations) == (1, [15])


def test_an_mcp_tool_call_validates_its_request_once(app, counted) -> None:
    """An MCP tool's endpoint (`ui.mcp_tools`): validated once, before the GPU call, which asks for that request's
    time (before, the duration function and `Service.run` each validated it)."""
    client, durations, _ = app
    durations.clear()
    counted["validate"].clear()
    image = client.predict(prompt="a tool's cat", width=64, height=64, steps=3, seed=5, api_name="/mcp_txt2img")
    assert Image.open(image).size == (64, 64)
    assert (len(counted["validate"]), durations) == (1, [15])


def _saved(outputs) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in outputs.rglob("*.png")}


def _next_number(saved: dict[str, bytes]) -> int:
    return max((int(name[:5]) for name in saved), default=-1) + 1


def test_a_zerogpu_web_run_is_kept_in_the_apps_history_and_outputs_folder(zerogpu_app) -> None:
    """The GPU call runs in a forked worker, so the run's result comes back to the app's process unkept and is
    kept there: the visitor's History shows it and the app's writer saves it, numbered in order (before, both
    happened in the worker: the History stayed empty, each worker numbered from the same copy, and the worker
    could end before its writer thread wrote the file)."""
    client, durations, _, service, outputs = zerogpu_app
    durations.clear()
    before = _saved(outputs)
    first = _next_number(before)
    delivered = [client.predict(prompt=f"kept by the app {seed}", api_name="/txt2img", **{**FAST, "seed": seed})[1]
                 for seed in (7, 8)]
    assert durations == [15, 15]  # both ran through the forking spaces.GPU
    gallery, table = client.predict(api_name="/history")
    assert [row[4].split("\n")[0] for row in table["data"][:2]] == ["kept by the app 8", "kept by the app 7"]
    assert [item["caption"] for item in gallery[:2]] == ["txt2img · seed 8", "txt2img · seed 7"]
    assert service.flush_saves(timeout=30)
    new = {name: data for name, data in _saved(outputs).items() if name not in before}
    assert sorted(new) == [f"{first:05d}-7-txt2img.png", f"{first + 1:05d}-8-txt2img.png"]
    # the files saved are the PNGs the visitor got
    assert [new[name] for name in sorted(new)] == [open(shown[0]["image"], "rb").read() for shown in delivered]


def test_a_zerogpu_mcp_tool_call_is_saved_by_the_app(zerogpu_app) -> None:
    """An MCP tool's GPU call, also in the forked worker: the app's process saves its image (an MCP result is
    unlisted: in nobody's History)."""
    client, durations, _, service, outputs = zerogpu_app
    durations.clear()
    before = _saved(outputs)
    image = client.predict(prompt="a tool's saved cat", width=64, height=64, steps=3, seed=9, api_name="/mcp_txt2img")
    assert durations == [15]
    assert service.flush_saves(timeout=30)
    new = {name: data for name, data in _saved(outputs).items() if name not in before}
    assert list(new) == [f"{_next_number(before):05d}-9-txt2img.png"]
    assert new[f"{_next_number(before):05d}-9-txt2img.png"] == open(image, "rb").read()


def test_a_zerogpu_a1111_api_job_runs_in_the_worker_and_is_saved_by_the_app(zerogpu_app) -> None:
    """An A1111 API job's GPU call, in the forked worker too: it passed the job's progress and stop callbacks,
    bound to a lock-holding object that cannot be pickled, so every /sdapi/v1/txt2img failed there (HTTP 500).
    It runs without them and the app's process saves each batch's image (unlisted, as the API's always are)."""
    client, durations, _, service, outputs = zerogpu_app
    durations.clear()
    before = _saved(outputs)
    body = {"prompt": "an API cat", "steps": 3, "seed": 12, "width": 64, "height": 64, "n_iter": 2,
            "sampler_name": "Euler"}
    reply = httpx.post(f"{client.src.rstrip('/')}/sdapi/v1/txt2img", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in reply.json()["images"]]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert durations == [15, 15]  # one GPU call per batch, through the forking spaces.GPU
    assert json.loads(reply.json()["info"])["all_seeds"] == [12, 13]
    assert service.flush_saves(timeout=30)
    new = {name: data for name, data in _saved(outputs).items() if name not in before}
    first = _next_number(before)
    assert sorted(new) == [f"{first:05d}-12-txt2img.png", f"{first + 1:05d}-13-txt2img.png"]
    assert [new[name] for name in sorted(new)] == [base64.b64decode(data) for data in reply.json()["images"]]
