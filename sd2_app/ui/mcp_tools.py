"""Five MCP tools (txt2img, img2img, inpaint, upscale, depth) served by Gradio's MCP server (`--mcp`).

Gradio turns each public event into an MCP tool, its function's type hints into the argument types and its
docstring's "Args:" lines into their descriptions (gradio/mcp.py); how an image is sent is said in each image
argument's schema and in the tool's description (`sd2_app.ui.mcp_schema`). The tools here are events on hidden
components, queued on the GPU queue like the UI's own events, and they run `Service.run`, so validation, the
cost cap, the watermark and the metadata are the UI's. Each returns its first image, as the PNG file the
Service encoded. (One output only: with two, gradio 6.31's MCP server returns a tool call made without a
progress token as the text of a tuple, gradio/mcp.py `_execute_tool_without_progress`.)

The web UI's events stay out of the tool list: their functions take widget values and stream previews,
which an agent cannot use. Gradio lists as tools only functions whose `_mcp_type` is unset or "tool"
(gradio/mcp.py, `list_tools`), so `add_mcp_tools` marks every other function of the app "ui".
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from sd2_app.api import requests as rq
from sd2_app.api.checked import check
from sd2_app.api.gpu_call import GpuCall
from sd2_app.api.keeper import unlisted
from sd2_app.api.tasks import TASKS
from sd2_app.errors import Cancelled, InvalidRequest, LoadError
from sd2_app.samplers.registry import AUTOMATIC
from sd2_app.ui.runner import GPU_QUEUE
from sd2_app.ui.shown_files import shown_files
from sd2_app.ui.uploads import upload_image

if TYPE_CHECKING:
    from sd2_app.api.requests import TaskRequest
    from sd2_app.api.service import Service

log = logging.getLogger(__name__)

MCP_OWNER = unlisted("mcp")  # a tool call gets its image in the reply: nobody can ask for it in History
NOT_A_TOOL = "ui"  # any `_mcp_type` other than "tool", "resource" or "prompt" hides a function from MCP


ToolFn = Callable[..., str | Image.Image]  # the result's first PNG file (`shown_files`)
RunFn = Callable[["TaskRequest"], str | Image.Image]  # a tool's request run: its first PNG file


def _runner(service: Service) -> RunFn:
    """Run a tool's request: checked once, before the GPU call, which asks ZeroGPU for the time this job needs and
    keeps its result in the app's process where it may fork (sd2_app/api/gpu_call.py)."""
    call = GpuCall(service, service.run)

    def run(request: TaskRequest) -> str | Image.Image:
        try:
            result = call.run(check(service, request), owner=MCP_OWNER)
        except (InvalidRequest, Cancelled) as error:
            raise gr.Error(str(error) or "Stopped.", print_exception=False) from error
        except LoadError as error:
            log.warning("MCP: load failed: %s", error)
            raise gr.Error("The model could not be loaded; the operator has the details.",
                           print_exception=False) from error
        return shown_files(result)[0]  # the PNG file the Service encoded, not an image for Gradio to encode again

    return run


def _sampling(steps: int, guidance_scale: float, seed: int, sampler: str | None = None, task: str = "txt2img",
              eta: float = 0.0, schedule_type: str = AUTOMATIC) -> rq.Sampling:
    return rq.Sampling(sampler=sampler or TASKS[task].sampler, steps=steps, cfg_scale=guidance_scale,
                       seed=None if seed == -1 else seed, eta=eta, schedule=schedule_type)


def _tools(service: Service) -> dict[str, ToolFn]:
    """The tool functions; their signatures and docstrings are the MCP schema (defaults: the task table). Where
    the host has prompt styles, the tools with a negative prompt (all five, as the web UI's tabs) take them too
    (`_with_styles`)."""
    run = _runner(service)  # one GPU function for the five
    tools = {"txt2img": _txt2img_tool(run), "img2img": _img2img_tool(run), "inpaint": _inpaint_tool(run),
             "upscale": _upscale_tool(run), "depth": _depth_tool(run)}
    if not service.styles.styles:
        return tools
    return {name: _with_styles(service, tool) if "negative_prompt" in inspect.signature(tool).parameters else tool
            for name, tool in tools.items()}


def _with_styles(service: Service, tool: ToolFn) -> ToolFn:
    """`tool` with a last argument, `styles`: names of the host's prompt styles, applied to its prompt and negative
    prompt in order before the request is made (as the web UI's Styles picker; sd2_app/prompt_styles.py)."""
    signature = inspect.signature(tool)
    book = service.styles

    @functools.wraps(tool)
    def styled(*values: Any) -> str | Image.Image:
        bound = signature.bind(*values[:-1])
        prompt, negative = bound.arguments.get("prompt") or "", bound.arguments.get("negative_prompt") or ""
        if isinstance(prompt, str) and isinstance(negative, str):
            try:
                prompt, negative = book.apply(prompt, negative, values[-1] or [])
            except InvalidRequest as error:
                raise gr.Error(str(error), print_exception=False) from error
            bound.arguments.update(prompt=prompt, negative_prompt=negative)
        return tool(*bound.args, **bound.kwargs)

    names = ", ".join(repr(name) for name in book.names[:20])
    line = f"styles: names of this server's prompt styles to add to the prompts, in order; one of {names}"
    styled.__doc__ = f"{(tool.__doc__ or '').rstrip()}\n            {line}\n        "
    styled.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
        *signature.parameters.values(),
        inspect.Parameter("styles", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=[], annotation=list[str])])
    return styled


def _txt2img_tool(run: RunFn) -> ToolFn:
    t2i = TASKS["txt2img"]

    def txt2img(prompt: str, negative_prompt: str = "", width: int = 512, height: int = 512,
                steps: int = t2i.steps, guidance_scale: float = t2i.cfg_scale, sampler: str = t2i.sampler,
                seed: int = -1, eta: float = 0.0, schedule_type: str = AUTOMATIC) -> str | Image.Image:
        """Generate an image from a text prompt with Stable Diffusion 2.1 (512 px base model).

        Args:
            prompt: what to draw, in English; up to 2000 characters (the model reads about 75 words)
            negative_prompt: what to avoid in the image; may be empty
            width: image width in pixels, 64 to the server's largest side (1024 by default), a multiple of 8
            height: image height in pixels, the same range as width, rounded to a multiple of 8
            steps: denoising steps, 1 to 150; 20-30 is usual
            guidance_scale: how closely to follow the prompt, 0 to 30; 7.5 is usual, 1 or less turns guidance off
            sampler: sampler name, e.g. "DPM++ 2M", "Euler a", "Euler", "DDIM", "UniPC"
            seed: random seed, 0 to 4294967295; -1 picks one
            eta: DDIM's eta, 0 to 1: noise added back at each step (other samplers ignore it); 0 is plain DDIM
            schedule_type: the sigmas' spacing: Automatic (the sampler's own), Uniform, Karras, Exponential,
                Polyexponential, SGM Uniform, KL Optimal, Align Your Steps, Simple, Normal or Beta; not for DDIM
        """
        sampling = _sampling(steps, guidance_scale, seed, sampler, eta=eta, schedule_type=schedule_type)
        request = rq.Txt2ImgRequest(prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                                    checkpoint=t2i.checkpoint, sampling=sampling)
        return run(request)

    return txt2img


def _img2img_tool(run: RunFn) -> ToolFn:
    i2i = TASKS["img2img"]

    def img2img(image: Image.Image, prompt: str, negative_prompt: str = "", strength: float = i2i.strength or 0.75,
                steps: int = i2i.steps, guidance_scale: float = i2i.cfg_scale,
                seed: int = -1) -> str | Image.Image:
        """Redraw an image following a text prompt (Stable Diffusion 2.1 image-to-image).

        Args:
            image: the starting image, shrunk to fit 1024 px (PNG, JPEG or WebP)
            prompt: what the result should show
            negative_prompt: what to avoid; may be empty
            strength: how much to change, 0 to 1: 0.3 keeps the composition, 1 ignores the image's content
            steps: denoising steps, 1 to 150 (only strength x steps of them run)
            guidance_scale: how closely to follow the prompt, 0 to 30; 7.5 is usual
            seed: random seed, 0 to 4294967295; -1 picks one
        """
        request = rq.Img2ImgRequest(prompt=prompt, image=image, negative_prompt=negative_prompt, strength=strength,
                                    checkpoint=i2i.checkpoint, sampling=_sampling(steps, guidance_scale, seed, task="img2img"))
        return run(request)

    return img2img


def _inpaint_tool(run: RunFn) -> ToolFn:
    inp = TASKS["inpaint"]

    # `masked_content` and `mask_mode` came later than the rest: they are last, in that order, for the callers by
    # position (see upscale's)
    def inpaint(image: Image.Image, mask: Image.Image, prompt: str, negative_prompt: str = "",
                strength: float = inp.strength or 1.0, steps: int = inp.steps, guidance_scale: float = inp.cfg_scale,
                seed: int = -1, masked_content: str = "original",
                mask_mode: str = "Inpaint masked") -> str | Image.Image:
        """Repaint the masked part of an image following a text prompt (Stable Diffusion 2 inpainting model).

        Args:
            image: the image to change (PNG, JPEG or WebP)
            mask: same size as the image (PNG, JPEG or WebP); white = repaint, black = keep
            prompt: what the repainted area should show
            negative_prompt: what to avoid; may be empty
            strength: 0 to 1; 1 repaints the masked area from scratch
            steps: denoising steps, 1 to 150
            guidance_scale: how closely to follow the prompt, 0 to 30; 7.5 is usual
            seed: random seed, 0 to 4294967295; -1 picks one
            masked_content: the masked area's start below strength 1: original, fill, latent noise or latent nothing
            mask_mode: Inpaint masked repaints the white area; Inpaint not masked repaints the black area
        """
        request = rq.InpaintRequest(prompt=prompt, image=image, mask=mask, negative_prompt=negative_prompt,
                                    strength=strength, masked_content=masked_content, mask_mode=mask_mode,
                                    checkpoint=inp.checkpoint,
                                    sampling=_sampling(steps, guidance_scale, seed, task="inpaint"))
        return run(request)

    return inpaint


def _upscale_tool(run: RunFn) -> ToolFn:
    up = TASKS["upscale"]

    # `negative_prompt` came later than the rest: it is last, so a caller of the Gradio endpoint by position
    # (gradio_client's predict(*args), the HTTP API's "data" list) keeps the order it had
    def upscale(image: Image.Image, prompt: str = "", noise_level: int = 20, steps: int = up.steps, seed: int = -1,
                negative_prompt: str = "") -> str | Image.Image:
        """Enlarge an image 4x with the Stable Diffusion x4 upscaler (input up to 512x512 pixels).

        Args:
            image: the image to enlarge (PNG, JPEG or WebP), at most 512x512 pixels
            prompt: what the image shows; guides the added detail; may be empty
            noise_level: 0 to 350: noise added to the input first; higher lets the model invent more detail
            steps: denoising steps, 1 to 150; 50 is usual
            seed: random seed, 0 to 4294967295; -1 picks one
            negative_prompt: what to avoid in the added detail; may be empty
        """
        request = rq.UpscaleRequest(prompt=prompt, image=image, negative_prompt=negative_prompt,
                                    noise_level=noise_level, checkpoint=up.checkpoint,
                                    sampling=_sampling(steps, up.cfg_scale, seed, task="upscale"))
        return run(request)

    return upscale


def _depth_tool(run: RunFn) -> ToolFn:
    dep = TASKS["depth"]

    def depth(image: Image.Image, prompt: str, negative_prompt: str = "", strength: float = dep.strength or 0.7,
              steps: int = dep.steps, guidance_scale: float = dep.cfg_scale,
              seed: int = -1) -> str | Image.Image:
        """Redraw an image keeping its 3D layout (Stable Diffusion 2 depth model; depth estimated with DPT).

        Args:
            image: the image whose depth (shapes, distances) the result keeps (PNG, JPEG or WebP)
            prompt: what the result should show
            negative_prompt: what to avoid; may be empty
            strength: how much to change, 0 to 1; 1 keeps only the depth
            steps: denoising steps, 1 to 150
            guidance_scale: how closely to follow the prompt, 0 to 30; 7.5 is usual
            seed: random seed, 0 to 4294967295; -1 picks one
        """
        request = rq.DepthRequest(prompt=prompt, image=image, negative_prompt=negative_prompt, strength=strength,
                                  checkpoint=dep.checkpoint, sampling=_sampling(steps, guidance_scale, seed, task="depth"))
        return run(request)

    return depth


def _inputs(fn: ToolFn, choices: list[str]) -> list[gr.components.Component]:
    """One hidden component per parameter, by its type hint (images as PIL, PNG, JPEG or WebP only, as the web
    UI's uploads: `sd2_app.ui.uploads.upload_image`; numbers with their precision; a list of names picked from
    `choices`, the host's prompt styles)."""
    components: list[gr.components.Component] = []
    for parameter in inspect.signature(fn).parameters.values():
        hint = parameter.annotation
        default = None if parameter.default is inspect.Parameter.empty else parameter.default
        if hint in ("Image.Image", Image.Image):
            components.append(upload_image(type="pil", format="png"))
        elif hint in ("int", int):
            components.append(gr.Number(default, precision=0))
        elif hint in ("float", float):
            components.append(gr.Number(default))
        elif hint == list[str]:  # the host's prompt styles (`_with_styles`)
            components.append(gr.Dropdown(choices, value=[], multiselect=True))
        else:
            components.append(gr.Textbox(default))
    return components


def add_mcp_tools(demo: gr.Blocks, service: Service) -> list[str]:
    """Add the five tools to a built app (before `queue`/`launch`); returns their API names."""
    for block_fn in demo.fns.values():  # the UI's events: not tools
        fn = getattr(block_fn, "fn", None)
        target = getattr(fn, "__func__", fn)
        if target is not None and getattr(target, "_mcp_type", None) is None:
            try:
                target._mcp_type = NOT_A_TOOL
            except AttributeError:
                log.warning("MCP: could not hide %r from the tool list", fn)
    names = []
    with demo, gr.Column(visible=False):
        for name, fn in _tools(service).items():
            inputs = _inputs(fn, service.styles.names)
            outputs = gr.Image(type="pil", format="png")
            gr.Button(visible=False).click(fn, inputs, outputs, api_name=f"mcp_{name}",
                                           concurrency_id=GPU_QUEUE, concurrency_limit=service.concurrency)
            names.append(f"mcp_{name}")
    return names
