"""PNG info: read the A1111 `parameters` text of a PNG (ours or another tool's) and send it to text to image.

The text chunks are read without decoding the pixels, and at most `PNG_INFO_CONCURRENCY` reads run at once
(a request that finds them all busy for `PNG_INFO_WAIT_S` is refused), so a flood of calls stays cheap.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.ui.uploads import guard_image

if TYPE_CHECKING:
    from sd2_app.api.service import Service

log = logging.getLogger(__name__)

PNG_INFO_CONCURRENCY = 2
PNG_INFO_WAIT_S = 2.0
BUSY = "PNG info is busy; try again in a moment."


def build(service: Service) -> tuple[gr.Image, gr.JSON, gr.Button]:
    with gr.Row():
        with gr.Column():
            image = guard_image(gr.Image(label="PNG with parameters", type="filepath", image_mode=None,
                                         sources=["upload"], height=320, elem_id="pnginfo-image"))
        with gr.Column():
            text = gr.Textbox(label="parameters", lines=6, buttons=["copy"], elem_id="pnginfo-text")
            fields = gr.JSON(label="Fields")
            send = gr.Button("Send to text to image", elem_id="pnginfo-send")
    slots = threading.BoundedSemaphore(PNG_INFO_CONCURRENCY)

    def read(path: str | None) -> tuple[str, dict[str, Any]]:
        if not path:
            return "", {}
        if not slots.acquire(timeout=PNG_INFO_WAIT_S):
            log.info("refused a PNG info call: %d already running", PNG_INFO_CONCURRENCY)
            raise gr.Error(BUSY, print_exception=False)
        try:
            raw, parsed = service.read_parameters(path)
        except OSError as error:  # a JPEG or WebP (no PNG text chunks), or a PNG cut short
            log.info("PNG info: %s", error)
            return "This image carries no generation parameters.", {}
        finally:
            slots.release()
        if raw is None:
            return "This image carries no generation parameters.", {}
        return raw, parsed

    # Queued (so a failure shows its message), in a queue of its own: at most PNG_INFO_CONCURRENCY run at once,
    # beside the GPU jobs, never behind them.
    image.change(read, image, [text, fields], api_name="png_info", concurrency_id="png_info",
                 concurrency_limit=PNG_INFO_CONCURRENCY)
    return image, fields, send
