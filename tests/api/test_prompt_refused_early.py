"""A prompt over the pipeline's limits (a prompt or negative prompt over 8 chunks of 75 tokens; prompt editing
and alternation making more than 64 pairs x chunks) is refused when the Service validates the request, with
the pipeline's own message, from the web UI (gradio_client), MCP and the A1111 API alike: no job reaches a
pipeline (a spy on the Service's task table), no model is loaded. On the tiny checkpoints, in-process as
app.py launches the app."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace

import pytest

pytest.importorskip("mcp")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from tests.a1111_support import a1111_error_body  # noqa: E402
from tests.api.test_mcp import _session  # noqa: E402
from tests.reliability_support import launched  # noqa: E402

TOO_LONG = " BREAK ".join(["cat"] * 9)  # nine chunks
TOO_LONG_MESSAGE = ("The {} is too long: it makes 9 chunks of 75 tokens (601 tokens, BREAKs included); at most 8 "
                    "chunks (600 tokens) are allowed. Shorten it or remove a BREAK.")
PHASES = "[" + "|".join(f"w{i}" for i in range(13)) + "] [a|b|c|d|e]"  # 13 x 5 = 65 pairs over 65+ calls
PHASES_MESSAGE = ("The prompt editing and alternation make 65 different prompt pairs of 1 chunk(s) each; at most "
                  "64 pairs x chunks are allowed. Use fewer alternatives or shorter prompts.")
FAST = {"width": 64, "height": 64, "seed": 3, "sampler": "Euler"}


class PipelineCalls:
    """Every task's pipeline, wrapped to count the jobs that reached one."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def wrap(self, pipeline):
        def counted(*args, **kwargs):
            with self.lock:
                self.count += 1
            return pipeline(*args, **kwargs)

        return counted


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, PipelineCalls]]:
    from sd2_app.api.a1111_routes import A1111Api, build_router
    from sd2_app.api.tasks import TASKS, pipeline_of
    from sd2_app.ui import build_ui
    from sd2_app.ui.mcp_tools import add_mcp_tools
    from tests.reliability_support import make_service

    calls = PipelineCalls()
    service, _ = make_service(tasks={task: calls.wrap(pipeline_of(task)) for task in TASKS})
    demo = build_ui(service)
    add_mcp_tools(demo, service)
    routes = build_router(A1111Api(service)).routes
    with launched(demo, ssr_mode=False, mcp_server=True, app_kwargs={"routes": routes}) as url:
        yield url.rstrip("/"), service, calls


@pytest.fixture()
def calls(app) -> Iterator[PipelineCalls]:
    """The pipeline spy, checked to stay at 0 and the manager to have loaded nothing."""
    _, service, spy = app
    before = spy.count
    yield spy
    assert spy.count == before == 0
    assert service.manager.loaded_keys() == []


def _post(url: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/sdapi/v1/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_web_ui_refuses_before_the_gpu(app, calls: PipelineCalls) -> None:
    client = Client(app[0], verbose=False)
    cases = [({"prompt": TOO_LONG}, TOO_LONG_MESSAGE.format("prompt")),
             ({"prompt": "a cat", "negative_prompt": TOO_LONG, "cfg_scale": 7.0},
              TOO_LONG_MESSAGE.format("negative prompt")),
             ({"prompt": PHASES, "steps": 70, "cfg_scale": 7.0}, PHASES_MESSAGE)]
    for values, message in cases:
        with pytest.raises(AppError) as refused:
            client.predict(api_name="/txt2img", **{"steps": 2, "cfg_scale": 1.0, **FAST, **values})
        assert str(refused.value) == message


def test_a1111_api_refuses_with_422_before_the_gpu(app, calls: PipelineCalls) -> None:
    url = app[0]
    body = {"steps": 2, "cfg_scale": 7.0, "sampler_name": "Euler", "width": 64, "height": 64, "seed": 3}
    assert _post(url, "txt2img", {**body, "prompt": TOO_LONG}) == \
        (422, a1111_error_body(422, TOO_LONG_MESSAGE.format("prompt")))
    assert _post(url, "txt2img", {**body, "prompt": "a", "negative_prompt": TOO_LONG}) == \
        (422, a1111_error_body(422, TOO_LONG_MESSAGE.format("negative prompt")))
    assert _post(url, "txt2img", {**body, "prompt": PHASES, "steps": 70}) == \
        (422, a1111_error_body(422, PHASES_MESSAGE))
    # the hires fix's second pass (70 steps) makes the 65 pairs; the 2-step first pass would run before it
    hires = {**body, "prompt": PHASES, "enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent",
             "hr_second_pass_steps": 70, "denoising_strength": 0.5}
    assert _post(url, "txt2img", hires) == (422, a1111_error_body(422, PHASES_MESSAGE))


def test_mcp_refuses_before_the_gpu(app, calls: PipelineCalls) -> None:
    async def work(session):
        return [await session.call_tool("txt2img", {"prompt": prompt, "width": 64, "height": 64, "steps": steps,
                                                    "guidance_scale": 7.0, "sampler": "Euler", "seed": 9})
                for prompt, steps in ((TOO_LONG, 2), (PHASES, 70))]

    long, phases = _session(app[0] + "/gradio_api/mcp/", work)
    assert long.isError and long.content[0].text == TOO_LONG_MESSAGE.format("prompt")
    assert phases.isError and phases.content[0].text == PHASES_MESSAGE


def test_an_xyz_plot_cell_over_the_limit_refuses_the_plot_before_the_gpu(app, calls: PipelineCalls) -> None:
    client = Client(app[0], verbose=False)
    with pytest.raises(AppError) as refused:  # the 2-step cell would run before the 70-step one
        client.predict(prompt=PHASES, x_type="steps", x_values="2, 70", steps=2, cfg_scale=7.0, seed=3, width=64,
                       height=64, api_name="/xyz_plot")
    assert str(refused.value) == f"Steps: 70: {PHASES_MESSAGE}"


def test_the_passes_checked_are_those_that_encode_the_prompts() -> None:
    """A hires request is checked for its first pass, its second pass (hires steps x calls per step, counted on
    from the first pass) and, with "SD2 x4", the x4 stage on the upscaler's checkpoint (DDIM, guided)."""
    from sd2_app.api.checks import catalog_of
    from sd2_app.api.prompt_tools import prompt_passes
    from sd2_app.api.requests import HiresFix, Sampling, Txt2ImgRequest
    from sd2_app.checkpoints.catalog import REGISTRY
    from sd2_app.pipelines.prompt_plan import PromptSteps

    catalog = catalog_of(REGISTRY)
    request = Txt2ImgRequest("p", negative_prompt="n", checkpoint="sd21", sampling=Sampling(sampler="Heun", steps=10,
                                                                                           cfg_scale=1.0, seed=1))
    assert prompt_passes(request, catalog) == [("sd21", "p", "n", False, PromptSteps(20))]
    x4 = HiresFix(upscaler="SD2 x4", steps=6)
    assert prompt_passes(replace(request, hires=x4), catalog) == [
        ("sd21", "p", "n", False, PromptSteps(20)), ("x4-upscaler", "p", "n", True, PromptSteps(6)),
        ("sd21", "p", "n", False, PromptSteps(12, 20))]
    latent = HiresFix(upscaler="Latent", sampler="Euler")
    assert prompt_passes(replace(request, hires=latent), catalog)[1] == ("sd21", "p", "n", False, PromptSteps(10, 20))
