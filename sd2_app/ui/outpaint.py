"""Outpaint: extend an image on any side by multiples of 8 pixels; the inpainting model paints the new strips.

The mask used (white = the added strips) is shown beside the result.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.requests import OUTPAINT_FILLS, OutpaintRequest
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

SIDES = ("left", "right", "up", "down")


def build(service: Service, flags: StopFlags) -> ImageTab:
    frame = TabFrame(service, "outpaint")
    with frame.columns(extra_label="Mask used (white = new area)", send_to=IMAGE_TARGETS):
        image = upload_image(label="Image to extend", type="pil", image_mode=None, sources=["upload", "clipboard"],
                             height=320, elem_id="outpaint-image")
        checkpoint = frame.checkpoint()
        margins = []
        for pair in (SIDES[:2], SIDES[2:]):
            with gr.Row():
                margins += [gr.Slider(0, service.limits.max_side - 64, getattr(OutpaintRequest, side), step=8, label=f"Extend {side} (px)",
                                      elem_id=f"outpaint-{side}") for side in pair]
        with gr.Row():
            fill = gr.Radio([(label, key) for key, label in OUTPAINT_FILLS.items()], value="edge",
                            label="Fill of the new area", info="the start image when strength < 1")
            blur = gr.Slider(0, 64, OutpaintRequest.mask_blur, step=1, label="Seam feathering (px)",
                             info="mask blur into the new area")
        with gr.Row():
            strength = gr.Slider(0, 1, TASKS["outpaint"].strength, step=0.01, label="Strength")
            keep = gr.Checkbox(True, label="Paste the original back", info="its pixels stay exactly as they were")
        controls = frame.sampling()
    check_on_upload(image, service.limits.max_input_pixels)
    inputs = [image, checkpoint, frame.prompt, frame.negative, *margins, fill, blur, strength, keep,
              *controls.inputs()]
    names = ("image", "checkpoint", "prompt", "negative_prompt", *SIDES, "fill", "mask_blur", "strength",
             "keep_original", *SAMPLING_NAMES)
    wire_run(service, flags, frame.panel, inputs, make_request, "outpaint", names, finish_extra=mask_used,
             styles=frame.styles, eta=controls.eta, batch_count=controls.batch_count)
    return ImageTab(image, frame.prompt, frame.negative, controls, frame.panel, frame.styles)


def make_request(picture: Any, key: str, text: str, negative_text: str, left: float, right: float, up: float,
                 down: float, fill_key: str, blur_px: float, amount: float, paste: bool,
                 *sampling: Any) -> OutpaintRequest:
    """Widget values (in the order of the API's parameter names) -> the request."""
    return OutpaintRequest(prompt=text, image=picture, negative_prompt=negative_text, checkpoint=key,
                           left=left, right=right, up=up, down=down, fill=fill_key,  # type: ignore[arg-type]
                           mask_blur=blur_px, strength=amount, keep_original=bool(paste),  # type: ignore[arg-type]
                           sampling=to_sampling(*sampling))


def mask_used(result: Result) -> tuple:
    """The mask the pipeline used (white = the added strips), beside the result."""
    return (shown_aux(result, "mask", None),)
