"""Where the cold first image's seconds go, and what a checkpoint swap does to the next images. Run it in a
fresh process with an empty Triton cache (bench/gpu.sh's `coldstart` step does, once per setting):

    TRITON_CACHE_DIR=$(mktemp -d) python -m bench.coldstart --ckpt /tmp/sd2-bench --out OUT --label default
    TRITON_CACHE_DIR=$(mktemp -d) python -m bench.coldstart ... --label serial-checks --check-threads 1
    TRITON_CACHE_DIR=$(mktemp -d) python -m bench.coldstart ... --label no-cudnn-benchmark --no-cudnn-benchmark

The issue's target is "model loaded -> first image <= 15 s" on a fresh machine. The first image compiles
Triton kernels (the start-up check and the first forward), benchmarks cuDNN's convolution algorithms, warms
up and captures the CUDA graphs; the app's own log lines mark those phases, and the Triton cache's files
(their modification times) say how many kernels were compiled in each. With `--swap` the checkpoint then
goes to pinned host memory and back (as a swap between two checkpoints does): the next image must be the
identical image, and as fast as before once its graphs are recaptured.

Writes OUT/coldstart.md (one table row per run, appended) and OUT/coldstart.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.cases import Case, synchronize
from bench.ours import local_registry, make_request
from bench.write_checkpoints import benchmark_repos
from sd2_app.accel import AccelOptions
from sd2_app.manager import ModelManager
from sd2_app.pipelines.txt2img import txt2img

KEY = "sd2-base"
# log messages that end a phase of the first image, in order (the phase is named by what it ends)
PHASES = (("fused ops: swapped", "UNet", "start-up kernel check + fused-module swap"),
          ("captured a CUDA graph of CLIPTextModel", "", "text encoder: warm-up + capture"),
          ("captured a CUDA graph of UNet", "", "UNet: warm-up forward + capture"))


class _Marks(logging.Handler):
    """Remembers when each log record was emitted (perf_counter), to split the first image into phases."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.perf_counter(), record.getMessage()))

    def first(self, text: str, also: str, after: float) -> float | None:
        return next((t for t, message in self.records if t >= after and text in message and also in message), None)


def _triton_compiles(since_epoch: float) -> list[tuple[float, str]]:
    """(epoch seconds, kernel name) of each kernel compiled into TRITON_CACHE_DIR since `since_epoch`."""
    root = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    found = []
    for meta in root.glob("*/*.json"):
        if meta.name.startswith("__grp__"):
            continue
        stamp = meta.stat().st_mtime
        if stamp >= since_epoch:
            found.append((stamp, meta.stem))
    return sorted(found)


def _image(manager: ModelManager, request: object, device: torch.device) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    with manager.use(KEY) as components:
        images = txt2img(components, request).images
    synchronize(device)
    return time.perf_counter() - start, np.stack([np.asarray(im) for im in images])


def _layout(manager: ModelManager) -> str:
    with manager.use(KEY) as components:
        weight = components.unet.conv_in.weight
    return "channels_last" if not weight.is_contiguous() else "contiguous"


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description="cold first image, by phase; a swap's effect on the next images")
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--label", default="default")
    p.add_argument("--tiny", action="store_true", help="tiny repos and a 64 px image (CPU rehearsal)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--check-threads", type=int, default=None, help="threads of the start-up kernel check")
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--swap", action="store_true", help="then offload to pinned memory and back, twice")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    marks = _Marks()
    logging.getLogger("sd2_app").addHandler(marks)
    if args.check_threads is not None:
        from sd2_app.accel.kernels import checks as kernel_checks

        kernel_checks.CHECK_THREADS = args.check_threads
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    repos = benchmark_repos(args.ckpt, args.tiny, (KEY,), device)
    manager = ModelManager(device, dtype, registry=local_registry(repos), cache_dir=args.ckpt / "cache",
                           accel=AccelOptions())
    row: dict[str, object] = {"label": args.label, "device": torch.cuda.get_device_name() if device.type == "cuda"
                              else "cpu", "torch": torch.__version__}
    start = time.perf_counter()
    manager.load(KEY)
    synchronize(device)
    row["load_s"] = time.perf_counter() - start
    if args.no_cudnn_benchmark:
        torch.backends.cudnn.benchmark = False  # after the load, which set up the backends
    size = 64 if args.tiny else 512
    request = make_request(Case("txt2img-512-b1", "txt2img", KEY, size), args.steps)
    epoch, begin = time.time(), time.perf_counter()
    row["first_image_s"], first = _image(manager, request, device)
    end = time.perf_counter()
    phases, last = {}, begin
    for text, also, name in PHASES:
        mark = marks.first(text, also, last)
        if mark is not None:
            phases[name], last = mark - begin, mark
    phases["the loop, VAE decode (first run), to PIL"] = end - begin
    row["phase_ends_s"] = phases
    compiles = _triton_compiles(epoch)
    row["triton_kernels_compiled"] = len(compiles)
    row["triton_compiles_by_phase"] = _by_phase(compiles, epoch, phases)
    row["triton_kernels_by_phase"] = _by_phase(compiles, epoch, phases, names=True)
    row["triton_kernels"] = sorted({name for _, name in compiles})
    row["second_image_s"], second = _image(manager, request, device)
    row["same_image_twice"] = bool(np.array_equal(first, second))
    if args.swap:
        row["layout_before_swap"] = _layout(manager)
        manager.offload(KEY)
        row["first_image_after_swap_s"], after = _image(manager, request, device)
        row["image_after_swap_s"] = _image(manager, request, device)[0]
        manager.offload(KEY)
        row["image_after_second_swap_s"] = _image(manager, request, device)[0]
        row["layout_after_swap"] = _layout(manager)
        row["same_image_after_swap"] = bool(np.array_equal(first, after))
    _write(args.out, row)
    return row


def _by_phase(compiles: list[tuple[float, str]], epoch: float, phases: dict[str, float],
              names: bool = False) -> dict[str, int] | dict[str, list[str]]:
    """How many compiles ended in each phase, or with `names` which kernels (`phases`: name -> end, seconds
    after `epoch`, in order). A cache file is written just after its phase's log mark may have been taken, so
    each end gets 50 ms of slack."""
    found: dict[str, list[str]] = {}
    before = 0.0
    for phase, ends in phases.items():
        found[phase] = [kernel for stamp, kernel in compiles if before <= stamp - epoch < ends + 0.05]
        before = ends + 0.05
    return found if names else {phase: len(kernels) for phase, kernels in found.items()}


def _write(out: Path, row: dict[str, object]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "coldstart.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    table = out / "coldstart.md"
    if not table.exists():
        table.write_text("# Cold first image by phase (fresh process, empty Triton cache)\n\n")
    phases = row["phase_ends_s"]
    by_phase = row["triton_compiles_by_phase"]
    lines = [f"## {row['label']} ({row['device']}, torch {row['torch']})", "",
             f"load {row['load_s']:.2f} s; first image {row['first_image_s']:.2f} s; second image "
             f"{row['second_image_s']:.3f} s (identical: {row['same_image_twice']}); "
             f"{row['triton_kernels_compiled']} Triton kernels compiled", "",
             "| phase | ends at (s after the call began) | Triton kernels compiled in it |", "| --- | --- | --- |"]
    kernels = row["triton_kernels_by_phase"]
    lines += [f"| {name} | {ends:.2f} | {by_phase.get(name, 0)} {', '.join(kernels.get(name, []))} |"
              for name, ends in phases.items()]
    if "image_after_swap_s" in row:
        lines += ["", f"swap: conv_in {row['layout_before_swap']} -> {row['layout_after_swap']}; first image after "
                  f"the swap {row['first_image_after_swap_s']:.3f} s (recapture), then "
                  f"{row['image_after_swap_s']:.3f} s, after a second swap {row['image_after_second_swap_s']:.3f} s; "
                  f"identical to the first image: {row['same_image_after_swap']}"]
    lines += ["", "kernels: " + ", ".join(row["triton_kernels"]), "", ""]
    with open(table, "a") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
