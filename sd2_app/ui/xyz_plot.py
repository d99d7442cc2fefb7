"""X/Y/Z plot: one prompt run over up to three axes of settings; labelled grids, each cell timed, a CSV/JSON.

Each axis is a kind (sampler, steps, CFG, seed, checkpoint, schedule type, guidance rescale, denoising strength,
prompt S/R and order, variation seed and strength, eta, hires steps, upscaler and sampler, and the host's prompt
styles where it has any) and values, typed (`20, 30, 40`, `10-40 (+10)`) or, for samplers, schedule types, hires
upscalers, checkpoints and styles, picked in a multi-select whose order is the order of the cells. The Text to
image tab's Hires fix group (`txt2img_extras.build_hires`) sets the hires fix of every cell; an init image makes it an
image-to-image plot, which has none (the group hides). Finished
cells appear in the gallery as they come, so Stop leaves them on screen.
"""

from __future__ import annotations

import queue
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.api.plot import HIRES_NEEDS_TEXT, MAX_GRID_MARGIN, cells_ran, write_tables
from sd2_app.api.plot_cells import cell_caption
from sd2_app.api.plot_axes import AXES, AXIS_NAMES, offered_axes
from sd2_app.api.checked import Checked
from sd2_app.api.requests import HIRES_UPSCALERS, Img2ImgRequest, PlotAxis, Txt2ImgRequest, XYZPlotRequest
from sd2_app.api.tasks import PLOT_SAMPLERS, TASKS
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.metadata import encode_png
from sd2_app.samplers.registry import SCHEDULES
from sd2_app.ui.result_panel import IMAGE_TARGETS, ResultPanel
from sd2_app.ui.run_events import wire_run
from sd2_app.ui.sampling_controls import EXAMPLE_PROMPTS, SAMPLING_NAMES, to_sampling
from sd2_app.ui.runner import WAIT_POLL_S, RunFlag, StopFlags, timed_call
from sd2_app.ui.shown_files import cached_file
from sd2_app.ui.size_boxes import show_sides_used
from sd2_app.ui.tab_frame import TabFrame
from sd2_app.ui.txt2img_extras import (HIRES_NAMES, HiresControls, build_hires, request_fields, wire_hires_schedule,
                                       wire_hires_size)
from sd2_app.ui.uploads import upload_image

if TYPE_CHECKING:
    from sd2_app.api.plot_cells import PlotCell
    from sd2_app.api.service import Result, Service


PICKED = ("sampler", "schedule_type", "checkpoint", "hires_sampler", "hires_upscaler", "styles")  # picked values
TYPED_HINT = "20, 30, 40 or 10-40 (+10)"  # the values box's placeholder for a kind with no hint of its own
HINTS = {"prompt_sr": "the first value is searched in the prompt: cat, dog, tiger",
         "prompt_order": "terms of the prompt, put in every order: cat, dog, tiger (at most 4)",
         "seed": "1, 2, 3 or 1-4", "variation_seed": "1, 2, 3 or -1 (random)",
         "variation_strength": "0, 0.25, 0.5 or 0-1 [5]", "eta": "0, 0.5, 1 (DDIM only)",
         "hires_steps": "10, 20 or 0 (= Steps); turns the hires fix on"}
TABLES_DIR = Path(tempfile.gettempdir()) / "sd2-app-plots"
# "Send to" a grid or cell: its image with the settings of its own PNG text (blocks.py wires them)
SEND_TO = ("txt2img", *IMAGE_TARGETS)


# A1111's options of the script (scripts/xyz_grid.py), API name -> default; checked by the plot's validation
OPTIONS = {"draw_legend": True, "no_fixed_seeds": False, "include_sub_grids": False, "margin_size": 0}


def _options() -> list[gr.components.Component]:
    """The widgets of `OPTIONS`, in its order, labelled as A1111's (the README says what each does)."""
    with gr.Row(equal_height=True, elem_classes=["phone-stack"]):
        legend = gr.Checkbox(True, label="Draw legend", elem_id="xyz-draw-legend", min_width=120)
        keep = gr.Checkbox(False, label="Keep -1 for seeds", elem_id="xyz-no-fixed-seeds", min_width=120)
        sub = gr.Checkbox(False, label="Include sub grids", elem_id="xyz-include-sub-grids", min_width=120)
        margin = gr.Slider(0, MAX_GRID_MARGIN, 0, step=2, label="Grid margins (px)", elem_id="xyz-margin-size",
                           scale=2, min_width=200)
    return [legend, keep, sub, margin]


@dataclass
class AxisControls:
    kind: gr.Dropdown
    text: gr.Textbox
    picked: gr.Dropdown
    select_all: gr.Button
    select_none: gr.Button


def _axis_row(name: str, kind: str, picks: dict[str, list[tuple[str, str]]]) -> AxisControls:
    prefix = f"xyz-{name.lower()}"
    choices = [("Nothing", "nothing")] if name != "X" else []
    choices += [(spec.label, key) for key, spec in AXES.items() if key in picks]
    with gr.Row(equal_height=True, elem_classes=["phone-stack"]):  # on a phone the values go under the type (app.css)
        kind_box = gr.Dropdown(choices, value=kind, label=f"{name} type", scale=2, elem_id=f"{prefix}-type")
        text = gr.Textbox(label=f"{name} values", placeholder=HINTS.get(kind, TYPED_HINT), scale=5,
                          visible=kind not in PICKED and kind != "nothing", elem_id=f"{prefix}-values")
        start = [n for n in PLOT_SAMPLERS if n in dict((v, v) for _, v in picks["sampler"])] if kind == "sampler" else []
        picked = gr.Dropdown(picks.get(kind, picks["sampler"]), value=start, multiselect=True, allow_custom_value=True,
                             label=f"{name} values (in this order)", scale=5, visible=kind in PICKED,
                             elem_id=f"{prefix}-picked")
        select_all = gr.Button("All", size="sm", scale=1, min_width=60, visible=kind in PICKED,
                               elem_id=f"{prefix}-all")
        select_none = gr.Button("None", size="sm", scale=1, min_width=60, visible=kind in PICKED,
                                elem_id=f"{prefix}-none")
    return AxisControls(kind_box, text, picked, select_all, select_none)


def _row_updates(kind: str, picks: dict[str, list[tuple[str, str]]], text: Any = None, picked: Any = ()) -> tuple:
    """The updates of an axis row's text box, picked values and All/None buttons for `kind`: a listed kind shows
    its own choices with `picked` and hides the text box, emptied (typed values would win: `make_axis`); a typed
    kind shows the text box with its hint and `text` (None: as it is); "nothing" hides both."""
    listed = kind in PICKED
    if listed:
        box = gr.update(visible=False, value="")
    else:
        box = gr.update(visible=kind != "nothing", placeholder=HINTS.get(kind, TYPED_HINT))
        if text is not None:
            box["value"] = text
    return (box, gr.update(visible=listed, choices=picks.get(kind, []), value=list(picked or []) if listed else []),
            gr.update(visible=listed), gr.update(visible=listed))


def _wire_axis(axis: AxisControls, picks: dict[str, list[tuple[str, str]]], prefix: str) -> None:
    # `input`, not `change`: a swap (`_wire_swaps`) sets the type with its values, which this would empty
    axis.kind.input(lambda kind: _row_updates(kind, picks), axis.kind,
                    [axis.text, axis.picked, axis.select_all, axis.select_none], api_name=f"{prefix}_kind",
                    api_visibility="private", queue=False)
    axis.select_all.click(lambda kind: [value for _, value in picks.get(kind, [])], axis.kind, axis.picked,
                          api_name=f"{prefix}_all", api_visibility="private", queue=False)
    axis.select_none.click(lambda: [], None, axis.picked, api_name=f"{prefix}_none", api_visibility="private",
                           queue=False)


def swap_refusal(first: str, second: str, kinds: tuple[Any, Any]) -> str | None:
    """Why the axes `first` and `second` (AXIS_NAMES) cannot swap types `kinds`, or None: the X axis must vary
    something ("Choose what the X axis varies." on a run)."""
    for name, other, kind in ((first, second, kinds[1]), (second, first, kinds[0])):
        if name == "X" and (not kind or kind == "nothing"):
            return (f"Swap {first}/{second}: the {other} axis varies nothing, and the X axis must vary something; "
                    f"choose a {other} type first.")
    return None


def _swapper(first: str, second: str, picks: dict[str, list[tuple[str, str]]]) -> Callable[..., tuple]:
    """The handler of "Swap `first`/`second` axes": (type, text, picked) of both rows in, each row's updates
    (type, then `_row_updates`) out with the other's type and values; nothing changes where `swap_refusal` says
    no (a toast says why)."""
    def swap(kind_a: Any, text_a: Any, picked_a: Any, kind_b: Any, text_b: Any, picked_b: Any) -> tuple:
        refusal = swap_refusal(first, second, (kind_a, kind_b))
        if refusal is not None:
            gr.Warning(refusal)
            return (gr.skip(),) * 10
        return (gr.update(value=kind_b), *_row_updates(kind_b, picks, text_b, picked_b),
                gr.update(value=kind_a), *_row_updates(kind_a, picks, text_a, picked_a))

    return swap


def _wire_swaps(axes: list[AxisControls], picks: dict[str, list[tuple[str, str]]]) -> None:
    """A1111's "Swap X/Y axes", "Swap Y/Z axes" and "Swap X/Z axes" buttons, in a row under the options as there
    (scripts/xyz_grid.py, `swap_axes`): two axis rows trade their type and values, typed or picked, and each
    row's choices and hint follow its new type. Nothing runs."""
    rows = dict(zip(AXIS_NAMES, axes))
    with gr.Row(elem_id="xyz-swaps"):
        for first, second in (("X", "Y"), ("Y", "Z"), ("X", "Z")):
            button = gr.Button(f"Swap {first}/{second} axes", size="sm",
                               elem_id=f"xyz-swap-{first.lower()}{second.lower()}")
            pair = (rows[first], rows[second])
            button.click(_swapper(first, second, picks), [w for a in pair for w in (a.kind, a.text, a.picked)],
                         [w for a in pair for w in (a.kind, a.text, a.picked, a.select_all, a.select_none)],
                         api_name=f"xyz_swap_{first.lower()}{second.lower()}", api_visibility="private",
                         show_progress="hidden")  # queued: a refusal's toast reaches the page only so


def make_axis(kind: Any, text: Any, picked: Any) -> PlotAxis | None:
    """Widget values -> an axis (None for "nothing"). For the kinds picked from a list, typed values win where
    there are any (an API caller's `x_values`: gradio_client fills `x_picked` with the list's default, the
    samplers, which would otherwise run instead without a word; the tab hides and empties the text box for these
    kinds), else the picked ones."""
    if not kind or kind == "nothing":
        return None
    typed = isinstance(text, str) and text.strip()
    if picked is not None and not isinstance(picked, (list, tuple)):  # the multi-select takes values of its own
        raise InvalidRequest(f"An axis's picked values must be a list, got {type(picked).__name__}.")
    if kind in PICKED and picked and not typed:
        return PlotAxis(str(kind), tuple(picked))
    return PlotAxis(str(kind), text if isinstance(text, str) else "")


def make_request(key: str, text: str, negative_text: str, *values: Any) -> XYZPlotRequest:
    """Widget values (in the order of the API's parameter names) -> the plot request."""
    axes = [make_axis(*values[3 * i : 3 * i + 3]) for i in range(3)]
    end = 9 + len(SAMPLING_NAMES) - 1
    sampling = to_sampling(*values[9:end], 1)
    width, height, image, strength = values[end : end + 4]
    hires = request_fields(*values[end + 4 : end + 4 + len(HIRES_NAMES)])["hires"]
    options = {name: default if value is None else value  # absent (an API caller's None): A1111's default
               for (name, default), value in zip(OPTIONS.items(), values[end + 4 + len(HIRES_NAMES):])}
    common = {"prompt": text, "negative_prompt": negative_text, "checkpoint": key, "sampling": sampling}
    if image is not None:
        if hires is not None:
            raise InvalidRequest(HIRES_NEEDS_TEXT)
        base: Txt2ImgRequest | Img2ImgRequest = Img2ImgRequest(image=image, strength=strength, width=width, height=height, **common)
    else:
        base = Txt2ImgRequest(width=width, height=height, hires=hires, **common)
    if axes[0] is None:
        raise InvalidRequest("Choose what the X axis varies.")
    return XYZPlotRequest(base=base, x=axes[0], y=axes[1], z=axes[2], **options)  # the options: checked there


def _tables(result: Result) -> list[str]:
    folder = TABLES_DIR / uuid.uuid4().hex
    return [str(path) for path in write_tables(result.cells, folder)]


class PlotView:
    """A plot's run (`run_stream.stream_result`'s view): each finished cell joins the gallery as it comes (so Stop,
    which ends the stream, leaves them on screen); the grids, cells and tables come at the end."""

    idle_s = WAIT_POLL_S  # its place at the GPU gate is looked up until its first step, as a request's is

    def __init__(self) -> None:
        self.finished: queue.Queue[tuple[PlotCell, Image.Image, float]] = queue.Queue()
        self.cells: list[tuple[str, str]] = []  # each finished cell encoded once, fast (the gallery is sent whole)
        self.ran = 0  # cells finished, counted in the worker as each finishes

    def call(self, service: Service, request: Checked, session: str, flag: RunFlag,
             keep: bool = True) -> Callable[..., Result]:
        total = len(request.plot.cells) if request.plot is not None else None

        def on_cell(cell: PlotCell, image: Image.Image, seconds: float) -> None:
            self.finished.put((cell, image, seconds))
            self.ran += 1
            if total is not None:  # Stop from now on counts the cells, as the stopped result does
                flag.note = cells_ran(self.ran, total)

        return timed_call(service.plot, request, session, flag, keep=keep, on_cell=on_cell, skip=flag.skip)

    def new_gallery(self) -> list[tuple[str, str]] | None:
        new = []
        while not self.finished.empty():
            cell, image, seconds = self.finished.get()
            caption = f"{cell_caption(cell)} · {seconds:.2f} s"
            # with its parameters text, as the final gallery's: a cell sent on before the plot ends carries it too
            new.append((cached_file(encode_png(image), f"cell-{cell.index + 1}.png"), caption))
        self.cells += new
        return list(self.cells) if new else None

    def status(self, done: int, total: int) -> str:
        return f"{len(self.cells)} cell(s) done · step {done}/{total}"


def _wire_hires(fix: HiresControls, image: gr.Image, width: gr.Slider, height: gr.Slider, max_side: int) -> None:
    """The hires fix's size line; its group shows while the plot is text to image (no init image), and an init
    image turns the fix off (the request would be refused: `HIRES_NEEDS_TEXT`)."""
    wire_hires_size(width, height, fix, max_side, prefix="xyz")

    def follow_image(picture: Any) -> tuple:
        text_to_image = picture is None
        return gr.update(visible=text_to_image), gr.update() if text_to_image else False

    image.change(follow_image, image, [fix.accordion, fix.hires], api_name="xyz_image_hires",
                 api_visibility="private", queue=False, show_progress="hidden")


def _picks(service: Service) -> dict[str, list[tuple[str, str]]]:
    """Each axis kind the tab offers (`offered_axes`, which a plot's validation allows) -> the (label, value)
    choices of its picked values (empty: typed values)."""
    samplers = [(name, name) for name in service.samplers()]
    choices = {"sampler": samplers, "schedule_type": [(name, name) for name in SCHEDULES],
               "checkpoint": service.checkpoints("txt2img"), "hires_sampler": samplers,
               "hires_upscaler": [(name, name) for name in HIRES_UPSCALERS],
               "styles": [(name, name) for name in service.styles.names]}
    return {key: choices.get(key, []) for key in offered_axes(service.styles)}


def build(service: Service, flags: StopFlags) -> ResultPanel:
    picks = _picks(service)
    frame = TabFrame(service, "xyz", EXAMPLE_PROMPTS[1], styled=False, read=False)
    # The tables ride in the panel's extra output (an image on other tabs): cleared at Generate, filled at the
    # end by `finish_extra`.
    tables = partial(gr.File, label="Cell settings and times (CSV, JSON)", file_count="multiple", interactive=False,
                     elem_id="xyz-files")
    with frame.columns(extra=tables, send_to=SEND_TO):
        axes = [_axis_row(name, kind, picks) for name, kind in zip(AXIS_NAMES, ("sampler", "nothing", "nothing"))]
        options = _options()
        _wire_swaps(axes, picks)
        checkpoint = frame.checkpoint("txt2img", elem_id="xyz-checkpoint")
        width, height = frame.size_sliders(checkpoint)
        controls = frame.sampling(batch=False, task="txt2img", eta=False)  # eta is an axis here
        with gr.Accordion("Init image (optional: makes it an image-to-image plot)", open=False):
            image = upload_image(label="Init image", type="pil", image_mode=None, sources=["upload", "clipboard"],
                                 height=240, elem_id="xyz-image")
            strength = gr.Slider(0, 1, TASKS["img2img"].strength, step=0.01, label="Denoising strength")
        fix = build_hires(service, service.limits.max_side, width.value, prefix="xyz")  # text to image only
    _wire_hires(fix, image, width, height, service.limits.max_side)
    wire_hires_schedule(controls.sampler, fix, service, prefix="xyz")
    panel = frame.panel
    panel.gallery.columns = 3
    for name, axis in zip(AXIS_NAMES, axes):
        _wire_axis(axis, picks, f"xyz_{name.lower()}")
    axis_inputs = [widget for axis in axes for widget in (axis.kind, axis.text, axis.picked)]
    inputs = [checkpoint, frame.prompt, frame.negative, *axis_inputs, *controls.inputs()[:-1], width, height, image,
              strength, *fix.inputs(), *options]
    names = ["checkpoint", "prompt", "negative_prompt"]
    names += [f"{n.lower()}_{part}" for n in AXIS_NAMES for part in ("type", "values", "picked")]
    names += [*SAMPLING_NAMES[:-1], "width", "height", "init_image", "strength", *HIRES_NAMES, *OPTIONS]
    run = wire_run(service, flags, panel, inputs, make_request, "xyz_plot", names,
                   finish_extra=lambda result: (_tables(result),), view=PlotView)
    show_sides_used(service.limits, (width, height), run)
    # A1111 shows a plot's grid as its result: the gallery opens on it (the first image, `selected` is 0 after a
    # run), large, the cells as thumbnails below it, instead of the grid as one thumbnail among its cells.
    run.then(_open_on_grid, panel.gallery, panel.gallery, api_name="xyz_plot_shows_grid", api_visibility="private",
             queue=False, show_progress="hidden")
    return panel


def _open_on_grid(gallery: Any) -> Any:
    return gr.update(selected_index=0) if gallery else gr.update()
