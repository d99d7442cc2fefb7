"""One UNet call and one VAE decode under each combination of speed switches, to choose the default path.

The full benchmark (run.py) times whole jobs for two or three variants; this times the two networks that
make up nearly all of a job's GPU time, under every switch combination, with CUDA events (median of many
calls after warm-up), and checks each variant's output against the plain fp16 modules on the same inputs
(a wrong fused kernel or a bad graph shows here as a large `max_rel_diff`).

    python -m bench.micro --ckpt /tmp/sd2-bench --out DIR [--sizes 512,768,x4] [--compile [--only-compile]]
                          [--deadline EPOCH] [--tiny]

Writes DIR/micro.json and DIR/micro.md; skips what would start after `--deadline` (epoch seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.cases import release, synchronize
from bench.write_checkpoints import benchmark_repos
from sd2_app.accel import AccelOptions, accelerate_unet, accelerate_vae, setup_backends

logger = logging.getLogger("bench.micro")

UNET_VARIANTS: dict[str, AccelOptions] = {
    "eager": AccelOptions.eager(),
    "graphs": AccelOptions(fused_ops=False, channels_last=False),
    "graphs+fused": AccelOptions(channels_last=False),
    "graphs+cl": AccelOptions(fused_ops=False, channels_last=True),
    "graphs+cl+fused": AccelOptions(channels_last=True),
    "graphs+cl+fused+cudnn-attn": AccelOptions(channels_last=True),
    "graphs+cl+fused+flash-attn": AccelOptions(channels_last=True),
}
# Variant name suffix -> the SDPA backends allowed while it is captured and run (an experiment: the app
# leaves the choice to PyTorch).
ATTENTION_EXPERIMENTS = {"+cudnn-attn": "CUDNN_ATTENTION", "+flash-attn": "FLASH_ATTENTION"}
COMPILED_VARIANT = ("graphs+cl+compile", AccelOptions.compiled())
VAE_VARIANTS: dict[str, AccelOptions] = {  # (the VAE runs channels_last only with the fused kernels)
    "eager": AccelOptions.eager(),
    "fused": AccelOptions(channels_last=False),
    "cl+fused": AccelOptions(channels_last=True),
}


def time_ms(call: Callable[[], torch.Tensor], device: torch.device, *, warmup: int = 3,
            reps: int = 20) -> tuple[float, float, list[float]]:
    """(first call s, median ms, all ms, sorted) of `call`: CUDA events on a GPU, the host clock on CPU."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    first_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        call()
    times = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for begin, end in events:
            begin.record()
            call()
            end.record()
        torch.cuda.synchronize()
        times = [b.elapsed_time(e) for b, e in events]
    else:
        for _ in range(reps):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return first_s, times[len(times) // 2], times


def _first_call(call: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    synchronize(device)
    start = time.perf_counter()
    out = call()
    synchronize(device)
    return out, time.perf_counter() - start


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def _attention_backend(variant: str) -> contextlib.AbstractContextManager[object]:
    """SDPA restricted to one backend for the variants named so (where this torch has it), else no change."""
    for suffix, backend in ATTENTION_EXPERIMENTS.items():
        if variant.endswith(suffix):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel([getattr(SDPBackend, backend)])
    return contextlib.nullcontext()


def _new_row(rows: list[dict[str, Any]], net: str, size: int, batch: int, variant: str,
             deadline: float) -> dict[str, Any]:
    """Append the row of one variant; it says "skipped" when the time budget is spent."""
    row: dict[str, Any] = {"net": net, "size": size, "batch": batch, "variant": variant}
    if time.time() > deadline:
        row["error"] = "skipped: device time budget"
    rows.append(row)
    return row


def _measure(row: dict[str, Any], build: Callable[[], Callable[[], torch.Tensor]], device: torch.device,
             reference: torch.Tensor | None, *, reps: int,
             context: contextlib.AbstractContextManager[object] | None = None) -> torch.Tensor | None:
    """Fill `row` for one variant: its first call (graph capture, autotuning, kernel JIT, compile), the median
    of `reps` calls, and its output against `reference` (the first variant's; returned, set on first use).
    A variant that breaks is a result (`error`), not the end of the run."""
    try:
        call = build()
        with torch.inference_mode(), context or contextlib.nullcontext():
            out, first_s = _first_call(call, device)
            reference = out.clone() if reference is None else reference
            row["max_rel_diff_vs_eager"] = _rel(out, reference)
            _, median, times = time_ms(call, device, reps=reps)
        row.update(first_s=first_s, ms=median, ms_min=times[0], ms_max=times[-1])
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        logger.exception("%s %s %s", row["net"], row["size"], row["variant"])
    logger.info("%s", row)
    return reference


@dataclass(frozen=True)
class UNetCase:
    """One UNet call to time: the txt2img UNet at an image size, or the x4 upscaler's (`--sizes x4`).

    The x4 UNet runs at the low-res image's size (128x128 latents for a 512 output) with 7 input channels
    (latents + the noised low-res image) and the noise level as a class label: its switches can rank
    differently from the txt2img UNet's (four times the pixels per level at 512, the first level's
    131k-element GroupNorm groups), and its upscale is the target furthest from met.
    """

    net: str  # "unet" or "unet-x4"
    kind: str  # checkpoint kind
    size: int  # output image side in pixels
    latent: int  # latent side the UNet sees
    in_channels: int
    class_label: int | None = None


X4_NOISE_LEVEL = 20  # the upscale request's default noise level


def unet_cases(sizes: list[str], tiny: bool) -> list[UNetCase]:
    """Cases for `--sizes` entries: pixel sizes of the txt2img UNet, or x4 (a 512 output; 64 on tiny repos)."""
    cases = []
    for entry in sizes:
        if entry == "x4":
            size = 64 if tiny else 512
            cases.append(UNetCase("unet-x4", "x4-upscaler", size, size // 4, 7, X4_NOISE_LEVEL))
        else:
            cases.append(UNetCase("unet", "sd2-base", int(entry), int(entry) // 8, 4))
    return cases


def unet_rows(repos: dict[str, Path], cases: list[UNetCase], variants: dict[str, AccelOptions],
              device: torch.device, dtype: torch.dtype, deadline: float) -> list[dict[str, Any]]:
    from sd2_app.loading.parts import load_unet

    rows: list[dict[str, Any]] = []
    for case in cases:
        g = torch.Generator(device).manual_seed(0)
        sample = torch.randn(2, case.in_channels, case.latent, case.latent, generator=g, device=device, dtype=dtype)
        timestep = torch.full((2,), 500.0, device=device)
        labels = None if case.class_label is None else torch.full((2,), case.class_label, device=device)
        reference = None
        for name, options in variants.items():
            row = _new_row(rows, case.net, case.size, 2, name, deadline)
            if "error" in row:
                continue
            holder: dict[str, Any] = {}

            def build(options: AccelOptions = options) -> Callable[[], torch.Tensor]:
                unet = load_unet(repos[case.kind], device, dtype).eval()
                context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator(
                    device).manual_seed(1), device=device, dtype=dtype)
                model = holder["model"] = accelerate_unet(unet, options)
                return lambda: model(sample, timestep, context, class_labels=labels)

            reference = _measure(row, build, device, reference, reps=20, context=_attention_backend(name))
            model = holder.pop("model", None)
            row.update(captures=getattr(model, "captures", None),
                       failed={str(k[:2]): v for k, v in getattr(model, "_failed", {}).items()} or None)
            model = None
            torch._dynamo.reset()
            release(device)
    return rows


def vae_rows(folder: Path, sizes: list[int], device: torch.device, dtype: torch.dtype,
             deadline: float, variants: dict[str, AccelOptions] | None = None) -> list[dict[str, Any]]:
    from sd2_app.loading.parts import load_vae

    rows: list[dict[str, Any]] = []
    for size in sizes:
        g = torch.Generator(device).manual_seed(1)
        z = torch.randn(1, 4, size // 8, size // 8, generator=g, device=device, dtype=dtype)
        reference = None
        for name, options in (VAE_VARIANTS if variants is None else variants).items():
            row = _new_row(rows, "vae-decode", size, 1, name, deadline)
            if "error" in row:
                continue

            def build(options: AccelOptions = options) -> Callable[[], torch.Tensor]:
                vae = accelerate_vae(load_vae(folder, device, dtype).eval(), options)
                return lambda: vae.decode(z)

            reference = _measure(row, build, device, reference, reps=10)
            release(device)
    return rows


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Micro-benchmark: {record['device_name']}", "",
             f"torch {record['torch']}, {record['dtype']}; median of CUDA-event timings after warm-up", "",
             "| net | size | batch | variant | ms | min..max | first call (s) | max rel diff vs eager | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in record["rows"]:
        ms = "-" if "ms" not in r else f"{r['ms']:.2f}"
        spread = "-" if "ms" not in r else f"{r['ms_min']:.2f}..{r['ms_max']:.2f}"
        first = "-" if "first_s" not in r else f"{r['first_s']:.2f}"
        diff = "-" if "max_rel_diff_vs_eager" not in r else f"{r['max_rel_diff_vs_eager']:.2e}"
        note = r.get("error") or (f"graph failed: {r['failed']}" if r.get("failed") else "")
        lines.append(f"| {r['net']} | {r['size']} | {r['batch']} | {r['variant']} | {ms} | {spread} | {first} "
                     f"| {diff} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, required=True, help="root written by bench.write_checkpoints")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", default="512,768",
                   help="txt2img UNet sizes in pixels, and x4 for the upscaler's UNet (128x128 latents); "
                        "the VAE rows take the pixel sizes")
    p.add_argument("--compile", action="store_true", help="also the whole-UNet compile (--speed compile), first size")
    p.add_argument("--deadline", type=float, default=float("inf"), help="epoch seconds; later work is skipped")
    p.add_argument("--only-compile", action="store_true", help="with --compile: only eager and compiled rows")
    p.add_argument("--tiny", action="store_true",
                   help="tiny repos, sizes 64,96 (and a 64-pixel x4), float32 (CPU check of the harness)")
    p.add_argument("--variants", default=None,
                   help="comma list of UNet and VAE variant names to run (eager, the baseline, always runs)")
    args = p.parse_args(argv)
    chosen = None if args.variants is None else {"eager", *args.variants.split(",")}
    unet_variants = {k: v for k, v in UNET_VARIANTS.items() if chosen is None or k in chosen}
    vae_variants = {k: v for k, v in VAE_VARIANTS.items() if chosen is None or k in chosen}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    setup_backends(device)
    if args.tiny:
        entries = ["64", "96"] + (["x4"] if "x4" in args.sizes.split(",") else [])
    else:
        entries = args.sizes.split(",")
    cases = unet_cases(entries, args.tiny)
    kinds = tuple(sorted({"sd2-base", *(case.kind for case in cases)}))
    repos = benchmark_repos(args.ckpt, args.tiny, kinds, device)
    sizes = [case.size for case in cases if case.net == "unet"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    record: dict[str, Any] = {"device_name": name, "torch": torch.__version__,
                              "dtype": str(dtype).removeprefix("torch."), "rows": []}

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "micro.json").write_text(json.dumps(record, indent=2) + "\n")
        (args.out / "micro.md").write_text(markdown(record))

    if not args.only_compile:
        record["rows"] += unet_rows(repos, cases, unet_variants, device, dtype, args.deadline)
        save()
        record["rows"] += vae_rows(repos["sd2-base"], sizes, device, dtype, args.deadline, vae_variants)
        save()
    if args.compile:
        name, options = COMPILED_VARIANT
        record["rows"] += unet_rows(repos, cases[:1], {"eager": UNET_VARIANTS["eager"], name: options},
                                    device, dtype, args.deadline)
        save()
    return record


if __name__ == "__main__":
    main()
