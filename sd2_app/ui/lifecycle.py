"""The app's end: `AppBlocks`, the Gradio app `build_ui` returns, closes in order and loses no saved result.

`AppBlocks.close()` (which app.py calls when the server stops: Ctrl+C, SIGTERM) first stops taking work (Gradio's
queue and server), then stops the running jobs at their next step and waits for their threads (a job that had
finished still hands its result to the Service, which saves it), then waits for the results still being
written (`Service.flush_saves`, at most `FLUSH_TIMEOUT_S`). What the app owns for its life, the job threads
and the stop flags (`sd2_app.ui.runner.StopFlags`), ends here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gradio as gr

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.ui.runner import StopFlags

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 60.0  # the longest the app waits at close for results still being written


class AppBlocks(gr.Blocks):
    """`gr.Blocks` that owns the app's job threads and stop flags and closes in order (module docstring)."""

    def __init__(self, service: Service, flags: StopFlags, **blocks: Any) -> None:
        super().__init__(**blocks)
        self.service = service
        self.flags = flags

    def close(self, verbose: bool = True) -> None:
        """Stop taking work, stop the running jobs, end their threads, then wait for the pending saves.

        Safe to call more than once, and on an app that was never launched.
        """
        super().close(verbose)  # Gradio: the queue starts no more events, the server takes no more requests
        stopped = self.flags.stop_everyone()
        if stopped:
            log.info("closing: stopping %d running job(s)", stopped)
        self.flags.threads.close()  # every job has returned; a finished one has queued its save
        if not self.service.flush_saves(timeout=FLUSH_TIMEOUT_S):
            log.warning("closing with results still being saved after %.0f s", FLUSH_TIMEOUT_S)
