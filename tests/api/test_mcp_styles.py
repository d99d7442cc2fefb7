"""The MCP tools take the host's prompt styles (`python app.py --tiny --mcp --styles STYLES.CSV`, served
in-process): every tool's `styles` argument is listed with the names, and a call with it gives the image of the
expanded prompts, pixel for pixel (txt2img; upscale, whose web tab has the Styles box too); an unknown name is
refused naming it."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mcp")

from tests.api.test_mcp import _data_url, _session  # noqa: E402
from tests.api.test_prompt_styles_app import EXPANDED, served_with_styles  # noqa: E402
from tests.reliability_support import noise_image, one_thread  # noqa: E402,F401 (a fixture)

FAST = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.0, "sampler": "Euler", "seed": 9}


@pytest.fixture(scope="module")
def url(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_with_styles(tmp_path_factory, "--mcp") as served:
        yield served + "/gradio_api/mcp/"


def _pixels(result) -> np.ndarray:
    assert not result.isError, result.content
    picture = next(c for c in result.content if c.type == "image")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(picture.data))).convert("RGB"))


def test_the_prompt_tools_list_the_styles_argument(url: str) -> None:
    tools = {tool.name: tool.inputSchema for tool in _session(url, lambda s: s.list_tools()).tools}
    assert {name for name, schema in tools.items() if "styles" in schema["properties"]} == {
        "txt2img", "img2img", "inpaint", "upscale", "depth"}
    assert tools["upscale"]["properties"]["styles"] == tools["txt2img"]["properties"]["styles"]
    styles = tools["txt2img"]["properties"]["styles"]
    assert styles["type"] == "array" and "'oil', 'frame'" in styles["description"]


@pytest.mark.parametrize("tool, fast, size", [
    ("txt2img", FAST, (64, 64)),
    ("upscale", {"noise_level": 20, "steps": 2, "seed": 9}, (64, 64)),  # a 16x16 input, x4
])
def test_a_tool_call_applies_the_styles(url: str, tool: str, fast: dict, size: tuple[int, int]) -> None:
    if tool == "upscale":  # its web tab has the Styles box too
        fast = {**fast, "image": _data_url(noise_image(16, 16))}

    async def work(session):
        styled = await session.call_tool(tool, {"prompt": "a cat", "negative_prompt": "ugly",
                                                "styles": ["oil", "frame"], **fast})
        expanded = await session.call_tool(tool, {"prompt": EXPANDED[0], "negative_prompt": EXPANDED[1], **fast})
        plain = await session.call_tool(tool, {"prompt": "a cat", "negative_prompt": "ugly", **fast})
        unknown = await session.call_tool(tool, {"prompt": "a cat", "styles": ["watercolor"], **fast})
        return styled, expanded, plain, unknown

    styled, expanded, plain, unknown = _session(url, work)
    assert _pixels(styled).shape == (*size, 3)
    assert np.array_equal(_pixels(styled), _pixels(expanded))
    assert not np.array_equal(_pixels(styled), _pixels(plain))
    # refused by the MCP server's check of the argument's schema, before the tool runs
    assert unknown.isError
    assert unknown.content[0].text == "Input validation error: 'watercolor' is not one of ['oil', 'frame']"
