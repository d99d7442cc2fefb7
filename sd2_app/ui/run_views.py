"""What a Generate run starts and what its progress shows, for `run_stream.stream_result` (the UI's one run
path).

A `RunView` is made per run: it starts the job and says what a finished step shows besides the preview (new
gallery items, the info line); `stream_result` decides when a step is shown. `RequestView` serves every tab's
request (`Service.run`): "Step n/N", or with a batch count "Batch b/B, step n/N". The X/Y/Z plot has its own
(`xyz_plot.PlotView`): finished cells join the gallery as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sd2_app.api.batch_count import batch_status, count_of, stopped_in_batch
from sd2_app.api.checked import Checked
from sd2_app.api.results import ProgressFn
from sd2_app.ui.runner import WAIT_POLL_S, RunFlag, timed_call

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service


class RunView(Protocol):
    # Seconds without news after which the run looks up its place at the GPU gate; None: it never does.
    idle_s: float | None

    def call(self, service: Service, request: Checked, session: str, flag: RunFlag,
             keep: bool = True) -> Callable[..., Result]:
        """The job, as `runner.stream` calls it; made when the run starts (its timings begin with the queue).
        `keep=False`: its result comes back unkept (`Service.run`)."""
        ...

    def new_gallery(self) -> Any | None:
        """The gallery's value when the job has produced something to show since the last step; else None."""
        ...

    def status(self, done: int, total: int) -> str:
        """The info line after step `done` of `total`."""
        ...


class RequestView:
    """One request of a tab: `Service.run`, with its place at the GPU gate while it waits there. With a batch
    count, its steps count over all the batches, and Stop says which batch it stopped in (the batches finished
    before it are kept: `batch_count.run_batches`); Skip ends the running batch (the flag's `skip`)."""

    idle_s = WAIT_POLL_S

    def __init__(self) -> None:
        self.batches = 1

    def call(self, service: Service, request: Checked, session: str, flag: RunFlag,
             keep: bool = True) -> Callable[..., Result]:
        # A visitor's Stop keeps the image so far, as A1111's Interrupt does; the app's close does not.
        run = timed_call(service.run, request, session, flag, keep=keep, keep_stopped=flag.keeps_image,
                         skip=flag.skip)
        self.batches = count = count_of(request.request)
        if count == 1:
            return run

        def noting(on_progress: ProgressFn, should_stop: Callable[[], bool]) -> Result:
            def progress(done: int, total: int, preview: Any) -> None:
                flag.note = stopped_in_batch(done, total, count, keep)  # what Stop says from now on
                on_progress(done, total, preview)

            return run(progress, should_stop)

        return noting

    def new_gallery(self) -> None:
        return None  # the results come at the end

    def status(self, done: int, total: int) -> str:
        return batch_status(done, total, self.batches)
