"""PNG info: read the A1111 `parameters` text of a PNG (ours or another tool's) and send it to text to image."""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from sd2_app.api.service import Service


def build(service: Service) -> tuple[gr.Image, gr.JSON, gr.Button]:
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="PNG with parameters", type="filepath", image_mode=None, sources=["upload"],
                             height=320, elem_id="pnginfo-image")
        with gr.Column():
            text = gr.Textbox(label="parameters", lines=6, buttons=["copy"], elem_id="pnginfo-text")
            fields = gr.JSON(label="Fields")
            send = gr.Button("Send to text to image", elem_id="pnginfo-send")

    def read(path: str | None) -> tuple[str, dict[str, Any]]:
        if not path:
            return "", {}
        raw, parsed = service.read_parameters(path)
        if raw is None:
            return "This image carries no generation parameters.", {}
        return raw, parsed

    image.change(read, image, [text, fields], api_name="png_info", queue=False)
    return image, fields, send
