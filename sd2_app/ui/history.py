"""History: this visitor's recent results with their settings (the files are in the outputs folder).

Each visitor sees only what they made (the server-issued visitor id of `sd2_app.ui.visitors`, never a value
the client chose), and file names without the server's folders. A picked image
can be sent on, or its settings reused in Text to image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.ui.narrow_tables import narrow_table_css
from sd2_app.ui.result_panel import IMAGE_TARGETS, seed_span, send_row
from sd2_app.ui.shown_files import shown_files

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.ui.hosting import Visitors

# (gallery images with captions, table rows); the images are the encoded PNG files (`shown_files`)
Rows = tuple[list[tuple[str | Image.Image, str]], list[list[Any]]]

HISTORY_GALLERY_HEIGHT = 400  # px
HISTORY_HEADERS = ["Time", "Task", "Seed", "Images", "Parameters", "Files"]
HISTORY_PHONE_COLUMNS = {"Task": 24, "Parameters": 76}  # on a phone (the parameters name the seed and size)
# Shares of the table's width (Gradio: "10%" is of the table's box), so a 1024 px window shows the files too.
HISTORY_COLUMN_WIDTHS = ["12%", "8%", "11%", "7%", "42%", "20%"]


@dataclass
class HistoryView:
    refresh: Callable[[gr.Request], Rows]  # the tab calls it when selected
    outputs: list[gr.components.Component]
    gallery: gr.Gallery
    selected: gr.State  # the picked image's index
    reuse: gr.Button
    send_buttons: dict[str, gr.Button]


def _rows(service: Service, visitors: Visitors, request: gr.Request | None) -> Rows:
    images: list[tuple[str | Image.Image, str]] = []
    rows: list[list[Any]] = []
    for entry in service.history(owner=visitors.identify(request)):  # the owner the Generate handlers use
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created))
        seeds = entry.image_seeds or [entry.seed]
        images += [(image, f"{entry.task} · seed {seed}") for image, seed in zip(shown_files(entry), seeds)]
        saved = ", ".join(f"{p.parent.name}/{p.name}" for p in entry.saved) or "(not saved)"
        seed = seeds[0] if len(set(seeds)) == 1 else seed_span(seeds)  # a number, or the seeds in words
        rows.append([when, entry.task, seed, len(entry.images), entry.parameters, saved])
    return images, rows


def phone_css() -> str:
    """The table's style on narrow screens: HISTORY_PHONE_COLUMNS only, so they fit beside each other."""
    return narrow_table_css("history-table", HISTORY_HEADERS, HISTORY_PHONE_COLUMNS)


def build(service: Service, visitors: Visitors) -> HistoryView:
    """The History view; the tab refreshes it when selected. `visitors` names the visitor of a request."""
    where = "the outputs folder" if service.outputs_dir is not None else "nowhere (saving is off)"
    gr.Markdown(f"Recent results, newest first. Every result is also written with its settings to **{where}**.")
    refresh = gr.Button("Refresh", elem_id="history-refresh")
    # Whole images as thumbnails in a box of fixed height (static/app.css keeps the columns: Gradio makes as
    # many as there are images, so a lone result was a square as wide as the page, mostly out of view).
    gallery = gr.Gallery(label="Recent images (pick one to reuse or send it)", format="png", columns=6,
                         height=HISTORY_GALLERY_HEIGHT, object_fit="contain", interactive=False,
                         elem_id="history-gallery")
    reuse = gr.Button("Reuse its settings in text to image", size="sm", elem_id="history-reuse")
    buttons = send_row("history", IMAGE_TARGETS)
    # Widths that fit the page: without them the parameters ran off its right edge and hid the files.
    table = gr.Dataframe(headers=HISTORY_HEADERS, wrap=True,
                         column_widths=HISTORY_COLUMN_WIDTHS, interactive=False, elem_id="history-table")
    selected = gr.State(0)

    def picked(event: gr.SelectData) -> int:
        return int(event.index)

    gallery.select(picked, None, selected, api_name="history_select", api_visibility="private", queue=False)

    def rows(request: gr.Request) -> Rows:
        return _rows(service, visitors, request)

    refresh.click(rows, None, [gallery, table], api_name="history", queue=False)
    refresh.click(lambda: 0, None, selected, api_name="history_unpick", api_visibility="private", queue=False)
    return HistoryView(rows, [gallery, table], gallery, selected, reuse, buttons)
