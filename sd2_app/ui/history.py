"""History: this visitor's recent results with their settings (the files are in the outputs folder).

Each visitor sees only what they made (the server-issued visitor id of `sd2_app.ui.visitors`, never a value
the client chose), and file names without the server's folders.
"""

from __future__ import annotations

import time
from typing import Any, TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from sd2_app.api.service import Service


def _rows(service: Service, visitors: Any, request: gr.Request | None) -> tuple[list[tuple[Any, str]], list[list[Any]]]:
    images: list[tuple[Any, str]] = []
    rows: list[list[Any]] = []
    for entry in service.history(owner=visitors.identify(request)):  # the owner the Generate handlers use
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created))
        images += [(image, f"{entry.task} · seed {entry.seed}") for image in entry.images]
        saved = ", ".join(f"{p.parent.name}/{p.name}" for p in entry.saved) or "(not saved)"
        rows.append([when, entry.task, entry.seed, len(entry.images), entry.parameters, saved])
    return images, rows


def build(service: Service, visitors: Any) -> tuple[Any, list[Any]]:
    """The History view; returns its refresh function and outputs (the tab refreshes them when selected).

    `visitors` (a `sd2_app.ui.hosting.Visitors`) names the visitor of a request.
    """
    where = "the outputs folder" if service.outputs_dir is not None else "nowhere (saving is off)"
    gr.Markdown(f"Recent results, newest first. Every result is also written with its settings to **{where}**.")
    refresh = gr.Button("Refresh", elem_id="history-refresh")
    gallery = gr.Gallery(label="Recent images", format="png", columns=6, height="auto", interactive=False,
                         elem_id="history-gallery")
    table = gr.Dataframe(headers=["time", "task", "seed", "images", "parameters", "files"], wrap=True,
                         interactive=False, elem_id="history-table")
    def rows(request: gr.Request) -> tuple[list[tuple[Any, str]], list[list[Any]]]:
        return _rows(service, visitors, request)

    refresh.click(rows, None, [gallery, table], api_name="history", queue=False)
    return rows, [gallery, table]
