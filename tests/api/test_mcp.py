"""The MCP server (`--mcp`) through its streamable HTTP endpoint, with the `mcp` package's own client.

The tool list holds exactly our five tools, with typed, documented arguments (the web UI's events are not
tools, listed or called), and a tool call on the tiny checkpoints returns an image that carries its parameters text.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("mcp")

from sd2_app.ui.uploads import REMOTE_FILE_REFUSAL  # noqa: E402
from tests.reliability_support import launched, noise_image  # noqa: E402

TOOLS = {"txt2img", "img2img", "inpaint", "upscale", "depth"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def url(outputs: Path) -> Iterator[str]:
    from sd2_app.ui import build_ui
    from sd2_app.ui.mcp_tools import add_mcp_tools
    from tests.reliability_support import make_service

    service, _ = make_service(outputs)
    demo = build_ui(service)
    assert add_mcp_tools(demo, service) == [f"mcp_{name}" for name in ("txt2img", "img2img", "inpaint", "upscale", "depth")]
    with launched(demo, ssr_mode=False, mcp_server=True) as local:
        yield local.rstrip("/") + "/gradio_api/mcp/"


def _session(url: str, work):  # -> the coroutine's result
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def main():
        async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)

    return asyncio.run(main())


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_tool_list_is_the_five_tools_with_typed_documented_arguments(url: str) -> None:
    tools = {tool.name: tool for tool in _session(url, lambda s: s.list_tools()).tools}
    assert set(tools) == TOOLS
    txt2img = tools["txt2img"].inputSchema
    assert txt2img["required"] == ["prompt"]
    properties = txt2img["properties"]
    assert {name: properties[name]["type"] for name in ("prompt", "width", "steps", "guidance_scale", "seed")} == {
        "prompt": "string", "width": "integer", "steps": "integer", "guidance_scale": "number", "seed": "integer"}
    assert properties["steps"]["description"] == "denoising steps, 1 to 150; 20-30 is usual"
    assert properties["steps"]["default"] == 25 and properties["width"]["default"] == 512
    assert properties["eta"] == {"type": "number", "description": "DDIM's eta, 0 to 1: noise added back at each step "
                                                                  "(other samplers ignore it); 0 is plain DDIM"}
    assert tools["txt2img"].description.startswith("Generate an image from a text prompt")
    inpaint = tools["inpaint"].inputSchema
    assert inpaint["required"] == ["image", "mask", "prompt"]
    assert inpaint["properties"]["mask"]["description"].startswith("same size as the image (PNG, JPEG or WebP); white = repaint")
    assert list(inpaint["properties"])[-2:] == ["masked_content", "mask_mode"]
    assert inpaint["properties"]["masked_content"] == {
        "type": "string", "default": "original",
        "description": "the masked area's start below strength 1: original, fill, latent noise or latent nothing"}
    assert inpaint["properties"]["mask_mode"] == {
        "type": "string", "default": "Inpaint masked",
        "description": "Inpaint masked repaints the white area; Inpaint not masked repaints the black area"}
    assert tools["upscale"].inputSchema["properties"]["noise_level"]["type"] == "integer"


def test_only_the_tools_are_callable(url: str) -> None:
    """A tools/call named after one of the web UI's functions, hidden from the list (the token count "count",
    History's "rows", the model table's "current", a tab's "stop"), is refused as any unknown name is; Gradio's
    server ran them (`sd2_app.ui.mcp_server`)."""
    hidden = ("count", "rows", "current", "stop", "no_such_tool")

    async def work(session):
        return [await session.call_tool(name, {}) for name in hidden]

    answers = [(result.isError, [content.text for content in result.content]) for result in _session(url, work)]
    assert answers == [(True, [f"Unknown tool for this Gradio app: {name}"]) for name in hidden]


def test_tool_calls_return_an_image(url: str) -> None:
    async def work(session):
        text = await session.call_tool("txt2img", {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2,
                                                   "guidance_scale": 1.0, "sampler": "Euler", "seed": 9})
        image = await session.call_tool("img2img", {"image": _data_url(noise_image(64, 64)), "prompt": "a cube",
                                                    "strength": 0.5, "steps": 2, "seed": 9})
        refused = await session.call_tool("txt2img", {"prompt": "x", "steps": 500})
        return text, image, refused

    text, image, refused = _session(url, work)
    for result in (text, image):
        assert not result.isError
        pictures = [c for c in result.content if c.type == "image"]
        assert len(pictures) == 1 and pictures[0].mimeType == "image/png"
        decoded = Image.open(io.BytesIO(base64.b64decode(pictures[0].data)))
        assert decoded.size == (64, 64)
    assert refused.isError and "Steps must be between 1 and 150, got 500." in refused.content[0].text


def test_a_tool_returns_the_saved_file_encoded_once(url: str, outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool's image is the PNG the Service encoded (Gradio does not encode it again); its URL serves the
    saved file byte for byte. (The MCP content's base64 image is Gradio's own re-encode, gradio/mcp.py.)"""
    import httpx

    encodes: list[object] = []
    original = Image.SAVE["PNG"]
    monkeypatch.setitem(Image.SAVE, "PNG", lambda image, *args: encodes.append(
        image.encoderinfo.get("compress_level")) or original(image, *args))

    async def work(session):
        return await session.call_tool("txt2img", {"prompt": "a saved cube", "width": 64, "height": 64, "steps": 2,
                                                   "guidance_scale": 1.0, "sampler": "Euler", "seed": 41})

    result = _session(url, work)
    assert not result.isError
    link = next(c.text for c in result.content if c.type == "text" and c.text.startswith("Image URL: "))
    saved = next(path for path in outputs.rglob("*.png") if path.name.endswith("-41-txt2img.png"))
    assert httpx.get(link.removeprefix("Image URL: "), timeout=30).content == saved.read_bytes()
    assert encodes == [1, None]  # the Service's encode (fast level), then the MCP server's for its base64 copy


def test_txt2img_takes_ddim_s_eta_and_a_schedule_type(url: str, outputs: Path) -> None:
    """`eta` (as the web UI's Eta slider): a DDIM image with eta 0.5 says so in its parameters text; so does an
    Euler image with `schedule_type` Exponential (the tabs' Schedule type)."""
    from sd2_app.pipelines.metadata import parse_parameters

    async def work(session):
        ddim = await session.call_tool("txt2img", {"prompt": "a cube", "width": 64, "height": 64, "steps": 2,
                                                   "sampler": "DDIM", "seed": 43, "eta": 0.5})
        euler = await session.call_tool("txt2img", {"prompt": "a cube", "width": 64, "height": 64, "steps": 2,
                                                    "sampler": "Euler", "seed": 44, "schedule_type": "Exponential"})
        return ddim, euler

    assert not any(answer.isError for answer in _session(url, work))
    read = {seed: parse_parameters(Image.open(next(path for path in outputs.rglob("*.png")
                                                   if path.name.endswith(f"-{seed}-txt2img.png"))).text["parameters"])
            for seed in (43, 44)}
    assert (read[43]["Sampler"], read[43]["Eta DDIM"], read[43]["Schedule type"]) == ("DDIM", 0.5, "Automatic")
    assert (read[44]["Sampler"], read[44]["Schedule type"]) == ("Euler", "Exponential")


def test_inpaint_takes_the_masked_content_and_mask_mode(url: str, outputs: Path) -> None:
    """`masked_content` and `mask_mode` (as the Inpaint tab's radios): "latent noise" below strength 1 and "Inpaint
    not masked" say so in the image's parameters text, the pixels under the mask kept; a name it does not know is
    refused in words."""
    from sd2_app.pipelines.metadata import parse_parameters

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    arguments = {"image": _data_url(noise_image(64, 64)), "mask": _data_url(mask.convert("RGB")), "prompt": "a door",
                 "strength": 0.6, "steps": 2, "seed": 47}

    async def work(session):
        made = await session.call_tool("inpaint", {**arguments, "masked_content": "latent noise",
                                                   "mask_mode": "Inpaint not masked"})
        refused = await session.call_tool("inpaint", {**arguments, "masked_content": "blur"})
        unknown_mode = await session.call_tool("inpaint", {**arguments, "mask_mode": "inverted"})
        return made, refused, unknown_mode

    made, refused, unknown_mode = _session(url, work)
    assert not made.isError
    saved = next(path for path in outputs.rglob("*.png") if path.name.endswith("-47-inpaint.png"))
    picture = Image.open(saved)
    parameters = parse_parameters(picture.text["parameters"])
    assert (parameters["Masked content"], parameters["Denoising strength"]) == ("latent noise", 0.6)
    assert parameters["Mask mode"] == "Inpaint not masked"
    # The white square is kept, pixel for pixel (the paste-back's feathering reaches 4 px into the repainted rest).
    assert picture.convert("RGB").crop((16, 16, 48, 48)).tobytes() == noise_image(64, 64).crop((16, 16, 48, 48)).tobytes()
    assert refused.isError and ("Unknown masked content 'blur'; choose one of: fill, original, latent noise, "
                                "latent nothing.") in refused.content[0].text
    assert unknown_mode.isError and ("Unknown mask mode 'inverted'; choose one of: Inpaint masked, Inpaint not "
                                     "masked.") in unknown_mode.content[0].text


def test_tool_images_are_png_jpeg_or_webp_and_never_fetched_from_other_sites(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool's image passes the web UI's upload check (magic bytes before PIL) and is never downloaded: the
    queue join of a URL is refused (`sd2_app.ui.uploads.local_file_references`) and the tool reads the refusal's
    own words (an MCP join's refusal completes the event with its reason, sd2_app/ui/join_refusals.py)."""
    from gradio import processing_utils
    from PIL import EpsImagePlugin

    opened: list[str] = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append("eps"))
    downloads: list[str] = []

    async def download(link: str, cache_dir: str) -> str:  # stands in for the internet
        downloads.append(link)
        raise OSError("offline")

    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", download)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    bmp = io.BytesIO()
    noise_image(64, 64).save(bmp, format="BMP")
    images = ["data:image/bmp;base64," + base64.b64encode(bmp.getvalue()).decode(),
              "data:image/png;base64," + base64.b64encode(eps).decode(),
              "https://files.example/cat.png"]

    async def work(session):
        return [await session.call_tool("img2img", {"image": image, "prompt": "a cube", "strength": 0.5,
                                                    "steps": 2, "seed": 9}) for image in images]

    bmp_result, eps_result, url_result = _session(url, work)
    for result in (bmp_result, eps_result):
        assert result.isError
        assert "The uploaded image could not be read: not a PNG, JPEG or WebP image." in result.content[0].text
    assert url_result.isError and downloads == [] and opened == []
    assert url_result.content[0].text == REMOTE_FILE_REFUSAL


def test_the_upscale_endpoint_keeps_its_positional_order(url: str, tmp_path: Path) -> None:
    """MCP's tools/call passes arguments by name, but the tool's Gradio endpoint (/mcp_upscale) is also called by
    position (gradio_client's `predict(*args)`, the HTTP API's "data" list): its first five arguments keep the
    order they had before `negative_prompt` came (image, prompt, noise_level, steps, seed), which is last."""
    from gradio_client import Client, handle_file

    noise_image(16, 16).save(tmp_path / "small.png")
    client = Client(url.removesuffix("/gradio_api/mcp/"), verbose=False)
    old_order = client.predict(handle_file(str(tmp_path / "small.png")), "a cat", 30, 2, 9, api_name="/mcp_upscale")
    text = Image.open(old_order).info["parameters"]
    assert "Steps: 2," in text and "Seed: 9," in text and "Noise level: 30" in text and "Negative prompt" not in text
    with_negative = client.predict(handle_file(str(tmp_path / "small.png")), "a cat", 30, 2, 9, "blurry",
                                   api_name="/mcp_upscale")
    assert "\nNegative prompt: blurry\n" in Image.open(with_negative).info["parameters"]

    async def by_name(session):
        return await session.call_tool("upscale", {"image": _data_url(noise_image(16, 16)), "prompt": "a cat",
                                                   "negative_prompt": "blurry", "noise_level": 30, "steps": 2,
                                                   "seed": 9})

    import httpx

    called = _session(url, by_name)  # its base64 image is Gradio's re-encode, without text: the linked file has it
    link = next(c.text for c in called.content if c.type == "text" and c.text.startswith("Image URL: "))
    served = Image.open(io.BytesIO(httpx.get(link.removeprefix("Image URL: "), timeout=30).content))
    assert served.size == (64, 64) and "\nNegative prompt: blurry\nSteps: 2," in served.info["parameters"]


def test_image_arguments_say_what_the_server_takes(url: str) -> None:
    """Each image argument's schema says what the server takes (a data URL or a link to a file uploaded to it;
    it downloads no other site's file), not Gradio's "http or https url", and no tool description sends the agent
    to Gradio's upload_file_to_gradio tool, which this server does not serve (`sd2_app.ui.mcp_schema`)."""
    tools = {tool.name: tool for tool in _session(url, lambda s: s.list_tools()).tools}
    taken = "a data URL (data:image/png;base64,...) or the URL of a file uploaded to this server"
    images = {(name, argument): schema for name, tool in tools.items()
              for argument, schema in tool.inputSchema["properties"].items() if "format" in schema}
    assert images == {
        ("img2img", "image"): {"type": "string", "title": "ImageData", "format": taken, "description":
                               "the starting image, shrunk to fit 1024 px (PNG, JPEG or WebP)"},
        ("inpaint", "image"): {"type": "string", "title": "ImageData", "format": taken,
                               "description": "the image to change (PNG, JPEG or WebP)"},
        ("inpaint", "mask"): {"type": "string", "title": "ImageData", "format": taken, "description":
                              "same size as the image (PNG, JPEG or WebP); white = repaint, black = keep"},
        ("upscale", "image"): {"type": "string", "title": "ImageData", "format": taken, "description":
                               "the image to enlarge (PNG, JPEG or WebP), at most 512x512 pixels"},
        ("depth", "image"): {"type": "string", "title": "ImageData", "format": taken, "description":
                             "the image whose depth (shapes, distances) the result keeps (PNG, JPEG or WebP)"}}
    sentence = f" Each image is {taken}; the server does not download other sites' files."
    assert tools["img2img"].description == ("Redraw an image following a text prompt (Stable Diffusion 2.1 "
                                            "image-to-image)." + sentence)
    assert all(tools[name].description.endswith(sentence) for name in ("img2img", "inpaint", "upscale", "depth"))
    assert not any("upload_file_to_gradio" in tool.description for tool in tools.values())
    assert sentence not in tools["txt2img"].description
