"""Widgets and handler plumbing shared by the generation tabs: sampling controls, the result panel, streaming.

Each tab builds its inputs, then `sampling_controls` and `result_panel`, and wires its Generate button with
`wire_run`, which turns widget values into a request (the tab's `make_request`), streams the service's
progress (bar with the step count, live preview every few steps) and shows the result or a `gr.Error`.
"""

from __future__ import annotations

import inspect
import math
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr
from gradio.events import Dependency
from PIL import Image

from sd2_app.errors import Cancelled, InvalidRequest, LoadError
from sd2_app.api.requests import Request, Sampling
from sd2_app.api.tasks import TASKS, default_checkpoint
from sd2_app.ui.hosting import stop_flag_of
from sd2_app.api.gpu_time import gpu, values_seconds
from sd2_app.api.timing import summary
from sd2_app.ui.layout import GENERATE, RUNNING
from sd2_app.ui.raw_values import server_checked
from sd2_app.ui.run_views import RequestView, RunView
from sd2_app.ui.runner import (GPU_QUEUE, Finish, QueuePlace, RunFlag, StopFlags, deliver, shown_preview,
                               stopped_message, stream, user_message)

if TYPE_CHECKING:
    from sd2_app.api.service import Result, Service

log = logging.getLogger(__name__)

NOTHING_TO_STOP = "Nothing to stop."  # Stop from a visitor with no job, running or queued
STOPPING = "Stopping at the next step…"  # what a late preview shows after Stop, until the run has ended
QUEUED = "Queued…"  # the info line from Generate until the run starts
NOT_STARTED = "Not started; the message at the top says why."  # a run that never began (its join refused)
STARTING = "Starting…"  # from the run's start until its first preview
SAMPLING_NAMES = ("sampler", "use_karras", "steps", "cfg_scale", "guidance_rescale", "seed", "batch_size")
EXAMPLE_PROMPTS = ("High quality photo of an astronaut riding a horse in space", "two tigers", "a white cat")


@dataclass
class SamplingControls:
    sampler: gr.Dropdown
    karras: gr.Checkbox
    steps: gr.Slider
    cfg: gr.Slider
    rescale: gr.Slider
    seed: gr.Number
    batch: gr.Slider

    def inputs(self) -> list[gr.components.Component]:
        return [self.sampler, self.karras, self.steps, self.cfg, self.rescale, self.seed, self.batch]


def to_sampling(sampler: str, karras: bool, steps: float, cfg: float, rescale: float, seed: Any, batch: float) -> Sampling:
    """Widget values -> Sampling; the service validates every field (the API bypasses the sliders)."""
    return Sampling(
        sampler=sampler,
        steps=steps,  # type: ignore[arg-type]  # validated (and made int) by the service
        use_karras=karras,
        cfg_scale=cfg,
        guidance_rescale=rescale,
        seed=None if seed is None or seed == "" else seed,
        batch_size=batch,  # type: ignore[arg-type]
    )


def checkpoint_dropdown(service: Service, task: str, **kwargs: Any) -> gr.Dropdown:
    """The checkpoints that can run `task`, the task table's default preselected."""
    choices = service.checkpoints(task)
    default = default_checkpoint(task, [key for _, key in choices])
    return gr.Dropdown(choices, value=default, label="Checkpoint", **kwargs)


def sampling_controls(
    service: Service, prefix: str, *, batch: bool = True, task: str | None = None
) -> tuple[SamplingControls, gr.Button, gr.Button]:
    """The sampler settings, seed row and batch slider, set to the defaults of `task` (default: `prefix`) in
    the task table; returns them with the (randomize, reuse) seed buttons."""
    spec = TASKS[task or prefix]
    sampler, steps, cfg = spec.sampler, spec.steps, spec.cfg_scale
    names = service.samplers()
    with gr.Row(elem_classes=["phone-stack"]):  # on a phone the checkbox goes under the list (app.css)
        sampler_box = gr.Dropdown(names, value=sampler if sampler in names else names[0], label="Sampler", scale=3,
                                  elem_id=f"{prefix}-sampler")
        karras = gr.Checkbox(False, label="Karras sigmas", info="where the sampler offers them", scale=2,
                             interactive=service.supports_karras(sampler), elem_id=f"{prefix}-karras")
    with gr.Row():
        steps_slider = gr.Slider(1, 150, steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
        cfg_slider = gr.Slider(0, 30, cfg, step=0.5, label="Guidance scale (CFG)")
    with gr.Accordion("More sampling options", open=False):
        rescale = gr.Slider(0, 1, 0, step=0.05, label="Guidance rescale", info="0.7 helps the 768-v models; 0 = off")
    with gr.Row(elem_classes=["seed-row"]):  # static/app.css lines the buttons up with the seed box
        seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, scale=3, elem_id=f"{prefix}-seed")
        randomize = gr.Button("Random seed", scale=1, size="sm", elem_id=f"{prefix}-random-seed")
        reuse = gr.Button("Reuse last seed", scale=1, size="sm", elem_id=f"{prefix}-reuse-seed")
    batch_slider = gr.Slider(1, 8, 1, step=1, label="Images per prompt", visible=batch)
    sampler_box.change(
        lambda name: gr.update(interactive=service.supports_karras(name), value=False) if not service.supports_karras(name)
        else gr.update(interactive=True),
        sampler_box, karras, api_name=f"{prefix}_karras_allowed", api_visibility="private", queue=False,
    )
    controls = SamplingControls(sampler_box, karras, steps_slider, cfg_slider, rescale, seed, batch_slider)
    return controls, randomize, reuse


@dataclass
class ResultPanel:
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Markdown
    extra: gr.components.Component | None  # an image; the X/Y/Z plot's tables (a File)
    last_seed: gr.State
    selected: gr.State
    send_buttons: dict[str, gr.Button]
    run: gr.Button
    stop: gr.Button


GALLERY_HEIGHT = 440  # px: with the prompt row above, the whole result fits a 900 px high window


def gallery_columns(count: int) -> int:
    """Columns for `count` results: one image fills the box, a batch makes a near-square grid."""
    return max(1, math.ceil(math.sqrt(count)))


def _picked(event: gr.SelectData) -> int:
    return int(event.index)


def result_panel(
    prefix: str,
    run: gr.Button,
    stop: gr.Button,
    *,
    extra_label: str | None = None,
    send_to: Sequence[tuple[str, str]] = (),
) -> ResultPanel:
    """PNG gallery (parameters embedded, downloadable; whole images, the grid sized to the batch), info text,
    "send to" buttons, the live preview and the tab's extra image."""
    gallery = gr.Gallery(label="Results", format="png", columns=1, height=GALLERY_HEIGHT, object_fit="contain",
                         type="pil", interactive=False, buttons=["download", "fullscreen"],
                         elem_id=f"{prefix}-gallery")
    info = gr.Markdown(elem_id=f"{prefix}-info", elem_classes=["result-info"])
    buttons: dict[str, gr.Button] = {}
    if send_to:
        with gr.Row():
            for target, label in send_to:
                buttons[target] = gr.Button(f"Send to {label}", size="sm", elem_id=f"{prefix}-send-{target}")
    with gr.Row(equal_height=False):
        preview = gr.Image(label="Live preview", type="pil", interactive=False, height=160, format="png",
                           elem_id=f"{prefix}-preview")
        extra = None
        if extra_label:
            extra = gr.Image(label=extra_label, type="pil", interactive=False, format="png", height=160,
                             elem_id=f"{prefix}-extra")
    selected = gr.State(0)
    gallery.select(_picked, None, selected, api_name=f"{prefix}_select", api_visibility="private", queue=False)
    return ResultPanel(preview, gallery, info, extra, gr.State(None), selected, buttons, run, stop)


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


def describe(result: Result) -> str:
    """Markdown under the gallery: seed, timings, warnings and the parameters text."""
    seconds = summary(result.timings)
    lines = [f"**Seed** {result.seed} · {seconds}"]
    lines += [f"- ⚠️ {w}" for w in result.warnings]
    if result.parameters:
        # A fence longer than any backtick run in the text, so a prompt with ``` cannot close it early.
        longest = max((len(run) for run in re.findall(r"`+", result.parameters)), default=0)
        fence = "`" * max(3, longest + 1)
        lines += ["", f"{fence}text", result.parameters, fence]
    return "\n".join(lines)


def stream_result(
    service: Service,
    flags: StopFlags,
    request_fn: Callable[[], Request],
    session: str,
    progress: gr.Progress,
    finish: Finish,
    n_outputs: int,
    queued_flag: RunFlag | None = None,
    view: RunView | None = None,
) -> Iterator[tuple]:
    """The body of every Generate handler: yields (preview, status) updates, then the finished outputs.

    Outputs are always (preview, gallery, info, last_seed, selected, *extras); `finish(result, shown)` fills
    gallery onward. `queued_flag` is the stop flag the job got when it joined the queue: when Stop set it while the
    job waited, the run ends before its first step with "Stopped.". `view` starts the job and says what each step
    shows (`run_views`; None: `RequestView`, one request).
    """
    view = view if view is not None else RequestView()
    try:
        request = request_fn()
    except InvalidRequest as error:
        log.info("refused a request: %s", error)
        return (yield from refuse(str(error), n_outputs))
    flag = flags.arm(session, queued_flag)
    # The job starts now, not after this update; with no news for a while it may be waiting at the GPU gate.
    run = stream(view.call(service, request, session, flag), flag, flags.threads, idle_s=view.idle_s)
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
                for warning in item.warnings:
                    gr.Warning(warning)
                yield from deliver(item, finish)
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
        checkpoint = getattr(getattr(request, "base", request), "checkpoint", None)
        yield from refuse(load_failed_message(service, checkpoint), n_outputs)
    finally:
        flags.release(session, flag)


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
) -> Dependency:
    """Connect Generate (streaming, on the GPU queue) and Stop; returns the run event.

    `view` makes each run's `RunView` (`stream_result`): a tab that streams more than previews has its own (the
    X/Y/Z plot shows each finished cell as it comes)."""
    # `selected` goes back to 0 with every new result: an index picked in the previous gallery must not make
    # "Send to" carry another image of the new one.
    outputs: list[gr.components.Component] = [panel.preview, panel.gallery, panel.info, panel.last_seed,
                                              panel.selected]
    if panel.extra is not None:
        outputs.append(panel.extra)

    def finish(result: Result, shown: list[str] | list[Image.Image]) -> tuple:
        # `shown`: the files the Service encoded, served as they are (no second PNG encode by Gradio)
        gallery = list(zip(shown, result.captions or [None] * len(result.images)))
        return (gallery, describe(result), result.seed, 0, *finish_extra(result))

    assert len(names) == len(inputs), (api_name, names)
    handler = _generate_handler(service, flags, make_request, names, finish, len(outputs), view)
    server_checked(inputs)
    event = _wire_generate(panel, handler, inputs, outputs, api_name, service.concurrency)
    _wire_stop(panel, flags, event, api_name)
    return event


def _generate_handler(
    service: Service,
    flags: StopFlags,
    make_request: Callable[..., Request],
    names: Sequence[str],
    finish: Finish,
    n_outputs: int,
    view: Callable[[], RunView],
) -> Callable[..., Iterator[tuple]]:
    """The Generate event's function: widget values in (named after the request fields), `stream_result`'s yields
    out."""

    # ZeroGPU: each call asks for the GPU time its own job needs (widget values -> request -> cost)
    @gpu(duration=lambda request, *values: values_seconds(service, make_request, tuple(values[:-1])))
    def handler(request: gr.Request, *values: Any) -> Iterator[tuple]:
        # Gradio passes (request, *widget values, progress tracker) by position: see the signature below.
        *widget_values, progress = values
        yield from stream_result(
            service, flags, lambda: make_request(*widget_values), flags.visitor(request), progress, finish,
            n_outputs, queued_flag=stop_flag_of(request), view=view(),
        )

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


def _wire_generate(panel: ResultPanel, handler: Callable[..., Iterator[tuple]],
                   inputs: list[gr.components.Component], outputs: list[gr.components.Component], api_name: str,
                   concurrency: int) -> Dependency:
    """Generate: the buttons say a run is on and the last run's results go (so nothing old passes for new), then
    the run itself (the API event, returned), then the buttons come back, whether it succeeded, failed or stopped."""
    clear = (None,) * (len(outputs) - 5)  # the extra images; the seed and pick stay
    started = panel.run.click(
        lambda: (gr.update(value=RUNNING, interactive=False), gr.update(interactive=True), None, None, QUEUED,
                 *clear),
        None, [panel.run, panel.stop, panel.preview, panel.gallery, panel.info, *outputs[5:]],
        api_name=f"{api_name}_starts", api_visibility="private", queue=False, show_progress="hidden",
    )
    event = started.then(
        handler, inputs, outputs, api_name=api_name, concurrency_id=GPU_QUEUE, concurrency_limit=concurrency,
        show_progress_on=[panel.gallery],  # the bar covers the results, not the live preview
    )

    def ends(gallery: Any, info: Any) -> tuple:  # also sizes the grid to the batch (the API's gallery stays a list)
        # A join the queue refused (`ui.hosting`: the app, visitor or address at its limit) never ran the handler.
        return (*_idle(), gr.update(columns=gallery_columns(len(gallery or []))),
                NOT_STARTED if info == QUEUED else gr.update())

    # Gradio 6 runs a .then() only after a success, despite its docs, so a failed run needs .failure() as well.
    # Its update of the gallery also clears the "Error" badge there: the toast has said what went wrong.
    for after, name in ((event.then, f"{api_name}_ends"), (event.failure, f"{api_name}_failed")):
        after(ends, [panel.gallery, panel.info], [panel.run, panel.stop, panel.gallery, panel.info], api_name=name,
              api_visibility="private", queue=False, show_progress="hidden")
    return event


def _wire_stop(panel: ResultPanel, flags: StopFlags, event: Dependency, api_name: str) -> None:
    def stop(request: gr.Request) -> tuple:
        # Cancelling the event ends its stream, so the message after Stop comes from here, not from the run.
        # Stop reaches the visitor's queued jobs too (their flags were set when they joined the queue).
        flag, queued = flags.stop_all(flags.visitor(request))
        return (stopped_message(flag) if flag is not None or queued else NOTHING_TO_STOP, *_idle())

    panel.stop.click(stop, None, [panel.info, panel.run, panel.stop], api_name=f"{api_name}_stop", cancels=[event],
                     queue=False)


def wire_seed_buttons(randomize: gr.Button, reuse: gr.Button, seed: gr.Number, last_seed: gr.State, prefix: str) -> None:
    randomize.click(lambda: -1, None, seed, api_name=f"{prefix}_random_seed", api_visibility="private", queue=False)
    reuse.click(lambda last: -1 if last is None else last, last_seed, seed, api_name=f"{prefix}_reuse_seed",
                api_visibility="private", queue=False)


def selected_image(gallery: Any, index: Any) -> Image.Image:
    """The picked gallery item as a PIL image (Gallery(type="pil") values are (image, caption) pairs)."""
    if not gallery:
        raise gr.Error("Generate an image first.", print_exception=False)
    index = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    item = gallery[index]
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, str):
        image = Image.open(image)
    return image
