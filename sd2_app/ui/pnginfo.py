"""PNG info: read the A1111 `parameters` text of a PNG (ours or another tool's), or take that text pasted in (as
A1111 and Civitai copy it), and send it to text to image.

The text chunks are read without decoding the pixels, and the reads have a queue of their own in which at most
`PNG_INFO_CONCURRENCY` run at once (the rest wait, bounded by the queue's size), so a flood of calls stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TYPE_CHECKING, TypeVar

import gradio as gr

from sd2_app.api.quick_reads import PNG_INFO_CONCURRENCY
from sd2_app.pipelines.metadata import MAX_PARAMETERS_CHARS
from sd2_app.ui.uploads import unopened_path

if TYPE_CHECKING:
    from sd2_app.api.service import Service

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PASTED_CHARS = MAX_PARAMETERS_CHARS  # the longest parameters text the box takes, as read from a PNG
PASTE_INFO = "read from the image, or paste a generation's parameters here (as A1111 or Civitai copy them)"
TOO_LONG = f"Pasted parameters must be at most {MAX_PASTED_CHARS} characters."
NO_PARAMETERS = "This image carries no generation parameters."
# "Send to text to image" with nothing read: no image, an image without parameters, or an emptied text box.
# PNG info's reads wait in a queue of their own: at most PNG_INFO_CONCURRENCY run at once, beside the GPU jobs,
# never behind them.
PNG_INFO_QUEUE = {"concurrency_id": "png_info", "concurrency_limit": PNG_INFO_CONCURRENCY}
NOTHING_TO_SEND = ("There are no generation parameters to send: upload a PNG that carries them, or paste them into "
                   "Parameters.")


def build(service: Service) -> tuple[gr.Image, gr.Textbox, gr.Button]:
    """PNG info's widgets and reads; returns (image, parameters text, "Send to text to image"). The send takes the
    text and parses it itself (`parsed_text`): the Fields shown come from a parse that may still be on its way
    when a visitor clicks Send right after the text appears."""
    with gr.Row():
        with gr.Column():
            image = unopened_path(gr.Image(label="PNG with parameters", type="filepath", image_mode=None,
                                           sources=["upload"], height=320, elem_id="pnginfo-image"))
        with gr.Column():
            # The browser cuts a longer paste at max_length; the server refuses a longer text sent otherwise.
            text = gr.Textbox(label="Parameters", info=PASTE_INFO, lines=6, max_length=MAX_PASTED_CHARS,
                              interactive=True, buttons=["copy"], elem_id="pnginfo-text")
            fields = gr.JSON(label="Fields")
            send = gr.Button("Send to text to image", elem_id="pnginfo-send")

    def read(path: str | None) -> tuple[str, dict[str, Any]]:
        if not path:
            return "", {}
        raw, parsed = _unless_unreadable(service.read_parameters, path) or (None, {})
        return (NO_PARAMETERS, {}) if raw is None else (raw, parsed)

    def read_text(path: str | None) -> str:
        """The page's read: the text only; the box's change parses it (`_wire_paste`), once."""
        if not path:
            return ""
        raw = read_text_unless_unreadable(service, path)
        return NO_PARAMETERS if raw is None else raw

    # Both queued (so a failure shows its message) in PNG info's queue. The page reads an upload's text; API
    # clients call `png_info` for the text and its fields, through a trigger the page never fires (so an upload is
    # not read twice).
    queue = PNG_INFO_QUEUE
    image.change(read_text, image, text, api_name="png_info_read", api_visibility="private", **queue)
    api_only = gr.Button(visible=False, elem_id="pnginfo-api")
    api_only.click(read, image, [text, fields], api_name="png_info", **queue)
    _wire_paste(service, text, fields)
    return image, text, send


def read_text_unless_unreadable(service: Service, path: str) -> str | None:
    """The parameters text of the image at `path`; None when it has none or is not a PNG."""
    return _unless_unreadable(service.read_parameters_text, path)


def _unless_unreadable(reader: Callable[[str], T], path: str) -> T | None:
    """`reader(path)`, or None for a JPEG or WebP (no PNG text chunks) or a PNG cut short."""
    try:
        return reader(path)
    except OSError as error:
        log.info("PNG info: %s", error)
        return None


def parsed_text(service: Service, pasted: Any) -> dict[str, Any]:
    """The fields of a parameters text from the page (anything may come over HTTP): {} for no text, a non-text or
    NO_PARAMETERS; a text longer than the box takes is refused."""
    if not isinstance(pasted, str) or not pasted.strip() or pasted == NO_PARAMETERS:
        return {}
    if len(pasted) > MAX_PASTED_CHARS:
        raise gr.Error(TOO_LONG, print_exception=False)
    return service.parse_parameters(pasted)


def _wire_paste(service: Service, text: gr.Textbox, fields: gr.JSON) -> None:
    """Typing or pasting into the parameters box parses it into the fields "Send to text to image" uses. Outside
    the queue: the parse is a few regular expressions over a text of bounded length.

    On `change`, not `input`: Gradio's Textbox sends `input` from key presses only, so a text pasted with the
    mouse would never be read. A change also follows each image the page reads: the fields of its text come from
    here too."""

    text.change(lambda pasted: parsed_text(service, pasted), text, fields, api_name="png_info_text",
                api_visibility="private", queue=False, show_progress="hidden")
