"""Text to image: checkpoint, prompts, sampler, size (following the checkpoint), seed, batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.requests import Txt2ImgRequest
from sd2_app.ui.common import (
    checkpoint_dropdown,
    SAMPLING_NAMES,
    EXAMPLE_PROMPTS,
    ResultPanel,
    SamplingControls,
    result_panel,
    sampling_controls,
    to_sampling,
    wire_run,
    wire_seed_buttons,
)
from sd2_app.ui.layout import prompt_row, results_column, settings_column
from sd2_app.ui.prompt_tools import wire_prompt_tools
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.txt2img_extras import NAMES as EXTRA_NAMES, Txt2ImgExtras, build_extras, request_fields

if TYPE_CHECKING:
    from sd2_app.api.service import Service

SEND_TO = (("img2img", "image to image"), ("inpaint", "inpaint"), ("upscale", "upscale"))


@dataclass
class Txt2ImgTab:
    checkpoint: gr.Dropdown
    prompt: gr.Textbox
    negative: gr.Textbox
    width: gr.Slider
    height: gr.Slider
    sampling: SamplingControls
    panel: ResultPanel
    extras: Txt2ImgExtras


def build(service: Service, flags: StopFlags) -> Txt2ImgTab:
    top = prompt_row("txt2img", EXAMPLE_PROMPTS[0])
    prompt, negative = top.prompt, top.negative
    with gr.Row(equal_height=False):
        with settings_column("txt2img"):
            checkpoint = checkpoint_dropdown(service, "txt2img", elem_id="txt2img-checkpoint")
            wire_prompt_tools(service, "txt2img", top.boxes, checkpoint)
            side = service.resolution(checkpoint.value)
            with gr.Row():
                width = gr.Slider(64, service.limits.max_side, side, step=8, label="Width", elem_id="txt2img-width")
                height = gr.Slider(64, service.limits.max_side, side, step=8, label="Height", elem_id="txt2img-height")
            controls, randomize, reuse = sampling_controls(service, "txt2img")
            gr.Examples([[p] for p in EXAMPLE_PROMPTS], [prompt], label="Example prompts")
            extras = build_extras(service, service.limits.max_side)  # tiling, hires fix, extra seed options
        with results_column("txt2img"):
            panel = result_panel("txt2img", top.run, top.stop, send_to=SEND_TO)
    wire_seed_buttons(randomize, reuse, controls.seed, panel.last_seed, "txt2img")

    def follow_checkpoint(key: str) -> tuple[int, int]:
        native = service.resolution(key)
        return native, native

    checkpoint.change(follow_checkpoint, checkpoint, [width, height], api_name="txt2img_native_size",
                      api_visibility="private", queue=False)

    n_sampling = len(SAMPLING_NAMES)

    def make_request(key: str, text: str, negative_text: str, w: float, h: float, *rest: Any) -> Txt2ImgRequest:
        sampling, extra_values = rest[:n_sampling], rest[n_sampling:]
        return Txt2ImgRequest(
            prompt=text, negative_prompt=negative_text, checkpoint=key, width=w, height=h,  # type: ignore[arg-type]
            sampling=to_sampling(*sampling), **request_fields(*extra_values),
        )

    inputs = [checkpoint, prompt, negative, width, height, *controls.inputs(), *extras.inputs()]
    wire_run(service, flags, panel, inputs, make_request, "txt2img",
             ("checkpoint", "prompt", "negative_prompt", "width", "height", *SAMPLING_NAMES, *EXTRA_NAMES))
    return Txt2ImgTab(checkpoint, prompt, negative, width, height, controls, panel, extras)
