"""Upscale x4: the low-res image, prompt, noise level; tiling is automatic. Before and after side by side."""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.api.requests import UpscaleRequest
from sd2_app.api.task_checks import MAX_NOISE_LEVEL
from sd2_app.ui.run_events import wire_run
from sd2_app.ui.sampling_controls import SAMPLING_NAMES, to_sampling
from sd2_app.ui.runner import StopFlags, fast_png_file
from sd2_app.ui.tab_frame import ImageTab, TabFrame
from sd2_app.ui.uploads import check_on_upload, upload_image

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service

SEND_TO = (("img2img", "image to image"), ("inpaint", "inpaint"))


def before_image(result: Result) -> tuple:
    """The input enlarged x4 with bicubic resampling, the fair "before" next to the model's "after"."""
    low = result.request.image
    return (fast_png_file(low.resize((low.width * 4, low.height * 4), Image.Resampling.BICUBIC),
                          f"{result.seed}-upscale-before.png"),)


def build(service: Service, flags: StopFlags, examples: list[list[str]]) -> ImageTab:
    frame = TabFrame(service, "upscale")
    with frame.columns(extra_label="Before (bicubic x4)", send_to=SEND_TO):
        image = upload_image(label="Low-resolution image", type="pil", image_mode=None,
                             sources=["upload", "clipboard"], height=320, elem_id="upscale-image")
        checkpoint = frame.checkpoint()
        noise = gr.Slider(0, MAX_NOISE_LEVEL, UpscaleRequest.noise_level, step=1, label="Noise level",
                          info="noise added to the input; higher lets the model invent more detail")
        controls = frame.sampling()
        gr.Markdown("Large inputs are split into overlapping tiles automatically.")
        frame.examples(examples, image)
    check_on_upload(image, service.limits.max_upscale_input_pixels)
    inputs = [image, checkpoint, frame.prompt, frame.negative, noise, *controls.inputs()]
    names = ("image", "checkpoint", "prompt", "negative_prompt", "noise_level", *SAMPLING_NAMES)
    wire_run(service, flags, frame.panel, inputs, make_request, "upscale", names, finish_extra=before_image,
             styles=frame.styles, eta=controls.eta)
    return ImageTab(image, frame.prompt, frame.negative, controls, frame.panel, frame.styles)


def make_request(picture: Any, key: str, text: str, negative_text: str, level: float, *sampling: Any) -> UpscaleRequest:
    """Widget values (in the order of the API's parameter names) -> the request."""
    return UpscaleRequest(prompt=text, image=picture, negative_prompt=negative_text, checkpoint=key,
                          noise_level=level, sampling=to_sampling(*sampling))  # type: ignore[arg-type]
