"""Generate and Stop of a generation tab, wired (`wire_run`): the buttons' states, the run on the GPU queue
(`run_stream.stream_result`), its API name and parameter names, and Stop, which cancels it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, NamedTuple, TYPE_CHECKING

import gradio as gr
from gradio.events import Dependency
from PIL import Image

from sd2_app.api.checked import Checked, check
from sd2_app.api.gpu_call import GpuCall
from sd2_app.api.gpu_time import gpu_calls_may_fork
from sd2_app.api.requests import Request
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_styles import StyleBook
from sd2_app.ui.hosting import stop_flag_of
from sd2_app.ui.layout import GENERATE, RUNNING
from sd2_app.ui.raw_values import server_checked
from sd2_app.ui.read_parameters import parameters_in_prompt
from sd2_app.ui.result_panel import ResultPanel, describe, gallery_columns
from sd2_app.ui.run_stream import delivering, refuse, stream_result
from sd2_app.ui.run_views import RequestView, RunView
from sd2_app.ui.runner import GPU_QUEUE, Finish, RunFlag, StopFlags, deliver, stopped_message
from sd2_app.ui.sampling_controls import BATCH_COUNT_NAME, ETA_NAME

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service

log = logging.getLogger(__name__)

NOTHING_TO_STOP = "Nothing to stop."  # Stop from a visitor with no job, running or queued
NOTHING_TO_SKIP = "Nothing to skip: no run of this tab is making images."
SKIPPING = ("Skipping: the batch (or plot cell) being made ends at its next step, its image so far kept, and the "
            "next one starts (with one batch, the run ends there).")
SKIP_UNREACHABLE = "Skip cannot reach a run on ZeroGPU (it runs in a worker process of its own); Stop ends it."
QUEUED = "Queued…"  # the info line from Generate until the run starts
NOT_STARTED = "Not started; the message at the top says why."  # a run that never began (its join refused)


def wire_run(
    service: Service,
    flags: StopFlags,
    panel: ResultPanel,
    inputs: list[gr.components.Component],
    make_request: Callable[..., Request],
    api_name: str,
    names: Sequence[str],
    *,
    finish_extra: Callable[[Result], tuple] = lambda result: (),
    view: Callable[[], RunView] = RequestView,
    styles: gr.Dropdown | None = None,
    eta: gr.Slider | None = None,
    batch_count: gr.Slider | None = None,
) -> Dependency:
    """Connect Generate (streaming, on the GPU queue) and Stop; returns the run event.

    `styles`, the tab's Styles picker (None: the host has no styles), is the run's last input, `styles` in the
    API: the picked styles are applied to the request's prompts before the Service validates it, so the token
    limits, prompt editing and the parameters text all see the expanded prompts (sd2_app/prompt_styles.py).
    `eta`, the tab's Eta slider, comes after it (`eta` in the API, the last parameter): the request's
    `Sampling.eta`, which the Service checks. `batch_count`, the tab's Batch count slider, comes last
    (`batch_count` in the API): the request's `Sampling.batch_count` (sd2_app/api/batch_count.py).

    `view` makes each run's `RunView` (`stream_result`): a tab that streams more than previews has its own (the
    X/Y/Z plot shows each finished cell as it comes)."""
    # `selected` goes back to 0 with every new result: an index picked in the previous gallery must not make
    # "Send to" carry another image of the new one.
    outputs: list[gr.components.Component] = [panel.preview, panel.gallery, panel.info, panel.last_seeds,
                                              panel.selected]
    if panel.extra is not None:
        outputs.append(panel.extra)

    def finish(result: Result, shown: list[str] | list[Image.Image]) -> tuple:
        # `shown`: the files the Service encoded, served as they are (no second PNG encode by Gradio)
        gallery = list(zip(shown, result.captions or [None] * len(result.images)))
        return (gallery, describe(result), result.image_seeds, 0, *finish_extra(result))

    if styles is not None:
        inputs, names = [*inputs, styles], (*names, "styles")
        make_request = _styled(make_request, service.styles)
    if eta is not None:
        inputs, names = [*inputs, eta], (*names, ETA_NAME)
        make_request = _with_sampling(make_request, "eta", 0.0)
    if batch_count is not None:
        inputs, names = [*inputs, batch_count], (*names, BATCH_COUNT_NAME)
        make_request = _with_sampling(make_request, "batch_count", 1)
    assert len(names) == len(inputs), (api_name, names)
    # On a tab with ↙, a prompt that holds a generation's parameters is run as it is, and the result says so.
    notes = partial(parameters_in_prompt, service) if panel.read is not None else None
    handler = _generate_handler(service, flags, make_request, names, finish, len(outputs), view, notes)
    server_checked(inputs)
    said = StopSaid(gr.State(0), gr.State(None))
    event = _wire_generate(panel, handler, inputs, outputs, api_name, service.concurrency, said)
    _wire_stop(panel, flags, event, api_name, outputs, finish, said)
    if panel.skip is not None:
        _wire_skip(panel.skip, flags, event, api_name)
    return event


def _styled(make_request: Callable[..., Request], book: StyleBook) -> Callable[..., Request]:
    """`make_request` of the widget values but the last, the picked style names, applied to its prompts."""

    def styled(*values: Any) -> Request:
        return book.applied_to(make_request(*values[:-1]), values[-1])

    return styled


def _with_sampling(make_request: Callable[..., Request], field: str, default: Any) -> Callable[..., Request]:
    """`make_request` of the widget values but the last, which is set as its sampling's `field` (eta, batch
    count; `default` where a caller sent none)."""

    def with_field(*values: Any) -> Request:
        request = make_request(*values[:-1])
        value = default if values[-1] is None else values[-1]
        return replace(request, sampling=replace(request.sampling, **{field: value}))  # type: ignore[type-var]

    return with_field


def _generate_handler(
    service: Service,
    flags: StopFlags,
    make_request: Callable[..., Request],
    names: Sequence[str],
    finish: Finish,
    n_outputs: int,
    view: Callable[[], RunView],
    notes: Callable[[Request], list[str]] | None = None,
) -> Callable[..., Iterator[tuple]]:
    """The Generate event's function: widget values in (named after the request fields), `stream_result`'s yields
    out. The request is built from the values and checked once, before the GPU call (`on_gpu`): ZeroGPU prices the
    call from that checked request, and the run runs it as it is (sd2_app/api/checked.py). `notes`: warnings of
    the tab's own about the checked request, said with the result's."""

    # ZeroGPU: each call asks for the GPU time its own job needs, and where it may run in a forked worker its
    # result is kept here (sd2_app/api/gpu_call.py). Its arguments are pickled into that worker
    # (spaces/zero/wrappers.py), so they are plain values, not the gr.Request (its state holds the queued job's
    # stop flag); there a stop comes as the closing of this generator.
    def on_gpu(checked: Checked, queued: RunFlag | None, progress: gr.Progress, *, owner: str,
               keep: bool) -> Iterator[tuple | Result]:
        yield from stream_result(service, flags, checked, owner, progress, n_outputs, queued_flag=queued,
                                 view=view(), keep_result=keep)

    call = GpuCall(service, on_gpu)

    def handler(request: gr.Request, *values: Any) -> Iterator[tuple]:
        # Gradio passes (request, *widget values, progress tracker) by position: see the signature below.
        *widget_values, progress = values
        try:
            checked = check(service, make_request(*widget_values))
            checked.warnings.extend(notes(checked.request) if notes is not None else ())
        except InvalidRequest as error:  # refused before any GPU time is asked for
            log.info("refused a request: %s", error)
            return (yield from refuse(str(error), n_outputs))
        run = call.stream(checked, stop_flag_of(request), progress, owner=flags.visitor(request))
        yield from delivering(run, finish)

    # Name the API parameters after the request fields (gradio_client users call `prompt=...`, not `param_1=...`).
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("request", positional, annotation=gr.Request)]
        + [inspect.Parameter(name, positional, default=None) for name in names]
        + [inspect.Parameter("progress", positional, default=gr.Progress())]
    )
    return handler


def _idle() -> tuple:  # new dicts per call: Gradio consumes an update's "value" when it applies it
    return gr.update(value=GENERATE, interactive=True), gr.update(interactive=False)


class StopSaid(NamedTuple):
    """A tab's page state for the info line after Stop (`_wire_stop`): `runs`, the page's runs of the tab so far
    (Generate counts them); `line`, once Stop stopped a run, its message, then (that run's number, what its info
    line ends with)."""

    runs: gr.State
    line: gr.State


def _wire_generate(panel: ResultPanel, handler: Callable[..., Iterator[tuple]],
                   inputs: list[gr.components.Component], outputs: list[gr.components.Component], api_name: str,
                   concurrency: int, said: StopSaid) -> Dependency:
    """Generate: the buttons say a run is on and the last run's results go (so nothing old passes for new), then
    the run itself (the API event, returned), then the buttons come back, whether it succeeded, failed or stopped.
    `said`: the page's runs counted, and what Stop said of one (`_wire_stop`), which its info line ends with."""
    clear = (None,) * (len(outputs) - 5)  # the extra images; the seed and pick stay
    started = panel.run.click(
        lambda runs: (gr.update(value=RUNNING, interactive=False), gr.update(interactive=True), None, None, QUEUED,
                      *clear, runs + 1, None),
        said.runs, [panel.run, panel.stop, panel.preview, panel.gallery, panel.info, *outputs[5:], *said],
        api_name=f"{api_name}_starts", api_visibility="private", queue=False, show_progress="hidden",
    )
    event = started.then(
        handler, inputs, outputs, api_name=api_name, concurrency_id=GPU_QUEUE, concurrency_limit=concurrency,
        show_progress_on=[panel.gallery],  # the bar covers the results, not the live preview
    )

    def ends(gallery: Any, info: Any, runs: Any, stop_said: Any, failed: bool = False) -> tuple:  # also sizes
        # the grid to the batch (the API's gallery stays a list). A join the queue refused (`ui.hosting`: the app,
        # visitor or address at its limit) never ran the handler; a run stopped ends with what Stop said of it
        # (`_wire_stop`), and Generate comes back from the end the page's cancel of its event runs (`failed`),
        # the last: a Generate clicked before it would be taken by that cancel.
        if isinstance(stop_said, tuple):  # (run, line): the line is about that run only
            stop_said = stop_said[1] if stop_said[0] == runs else None
        stopped = isinstance(stop_said, str)
        line = NOT_STARTED if info == QUEUED else stop_said if stopped else gr.update()
        buttons = _idle() if failed or not stopped else (gr.update(), gr.update(interactive=False))
        return (*buttons, gr.update(columns=gallery_columns(len(gallery or []))), line)

    # Gradio 6 runs a .then() only after a success, despite its docs, so a failed run needs .failure() as well
    # (the page's cancel of the event, by Stop, runs its .failure() events too: Gradio's Blocks `cancel`).
    # Its update of the gallery also clears the "Error" badge there: the toast has said what went wrong.
    for after, name, failed in ((event.then, f"{api_name}_ends", False), (event.failure, f"{api_name}_failed", True)):
        after(partial(ends, failed=failed), [panel.gallery, panel.info, *said],
              [panel.run, panel.stop, panel.gallery, panel.info], api_name=name, api_visibility="private",
              queue=False, show_progress="hidden")
    return event


def _wire_stop(panel: ResultPanel, flags: StopFlags, event: Dependency, api_name: str,
               outputs: list[gr.components.Component], finish: Finish, said: StopSaid) -> None:
    """Stop: the tab's run ends at its next step (its event is cancelled), and the message says how far it got;
    then a run that had begun sampling shows the images it kept so far (`StopFlags.kept_after_stop`), as A1111's
    Interrupt does.

    The run's progress updates already on their way can land after Stop's answer: the page applies them until
    the event's stream has ended (Gradio's cancel sends that end after them, gradio/routes.py, `cancel_event`),
    and a late "Starting…" or "Step 3/20" stayed in the info line. Stop's message is also kept in `said.line`, then
    with the number of the run it is about (or as the kept images' own line), and the run's end
    (`_wire_generate`'s `ends`, run after the stream's end) puts it back; a line kept late, after the next Generate,
    is not that run's. Stop's API event takes no values: the run's number is added after it (`kept`)."""

    def stop(request: gr.Request) -> tuple:
        # Cancelling the event ends its stream, so the message after Stop comes from here, not from the run.
        # Stop reaches this tab's jobs of this page, running or queued (each got its flag when it joined the
        # queue: `hosting`), not the visitor's jobs of other tabs or other pages.
        # Generate stays as it is: the run's end gives it back (`ends`), once the page has cancelled the event; a
        # Generate clicked before that was taken by the cancel (its display cleared, its buttons reset).
        flag, queued = flags.stop_page(flags.visitor(request), (request.session_hash, event["id"]))
        if flag is None and not queued:
            return (NOTHING_TO_STOP, gr.update(), gr.update(interactive=False), gr.skip())
        message = stopped_message(flag)
        return (message, gr.update(), gr.update(interactive=False), message)

    def kept(runs: int, stop_said: Any, request: gr.Request) -> tuple:
        if not isinstance(stop_said, str):  # Stop stopped nothing
            return (gr.skip(),) * (len(outputs) + 1)
        result = flags.kept_after_stop(flags.visitor(request), (request.session_hash, event["id"]))
        if result is None:
            return (*(gr.skip(),) * len(outputs), (runs, stop_said))
        shown = next(deliver(result, finish))  # (preview, gallery, info, ...)
        return (*shown, (runs, shown[2]))

    stopped = panel.stop.click(stop, None, [panel.info, panel.run, panel.stop, said.line],
                               api_name=f"{api_name}_stop", cancels=[event], queue=False)
    stopped.then(kept, list(said), [*outputs, said.line], api_name=f"{api_name}_kept", api_visibility="private",
                 queue=False, show_progress="hidden")


def _wire_skip(skip: gr.Button, flags: StopFlags, event: Dependency, api_name: str) -> None:
    """Skip (A1111's): the tab's running batch ends at its next step with its image so far and the run goes on to
    its next batch (`StopFlags.skip_page`); the run's own stream shows the rest. A toast says it."""

    def skipped(request: gr.Request) -> None:
        if gpu_calls_may_fork():  # the run's flag there is a copy (`RunFlag.__reduce__`): nothing would skip
            gr.Warning(SKIP_UNREACHABLE)
            return
        flag = flags.skip_page(flags.visitor(request), (request.session_hash, event["id"]))
        gr.Info(SKIPPING if flag is not None else NOTHING_TO_SKIP)

    # Queued (a quick event of its own, never behind the GPU jobs), so the toast reaches the page.
    skip.click(skipped, None, None, api_name=f"{api_name}_skip", api_visibility="private", show_progress="hidden")
