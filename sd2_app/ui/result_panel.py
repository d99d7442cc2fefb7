"""The result panel of a generation tab: the gallery (whole images, the grid sized to the batch), the info line
under it (`describe`: seed, timings, warnings, parameters), "send to" buttons, the live preview and the tab's
extra output; `selected_image` is the gallery item a "send to" carries.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.api.timing import summary

if TYPE_CHECKING:
    from sd2_app.api.service import Result


@dataclass
class ResultPanel:
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Markdown
    extra: gr.components.Component | None  # an image; the X/Y/Z plot's tables (a File)
    last_seed: gr.State
    selected: gr.State
    send_buttons: dict[str, gr.Button]
    run: gr.Button
    stop: gr.Button


GALLERY_HEIGHT = 440  # px: with the prompt row above, the whole result fits a 900 px high window


def gallery_columns(count: int) -> int:
    """Columns for `count` results: one image fills the box, a batch makes a near-square grid."""
    return max(1, math.ceil(math.sqrt(count)))


def _picked(event: gr.SelectData) -> int:
    return int(event.index)


def result_panel(
    prefix: str,
    run: gr.Button,
    stop: gr.Button,
    *,
    extra_label: str | None = None,
    send_to: Sequence[tuple[str, str]] = (),
) -> ResultPanel:
    """PNG gallery (parameters embedded, downloadable; whole images, the grid sized to the batch), info text,
    "send to" buttons, the live preview and the tab's extra image."""
    gallery = gr.Gallery(label="Results", format="png", columns=1, height=GALLERY_HEIGHT, object_fit="contain",
                         type="filepath", interactive=False, buttons=["download", "fullscreen"],
                         elem_id=f"{prefix}-gallery")
    info = gr.Markdown(elem_id=f"{prefix}-info", elem_classes=["result-info"])
    buttons: dict[str, gr.Button] = {}
    if send_to:
        with gr.Row():
            for target, label in send_to:
                buttons[target] = gr.Button(f"Send to {label}", size="sm", elem_id=f"{prefix}-send-{target}")
    with gr.Row(equal_height=False):
        preview = gr.Image(label="Live preview", type="pil", interactive=False, height=160, format="png",
                           elem_id=f"{prefix}-preview")
        extra = None
        if extra_label:
            extra = gr.Image(label=extra_label, type="pil", interactive=False, format="png", height=160,
                             elem_id=f"{prefix}-extra")
    selected = gr.State(0)
    gallery.select(_picked, None, selected, api_name=f"{prefix}_select", api_visibility="private", queue=False)
    return ResultPanel(preview, gallery, info, extra, gr.State(None), selected, buttons, run, stop)


def warning_text(warning: str) -> str:
    """A warning as the info line and the toast show it: `<`, `>` and `&` as HTML entities, so the prompt text a
    warning quotes (`<lora:name:0.8>`) is shown, not read as a tag or a link by the Markdown and HTML renderers."""
    return html.escape(warning, quote=False)


def describe(result: Result) -> str:
    """Markdown under the gallery: seed, timings, warnings and the parameters text."""
    seconds = summary(result.timings)
    lines = [f"**Seed** {result.seed} · {seconds}"]
    lines += [f"- ⚠️ {warning_text(w)}" for w in result.warnings]
    if result.parameters:
        # A fence longer than any backtick run in the text, so a prompt with ``` cannot close it early.
        longest = max((len(run) for run in re.findall(r"`+", result.parameters)), default=0)
        fence = "`" * max(3, longest + 1)
        lines += ["", f"{fence}text", result.parameters, fence]
    return "\n".join(lines)


def too_large_to_send(limit: int) -> str:
    """What a "send to" of a gallery image over PIL's pixel limit (twice `Image.MAX_IMAGE_PIXELS`) says."""
    return (f"This image is too large to send on (over {limit:,} pixels, as a big X/Y/Z grid can be); pick one of "
            "its cells instead.")


def selected_image(gallery: Any, index: Any) -> Image.Image:
    """The picked gallery item as a PIL image; gallery values are (image, caption) pairs, the image a file path
    (the panels' galleries decode nothing ahead: a grid over PIL's pixel limit failed every event that took the
    gallery) or a PIL image. A file PIL refuses to open is said in words."""
    if not gallery:
        raise gr.Error("Generate an image first.", print_exception=False)
    index = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    item = gallery[index]
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, str):
        try:
            image = Image.open(image)
        except Image.DecompressionBombError as error:
            raise gr.Error(too_large_to_send(2 * (Image.MAX_IMAGE_PIXELS or 0)), print_exception=False) from error
    return image
