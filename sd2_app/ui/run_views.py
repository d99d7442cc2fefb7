"""What a Generate run starts and what its progress shows, for `common.stream_result` (the one run path of the UI).

A `RunView` is made per run. `RequestView` serves every tab's request (`Service.run`): each step with a preview
shows it with "Step n/N", and a run with no news for a while shows its place at the GPU gate. The X/Y/Z plot has
its own (`xyz_plot.PlotView`): finished cells join the gallery as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import gradio as gr
from PIL import Image

from sd2_app.api.requests import Request
from sd2_app.ui.runner import WAIT_POLL_S, QueuePlace, RunFlag, timed_call

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service


class RunView(Protocol):
    # Seconds without news after which the run looks up its place at the GPU gate; None: it never does.
    idle_s: float | None

    def call(self, service: Service, request: Request, session: str, flag: RunFlag) -> Callable[..., Result]:
        """The job, as `runner.stream` calls it; made when the run starts (its timings begin with the queue)."""
        ...

    def shown(self, done: int, total: int, preview: Image.Image | None, place: QueuePlace) -> tuple[Any, str] | None:
        """After step `done` of `total`: (the gallery's update, the info line), or None to show nothing new."""
        ...


class RequestView:
    """One request of a tab: `Service.run`, with its place at the GPU gate while it waits there."""

    idle_s = WAIT_POLL_S

    def call(self, service: Service, request: Request, session: str, flag: RunFlag) -> Callable[..., Result]:
        return timed_call(service.run, request, session, flag)

    def shown(self, done: int, total: int, preview: Image.Image | None, place: QueuePlace) -> tuple[Any, str] | None:
        # a step ends the wait the line may still show (`started` first: it also forgets the shown place, so a
        # later idle poll cannot show the queue again)
        if place.started() or preview is not None:
            return gr.skip(), f"Step {done}/{total}"
        return None
