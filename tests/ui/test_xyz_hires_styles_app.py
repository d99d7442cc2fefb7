"""The X/Y/Z plot's hires fix and Styles axis through the running app (`python app.py --tiny --styles STYLES.CSV
--max-job-cost 2000`, served in-process; gradio_client calls of /xyz_plot and /txt2img).

A hires plot's cells are the /txt2img runs with the same hires fix, pixel for pixel and parameter for parameter,
and its cost counts the second passes; a Styles plot's cells are the /txt2img runs with those styles picked; both
are refused in words where they cannot run.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from sd2_app.api.checks import Catalog, Limits
from sd2_app.api.plot import validate_plot
from sd2_app.api.plot_axes import AXES, offered_axes
from sd2_app.api.requests import PlotAxis, Txt2ImgRequest, XYZPlotRequest
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_styles import StyleBook, read_styles
from sd2_app.pipelines.metadata import parse_parameters
from tests.a1111_support import a1111_error_body
from tests.api.test_prompt_styles_app import STYLES_CSV, served_with_styles
from tests.reliability_support import one_thread, served_app  # noqa: F401 (fixtures)

MAX_JOB_COST = 2000  # a 2-cell 64x64 plot of 2 steps costs 512; with a 2x hires fix, 2,560 (sd2_app/api/cost.py)
SOLO = {"prompt": "a cat", "negative_prompt": "ugly", "sampler": "Euler", "steps": 2, "seed": 4, "cfg_scale": 7.5,
        "width": 64, "height": 64}
# The host's styles: oil and frame, and one whose name has a comma (a CSV file may quote one)
CSV = STYLES_CSV + '"moody, dark","{prompt}, moody light",cartoon\n'
HIRES = {"hires_fix": True, "hires_upscaler": "Lanczos", "hires_scale": 1.5, "denoising_strength": 0.5}


@pytest.fixture(scope="module")
def client(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with served_with_styles(tmp_path_factory, "--max-job-cost", str(MAX_JOB_COST), csv=CSV) as url:
        yield Client(url, verbose=False)


def _pngs(gallery: list[dict]) -> list[Image.Image]:
    images = [Image.open(item["image"]) for item in gallery]
    for image in images:
        image.load()
    return images


def _captions(gallery: list[dict]) -> list[str]:
    return [item["caption"].split(" · ")[0] for item in gallery]


def _equal_to_solo_runs(client: Client, cells: list[Image.Image], solos: list[dict]) -> None:
    for cell, solo in zip(cells, solos, strict=True):
        alone = _pngs(client.predict(api_name="/txt2img", **{**SOLO, **solo})[1])[0]
        assert cell.size == alone.size
        assert np.array_equal(np.asarray(cell), np.asarray(alone)), solo
        assert cell.info["parameters"] == alone.info["parameters"]


def test_a_hires_plot_runs_each_cell_with_the_tabs_hires_fix(client: Client) -> None:
    """The tab's hires fix (upscaler Lanczos, 1.5x, strength 0.5) is the base of every cell: each cell is 96x96
    and the /txt2img run with that fix; the grid's labels are the axis values and its text keeps the fix."""
    _, gallery, info, _ = client.predict(api_name="/xyz_plot", **SOLO, **HIRES, x_type="sampler",
                                         x_picked=["Euler", "DDIM"])
    assert _captions(gallery) == ["Grid", "Euler", "DDIM"]
    grid, *cells = _pngs(gallery)
    assert [cell.size for cell in cells] == [(96, 96), (96, 96)]
    for cell in cells:
        assert cell.info["parameters"].endswith(
            "Denoising strength: 0.5, Hires upscale: 1.5, Hires upscaler: Lanczos")  # no hires steps asked
    _equal_to_solo_runs(client, cells, [{**HIRES, "sampler": "Euler"}, {**HIRES, "sampler": "DDIM"}])
    parsed = client.predict(path=handle_file(gallery[0]["image"]), api_name="/png_info")[1]
    assert (parsed["X Type"], parsed["X Values"], parsed["Hires upscale"], parsed["Hires upscaler"]) == (
        "Sampler", "Euler, DDIM", 1.5, "Lanczos")
    assert "Sampler" not in parsed and "hires fix was off" not in info
    assert grid.width > 2 * 96 and grid.height > 96  # two 96-pixel cells and the label margin


def test_typed_values_of_a_picked_axis_win_over_the_picked_default(client: Client) -> None:
    """gradio_client fills x_picked with the tab's six default samplers; a caller who types x_values for a
    Sampler axis gets the two typed (they ran the six, without a word), and picked values still run without."""
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **SOLO, x_type="sampler", x_values="Euler, DDIM")
    assert _captions(gallery)[1:] == ["Euler", "DDIM"]
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **SOLO, x_type="sampler", x_picked=["DDIM"])
    assert _captions(gallery)[1:] == ["DDIM"]


def test_a_hires_axis_varies_the_tabs_hires_fix_instead_of_the_defaults(client: Client) -> None:
    """With the fix on in the tab, a Hires steps axis changes only the steps: the cells keep Lanczos at 1.5x (with
    the fix off, the axis would turn it on with its defaults, Latent at 2x, and say so)."""
    _, gallery, info, _ = client.predict(api_name="/xyz_plot", **SOLO, **HIRES, x_type="hires_steps",
                                         x_values="1, 3")
    assert _captions(gallery) == ["Grid", "Hires steps: 1", "Hires steps: 3"]
    cells = _pngs(gallery)[1:]
    assert "Hires steps: 3, Hires upscaler: Lanczos" in cells[1].info["parameters"]
    _equal_to_solo_runs(client, cells, [{**HIRES, "hires_steps": 1}, {**HIRES, "hires_steps": 3}])
    assert "hires fix was off" not in info


def test_a_hires_plot_is_bounded_by_the_job_cost_cap(client: Client) -> None:
    """Two 64x64 cells of 2 steps cost 512 and run; with a 2x hires fix they cost 2,560 (each second pass 1,024)
    and are refused before anything runs, the message naming the hires fix."""
    plot = {**SOLO, "x_type": "sampler", "x_picked": ["Euler", "DDIM"]}
    assert len(client.predict(api_name="/xyz_plot", **plot)[1]) == 3
    with pytest.raises(AppError) as refused:
        client.predict(api_name="/xyz_plot", **plot, hires_fix=True, hires_scale=2)
    assert str(refused.value) == (
        "This job is too large for this server: it costs 2,560 UNet evaluations x latent pixels and the limit is "
        "2,000. Lower the number of cells, the steps, the size or the hires fix (at most 1 steps fit with the other "
        "settings unchanged).")


def test_a_plot_whose_one_cell_is_over_the_cap_is_refused_in_the_plots_terms(client: Client) -> None:
    """One 64x64 cell of 2 steps with a 4x hires fix costs 256 + 4,096 (the 256x256 second pass), over the cap
    alone: the refusal prices the plot (two cells, 8,704) and names what the plot tab has, not text to image's
    "images per prompt" (the plot has none; its cells were priced as /txt2img runs)."""
    with pytest.raises(AppError) as refused:
        client.predict(api_name="/xyz_plot", **SOLO, x_type="sampler", x_picked=["Euler", "DDIM"], hires_fix=True,
                       hires_scale=4)
    assert str(refused.value) == (
        "This job is too large for this server: it costs 8,704 UNet evaluations x latent pixels and the limit is "
        "2,000. Lower the number of cells, the steps, the size or the hires fix.")


def test_a_steps_plot_over_the_cap_counts_no_steps_that_fit(client: Client) -> None:
    """A Steps axis of 10 and 20 over the cap: its cells run the axis's steps, so the refusal gives no "at most N
    steps fit", which it counted from the base's 25 steps that no cell runs (cells: 30 steps x 2 calls x 64)."""
    with pytest.raises(AppError) as refused:
        client.predict(api_name="/xyz_plot", **{**SOLO, "steps": 25}, x_type="steps", x_values="10, 20")
    assert str(refused.value) == (
        "This job is too large for this server: it costs 3,840 UNet evaluations x latent pixels and the limit is "
        "2,000. Lower the number of cells, the steps or the size.")


def test_the_hires_fix_is_refused_with_an_init_image(client: Client, tmp_path) -> None:
    image = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (90, 120, 30)).save(image)
    with pytest.raises(AppError) as refused:
        client.predict(api_name="/xyz_plot", **SOLO, hires_fix=True, init_image=handle_file(str(image)),
                       x_type="strength", x_values="0.5, 1")
    assert str(refused.value) == ("The hires fix runs only in a text-to-image plot; remove the init image or turn "
                                  "the hires fix off.")


def test_the_hires_prompts_run_the_second_pass_styled_and_prompt_s_r_reaches_them(client: Client) -> None:
    """Text to image's Hires prompt boxes: the second pass reads them, with the picked styles applied as to the
    prompt (A1111 styles hr_prompt too); the text writes them under A1111's keys; a Prompt S/R plot replaces in
    them too, each cell the /txt2img run with the replaced texts."""
    own = {**HIRES, "hires_prompt": "a cat, 8k", "hires_negative_prompt": "dark"}
    styled = _pngs(client.predict(api_name="/txt2img", **SOLO, **own, styles=["oil"])[1])[0]
    assert styled.info["parameters"].endswith('Hires prompt: "a cat, 8k, oil painting, thick brush", '
                                              'Hires negative prompt: "dark, photo"')
    plain = _pngs(client.predict(api_name="/txt2img", **SOLO, **HIRES, styles=["oil"])[1])[0]
    assert not np.array_equal(np.asarray(styled), np.asarray(plain))
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **SOLO, **own, x_type="prompt_sr", x_values="cat, dog")
    _equal_to_solo_runs(client, _pngs(gallery)[1:], [
        own, {**own, "prompt": "a dog", "hires_prompt": "a dog, 8k"}])


def test_a_styles_axis_runs_each_cell_with_its_styles(client: Client) -> None:
    """A1111's Styles axis: each value applies the host's styles it names (several between commas, in order);
    each cell is the /txt2img run with those styles picked."""
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **SOLO, x_type="styles", x_values='oil, "frame,oil"',
                                      x_picked=[])
    assert _captions(gallery) == ["Grid", "Styles: oil", "Styles: frame,oil"]
    cells = _pngs(gallery)[1:]
    assert cells[1].info["parameters"].startswith("a picture of a cat, framed, oil painting, thick brush\n"
                                                  "Negative prompt: blurry, ugly, photo\n")
    _equal_to_solo_runs(client, cells, [{"styles": ["oil"]}, {"styles": ["frame", "oil"]}])
    parsed = client.predict(path=handle_file(gallery[0]["image"]), api_name="/png_info")[1]
    assert (parsed["X Type"], parsed["X Values"], parsed["Prompt"]) == ("Styles", 'oil, "frame,oil"', "a cat")


def test_a_styles_axis_names_only_the_hosts_styles(client: Client) -> None:
    with pytest.raises(AppError) as refused:
        client.predict(api_name="/xyz_plot", **SOLO, x_type="styles", x_picked=["oil", "w" * 70])
    assert str(refused.value) == (f"X values (Styles): Unknown style '{'w' * 60}'...; this server's styles: 'oil', "
                                  "'frame', 'moody, dark'.")


def test_a_styles_axis_applies_a_style_whose_name_has_a_comma(client: Client) -> None:
    """A style the axis's list offers is one value, its comma included (it was split at the comma and refused:
    "Unknown style 'moody'"); the grid's text quotes it, so its X Values read back as the same two values."""
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **SOLO, x_type="styles", x_picked=["moody, dark", "oil"])
    assert _captions(gallery) == ["Grid", "Styles: moody, dark", "Styles: oil"]
    cells = _pngs(gallery)[1:]
    assert cells[0].info["parameters"].startswith("a cat, moody light\nNegative prompt: ugly, cartoon\n")
    _equal_to_solo_runs(client, cells, [{"styles": ["moody, dark"]}, {"styles": ["oil"]}])
    parsed = client.predict(path=handle_file(gallery[0]["image"]), api_name="/png_info")[1]
    assert parsed["X Values"] == '"moody, dark", oil'


def test_the_tab_offers_styles_only_where_the_host_has_them(client: Client, served_app) -> None:  # noqa: F811
    """The X/Y/Z type dropdowns (the page's config, as the browser gets it) list Styles, with the host's styles
    to pick, only with --styles; without, a Styles axis sent anyway is refused."""
    def offered(config: dict) -> list[str]:
        props = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
        return [value for _, value in props["xyz-y-type"]["choices"]]

    # one list, `offered_axes`, for the tab and the plot's validation
    assert offered(client.config) == ["nothing", *offered_axes(read_styles(CSV))] == ["nothing", *AXES]
    bare = Client(served_app[0], verbose=False)
    kinds = offered_axes(StyleBook())
    assert offered(bare.config) == ["nothing", *kinds] and "styles" not in kinds
    with pytest.raises(AppError) as refused:
        bare.predict(api_name="/xyz_plot", **SOLO, x_type="styles", x_values="oil", x_picked=[])
    assert str(refused.value) == "X type: 'styles' is not one of the choices."  # the dropdown's (ui/raw_values.py)
    with pytest.raises(InvalidRequest) as unknown:  # the plot's validation, which the CLI reaches
        validate_plot(XYZPlotRequest(base=Txt2ImgRequest(prompt="a cat"), x=PlotAxis("styles", "oil")),
                      Catalog({}, {}, {}), Limits(), StyleBook())
    assert str(unknown.value) == f"Unknown X axis 'styles'; choose one of: {', '.join(kinds)}."


@pytest.mark.parametrize("script", ["X/Y/Z plot", "x/y/z plot", "X/Y plot"])
def test_a1111_clients_x_y_z_plot_script_is_refused_pointing_at_xyz_plot(client: Client, script: str) -> None:
    """A1111 clients send `script_name: "X/Y/Z plot"` with positional script_args (the axis types as positions in
    A1111's own list, which differs between versions); the 422 says so and where the plot runs here."""
    body = {**SOLO, "script_name": script, "script_args": [4, "10, 20", [], 0, "", [], 0, "", [], True, False]}
    answer = httpx.post(f"{client.src.rstrip('/')}/sdapi/v1/txt2img", json=body, timeout=60)
    assert (answer.status_code, answer.json()) == (422, a1111_error_body(422, (
        "The X/Y/Z plot script (script_name) is not run through this API: A1111's script_args give each axis as a "
        "position in A1111's own list of axis types, which differs between A1111 versions, txt2img and img2img and "
        "installed extensions, so they cannot be read reliably here. Run the plot with this app's /xyz_plot "
        "endpoint (gradio_client: x_type='steps', x_values='10, 20', y_type=..., the README's API section) or its "
        "X/Y/Z plot tab; send script_name at its default or leave it out.")))
    other = httpx.post(f"{client.src.rstrip('/')}/sdapi/v1/txt2img", json={**SOLO, "script_name": "Loopback"},
                       timeout=60)
    assert (other.status_code, other.json()) == (422, a1111_error_body(
        422, "scripts (script_name) are not supported; send script_name at its default or leave it out."))


def _seeds(gallery: list[dict]) -> list[int]:
    """Each cell's seed, read from its own parameters text (the gallery's first image is the grid)."""
    return [parse_parameters(cell.info["parameters"])["Seed"] for cell in _pngs(gallery)[1:]]


def test_a_random_seed_is_drawn_once_unless_kept_random_in_each_cell(client: Client) -> None:
    """A1111's "Keep -1 for seeds" (scripts/xyz_grid.py, no_fixed_seeds): off, seed -1 is drawn once and all four
    cells share it (the info line's seed); on, each cell draws its own and the info line names them. A -1
    on a Seed axis is drawn once per value either way (three values, three seeds)."""
    plot = {**SOLO, "seed": -1, "steps": 1, "x_type": "steps", "x_values": "1, 2", "y_type": "cfg_scale",
            "y_values": "7, 8"}
    _, gallery, info, _ = client.predict(api_name="/xyz_plot", **plot)
    seeds = _seeds(gallery)
    assert len(seeds) == 4 and len(set(seeds)) == 1 and info.startswith(f"**Seed** {seeds[0]} · ")
    _, gallery, info, _ = client.predict(api_name="/xyz_plot", **plot, no_fixed_seeds=True)
    seeds = _seeds(gallery)
    assert len(set(seeds)) == 4 and info.startswith(f"**Seeds** {', '.join(map(str, seeds))} · ")  # each cell's
    for keep in (False, True):
        _, gallery, _, _ = client.predict(api_name="/xyz_plot", **{**SOLO, "steps": 1}, x_type="seed",
                                          x_values="-1, -1, -1", no_fixed_seeds=keep)
        assert len(set(_seeds(gallery))) == 3


def test_a_grid_without_its_legend_is_the_cells_alone(client: Client) -> None:
    """A1111's "Draw legend" off: the grid of two 64x64 cells is 136x68 (each cell and the 4 px gap between
    cells), no label margin; with it, 328x104 (columns as wide as their labels, a row of labels on top)."""
    plot = {**SOLO, "steps": 1, "x_type": "cfg_scale", "x_values": "7, 8"}
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **plot)
    assert _pngs(gallery)[0].size == (328, 104)
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **plot, draw_legend=False)
    grid, *cells = _pngs(gallery)
    assert grid.size == (136, 68)
    assert np.array_equal(np.asarray(grid.crop((2, 0, 66, 64))), np.asarray(cells[0].convert("RGB")))
    assert np.array_equal(np.asarray(grid.crop((70, 0, 134, 64))), np.asarray(cells[1].convert("RGB")))


def test_a_z_axis_joins_its_grids_and_margins_space_the_cells(client: Client) -> None:
    """A1111's Z grid: one image of the Z values' grids side by side, 16 px apart; "Include sub grids" adds each
    alone. "Grid margins (px)" 10 adds 10 px between cells: two 64x64 cells without legend are 156x78."""
    plot = {**SOLO, "steps": 1, "x_type": "cfg_scale", "x_values": "7, 8", "z_type": "steps", "z_values": "1, 2"}
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **plot)
    assert _captions(gallery) == ["Grid", "CFG scale: 7, Steps: 1", "CFG scale: 8, Steps: 1",
                                  "CFG scale: 7, Steps: 2", "CFG scale: 8, Steps: 2"]
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", **plot, include_sub_grids=True, draw_legend=False,
                                      margin_size=10)
    assert _captions(gallery)[:4] == ["Grid", "Grid: Steps: 1", "Grid: Steps: 2", "CFG scale: 7, Steps: 1"]
    joined, first, second = _pngs(gallery)[:3]
    assert first.size == second.size == (156, 78) and joined.size == (156 + 16 + 10 + 156, 78)


@pytest.mark.parametrize(("name", "value", "refusal"), [
    ("no_fixed_seeds", "false", "Keep -1 for seeds must be true or false, got 'false'."),
    ("draw_legend", 0, "Draw legend must be true or false, got 0."),
    ("include_sub_grids", "yes", "Include sub grids must be true or false, got 'yes'."),
    ("margin_size", 130, "Grid margins (px) must be between 0 and 128, got 130."),
    ("margin_size", 2.5, "Grid margins (px) must be a whole number, got 2.5."),
])
def test_the_plots_options_are_checked(client: Client, name: str, value: object, refusal: str) -> None:
    with pytest.raises(AppError) as refused:
        client.predict(api_name="/xyz_plot", **SOLO, x_type="steps", x_values="1", **{name: value})
    assert str(refused.value) == refusal
