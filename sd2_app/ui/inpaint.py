"""Inpaint: a sketch pad (upload, paint the mask with a brush, erase, clear), or an uploaded mask image.

The brush layers' alpha is the mask (painted = repaint). The mask the pipeline used is shown beside the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image, ImageChops

from sd2_app.api.requests import MASK_MODES, MASKED_CONTENT, InpaintRequest
from sd2_app.api.tasks import TASKS
from sd2_app.ui.result_panel import IMAGE_TARGETS, ResultPanel
from sd2_app.ui.run_events import wire_run
from sd2_app.ui.sampling_controls import SAMPLING_NAMES, SamplingControls, to_sampling
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.shown_files import shown_aux
from sd2_app.ui.tab_frame import TabFrame
from sd2_app.ui.uploads import check_on_upload, file_check, guard_editor, upload_image

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service



@dataclass
class InpaintTab:
    editor: gr.ImageMask
    prompt: gr.Textbox
    negative: gr.Textbox
    sampling: SamplingControls
    panel: ResultPanel
    masked_content: gr.Radio
    mask_mode: gr.Radio
    styles: gr.Dropdown | None = None  # the Styles picker; None where the host has no styles
    tiling: None = None  # inpainting has no Tiling (a "Send to" from here turns the destination's off)


def _open(item: Any) -> Image.Image | None:
    return Image.open(item) if isinstance(item, str) else item


def _uploaded(background: Image.Image | None) -> Image.Image | None:
    """The editor's background, or None where nothing was uploaded: strokes on an empty editor come with a fully
    transparent background of Gradio's default canvas size (800x800), which ran as an 800x800 white image."""
    if background is not None and background.mode == "RGBA" and background.getchannel("A").getextrema() == (0, 0):
        return None
    return background


def split_editor(value: Any, uploaded_mask: Image.Image | None) -> tuple[Image.Image | None, Image.Image | None]:
    """ImageMask value -> (image, mask "L"). Painted layers are merged; an uploaded mask wins over the strokes."""
    if not value:
        return None, uploaded_mask
    if not isinstance(value, dict):
        return _open(value), uploaded_mask
    image = _uploaded(_open(value.get("background")))
    if uploaded_mask is not None:
        return image, uploaded_mask
    mask: Image.Image | None = None
    for layer in value.get("layers") or []:
        alpha = _open(layer).convert("RGBA").getchannel("A")
        if mask is not None and alpha.size != mask.size:
            alpha = alpha.resize(mask.size, Image.Resampling.NEAREST)
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    if mask is None and image is not None:
        mask = Image.new("L", image.size, 0)  # refused by the service with "the mask is empty"
    return image, mask


def build(service: Service, flags: StopFlags, examples: list[list[str]]) -> InpaintTab:
    frame = TabFrame(service, "inpaint")
    with frame.columns(extra_label="Mask used", send_to=IMAGE_TARGETS):
        editor = guard_editor(gr.ImageMask(
            label="Image and mask",  # short: on a phone the editor's toolbar shares the label's line
            placeholder="Upload an image, then paint over what to repaint",
            type="pil",
            image_mode="RGBA",
            format="png",
            sources=["upload", "clipboard"],
            brush=gr.Brush(default_size="auto", colors=["#ffffff"], color_mode="fixed"),
            eraser=gr.Eraser(default_size="auto"),
            height=420,
            elem_id="inpaint-editor",
            elem_classes=["checked-editor"],  # each file put in goes to its checker too (`file_check`)
        ), service.limits.max_input_pixels)
        file_check(editor, service.limits.max_input_pixels)
        with gr.Accordion("Or upload a mask image (white = repaint)", open=False):
            mask_upload = upload_image(label="Mask", type="pil", image_mode=None, sources=["upload"], height=200,
                                       elem_id="inpaint-mask")
        checkpoint = frame.checkpoint()
        with gr.Row():
            strength = gr.Slider(0, 1, TASKS["inpaint"].strength, step=0.01, label="Strength")
            blur = gr.Slider(0, 64, InpaintRequest.mask_blur, step=1, label="Mask blur (px)")
        # A1111's "Mask mode" and "Masked content" radios (modules/ui.py, `inpainting_mask_invert` and
        # `inpainting_fill`: their labels, choices and defaults).
        mask_mode = gr.Radio(list(MASK_MODES), value=InpaintRequest.mask_mode, label="Mask mode",
                             info="repaint the painted area, or everything else", elem_id="inpaint-mask-mode")
        masked_content = gr.Radio(list(MASKED_CONTENT), value=InpaintRequest.masked_content, label="Masked content",
                                  info="what the masked area starts from, below strength 1",
                                  elem_id="inpaint-masked-content")
        with gr.Row():
            only_masked = gr.Checkbox(False, label="Only masked area",
                                      info="work at full resolution on a crop around the mask")
            padding = gr.Slider(0, 256, InpaintRequest.only_masked_padding, step=8, label="Only-masked padding (px)")
        controls = frame.sampling(examples, editor)
    check_on_upload(mask_upload, service.limits.max_input_pixels)
    # Masked content and mask mode come last among the API's parameters, in the order they were added, so calls
    # that give them in order keep working.
    inputs = [editor, mask_upload, checkpoint, frame.prompt, frame.negative, strength, blur, only_masked, padding,
              *controls.inputs(), masked_content, mask_mode]
    names = ("image_and_mask", "mask", "checkpoint", "prompt", "negative_prompt", "strength", "mask_blur", "only_masked",
             "only_masked_padding", *SAMPLING_NAMES, "masked_content", "mask_mode")
    wire_run(service, flags, frame.panel, inputs, make_request, "inpaint", names, finish_extra=mask_used,
             styles=frame.styles, eta=controls.eta, batch_count=controls.batch_count)
    return InpaintTab(editor, frame.prompt, frame.negative, controls, frame.panel, masked_content, mask_mode,
                      frame.styles)


def make_request(value: Any, mask: Any, key: str, text: str, negative_text: str, amount: float, blur_px: float,
                 crop: bool, pad: float, *rest: Any) -> InpaintRequest:
    """Widget values (in the order of the API's parameter names: the sampling settings, then masked content and
    mask mode) -> the request."""
    image, mask_image = split_editor(value, mask)
    *sampling, content, mode = rest
    return InpaintRequest(prompt=text, image=image, mask=mask_image, negative_prompt=negative_text, checkpoint=key,
                          strength=amount, mask_blur=blur_px, only_masked=crop,  # type: ignore[arg-type]
                          only_masked_padding=pad, masked_content=content, mask_mode=mode,
                          sampling=to_sampling(*sampling))  # type: ignore[arg-type]


def mask_used(result: Result) -> tuple:
    """The mask the pipeline used, beside the result."""
    return (shown_aux(result, "mask", getattr(result.request, "mask", None)),)
