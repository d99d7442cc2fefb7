"""The app's start and end: `AppBlocks`, the Gradio app `build_ui` returns, launches for untrusted visitors and
closes in order, losing no saved result.

`AppBlocks.launch` is Gradio's launch with what serving visitors needs (`sd2_app.ui.hosting.for_visitors`): the
visitor-cookie and upload-budget middlewares, the per-visitor and per-address limits on Gradio's queue, the
sweep of the app's cached files, and the queue's direct REST routes closed; and the jobs of a client that has
gone, or that cancels its job, stop at their next step (`sd2_app.ui.departures`, `sd2_app.ui.cancels`); every
launcher (app.py, a Space, the tests) gets them.

`AppBlocks.close()` (which app.py calls when the server stops: Ctrl+C, SIGTERM) first stops taking work (Gradio's
queue and server), then stops the running jobs at their next step and waits for their threads (a job that had
finished still hands its result to the Service, which saves it), then waits for the results still being
written (`Service.flush_saves`, at most `FLUSH_TIMEOUT_S`). What the app owns for its life, the job threads
and the stop flags (`sd2_app.ui.runner.StopFlags`), ends here.

Front ends beside Gradio's queue (the A1111 API, `sd2_app.api.a1111_routes.A1111Api`) run their jobs on the
server's request threads; `stop_at_close` hands them to the app. `close` tells them first to take no new job and
to stop theirs (uvicorn's shutdown waits for open requests, so their stopped jobs answer their clients while the
server still sends), and waits for those jobs, and for work that cannot stop midway such as a checkpoint load (at
most `FLUSH_TIMEOUT_S`), before the pending saves.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import gradio as gr
from gradio.exceptions import InvalidPathError
from pydantic import ValidationError
from starlette.middleware import Middleware

from sd2_app.ui.cancels import CancelMiddleware
from sd2_app.ui.departures import stop_jobs_when_streams_close
from sd2_app.ui.hosting import Hosting, for_visitors
from sd2_app.ui.mcp_server import ready_mcp_server
from sd2_app.ui.raw_values import guard_quick_events, quick_event, refusal
from sd2_app.ui.uploads import local_file_references

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.ui.runner import StopFlags

log = logging.getLogger(__name__)

UNREADABLE_FILE_VALUE = ("A file value the request sent could not be read: upload the file to this server first "
                         "(/gradio_api/upload) and send the path it answers.")
FLUSH_TIMEOUT_S = 60.0  # the longest the app waits at close for results still being written, or for stopped jobs
# of another front end to return (one that is loading a model stops only when the load is done)


class OutsideJobs(Protocol):
    """The jobs of a front end beside Gradio's queue, as `AppBlocks.close` stops them (`A1111Api`)."""

    def stop_everyone(self) -> int:
        """Take no new job; stop the waiting and running ones at their next step; how many there were."""
        ...

    def wait_for_jobs(self, timeout: float) -> bool:
        """Wait until every job (and every checkpoint load) has returned; False when some remain after `timeout`
        seconds."""
        ...


class AppBlocks(gr.Blocks):
    """`gr.Blocks` that owns the app's job threads and stop flags, launches for visitors under the operator's
    `hosting` settings and closes in order (module docstring)."""

    def __init__(self, service: Service, flags: StopFlags, hosting: Hosting, **blocks: Any) -> None:
        super().__init__(**blocks)
        self.service = service
        self.flags = flags
        self.hosting = hosting
        self._outside: list[OutsideJobs] = []

    def stop_at_close(self, jobs: OutsideJobs) -> None:
        """Have `close` stop the jobs of a front end beside Gradio's queue (module docstring)."""
        self._outside.append(jobs)

    def launch(self, *args: Any, app_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Gradio's `launch`, serving visitors: `app_kwargs` gets the app's middlewares and cache sweep added, and
        the queue is watched (`sd2_app.ui.hosting.for_visitors`); a closed event stream stops its session's jobs
        (`sd2_app.ui.departures`), and so does a client's cancel of its job (`sd2_app.ui.cancels`); a quick event
        refuses junk in words (`raw_values.guard_quick_events`); the MCP server calls only its tools and says what
        image arguments it takes (`sd2_app.ui.mcp_server`).

        Gradio's launch then asks its own page once, with a 3 s timeout, and raises "When localhost is not
        accessible, a shareable link must be created" when no answer came (gradio/blocks.py, `launch`, and
        gradio/networking.py, `url_ok`): a check meant to send notebooks to a share link. On a loaded host the
        answer can come later, and the app would not start for that alone; the launch skips that probe (its
        `_frontend` flag, which Gradio 6.31 reads for nothing else). A launcher that wants it passes the flag."""
        kwargs.setdefault("_frontend", False)
        guard_quick_events(self)
        app_kwargs = for_visitors(self, self.flags.visitors, self.hosting, app_kwargs)
        app_kwargs["middleware"] = [*app_kwargs["middleware"], Middleware(CancelMiddleware, queue=self._queue)]
        stop_jobs_when_streams_close(self._queue)
        app_kwargs["lifespan"] = ready_mcp_server(self, app_kwargs.get("lifespan"))
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        """Gradio's `preprocess_data`, which every event's values pass through (queued or not, `/run/predict`
        included) before their files are moved to Gradio's cache, where a file named by URL would be downloaded
        whole: such a file is refused here (`sd2_app.ui.uploads.local_file_references`; a queue join is refused
        earlier, at join, by `sd2_app.ui.hosting`)."""
        refused = local_file_references(inputs)
        if refused is not None:
            log.info("refused an event: a file given by URL")
            raise gr.Error(refused, print_exception=False)
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except (InvalidPathError, ValidationError) as error:  # a path not uploaded here; a file value of no shape
            log.info("refused an event: a file value it cannot take (%s)", type(error).__name__)
            raise gr.Error(UNREADABLE_FILE_VALUE, print_exception=False) from None

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        """Gradio's check that an event got a value for each of its inputs. Gradio's own raised a ValueError that
        the queue printed with a traceback and every value received (a request's whole body, megabytes a call,
        into the host's log) and told the client nothing (`show_error=False`); this refuses in one line."""
        needed, got = len(block_fn.inputs), len(inputs)
        if got < needed:
            log.info("refused an event: %d of its %d values sent", got, needed)
            raise gr.Error(f"This endpoint takes {needed} values, in the order its API page lists them; the "
                           f"request sent {got}.", print_exception=False)

    async def process_api(self, block_fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Gradio's `process_api` (every event, queued or not): a quick event (`raw_values.quick_event`) that fails
        on the values sent answers in words (`raw_values.refusal`), not HTTP 500 with `{"error": null}`."""
        try:
            return await super().process_api(block_fn, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:  # noqa: BLE001  # a visitor's bad value must not become a traceback
            fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
            if not quick_event(fn):
                raise
            raise refusal(fn, error) from None

    def close(self, verbose: bool = True) -> None:
        """Stop taking work, stop the running jobs, end their threads, then wait for the pending saves.

        Safe to call more than once, and on an app that was never launched.
        """
        stopped = sum(jobs.stop_everyone() for jobs in self._outside)  # before the server: they answer now
        self.flags.closing()  # before Gradio's close ends the runs' handlers: a run stopped so keeps nothing
        super().close(verbose)  # Gradio: the queue starts no more events, the server takes no more requests
        stopped += self.flags.stop_everyone()
        if stopped:
            log.info("closing: stopping %d job(s)", stopped)
        self.flags.threads.close()  # every job has returned; a finished one has queued its save
        if not all([jobs.wait_for_jobs(timeout=FLUSH_TIMEOUT_S) for jobs in self._outside]):
            log.warning("closing with API jobs still running after %.0f s", FLUSH_TIMEOUT_S)
        if not self.service.flush_saves(timeout=FLUSH_TIMEOUT_S):
            log.warning("closing with results still being saved after %.0f s", FLUSH_TIMEOUT_S)
