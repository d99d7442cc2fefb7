"""UI helpers that need no server: PNG-info sampler mapping, gallery selection after a new result."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from sd2_app.api.checked import Checked
from sd2_app.ui.blocks import sampler_fields
from sd2_app.ui.result_panel import selected_image
from sd2_app.ui.run_events import NOT_STARTED, QUEUED
from sd2_app.ui.hosting import Visitors

PAGE = ("page-1", 3)  # (session hash, event number) of one tab's runs in one page load

NAMES = ["Euler", "Euler a", "DPM++ 2M", "DDIM", "DPM2"]


@pytest.mark.parametrize(
    ("parsed", "expected"),
    [
        ({"Sampler": "DPM++ 2M", "Schedule type": "Karras"}, ("DPM++ 2M", "Karras")),
        ({"Sampler": "DPM++ 2M", "Schedule type": "Automatic"}, ("DPM++ 2M", "Automatic")),
        ({"Sampler": "DPM++ 2M Karras"}, ("DPM++ 2M", "Karras")),  # A1111 before "Schedule type"
        ({"Sampler": "DPM2 Karras"}, ("DPM2", "Karras")),
        ({"Sampler": "Euler", "Schedule type": "exponential"}, ("Euler", "Exponential")),
        ({"Sampler": "Euler a"}, ("Euler a", "Automatic")),
        ({"Sampler": "PLMS"}, (None, "Automatic")),  # not ours: the dropdown keeps its value
        ({}, (None, "Automatic")),
    ],
)
def test_png_info_sampler_maps_to_a_dropdown_choice(parsed: dict, expected: tuple) -> None:
    assert sampler_fields(parsed, NAMES) == expected


def test_selected_image_falls_back_to_the_first_and_reads_paths(tmp_path: Path) -> None:
    images = [Image.new("RGB", (8, 8), (i * 50, 0, 0)) for i in range(3)]
    gallery = [(image, None) for image in images]
    assert selected_image(gallery, 2) is images[2]
    assert selected_image(gallery, 5) is images[0] and selected_image(gallery, None) is images[0]
    images[1].save(tmp_path / "b.png")
    assert selected_image([(str(tmp_path / "b.png"), "c")], 0).getpixel((0, 0)) == (50, 0, 0)


def _fn(demo, api_name: str):  # the registered BlockFunction of an event
    return next(f for f in demo.fns.values() if f.api_name == api_name)


def test_a_new_result_resets_the_picked_gallery_index_so_send_to_carries_its_first_image() -> None:
    import gradio as gr

    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    run = _fn(demo, "txt2img")
    selected = next(f for f in demo.fns.values() if f.api_name == "txt2img_select").outputs[0]
    assert selected in run.outputs  # the run writes the picked index...
    values = ["sd2-base", "a cat", "", 64, 64, "Euler", "Automatic", 2, 7.5, 0, 5, 2]
    values += [widget.value for widget in run.inputs[len(values):]]  # the rest as the page starts (eta 0 last)
    request = type("Request", (), {"session_hash": "s1"})()
    *_, last = list(run.fn(request, *values, gr.Progress()))
    index = run.outputs.index(selected)
    assert last[index] == 0 and len(last[1]) == 2  # ...back to 0 with the new two-image gallery
    assert last[0] == last[1][0][0]  # the live preview ends on the final image (the same file)
    ends = _fn(demo, "txt2img_ends")
    ended = ends.fn(last[1], last[2], 1, None)  # the page's first run; no Stop
    assert ended[2]["columns"] == 2  # then the grid is sized to the batch: two side by side
    assert ended[3] == {"__type__": "update"}  # the run's info line stays
    assert ends.fn(None, QUEUED, 1, None)[3] == NOT_STARTED  # a run whose join was refused only said "Queued…"
    # After Stop the line ends with what Stop said of that run (late updates may have come after its answer);
    # what it said of an earlier run is not this run's.
    said = (1, "Stopped before sampling began.")  # as the step after Stop leaves it (Stop's own: the bare line)
    assert ends.fn(None, "Starting…", 1, said)[3] == ends.fn(None, "Starting…", 1, said[1])[3] == said[1]
    assert ends.fn(last[1], last[2], 2, said)[3] == {"__type__": "update"}
    # Generate comes back from the stopped run's failure end, which the page's cancel runs last (a Generate clicked
    # before the cancel had ended would be taken by it); the success end of a run not stopped gives it back too.
    failed = _fn(demo, "txt2img_failed")
    assert ends.fn(None, "Starting…", 1, said)[0] == {"__type__": "update"}
    generate_back = {"__type__": "update", "value": "Generate", "interactive": True}
    assert failed.fn(None, "Starting…", 1, said)[0] == generate_back
    assert ended[0] == failed.fn(None, "x", 1, None)[0]


def test_stop_flags_are_per_run_and_forgotten_when_it_ends() -> None:
    from sd2_app.ui.runner import RunFlag, StopFlags

    flags = StopFlags(Visitors())
    first = flags.arm("s1", RunFlag(page=PAGE))
    assert flags.stop_page("s1", PAGE)[0] is first and first.is_set()
    assert flags.stop_page("s2", PAGE) == (None, 0)  # another visitor has nothing to stop
    second = flags.arm("s1", RunFlag(page=PAGE))
    assert not second.is_set()  # the next run starts clear
    flags.release("s1", first)  # a stale release keeps the newer run's flag
    assert flags.stop_page("s1", PAGE)[0] is second and second.is_set()
    flags.release("s1", second)
    assert flags.stop_page("s1", PAGE) == (None, 0) and flags._flags == {}


def test_a_tabs_stop_stops_only_that_tabs_run_of_that_page() -> None:
    from sd2_app.ui.runner import RunFlag, StopFlags

    flags = StopFlags(Visitors())
    mine = flags.arm("s1", RunFlag(page=PAGE))
    plot = flags.arm("s1", RunFlag(page=(PAGE[0], 9)))  # the X/Y/Z tab of the same page
    other_page = flags.arm("s1", RunFlag(page=("other-page", PAGE[1])))  # the same tab in another browser tab
    assert flags.stop_page("s1", PAGE) == (mine, 0)
    assert mine.is_set() and not plot.is_set() and not other_page.is_set()


def test_result_text_fences_prompts_that_contain_backticks() -> None:
    from types import SimpleNamespace

    from sd2_app.ui.result_panel import describe

    parameters = "a ```quoted``` prompt\nSteps: 2, Seed: 7"
    text = describe(SimpleNamespace(image_seeds=[7], timings={"run": 1.0}, warnings=[], parameters=parameters))
    lines = text.splitlines()
    assert lines[0].startswith("**Seed** 7 · ")
    opening = lines.index("````text")  # longer than the prompt's run of three
    assert lines[opening + 1:opening + 3] == parameters.splitlines() and lines[opening + 3] == "````"


def test_a_picked_image_s_text_replaces_only_the_parameters_block() -> None:
    from types import SimpleNamespace

    from sd2_app.ui.result_panel import describe, with_parameters

    first = "a ```fox```\nSteps: 2, Seed: 40, Batch size: 2, Batch pos: 0"
    info = describe(SimpleNamespace(image_seeds=[40, 41], timings={"run": 1.0}, warnings=["Size 60 was rounded."],
                                    parameters=first))
    second = "a fox\nSteps: 2, Seed: 41, Batch size: 2, Batch pos: 1"
    picked = with_parameters(info, second)
    assert picked.split("\n")[:2] == info.split("\n")[:2]  # the seeds line and the warning
    assert picked.endswith("\n\n```text\n" + second + "\n```") and first not in picked
    assert with_parameters(picked, first) == info  # back to the first: as describe wrote it


def test_png_info_numbers_are_clamped_into_the_slider_ranges() -> None:
    import gradio as gr

    from sd2_app.ui.blocks import clamp_to

    steps = gr.Slider(1, 150, 25, step=1, label="Steps")
    with pytest.warns(UserWarning) as said:  # gr.Warning outside an event is a Python warning
        assert clamp_to(500, steps) == 150 and clamp_to(0, steps) == 1
    assert [str(warning.message) for warning in said] == [
        "Steps 500 cannot be set here (1 to 150, whole numbers); 150 is used.",
        "Steps 0 cannot be set here (1 to 150, whole numbers); 1 is used."]
    assert clamp_to(30, steps) == 30
    assert clamp_to(7.5, gr.Slider(0, 30, 7.5)) == 7.5
    assert not isinstance(clamp_to("20", steps), (int, float))  # not a number: the widget keeps its value


def test_a_clamped_value_of_a_slider_without_a_label_is_named_by_its_elem_id() -> None:
    """The warning said "None 500 cannot be set here" for a slider without a label."""
    import gradio as gr

    from sd2_app.ui.blocks import clamp_to

    with pytest.warns(UserWarning) as said:
        assert clamp_to(500, gr.Slider(1, 150, 25, step=1, elem_id="txt2img-steps")) == 150
        assert clamp_to(-3, gr.Slider(0, 30, 7.5, step=0.5)) == 0
    assert [str(warning.message) for warning in said] == [
        "txt2img-steps 500 cannot be set here (1 to 150, whole numbers); 150 is used.",
        "A value -3 cannot be set here (0 to 30); 0 is used."]


def _late_step_after_stop(on_progress, should_stop, step: int, total: int, preview: Image.Image) -> None:
    """A job's end: it waits for Stop (at most 5 s), then reports one more step (late) and ends cancelled."""
    import time

    from sd2_app.errors import Cancelled

    for _ in range(500):
        if should_stop():
            break
        time.sleep(0.01)
    on_progress(step, total, preview)
    raise Cancelled("stopped")


def test_a_preview_that_arrives_after_stop_keeps_the_stop_message() -> None:
    import gradio as gr

    from sd2_app.ui.run_stream import STARTING, STOPPING, stream_result
    from sd2_app.ui.runner import RunFlag, StopFlags

    preview = Image.new("RGB", (8, 8))

    class Service:  # one step, then waits for Stop, reports one more step (late) and ends cancelled
        def run(self, request, on_progress, should_stop, owner, timings=None, keep=True, keep_stopped=None, skip=None):
            on_progress(1, 3, preview)
            _late_step_after_stop(on_progress, should_stop, 2, 3, preview)

    flags = StopFlags(Visitors())
    updates = stream_result(Service(), flags, Checked(object(), []), "s1", gr.Progress(), 5,
                            queued_flag=RunFlag(page=PAGE))
    assert next(updates)[2] == STARTING
    assert next(updates)[2] == "Step 1/3"
    assert flags.stop_page("s1", PAGE)[0] is not None
    infos = [update[2] for update in updates]
    assert infos == [STOPPING, "Stopped after 2/3 steps."]


def test_a_plot_runs_through_the_one_run_path_with_its_cells_and_stop() -> None:
    """The X/Y/Z plot's view of `stream_result`: a finished cell joins the gallery with its caption and the info
    line counts the cells; Stop works as for every tab and, once a cell has finished, says how many of the plot's
    cells ran; the job is `Service.plot` with the queue's timings."""
    import gradio as gr

    from sd2_app.api.plot_cells import PlotCell
    from sd2_app.ui.run_stream import STARTING, STOPPING, stream_result
    from sd2_app.ui.runner import RunFlag, StopFlags
    from sd2_app.ui.xyz_plot import PlotView

    preview = Image.new("RGB", (8, 8))
    seen: dict = {}

    class Service:  # one cell and its step, then waits for Stop, reports one more step (late) and ends cancelled
        def plot(self, request, on_progress, should_stop, *, owner, timings, on_cell, keep, skip):
            seen.update(request=request, owner=owner, timings=dict(timings), keep=keep, skip=skip)
            on_cell(PlotCell(0, (0, 0, 0), None, ("Euler", "Steps: 2", ""), 2), Image.new("RGB", (8, 8)), 1.234)
            on_progress(1, 2, None)
            _late_step_after_stop(on_progress, should_stop, 2, 2, preview)

    flags = StopFlags(Visitors())
    request = Checked(object(), [], plot=SimpleNamespace(cells=[None] * 3))  # a plot of 3 cells
    queued = RunFlag(page=PAGE)
    updates = stream_result(Service(), flags, request, "s1", gr.Progress(), 5, queued_flag=queued, view=PlotView())
    assert next(updates)[2] == STARTING
    _, gallery, info, *_ = next(updates)
    assert info == "1 cell(s) done · step 1/2"
    assert [caption for _, caption in gallery] == ["Euler, Steps: 2 · 1.23 s"] and gallery[0][0].endswith("cell-1.png")
    assert seen["request"] is request and seen["owner"] == "s1" and list(seen["timings"]) == ["queue"]
    assert seen["keep"] is True  # without `spaces` the job keeps its own result (docs/DESIGN.md, "ZeroGPU")
    assert seen["skip"] is queued.skip  # the tab's Skip reaches the plot's running cell
    assert flags.stop_page("s1", PAGE)[0] is not None
    infos = [update[2] for update in updates]
    assert infos == [STOPPING, "Stopped: 1 of 3 cells ran."]


def test_stop_says_how_far_the_run_got() -> None:
    from sd2_app.ui.runner import RunFlag, StopFlags, stopped_message

    flags = StopFlags(Visitors())
    assert flags.stop_page("s1", PAGE)[0] is None and stopped_message(None) == "Stopped before it started."
    flag = flags.arm("s1", RunFlag(page=PAGE))
    assert stopped_message(flags.stop_page("s1", PAGE)[0]) == "Stopped before sampling began."
    flag.done, flag.total = 7, 25
    assert stopped_message(flag) == "Stopped after 7/25 steps."


def test_a_visitors_stop_keeps_the_image_so_far_and_the_apps_close_does_not() -> None:
    """The web UI's run asks its flag (`Service.run`'s `keep_stopped`) when Stop ended it after a sampling step:
    the visitor's Stop keeps the image so far (A1111's Interrupt), the app's close keeps nothing (it saves nothing
    on SIGTERM); the Stop's chained event gets the kept result from the stopped run's worker."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    from sd2_app.ui.runner import RunFlag, StopFlags

    flags = StopFlags(Visitors())
    visitor, closing = flags.arm("s1", RunFlag(page=PAGE)), flags.arm("s2", RunFlag(page=PAGE))
    visitor.total = closing.total = 20
    visitor.outcome = Future()
    visitor.outcome.set_result(SimpleNamespace(stopped_at=(5, 20)))
    flags.stop_page("s1", PAGE)
    assert visitor.is_set() and visitor.keeps_image() and not closing.is_set()
    flags.stop_everyone()
    assert closing.is_set() and not closing.keeps_image()
    # From the close's start (before Gradio's close ends the handlers), a run that starts or stops keeps nothing.
    assert not flags.arm("s3", RunFlag(page=PAGE)).keeps_image()
    assert flags.kept_after_stop("s1", PAGE) is visitor.outcome.result()
    assert flags.kept_after_stop("s1", PAGE) is None  # asked once per Stop
    assert flags.kept_after_stop("s2", PAGE) is None  # that page pressed no Stop


def test_gallery_grid_follows_the_batch() -> None:
    from sd2_app.ui.result_panel import gallery_columns

    assert [gallery_columns(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 2, 2, 3, 3, 3]


def test_models_table_speaks_plainly() -> None:
    from types import SimpleNamespace

    from sd2_app.manager.state import ModelStatus
    from sd2_app.ui.models import HEADERS, status_view

    rows = [ModelStatus("sd2-base", "SD 2.0 base", "device", "cpu", "repo/a", None, 2_600_000_000, ()),
            ModelStatus("sd2", "SD 2.0", "none", "", None, None, 0, ())]
    service = SimpleNamespace(status=lambda: {"models": rows, "memory": {}})
    table, _ = status_view(service)
    assert HEADERS[:3] == ["Checkpoint", "Name", "Loaded"]
    assert table[0][2:7] == ["on the device", "cpu", "repo/a", "", "2.60 GB"]
    assert table[1][2] == "not loaded" and table[1][6] == ""


def test_png_info_sends_the_checkpoint_too() -> None:
    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    send = _fn(demo, "png_info_send")
    values = send.fn("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512, Model: sd2")
    checkpoint_index = [getattr(block, "label", None) for block in send.outputs].index("Checkpoint")
    assert values[checkpoint_index] == "sd2"
    assert send.queue is not False  # queued: "There are no generation parameters to send: ..." reaches the visitor


def test_an_oversized_upload_is_refused_when_uploaded_in_a_size_a_person_reads(tmp_path: Path) -> None:
    import gradio as gr
    from gradio.data_classes import FileData

    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    service = fake_service(None)
    demo = build_ui(service)
    limit = service.limits.max_input_pixels
    side = math.isqrt(limit)
    check = _fn(demo, "outpaint_image_check")
    check.fn(Image.new("RGB", (side, side)))  # at the limit: accepted
    with pytest.raises(gr.Error, match=f"This image is {side + 8}x{side}; images up to {side}x{side} pixels "):
        check.fn(Image.new("RGB", (side + 8, side)))
    # The editor's files go to its hidden checker (the page script), refused by the header in Generate's words.
    editor_check = _fn(demo, "inpaint_editor_check_file")
    checker = editor_check.inputs[0]
    for width, accepted in ((side, True), (side + 8, False)):
        path = tmp_path / f"{width}.png"
        Image.new("RGB", (width, side)).save(path)
        if accepted:
            assert checker.preprocess(FileData(path=str(path))) is not None
            continue
        with pytest.raises(gr.Error, match=f"The uploaded image could not be read: it is {width}x{side} "
                                           f"\\({width * side} pixels\\); the limit is {limit} pixels"):
            checker.preprocess(FileData(path=str(path)))
    # The editor itself has no upload event (Gradio's page starts one again at each redraw of the editor, each
    # sending its image again) and keeps a refused image: nothing but a send or an example sets its value.
    editor = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "inpaint-editor")
    assert not [f for f in demo.fns.values() if (editor._id, "upload") in f.targets]
    assert not [f for f in demo.fns.values() if f.api_name == "inpaint_editor_refused"]
    refused = _fn(demo, "outpaint_image_refused")
    assert refused.fn() is None and refused.outputs == check.inputs  # the box empties
    # Image to image checks in the event that reads every new image for its size (one refusal, not two).
    sized = _fn(demo, "img2img_default_size")
    key = sized.inputs[1].value
    assert sized.fn(Image.new("RGB", (side, side)), key, None) == (service.resolution(key),) * 2
    with pytest.raises(gr.Error, match=f"This image is {side + 8}x{side}; images up to {side}x{side} pixels "):
        sized.fn(Image.new("RGB", (side + 8, side)), key, None)
    refused = _fn(demo, "img2img_image_refused")
    assert refused.fn() is None and refused.outputs == sized.inputs[:1]
    assert not [f for f in demo.fns.values() if f.api_name == "img2img_image_check"]


def test_history_sends_a_picked_image_with_its_settings(tmp_path: Path) -> None:
    import gradio as gr

    from sd2_app.pipelines.metadata import attach_parameters, format_parameters, save_png
    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    settings = {"Steps": 12, "Sampler": "Euler", "Schedule type": "Karras", "CFG scale": 6.5, "Seed": 42,
                "Size": "64x72", "Model": "sd2", "Eta DDIM": 0.25}
    paths = []
    for index, size in enumerate(((64, 64), (64, 72))):
        image = attach_parameters(Image.new("RGB", size), format_parameters(f"cat {index}", "blurry", settings))
        paths.append(str(save_png(image, tmp_path / f"{index}.png")))
    send = _fn(demo, "history_send_to_img2img")
    image, tab, width, height, _, prompt, negative, *sampling, tiling = send.fn([(p, "") for p in paths], 1)
    assert image == paths[1]  # the picked image's own file (`result_panel.box_value`)
    assert Image.open(image).size == (width, height) == (64, 72) and (prompt, negative) == ("cat 1", "blurry")
    assert (*sampling, tiling) == ("Euler", "Karras", 12, 6.5, 42, 0.25, False)  # eta; no "Tiling: True"
    with pytest.raises(gr.Error, match="There is nothing in History yet."):
        send.fn([], 0)
    reuse = _fn(demo, "history_reuse")
    values = reuse.fn([(p, "") for p in paths], 0)
    assert values[:2] == ("cat 0", "blurry") and "sd2" in values


def test_a_cached_file_shown_again_starts_its_cache_age_anew(tmp_path, monkeypatch) -> None:
    """Gradio's `delete_cache` removes files by age: the same bytes shown again must not count as old."""
    import os

    from sd2_app.ui.shown_files import cached_file

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    path = cached_file(b"same image bytes", "image.png")
    os.utime(path, (1_000_000, 1_000_000))  # as if written long ago
    assert cached_file(b"same image bytes", "image.png") == path
    assert os.stat(path).st_mtime > 1_000_000_000  # now, not 1970
    assert open(path, "rb").read() == b"same image bytes"


def test_the_phone_tables_use_the_style_sheets_phone_breakpoint() -> None:
    """static/app.css has two narrow-screen rule sets: the phone layout's, at narrow_tables.NARROW (the tables'
    phone columns and the rest of the phone layout switch together), and the one-column run bar's, for every
    width below the two-column layout's (`min-width: 1000px`), so the two never overlap or leave a gap."""
    import re

    from sd2_app.ui.narrow_tables import NARROW

    css = (Path(__file__).parents[2] / "sd2_app" / "ui" / "static" / "app.css").read_text(encoding="utf-8")
    (two_columns,) = re.findall(r"@media \(min-width: (\d+)px\)", css)
    assert re.findall(r"@media \((max-width: \d+px)\)", css) == [
        NARROW.strip("()"), f"max-width: {int(two_columns) - 1}px"]


def test_a_tables_phone_columns_are_its_own_and_share_the_whole_width() -> None:
    from sd2_app.ui.narrow_tables import narrow_table_css

    css = narrow_table_css("t", ["A", "B", "C"], {"A": 30, "C": 70})
    assert "#t th[data-heading='1'], #t .sizing-body td:nth-child(2), #t [role=gridcell][data-col='1'] " \
           "{ display: none !important; }" in css
    assert "#t [role=gridcell][data-col='2'] { width: 70% !important; flex: 0 0 70% !important; }" in css
    for shown in ({"A": 30, "D": 70}, {"A": 30, "C": 60}):
        with pytest.raises(ValueError, match="must be among"):
            narrow_table_css("t", ["A", "B", "C"], shown)


def test_the_disk_line_counts_small_files_in_kilobytes_and_nothing_as_0_mb() -> None:
    from types import SimpleNamespace

    from sd2_app.ui.models import disk_line

    def line(nbytes: int) -> str:
        return disk_line(SimpleNamespace(disk_usage=lambda: (4, nbytes, 0)))

    assert line(23_400) == "**Disk**: 4 saved files, 23 kB (kept until the operator deletes them)."
    assert line(0) == "**Disk**: 4 saved files, 0 MB (kept until the operator deletes them)."
    assert line(2_345_678) == "**Disk**: 4 saved files, 2.3 MB (kept until the operator deletes them)."


def _queued_place(bar: list[str]):  # -> QueuePlace whose line shows 2 jobs ahead
    from sd2_app.ui.runner import QueuePlace

    place = QueuePlace("Starting…")
    assert place.update(2, lambda fraction, desc: bar.append(desc)) == "Queued: 2 jobs ahead of yours…"
    return place


@pytest.mark.parametrize("with_preview", [True, False])
def test_a_first_step_ends_the_queue_place_the_line_showed(with_preview: bool) -> None:
    """A run that showed its place in the queue, then got its first step (a request's with its preview, or a
    plot's with neither preview nor new cell): the line says the step, and a later idle poll (nothing ahead any
    more) leaves it there instead of going back to "Starting…"; a later step with nothing new shows nothing."""
    from sd2_app.ui.run_stream import _step_update
    from sd2_app.ui.run_views import RequestView
    from sd2_app.ui.runner import RunFlag
    from sd2_app.ui.xyz_plot import PlotView

    bar: list[str] = []
    place, flag = _queued_place(bar), RunFlag()
    view = RequestView() if with_preview else PlotView()
    first = (1, 10, Image.new("RGB", (8, 8)) if with_preview else None)
    update = _step_update(view, first, flag, place, lambda *args, **kwargs: None)
    assert update is not None and (flag.done, flag.total) == (1, 10)
    assert update[2] == ("Step 1/10" if with_preview else "0 cell(s) done · step 1/10")
    assert isinstance(update[0], str) == with_preview  # the preview's file, or nothing new there
    assert place.update(None, lambda fraction, desc: bar.append(desc)) is None
    assert bar == ["Queued: 2 jobs ahead of yours…"]
    assert _step_update(view, (2, 10, None), flag, place, lambda *args, **kwargs: None) is None


def test_the_first_step_replaces_starting_even_without_a_preview() -> None:
    """A run that never waited in the queue: its first step says "Step 1/N" though no preview came with it (on a
    slow device the first preview is steps away, while the bar already counts them); later steps without a
    preview show nothing new."""
    from sd2_app.ui.run_stream import STARTING, _step_update
    from sd2_app.ui.run_views import RequestView
    from sd2_app.ui.runner import QueuePlace, RunFlag

    place, flag, view = QueuePlace(STARTING), RunFlag(), RequestView()
    update = _step_update(view, (1, 30, None), flag, place, lambda *args, **kwargs: None)
    assert update is not None and update[2] == "Step 1/30"
    assert _step_update(view, (2, 30, None), flag, place, lambda *args, **kwargs: None) is None


def test_upscale_steps_come_down_to_what_the_servers_job_limit_allows() -> None:
    """The Upscale tab's steps for an image (`ui.upscale.steps_fit`) are what the Service's own check accepts: a
    512x512 input at the tab's DDIM and CFG 9 under the default cap fits 12 steps (13 are refused); no guidance
    doubles it, 8 images per prompt leave 1, as 3 batches leave 4; a 128x128 input fits more than the slider's 150
    (no note)."""
    from sd2_app.api.requests import Sampling, UpscaleRequest
    from sd2_app.api.service import Service
    from sd2_app.errors import InvalidRequest
    from sd2_app.ui.upscale import steps_fit
    from tests.ui_doubles import FakeManager

    service = Service(FakeManager(), outputs_dir=None, allowed_repos=())
    large, small = Image.new("RGB", (512, 512)), Image.new("RGB", (128, 128))
    steps, note = steps_fit(service, large, "DDIM", 50, 9.0, 1)
    assert steps == 12 and note["visible"] and note["value"] == (
        "At most 12 steps fit this server's job limit for this 512x512 image with these settings (Steps is lowered "
        "to 12 when it is higher).")
    assert steps_fit(service, large, "DDIM", 10, 9.0, 1)[0] == {"__type__": "update"}  # never raised
    assert steps_fit(service, large, "DDIM", 50, 1.0, 1)[0] == 25
    assert steps_fit(service, large, "DDIM", 50, 9.0, 8)[0] == 1
    assert steps_fit(service, large, "DDIM", 50, 9.0, 1, 3)[0] == 4  # a batch count of 3: each batch counts
    assert steps_fit(service, large, "DDIM", 50, 9.0, 1, 33)[0] == {"__type__": "update"}  # refused: left alone
    assert steps_fit(service, small, "DDIM", 50, 9.0, 1) == ({"__type__": "update"},
                                                             {"__type__": "update", "value": "", "visible": False})
    assert steps_fit(service, None, "DDIM", 50, 9.0, 1)[1]["visible"] is False

    def upscale(steps: int) -> UpscaleRequest:
        return UpscaleRequest("", large, sampling=Sampling(sampler="DDIM", steps=steps, cfg_scale=9.0, seed=1))

    service.validate(upscale(12))
    with pytest.raises(InvalidRequest, match=r"\(at most 12 steps fit with the other settings unchanged\)"):
        service.validate(upscale(13))


def test_a_plots_streamed_cell_carries_its_own_parameters(monkeypatch, tmp_path: Path) -> None:
    """A cell shown before the plot ends (the gallery of `PlotView`) is a PNG with the cell's parameters text, so
    "Send to" from it carries the cell's settings as from the final gallery (`fast_png` would drop the text)."""
    from sd2_app.api.plot_cells import PlotCell
    from sd2_app.api.requests import Txt2ImgRequest
    from sd2_app.pipelines.metadata import attach_parameters
    from sd2_app.ui.xyz_plot import PlotView

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    text = "a barn\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 12, Size: 64x64"
    cell = PlotCell(1, (1, 0, 0), Txt2ImgRequest(prompt="a barn"), ("Seed: 12", "", ""), 2)
    view = PlotView()
    view.finished.put((cell, attach_parameters(Image.new("RGB", (64, 64), (9, 8, 7)), text), 0.25))
    [(path, caption)] = view.new_gallery()
    assert caption == "Seed: 12 · 0.25 s" and Path(path).name == "cell-2.png"
    with Image.open(path) as shown:
        assert shown.info["parameters"] == text and shown.getpixel((0, 0)) == (9, 8, 7)


def test_a_stop_flag_pickles_as_a_copy_of_its_state() -> None:
    """ZeroGPU pickles a GPU call's arguments into its worker process; a queued job's stop flag goes as a copy
    (set or not, its steps and its start), without the lock that cannot be pickled."""
    import pickle

    from sd2_app.ui.runner import RunFlag

    flag = RunFlag()
    flag.done, flag.total = 3, 20
    copy = pickle.loads(pickle.dumps(flag))
    assert copy is not flag and (copy.is_set(), copy.done, copy.total, copy.created) == (False, 3, 20, flag.created)
    flag.set()
    assert pickle.loads(pickle.dumps(flag)).is_set() and not copy.is_set()


def test_the_extra_seed_options_header_says_what_is_on() -> None:
    from sd2_app.ui.txt2img_extras import seed_extras_label

    assert seed_extras_label(123, 0.3) == "Extra seed options: variation seed 123 at 0.3"
    assert seed_extras_label(-1, 0.05) == "Extra seed options: random variation seed at 0.05"
    assert seed_extras_label(123, 0) == "Extra seed options"  # strength 0: the variation seed does nothing
    assert seed_extras_label(5, 1, 96, 64) == "Extra seed options: variation seed 5 at 1, seed resize from 96x64"
    assert seed_extras_label(5, 0, 96, 0) == "Extra seed options"  # one side alone does not resize
    assert seed_extras_label("x", None, float("nan"), True) == "Extra seed options"  # not numbers: off


def test_quick_events_that_follow_several_widgets_are_debounced() -> None:
    """A quick event (queue=False) that the changes of two or more widgets start waits in the browser for them to
    settle (`sd2_app.ui.debounce`). A send or paste sets such widgets one after another, and each change started a
    call carrying the values set so far: two such events on the same widgets called each other without end (the
    hires fix's size line and label did, on every page after a send), and one alone could show a stale answer that
    landed last (the label said 1024x1024 after a paste of "Hires upscale: 1.5")."""
    from sd2_app.ui import build_ui
    from sd2_app.ui.debounce import debounce_js
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    followed = {fn.api_name: fn for fn in demo.fns.values()
                if not fn.queue and fn.fn is not None and sum(event == "change" for _, event in fn.targets) >= 2}
    assert {name for name, fn in followed.items() if fn.js != debounce_js(name)} == set()
    assert {"txt2img_hires_size", "xyz_hires_size", "txt2img_seed_extras_label"} <= set(followed)  # the events
    # it is about were seen


def test_no_event_shows_progress_on_a_layout_block_or_the_inpaint_editor() -> None:
    """Gradio's page reads again, at every status message of any later event, each widget an event showed progress
    on and every widget inside it, and an image editor's read uploads its image (`sd2_app.ui.progress_targets`):
    every event's progress list holds neither, and the events keep their outputs."""
    import gradio as gr
    from gradio.blocks import BlockContext

    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    shown_on = {fn.api_name: fn.show_progress_on if fn.show_progress_on is not None else fn.outputs
                for fn in demo.fns.values()}
    assert {name for name, blocks in shown_on.items()
            if any(isinstance(b, (BlockContext, gr.ImageEditor)) for b in blocks)} == set()
    send = _fn(demo, "txt2img_send_to_inpaint")
    editor, tabs = send.outputs[0], send.outputs[3]
    assert isinstance(editor, gr.ImageMask) and isinstance(tabs, gr.Tabs)  # still set by the send
    assert send.show_progress_on == [b for b in send.outputs if b not in (editor, tabs)]
    assert _fn(demo, "txt2img_seed_extras_label").show_progress_on == []  # its one output is an accordion
    assert _fn(demo, "txt2img_random_seed").show_progress_on is None  # on its outputs, as Gradio shows it


def test_a_send_from_an_empty_gallery_says_whether_a_run_is_on() -> None:
    """Generate empties the gallery; a send then finds nothing and says why in the tab's state: the run must
    finish (Generate's label says a run is on), or nothing was generated yet."""
    import gradio as gr

    from sd2_app.ui import build_ui
    from sd2_app.ui.layout import GENERATE, RUNNING
    from sd2_app.ui.result_panel import NOTHING_TO_SEND, STILL_RUNNING
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    send = _fn(demo, "txt2img_send_to_inpaint")
    rest = [block.value for block in send.inputs[3:]]
    for label, message in ((RUNNING, STILL_RUNNING), (GENERATE, NOTHING_TO_SEND)):
        with pytest.raises(gr.Error, match=re.escape(message)):
            send.fn([], 0, label, *rest)


def test_skip_on_zerogpu_says_it_cannot_reach_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """On ZeroGPU the run goes on in a forked worker with a copy of its flag, which Skip cannot set: Skip says so
    (and points at Stop) rather than saying it skips (elsewhere it skips: tests/ui/test_browser_stop.py)."""
    from types import SimpleNamespace

    import sd2_app.ui.run_events as run_events
    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    skip = next(f for f in demo.fns.values() if f.api_name == "txt2img_skip")
    request = SimpleNamespace(session_hash="s1", request=None)
    monkeypatch.setattr(run_events, "gpu_calls_may_fork", lambda: True)
    with pytest.warns(UserWarning, match=r"^Skip cannot reach a run on ZeroGPU \(it runs in a worker process of its "
                                         r"own\); Stop ends it\.$"):
        skip.fn(request)


@pytest.mark.parametrize(("seeds", "said"), [
    ([40], "40"),
    ([40, 40, 40], "40"),  # a variation seed's batch; a plot's grid and cells at one seed
    ([40, 41, 42, 43], "40–43"),  # a batch counts up
    ([5, 5, 6, 7], "5–7"),  # a plot's grid (the first cell's seed), then its cells along a Seed axis
    ([7, 912, 35], "7, 912, 35"),  # cells of kept random seeds
    ([3, 9, 1, 4, 8, 2], "3, 9, 1, 4 and 2 more"),
])
def test_a_results_seeds_in_words(seeds: list[int], said: str) -> None:
    from sd2_app.ui.result_panel import seed_span

    assert seed_span(seeds) == said


def test_the_schedule_type_is_offered_where_the_sampler_has_schedule_types() -> None:
    """A1111's "Schedule type" beside the sampler: enabled for a sampler with schedule types; for one without
    (DDIM) back to Automatic and disabled, so no run asks for a schedule its sampler cannot take."""
    from sd2_app.samplers.registry import SCHEDULES
    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    offered = _fn(demo, "txt2img_schedules_offered")
    schedule = offered.outputs[0]
    assert schedule.elem_id == "txt2img-schedule" and [v for _, v in schedule.choices] == list(SCHEDULES)
    assert offered.fn("Euler")[0] == {"__type__": "update", "interactive": True}
    assert offered.fn("DDIM")[0] == {"__type__": "update", "interactive": False, "value": "Automatic"}


@pytest.mark.parametrize("prefix", ["txt2img", "xyz"])
def test_the_hires_schedule_type_is_offered_where_the_hires_pass_sampler_has_schedule_types(prefix: str) -> None:
    """The Hires schedule type follows the hires pass's sampler (the Hires sampler, else the first pass's): fixed
    for one without schedule types, to Automatic beside a hires sampler of its own, to "Same as first pass" beside
    the first pass's sampler (whose Schedule type is then Automatic)."""
    from sd2_app.ui import build_ui
    from tests.ui_doubles import fake_service

    demo = build_ui(fake_service(None))
    offered = _fn(demo, f"{prefix}_hires_schedules_offered")
    assert [box.elem_id for box in offered.inputs] == [f"{prefix}-sampler", f"{prefix}-hires-sampler"]
    assert [box.elem_id for box in offered.outputs] == [f"{prefix}-hires-schedule"]
    assert offered.outputs[0].choices[0][1] == "Same as first pass"
    on = {"__type__": "update", "interactive": True}
    assert offered.fn("Euler", "Same as first pass") == on
    assert offered.fn("DDIM", "Euler") == on
    assert offered.fn("Euler", "DDIM") == {"__type__": "update", "interactive": False, "value": "Automatic"}
    assert offered.fn("DDIM", "Same as first pass") == {"__type__": "update", "interactive": False,
                                                       "value": "Same as first pass"}
