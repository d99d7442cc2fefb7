"""Depth to image: keep the input's 3-D layout (estimated with DPT, or an uploaded depth map), change the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.requests import DepthRequest
from sd2_app.api.tasks import TASKS
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


@dataclass
class DepthTab:
    image: gr.Image
    prompt: gr.Textbox
    negative: gr.Textbox
    sampling: SamplingControls
    panel: ResultPanel


def build(service: Service, flags: StopFlags, examples: list[list[Any]]) -> DepthTab:
    top = prompt_row("depth")
    prompt, negative = top.prompt, top.negative
    with gr.Row(equal_height=False):
        with settings_column("depth"):
            with gr.Row():
                image = upload_image(label="Image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                     height=280, elem_id="depth-image")
                depth_map = upload_image(label="Depth map (optional, white = near; 16-bit PNG or float TIFF kept exact)", type="pil", image_mode=None,
                                         sources=["upload"], height=280, elem_id="depth-map")
            checkpoint = checkpoint_dropdown(service, "depth")
            wire_prompt_tools(service, "depth", top.boxes, checkpoint)
            strength = gr.Slider(0, 1, TASKS["depth"].strength, step=0.01, label="Strength")
            controls, randomize, reuse = sampling_controls(service, "depth")
            if examples:
                gr.Examples(examples, [image, prompt], label="Examples")
        with results_column("depth"):
            panel = result_panel("depth", top.run, top.stop, extra_label="Depth map used",
                                 send_to=(("img2img", "image to image"), ("inpaint", "inpaint"), ("upscale", "upscale")))
    wire_seed_buttons(randomize, reuse, controls.seed, panel.last_seed, "depth")

    def make_request(picture: Any, depth: Any, key: str, text: str, negative_text: str, amount: float,
                     *sampling: Any) -> DepthRequest:
        return DepthRequest(prompt=text, image=picture, negative_prompt=negative_text, checkpoint=key,
                            depth_map=depth, strength=amount, sampling=to_sampling(*sampling))

    def depth_used(result: Result) -> tuple:
        return (result.depth_image if result.depth_image is not None else getattr(result.request, "depth_map", None),)

    inputs = [image, depth_map, checkpoint, prompt, negative, strength, *controls.inputs()]
    names = ("image", "depth_map", "checkpoint", "prompt", "negative_prompt", "strength", *SAMPLING_NAMES)
    wire_run(service, flags, panel, inputs, make_request, "depth", names, finish_extra=depth_used)
    return DepthTab(image, prompt, negative, controls, panel)
