"""What a stopped X/Y/Z plot delivers, through the running app (`python app.py --tiny --no-watermark`, served
in-process; gradio_client's /xyz_plot and /xyz_plot_stop): the whole grid, the cells that ran in their places and
the others grey "not run" cells of the same size, and the line under the result counting the cells that ran.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from sd2_app.api.plot_grid import SUB_GRID_GAP, draw_grid, load_font, not_run_cell, side_by_side
from tests.reliability_support import one_thread, serve  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

# X Steps 1, 150 and Z CFG 5, 6: the 1-step cell runs first, then Stop lands in the 150 steps of the second.
PLOT = {"prompt": "a lighthouse", "x_type": "steps", "x_values": "1, 150", "z_type": "cfg_scale", "z_values": "5, 6",
        "sampler": "Euler", "seed": 3, "width": 96, "height": 96}
X_LABELS, Z_LABELS = ["Steps: 1", "Steps: 150"], ["CFG scale: 5", "CFG scale: 6"]


@pytest.fixture(scope="module")
def client(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:  # noqa: F811
    """No watermark: the grid's cells are compared pixel for pixel."""
    with serve(["--tiny", "--device", "cpu", "--no-save", "--no-watermark"],
               tmp_path_factory.mktemp("app-cache")) as (url, _):
        yield Client(url, verbose=False)


def _stopped_after_the_first_cell(client: Client) -> tuple[str, list[dict], str]:
    """What Stop answers (the line under it) and the final gallery and info line of PLOT, stopped once its first
    cell is on screen."""
    job = client.submit(api_name="/xyz_plot", **PLOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(isinstance(out[1], list) and out[1] for out in job.outputs()):
        time.sleep(0.1)  # gradio_client's job has no event to wait on: its outputs are polled
    said = client.predict(api_name="/xyz_plot_stop")
    _, gallery, info, _ = job.result(timeout=120)
    return said, gallery, info


def _places() -> list[tuple[int, int]]:
    """The (left, top) of each cell, in grid order, in the whole plot's joined grid: cells of distinct colours
    drawn as `plot_grids` draws them, then found by colour."""
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
    cells = [Image.new("RGB", (96, 96), colour) for colour in colours]
    grids = [draw_grid(cells[2 * z: 2 * z + 2], 2, 1, X_LABELS, title=Z_LABELS[z]) for z in range(2)]
    joined = np.asarray(side_by_side(grids, SUB_GRID_GAP))
    places = []
    for colour in colours:
        rows, columns = np.where(np.all(joined == colour, axis=-1))
        assert len(rows) == 96 * 96
        places.append((int(columns.min()), int(rows.min())))
    return places


def test_a_stopped_plot_shows_its_whole_grid_with_the_cells_that_did_not_run_marked(client: Client) -> None:
    """Stopped in its second of 4 cells: the grid is the whole plot's (both CFG values' grids at 96 px cells; the
    second was drawn with 64 px blanks), the first cell in its place, the other three grey "not run" cells, and
    the line under the result says 1 of 4 cells ran, as Stop itself did (it counted the steps: "Stopped after
    2/302 steps.")."""
    said, gallery, info = _stopped_after_the_first_cell(client)
    assert said == "Stopped: 1 of 4 cells ran."
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["Grid", "Steps: 1, CFG scale: 5"]
    grid, cell = (Image.open(item["image"]).convert("RGB") for item in gallery)
    whole = side_by_side([draw_grid([cell, cell], 2, 1, X_LABELS, title=title) for title in Z_LABELS], SUB_GRID_GAP)
    assert grid.size == whole.size
    pixels = np.asarray(grid)
    shown = [pixels[top:top + 96, left:left + 96] for left, top in _places()]
    blank = np.asarray(not_run_cell((96, 96), load_font(16)))
    assert np.array_equal(shown[0], np.asarray(cell))
    assert [np.array_equal(place, blank) for place in shown] == [False, True, True, True]
    assert '- ⚠️ Stopped: 1 of 4 cells ran; the grid marks the other 3 "not run".' in info.splitlines()
