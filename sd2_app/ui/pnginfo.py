"""PNG info: read the A1111 `parameters` text of a PNG (ours or another tool's) and send it to text to image.

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


def build(service: Service) -> tuple[gr.Image, gr.JSON, gr.Button]:
    with gr.Row():
        with gr.Column():
            image = guard_image(gr.Image(label="PNG with parameters", type="filepath", image_mode=None,
                                         sources=["upload"], height=320, elem_id="pnginfo-image"))
        with gr.Column():
            text = gr.Textbox(label="parameters", lines=6, buttons=["copy"], elem_id="pnginfo-text")
            fields = gr.JSON(label="Fields")
            send = gr.Button("Send to text to image", elem_id="pnginfo-send")

    def read(path: str | None) -> tuple[str, dict[str, Any]]:
        if not path:
            return "", {}
        try:
            raw, parsed = service.read_parameters(path)
        except OSError as error:  # a JPEG or WebP (no PNG text chunks), or a PNG cut short
            log.info("PNG info: %s", error)
            return "This image carries no generation parameters.", {}
        if raw is None:
            return "This image carries no generation parameters.", {}
        return raw, parsed

    # Queued (so a failure shows its message), in a queue of its own: at most PNG_INFO_CONCURRENCY run at once,
    # beside the GPU jobs, never behind them.
    image.change(read, image, [text, fields], api_name="png_info", concurrency_id="png_info",
                 concurrency_limit=PNG_INFO_CONCURRENCY)
    return image, fields, send
