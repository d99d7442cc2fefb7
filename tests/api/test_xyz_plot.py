"""X/Y/Z plot: value parsing (A1111's lists and ranges), prompt S/R, validation messages, the Service's run
(progress, grids, labels, tables, Stop) on the doubles, and a 2x3 plot on the tiny checkpoints whose cells
equal individual runs."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sd2_app.api.plot import plan_cells, write_tables
from sd2_app.api.plot_axes import parse_values
from sd2_app.api.plot_values import axis_values_text, split_values
from sd2_app.api.plot_grid import NOT_RUN_FILL, SUB_GRID_GAP, draw_grid, load_font, not_run_cell
from sd2_app.api.requests import HiresFix, Img2ImgRequest, PlotAxis, Sampling, Txt2ImgRequest, XYZPlotRequest
from sd2_app.api.checks import Limits
from sd2_app.api.validation import validate
from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.metadata import parse_parameters
from tests.ui_doubles import fake_catalog, fake_service, spy_on_plot_checks

CATALOG = fake_catalog()


def _base(prompt: str = "a cat on a mat", **sampling: object) -> Txt2ImgRequest:
    settings: dict[str, object] = {"seed": 11, "steps": 2, **sampling}
    return Txt2ImgRequest(prompt, negative_prompt="blurry cat", width=64, height=64,
                          sampling=Sampling(**settings))  # type: ignore[arg-type]


def _plot(x: PlotAxis, y: PlotAxis | None = None, z: PlotAxis | None = None, **base: object) -> XYZPlotRequest:
    return XYZPlotRequest(_base(**base), x, y, z)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "text", "values"), [
    ("steps", "20, 30, 40", [20, 30, 40]),
    ("steps", "10-40 (+10)", [10, 20, 30, 40]),
    ("steps", "40-10 (-10)", [40, 30, 20, 10]),
    ("steps", "1-3", [1, 2, 3]),
    ("steps", "3-1", [3, 2, 1]),
    ("steps", "10-40 [4]", [10, 20, 30, 40]),
    ("steps", "5, 1-2, 9", [5, 1, 2, 9]),
    ("seed", "-1", None),  # drawn at random: checked below
    ("cfg_scale", "1-2 [5]", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("cfg_scale", "0.5-1 (+0.25)", [0.5, 0.75, 1.0]),
    ("cfg_scale", "0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),
    ("cfg_scale", "7, 7.5", [7.0, 7.5]),
    ("cfg_scale", "0.2-1 [4]", [0.2, 0.4666666666666667, 0.7333333333333334, 1.0]),  # numpy.linspace's values
    ("cfg_scale", "0.05-1 [7]", [0.05, 0.20833333333333331, 0.36666666666666664, 0.525, 0.6833333333333333,
                                 0.8416666666666667, 1.0]),
    ("steps", "1-10 [3]", [1, 5, 10]),
    ("schedule_type", "Karras, automatic, EXPONENTIAL", ["Karras", "automatic", "EXPONENTIAL"]),  # named later
    ("prompt_sr", '"cat, tabby", dog ,  bird', ["cat, tabby", "dog", "bird"]),
    ("sampler", "Euler, DDIM", ["Euler", "DDIM"]),
])
def test_axis_values_are_parsed_like_a1111(kind: str, text: str, values: list | None) -> None:
    parsed = parse_values(PlotAxis(kind, text), "X values", 64)
    if values is not None:
        assert parsed == values and [type(v) for v in parsed] == [type(v) for v in values]
    else:
        assert parsed == [-1]


def test_values_text_reads_back() -> None:
    values = ["cat, tabby", "dog", 'a "quoted" word', 0.30000000000000004]
    assert split_values(axis_values_text(values)) == ["cat, tabby", "dog", 'a "quoted" word', "0.3"]


def test_picked_values_keep_their_order_and_types() -> None:
    assert parse_values(PlotAxis("sampler", ("DDIM", "Euler", " ")), "X values", 64) == ["DDIM", "Euler"]
    assert parse_values(PlotAxis("steps", (3, 2.0, "4-5")), "X values", 64) == [3, 2, 4, 5]


@pytest.mark.parametrize(("plot", "message"), [
    (_plot(PlotAxis("steps", "")), "X values (Steps) are empty: type values such as 20, 30, 40 or a range such as "
                                   "10-40 (+10)."),
    # The empty-axis hint follows the kind: picked from a list, or typed as words or on/off, not numbers.
    (_plot(PlotAxis("sampler", ())), "X values (Sampler) are empty: pick one or more samplers."),
    (_plot(PlotAxis("hires_upscaler", ())), "X values (Hires upscaler) are empty: pick one or more upscalers."),
    (_plot(PlotAxis("schedule_type", " ")), "X values (Schedule type) are empty: pick one or more schedule types."),
    (_plot(PlotAxis("prompt_sr", "")), "X values (Prompt S/R) are empty: type the words to find in the prompt, then "
                                       "what replaces them: cat, dog, tiger."),
    (_plot(PlotAxis("steps", "ten")), "X values (Steps): 'ten' is not a whole number or a range such as 10-40 (+10)."),
    (_plot(PlotAxis("steps", "1.5")), "X values (Steps): '1.5' is not a whole number or a range such as 10-40 (+10)."),
    (_plot(PlotAxis("steps", "1-10 (+0)")), "X values (Steps): the step of '1-10 (+0)' never reaches 10."),
    (_plot(PlotAxis("steps", "10-1 (+5)")), "X values (Steps): the step of '10-1 (+5)' never reaches 1."),
    (_plot(PlotAxis("seed", "1-100000")), "X values (Seed): '1-100000' gives 100000 values; an axis may have at "
                                          "most 64."),
    (_plot(PlotAxis("cfg_scale", "1-2 [500]")), "X values (CFG scale): '1-2 [500]' asks for 500 values; an axis may "
                                                "have 1 to 64."),
    (_plot(PlotAxis("schedule_type", "Karras, DDIM")), "X values (Schedule type): Unknown schedule type(s) 'DDIM'; "
                                                       "choose from: Automatic, Uniform, Karras, Exponential, Polyexponential, SG"
                                                       "M Uniform, KL Optimal, Align Your Steps, Simple, Normal, Beta."),
    (_plot(PlotAxis("sampler", ("Euler", "Nope"))), "X values (Sampler): Unknown sampler(s) 'Nope'; choose from: "
                                                    "DPM++ 2M, Euler a, Euler, DDIM, UniPC, DPM++ 2M SDE, Heun."),
    (_plot(PlotAxis("checkpoint", "sd21, sd2-depth")), "X values (Checkpoint): Unknown checkpoint(s) 'sd2-depth'; "
                                                       "choose from: sd2-base, sd2, sd21-base, sd21."),
    (_plot(PlotAxis("prompt_sr", "dog, cow")), "Prompt S/R did not find 'dog' in the prompt or the negative prompt."),
    (_plot(PlotAxis("strength", "0.5, 1")), "Denoising strength varies only an image-to-image plot; add an init "
                                            "image."),
    (_plot(PlotAxis("warp", "1")), "Unknown X axis 'warp'; choose one of: sampler, steps, cfg_scale, seed, "
                                   "checkpoint, schedule_type, guidance_rescale, strength, prompt_sr, "
                                   "variation_seed, variation_strength, eta, hires_steps, hires_upscaler, "
                                   "hires_sampler, prompt_order."),
    (_plot(PlotAxis("nothing")), "Choose what the X axis varies."),
    (_plot(PlotAxis("steps", "1, 2"), PlotAxis("steps", "3")), "The X and Y axes both vary Steps; choose different "
                                                               "ones."),
    (_plot(PlotAxis("steps", "1-8"), PlotAxis("seed", "1-9")), "The plot has 8×9 = 72 cells; the limit is 64."),
    (_plot(PlotAxis("steps", "1, 200")), "Steps: 200: Steps must be between 1 and 150, got 200."),
    (_plot(PlotAxis("cfg_scale", "7"), PlotAxis("guidance_rescale", "0, 2")),
     "CFG scale: 7, Guidance rescale: 2: Guidance rescale must be between 0 and 1, got 2.0."),
    (XYZPlotRequest(Img2ImgRequest("x", None), PlotAxis("steps", "1")), "Upload an init image first."),  # type: ignore[arg-type]
])
def test_invalid_plots_are_refused_in_words(plot: XYZPlotRequest, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(plot, CATALOG, Limits())
    assert str(caught.value) == message


def test_prompt_sr_replaces_the_first_value_in_prompt_and_negative() -> None:
    checked, _ = validate(_plot(PlotAxis("prompt_sr", "cat, dog, tiger cub")), CATALOG)
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert [(c.request.prompt, c.request.negative_prompt) for c in cells] == [
        ("a cat on a mat", "blurry cat"), ("a dog on a mat", "blurry dog"), ("a tiger cub on a mat", "blurry tiger cub")]
    assert [c.labels for c in cells] == [("cat", "", ""), ("dog", "", ""), ("tiger cub", "", "")]
    hires = HiresFix(prompt="a cat, 8k", negative_prompt="cat hair")  # A1111 replaces in the hr prompts too
    plot = XYZPlotRequest(replace(_base(), hires=hires), PlotAxis("prompt_sr", "cat, dog"))
    cells, _ = plan_cells(validate(plot, CATALOG)[0], CATALOG, Limits())
    assert [(c.request.hires.prompt, c.request.hires.negative_prompt) for c in cells] == [
        ("a cat, 8k", "cat hair"), ("a dog, 8k", "dog hair")]


def test_cells_share_the_seed_unless_seed_is_an_axis() -> None:
    checked, _ = validate(_plot(PlotAxis("steps", "1, 2"), PlotAxis("cfg_scale", "3, 4"), seed=None), CATALOG)
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert len({c.request.sampling.seed for c in cells}) == 1
    assert [(c.position, c.request.sampling.steps, c.request.sampling.cfg_scale) for c in cells] == [
        ((0, 0, 0), 1, 3.0), ((1, 0, 0), 2, 3.0), ((0, 1, 0), 1, 4.0), ((1, 1, 0), 2, 4.0)]
    seeded, _ = validate(_plot(PlotAxis("seed", "5, -1")), CATALOG)
    values = seeded.x.values
    assert values[0] == 5 and 0 <= values[1] <= 2**32 - 1


def test_variation_axes_as_a1111s_var_seed_and_var_strength() -> None:
    """A1111's "Var. seed" and "Var. strength": a -1 variation seed is drawn per value; with no variation seed
    in the base, one is drawn once for the whole plot (A1111 fixes the subseed before the cells)."""
    checked, _ = validate(_plot(PlotAxis("variation_strength", "0-1 [3]"), PlotAxis("variation_seed", "5, -1")),
                          CATALOG)
    drawn = checked.y.values[1]
    assert checked.x.values == (0.0, 0.5, 1.0) and checked.y.values[0] == 5 and 0 <= drawn <= 2**32 - 1
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert [(c.request.seed_extras.variation_seed, c.request.seed_extras.variation_strength) for c in cells] == [
        (None, 0.0), (5, 0.5), (5, 1.0), (None, 0.0), (drawn, 0.5), (drawn, 1.0)]
    assert [c.labels[:2] for c in cells[:2]] == [("Var. strength: 0", "Var. seed: 5"),
                                                  ("Var. strength: 0.5", "Var. seed: 5")]
    alone, _ = validate(_plot(PlotAxis("variation_strength", "0.25, 0.5")), CATALOG)
    cells, _ = plan_cells(alone, CATALOG, Limits())
    seeds = {c.request.seed_extras.variation_seed for c in cells}
    assert len(seeds) == 1 and seeds != {None}  # one variation seed for every cell


def test_a_schedule_type_falls_back_where_a_sampler_has_none_with_one_warning() -> None:
    checked, warnings = validate(_plot(PlotAxis("sampler", "Euler, DDIM, Euler a"), schedule="Exponential"), CATALOG)
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert [c.request.sampling.schedule for c in cells] == ["Exponential", "Automatic", "Automatic"]
    assert warnings == ["Schedule type Exponential is not available for DDIM; it uses its own schedule.",
                        "Schedule type Exponential is not available for Euler a; it uses its own schedule."]
    with pytest.raises(InvalidRequest, match="^Schedule type must be one of Automatic, Uniform, Karras, .*, Beta; got "):
        validate(_plot(PlotAxis("sampler", "Euler, DDIM"), schedule="karras"), CATALOG)


AUTO = "Automatic"


@pytest.mark.parametrize(("axis", "hires", "passes", "warnings"), [
    # a Hires sampler axis after a Karras first pass: DDIM's hires pass runs its own schedule
    (PlotAxis("hires_sampler", "Euler, DDIM"), HiresFix(), [("Karras", "Euler", "Karras"), ("Karras", "DDIM", AUTO)],
     ["Schedule type Karras is not available for the hires pass's DDIM; it uses its own schedule."]),
    # a Sampler axis: the hires pass of its own sampler keeps the first pass's Karras where DDIM's first pass drops it
    (PlotAxis("sampler", "Euler, DDIM"), HiresFix(sampler="Euler"), [("Karras", "Euler", "Karras"),
                                                                     (AUTO, "Euler", "Karras")],
     ["Schedule type Karras is not available for DDIM; it uses its own schedule."]),
    # the hires pass as the first pass's sampler: one warning, for both passes
    (PlotAxis("sampler", "Euler, DDIM"), HiresFix(), [("Karras", "Euler", "Karras"), (AUTO, "DDIM", AUTO)],
     ["Schedule type Karras is not available for DDIM; it uses its own schedule."]),
    (PlotAxis("sampler", "Euler, DDIM"), HiresFix(schedule="Exponential"),
     [("Karras", "Euler", "Exponential"), (AUTO, "DDIM", AUTO)],
     ["Schedule type Exponential is not available for the hires pass's DDIM; it uses its own schedule.",
      "Schedule type Karras is not available for DDIM; it uses its own schedule."]),
], ids=["hires sampler axis", "hires sampler of its own", "same sampler", "hires schedule of its own"])
def test_a_hires_pass_schedule_type_falls_back_where_its_sampler_has_none(
        axis: PlotAxis, hires: HiresFix, passes: list, warnings: list) -> None:
    """(first pass's schedule type, hires pass's sampler, its schedule type) per cell, each fitted on its own."""
    base = replace(_base(schedule="Karras"), hires=replace(hires, scale=1.5))
    checked, _ = validate(XYZPlotRequest(base, axis), CATALOG)
    cells, notes = plan_cells(checked, CATALOG, Limits())
    assert [(c.request.sampling.schedule, *c.request.hires.sampler_and_schedule(c.request.sampling))
            for c in cells] == passes
    assert notes == warnings


def test_plot_runs_every_cell_with_progress_grids_labels_and_times() -> None:
    service = fake_service(None)
    events: list[tuple[int, int]] = []
    finished: list[tuple[int, ...]] = []
    plot = _plot(PlotAxis("sampler", ("DDIM", "Euler")), PlotAxis("steps", "1-3"))
    result = service.plot(plot, on_progress=lambda d, t, p: events.append((d, t)),
                          on_cell=lambda cell, image, s: finished.append(cell.position))
    assert events[-1] == (12, 12) and [d for d, _ in events] == list(range(1, 13))
    assert finished == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 2, 0), (1, 2, 0)]
    assert len(result.images) == 1 + 6 and result.task == "xyz_plot" and not result.stopped
    assert [c.split(" · ")[0] for c in result.captions] == ["Grid", "DDIM, Steps: 1", "Euler, Steps: 1",
                                                             "DDIM, Steps: 2", "Euler, Steps: 2", "DDIM, Steps: 3",
                                                             "Euler, Steps: 3"]
    assert all(c.endswith(" s") for c in result.captions[1:])
    # no per-cell entries between them (issue 19, item 9); then the phases of keeping the result
    assert set(result.timings) == {"load", "run", "total", "mark", "encode", "history"}
    assert ["Sampler: DDIM," in im.info["parameters"] for im in result.images[1:3]] == [True, False]
    grid_text = parse_parameters(result.parameters)
    assert "Sampler" not in grid_text and "Steps" not in grid_text
    assert grid_text["X Type"] == "Sampler" and grid_text["X Values"] == "DDIM, Euler"
    assert grid_text["Y Type"] == "Steps" and grid_text["Y Values"] == "1, 2, 3" and grid_text["Seed"] == 11
    assert service.history()[0].parameters == result.parameters
    assert [row["sampler"] for row in result.cells] == ["DDIM", "Euler"] * 3
    assert [row["steps"] for row in result.cells] == [1, 1, 2, 2, 3, 3]
    assert [row["y_label"] for row in result.cells[:2]] == ["Steps: 1", "Steps: 1"]


def test_the_z_values_grids_come_side_by_side_and_alone_with_include_sub_grids() -> None:
    """A1111's Z: one image of every Z value's grid, side by side, SUB_GRID_GAP px apart (each titled with its
    value); "Include sub grids" adds each Z value's grid alone after it."""
    service = fake_service(None)
    service.watermark = False  # compared pixel for pixel: each image would carry its own watermark
    plot = _plot(PlotAxis("steps", "1, 2"), None, PlotAxis("cfg_scale", "5, 6"))
    result = service.plot(plot)
    assert result.captions[0] == "Grid" and len(result.images) == 1 + 4
    assert re.fullmatch(r"Steps: 1, CFG scale: 5 · \d+\.\d\d s", result.captions[1])  # the cell's own time
    result = service.plot(replace(plot, include_sub_grids=True))
    assert result.captions[:3] == ["Grid", "Grid: CFG scale: 5", "Grid: CFG scale: 6"] and len(result.images) == 3 + 4
    joined, first, second = result.images[:3]
    assert joined.size == (first.width + SUB_GRID_GAP + second.width, first.height)
    for left, grid in ((0, first), (first.width + SUB_GRID_GAP, second)):  # each as drawn alone
        assert np.array_equal(np.asarray(joined.crop((left, 0, left + grid.width, grid.height))), np.asarray(grid))


def test_checkpoint_cells_run_together() -> None:
    service = fake_service(None)
    service.plot(_plot(PlotAxis("steps", "1, 2"), PlotAxis("checkpoint", ("sd2-base", "sd21-base"))))
    assert service.manager.used == ["sd2-base", "sd2-base", "sd21-base", "sd21-base"]
    service.manager.used.clear()
    service.plot(_plot(PlotAxis("checkpoint", ("sd2-base", "sd21-base")), PlotAxis("steps", "1, 2")))
    assert service.manager.used == ["sd2-base", "sd2-base", "sd21-base", "sd21-base"]


def test_stop_returns_the_finished_cells_and_a_partial_grid() -> None:
    service = fake_service(None)
    seen: list[int] = []
    result = service.plot(_plot(PlotAxis("steps", "2, 2, 2")), on_progress=lambda d, t, p: seen.append(d),
                          should_stop=lambda: len(seen) >= 3)
    assert result.stopped and len(result.images) == 1 + 1
    assert result.warnings[-1] == 'Stopped: 1 of 3 cells ran; the grid marks the other 2 "not run".'
    assert [row["status"] for row in result.cells] == ["done", "not run (stopped)", "not run (stopped)"]
    assert service.history()[0].task == "xyz_plot"
    with pytest.raises(Cancelled):
        service.plot(_plot(PlotAxis("steps", "2, 2")), should_stop=lambda: True)


def test_a_stopped_z_plot_keeps_its_whole_grid_with_the_rest_not_run() -> None:
    """Stop in the second of 2x2 cells of 96x96 (X Steps, Z CFG): the joined grid is the whole plot's, the second Z
    value's grid as large as the first (its cells were 64 px blanks), the cell that ran in its place and the three
    others grey "not run" cells of its size."""
    service = fake_service(None)
    service.watermark = False  # compared pixel for pixel
    plot = XYZPlotRequest(replace(_base(), width=96, height=96), PlotAxis("steps", "2, 2"), None,
                          PlotAxis("cfg_scale", "5, 6"))
    whole = service.plot(plot).images[0]
    seen: list[int] = []
    stopped = service.plot(plot, on_progress=lambda d, t, p: seen.append(d), should_stop=lambda: len(seen) >= 3)
    assert stopped.warnings[-1] == 'Stopped: 1 of 4 cells ran; the grid marks the other 3 "not run".'
    grid = np.asarray(stopped.images[0])
    assert stopped.images[0].size == whole.size
    ran = np.all(np.asarray(whole) == np.asarray(stopped.images[1]).reshape(-1, 3)[0], axis=-1)  # every cell's colour
    top = int(np.where(ran.any(axis=1))[0][0])
    lefts = _starts(ran[top])
    assert len(lefts) == 4 and ran.sum() == 4 * 96 * 96
    cells = [grid[top:top + 96, left:left + 96] for left in lefts]
    assert np.array_equal(cells[0], np.asarray(whole)[top:top + 96, lefts[0]:lefts[0] + 96])
    blank = np.asarray(not_run_cell((96, 96), load_font(16)))
    assert [np.array_equal(cell, blank) for cell in cells] == [False, True, True, True]


def test_tables_hold_each_cell(tmp_path) -> None:
    service = fake_service(None)
    result = service.plot(_plot(PlotAxis("cfg_scale", "5, 6.5")))
    csv_path, json_path = write_tables(result.cells, tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["x_cfg_scale"], r["cfg_scale"], r["status"]) for r in rows] == [("5", "5.0", "done"),
                                                                             ("6.5", "6.5", "done")]
    assert all(float(r["seconds"]) >= 0 for r in rows)
    assert json.loads(json_path.read_text()) == result.cells


def test_grid_labels_are_drawn_in_the_margins() -> None:
    cells = [Image.new("RGB", (64, 64), (200, 0, 0)) for _ in range(6)]
    cells[4] = None  # type: ignore[call-overload]
    grid = draw_grid(cells, 3, 2, ["Steps: 10", "Steps: 20", "Steps: 30"], ["CFG scale: 5", "CFG scale: 7"],
                     "Seed: 1")
    array = np.asarray(grid)
    red = np.all(array == (200, 0, 0), axis=-1)
    rows, columns = np.where(red)
    top, left = rows.min(), columns.min()
    assert red.sum() == 5 * 64 * 64  # five cells pasted, the one that did not run a grey "not run" cell
    assert top > 40 and left > 60  # a title and X labels above, Y labels to the left
    dark = np.all(array < 80, axis=-1)
    assert dark[:top].sum() > 300 and dark[top:, :left].sum() > 300  # text in both margins
    assert not dark[top:, left:].any()
    lefts, tops = _starts(red[top]), _starts(red[:, left])  # the three columns, the two rows
    assert len(lefts) == 3 and len(tops) == 2
    not_run = array[tops[1]:tops[1] + 64, lefts[1]:lefts[1] + 64]  # the second row's middle cell, in its place
    assert np.array_equal(not_run, np.asarray(not_run_cell((64, 64), load_font(16))))
    assert np.all(not_run[0, 0] == NOT_RUN_FILL) and (not_run < 128).any()  # grey, with its words


def _starts(line: np.ndarray) -> list[int]:
    """Where each run of True in `line` begins."""
    return [i for i in range(len(line)) if line[i] and (i == 0 or not line[i - 1])]


@pytest.mark.slow
def test_a_2x3_plot_on_tiny_checkpoints_equals_individual_runs(tmp_path) -> None:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    # No watermark: the grid (over 256x256 pixels) would carry it, and the test finds a cell's pixels in the grid.
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path), outputs_dir=None, watermark=False)
    base = Txt2ImgRequest("a cat", checkpoint="sd21-base", width=64, height=64, sampling=Sampling(steps=2, seed=9))
    plot = XYZPlotRequest(base, PlotAxis("sampler", ("Euler", "DDIM")), PlotAxis("cfg_scale", "1, 4-7 (+3)"))
    result = service.run(plot)
    cells = result.images[1:]
    assert len(cells) == 6 and result.captions[1].startswith("Euler, CFG scale: 1 · ")
    for cell, (sampler, cfg) in zip(cells, [(s, c) for c in (1.0, 4.0, 7.0) for s in ("Euler", "DDIM")]):
        alone = service.run(replace(base, sampling=replace(base.sampling, sampler=sampler, cfg_scale=cfg)))
        assert np.array_equal(np.asarray(cell), np.asarray(alone.images[0])), (sampler, cfg)
        assert cell.info["parameters"] == alone.images[0].info["parameters"]
    grid = np.asarray(result.images[0])
    assert grid.shape[0] > 3 * 64 and grid.shape[1] > 2 * 64
    first = np.asarray(cells[0])
    matches = [(r, c) for r in range(grid.shape[0] - 63) for c in range(grid.shape[1] - 63)
               if np.array_equal(grid[r, c:c + 64], first[0]) and np.array_equal(grid[r:r + 64, c:c + 64], first)]
    assert len(matches) == 1  # the cell itself sits in the grid, unscaled


def test_an_init_image_makes_an_image_to_image_plot_with_a_strength_axis() -> None:
    service = fake_service(None)
    base = Img2ImgRequest("a cat", Image.new("RGB", (64, 48)), sampling=Sampling(steps=10, seed=2))
    events: list[tuple[int, int]] = []
    result = service.plot(XYZPlotRequest(base, PlotAxis("strength", "0.5, 1"), PlotAxis("steps", "10")),
                          on_progress=lambda d, t, p: events.append((d, t)))
    assert events[-1] == (15, 15)  # int(10 * 0.5) + 10 steps: what img2img really runs
    assert [(row["strength"], row["width"], row["height"]) for row in result.cells] == [(0.5, 64, 48), (1.0, 64, 48)]
    assert parse_parameters(result.parameters)["X Type"] == "Denoising"  # A1111's name of the axis
    assert [c.split(" · ")[0] for c in result.captions[1:]] == ["Denoising strength: 0.5, Steps: 10",
                                                                "Denoising strength: 1, Steps: 10"]
    with pytest.raises(InvalidRequest, match="Denoising strength: 0.05: Strength 0.05 with 10 steps runs no"):
        validate(XYZPlotRequest(base, PlotAxis("strength", "0.05")), CATALOG)


def test_a_counted_strength_range_ends_at_exactly_one() -> None:
    """A1111's "0.2-1 [4]" ends at 1.0; an end one rounding above 1 would be refused as a strength."""
    base = Img2ImgRequest("a cat", Image.new("RGB", (64, 48)), sampling=Sampling(steps=10, seed=2))
    checked, _ = validate(XYZPlotRequest(base, PlotAxis("strength", "0.2-1 [4]")), CATALOG)
    assert checked.x.values == (0.2, 0.4666666666666667, 0.7333333333333334, 1.0)


def test_the_cells_add_up_against_the_job_cost_cap() -> None:
    limits = Limits(max_job_cost=3000)  # one cell is 10 steps x 2 (guidance) x 8x8 latent pixels = 1,280
    checked, _ = validate(_plot(PlotAxis("seed", "1, 2"), steps=10), CATALOG, limits)  # 2,560: fits
    assert len(checked.x.values) == 2
    with pytest.raises(InvalidRequest) as caught:
        validate(_plot(PlotAxis("seed", "1, 2, 3"), steps=10), CATALOG, limits)  # 3,840: each cell fits, not all
    assert str(caught.value) == (
        "This job is too large for this server: it costs 3,840 UNet evaluations x latent pixels and the limit is "
        "3,000. Lower the number of cells, the steps or the size (at most 7 steps fit with the other settings "
        "unchanged).")


def test_running_a_plot_checks_each_cell_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Service's run plans the cells validation checked: a 2x2 plot is the base and four cells, checked once
    each."""
    checked = spy_on_plot_checks(monkeypatch)
    result = fake_service(None).run(_plot(PlotAxis("steps", "1, 2"), PlotAxis("seed", "3, 4")))
    assert len(checked) == 1 + 4
    assert [cell["steps"] for cell in result.cells] == [1, 2, 1, 2] and len(result.images) == 1 + 4


def test_each_cell_keeps_its_own_seed_and_the_grid_the_first_cells(tmp_path) -> None:
    """A seed axis (or kept random seeds) gives each cell its own seed: the result's per-image seeds (what the saved
    files are named after and "Reuse last seed" reads), the grid the first cell's, as A1111's grid reports."""
    service = fake_service(tmp_path)
    result = service.plot(_plot(PlotAxis("seed", "5, 6, 7")))
    assert result.seed == 5 and result.image_seeds == [5, 5, 6, 7]
    assert [path.name.split("-")[1] for path in result.saved] == ["5", "5", "6", "7"]
    assert service.plot(_plot(PlotAxis("steps", "1, 2"))).image_seeds == [11, 11, 11]  # the base seed


def test_kept_random_seeds_are_drawn_in_each_cell() -> None:
    """A1111's "Keep -1 for seeds" (no_fixed_seeds): the base's -1 seed and unset variation seed stay random,
    so each cell draws its own; a -1 on a Seed axis stays -1 (each cell of that value draws its own)."""
    plot = replace(_plot(PlotAxis("variation_strength", "0.25, 0.5"), PlotAxis("steps", "1, 2"), seed=-1),
                   no_fixed_seeds=True)
    checked, _ = validate(plot, CATALOG)
    assert checked.base.sampling.seed == -1 and checked.base.seed_extras.variation_seed is None
    cells, _ = plan_cells(checked, CATALOG, Limits())
    assert len({c.request.sampling.seed for c in cells}) == 4
    assert len({c.request.seed_extras.variation_seed for c in cells}) == 4
    assert all(0 <= c.request.sampling.seed <= 2**32 - 1 for c in cells)
    seeded, _ = validate(replace(_plot(PlotAxis("seed", "5, -1")), no_fixed_seeds=True), CATALOG)
    assert seeded.x.values == (5, -1)
