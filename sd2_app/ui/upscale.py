"""Upscale x4: the low-res image, prompt, noise level; tiling is automatic. Before and after side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.api.requests import UpscaleRequest
from sd2_app.ui.common import (
    checkpoint_dropdown,
    SAMPLING_NAMES,
    ResultPanel,
    SamplingControls,
    result_panel,
    sampling_controls,
    to_sampling,
    wire_run,
    wire_seed_buttons,
)
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.layout import prompt_row, results_column, settings_column
from sd2_app.ui.prompt_tools import wire_prompt_tools
from sd2_app.ui.uploads import upload_image

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service

SEND_TO = (("img2img", "image to image"), ("inpaint", "inpaint"))


@dataclass
class UpscaleTab:
    image: gr.Image
    prompt: gr.Textbox
    negative: gr.Textbox
    sampling: SamplingControls
    panel: ResultPanel


def before_image(result: Result) -> tuple:
    """The input enlarged x4 with bicubic resampling, the fair "before" next to the model's "after"."""
    low = result.request.image
    return (low.resize((low.width * 4, low.height * 4), Image.Resampling.BICUBIC),)


def build(service: Service, flags: StopFlags, examples: list[list[Any]]) -> UpscaleTab:
    top = prompt_row("upscale")
    prompt, negative = top.prompt, top.negative
    with gr.Row(equal_height=False):
        with settings_column("upscale"):
            image = upload_image(label="Low-resolution image", type="pil", image_mode=None,
                                 sources=["upload", "clipboard"], height=320, elem_id="upscale-image")
            checkpoint = checkpoint_dropdown(service, "upscale")
            wire_prompt_tools(service, "upscale", top.boxes, checkpoint)
            noise = gr.Slider(0, 350, UpscaleRequest.noise_level, step=1, label="Noise level",
                              info="noise added to the input; higher lets the model invent more detail")
            controls, randomize, reuse = sampling_controls(service, "upscale")
            gr.Markdown("Large inputs are split into overlapping tiles automatically.")
            if examples:
                gr.Examples(examples, [image, prompt], label="Examples")
        with results_column("upscale"):
            panel = result_panel("upscale", top.run, top.stop, extra_label="Before (bicubic x4)", send_to=SEND_TO)
    wire_seed_buttons(randomize, reuse, controls.seed, panel.last_seed, "upscale")

    def make_request(picture: Any, key: str, text: str, negative_text: str, level: float,
                     *sampling: Any) -> UpscaleRequest:
        return UpscaleRequest(prompt=text, image=picture, negative_prompt=negative_text, checkpoint=key,
                              noise_level=level, sampling=to_sampling(*sampling))  # type: ignore[arg-type]

    inputs = [image, checkpoint, prompt, negative, noise, *controls.inputs()]
    names = ("image", "checkpoint", "prompt", "negative_prompt", "noise_level", *SAMPLING_NAMES)
    wire_run(service, flags, panel, inputs, make_request, "upscale", names, finish_extra=before_image)
    return UpscaleTab(image, prompt, negative, controls, panel)
