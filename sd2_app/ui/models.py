"""Models: what is loaded where, memory, the repo used, disk use; load and unload where visitors may.

In public modes (`Hosting.model_admin` off) the tab is read-only: no Load/Unload buttons and no such API
endpoints, and the repos (which may name the operator's private folders) are not shown. A load error is
always shown as a generic line; the server log has the detail.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.gpu_time import gpu
from sd2_app.errors import InvalidRequest, LoadError
from sd2_app.ui.run_stream import load_failed_message
from sd2_app.ui.narrow_tables import LAPTOP, NARROW, TABLET, narrow_table_css
from sd2_app.ui.runner import GPU_QUEUE

if TYPE_CHECKING:
    from sd2_app.api.service import Service

log = logging.getLogger(__name__)

StatusView = tuple[list[list[Any]], str]  # (the status table's rows, the memory line)


def _plain(value: Any) -> Any:
    """Manager status (dataclasses, paths, dicts) -> JSON-friendly values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


COLUMNS = ["key", "label", "location", "device", "repo", "revision", "size", "shared", "error"]
HEADERS = ["Checkpoint", "Name", "Loaded", "Device", "Repository", "Revision", "Size", "Shared parts", "Last error"]
# On a phone: what is loaded and its size, with any error (the memory line above names the device).
PHONE_COLUMNS = {"Name": 36, "Loaded": 24, "Size": 16, "Last error": 24}
# Wider, each at a share that holds its header (a long repository path wraps in its cell): Gradio sized the
# columns to their text, so from a tablet to a laptop the last ones were cut off at the box's edge and the
# squeezed headers stood one letter a line. On a tablet, all but the key (the name says it) and the revision.
TABLET_COLUMNS = {"Name": 20, "Loaded": 15, "Device": 11, "Repository": 22, "Size": 9, "Shared parts": 12,
                  "Last error": 11}
LAPTOP_COLUMNS = {"Checkpoint": 13, "Name": 16, "Loaded": 10, "Device": 9, "Repository": 15, "Revision": 11,
                  "Size": 8, "Shared parts": 9, "Last error": 9}
LOCATIONS = {"device": "on the device", "offloaded": "offloaded to host memory", "none": "not loaded"}


def _size(nbytes: Any) -> str:
    if not isinstance(nbytes, (int, float)) or nbytes <= 0:
        return ""
    if nbytes < 1e5:  # a few small saved images: "0.0 MB" read as nothing
        return f"{max(1, round(nbytes / 1e3))} kB"
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


LOAD_FAILED = "could not be loaded; the operator has the details"
HIDDEN = "(hidden)"


def status_view(service: Service, *, admin: bool = True) -> StatusView:
    """Manager status -> (table rows, memory and disk lines); without `admin` the repos are hidden."""
    status = _plain(service.status())
    rows = []
    for row in status.get("models") or []:
        row = dict(row, size=_size(row.get("nbytes")), shared=", ".join(row.get("shared") or []),
                   location=LOCATIONS.get(row.get("location"), row.get("location")))
        if row.get("error"):
            row["error"] = LOAD_FAILED
        if not admin and row.get("repo"):
            row.update(repo=HIDDEN, revision="")
        rows.append(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    memory = status.get("memory") or {}
    line = "No memory report." if not memory else (
        f"**{memory.get('device')}**: models use {_size(memory.get('device_used')) or '0'} of a "
        f"{_size(memory.get('device_budget'))} budget"
        + (f" ({_size(memory.get('device_free'))} free)" if memory.get("device_free") else "")
        + f"; offloaded to host memory: {_size(memory.get('offload_used')) or '0'} of "
        f"{_size(memory.get('offload_budget'))}."
    )
    return rows, line + "\n\n" + disk_line(service)


def disk_line(service: Service) -> str:
    """Disk used by saved results (and how long they are kept)."""
    usage = service.disk_usage() if hasattr(service, "disk_usage") else None
    if usage is None:
        return "**Disk**: results are not saved."
    files, nbytes, keep_days = usage
    kept = f"kept {keep_days:g} days" if keep_days else "kept until the operator deletes them"
    return f"**Disk**: {files} saved files, {_size(nbytes) or '0 MB'} ({kept})."


def table_css() -> str:
    """The status table's columns and their shares: PHONE_COLUMNS on a phone, TABLET_COLUMNS on a tablet, every
    column (LAPTOP_COLUMNS) on a laptop or wider, so they always fit beside each other."""
    return "".join(narrow_table_css("models-status", HEADERS, shown, media)
                   for shown, media in ((PHONE_COLUMNS, NARROW), (TABLET_COLUMNS, TABLET), (LAPTOP_COLUMNS, LAPTOP)))


def build(service: Service, *, admin: bool = True) -> tuple[Callable[[], StatusView], list[gr.components.Component]]:
    """The Models view; returns its refresh function and outputs (the tab refreshes them when selected).

    Without `admin` the view is read-only: the load and unload events (and their API endpoints) do not exist.
    """
    keys = [(service.catalog.labels.get(k, k), k) for k in service.registry]
    with gr.Row():
        checkpoint = gr.Dropdown(keys, value=keys[0][1], label="Checkpoint", scale=3, visible=admin)
        load = gr.Button("Load", variant="primary", elem_id="models-load", scale=1, visible=admin)
        unload = gr.Button("Unload", elem_id="models-unload", scale=1, visible=admin)
        refresh = gr.Button("Refresh", elem_id="models-refresh", scale=1)
    if not admin:
        gr.Markdown("Models are loaded when a job needs them; loading and unloading by hand is turned off on "
                    "this server.", elem_id="models-read-only")
    memory = gr.Markdown(elem_id="models-memory")
    table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="models-status")
    outputs = [table, memory]

    def current() -> StatusView:
        return status_view(service, admin=admin)

    refresh.click(current, None, outputs, api_name="models_status", queue=False)
    if admin:
        unload_all = _unload_all_buttons()
        _wire_admin(service, checkpoint, load, unload, unload_all, outputs, current)
    return current, outputs


@dataclasses.dataclass
class UnloadAllButtons:
    """"Unload all models…" and the confirmation it opens (unloading happens only on "Yes, unload all")."""

    ask: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    cancel: gr.Button


UNLOAD_ALL_QUESTION = ("Unload every loaded model? Jobs still run afterwards, but each first loads its model "
                       "again, which takes a while.")


def _unload_all_buttons() -> UnloadAllButtons:
    """Under the table, away from Load, in plain style: a click only asks (Yes / Cancel)."""
    with gr.Row(equal_height=True):
        ask = gr.Button("Unload all models…", size="sm", scale=0, min_width=180, elem_id="models-unload-all")
    with gr.Row(visible=False, equal_height=True, elem_id="models-unload-all-confirm") as confirm_row:
        gr.Markdown(UNLOAD_ALL_QUESTION, elem_id="models-unload-all-question")
        confirm = gr.Button("Yes, unload all", variant="stop", size="sm", scale=0, min_width=150,
                            elem_id="models-unload-all-yes")
        cancel = gr.Button("Cancel", size="sm", scale=0, min_width=100, elem_id="models-unload-all-cancel")
    return UnloadAllButtons(ask, confirm_row, confirm, cancel)


def unload_message(checkpoint: str | None, label: str | None, unloaded: list[str]) -> str:
    """What Unload (`checkpoint`, shown as `label`) or Unload all (None) says, from the keys it unloaded."""
    if checkpoint is None:
        return "All models are unloaded." if unloaded else "No model was loaded."
    return f"{label} is unloaded." if unloaded else f"{label} was not loaded; nothing to unload."


def _wire_admin(service: Service, checkpoint: gr.Dropdown, load: gr.Button, unload: gr.Button,
                unload_all: UnloadAllButtons, outputs: list[gr.components.Component],
                current: Callable[[], StatusView]) -> None:
    """Load, Unload and Unload all (on the GPU queue: they wait for the running job); Unload all asks first."""

    @gpu(duration=300)
    def do_load(checkpoint: str) -> StatusView:  # API parameter names match the requests'
        try:
            service.load(checkpoint)
        except InvalidRequest as error:
            raise gr.Error(str(error), print_exception=False) from error
        except LoadError as error:
            log.warning("load of %s failed: %s", checkpoint, error)
            raise gr.Error(load_failed_message(service, checkpoint), print_exception=False) from error
        gr.Info(f"{service.catalog.labels.get(checkpoint, checkpoint)} is loaded.")
        return current()

    def do_unload(checkpoint: str | None) -> StatusView:
        try:
            unloaded = service.unload(checkpoint)
        except InvalidRequest as error:
            raise gr.Error(str(error), print_exception=False) from error
        gr.Info(unload_message(checkpoint, service.catalog.labels.get(checkpoint or "", checkpoint), unloaded))
        return current()

    gpu_event = {"concurrency_id": GPU_QUEUE, "concurrency_limit": service.concurrency}
    load.click(do_load, checkpoint, outputs, api_name="load_model", **gpu_event)
    unload.click(do_unload, checkpoint, outputs, api_name="unload_model", **gpu_event)
    asking = [unload_all.ask, unload_all.confirm_row]
    private = {"queue": False, "api_visibility": "private"}
    unload_all.ask.click(lambda: (gr.update(visible=False), gr.update(visible=True)), None, asking, **private)
    unload_all.cancel.click(lambda: (gr.update(visible=True), gr.update(visible=False)), None, asking, **private)
    unload_all.confirm.click(lambda: (gr.update(visible=True), gr.update(visible=False)), None, asking, **private)
    unload_all.confirm.click(lambda: do_unload(None), None, outputs, api_name="unload_all", **gpu_event)
