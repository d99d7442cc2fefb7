"""Image to image: an init image re-noised to `strength` and denoised towards the prompt."""

from __future__ import annotations

from functools import partial
from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.api.checks import MIN_SIDE
from sd2_app.api.requests import Img2ImgRequest
from sd2_app.api.resize_modes import RESIZE_MODES, fitted_size, shaped
from sd2_app.api.tasks import TASKS
from sd2_app.ui.layout import swap_size_button
from sd2_app.ui.run_events import wire_run
from sd2_app.ui.sampling_controls import SAMPLING_NAMES, checkpoint_dropdown, to_sampling
from sd2_app.ui.sent_size import SizeBoxes, pinned_size
from sd2_app.ui.size_boxes import show_sides_used
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.result_panel import IMAGE_TARGETS
from sd2_app.ui.tab_frame import ImageTab, TabFrame
from sd2_app.ui.txt2img_extras import IMG2IMG_NAMES, build_img2img_extras, img2img_fields
from sd2_app.ui.uploads import empty_on_failure, refuse_oversized, upload_image

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.api.checks import Limits



def build(service: Service, flags: StopFlags, examples: list[list[str]]) -> ImageTab:
    frame = TabFrame(service, "img2img")
    with frame.columns(send_to=IMAGE_TARGETS):
        image = upload_image(label="Init image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                             height=320, elem_id="img2img-image")
        checkpoint = checkpoint_dropdown(service, "img2img", elem_id="img2img-checkpoint")
        width, height, resize_mode = _size_inputs(service.limits.max_side)
        size = SizeBoxes(width, height, gr.State(None), service.limits.max_side)
        frame.prompt_tools(checkpoint)
        strength = gr.Slider(0, 1, TASKS["img2img"].strength, step=0.01, label="Strength",
                             info="1 ignores the image's content, 0 keeps it")
        controls = frame.sampling(examples, image)
        extras = build_img2img_extras()  # tiling, variation seed
    _wire_default_size(service, image, checkpoint, size)
    inputs = [image, checkpoint, frame.prompt, frame.negative, strength, width, height, resize_mode,
              *controls.inputs(), *extras]
    run = wire_run(service, flags, frame.panel, inputs, partial(make_request, service.limits), "img2img",
                   ("image", "checkpoint", "prompt", "negative_prompt", "strength", "width", "height", "resize_mode",
                    *SAMPLING_NAMES, *IMG2IMG_NAMES), styles=frame.styles, eta=controls.eta,
                    batch_count=controls.batch_count)
    show_sides_used(service.limits, (width, height), run)
    return ImageTab(image, frame.prompt, frame.negative, controls, frame.panel, frame.styles, tiling=extras[2],
                    size=size)


SIZE_NOTE = ("A new image (or checkpoint) sets width and height: the image's shape at the checkpoint's "
             "resolution (square until there is an image); an image sent here keeps its own size. Clear both to "
             "keep the image's own size, one to keep that side.")


def _size_inputs(max_side: int) -> tuple[gr.Number, gr.Number, gr.Radio]:
    """Width, height (filled in on the page by `_wire_default_size`; left empty, as API callers may, = the
    image's own size, so their default stays None) and the resize mode."""
    with gr.Row():
        width = gr.Number(None, label="Width", precision=0, minimum=MIN_SIDE, maximum=max_side, step=8,
                          elem_id="img2img-width")
        height = gr.Number(None, label="Height", precision=0, minimum=MIN_SIDE, maximum=max_side, step=8,
                           elem_id="img2img-height")
        swap_size_button("img2img", width, height)
    gr.Markdown(SIZE_NOTE, elem_id="img2img-size-note", elem_classes=["field-note"])
    resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                           elem_id="img2img-resize-mode")
    return width, height, resize_mode


def _wire_default_size(service: Service, image: gr.Image, checkpoint: gr.Dropdown, size: SizeBoxes) -> None:
    def default_size(picture: Any, key: str, pin: Any) -> tuple[int, int]:
        """A new image: the output keeps its aspect at the checkpoint's resolution; no image: that resolution's
        square (what an image of any square shape would get); the image a send put here: the size the send set
        (`sent_size`). An oversized image is refused here, the upload check of this tab
        (`uploads.check_on_upload`)."""
        native = service.resolution(key)
        if not isinstance(picture, Image.Image):
            return native, native
        refuse_oversized(picture, service.limits.max_input_pixels)
        return pinned_size(picture, pin) or fitted_size(picture.width, picture.height, native,
                                                        service.limits.max_side)

    # On the page's load (Gradio shows a None number as 0) the default checkpoint's square, set by the page
    # itself: no event reaches the server, so a busy queue or the per-address event limit cannot refuse it.
    square = service.resolution(checkpoint.value)
    gr.on(None, None, None, [size.width, size.height], js=f"() => [{square}, {square}]", show_progress="hidden")
    # A new image or checkpoint: the image is read on the server, in the queue like every image check; an image
    # it refuses (unreadable, oversized) leaves the box, and the emptied box sets the square again. (A send that
    # first draws the tab changes the image twice, as the value arrives and as the box is drawn with it: both
    # runs find the send's pin, so the sizes stay the sent ones.)
    sized = gr.on([image.change, checkpoint.change], default_size, [image, checkpoint, size.pin],
                  [size.width, size.height], api_name="img2img_default_size", api_visibility="private")
    empty_on_failure(sized, image)


def make_request(limits: Limits, picture: Any, key: str, text: str, negative_text: str, amount: float, w: Any,
                 h: Any, mode: Any, *rest: Any) -> Img2ImgRequest:
    """Widget values (in the order of the API's parameter names) -> the request. Without a size (API callers
    may leave it out) the output keeps the image's size; with one or both, the image is resized in the resize
    mode to the size the service runs (an empty box: that side of the image)."""
    n_sampling = len(SAMPLING_NAMES)
    sized = w is not None or h is not None
    image = shaped(limits, picture, w, h, mode or RESIZE_MODES[0]) if sized else picture
    return Img2ImgRequest(prompt=text, image=image, negative_prompt=negative_text, checkpoint=key, strength=amount,
                          width=w, height=h,  # type: ignore[arg-type]
                          sampling=to_sampling(*rest[:n_sampling]), **img2img_fields(*rest[n_sampling:]))
