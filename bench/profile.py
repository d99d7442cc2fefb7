"""Where one image's time goes on the default path: synchronised phases, then the GPU kernels by kind.

    python -m bench.profile --ckpt /tmp/sd2-bench --out DIR [--tiny] [--steps N]

Writes DIR/profile.md. Three parts:
- phases of txt2img 512 b1 (prompt encoding with the text-encoder graph and without, the start noise, the
  sampling loop, the VAE decode with its NaN checks, the PNG-ready conversion on the GPU and the former
  numpy one) and of the x4 128->512 upscale (the same, plus the low-res input, its noise augmentation and
  the VAE's fp32 round trip), each between two synchronisations, median of 5. The phases add up to a little more than one
  unsynchronised image (each sync drains the queue the next phase could have overlapped with);
- torch.profiler over one whole default-path image and one x4 128->512 upscale: GPU kernel time by kind
  (convolution, matmul, attention, our Triton kernels, layout copies, other element-wise), the GPU's busy
  time against the wall time, and the top kernels;
- the same over one eager forward of the accelerated UNet (its modules without the graph), which gives the
  kernel count of one UNet call.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cases import Case, make_cases, synchronize
from bench.ours import OursRunner, make_request

logger = logging.getLogger("bench.profile")

KINDS = (  # (kind, substrings of the kernel name), first match wins
    ("attention", ("sdpa", "flash", "fmha", "attention", "attn")),
    ("ours (triton)", ("_nhwc_partial", "_nhwc_stats", "_nhwc_apply", "_nhwc_group", "_group_partial",
                       "_group_norm_silu", "_geglu", "_bias_residual")),
    ("convolution", ("fprop", "conv", "implicit", "dgrad", "wgrad", "winograd")),
    ("layout copy", ("nchwtonhwc", "nhwctonchw", "transpose", "copy")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul")),
    ("norm", ("layer_norm", "layernorm", "group_norm", "groupnorm")),
)


def kind_of(name: str) -> str:
    lower = name.lower()
    for kind, needles in KINDS:
        if any(n in lower for n in needles):
            return kind
    return "element-wise / other"


def _timed(call: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    out = call()
    synchronize(device)
    return out, time.perf_counter() - start


def phases(components: Any, request: Any, device: torch.device, reps: int) -> dict[str, float]:
    """Median ms of each txt2img phase, synchronised around each, as pipelines/txt2img.py runs them."""
    from sd2_app.pipelines.images import postprocess
    from sd2_app.testing.prompt_pair import encode_prompt_pair
    from sd2_app.pipelines.sampling import start_job
    from sd2_app.pipelines.vae_io import decode

    sampling = request.sampling
    factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    shape = (sampling.batch_size, components.vae.config.latent_channels, request.height // factor,
             request.width // factor)
    raw_encoder = getattr(components.text_encoder, "module", components.text_encoder)
    times: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds * 1e3)

    with torch.inference_mode():
        for _ in range(reps + 1):  # the first round warms up (captures) and is dropped
            job, t = _timed(lambda: start_job(components, request), device)
            add("tokenize + encode prompts (text-encoder graph)", t)
            _, t = _timed(lambda: encode_prompt_pair(raw_encoder, components.tokenizer, request.prompt,
                                                     request.negative_prompt, batch_size=sampling.batch_size,
                                                     use_cfg=True, device=device), device)
            add("  the same, eager text encoder (for comparison)", t)
            x, t = _timed(lambda: job.start_noise(shape), device)
            add("start noise", t)
            latents, t = _timed(lambda: job.denoise(x), device)
            add(f"sampling loop ({len(job.plan.schedule.sigmas) - 1} steps)", t)
            pixels, t = _timed(lambda: decode(components.vae, latents), device)
            add("VAE decode (+ NaN checks)", t)
            _, t = _timed(lambda: postprocess(pixels), device)
            add("to PIL (uint8 on the GPU)", t)
            _, t = _timed(lambda: _numpy_postprocess(pixels), device)
            add("  the former numpy conversion (for comparison)", t)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def upscale_phases(components: Any, request: Any, device: torch.device, reps: int) -> dict[str, float]:
    """Median ms of each x4 phase, synchronised around each, as pipelines/upscale.py runs them: where the
    upscale's wall time goes beyond its kernels (run 5: 224 ms per image, 210 ms of GPU busy time)."""
    from sd2_app.pipelines.images import BICUBIC, postprocess, preprocess_image
    from sd2_app.pipelines.sampling import draw_noise, start_job
    from sd2_app.pipelines.upscale import _tiling, augment_low_res
    from sd2_app.pipelines.vae_io import decode, fp32_decoder, vae_factor

    times: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds * 1e3)

    def low_res_input() -> torch.Tensor:
        image = preprocess_image(request.image.convert("RGB"), factor=vae_factor(components.vae), resample=BICUBIC)
        return image.to(components.device)

    tiling = _tiling(request.tile_size)
    with torch.inference_mode():
        for _ in range(reps + 1):  # the first round warms up and is dropped
            image, t = _timed(low_res_input, device)
            add("low-res image to the GPU (PIL bicubic, tensor)", t)
            job, t = _timed(lambda: start_job(components, request), device)
            add("tokenize + encode prompts (text-encoder graph)", t)

            def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                noise = draw_noise(tuple(image.shape), job.generator, components.device, components.dtype)
                low_res = augment_low_res(image, noise, request.noise_level, components.low_res_scheduler_config)
                labels = torch.full((job.rows,), request.noise_level, dtype=torch.long, device=components.device)
                h, w = image.shape[-2:]
                x = job.start_noise((1, components.vae.config.latent_channels, h, w))
                return low_res.repeat(job.rows, 1, 1, 1), labels, x

            (concat, labels, x), t = _timed(inputs, device)
            add("noise augmentation + start noise", t)
            latents, t = _timed(lambda: job.denoise(x, concat=concat, class_labels=labels, tiling=tiling), device)
            add(f"sampling loop ({len(job.plan.schedule.sigmas) - 1} steps)", t)

            def upcast_and_back() -> None:
                with fp32_decoder(components.vae):
                    pass

            _, t = _timed(upcast_and_back, device)
            add("  the decoder to fp32 and back alone (inside the decode below)", t)
            pixels, t = _timed(lambda: decode(components.vae, latents, force_fp32=True, tile=tiling.tile,
                                              overlap=tiling.overlap), device)
            add("VAE decode in fp32 (+ NaN checks)", t)
            _, t = _timed(lambda: postprocess(pixels), device)
            add("to PIL (uint8 on the GPU)", t)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def _numpy_postprocess(images: torch.Tensor) -> np.ndarray:
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def kernel_table(call: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Profile one `call`: kernel time by kind, busy vs wall time, kernel count, the top kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    start = time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        call()
        synchronize(device)
    wall_ms = (time.perf_counter() - start) * 1e3
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    by_kind: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        ms = (e.time_range.end - e.time_range.start) / 1e3
        by_kind[kind_of(e.name)] = by_kind.get(kind_of(e.name), 0.0) + ms
        by_name.setdefault(e.name, []).append(ms)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:30]
    return {"wall_ms": wall_ms, "busy_ms": _union_ms(spans), "kernels": len(kernels),
            "kernel_ms": sum(by_kind.values()), "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "top": [(name, len(v), sum(v)) for name, v in top]}


def _union_ms(spans: Iterable[tuple[float, float]]) -> float:
    """Total length (ms) of the union of [start, end) intervals in microseconds, sorted by start."""
    total, current_start, current_end = 0.0, None, None
    for start, end in spans:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total / 1e3


def unet_forward(components: Any, request: Any, device: torch.device) -> Callable[[], Any]:
    """One eager forward of the accelerated UNet modules (no graph) on the txt2img case's shapes."""
    unet = getattr(components.unet, "unet", components.unet)
    size = request.height // 8
    dtype = next(unet.parameters()).dtype
    memory = torch.channels_last if next(unet.parameters()).dim() == 4 and device.type == "cuda" else None
    sample = torch.randn(2, 4, size, size, device=device, dtype=dtype)
    if memory is not None:
        sample = sample.contiguous(memory_format=memory)
    t = torch.full((2,), 500.0, device=device)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)

    def call() -> Any:
        with torch.inference_mode():
            return unet(sample, t, context)

    return call


def _phase_table(case: str, phases: dict[str, float], image_ms: float, reps: int) -> list[str]:
    lines = [f"## {case} phases (ms, synchronised, median of {reps})", "", "| phase | ms |", "| --- | --- |"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in phases.items()]
    return lines + ["", f"One unsynchronised image (the pipeline call): {image_ms:.1f} ms", ""]


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Profile: {record['device']}", "", f"torch {record['torch']}; default path (`AccelOptions()`)", ""]
    lines += _phase_table(record["case"], record["phases"], record["image_ms"], record["reps"])
    if "upscale_phases" in record:
        lines += _phase_table(record["upscale_case"], record["upscale_phases"], record["upscale_ms"], record["reps"])
    for title, table in record["kernels"].items():
        lines += [f"## {title}", "",
                  f"wall {table['wall_ms']:.1f} ms (under the profiler), GPU busy {table['busy_ms']:.1f} ms, "
                  f"{table['kernels']} kernels, {table['kernel_ms']:.1f} ms of kernel time", "",
                  "| kind | ms | share |", "| --- | --- | --- |"]
        total = max(table["kernel_ms"], 1e-9)
        lines += [f"| {k} | {ms:.2f} | {100 * ms / total:.0f}% |" for k, ms in table["by_kind"].items()]
        lines += ["", "| kernel | calls | ms |", "| --- | --- | --- |"]
        lines += [f"| `{name[:110]}` | {n} | {ms:.2f} |" for name, n, ms in table["top"]]
        lines.append("")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="phases and kernels of one default-path image")
    p.add_argument("--ckpt", type=Path, default=Path.home() / ".cache" / "sd2-app-bench")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--tiny", action="store_true", help="tiny random repos and sizes (CPU check of the script)")
    p.add_argument("--steps", type=int, default=None, help="default 25 (tiny: 2)")
    p.add_argument("--reps", type=int, default=5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.write_checkpoints import benchmark_repos
    from sd2_app.accel import setup_backends

    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    steps = args.steps or (2 if args.tiny else 25)
    setup_backends(device)
    cases: dict[str, Case] = {}
    for case in make_cases(tiny=args.tiny, quick=False):  # the first batch-1 case of each task: the small size
        if case.batch == 1 and case.warmup:
            cases.setdefault(case.task, case)
    txt2img: Case = cases["txt2img"]
    upscale: Case = cases["upscale"]
    repos = benchmark_repos(args.ckpt, args.tiny, (txt2img.kind, upscale.kind), device)
    runner = OursRunner(repos, device, dtype, "ours", args.ckpt / "app-cache")
    record: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "reps": args.reps, "case": txt2img.name, "kernels": {}}
    request = make_request(txt2img, steps)
    image = runner.call(txt2img, steps)
    image()  # warm-up: captures, autotuning, JIT
    record["image_ms"] = statistics.median(_timed(image, device)[1] * 1e3 for _ in range(args.reps))
    with runner.manager.use(txt2img.kind) as components:
        record["phases"] = phases(components, request, device, args.reps)
        record["kernels"][f"one {txt2img.name} image (default path)"] = kernel_table(image, device)
        record["kernels"]["one UNet call, batch 2 (accelerated modules, no graph)"] = kernel_table(
            unet_forward(components, request, device), device)
    runner.unload(txt2img.kind)
    up = runner.call(upscale, steps)
    up()
    record["upscale_case"] = upscale.name
    record["upscale_ms"] = statistics.median(_timed(up, device)[1] * 1e3 for _ in range(args.reps))
    with runner.manager.use(upscale.kind) as components:
        record["upscale_phases"] = upscale_phases(components, make_request(upscale, steps), device, args.reps)
    record["kernels"][f"one {upscale.name} image (default path)"] = kernel_table(up, device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.md").write_text(markdown(record))
    print(markdown(record))
    return record


if __name__ == "__main__":
    main()
