"""A web run plans its prompts once per pass (issue 24 section 3), through the running app (gradio_client) on the
tiny checkpoints, with a stand-in `spaces` package that does what ZeroGPU's `spaces.GPU` does with a duration
function: it calls it with the call's arguments (sd2_app/api/gpu_time.py: the request validated, its prompts
planned), then runs the handler. Before, the estimate, the Service's validation and the pipeline each planned
the prompts: 3 plans per pass. Plans computed are counted at `prompt_plan.tokenize_prompts` (one call each)."""

from __future__ import annotations

import functools
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
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched

    durations: list[int] = []

    def zerogpu_like(duration):  # spaces.GPU(duration=fn): fn(*call's arguments) first, then the handler
        def wrap(handler):
            @functools.wraps(handler)  # as spaces.GPU does: Gradio reads the handler's annotations
            def on_gpu(*args, **kwargs):
                durations.append(duration(*args, **kwargs))
                yield from handler(*args, **kwargs)

            return on_gpu

        return wrap

    patch = pytest.MonkeyPatch()
    patch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=zerogpu_like))
    planned = count_plans(patch)
    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache")),
                      outputs_dir=None, allowed_repos=())
    try:
        with launched(build_ui(service)) as url:
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
