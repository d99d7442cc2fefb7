"""Runs a Service call in a worker thread and streams its progress to a Gradio generator handler.

`Service.run` is blocking and reports progress through callbacks; Gradio streams what a generator yields.
The bridge is a queue: the worker puts (done, total, preview) events, the handler drains them, moves the
progress bar and yields previews. Stop sets the flag of that tab's run, which the service checks at every step
(and the Stop button also cancels a job that is still waiting in the queue). The finished images reach the browser as
the PNG files the Service encoded (`shown_files.shown_files`), not as images for Gradio to encode a second time.

The worker threads belong to one app: `build_ui` makes its `StopFlags` with their `JobThreads`, and the app's
`close` (`sd2_app.ui.lifecycle.AppBlocks`) stops every job and ends the threads.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from sd2_app.api.checked import Checked
from sd2_app.api.service import ProgressFn, Result
from sd2_app.api.timing import log_split, timed
from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.fork_safety import renew_in_forked_child
from sd2_app.ui.shown_files import shown_files

if TYPE_CHECKING:
    from sd2_app.ui.hosting import Visitors

log = logging.getLogger(__name__)

GPU_QUEUE = "gpu"  # the one concurrency id of every event that may touch the GPU
STOP_WAIT_S = 30.0  # the longest Stop waits for the image so far: a step, a decode and the saving
STOPPED_PAGES = 256  # pages whose last Stop's run `StopFlags` remembers for its image so far (the oldest go)
WAIT_POLL_S = 0.5  # how often a run with no progress yet asks for its place at the GPU gate


def queued_message(ahead: int) -> str:
    """The info line while a run waits at the GPU gate (with --batch-users, or behind A1111 API jobs), where
    Gradio's own queue would show its position."""
    return f"Queued: {ahead} job{'' if ahead == 1 else 's'} ahead of yours…"


class QueuePlace:
    """A run's place at the GPU gate as its info line and progress bar last said it, so they change only when
    it does."""

    def __init__(self, starting: str) -> None:
        self.starting = starting  # the info line of a run that is not waiting
        self.shown: int | None = None  # jobs ahead last said; None: not waiting
        self.stepped = False  # whether the run's first step came

    def update(self, ahead: int | None, progress: gr.Progress) -> str | None:
        """The new info line for `ahead` jobs ahead (None or 0: not waiting), with the bar's text set to match;
        None when nothing changed."""
        ahead = ahead or None
        if ahead == self.shown:
            return None
        self.shown = ahead
        message = queued_message(ahead) if ahead is not None else self.starting
        progress(0, desc=message if ahead is not None else "Loading the model…")
        return message

    def started(self) -> bool:
        """A step came: True for the run's first (the line still says `starting` or a place in the queue, while
        the bar counts steps; on a slow device the first preview is several steps away), False after."""
        first, self.stepped, self.shown = not self.stepped, True, None
        return first


Page = tuple[str | None, int | None]  # (Gradio session hash: one page load or one API client, event number)


class RunFlag(threading.Event):
    """A run's stop flag, with how far the run got (steps `done` of `total`, or the run view's own `note`) for the
    message after Stop, and the `page` whose event it runs (what a tab's Stop stops: `StopFlags.stop_page`)."""

    def __init__(self, page: Page | None = None) -> None:
        super().__init__()
        self.done = 0
        self.total = 0
        self.note: str | None = None  # what Stop says instead of the steps, where the view counts better (plot cells)
        self.page = page
        self.outcome: Future[Result] | None = None  # the run's call on its worker thread (`stream`)
        self.closing = False  # the app's close set it (`StopFlags.stop_everyone`): nothing is kept
        self.created = time.perf_counter()  # when the job joined the queue (`hosting` makes its flag then)
        # Skip (A1111's): the running batch ends at its next step and the run goes on (`batch_count.run_batches`).
        # Not carried into a forked ZeroGPU worker: there Skip does nothing.
        self.skip = threading.Event()

    def keeps_image(self) -> bool:
        """Whether a Stop after a sampling step keeps the image so far (`Service.run`'s `keep_stopped`): a
        visitor's Stop does, the app's close does not."""
        return not self.closing

    def waited(self) -> float:
        """Seconds since the flag was made: a queued job's wait for its turn, when asked as it starts."""
        return time.perf_counter() - self.created

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (a ZeroGPU call's arguments go to its forked worker so: spaces/zero/wrappers.py), a flag is a
        # copy of its state; its lock stays behind. Stop reaches that worker as the closing of its stream.
        return (_flag_copy, (self.is_set(), self.done, self.total, self.created))


def _flag_copy(is_set: bool, done: int, total: int, created: float) -> RunFlag:
    flag = RunFlag()
    flag.done, flag.total, flag.created = done, total, created
    if is_set:
        flag.set()
    return flag


class JobThreads:
    """The worker threads that one app's jobs run on (`stream`); `close` ends them with the app.

    The GPU queue's concurrency limit (`Service.concurrency`) bounds how many of them run jobs at once; the pool
    starts a thread only when no idle one is left.
    """

    def __init__(self, max_workers: int = 64) -> None:
        new_pool = functools.partial(ThreadPoolExecutor, max_workers=max_workers, thread_name_prefix="sd2-run")
        self._pool = new_pool()
        # A forked child (ZeroGPU's worker: sd2_app/fork_safety.py) gets a pool of its own: the parent's threads do
        # not run there, and its copy of the pool would count them as idle and start none.
        renew_in_forked_child(self, _pool=new_pool)

    def submit(self, call: Callable[..., Result], *args: object) -> Future[Result]:
        """Start `call(*args)` on a worker thread (raises RuntimeError once the threads are closed)."""
        return self._pool.submit(call, *args)

    def close(self) -> None:
        """Take no more jobs and wait until the running ones have returned (stop them first: `StopFlags`)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class StopFlags:
    """Stop flags per visitor: a tab's Stop stops that tab's jobs, running or still queued, and nobody else's.

    A visitor may have several jobs (a running one and queued ones, up to the per-visitor limit, from several
    tabs of a page or several browser tabs); each has its own flag, which names the page and event it runs
    (`RunFlag.page`). `visitors` names the visitor of a request and reaches the jobs still waiting in Gradio's
    queue; `threads` are the worker threads the app's jobs run on (a new set unless given).
    """

    def __init__(self, visitors: Visitors, threads: JobThreads | None = None) -> None:
        self.visitors = visitors
        self.threads = threads if threads is not None else JobThreads()
        self._flags: dict[str, set[RunFlag]] = {}
        self._stopped: dict[tuple[str, Page], RunFlag] = {}  # the run each page's last Stop ended mid-sampling
        self._closing = False  # the app is closing (`closing`): its stopped runs keep nothing
        self._lock = threading.Lock()
        renew_in_forked_child(self, _lock=threading.Lock)  # a ZeroGPU worker (forked) arms its runs' flags

    def visitor(self, request: gr.Request | None) -> str:
        """The server-issued id of the request's visitor (see `sd2_app.ui.visitors`)."""
        return self.visitors.identify(request)

    def arm(self, session: str, flag: RunFlag | None = None) -> RunFlag:
        """The flag of a run that is starting now: `flag` (the one its queue place got) or a new one."""
        flag = flag if flag is not None else RunFlag()
        with self._lock:
            self._flags.setdefault(session, set()).add(flag)
            flag.closing = flag.closing or self._closing
        return flag

    def release(self, session: str, flag: threading.Event) -> None:
        """Forget a finished run's flag, so sessions do not pile up."""
        with self._lock:
            flags = self._flags.get(session)
            if flags is not None:
                flags.discard(flag)  # type: ignore[arg-type]
                if not flags:
                    del self._flags[session]

    def stop_page(self, session: str, page: Page) -> tuple[RunFlag | None, int]:
        """Set the flags of the visitor `session`'s running and queued jobs of `page` (one tab's event in one page
        load): (the running flag that got furthest, or None; how many queued jobs were stopped). The visitor's
        jobs of other tabs and other page loads go on, as A1111's Interrupt and ComfyUI's Cancel stop only the
        run they belong to."""
        with self._lock:
            running = [flag for flag in self._flags.get(session, ()) if flag.page == page]
        for flag in running:
            flag.set()
        furthest = max(running, key=lambda flag: (flag.total > 0, flag.done), default=None)
        if furthest is not None and furthest.total:
            with self._lock:
                self._stopped[(session, page)] = furthest
                while len(self._stopped) > STOPPED_PAGES:  # an API client's Stop is never asked for it
                    del self._stopped[next(iter(self._stopped))]
        return furthest, self.visitors.stop_waiting(session, page)

    def skip_page(self, session: str, page: Page) -> RunFlag | None:
        """Skip in the visitor `session`'s running job of `page` (one tab's event in one page load): its running
        batch ends at its next step and its next batch starts (`RunFlag.skip`). The running flag, or None when
        none runs (a queued job is not skipped)."""
        with self._lock:
            running = [flag for flag in self._flags.get(session, ()) if flag.page == page and not flag.is_set()]
        for flag in running:
            flag.skip.set()
        return running[0] if running else None

    def kept_after_stop(self, session: str, page: Page, wait_s: float = STOP_WAIT_S) -> Result | None:
        """The result of the run the page's last Stop (`stop_page`) ended mid-sampling: the images so far, kept
        (saved, in History) by its worker thread, which ends after its current step and a decode; None when that
        Stop ended no such run, or it brought no such result within `wait_s` seconds (its message stays)."""
        with self._lock:
            flag = self._stopped.pop((session, page), None)
        if flag is None or flag.outcome is None:
            return None
        try:
            result = flag.outcome.result(timeout=wait_s)
        except Exception:  # noqa: BLE001  # stopped before its first step, refused, still running: the message stays
            return None
        return result if getattr(result, "stopped_at", None) is not None else None

    def closing(self) -> list[RunFlag]:
        """The app is closing: every run, running or starting later, keeps nothing when it stops
        (`RunFlag.keeps_image`), whether `stop_everyone` stops it or Gradio's close ends its handler first; the
        running ones' flags."""
        with self._lock:
            self._closing = True
            running = [flag for flags in self._flags.values() for flag in flags]
        for flag in running:
            flag.closing = True
        return running

    def stop_everyone(self) -> int:
        """Set every running job's flag (the app is closing: `closing`); how many there were."""
        running = self.closing()
        for flag in running:
            flag.set()
        return len(running)


def stream(
    call: Callable[[ProgressFn, Callable[[], bool]], Result],
    flag: threading.Event,
    threads: JobThreads,
    idle_s: float | None = None,
) -> Iterator[tuple[int, int, Image.Image | None] | Result | None]:
    """Start `call(on_progress, should_stop)` on one of `threads` now; the iterator yields (done, total, preview)
    while it runs, and its result last. With `idle_s`, it also yields None after each `idle_s` seconds without
    news (the caller may look up the run's place in the queue then).

    The call's end wakes the iterator at once (no polling interval between the result and the browser).
    The iterator raises what the call raised (`InvalidRequest`, `Cancelled`, or a bug with its traceback).
    """
    events: queue.Queue[tuple[int, int, Image.Image | None] | None] = queue.Queue()
    future: Future[Result] = threads.submit(call, lambda d, t, p: events.put((d, t, p)), flag.is_set)
    if isinstance(flag, RunFlag):
        flag.outcome = future  # what a Stop that cancels the handler still shows (`StopFlags.kept_after_stop`)
    future.add_done_callback(lambda _: events.put(None))  # after the call's last progress event
    return _drain(events, future, flag, idle_s)


def _drain(
    events: queue.Queue[tuple[int, int, Image.Image | None] | None], future: Future[Result], flag: threading.Event,
    idle_s: float | None,
) -> Iterator[tuple[int, int, Image.Image | None] | Result | None]:
    try:
        while True:
            try:
                event = events.get(timeout=idle_s)
            except queue.Empty:
                yield None
                continue
            if event is None:
                break
            yield event
    finally:
        flag.set()  # the handler was closed (cancelled or the client left): stop the worker at its next step
    yield future.result()


def user_message(error: InvalidRequest | Cancelled) -> str:  # noqa: D103
    """The text the user sees for a refused or stopped run."""
    return "Stopped." if isinstance(error, Cancelled) else str(error)


def stopped_message(flag: RunFlag | None) -> str:
    """What Stop leaves in the info line: how far the run got."""
    if flag is None:
        return "Stopped before it started."
    if flag.note:
        return flag.note
    if flag.total:
        return f"Stopped after {flag.done}/{flag.total} steps."
    return "Stopped before sampling began."


def timed_call(run: Callable[..., Result], request: Checked, owner: str, flag: RunFlag,
               **options: Any) -> Callable[..., Result]:
    """`run(request, ...)` (`Service.run`, or `Service.plot` with its `on_cell` in `options`) as `stream` calls it;
    its timings start with the job's wait in the queue."""
    timings = {"queue": flag.waited()}
    return lambda on_progress, should_stop: run(request, on_progress, should_stop, owner=owner, timings=timings,
                                                **options)


Finish = Callable[[Result, list[str] | list[Image.Image]], tuple]  # (result, its shown files) -> outputs


def deliver(result: Result, finish: Finish) -> Iterator[tuple]:
    """The finished outputs: the final image in the live preview, then `finish(result, shown)`'s, with `shown`
    the result's files (`shown_files`, made once for both); their "display" and "deliver" phases timed and the
    request's log line written (`sd2_app.api.timing`)."""
    with timed(result.timings, "display"):
        shown = shown_files(result)
        outputs = finish(result, shown)
    with timed(result.timings, "deliver"):
        yield (shown[0] if shown else gr.skip(), *outputs)
    log_split(result.task, result.timings)
