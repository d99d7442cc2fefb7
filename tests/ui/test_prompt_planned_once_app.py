"""A web run plans its prompts once per pass (issue 24 section 3), through the running app (gradio_client) on the
tiny checkpoints, with a stand-in `spaces` package that does what ZeroGPU's `spaces.GPU` does with a duration
function: it calls it with the call's arguments (sd2_app/api/gpu_time.py: the request validated, its prompts
planned), then runs the handler on a pickled copy of them (ZeroGPU's worker is a forked process that gets them
through a pipe: the web handler passed the gr.Request, whose state holds the job's stop flag, and failed there).
Before, the estimate, the Service's validation and the pipeline each planned the prompts: 3 plans per pass.
Plans computed are counted at `prompt_plan.tokenize_prompts` (one call each)."""

from __future__ import annotations

import functools
import inspect
import pickle
import sys
import types
from collections.abc import Iterator

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from tests.pipeline_fixtures import count_plans  # noqa: E402

FAST = {"steps": 3, "seed": 5, "cfg_scale": 7.5, "width": 64, "height": 64, "sampler": "Euler"}
EDITED = "a [red:blue:0.5] hat on a [cat|dog]"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, list[int], list[list[str]]]]:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from sd2_app.ui.mcp_tools import add_mcp_tools
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched

    durations: list[int] = []

    def zerogpu_like(duration):  # spaces.GPU(duration=fn): fn(*call's arguments) first, then the handler
        def wrap(handler):
            @functools.wraps(handler)  # as spaces.GPU does: Gradio reads the handler's annotations
            def on_gpu(*args, **kwargs):
                durations.append(duration(*args, **kwargs))
                # as spaces.GPU does: the handler gets the arguments pickled (into its forked worker)
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                return handler(*args, **kwargs)

            @functools.wraps(handler)
            def streamed_on_gpu(*args, **kwargs):  # a generator stays one (spaces.GPU: its generator wrapper)
                yield from on_gpu(*args, **kwargs)

            return streamed_on_gpu if inspect.isgeneratorfunction(handler) else on_gpu

        return wrap

    patch = pytest.MonkeyPatch()
    patch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=zerogpu_like))
    planned = count_plans(patch)
    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache")),
                      outputs_dir=None, allowed_repos=())
    try:
        demo = build_ui(service)
        add_mcp_tools(demo, service)  # the MCP tools' endpoints, as `--mcp` adds them
        with launched(demo) as url:
            yield Client(url, verbose=False), durations, planned
    finally:
        patch.undo()


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
