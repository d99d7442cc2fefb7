"""An X/Y/Z plot's cells and how they run: one validated request each, in `run_order`, through the Service's own
pipeline call (`Service.execute`: the same model manager, fallback ladder, progress and Stop as a single run).

Stop ends the plot at the running cell's next step; the cells finished before it are kept. Skip (A1111's, which
in its X/Y/Z plot ends the image being made and goes on) ends the running cell at its next step with its image so
far, marked as any image Stop ended is ("Stopped at step: k" in its parameters text), and the plot goes on with
the next cell; a cell skipped before its first step is not run (its grid place says so, `plot_grid.not_run_cell`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from sd2_app.api.plot_grid import NOT_RUN
from sd2_app.api.progress import said_skipped
from sd2_app.api.requests import Img2ImgRequest, Txt2ImgRequest
from sd2_app.api.results import ProgressFn
from sd2_app.errors import Cancelled

if TYPE_CHECKING:
    from sd2_app.api.service import Service  # the Service runs plots

CellFn = Callable[["PlotCell", Image.Image, float], None]  # (cell, image, seconds) as each cell finishes


@dataclass(frozen=True)
class PlotCell:
    """One run of the plot: its place in the grids and its validated request."""

    index: int  # position in grid order: x + y * nx + z * nx * ny
    position: tuple[int, int, int]  # (x, y, z) indices
    request: Txt2ImgRequest | Img2ImgRequest
    labels: tuple[str, str, str]  # X, Y and Z labels ("" for an axis not in use)
    steps: int  # denoising steps it runs (`plot._steps_run`: img2img's strength cut, a hires fix's passes)


@dataclass
class CellRuns:
    """What running a plot's cells gave."""

    finished: dict[int, tuple[Image.Image, float]] = field(default_factory=dict)  # cell index: (image, seconds)
    timings: dict[str, float] = field(default_factory=lambda: {"load": 0.0, "run": 0.0})  # summed over the cells
    warnings: list[str] = field(default_factory=list)  # the cells' and Skip's, each once
    stopped: bool = False  # Stop ended the plot
    skipped: dict[int, tuple[int, int] | None] = field(default_factory=dict)  # Skip's: (step, steps) kept, or None


def cell_caption(cell: PlotCell) -> str:
    """The cell's values, X first ("Euler, Steps: 20")."""
    return ", ".join(label for label in cell.labels if label)


def skipped_cell_message(cell: PlotCell, at: tuple[int, int] | None) -> str:
    """What a plot's result says of a cell Skip ended: at (step, steps), or before its first step (None)."""
    if at is None:
        return f"Skipped the cell \"{cell_caption(cell)}\" before its first step; the grid marks it \"{NOT_RUN}\"."
    return f"Skipped the cell \"{cell_caption(cell)}\" at step {at[0]}/{at[1]}; kept its image so far."


def run_order(cells: list[PlotCell]) -> list[PlotCell]:
    """Grid order, except that all cells of one checkpoint run together (first-seen checkpoint first)."""
    rank = {key: i for i, key in enumerate(dict.fromkeys(cell.request.checkpoint for cell in cells))}
    return sorted(cells, key=lambda cell: (rank[cell.request.checkpoint], cell.index))


def run_cells(service: Service, cells: list[PlotCell], on_progress: ProgressFn | None,
              should_stop: Callable[[], bool] | None, on_cell: CellFn | None = None,
              skip: threading.Event | None = None) -> CellRuns:
    """Run the cells in `run_order` (module docstring); `on_cell` as each finishes, a skipped one with its image so
    far too."""
    total = sum(cell.steps for cell in cells)
    runs, done = CellRuns(), 0
    for cell in run_order(cells):
        if should_stop is not None and should_stop():
            runs.stopped = True
            return runs
        try:
            output = service.execute(cell.request, on_progress, should_stop, done_before=done, total=total, skip=skip)
        except Cancelled as stop:
            if skip is None or not skip.is_set() or (should_stop is not None and should_stop()):
                runs.stopped = True
                return runs
            skip.clear()
            output = stop.result  # the image so far (`progress.with_result`); None before the first step
            at = None if output is None else output.stopped_at
            runs.skipped[cell.index] = at
            if output is None or at is None:
                runs.warnings.append(skipped_cell_message(cell, None))
                done += cell.steps
                continue
            output.warnings = said_skipped(output.warnings, at, skipped_cell_message(cell, at))
        done += cell.steps
        for key in runs.timings:
            runs.timings[key] += output.timings.get(key, 0.0)
        runs.warnings += [w for w in getattr(output, "warnings", []) or [] if w not in runs.warnings]
        seconds = output.timings.get("run", 0.0)
        runs.finished[cell.index] = (output.images[0], seconds)
        if on_cell is not None:
            on_cell(cell, output.images[0], seconds)
    return runs
