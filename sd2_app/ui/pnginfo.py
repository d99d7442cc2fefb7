"""PNG info: read the A1111 `parameters` text of a PNG (ours or another tool's), or take that text pasted in (as
A1111 and Civitai copy it), and send it to text to image.

The text chunks are read without decoding the pixels, and the reads have a queue of their own in which at most
`PNG_INFO_CONCURRENCY` run at once (the rest wait, bounded by the queue's size), so a flood of calls stays cheap.
"""

from __future__ import annotations

import logging
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.ui.uploads import guard_image

if TYPE_CHECKING:
    from sd2_app.api.service import Service

log = logging.getLogger(__name__)

PNG_INFO_CONCURRENCY = 2
MAX_PASTED_CHARS = 20_000  # the longest parameters text the box takes
PASTE_INFO = "read from the image, or paste a generation's parameters here (as A1111 or Civitai copy them)"
TOO_LONG = f"Pasted parameters must be at most {MAX_PASTED_CHARS} characters."
NO_PARAMETERS = "This image carries no generation parameters."


def build(service: Service) -> tuple[gr.Image, gr.JSON, gr.Button]:
    with gr.Row():
        with gr.Column():
            image = guard_image(gr.Image(label="PNG with parameters", type="filepath", image_mode=None,
                                         sources=["upload"], height=320, elem_id="pnginfo-image"))
        with gr.Column():
            # The browser cuts a longer paste at max_length; the server refuses a longer text sent otherwise.
            text = gr.Textbox(label="Parameters", info=PASTE_INFO, lines=6, max_length=MAX_PASTED_CHARS,
                              interactive=True, buttons=["copy"], elem_id="pnginfo-text")
            fields = gr.JSON(label="Fields")
            send = gr.Button("Send to text to image", elem_id="pnginfo-send")

    # The text an image read has just put in the box, already parsed into the fields: the box's `change` that
    # follows the read skips it rather than parse it a second time (`_wire_paste`).
    just_read = gr.State(None)

    def read(path: str | None) -> tuple[str, dict[str, Any], str]:
        if not path:
            return "", {}, ""
        try:
            raw, parsed = service.read_parameters(path)
        except OSError as error:  # a JPEG or WebP (no PNG text chunks), or a PNG cut short
            log.info("PNG info: %s", error)
            return NO_PARAMETERS, {}, NO_PARAMETERS
        if raw is None:
            return NO_PARAMETERS, {}, NO_PARAMETERS
        return raw, parsed, raw

    # Queued (so a failure shows its message), in a queue of its own: at most PNG_INFO_CONCURRENCY run at once,
    # beside the GPU jobs, never behind them.
    image.change(read, image, [text, fields, just_read], api_name="png_info", concurrency_id="png_info",
                 concurrency_limit=PNG_INFO_CONCURRENCY)
    _wire_paste(service, text, fields, just_read)
    return image, fields, send


def _wire_paste(service: Service, text: gr.Textbox, fields: gr.JSON, just_read: gr.State) -> None:
    """Typing or pasting into the parameters box parses it into the fields "Send to text to image" uses. Outside
    the queue: the parse is a few regular expressions over a text of bounded length.

    On `change`, not `input`: Gradio's Textbox sends `input` from key presses only, so a text pasted with the
    mouse would never be read. A change also follows each image read: the text the read put there (`just_read`)
    has its fields already, so that one change leaves them as they are and forgets the text (typed back in later,
    it is parsed)."""

    def parse(pasted: Any, read_text: Any) -> tuple[Any, None]:
        if isinstance(read_text, str) and pasted == read_text:
            return gr.skip(), None
        if not isinstance(pasted, str) or not pasted.strip() or pasted == NO_PARAMETERS:
            return {}, None
        if len(pasted) > MAX_PASTED_CHARS:
            raise gr.Error(TOO_LONG, print_exception=False)
        return service.parse_parameters(pasted), None

    text.change(parse, [text, just_read], [fields, just_read], api_name="png_info_text", api_visibility="private",
                queue=False, show_progress="hidden")
