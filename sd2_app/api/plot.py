"""X/Y/Z plot: validation of the axes, the cells (one validated request each) and running them in the Service.

A cell is the base request with one value of each axis applied; it runs through the Service's own pipeline
call (same model manager, fallback ladder, progress and Stop as a single run: `plot_cells`). Cells that change the
checkpoint are ordered so each checkpoint is used once in a row (as A1111 puts its costly axes outermost). Stop ends
the plot after the current step: the finished cells, and whole grids with the rest marked "not run", are still
returned (`plot_grid.not_run_cell`); Skip ends the running cell with its image so far and the plot goes on.
"""

from __future__ import annotations

import csv
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd2_app import infotext_keys as keys
from sd2_app.api.checks import Catalog, Limits, flag, integer, random_seed, resolve_seed, schedule_name
from sd2_app.api.plot_axes import (
    AXES,
    AXIS_NAMES,
    SEED_KINDS,
    apply_axis,
    check_choices,
    check_styles,
    fit_to_sampler,
    hires_for_axes,
    offered_axes,
    parse_values,
    read_names,
    uses_eta,
)
from sd2_app.api.plot_cells import CellFn, CellRuns, PlotCell, cell_caption, run_cells
from sd2_app.api.plot_order import check_order_terms
from sd2_app.api.plot_values import format_value
from sd2_app.api.cost import check_job_cost, job_cost
from sd2_app.api.hires_x4 import x4_request
from sd2_app.api.plot_grid import NOT_RUN, plot_grids
from sd2_app.api.requests import (
    ETA_SAMPLERS,
    X4_UPSCALER,
    Img2ImgRequest,
    PlotAxis,
    TaskRequest,
    Txt2ImgRequest,
    XYZPlotRequest,
)
from sd2_app.api.results import ProgressFn, Result
from sd2_app.api.task_checks import validate_task
from sd2_app.errors import Cancelled, InvalidRequest, shown
from sd2_app.pipelines.metadata import attach_parameters, format_parameters, parse_parameters
from sd2_app.prompt_styles import StyleBook
from sd2_app.samplers.registry import AUTOMATIC

if TYPE_CHECKING:
    from sd2_app.api.service import Service  # the Service runs plots: it imports this module

# An image-to-image base has no hires fix: the front ends refuse one sent with an init image.
HIRES_NEEDS_TEXT = "The hires fix runs only in a text-to-image plot; remove the init image or turn the hires fix off."
MAX_GRID_MARGIN = 128  # px; "Grid margins (px)"


def _axes(request: XYZPlotRequest, styles: StyleBook) -> list[tuple[str, PlotAxis]]:
    """The axes in use, X first; an axis of kind "" or "nothing" is left out; each one the host offers
    (`offered_axes`)."""
    offered = offered_axes(styles)
    used = []
    for name, axis in zip(AXIS_NAMES, (request.x, request.y, request.z)):
        if axis is None or (isinstance(axis.kind, str) and axis.kind.lower() in ("", "nothing")):
            continue
        if not isinstance(axis, PlotAxis) or axis.kind not in offered:
            kind = getattr(axis, "kind", axis)
            raise InvalidRequest(f"Unknown {name} axis {shown(kind)}; choose one of: {', '.join(offered)}.")
        used.append((name, axis))
    if not used or used[0][0] != "X":
        raise InvalidRequest("Choose what the X axis varies.")
    kinds = [axis.kind for _, axis in used]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            names = " and ".join(name for name, axis in used if axis.kind == kind)
            raise InvalidRequest(f"The {names} axes both vary {AXES[kind].label}; choose different ones.")
    return used


@dataclass(frozen=True)
class CheckedPlot:
    """A validated plot and what checking it found: its warnings and its cells, each cell validated once."""

    request: XYZPlotRequest  # typed axis values, a validated base (its seed drawn once)
    warnings: list[str]
    cells: list[PlotCell]  # in grid order (`plan_cells`)


def validate_plot(request: XYZPlotRequest, catalog: Catalog, limits: Limits,
                  styles: StyleBook = StyleBook()) -> tuple[XYZPlotRequest, list[str]]:
    """The plot with typed axis values and a validated base (its seed drawn once); every cell is checked
    (`check_plot`, which also keeps the cells for whoever runs or prices them)."""
    checked = check_plot(request, catalog, limits, styles)
    return checked.request, checked.warnings


def check_plot(request: XYZPlotRequest, catalog: Catalog, limits: Limits,
               styles: StyleBook = StyleBook()) -> CheckedPlot:
    """`validate_plot`'s checks, with the validated cells kept: running a plot (`run_plot`) or pricing it
    (`sd2_app.api.gpu_time.seconds_for`) plans its cells once, here. `styles`: the host's, which a Styles axis
    names."""
    base = request.base
    if not isinstance(base, (Txt2ImgRequest, Img2ImgRequest)):
        raise InvalidRequest("An X/Y/Z plot runs a text-to-image or image-to-image request.")
    options = _checked_options(request)
    keep = options["no_fixed_seeds"]
    used = _axes(request, styles)
    base, warnings = hires_for_axes(base, [axis.kind for _, axis in used])
    schedule = schedule_name(base.sampling.schedule)  # the base's sampler may not offer it; each cell's may
    base = replace(base, sampling=replace(base.sampling, batch_size=1, batch_count=1, schedule=AUTOMATIC))
    checked_base, base_warnings = validate_task(base, catalog, limits, priced=False)
    warnings += base_warnings
    if keep:
        checked_base = _random_seeds_kept(checked_base, request.base)
    checked_base = replace(checked_base, sampling=replace(checked_base.sampling, schedule=schedule))
    if isinstance(checked_base, Img2ImgRequest):  # its image is fitted now; an unset size stays "the image's"
        checked_base = replace(checked_base, width=base.width, height=base.height)
    axes = _checked_axes(used, checked_base, catalog, limits, styles, keep)
    extras = checked_base.seed_extras
    if any(axis.kind == "variation_strength" for axis in axes.values()) and extras.variation_seed is None and not keep:
        checked_base = replace(checked_base, seed_extras=replace(extras, variation_seed=resolve_seed(None)))
    checked = XYZPlotRequest(base=checked_base, x=axes["X"], y=axes.get("Y"), z=axes.get("Z"), **options)
    planned, cell_warnings = plan_cells(checked, catalog, limits, styles)
    if "eta" in (axis.kind for axis in axes.values()) and not any(uses_eta(cell.request) for cell in planned):
        raise InvalidRequest(f"Eta changes only {', '.join(ETA_SAMPLERS)}, and no cell of this plot runs it; choose "
                             f"{ETA_SAMPLERS[0]} as the sampler or add it to a Sampler axis.")
    check_job_cost(checked, plot_cost(planned, catalog), limits.max_job_cost)
    return CheckedPlot(checked, warnings + [w for w in cell_warnings if w not in warnings], planned)


def _checked_options(request: XYZPlotRequest) -> dict[str, Any]:
    """A1111's options of the script (scripts/xyz_grid.py), checked: three true or false, the margins in pixels
    (at most MAX_GRID_MARGIN, where A1111 allows 500: a cheap plot of small cells must not make a huge image)."""
    return {"no_fixed_seeds": flag(request.no_fixed_seeds, "Keep -1 for seeds"),
            "draw_legend": flag(request.draw_legend, "Draw legend"),
            "include_sub_grids": flag(request.include_sub_grids, "Include sub grids"),
            "margin_size": integer(request.margin_size, "Grid margins (px)", 0, MAX_GRID_MARGIN)}


def _random_seeds_kept(checked: Txt2ImgRequest | Img2ImgRequest,
                       asked: Txt2ImgRequest | Img2ImgRequest) -> Txt2ImgRequest | Img2ImgRequest:
    """The checked base with the random seed and variation seed it was asked for (-1, None) random again
    (A1111's "Keep -1 for seeds"): each cell's validation (`plan_cells`) then draws its own."""
    if random_seed(asked.sampling.seed):
        checked = replace(checked, sampling=replace(checked.sampling, seed=-1))
    if random_seed(asked.seed_extras.variation_seed):
        checked = replace(checked, seed_extras=replace(checked.seed_extras, variation_seed=None))
    return checked


def _checked_axes(used: list[tuple[str, PlotAxis]], base: Txt2ImgRequest | Img2ImgRequest, catalog: Catalog,
                  limits: Limits, styles: StyleBook, keep: bool = False) -> dict[str, PlotAxis]:
    """The axes in use with typed, checked values ({"X": axis, ...}); their cells within the cell limit.
    `base` is the checked base: Prompt S/R and Prompt order look for their terms in its prompts. A seed axis's -1
    is drawn once per value, or stays -1 with `keep` (each cell draws its own: A1111's fix_axis_seeds)."""
    checkpoints = [key for key, tasks in catalog.tasks.items() if base.task in tasks]
    axes: dict[str, PlotAxis] = {}
    cells = 1
    for name, axis in used:
        kind = AXES[axis.kind]
        what = f"{name} values ({kind.label})"
        if kind.img2img_only and not isinstance(base, Img2ImgRequest):
            raise InvalidRequest(f"{kind.label} varies only an image-to-image plot; add an init image.")
        if kind.txt2img_only and not isinstance(base, Txt2ImgRequest):
            raise InvalidRequest(f"{kind.label} varies only a text-to-image plot with the hires fix; remove the "
                                 "init image.")
        values = read_names(kind, parse_values(axis, what, limits.max_plot_cells), catalog)
        check_choices(kind, values, what, catalog, checkpoints)
        if axis.kind in SEED_KINDS:
            values = [-1 if keep and random_seed(v) else resolve_seed(v, what) for v in values]
        if axis.kind == "prompt_sr" and values[0] not in base.prompt + "\n" + base.negative_prompt:
            raise InvalidRequest(f"Prompt S/R did not find {shown(values[0])} in the prompt or the negative prompt.")
        if axis.kind == "prompt_order":
            check_order_terms(base.prompt, values[0])
        if axis.kind == "styles":
            check_styles(values, what, styles)
        axes[name] = PlotAxis(axis.kind, tuple(values))
        cells *= len(values)
    if cells > limits.max_plot_cells:
        sizes = "×".join(str(len(axis.values)) for axis in axes.values())
        raise InvalidRequest(f"The plot has {sizes} = {cells} cells; the limit is {limits.max_plot_cells}.")
    return axes


def plan_cells(request: XYZPlotRequest, catalog: Catalog, limits: Limits,
               styles: StyleBook = StyleBook()) -> tuple[list[PlotCell], list[str]]:
    """Every cell of a checked plot, validated, in grid order; and the warnings (each once)."""
    slots = (request.x, request.y, request.z)  # an absent axis is one position with no label
    sizes = [len(axis.values) if axis is not None else 1 for axis in slots]
    warnings: list[str] = []
    cells = []
    for z, y, x in itertools.product(*(range(n) for n in reversed(sizes))):
        cell, labels = request.base, []
        for axis, i in zip(slots, (x, y, z)):
            if axis is None:
                labels.append("")
                continue
            cell = apply_axis(axis.kind, cell, axis.values, i, styles)
            labels.append(AXES[axis.kind].cell_label(axis.values[i]))
        cell, notes = fit_to_sampler(cell, catalog)
        warnings += [note for note in notes if note not in warnings]
        try:
            checked, cell_warnings = validate_task(cell, catalog, limits, priced=False)
        except InvalidRequest as error:
            raise InvalidRequest(f"{', '.join(filter(None, labels))}: {error}") from error
        warnings += [w for w in cell_warnings if w not in warnings]
        index = x + y * sizes[0] + z * sizes[0] * sizes[1]
        cells.append(PlotCell(index, (x, y, z), checked, tuple(labels), _steps_run(checked)))  # type: ignore[arg-type]
    return cells, warnings


def _steps_run(checked: TaskRequest) -> int:
    """The steps a validated cell reports as it runs: img2img's strength cut; a hires fix's first pass, second
    pass and, with the "SD2 x4" upscaler, the x4 stage (`hires_x4.run_hires_x4` counts the same)."""
    steps = checked.sampling.steps
    if isinstance(checked, Img2ImgRequest):
        return min(int(steps * checked.strength), steps)
    hires = getattr(checked, "hires", None)
    if hires is None:
        return steps
    x4_steps = x4_request(checked, None, "").sampling.steps if hires.upscaler == X4_UPSCALER else 0  # type: ignore[arg-type]
    return steps + x4_steps + hires.second_pass_steps(steps)


def plot_cost(cells: list[PlotCell], catalog: Catalog) -> int:
    """A plot's cost (`sd2_app.api.cost`): its cells' costs, as they run one after another."""
    return sum(job_cost(cell.request, catalog) for cell in cells)


def cell_rows(request: XYZPlotRequest, cells: list[PlotCell], runs: CellRuns) -> list[dict[str, Any]]:
    """One row per cell for the CSV/JSON download: its axis values, full settings, seconds and status ("done",
    "skipped at step 3/20", "not run (skipped)", "not run (stopped)")."""
    slots = (request.x, request.y, request.z)
    rows = []
    for cell in cells:
        r = cell.request
        row: dict[str, Any] = {"cell": cell.index + 1}
        for name, axis, i, label in zip(AXIS_NAMES, slots, cell.position, cell.labels):
            if axis is None:
                continue
            row[f"{name.lower()}_{axis.kind}"] = format_value(axis.values[i])
            row[f"{name.lower()}_label"] = label
        row.update(prompt=r.prompt, negative_prompt=r.negative_prompt, checkpoint=r.checkpoint,
                   sampler=r.sampling.sampler, schedule_type=r.sampling.schedule, steps=r.sampling.steps,
                   cfg_scale=r.sampling.cfg_scale, guidance_rescale=r.sampling.guidance_rescale,
                   seed=r.sampling.seed, width=r.width, height=r.height)
        if isinstance(r, Img2ImgRequest):
            row["strength"] = r.strength
        done = runs.finished.get(cell.index)
        row["seconds"] = round(done[1], 3) if done else None
        if cell.index not in runs.skipped:
            row["status"] = "done" if done else "not run (stopped)"
        else:
            at = runs.skipped[cell.index]
            row["status"] = f"skipped at step {at[0]}/{at[1]}" if done and at else "not run (skipped)"
        rows.append(row)
    return rows


def grid_parameters(request: XYZPlotRequest, first_text: str) -> str:
    """The grid's parameters text: the first cell's settings less what the axes vary, plus A1111's
    "X Type"/"X Values" keys (so the info line and History name every value, not one cell's)."""
    parsed = parse_parameters(first_text)
    parsed.pop(keys.PROMPT, None), parsed.pop(keys.NEGATIVE_PROMPT, None)
    parsed.pop(keys.STOPPED_AT_STEP, None)  # that cell's own (Skip ended it), not the grid's
    axes = [(name, axis) for name, axis in zip(AXIS_NAMES, (request.x, request.y, request.z)) if axis is not None]
    for _, axis in axes:
        for key in AXES[axis.kind].metadata_keys:
            parsed.pop(key, None)
    for name, axis in axes:
        type_key, values_key = keys.plot_axis_keys(name)
        parsed[type_key] = AXES[axis.kind].type_label
        parsed[values_key] = AXES[axis.kind].values_text(axis.values)
    return format_parameters(request.base.prompt, request.base.negative_prompt, parsed)


def cells_ran(ran: int, total: int, marked: bool = False) -> str:
    """What Stop says of a plot: how many of its cells ran (the line under Stop, `ui.xyz_plot.PlotView`), and with
    `marked` how its grid shows the others (the stopped result's warning)."""
    said = f"Stopped: {ran} of {total} cells ran"
    return f"{said}; the grid marks the other {total - ran} \"{NOT_RUN}\"." if marked else f"{said}."


def run_plot(service: Service, request: XYZPlotRequest | CheckedPlot, on_progress: ProgressFn | None,
             should_stop: Callable[[], bool] | None, on_cell: CellFn | None = None,
             skip: threading.Event | None = None) -> Result:
    """Validate (unless it comes checked), run every cell (`plot_cells.run_cells`; `skip` is A1111's Skip), draw the
    grids (`plot_grids`); the Service's `Result` of it all."""
    plot = request if isinstance(request, CheckedPlot) else service.check_plot(request)
    checked, warnings, cells = plot.request, plot.warnings, plot.cells
    started = time.perf_counter()
    runs = run_cells(service, cells, on_progress, should_stop, on_cell, skip)
    finished, timings, stopped = runs.finished, runs.timings, runs.stopped
    if not finished:
        raise Cancelled
    warnings += [w for w in runs.warnings if w not in warnings]
    if stopped:
        warnings.append(cells_ran(len(finished), len(cells), marked=True))
    order = sorted(finished)
    text = grid_parameters(checked, finished[order[0]][0].info.get(keys.PARAMETERS_KEY, ""))
    drawn = plot_grids(checked, cells, {i: image for i, (image, _) in finished.items()})
    grids = [attach_parameters(grid, text) for grid, _ in drawn]
    captions = [caption for _, caption in drawn]
    cell_images = [finished[i][0] for i in order]
    captions += [f"{cell_caption(cells[i])} · {finished[i][1]:.2f} s" for i in order]
    timings["total"] = time.perf_counter() - started
    # each cell's own seed (a seed axis, kept random seeds: its file's name, "Reuse last seed" on a picked cell);
    # the grids report the first finished cell's, as A1111's grid does (the base seed where no cell varies it)
    cell_seeds = [cells[i].request.sampling.seed for i in order]
    seed = cell_seeds[0]
    seeds = [seed] * len(grids) + cell_seeds
    return Result(task="xyz_plot", request=checked, images=grids + cell_images, seed=seed,
                  warnings=warnings, timings=timings, captions=captions,
                  cells=cell_rows(checked, cells, runs), stopped=stopped, seeds=seeds)


def write_tables(rows: list[dict[str, Any]], folder: Path, stem: str = "xyz-plot-cells") -> tuple[Path, Path]:
    """The cells' rows as `<stem>.csv` and `<stem>.json` in `folder` (the download and the CLI's files)."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    return csv_path, json_path
