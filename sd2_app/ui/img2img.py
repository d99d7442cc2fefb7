"""Image to image: an init image re-noised to `strength` and denoised towards the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.requests import Img2ImgRequest
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
from sd2_app.ui.txt2img_extras import IMG2IMG_NAMES, build_img2img_extras, img2img_fields
from sd2_app.ui.uploads import upload_image

if TYPE_CHECKING:
    from sd2_app.api.service import Service

SEND_TO = (("inpaint", "inpaint"), ("upscale", "upscale"))


@dataclass
class Img2ImgTab:
    image: gr.Image
    prompt: gr.Textbox
    negative: gr.Textbox
    sampling: SamplingControls
    panel: ResultPanel


def build(service: Service, flags: StopFlags, examples: list[list[Any]]) -> Img2ImgTab:
    top = prompt_row("img2img")
    prompt, negative = top.prompt, top.negative
    with gr.Row(equal_height=False):
        with settings_column("img2img"):
            image = upload_image(label="Init image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                 height=320, elem_id="img2img-image")
            checkpoint = checkpoint_dropdown(service, "img2img")
            wire_prompt_tools(service, "img2img", top.boxes, checkpoint)
            strength = gr.Slider(0, 1, TASKS["img2img"].strength, step=0.01, label="Strength",
                                 info="1 ignores the image's content, 0 keeps it")
            controls, randomize, reuse = sampling_controls(service, "img2img")
            if examples:
                gr.Examples(examples, [image, prompt], label="Examples")
            extras = build_img2img_extras()  # tiling, variation seed
        with results_column("img2img"):
            panel = result_panel("img2img", top.run, top.stop, send_to=SEND_TO)
    wire_seed_buttons(randomize, reuse, controls.seed, panel.last_seed, "img2img")

    n_sampling = len(SAMPLING_NAMES)

    def make_request(picture: Any, key: str, text: str, negative_text: str, amount: float, *rest: Any) -> Img2ImgRequest:
        return Img2ImgRequest(prompt=text, image=picture, negative_prompt=negative_text, checkpoint=key,
                              strength=amount, sampling=to_sampling(*rest[:n_sampling]),
                              **img2img_fields(*rest[n_sampling:]))

    inputs = [image, checkpoint, prompt, negative, strength, *controls.inputs(), *extras]
    wire_run(service, flags, panel, inputs, make_request, "img2img",
             ("image", "checkpoint", "prompt", "negative_prompt", "strength", *SAMPLING_NAMES, *IMG2IMG_NAMES))
    return Img2ImgTab(image, prompt, negative, controls, panel)
