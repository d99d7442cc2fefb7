"""Depth to image: keep the input's 3-D layout (estimated with DPT, or an uploaded depth map), change the rest."""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.requests import DepthRequest
from sd2_app.api.tasks import TASKS
from sd2_app.ui.run_events import wire_run
from sd2_app.ui.sampling_controls import SAMPLING_NAMES, to_sampling
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.shown_files import shown_aux
from sd2_app.ui.result_panel import IMAGE_TARGETS
from sd2_app.ui.tab_frame import ImageTab, TabFrame
from sd2_app.ui.uploads import check_on_upload, upload_image

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service

DEPTH_MAP_LABEL = "Depth map (optional, white = near; 16-bit PNG or float TIFF kept exact)"


def build(service: Service, flags: StopFlags, examples: list[list[str]]) -> ImageTab:
    frame = TabFrame(service, "depth")
    with frame.columns(extra_label="Depth map used", send_to=IMAGE_TARGETS):
        with gr.Row():
            image = upload_image(label="Image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                 height=280, elem_id="depth-image")
            depth_map = upload_image(label=DEPTH_MAP_LABEL, type="pil", image_mode=None, sources=["upload"],
                                     height=280, elem_id="depth-map")
        checkpoint = frame.checkpoint()
        strength = gr.Slider(0, 1, TASKS["depth"].strength, step=0.01, label="Strength")
        controls = frame.sampling(examples, image)
    for box in (image, depth_map):
        check_on_upload(box, service.limits.max_input_pixels)
    inputs = [image, depth_map, checkpoint, frame.prompt, frame.negative, strength, *controls.inputs()]
    names = ("image", "depth_map", "checkpoint", "prompt", "negative_prompt", "strength", *SAMPLING_NAMES)
    wire_run(service, flags, frame.panel, inputs, make_request, "depth", names, finish_extra=depth_used,
             styles=frame.styles, eta=controls.eta, batch_count=controls.batch_count)
    return ImageTab(image, frame.prompt, frame.negative, controls, frame.panel, frame.styles)


def make_request(picture: Any, depth: Any, key: str, text: str, negative_text: str, amount: float,
                 *sampling: Any) -> DepthRequest:
    """Widget values (in the order of the API's parameter names) -> the request."""
    return DepthRequest(prompt=text, image=picture, negative_prompt=negative_text, checkpoint=key,
                        depth_map=depth, strength=amount, sampling=to_sampling(*sampling))


def depth_used(result: Result) -> tuple:
    """The depth map the pipeline used (estimated or the uploaded one), beside the result."""
    return (shown_aux(result, "depth", getattr(result.request, "depth_map", None)),)
