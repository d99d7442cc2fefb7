"""What `python -m sd2_app` does once its arguments are parsed (sd2_app/__main__.py): build the typed request,
run it through a ModelManager and Service (the web UI's), write the PNGs; or print the parameters of PNGs.

Kept apart from the argument parser so that `--help` and usage errors answer without importing torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from sd2_app.api import requests as rq
from sd2_app.api.checks import Limits
from sd2_app.api.engine import build_service
from sd2_app.api.engine_settings import EngineSettings
from sd2_app.api.keeper import HISTORY_SIZE
from sd2_app.api.plot import write_tables
from sd2_app.api.plot import HIRES_NEEDS_TEXT
from sd2_app.api.service import Service
from sd2_app.errors import InvalidRequest, LoadError
from sd2_app.pipelines.metadata import parse_parameters, read_png_parameters, save_png

log = logging.getLogger("sd2_app.cli")


def _txt2img_extras(args: argparse.Namespace) -> dict[str, Any]:
    """The hires fix, seed extras and tiling fields of a Txt2ImgRequest."""
    return {"hires": _hires(args), **_seed_and_tiling(args)}


def _hires(args: argparse.Namespace) -> rq.HiresFix | None:
    """The hires fix of --hires and its options; None without --hires."""
    if not args.hires:
        return None
    return rq.HiresFix(upscaler=args.hires_upscaler, scale=args.hires_scale, width=args.hires_width,
                       height=args.hires_height, steps=args.hires_steps, denoising_strength=args.denoising_strength,
                       sampler=args.hires_sampler, schedule=args.hires_schedule, prompt=args.hires_prompt,
                       negative_prompt=args.hires_negative_prompt)


def _seed_and_tiling(args: argparse.Namespace) -> dict[str, Any]:
    """The seed_extras and tiling fields (text and image to image; only text to image has --seed-resize-from)."""
    extras = rq.SeedExtras(variation_seed=args.variation_seed, variation_strength=args.variation_strength,
                        resize_from=getattr(args, "seed_resize_from", None))
    return {"seed_extras": extras, "tiling": args.tiling}


def _open(path: Path | None, mode: str | None = None) -> Image.Image | None:
    """Read an input image; a missing or unreadable file is the user's error, reported in words (exit 2)."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode else image.copy()
    except (OSError, Image.DecompressionBombError) as error:  # missing, not an image, truncated, too large
        raise InvalidRequest(f"cannot read image {path}: {error}") from error


def build_request(args: argparse.Namespace) -> rq.Request:
    """The typed request for the parsed arguments (validation happens in the service)."""
    sampling = rq.Sampling(
        sampler=args.sampler, steps=args.steps, schedule=args.schedule, cfg_scale=args.cfg_scale,
        guidance_rescale=args.guidance_rescale, eta=args.eta, seed=args.seed, batch_size=args.batch_size,
        batch_count=getattr(args, "batch_count", 1),  # the tasks have it, an X/Y/Z plot does not
    )
    common = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "checkpoint": args.model,
              "sampling": sampling}
    if args.task == "xyz-plot":
        return _plot_request(args, common)
    if args.task == "txt2img":
        return rq.Txt2ImgRequest(width=args.width, height=args.height, **_txt2img_extras(args), **common)
    image = _open(args.image, "RGB")
    if args.task == "outpaint":
        return rq.OutpaintRequest(image=image, left=args.left, right=args.right, up=args.up, down=args.down,
                                  fill=args.fill, mask_blur=args.mask_blur, strength=args.strength,
                                  keep_original=not args.no_keep_original, **common)
    if args.task == "img2img":
        return rq.Img2ImgRequest(image=image, strength=args.strength, width=args.width, height=args.height,
                                 **_seed_and_tiling(args), **common)
    if args.task == "inpaint":
        return rq.InpaintRequest(
            image=image, mask=_open(args.mask, "L"), strength=args.strength, mask_blur=args.mask_blur,
            only_masked=args.only_masked, only_masked_padding=args.padding,
            keep_unmasked=not args.no_keep_unmasked, masked_content=args.masked_content,
            mask_mode=rq.MASK_MODES[int(args.invert_mask)], **common,
        )
    if args.task == "upscale":
        return rq.UpscaleRequest(image=image, noise_level=args.noise_level, tile_size=args.tile_size, **common)
    # The depth map keeps its mode: 16-bit PNGs and float TIFFs are read at full precision (validation).
    return rq.DepthRequest(image=image, depth_map=_open(args.depth_map), strength=args.strength, **common)


def _plot_request(args: argparse.Namespace, common: dict[str, Any]) -> rq.XYZPlotRequest:
    base: rq.Txt2ImgRequest | rq.Img2ImgRequest
    if args.image is None:
        base = rq.Txt2ImgRequest(width=args.width, height=args.height, hires=_hires(args), **common)
    elif args.hires:
        raise InvalidRequest(HIRES_NEEDS_TEXT)
    else:
        base = rq.Img2ImgRequest(image=_open(args.image, "RGB"), strength=args.strength, width=args.width,
                                 height=args.height, **common)
    axes = [rq.PlotAxis(kind, values) if kind else None
            for kind, values in ((args.x_type, args.x_values), (args.y_type, args.y_values),
                                 (args.z_type, args.z_values))]
    return rq.XYZPlotRequest(base=base, x=axes[0], y=axes[1], z=axes[2],  # type: ignore[arg-type]
                             no_fixed_seeds=args.no_fixed_seeds, draw_legend=not args.no_legend,
                             include_sub_grids=args.include_sub_grids, margin_size=args.margin_size)


def _repo_assignments(args: argparse.Namespace) -> list[str]:
    """`--repo REPO` without `KEY=` means the checkpoint chosen with --model."""
    return [item if "=" in item else f"{args.model}={item}" for item in args.repo]


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    """The CLI's ModelManager + Service: one run, on this thread; its PNGs are written here, not by the Service."""
    return EngineSettings(
        device=args.device, dtype=args.dtype, speed=args.speed, zerogpu=False,  # never run on a ZeroGPU Space
        repos=tuple(_repo_assignments(args)), revisions=tuple(args.revision), tiny=args.tiny,
        cache_dir=args.model_dir, preload=(),  # the one job loads what it needs
        allowed_repos=None,  # $SD2APP_ALLOWED_REPOS
        checkpoints_dir=args.checkpoints_dir,
        limits=Limits(),  # the web app's default limits: the same validation as the web UI
        outputs_dir=None, keep_outputs_days=None, watermark=True, save_in_background=False, history_size=HISTORY_SIZE,
        embeddings_dir=args.embeddings_dir, lora_dir=args.lora_dir,
        styles_file=getattr(args, "styles", None),  # xyz-plot's --styles
        batch_users=False, import_pipelines=False,
    )


def make_service(args: argparse.Namespace) -> Service:
    return build_service(engine_settings(args))


def run_task(args: argparse.Namespace) -> dict[str, Any]:
    """Run one task and write its PNGs; returns what was written (also the --json line)."""
    request = build_request(args)  # unreadable inputs fail before any model is set up
    service = make_service(args)
    started = time.perf_counter()

    def on_progress(done: int, total: int, preview: Image.Image | None) -> None:
        log.info("step %d/%d", done, total)

    result = service.run(request, on_progress=on_progress)
    elapsed = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    names = [f"{result.task}-{seed}-{index}" for index, seed in enumerate(result.image_seeds[:len(result.images)])]
    if result.task == "xyz_plot":  # grids first, then the cells that ran
        grids = len(result.images) - sum(row["status"] == "done" for row in result.cells)
        cells = [row["cell"] for row in result.cells if row["status"] == "done"]
        names = [f"xyz_plot-{result.seed}-grid{z}" for z in range(grids)]
        names += [f"xyz_plot-{result.seed}-cell{cell}" for cell in cells]
    paths = [save_png(image, args.out / f"{name}.png") for name, image in zip(names, result.images)]
    if result.cells:
        paths += write_tables(result.cells, args.out, f"xyz_plot-{result.seed}-cells")
    for name, extra in (("mask", result.mask_image), ("depth", result.depth_image)):
        if extra is not None:
            paths.append(save_png(extra, args.out / f"{result.task}-{result.seed}-{name}.png"))
    for warning in result.warnings:
        log.warning("%s", warning)
    return {"task": result.task, "seed": result.seed, "seeds": result.image_seeds, "paths": [str(p) for p in paths],
            "seconds": round(elapsed, 3), "timings": result.timings, "warnings": result.warnings}


def show_info(paths: list[Path]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for path in paths:
        text = read_png_parameters(path)
        info[str(path)] = {"text": text, "parsed": parse_parameters(text) if text else None}
    return info


def run(args: argparse.Namespace) -> int:
    """Run the parsed command: 0 when done, 2 for the user's error (a missing file, a refused request)."""
    if args.task == "info":
        try:
            info = show_info(args.paths)
        except OSError as error:  # missing file, not an image
            log.error("%s", error)
            return 2
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return 0
    try:
        summary = run_task(args)
    except (InvalidRequest, LoadError) as error:
        log.error("%s", error)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        sys.stdout.write("\n".join(summary["paths"]) + "\n")
    return 0
