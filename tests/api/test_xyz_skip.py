"""Skip in an X/Y/Z plot (A1111's Skip, which there ends the image being made and goes on): the running cell ends
at its next step with its image so far, which equals a run of that cell's request stopped at the same step, and
the plot goes on; a cell skipped before its first step is not run. On the tiny checkpoints and on the doubles."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sd2_app.api.requests import PlotAxis, Sampling, Txt2ImgRequest, XYZPlotRequest
from tests.ui_doubles import fake_service

STEPS = 6
BASE = Txt2ImgRequest("a cat", checkpoint="sd21-base", width=64, height=64, sampling=Sampling(steps=STEPS, seed=9))
PLOT = XYZPlotRequest(BASE, PlotAxis("cfg_scale", "1, 4, 7"))


@pytest.fixture
def service(tmp_path: Path):
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    return Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path / "cache"), outputs_dir=None,
                   watermark=False)


def _alone(service, cfg: float, stopped_after: int | None = None):
    """Cell `cfg` run on its own; with `stopped_after`, stopped as the plot's Skip stops it (after that many steps
    reported) and its image so far kept."""
    request = replace(BASE, sampling=replace(BASE.sampling, cfg_scale=cfg))
    if stopped_after is None:
        return service.run(request)
    seen: list[int] = []
    return service.run(request, on_progress=lambda done, total, preview: seen.append(done),
                       should_stop=lambda: len(seen) >= stopped_after, keep_stopped=lambda: True)


def test_skip_ends_the_running_cell_with_its_image_so_far_and_the_plot_goes_on(service) -> None:
    skip = threading.Event()

    def progress(done: int, total: int, preview: object) -> None:
        if done == STEPS + 2:  # the second cell's second step
            skip.set()

    def progress_first(done: int, total: int, preview: object) -> None:
        if done == 2:  # the first cell's second step
            skip.set()

    result = service.run(replace(PLOT, x=PlotAxis("cfg_scale", "4, 1, 7")), on_progress=progress_first, skip=skip)
    assert "Stopped at step" in result.images[1].info["parameters"]  # the first cell, whose text the grid's is made of
    assert "Stopped at step" not in result.parameters and "X Values: \"4, 1, 7\"" in result.parameters
    result = service.run(PLOT, on_progress=progress, skip=skip)
    solo_stopped = _alone(service, 4.0, stopped_after=2)
    step, steps = solo_stopped.stopped_at
    assert (step, steps) == (3, STEPS) and not skip.is_set() and not result.stopped
    grid, *cells = result.images
    assert len(cells) == 3 and [c.split(" · ")[0] for c in result.captions] == [
        "Grid", "CFG scale: 1", "CFG scale: 4", "CFG scale: 7"]
    for cell, expected in zip(cells, (_alone(service, 1.0), solo_stopped, _alone(service, 7.0))):
        assert np.array_equal(np.asarray(cell), np.asarray(expected.images[0]))
        assert cell.info["parameters"] == expected.images[0].info["parameters"]
    assert cells[1].info["parameters"].endswith(f", Stopped at step: {step}")
    assert f'Skipped the cell "CFG scale: 4" at step {step}/{steps}; kept its image so far.' in result.warnings
    assert not any(w.startswith("Stopped") for w in result.warnings)
    assert [row["status"] for row in result.cells] == ["done", f"skipped at step {step}/{steps}", "done"]


def test_a_cell_skipped_before_its_first_step_is_not_run_and_the_next_runs() -> None:
    service = fake_service(None)
    skip = threading.Event()
    ran: list[str] = []

    def finished(cell, image, seconds) -> None:
        ran.append(cell.labels[0])
        if len(ran) == 1:
            skip.set()  # between the first cell and the second

    result = service.plot(XYZPlotRequest(replace(BASE, checkpoint="sd2-base"), PlotAxis("steps", "2, 3, 4")),
                          on_cell=finished, skip=skip)
    assert ran == ["Steps: 2", "Steps: 4"] and not result.stopped and not skip.is_set()
    assert len(result.images) == 1 + 2
    assert result.warnings[-1] == 'Skipped the cell "Steps: 3" before its first step; the grid marks it "not run".'
    assert [row["status"] for row in result.cells] == ["done", "not run (skipped)", "done"]


def test_stop_while_skip_is_set_still_stops_the_plot() -> None:
    service = fake_service(None)
    skip = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int, preview: object) -> None:
        seen.append(done)
        if done == 3:
            skip.set()

    result = service.plot(XYZPlotRequest(replace(BASE, checkpoint="sd2-base"), PlotAxis("steps", "2, 2, 2")),
                          on_progress=progress, should_stop=lambda: len(seen) >= 3, skip=skip)
    assert result.stopped and [row["status"] for row in result.cells] == ["done", "not run (stopped)",
                                                                          "not run (stopped)"]
    assert result.warnings[-1] == 'Stopped: 1 of 3 cells ran; the grid marks the other 2 "not run".'
