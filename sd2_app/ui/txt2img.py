"""Text to image: checkpoint, prompts, sampler, size (following the checkpoint), seed, batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.requests import Txt2ImgRequest
from sd2_app.ui.result_panel import IMAGE_TARGETS, ResultPanel
from sd2_app.ui.run_events import wire_run
from sd2_app.ui.sampling_controls import EXAMPLE_PROMPTS, SAMPLING_NAMES, SamplingControls, to_sampling
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.size_boxes import show_sides_used
from sd2_app.ui.tab_frame import TabFrame
from sd2_app.ui.txt2img_extras import (NAMES as EXTRA_NAMES, Txt2ImgExtras, build_extras, request_fields,
                                       wire_hires_schedule, wire_hires_size)

if TYPE_CHECKING:
    from sd2_app.api.service import Service



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
    styles: gr.Dropdown | None  # the Styles picker; None where the host has no styles

    @property
    def tiling(self) -> gr.Checkbox:
        return self.extras.tiling


def build(service: Service, flags: StopFlags) -> Txt2ImgTab:
    frame = TabFrame(service, "txt2img", EXAMPLE_PROMPTS[0])
    with frame.columns(send_to=IMAGE_TARGETS):
        checkpoint = frame.checkpoint(elem_id="txt2img-checkpoint")
        width, height = frame.size_sliders(checkpoint)
        controls = frame.sampling()
        gr.Examples([[p] for p in EXAMPLE_PROMPTS], [frame.prompt], label="Example prompts")
        extras = build_extras(service, service.limits.max_side, width.value)  # tiling, hires fix, extra seed options
    wire_hires_size(width, height, extras.fix, service.limits.max_side)
    wire_hires_schedule(controls.sampler, extras.fix, service)
    inputs = [checkpoint, frame.prompt, frame.negative, width, height, *controls.inputs(), *extras.inputs()]
    run = wire_run(service, flags, frame.panel, inputs, make_request, "txt2img",
                   ("checkpoint", "prompt", "negative_prompt", "width", "height", *SAMPLING_NAMES, *EXTRA_NAMES),
                   styles=frame.styles, eta=controls.eta, batch_count=controls.batch_count)
    show_sides_used(service.limits, (width, height), run)
    return Txt2ImgTab(checkpoint, frame.prompt, frame.negative, width, height, controls, frame.panel, extras,
                      frame.styles)


def make_request(key: str, text: str, negative_text: str, w: float, h: float, *rest: Any) -> Txt2ImgRequest:
    """Widget values (in the order of the API's parameter names) -> the request."""
    sampling, extra_values = rest[:len(SAMPLING_NAMES)], rest[len(SAMPLING_NAMES):]
    return Txt2ImgRequest(
        prompt=text, negative_prompt=negative_text, checkpoint=key, width=w, height=h,  # type: ignore[arg-type]
        sampling=to_sampling(*sampling), **request_fields(*extra_values),
    )
