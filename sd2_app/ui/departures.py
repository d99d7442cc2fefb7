"""A visitor who has gone gives the GPU back: the jobs of an event stream that closed stop at their next step.

A client reads its events' progress and results on one event stream per session (GET /gradio_api/queue/data, or
/gradio_api/call/<api>/<event_id> for gradio_client's and curl's calls). When that connection closes (the page was
closed or reloaded, the browser or the network went away, an API client exited), Gradio calls its queue's
`clean_events(session_hash=...)` (gradio/routes.py, `queue_data_helper`): the session's waiting events leave the
queue and its running ones are marked not alive, but a running handler is closed only when it next yields
(gradio/queueing.py, `Queue.process_events`): a run kept the GPU until its next live preview (every few steps), its
next plot cell, or a change of its place at the GPU gate, and a job waiting at the gate behind API jobs waited on.

`stop_jobs_when_streams_close` wraps `clean_events` so that it first sets the stop flag of each GPU job of that
session (the flag `sd2_app.ui.hosting` gave the job when it joined, which its run checks at every step and while
it waits at the GPU gate): the run ends at its next step and the next visitor's job starts. Only that session's
jobs stop: another tab (its own session, under the same visitor cookie) and other visitors keep theirs. What a
stopped job had finished stays where Stop leaves it (an X/Y/Z plot's finished cells in the visitor's History).
"""

from __future__ import annotations

import logging
from typing import Any

from sd2_app.ui.hosting import stop_flag_of

log = logging.getLogger(__name__)


def events_of(queue: Any, session_hash: str | None, event_id: str | None) -> list[Any]:
    """The events of the Gradio queue `queue`, waiting or running, of the session `session_hash` or with the id
    `event_id` (as gradio/queueing.py's `Queue.clean_events` picks them; a None names nothing)."""
    running = [event for job in queue.active_jobs if job for event in job]
    events = {id(event): event for event in [*running, *queue.event_ids_to_events.values()]}
    return [event for event in events.values()
            if (session_hash is not None and event.session_hash == session_hash)
            or (event_id is not None and event._id == event_id)]


def stop_jobs_of(queue: Any, session_hash: str | None, event_id: str | None) -> int:
    """Set the stop flag of each GPU job of `events_of(queue, session_hash, event_id)` that is not stopped yet;
    how many were set."""
    flags = [stop_flag_of(event.request) for event in events_of(queue, session_hash, event_id)]
    stopped = [flag for flag in flags if flag is not None and not flag.is_set()]
    for flag in stopped:
        flag.set()
    return len(stopped)


def stop_jobs_when_streams_close(queue: Any) -> None:
    """Wrap the Gradio queue `queue`'s `clean_events` to set the stop flags of the closed stream's jobs first
    (module docstring); a second call changes nothing."""
    clean_events = queue.clean_events
    if getattr(clean_events, "sd2_stops_jobs", False):
        return

    async def stopping_clean_events(*, session_hash: str | None = None, event_id: str | None = None) -> None:
        stopped = stop_jobs_of(queue, session_hash, event_id)
        if stopped:
            log.info("the client left: stopping %d job(s) of its session", stopped)
        await clean_events(session_hash=session_hash, event_id=event_id)

    stopping_clean_events.sd2_stops_jobs = True  # type: ignore[attr-defined]
    queue.clean_events = stopping_clean_events
