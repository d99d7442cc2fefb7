"""The body of every Generate handler (`stream_result`): the run of the request `run_events` built from the widget
values and checked, the service's progress streamed (bar with the step count, live preview every few steps, the
run's place while it waits at the GPU gate) and the result, or the message of a run that cannot go on (`refuse`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.errors import Cancelled, InvalidRequest, LoadError
from sd2_app.api.checked import Checked
from sd2_app.ui.result_panel import warning_text
from sd2_app.ui.run_views import RequestView, RunView
from sd2_app.ui.runner import Finish, QueuePlace, RunFlag, StopFlags, deliver, stopped_message, stream, user_message
from sd2_app.ui.shown_files import shown_preview

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service

log = logging.getLogger(__name__)

STOPPING = "Stopping at the next step…"  # what a late preview shows after Stop, until the run has ended
STARTING = "Starting…"  # from the run's start until its first preview


def load_failed_message(service: Service, checkpoint: object) -> str:
    """What a visitor is told when a checkpoint cannot be loaded: no folders, repo ids or errors (log only)."""
    labels = getattr(getattr(service, "catalog", None), "labels", {}) or {}
    label = labels.get(checkpoint, checkpoint) if isinstance(checkpoint, str) else "requested"
    return f"The {label} model could not be loaded; the operator has the details."


def refuse(message: str, n_outputs: int) -> Iterator[tuple]:
    """A run that cannot go on: `message` in the info line (where "Starting…" would stay; the toast fades),
    then raised as the `gr.Error` Gradio shows as a toast."""
    yield (gr.skip(), gr.skip(), message, *(gr.skip(),) * (n_outputs - 3))
    raise gr.Error(message, print_exception=False)


def stream_result(
    service: Service,
    flags: StopFlags,
    checked: Checked,
    session: str,
    progress: gr.Progress,
    n_outputs: int,
    queued_flag: RunFlag | None = None,
    view: RunView | None = None,
    keep_result: bool = True,
) -> Iterator[tuple | Result]:
    """The body of every Generate handler's GPU call, for its `checked` request: yields (preview, status) updates,
    then the `Result`, which the handler delivers (`delivering`) in the app's process.

    Outputs are always (preview, gallery, info, last_seeds, selected, *extras). `queued_flag` is the stop flag the
    job got when it joined the queue: when Stop set it while the job waited, the run ends before its first step
    with "Stopped.". `view` starts the job and says what each step shows (`run_views`; None: `RequestView`, one
    request). `keep_result`: whether the job keeps its result (`Service.run`; `sd2_app.api.gpu_call.GpuCall` decides).
    """
    view = view if view is not None else RequestView()
    flag = flags.arm(session, queued_flag)
    # The job starts now, not after this update; with no news for a while it may be waiting at the GPU gate.
    run = stream(view.call(service, checked, session, flag, keep_result), flag, flags.threads, idle_s=view.idle_s)
    progress(0, desc="Loading the model…")
    keep = (gr.skip(),) * (n_outputs - 3)
    place = QueuePlace(STARTING)
    try:
        yield (gr.skip(), gr.skip(), STARTING, *keep)
        for item in run:
            if item is None:  # no news for a while: say the run's place when it waits at the GPU gate
                if (status := place.update(None if flag.total else service.jobs_ahead(flag.is_set), progress)):
                    yield (gr.skip(), gr.skip(), status, *keep)
            elif isinstance(item, tuple):
                if (update := _step_update(view, item, flag, place, progress)) is not None:
                    yield (*update, *keep)
            else:
                yield item
    except GeneratorExit:  # closed (cancelled, or the client left), maybe before `run` started: stop the job
        flag.set()
        raise
    except Cancelled:
        yield (gr.skip(), gr.skip(), stopped_message(flag), *keep)
    except InvalidRequest as error:
        log.info("refused a request: %s", error)
        yield from refuse(user_message(error), n_outputs)
    except LoadError as error:
        log.warning("load failed: %s", error)  # the detail (folders, repo ids) stays in the server log
        checkpoint = getattr(getattr(checked.request, "base", checked.request), "checkpoint", None)
        yield from refuse(load_failed_message(service, checkpoint), n_outputs)
    finally:
        flags.release(session, flag)


def delivering(items: Iterator[tuple | Result], finish: Finish) -> Iterator[tuple]:
    """`stream_result`'s yields passed on, its `Result` (kept by then: `GpuCall.stream`) delivered, in the app's
    process (`delivered`). Closing this closes `items` (Stop reaches the run)."""
    try:
        for item in items:
            if isinstance(item, tuple):
                yield item
            else:
                yield from delivered(item, finish)
    finally:
        getattr(items, "close", lambda: None)()


def delivered(result: Result, finish: Finish) -> Iterator[tuple]:
    """The result's warnings as toasts, then its outputs (`runner.deliver`)."""
    for warning in result.warnings:
        gr.Warning(warning_text(warning))
    yield from deliver(result, finish)


def _step_update(view: RunView, step: tuple[int, int, Image.Image | None], flag: RunFlag, place: QueuePlace,
                 progress: gr.Progress) -> tuple | None:
    """The progress bar moved to a finished step; the (preview, gallery, info) it shows, if anything is new: a
    preview, new gallery items from the view, or the run's first step (the line said "Starting…" or a place)."""
    done, total, preview = step
    flag.done, flag.total = done, total
    progress((done, total), desc="Sampling", unit="steps")
    first = place.started()  # always asked: it forgets the place, so a later idle poll cannot show it again
    gallery = view.new_gallery()
    if not (first or preview is not None or gallery is not None):
        return None
    # After Stop, a late preview must not put the step back over the stop message.
    return (shown_preview(preview) if preview is not None else gr.skip(), gr.skip() if gallery is None else gallery,
            STOPPING if flag.is_set() else view.status(done, total))
