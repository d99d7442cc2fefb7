"""The app's HTTP API through gradio_client, launched in-process on the tiny random-weight checkpoints.

Every generation endpoint returns PNGs of the requested size carrying their parameters; invalid input comes
back as the service's readable message; the models, history and PNG-info endpoints answer.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "assets"
FAST = {"steps": 2, "seed": 7, "cfg_scale": 7.5}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, object, Path]]:
    from sd2_app.manager import ModelManager
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.api.service import Service
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched

    cache = tmp_path_factory.mktemp("cache")
    outputs = tmp_path_factory.mktemp("outputs")
    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))  # the tiny repos the pipeline tests also use
    service = Service(ModelManager("cpu", registry=registry, cache_dir=cache), outputs_dir=outputs)
    with launched(build_ui(service)) as url:
        yield Client(url, verbose=False), service, outputs


def _pngs(gallery: list[dict]) -> list[Image.Image]:
    images = [Image.open(item["image"]) for item in gallery]
    for image in images:
        image.load()
        assert image.format == "PNG"
    return images


def _small(name: str, size: int, tmp_path: Path) -> str:
    path = tmp_path / f"{size}-{name}"
    Image.open(ASSETS / name).convert("RGB").resize((size, size)).save(path)
    return str(path)


def test_txt2img_returns_pngs_of_the_requested_size_with_parameters(app) -> None:
    client, service, outputs = app
    _, gallery, info = client.predict(prompt="a white cat", width=64, height=72, batch_size=2, api_name="/txt2img",
                                      **FAST)
    images = _pngs(gallery)
    assert [im.size for im in images] == [(64, 72), (64, 72)]
    text = images[0].info["parameters"]
    assert text.startswith("a white cat\n") and "Seed: 7," in text and "Size: 64x72" in text
    assert "Sampler: DPM++ 2M" in text and "Steps: 2" in text
    assert "Seed: 8," in images[1].info["parameters"]  # each image its own seed (A1111's numbering)
    assert info.startswith("**Seeds** 7–8 · ")
    saved = [*sorted(outputs.glob("*/*-7-txt2img.png")), *sorted(outputs.glob("*/*-8-txt2img.png"))]
    assert len(saved) == 2 and [Image.open(path).info["parameters"] for path in saved] == [
        image.info["parameters"] for image in images]


def test_img2img_inpaint_upscale_depth_endpoints(app, tmp_path: Path) -> None:
    client, _, _ = app
    landscape = _small("landscape.png", 64, tmp_path)
    _, gallery, _ = client.predict(image=handle_file(landscape), prompt="a painting", strength=0.5,
                                   api_name="/img2img", **FAST)
    assert [im.size for im in _pngs(gallery)] == [(64, 64)]

    wide = tmp_path / "wide.png"
    halves = Image.new("RGB", (128, 64), (255, 0, 0))
    halves.paste((0, 0, 255), (64, 0, 128, 64))
    halves.save(wide)
    for mode in ("Just resize", "Crop and resize", "Resize and fill"):
        _, gallery, _ = client.predict(image=handle_file(str(wide)), prompt="a painting", strength=0.5, width=64,
                                       height=72, resize_mode=mode, api_name="/img2img", **FAST)
        assert [im.size for im in _pngs(gallery)] == [(64, 72)], mode

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    editor = {"background": handle_file(landscape), "layers": [], "composite": None}
    _, gallery, _, mask_used = client.predict(image_and_mask=editor, mask=handle_file(str(tmp_path / "mask.png")),
                                              prompt="a cat", api_name="/inpaint", **FAST)
    assert [im.size for im in _pngs(gallery)] == [(64, 64)]
    assert Image.open(mask_used).size == (64, 64)

    cat = _small("cat_128.png", 16, tmp_path)
    _, gallery, _, before = client.predict(image=handle_file(cat), prompt="a cat", noise_level=20,
                                           api_name="/upscale", **FAST)
    after = _pngs(gallery)
    assert [im.size for im in after] == [(64, 64)] and "Noise level" in after[0].info["parameters"]
    assert Image.open(before).size == (64, 64)

    still = _small("still_life.png", 64, tmp_path)
    _, gallery, _, depth_used = client.predict(image=handle_file(still), prompt="two tigers", strength=0.7,
                                               api_name="/depth", **FAST)
    assert [im.size for im in _pngs(gallery)] == [(64, 64)]
    assert Image.open(depth_used).size == (64, 64)


def test_xyz_plot_grid_cells_and_tables(app) -> None:
    client, service, _ = app
    _, gallery, info, files = client.predict(
        prompt="two tigers", x_type="sampler", x_picked=["Euler", "DDIM"], y_type="cfg_scale", y_values="1, 5",
        steps=2, seed=3, width=64, height=64, api_name="/xyz_plot")
    images = _pngs(gallery)
    assert len(images) == 1 + 4 and [im.size for im in images[1:]] == [(64, 64)] * 4
    assert images[0].width > 2 * 64 and images[0].height > 2 * 64  # the grid, with its label margins
    assert [item["caption"].split(" · ")[0] for item in gallery] == [
        "Grid", "Euler, CFG scale: 1", "DDIM, CFG scale: 1", "Euler, CFG scale: 5", "DDIM, CFG scale: 5"]
    grid_text = images[0].info["parameters"]
    assert 'X Type: Sampler, X Values: "Euler, DDIM", Y Type: CFG Scale, Y Values: "1, 5"' in grid_text
    assert "Sampler: Euler," in images[1].info["parameters"] and "CFG scale: 5.0" in images[4].info["parameters"]
    assert "**Seed** 3" in info and "Sampler:" not in info and "load" in info
    tables = sorted(files, key=lambda f: Path(f).suffix)
    rows = list(csv.DictReader(open(tables[0], encoding="utf-8")))
    assert [(r["sampler"], r["cfg_scale"], r["seed"]) for r in rows] == [
        ("Euler", "1.0", "3"), ("DDIM", "1.0", "3"), ("Euler", "5.0", "3"), ("DDIM", "5.0", "3")]
    assert json.loads(Path(tables[1]).read_text())[3]["x_label"] == "DDIM"
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert service.history(owner=None)[0].task == "xyz_plot"


def test_xyz_plot_of_image_to_image_over_strength(app, tmp_path: Path) -> None:
    client, _, _ = app
    landscape = _small("landscape.png", 64, tmp_path)
    _, gallery, _, _ = client.predict(prompt="a painting", init_image=handle_file(landscape), x_type="strength",
                                      x_values="0.5, 1", steps=2, seed=5, width=64, height=64, api_name="/xyz_plot")
    images = _pngs(gallery)
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["Grid", "Denoising strength: 0.5",
                                                                     "Denoising strength: 1"]
    assert [im.size for im in images[1:]] == [(64, 64)] * 2
    assert "Denoising strength: 0.5" in images[1].info["parameters"]


def test_xyz_plot_counted_range_reads_as_in_a1111(app, tmp_path: Path) -> None:
    """A1111's "0.2-1 [4]": numpy.linspace's four values, the last exactly 1 (a strength one rounding above 1
    would be refused)."""
    client, _, _ = app
    landscape = _small("landscape.png", 64, tmp_path)
    _, gallery, _, files = client.predict(prompt="a painting", init_image=handle_file(landscape), x_type="strength",
                                          x_values="0.2-1 [4]", steps=5, seed=5, width=64, height=64,
                                          api_name="/xyz_plot")
    table = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert [row["strength"] for row in table] == [0.2, 0.4666666666666667, 0.7333333333333334, 1.0]
    assert [item["caption"].split(" · ")[0] for item in gallery][1:] == [
        "Denoising strength: 0.2", "Denoising strength: 0.466667", "Denoising strength: 0.733333",
        "Denoising strength: 1"]
    assert 'X Type: Denoising, X Values: "0.2, 0.466667, 0.733333, 1"' in _pngs(gallery)[0].info["parameters"]


def test_xyz_plot_over_a1111s_var_seed_and_var_strength(app) -> None:
    client, _, _ = app
    _, gallery, _, _ = client.predict(prompt="a fox", x_type="variation_strength", x_values="0, 0.5",
                                      y_type="variation_seed", y_values="21, 22", steps=2, seed=3, width=64,
                                      height=64, api_name="/xyz_plot")
    images = _pngs(gallery)
    assert [item["caption"].split(" · ")[0] for item in gallery][1:] == [
        "Var. strength: 0, Var. seed: 21", "Var. strength: 0.5, Var. seed: 21",
        "Var. strength: 0, Var. seed: 22", "Var. strength: 0.5, Var. seed: 22"]
    assert "Variation seed: 22, Variation seed strength: 0.5" in images[4].info["parameters"]
    assert "Variation seed" not in images[1].info["parameters"]  # strength 0: the seed's own noise
    assert np.array_equal(np.asarray(images[1]), np.asarray(images[3]))  # so both seeds give the same image there
    assert not np.array_equal(np.asarray(images[2]), np.asarray(images[4]))
    assert "X Type: Var. strength" in images[0].info["parameters"]


def test_xyz_plot_tab_offers_a1111s_axes_by_name(app) -> None:
    """The X/Y/Z tab's type dropdowns (the page's config, as the browser gets it) list the new axes."""
    client, _, _ = app
    props = {c["props"].get("elem_id"): c["props"] for c in client.config["components"]}
    for name in ("x", "y", "z"):
        choices = [tuple(choice) for choice in props[f"xyz-{name}-type"]["choices"]]
        assert {("Eta", "eta"), ("Hires steps", "hires_steps"), ("Hires upscaler", "hires_upscaler"),
                ("Hires sampler", "hires_sampler"), ("Prompt order", "prompt_order")} <= set(choices), name


SOLO = {"prompt": "a fox and a cat", "sampler": "Euler", "steps": 2, "seed": 4, "cfg_scale": 7.5, "width": 64,
        "height": 64}


@pytest.mark.parametrize(("axis", "captions", "solos"), [
    ({"x_type": "hires_steps", "x_values": "1, 3"}, ["Hires steps: 1", "Hires steps: 3"],
     [{"hires_fix": True, "hires_steps": 1}, {"hires_fix": True, "hires_steps": 3}]),
    ({"x_type": "hires_upscaler", "x_picked": ["Lanczos", "Latent (nearest-exact)"]},
     ["Hires upscaler: Lanczos", "Hires upscaler: Latent (nearest-exact)"],
     [{"hires_fix": True, "hires_upscaler": "Lanczos"}, {"hires_fix": True, "hires_upscaler": "Latent (nearest-exact)"}]),
    ({"x_type": "hires_sampler", "x_picked": ["DDIM", "Heun"]}, ["Hires sampler: DDIM", "Hires sampler: Heun"],
     [{"hires_fix": True, "hires_sampler": "DDIM"}, {"hires_fix": True, "hires_sampler": "Heun"}]),
    ({"x_type": "prompt_order", "x_values": "fox, cat"}, ["fox, cat", "cat, fox"],
     [{"prompt": "a fox and a cat"}, {"prompt": "a cat and a fox"}]),
])
def test_xyz_plot_new_axis_cells_equal_solo_runs(app, axis: dict, captions: list[str], solos: list[dict]) -> None:
    """A1111's Hires steps / upscaler / sampler and Prompt order axes: a 2-value axis makes 2 cells, each the
    /txt2img run with that setting, pixel for pixel and parameter for parameter (a hires axis turns the hires
    fix on with its defaults, the txt2img tab's defaults too)."""
    client, _, _ = app
    _, gallery, info, _ = client.predict(api_name="/xyz_plot", **{**SOLO, **axis})
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["Grid", *captions]
    cells = _pngs(gallery)[1:]
    assert ("The hires fix was off; the Hires" in info) == axis["x_type"].startswith("hires")
    for cell, solo in zip(cells, solos):
        _, out, _ = client.predict(api_name="/txt2img", **{**SOLO, **solo})
        alone = _pngs(out)[0]
        assert cell.size == alone.size == ((128, 128) if "hires_fix" in solo else (64, 64))
        assert np.array_equal(np.asarray(cell), np.asarray(alone)), solo
        assert cell.info["parameters"] == alone.info["parameters"]
    assert not np.array_equal(np.asarray(cells[0]), np.asarray(cells[1]))  # the axis changes the image
    grid = client.predict(path=handle_file(gallery[0]["image"]), api_name="/png_info")[1]
    assert grid["X Type"] == axis["x_type"].replace("_", " ").capitalize()  # A1111's names: "Hires steps", ...


def test_xyz_plot_eta_cells_equal_ddim_runs_with_that_eta(app) -> None:
    """Eta (DDIM only): the cells equal the service's DDIM runs with eta 0 and 1 and say "Eta DDIM: 1.0" as those do;
    on Euler the plot is refused (it would be two equal images)."""
    from sd2_app.api.requests import Sampling, Txt2ImgRequest

    client, service, _ = app
    ddim = {**SOLO, "sampler": "DDIM"}
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", x_type="eta", x_values="0, 1", **ddim)
    cells = _pngs(gallery)[1:]
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["Grid", "Eta: 0", "Eta: 1"]
    for cell, eta in zip(cells, (0.0, 1.0)):
        alone = service.run(Txt2ImgRequest(SOLO["prompt"], width=64, height=64, sampling=Sampling(
            sampler="DDIM", steps=2, seed=4, cfg_scale=7.5, eta=eta))).images[0]
        assert np.array_equal(np.asarray(cell), np.asarray(alone)), eta
        assert cell.info["parameters"] == alone.info["parameters"]
    assert "Eta DDIM: 1.0" in cells[1].info["parameters"] and "Eta" not in cells[0].info["parameters"]
    assert not np.array_equal(np.asarray(cells[0]), np.asarray(cells[1]))
    with pytest.raises(AppError) as caught:
        client.predict(api_name="/xyz_plot", x_type="eta", x_values="0, 1", **SOLO)
    assert str(caught.value) == ("Eta changes only DDIM, and no cell of this plot runs it; choose DDIM as the sampler "
                                 "or add it to a Sampler axis.")


def test_xyz_plot_refuses_a_pasted_sampler_with_its_schedule_saying_what_to_pick(app) -> None:
    """X values pasted from A1111 before 1.9 ("Euler a, DPM++ 2M Karras"): refused before anything runs, saying
    which sampler to pick and where the schedule is set (it said "Unknown sampler(s) 'DPM++ 2M Karras'")."""
    client, _, _ = app
    with pytest.raises(AppError) as caught:
        client.predict(api_name="/xyz_plot", x_type="sampler", x_values="Euler a, DPM++ 2M Karras", **SOLO)
    assert str(caught.value) == ("X values (Sampler): 'DPM++ 2M Karras' is DPM++ 2M with the Karras schedule in its "
                                 "name, as A1111 named it before 1.9; pick DPM++ 2M and set its Schedule type (or "
                                 "vary it on a Schedule type axis).")


def test_xyz_plot_progress_counts_each_hires_cells_second_pass(app) -> None:
    """A hires cell's progress runs through both passes (2 + 1, then 2 + 3 steps), so the plot's count ends at its
    total and never passes it."""
    from sd2_app.api.requests import PlotAxis, Sampling, Txt2ImgRequest, XYZPlotRequest

    _, service, _ = app
    events: list[tuple[int, int]] = []
    base = Txt2ImgRequest("a fox", width=64, height=64, sampling=Sampling(sampler="Euler", steps=2, seed=4))
    service.plot(XYZPlotRequest(base, PlotAxis("hires_steps", "1, 3")), lambda done, total, _: events.append(
        (done, total)))
    assert events == [(done, 8) for done in range(1, 9)]


def test_xyz_plot_stop_keeps_the_finished_cells(app) -> None:
    client, _, _ = app
    job = client.submit(prompt="x", x_type="steps", x_values="20, 20, 20, 20", seed=1, width=64, height=64,
                        api_name="/xyz_plot")
    deadline = time.monotonic() + 120
    def galleries() -> list[list[dict]]:  # the gallery values streamed so far (skipped outputs are not lists)
        return [out[1] for out in job.outputs() if isinstance(out[1], list) and out[1]]

    while time.monotonic() < deadline and not galleries():
        time.sleep(0.2)  # until the first finished cell is on screen
    client.predict(api_name="/xyz_plot_stop")
    while not job.done():
        time.sleep(0.2)
    shown = galleries()[-1]  # the partial result (grid first), or the cells streamed before the stop landed
    cells = [item for item in shown if item["caption"].startswith("Steps: 20 · ")]
    assert 1 <= len(cells) < 4 and shown[-len(cells):] == cells and len(shown) - len(cells) <= 1
    assert all(Image.open(item["image"]).size == (64, 64) for item in cells)


def test_outpaint_extends_one_side_and_keeps_the_image(app, tmp_path: Path) -> None:
    client, _, _ = app
    landscape = _small("landscape.png", 64, tmp_path)
    _, gallery, info, mask = client.predict(image=handle_file(landscape), prompt="more sky", left=0, right=0, up=16, down=0,
                                                  api_name="/outpaint", **FAST)
    result = _pngs(gallery)[0]
    assert result.size == (64, 80)
    assert np.array_equal(np.asarray(result.convert("RGB"))[16:], np.asarray(Image.open(landscape).convert("RGB")))
    expected = np.zeros((80, 64), np.uint8)
    expected[:16] = 255
    assert np.array_equal(np.asarray(Image.open(mask).convert("L")), expected)
    text, fields = client.predict(path=handle_file(gallery[0]["image"]), api_name="/png_info")
    assert fields["Outpaint up"] == 16 and fields["Outpaint fill"] == "edge" and fields["Size"] == "64x80"


def test_outpaint_sides_left_out_extend_by_128_pixels(app, tmp_path: Path) -> None:
    client, _, _ = app
    _, gallery, _, mask = client.predict(image=handle_file(_small("landscape.png", 64, tmp_path)), prompt="wider",
                                         api_name="/outpaint", **FAST)
    assert _pngs(gallery)[0].size == (64 + 2 * 128, 64 + 2 * 128)
    text, fields = client.predict(path=handle_file(gallery[0]["image"]), api_name="/png_info")
    assert [fields[f"Outpaint {side}"] for side in ("left", "right", "up", "down")] == [128, 128, 128, 128]


@pytest.mark.parametrize(
    ("endpoint", "kwargs", "message"),
    [
        ("/txt2img", {"prompt": "x", "seed": -5, "width": 64, "height": 64},
         "Seed must be -1 (random) or between 0 and 4294967295, got -5."),
        # a seed refused elsewhere is named as its box or axis is (they said "Seed" for the Variation seed box)
        ("/txt2img", {"prompt": "x", "variation_seed": -7, "variation_strength": 0.5, "width": 64, "height": 64},
         "Variation seed must be -1 (random) or between 0 and 4294967295, got -7."),
        ("/xyz_plot", {"prompt": "x", "x_type": "variation_seed", "x_values": "1, -5"},
         "X values (Var. seed) must be -1 (random) or between 0 and 4294967295, got -5."),
        ("/txt2img", {"prompt": "x", "checkpoint": "sd2-depth", "width": 64, "height": 64},
         "Checkpoint: 'sd2-depth' is not one of the choices."),  # the dropdown's check (ui/raw_values.py)
        ("/txt2img", {"prompt": "x", "sampler": "DDIM", "schedule_type": "Karras", "width": 64, "height": 64},
         "Schedule type Karras is not available for the DDIM sampler; pick Automatic."),
        ("/img2img", {"prompt": "x"}, "Upload an init image first."),
        ("/depth", {"prompt": "x"}, "Upload an image first."),
        ("/upscale", {"prompt": "x"}, "Upload an image to upscale first."),
        ("/xyz_plot", {"prompt": "x", "x_type": "sampler", "x_picked": []},
         "X values (Sampler) are empty: pick one or more samplers."),
        ("/xyz_plot", {"prompt": "x", "x_type": "steps", "x_values": "1-500"},
         "X values (Steps): '1-500' gives 500 values; an axis may have at most 64."),
        ("/outpaint", {"prompt": "x"}, "Upload an image to outpaint first."),
        # a checkbox's value from an API caller is true or false: the text "false" turned the hires fix on
        ("/txt2img", {"prompt": "x", "hires_fix": "false", "width": 64, "height": 64},
         "Hires fix must be true or false, got 'false'."),
        ("/xyz_plot", {"prompt": "x", "x_type": "steps", "x_values": "1", "hires_fix": {"on": 1}},
         "Hires fix must be true or false, got {'on': 1}."),
        ("/txt2img", {"prompt": "x", "tiling": "no", "width": 64, "height": 64},
         "Tiling must be true or false, got 'no'."),
    ],
)
def test_invalid_input_comes_back_as_a_readable_error(app, endpoint: str, kwargs: dict, message: str) -> None:
    client, _, _ = app
    with pytest.raises(AppError) as caught:
        client.predict(api_name=endpoint, **{"steps": 2, **kwargs})
    assert str(caught.value) == message


def test_img2img_with_one_size_box_empty_takes_the_image_s_side_or_says_it_is_out_of_range(app, tmp_path) -> None:
    """One side typed: the other is the image's (192x128, width 100: 104x128). An image side the server cannot
    run is refused naming it as the image's: it said "Width must be between 64 and 1024, got 1200." of a box the
    visitor had emptied."""
    client, _, _ = app
    for size in ((192, 128), (1200, 96)):
        Image.new("RGB", size, (200, 40, 40)).save(tmp_path / f"{size[0]}.png")
    _, gallery, _ = client.predict(image=handle_file(str(tmp_path / "192.png")), prompt="x", width=100, height=None,
                                   api_name="/img2img", **FAST)
    assert _pngs(gallery)[0].size == (104, 128)
    with pytest.raises(AppError) as caught:
        client.predict(image=handle_file(str(tmp_path / "1200.png")), prompt="x", width=None, height=64,
                       api_name="/img2img", **FAST)
    assert str(caught.value) == ("Width is empty, so it would be the image's width, 1200, which is not between 64 "
                                 "and 1024: type a width, or clear Height too to fit the image.")


@pytest.mark.parametrize("mode", ["Crop and resize", "Resize and fill"])
def test_img2img_crops_or_fills_at_the_size_the_server_rounds_to(app, tmp_path: Path, mode: str) -> None:
    """Width 100 runs at 104 (halves up): the tab cut (or filled) the image at 96 wide, rounding down, and the
    server stretched that to 104; a typed 100 now gives what a typed 104 gives, pixel for pixel."""
    client, _, _ = app
    halves = np.zeros((128, 208, 3), np.uint8)
    halves[:, 104:] = (255, 255, 255)  # black left half, white right half
    Image.fromarray(halves).save(tmp_path / "halves.png")
    runs = [client.predict(image=handle_file(str(tmp_path / "halves.png")), prompt="x", width=width, height=height,
                           resize_mode=mode, strength=0.5, api_name="/img2img", **FAST)
            for width, height in ((100, 128), (104, 128), (None, 130))]
    (first,), (second,), (third,) = (_pngs(gallery) for _, gallery, _ in runs)
    assert first.size == second.size == (104, 128) and third.size == (208, 128)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert "Width 100 was rounded to 104 (a multiple of 8)." in runs[0][2]


def test_empty_mask_is_refused(app, tmp_path: Path) -> None:
    client, _, _ = app
    editor = {"background": handle_file(_small("landscape.png", 64, tmp_path)), "layers": [], "composite": None}
    with pytest.raises(AppError) as caught:
        client.predict(image_and_mask=editor, prompt="x", api_name="/inpaint", **FAST)
    assert str(caught.value) == "The mask is empty: paint over the area to repaint (white = repaint)."


def test_strokes_on_an_editor_with_no_image_are_refused(app, tmp_path: Path) -> None:
    """What the editor sends for strokes painted before any upload: a fully transparent 800x800 background."""
    client, _, _ = app
    Image.new("RGBA", (800, 800), (0, 0, 0, 0)).save(tmp_path / "blank.png")
    stroke = Image.new("RGBA", (800, 800), (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 255), (100, 100, 400, 160))
    stroke.save(tmp_path / "stroke.png")
    editor = {"background": handle_file(str(tmp_path / "blank.png")), "layers": [handle_file(str(tmp_path / "stroke.png"))],
              "composite": handle_file(str(tmp_path / "blank.png"))}
    with pytest.raises(AppError) as caught:
        client.predict(image_and_mask=editor, prompt="x", api_name="/inpaint", **FAST)
    assert str(caught.value) == "Upload an image to inpaint first."


@pytest.mark.slow
def test_models_history_and_png_info(app) -> None:
    client, service, outputs = app
    table, memory = client.predict(checkpoint="sd2-base", api_name="/load_model")
    rows = {row[0]: row for row in table["data"]}
    assert rows["sd2-base"][2] == "on the device" and rows["sd2-base"][4].endswith("sd2-base")
    assert "cpu" in memory
    table, _ = client.predict(api_name="/unload_all")
    assert {row[2] for row in table["data"]} == {"not loaded"}

    client.predict(prompt="history check", width=64, height=64, api_name="/txt2img", **{**FAST, "batch_size": 2})
    gallery, history = client.predict(api_name="/history")
    assert history["data"][0][1:4] == ["txt2img", "7–8", 2] and history["data"][0][4].startswith("history check")
    assert [item["caption"] for item in gallery[:2]] == ["txt2img · seed 7", "txt2img · seed 8"]  # each its own
    assert len(gallery) == sum(row[3] for row in history["data"])

    stranger = Client(client.src, verbose=False)  # another visitor: a different session
    stranger_gallery, stranger_history = stranger.predict(api_name="/history")
    assert not stranger_gallery
    assert not any(str(row[4]).startswith("history check") for row in stranger_history["data"])
    assert any(entry.parameters.startswith("history check") for entry in service.history())  # kept server-side

    saved = sorted(outputs.glob("*/*.png"))[-1]
    text, fields = client.predict(path=handle_file(str(saved)), api_name="/png_info")
    assert text == Image.open(saved).info["parameters"]
    assert fields["Steps"] == 2 and fields["Seed"] == 8 and fields["Size"] == "64x64"  # the batch's second


def test_a_job_behind_another_front_ends_job_says_its_place(app) -> None:
    """Without --batch-users too, a UI job can wait at the GPU gate (behind an A1111 API or MCP job): the info
    line says so with the place, where a bare "Starting…" would hide the wait."""
    from tests.batching_support import Blocker, wait_until

    client, service, _ = app
    for batches in (1, 2):  # a batch count's batch waits there too (its stop check also reads Skip)
        blocker = Blocker(service)  # stands in for an API job on the GPU
        job = client.submit(prompt="behind an API job", api_name="/txt2img", width=64, height=64, **FAST,
                            batch_count=batches)
        wait_until(lambda: any(out[2] == "Queued: 1 job ahead of yours…" for out in job.outputs()),  # noqa: B023
                   timeout=60)
        blocker.release.set()
        _, gallery, info = job.result(timeout=120)
        assert len(gallery) == batches and info.startswith("**Seed" + ("s** 7–8" if batches == 2 else "** 7"))


def test_the_page_and_its_settings_come_compressed_and_event_streams_do_not(app) -> None:
    """Raw HTTP, as a browser asks (Accept-Encoding: gzip, deflate, br): the page and /config come gzipped, at
    least 8 times smaller, /config's bytes the same as uncompressed; a queued event's stream is not compressed
    (`sd2_app.ui.compression`)."""
    import gzip

    import httpx

    client, _, _ = app
    url = client.src.rstrip("/")
    sizes = {}
    with httpx.Client(timeout=60) as http:
        for path in ("/", "/config"):
            with http.stream("GET", url + path, headers={"accept-encoding": "gzip, deflate, br"}) as answer:
                sent, headers = b"".join(answer.iter_raw()), answer.headers
            plain = http.get(url + path, headers={"accept-encoding": "identity"})
            assert (headers["content-encoding"], "content-encoding" in plain.headers) == ("gzip", False), path
            if path == "/config":
                assert gzip.decompress(sent) == plain.content
            sizes[path] = (len(sent), len(plain.content))
        joined = http.post(f"{url}/gradio_api/call/count_tokens", json={"data": ["a cat", "sd2-base"]})
        with http.stream("GET", f"{url}/gradio_api/call/count_tokens/{joined.json()['event_id']}",
                         headers={"accept-encoding": "gzip"}) as stream:
            events = b"".join(stream.iter_raw())
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in stream.headers and b"event: complete" in events, events
    assert all(plain > 8 * sent for sent, plain in sizes.values()), sizes
