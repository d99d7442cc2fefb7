"""Command line: `python -m sd2_app <task> ...` writes PNGs carrying their A1111 `parameters` text.

For scripting and benchmarks; it goes through the same ModelManager and Service as the web UI, so the
validation, seeds and metadata are identical. Examples:

    python -m sd2_app txt2img --prompt "a lighthouse at dusk" --steps 25 --seed 1 --out outputs/cli
    python -m sd2_app img2img --image in.png --strength 0.6 --prompt "oil painting"
    python -m sd2_app inpaint --image in.png --mask mask.png --prompt "a red door" --only-masked
    python -m sd2_app upscale --image small.png --noise-level 20 --prompt "sharp photo"
    python -m sd2_app txt2img --prompt "a castle" --hires --hires-upscaler Lanczos --denoising-strength 0.5
    python -m sd2_app txt2img --prompt "moss" --tiling --variation-seed 7 --variation-strength 0.3
    python -m sd2_app depth --image in.png --prompt "a marble statue" [--depth-map depth16.png]
    python -m sd2_app outpaint --image in.png --up 0 --down 0 --prompt "a wide beach"  # 128 px a side left out
    python -m sd2_app xyz-plot --prompt "a cat" --x-type sampler --x-values "Euler, DDIM" \
        --y-type steps --y-values "10-40 (+10)"   # grids, cells, xyz_plot-<seed>-cells.csv/.json
    python -m sd2_app info outputs/cli/txt2img-1-0.png
    python -m sd2_app txt2img --tiny --prompt test --steps 2   # tiny random weights, no download
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from sd2_app.api import requests as rq
from sd2_app.api.plot_axes import AXES
from sd2_app.api.tasks import TASKS, TaskSpec
from sd2_app.checkpoints.catalog import add_arguments
from sd2_app.compute_flags import add_compute_arguments
from sd2_app.samplers.registry import AUTOMATIC, SCHEDULES


def _request_default(task: str, name: str) -> Any:
    """The default of a task-specific request field (the request dataclass is where it is set)."""
    return getattr(rq.REQUEST_TYPES[task], name)


def _sampling_arguments(parser: argparse.ArgumentParser, spec: TaskSpec) -> None:
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--model", default=spec.checkpoint, metavar="KEY",
                        help=f"registry key of the checkpoint (default {spec.checkpoint})")
    parser.add_argument("--sampler", default=spec.sampler)
    parser.add_argument("--steps", type=int, default=spec.steps)
    parser.add_argument("--schedule", choices=SCHEDULES, default=AUTOMATIC,
                        help="schedule type, A1111's: the sigmas' spacing (where the sampler offers a choice)")
    parser.add_argument("--karras", dest="schedule", action="store_const", const="Karras",
                        help="the same as --schedule Karras")
    parser.add_argument("--cfg-scale", type=float, default=spec.cfg_scale)
    parser.add_argument("--guidance-rescale", type=float, default=0.0)
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity")
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed, reported")
    parser.add_argument("--batch-size", type=int, default=1, help="images per prompt")


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/cli"), help="folder for the PNGs")
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight checkpoints (no download)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="the model manager's cache folder (tiny repos, file hashes); default $SD2APP_CACHE")
    add_compute_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON line per run instead of paths")
    parser.add_argument("--embeddings-dir", type=Path, default=Path("embeddings"),
                        help="folder of SD2 textual-inversion embeddings (.safetensors); a prompt uses one by its "
                             "file name (default ./embeddings)")
    parser.add_argument("--checkpoints-dir", type=Path, default=Path("checkpoints"),
                        help="folder of single-file SD2 checkpoints (.safetensors, as A1111's "
                             "models/Stable-diffusion); --model takes a file's name without .safetensors "
                             "(default ./checkpoints)")
    parser.add_argument("--lora-dir", type=Path, default=Path("loras"),
                        help="folder of SD2 LoRAs (.safetensors, A1111's layout); a prompt uses one with "
                             "<lora:NAME:0.8> (default ./loras)")
    add_arguments(parser)  # --repo KEY=REPO[,REPO...] (a bare --repo REPO applies to --model), --revision


def _size(text: str) -> tuple[int, int]:
    """"WxH" -> (width, height), for --seed-resize-from."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x768, got {text!r}")
    return int(width), int(height)


def _workflow_arguments(parser: argparse.ArgumentParser) -> None:
    """Text to image's hires fix, seed extras and tiling (A1111's options of the same names)."""
    _hires_arguments(parser)
    seeds = _variation_and_tiling(parser)
    seeds.add_argument("--seed-resize-from", type=_size, default=None, metavar="WxH",
                       help="draw the noise at this size so a seed's composition survives a size change")


def _hires_arguments(parser: argparse.ArgumentParser) -> None:
    """The hires fix (text to image, and a text-to-image X/Y/Z plot's every cell)."""
    hires = parser.add_argument_group("hires fix")
    hires.add_argument("--hires", action="store_true", help="generate, upscale, then img2img at the target size")
    hires.add_argument("--hires-upscaler", choices=rq.HIRES_UPSCALERS, default="Latent")
    hires.add_argument("--hires-scale", type=float, default=2.0, help="target = size x scale (default 2)")
    hires.add_argument("--hires-width", type=int, default=None, help="explicit target width (overrides the scale)")
    hires.add_argument("--hires-height", type=int, default=None, help="explicit target height")
    hires.add_argument("--hires-steps", type=int, default=None, help="second-pass steps (default: --steps)")
    hires.add_argument("--denoising-strength", type=float, default=0.5, help="second pass's strength")
    hires.add_argument("--hires-sampler", default=None, help="second-pass sampler (default: --sampler)")
    hires.add_argument("--hires-schedule", choices=SCHEDULES, default="",
                       help="second-pass schedule type (default: --schedule)")
    hires.add_argument("--hires-prompt", default="", help="second-pass prompt (default: --prompt)")
    hires.add_argument("--hires-negative-prompt", default="", help="second-pass negative prompt (default: "
                       "--negative-prompt)")


def _variation_and_tiling(parser: argparse.ArgumentParser) -> Any:
    """--variation-seed, --variation-strength and --tiling (text and image to image); returns the seed group."""
    seeds = parser.add_argument_group("seed extras")
    seeds.add_argument("--variation-seed", type=int, default=None, help="default: random when a strength is set")
    seeds.add_argument("--variation-strength", type=float, default=0.0, help="0 = the seed, 1 = the variation seed")
    parser.add_argument("--tiling", action="store_true", help="seamless tiles (circular padding)")
    return seeds


def _outpaint_arguments(parser: argparse.ArgumentParser) -> None:
    for side in ("left", "right", "up", "down"):
        parser.add_argument(f"--{side}", type=int, default=_request_default("outpaint", side),
                            help=f"pixels to add on the {side} (multiple of 8; 0 keeps that side)")
    parser.add_argument("--fill", choices=list(rq.OUTPAINT_FILLS), default=_request_default("outpaint", "fill"),
                        help="how the new area starts: " + ", ".join(f"{k} ({v})" for k, v in rq.OUTPAINT_FILLS.items()))
    parser.add_argument("--mask-blur", type=int, default=_request_default("outpaint", "mask_blur"),
                        help="pixels of feathering from the seam into the new area")
    parser.add_argument("--no-keep-original", action="store_true", help="do not paste the original pixels back")


def _plot_arguments(parser: argparse.ArgumentParser) -> None:
    """`xyz-plot`: the text-to-image arguments, an optional init image, and up to three axes."""
    _sampling_arguments(parser, TASKS["txt2img"])
    _common_arguments(parser)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--image", type=Path, default=None, help="an init image makes it an image-to-image plot")
    parser.add_argument("--strength", type=float, default=TASKS["img2img"].strength, help="with --image")
    _hires_arguments(parser)  # without --image: every cell runs with the hires fix
    for axis in ("x", "y", "z"):
        parser.add_argument(f"--{axis}-type", choices=list(AXES), default=None, required=axis == "x")
        parser.add_argument(f"--{axis}-values", default="", metavar="VALUES",
                            help="e.g. '20, 30, 40', '10-40 (+10)', '1-2 [5]', 'Euler, DDIM'" if axis == "x" else None)
    parser.add_argument("--no-legend", action="store_true", help="grids without axis labels (A1111's \"Draw legend\" "
                        "off)")
    parser.add_argument("--no-fixed-seeds", action="store_true", help="a seed of -1 draws a seed for each cell "
                        "(A1111's \"Keep -1 for seeds\"); without it one is drawn for the whole plot")
    parser.add_argument("--include-sub-grids", action="store_true", help="with a Z axis, each Z value's grid too, "
                        "after the grid of them all")
    parser.add_argument("--margin-size", type=int, default=0, metavar="PX", help="grid margins between cells (px)")
    parser.add_argument("--styles", metavar="PATH", type=Path, default=None,
                        help="prompt styles for a Styles axis (A1111's styles.csv, read as the web app's --styles)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sd2_app", description="Stable Diffusion 2 from the command line")
    commands = parser.add_subparsers(dest="task", required=True)
    for task, spec in TASKS.items():
        sub = commands.add_parser(task, help=f"{spec.label.lower()}; writes PNGs with their parameters")
        _sampling_arguments(sub, spec)
        sub.add_argument("--batch-count", type=int, default=1,
                         help="batches one after another (A1111's Batch count): batch k at seed + k x batch size")
        _common_arguments(sub)
        if task == "txt2img":
            sub.add_argument("--width", type=int, default=None)
            sub.add_argument("--height", type=int, default=None)
            _workflow_arguments(sub)
        if task != "txt2img":
            sub.add_argument("--image", type=Path, required=True)
        if spec.strength is not None:
            sub.add_argument("--strength", type=float, default=spec.strength)
        if task == "img2img":
            sub.add_argument("--width", type=int, default=None)
            sub.add_argument("--height", type=int, default=None)
            _variation_and_tiling(sub)
        if task == "inpaint":
            sub.add_argument("--mask", type=Path, required=True, help="white = repaint")
            sub.add_argument("--mask-blur", type=int, default=_request_default(task, "mask_blur"))
            sub.add_argument("--only-masked", action="store_true", help="work on a crop around the mask")
            sub.add_argument("--padding", type=int, default=_request_default(task, "only_masked_padding"), help="context pixels around the mask (only-masked)")
            sub.add_argument("--no-keep-unmasked", action="store_true",
                             help="do not paste the input back outside the mask (the reference's behaviour)")
            sub.add_argument("--invert-mask", action="store_true",
                             help=f'repaint what the mask leaves black (A1111\'s Mask mode "{rq.MASK_MODES[1]}")')
            sub.add_argument("--masked-content", choices=rq.MASKED_CONTENT,
                             default=_request_default(task, "masked_content"),
                             help="what the masked area starts from below strength 1 (A1111's Masked content)")
        if task == "upscale":
            sub.add_argument("--noise-level", type=int, default=_request_default(task, "noise_level"))
            sub.add_argument("--tile-size", type=int, default=_request_default(task, "tile_size"))
        if task == "depth":
            sub.add_argument("--depth-map", type=Path, default=None, help="grayscale, white = near")
        if task == "outpaint":
            _outpaint_arguments(sub)
    _plot_arguments(commands.add_parser("xyz-plot", help="X/Y/Z plot of text (or image) to image; writes the "
                                        "grids, each cell and a CSV/JSON of the cells"))
    info = commands.add_parser("info", help="print the parameters stored in PNGs")
    info.add_argument("paths", type=Path, nargs="+")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)  # --help and usage errors end here, before any model code is imported
    from sd2_app import cli  # torch and the models' code: imported only for a command that runs

    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
