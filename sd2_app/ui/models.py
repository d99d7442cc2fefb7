"""Models: what is loaded where, memory, the repo used; load and unload."""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from sd2_app.errors import InvalidRequest
from sd2_app.ui.runner import GPU_QUEUE, gpu


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


def build(service: Any) -> gr.JSON:
    keys = [(spec_label, key) for key, spec_label in ((k, service.catalog.labels.get(k, k)) for k in service.registry)]
    with gr.Row():
        with gr.Column(scale=1):
            checkpoint = gr.Dropdown(keys, value=keys[0][1], label="Checkpoint")
            with gr.Row():
                load = gr.Button("Load", variant="primary", elem_id="models-load")
                unload = gr.Button("Unload", elem_id="models-unload")
            with gr.Row():
                unload_all = gr.Button("Unload all", variant="stop", elem_id="models-unload-all")
                refresh = gr.Button("Refresh", elem_id="models-refresh")
        with gr.Column(scale=2):
            status = gr.JSON(label="Loaded models, devices, memory and repos", elem_id="models-status")

    def current() -> Any:
        return _plain(service.status())

    @gpu(duration=300)
    def do_load(key: str) -> Any:
        try:
            service.load(key)
        except InvalidRequest as error:
            raise gr.Error(str(error), print_exception=False) from error
        return current()

    def do_unload(key: str | None) -> Any:
        try:
            service.unload(key)
        except InvalidRequest as error:
            raise gr.Error(str(error), print_exception=False) from error
        return current()

    gpu_event = {"concurrency_id": GPU_QUEUE, "concurrency_limit": 1}
    load.click(do_load, checkpoint, status, api_name="load_model", **gpu_event)
    unload.click(do_unload, checkpoint, status, api_name="unload_model", **gpu_event)
    unload_all.click(lambda: do_unload(None), None, status, api_name="unload_all", **gpu_event)
    refresh.click(current, None, status, api_name="models_status", queue=False)
    return status
