"""`python -m sd2_app`: PNGs with their parameters on the tiny checkpoints, read back with `info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.pipeline_fixtures import sample_image, tiny_dir, tiny_repo
from PIL import Image

from sd2_app.__main__ import main
from sd2_app.pipelines.metadata import parse_parameters, read_png_parameters


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manager cache whose tiny/ is the shared tiny-repo cache (so nothing is rewritten)."""
    for kind in ("sd2-base", "sd2-inpainting", "x4-upscaler"):
        tiny_repo(kind)
    folder = tmp_path_factory.mktemp("models")
    (folder / "tiny").symlink_to(tiny_dir(), target_is_directory=True)
    return folder


@pytest.fixture(autouse=True)
def one_thread() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_txt2img_writes_pngs_with_parameters(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["txt2img", "--tiny", "--model-dir", str(model_dir), "--prompt", "a lighthouse",
                 "--negative-prompt", "fog", "--steps", "3", "--seed", "17", "--width", "96", "--height", "64",
                 "--batch-size", "2", "--sampler", "Euler a", "--schedule", "Exponential", "--out", str(tmp_path),
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["seed"] == 17 and summary["seeds"] == [17, 18] and len(summary["paths"]) == 2
    assert [Path(path).name for path in summary["paths"]] == ["txt2img-17-0.png", "txt2img-18-1.png"]  # its seed
    assert parse_parameters(read_png_parameters(summary["paths"][1]))["Seed"] == 18  # each image its own seed
    params = parse_parameters(read_png_parameters(summary["paths"][0]))
    assert params["Prompt"] == "a lighthouse" and params["Negative prompt"] == "fog"
    assert params["Steps"] == 3 and params["Sampler"] == "Euler a" and params["Seed"] == 17
    assert params["Schedule type"] == "Exponential"
    assert params["Size"] == "96x64" and params["Model"] == "sd21-base"
    with Image.open(summary["paths"][1]) as image:
        assert image.size == (96, 64)

    code = main(["info", summary["paths"][0]])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info[summary["paths"][0]]["parsed"] == params


def test_inpaint_and_upscale_from_files(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sample_image(64, 64).save(tmp_path / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert main(["inpaint", "--tiny", "--model-dir", str(model_dir), "--image", str(tmp_path / "in.png"),
                 "--mask", str(tmp_path / "mask.png"), "--prompt", "a door", "--steps", "2", "--seed", "3",
                 "--out", str(out)]) == 0
    paths = capsys.readouterr().out.split()
    assert [Path(p).name for p in paths] == ["inpaint-3-0.png", "inpaint-3-mask.png"]
    result = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert np.array_equal(result[:20], np.asarray(sample_image(64, 64))[:20])  # kept outside the mask
    assert parse_parameters(read_png_parameters(paths[0]))["Denoising strength"] == 1.0
    assert main(["inpaint", "--tiny", "--model-dir", str(model_dir), "--image", str(tmp_path / "in.png"),
                 "--mask", str(tmp_path / "mask.png"), "--prompt", "a door", "--steps", "2", "--seed", "5",
                 "--strength", "0.5", "--invert-mask", "--masked-content", "latent noise", "--out", str(out)]) == 0
    inverted = capsys.readouterr().out.split()
    params = parse_parameters(read_png_parameters(inverted[0]))
    assert (params["Mask mode"], params["Masked content"]) == ("Inpaint not masked", "latent noise")
    box = (slice(20, 44), slice(20, 44))  # the mask's white square: kept
    assert np.array_equal(np.asarray(Image.open(inverted[0]).convert("RGB"))[box], np.asarray(sample_image(64, 64))[box])
    assert np.array_equal(np.asarray(Image.open(inverted[1])), 255 - np.asarray(mask))  # the mask used

    assert main(["upscale", "--tiny", "--model-dir", str(model_dir), "--image", str(tmp_path / "in.png"),
                 "--prompt", "sharp", "--steps", "2", "--seed", "4", "--noise-level", "40", "--batch-count", "2",
                 "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["seeds"] == [4, 5] and len(summary["paths"]) == 2  # two batches: seed 4, then 4 + 1
    assert [Path(path).name for path in summary["paths"]] == ["upscale-4-0.png", "upscale-5-1.png"]
    for path, seed in zip(summary["paths"], (4, 5)):
        with Image.open(path) as image:
            assert image.size == (256, 256)
            params = parse_parameters(read_png_parameters(image))
            assert (params["Noise level"], params["Seed"]) == (40, seed)


def test_bad_input_exits_with_a_message(model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = main(["txt2img", "--tiny", "--model-dir", str(model_dir), "--prompt", "p", "--steps", "2",
                 "--sampler", "No Such Sampler", "--out", str(tmp_path)])
    assert code == 2 and "No Such Sampler" in caplog.text
    assert main(["info", str(tmp_path / "missing.png")]) == 2
    (tmp_path / "not-an-image.png").write_bytes(b"plain text")
    for name in ("missing.png", "not-an-image.png"):
        caplog.clear()
        code = main(["img2img", "--tiny", "--model-dir", str(model_dir), "--prompt", "p", "--steps", "2",
                     "--image", str(tmp_path / name), "--out", str(tmp_path)])
        assert code == 2 and f"cannot read image {tmp_path / name}" in caplog.text


def test_module_entry_point_runs(tmp_path: Path) -> None:
    text = "hello\nSteps: 2, Sampler: Euler, Seed: 5"  # A1111 reads a last line of 3+ pairs as the settings
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png", pnginfo=info)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "sd2_app", "info", str(tmp_path / "x.png")], capture_output=True,
                          text=True, env=env, timeout=120, check=True)
    assert json.loads(done.stdout)[str(tmp_path / "x.png")]["parsed"] == {"Prompt": "hello", "Negative prompt": "",
                                                                         "Steps": 2, "Sampler": "Euler", "Seed": 5}


def test_txt2img_hires_variation_tiling_and_a_16_bit_depth_map(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(["txt2img", "--tiny", "--model-dir", str(model_dir), "--prompt", "moss", "--steps", "2", "--seed", "3",
                 "--width", "64", "--height", "64", "--hires", "--hires-upscaler", "Lanczos", "--hires-scale", "1.5",
                 "--hires-steps", "4", "--denoising-strength", "0.5", "--hires-prompt", "moss, macro",
                 "--hires-schedule", "Karras",
                 "--variation-seed", "9", "--variation-strength", "0.25", "--seed-resize-from", "96x64", "--tiling",
                 "--out", str(tmp_path), "--json"])
    assert code == 0
    path = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["paths"][0]
    params = parse_parameters(read_png_parameters(path))
    assert (params["Hires upscaler"], params["Hires upscale"], params["Hires steps"]) == ("Lanczos", 1.5, 4)
    assert params["Hires prompt"] == "moss, macro" and "Hires negative prompt" not in params
    assert (params["Schedule type"], params["Hires schedule type"]) == ("Automatic", "Karras")
    assert (params["Variation seed"], params["Variation seed strength"]) == (9, 0.25)
    assert params["Seed resize from"] == "96x64" and params["Tiling"] is True and params["Size"] == "64x64"
    with Image.open(path) as image:
        assert image.size == (96, 96)

    tiny_repo("sd2-depth")
    sample_image(64, 64).save(tmp_path / "in.png")
    ramp = np.round(30000 + 250 * np.mgrid[0:64, 0:64][1] / 63).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "depth16.png")
    code = main(["depth", "--tiny", "--model-dir", str(model_dir), "--prompt", "statue", "--steps", "2", "--seed",
                 "3", "--image", str(tmp_path / "in.png"), "--depth-map", str(tmp_path / "depth16.png"),
                 "--out", str(tmp_path), "--json"])
    assert code == 0
    paths = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["paths"]
    depth_path = next(p for p in paths if p.endswith("-depth.png"))
    with Image.open(depth_path) as used:
        assert len(np.unique(np.asarray(used))) == 64  # one level per column: the 16-bit ramp, not 2 8-bit levels


def test_img2img_variation_and_tiling_flags(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sample_image(64, 64).save(tmp_path / "in.png")
    code = main(["img2img", "--tiny", "--model-dir", str(model_dir), "--prompt", "moss", "--steps", "2", "--seed", "3",
                 "--image", str(tmp_path / "in.png"), "--variation-seed", "5", "--variation-strength", "0.5",
                 "--tiling", "--karras", "--out", str(tmp_path), "--json"])
    assert code == 0
    params = parse_parameters(read_png_parameters(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["paths"][0]))
    assert (params["Variation seed"], params["Variation seed strength"], params["Tiling"]) == (5, 0.5, True)
    assert params["Schedule type"] == "Karras"  # --karras: the same as --schedule Karras


def test_bad_seed_resize_size_is_an_argument_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["txt2img", "--prompt", "x", "--seed-resize-from", "96"])
    assert "expected WIDTHxHEIGHT such as 512x768, got '96'" in capsys.readouterr().err


def test_outpaint_from_a_file(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sample_image(48, 40).save(tmp_path / "in.png")
    code = main(["outpaint", "--tiny", "--model-dir", str(model_dir), "--prompt", "wider", "--image",
                 str(tmp_path / "in.png"), "--left", "0", "--right", "16", "--up", "0", "--down", "0", "--fill", "blur", "--steps", "2", "--seed", "4",
                 "--out", str(tmp_path), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    image_path, mask_path = summary["paths"]
    with Image.open(image_path) as image:
        assert image.size == (64, 40)
        assert np.array_equal(np.asarray(image.convert("RGB"))[:, :48], np.asarray(sample_image(48, 40)))
    params = parse_parameters(read_png_parameters(image_path))
    assert params["Outpaint right"] == 16 and params["Outpaint fill"] == "blur" and params["Seed"] == 4
    assert mask_path.endswith("outpaint-4-mask.png")


def test_xyz_plot_writes_grid_cells_and_tables(model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    code = main(["xyz-plot", "--tiny", "--model-dir", str(model_dir), "--prompt", "a red cat", "--model", "sd2-base",
                 "--x-type", "prompt_sr", "--x-values", "red, blue", "--y-type", "steps", "--y-values", "1-2",
                 "--seed", "6", "--width", "64", "--height", "64", "--out", str(tmp_path), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = [Path(p).name for p in summary["paths"]]
    assert names == ["xyz_plot-6-grid0.png"] + [f"xyz_plot-6-cell{i}.png" for i in (1, 2, 3, 4)] + [
        "xyz_plot-6-cells.csv", "xyz_plot-6-cells.json"]
    cells = json.loads(Path(summary["paths"][-1]).read_text())
    assert [(c["prompt"], c["steps"]) for c in cells] == [("a red cat", 1), ("a blue cat", 1), ("a red cat", 2),
                                                          ("a blue cat", 2)]
    grid = parse_parameters(read_png_parameters(summary["paths"][0]))
    assert grid["X Type"] == "Prompt S/R" and grid["X Values"] == "red, blue" and grid["Y Values"] == "1, 2"
    assert main(["xyz-plot", "--tiny", "--prompt", "x", "--x-type", "steps", "--x-values", "0"]) == 2


def test_xyz_plot_runs_every_cell_with_the_hires_fix(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """`xyz-plot --hires ...` (txt2img's hires options): 64x64 cells become 96x96 and say so; with --image the
    hires fix is refused in words (exit 2)."""
    hires = ["--hires", "--hires-upscaler", "Lanczos", "--hires-scale", "1.5", "--hires-steps", "1"]
    code = main(["xyz-plot", "--tiny", "--model-dir", str(model_dir), "--prompt", "a cat", "--model", "sd2-base",
                 "--x-type", "sampler", "--x-values", "Euler, DDIM", "--steps", "1", "--seed", "6", "--width", "64",
                 "--height", "64", *hires, "--out", str(tmp_path), "--json"])
    assert code == 0
    cells = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["paths"][1:3]
    for path in cells:
        with Image.open(path) as cell:
            assert cell.size == (96, 96)
        assert read_png_parameters(path).endswith(
            "Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 1, Hires upscaler: Lanczos")
    Image.new("RGB", (64, 64)).save(tmp_path / "init.png")
    assert main(["xyz-plot", "--tiny", "--prompt", "x", "--image", str(tmp_path / "init.png"), "--x-type",
                 "strength", "--x-values", "0.5", *hires]) == 2
    assert caplog.messages[-1] == ("The hires fix runs only in a text-to-image plot; remove the init image or turn "
                                   "the hires fix off.")


def test_xyz_plot_with_a_styles_axis_from_a_styles_file(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """`--styles FILE` (read as the web app's --styles) offers the Styles axis: each cell's prompts are styled;
    `--no-legend` draws the grid of two 64x64 cells as 136x68 (no label margin), 156x78 with `--margin-size 10`;
    `--no-fixed-seeds` gives each cell of a -1 seed its own; with a Z axis, `--include-sub-grids` writes each Z
    value's grid after the joined one. Without --styles the axis is refused in words (exit 2)."""
    styles = tmp_path / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\noil,"oil painting",photo\nframe,"a picture of {prompt}",\n')
    plot = ["xyz-plot", "--tiny", "--model-dir", str(model_dir), "--prompt", "a cat", "--model", "sd2-base",
            "--x-type", "styles", "--x-values", "oil, frame", "--steps", "1", "--width", "64", "--height", "64"]
    code = main([*plot, "--styles", str(styles), "--no-legend", "--no-fixed-seeds", "--out", str(tmp_path / "out"),
                 "--json"])
    assert code == 0
    grid_path, *cell_paths = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["paths"][:3]
    cells = [parse_parameters(read_png_parameters(path)) for path in cell_paths]
    assert [(c["Prompt"], c.get("Negative prompt")) for c in cells] == [("a cat, oil painting", "photo"),
                                                                       ("a picture of a cat", "")]
    assert cells[0]["Seed"] != cells[1]["Seed"]
    with Image.open(grid_path) as grid:
        assert grid.size == (136, 68)
    code = main([*plot, "--styles", str(styles), "--no-legend", "--margin-size", "10", "--include-sub-grids",
                 "--z-type", "cfg_scale", "--z-values", "7, 8", "--out", str(tmp_path / "z"), "--json"])
    assert code == 0
    paths = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["paths"]
    assert [Path(p).name.split("-")[-1] for p in paths] == ["grid0.png", "grid1.png", "grid2.png", "cell1.png",
                                                            "cell2.png", "cell3.png", "cell4.png", "cells.csv",
                                                            "cells.json"]
    assert [Image.open(path).size for path in paths[:3]] == [(156 + 16 + 10 + 156, 78), (156, 78), (156, 78)]
    assert main([*plot, "--out", str(tmp_path / "none")]) == 2
    assert caplog.messages[-1].startswith("Unknown X axis 'styles'; choose one of: sampler, steps,")
