"""Many users at once: throughput and latency of concurrent users on one Service, batching across users off vs on.

    python -m bench.users --ckpt /tmp/sd2-bench --out OUT       # GPU: sd2-base txt2img 512, 25 steps, 8 users
    python -m bench.users --tiny --ckpt /tmp/ck --out OUT       # CPU smoke test: tiny repos, 64 px, 2 steps

Each user is a thread that sends `--requests` text-to-image requests back to back through `Service.run`
(validation, the GPU gate, the pipeline, provenance marks; nothing saved), each with its own prompt and seed;
all users start together. The same requests run twice on one model manager: batching off (every request
alone at the gate, the app's default) and on (`sd2_app.api.batching.enable`, the app's `--batch-users`).
Each mode first runs one untimed round (one request per user: the checkpoint's load, CUDA-graph captures of
each batch shape). Reported per mode: images per second over the wall time, p50 and p95 request latency
(the request's call to its result), and with batching the requests per group run; then each image of the
batched run against the same request's image run alone (uint8 levels: max, and the share of pixels that
differ). With `--app` the same load runs again through the running app (bench/users_app.py): `python app.py`
in a fresh process, without and with `--batch-users`, each user a gradio_client client, latency its round
trip. Writes OUT/users.json and OUT/users.md.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cases import NEGATIVE, PROMPT
from bench.load import load
from bench.users_app import app_mode
from bench.write_checkpoints import benchmark_repos

SUBJECTS = ("a red fox", "a lighthouse at dusk", "an astronaut", "a bowl of fruit", "a mountain lake", "a cat",
            "a city at night", "a sailing ship", "an old library", "a desert road")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random repos on CPU (a smoke test of the harness)")
    p.add_argument("--ckpt", type=Path, default=Path("/tmp/sd2-bench"), help="checkpoint root (bench/gpu.sh's)")
    p.add_argument("--kind", default="sd2-base", help="the checkpoint (512 native: sd2-base)")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--requests", type=int, default=3, help="requests per user, back to back")
    p.add_argument("--size", type=int, default=None, help="default 512 (tiny: 64)")
    p.add_argument("--steps", type=int, default=None, help="default 25 (tiny: 2)")
    p.add_argument("--sampler", default="DPM++ 2M")
    p.add_argument("--device", default=None)
    p.add_argument("--app", action="store_true",
                   help="also through the running app: `python app.py [--batch-users]` and gradio_client users")
    p.add_argument("--timeout", type=float, default=300.0, help="--app: seconds to wait for the server")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    args.size = args.size or (64 if args.tiny else 512)
    args.steps = args.steps or (2 if args.tiny else 25)
    return args


def make_service(args: argparse.Namespace) -> Any:
    """A Service over one model manager (fp16 on the GPU, fp32 on CPU) with `args.kind` at a local folder."""
    from bench.ours import local_registry
    from sd2_app.api.service import Service
    from sd2_app.manager import ModelManager

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    repos = benchmark_repos(args.ckpt, args.tiny, (args.kind,), device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    manager = ModelManager(device, dtype, registry=local_registry(repos), cache_dir=args.ckpt / "app-cache")
    return Service(manager, outputs_dir=None, allowed_repos=(), watermark=False)


def user_request(args: argparse.Namespace, user: int, index: int) -> Any:
    """User `user`'s `index`-th request: its own prompt and seed, the shared size, sampler, steps and guidance."""
    from sd2_app.api.requests import Sampling, Txt2ImgRequest

    subject = SUBJECTS[(user + index) % len(SUBJECTS)]
    sampling = Sampling(sampler=args.sampler, steps=args.steps, cfg_scale=7.5, seed=1000 * user + index)
    return Txt2ImgRequest(f"{subject}, {PROMPT}", NEGATIVE, checkpoint=args.kind, width=args.size,
                          height=args.size, sampling=sampling)


def image_gap(batched: dict[tuple[int, int], np.ndarray], alone: dict[tuple[int, int], np.ndarray]) -> dict[str, Any]:
    """Each request's batched image against its image run alone, in uint8 levels."""
    gaps = [np.abs(batched[key].astype(np.int16) - alone[key].astype(np.int16)) for key in alone]
    differing = sum(int((gap > 0).sum()) for gap in gaps)
    total = sum(gap.size for gap in gaps)
    return {"images": len(gaps), "max_levels": int(max(int(gap.max()) for gap in gaps)),
            "mean_levels": float(np.mean([gap.mean() for gap in gaps])), "pixels_differing": differing / total,
            "identical_images": sum(int(gap.max() == 0) for gap in gaps)}


def run_mode(service: Any, args: argparse.Namespace, batching: bool) -> dict[str, Any]:
    """One untimed round, then the timed load, in one mode, through `service.run`."""
    from sd2_app.api.batching import enable

    def call(user: int, index: int) -> np.ndarray:
        return np.asarray(service.run(user_request(args, user, index)).images[0].convert("RGB"))

    if batching:
        enable(service)
    load(call, args.users, 1)  # warm: load, captures
    if batching:
        service.batcher.group_sizes.clear()
    row = load(call, args.users, args.requests)
    if batching:
        sizes = service.batcher.group_sizes
        row["group_sizes"] = {str(size): count for size, count in sorted(sizes.items())}
        row["mean_group"] = sum(size * count for size, count in sizes.items()) / max(1, sum(sizes.values()))
    return row


def compare(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """Batching off vs on: their rows (images taken out), the ratios, and the images against each other."""
    return {"images_batched_vs_alone": image_gap(on.pop("images"), off.pop("images")), "off": off, "on": on,
            "throughput_on_over_off": on["images_per_s"] / off["images_per_s"],
            "p95_on_over_off": on["p95_s"] / off["p95_s"]}


def _table(title: str, result: dict[str, Any]) -> list[str]:
    lines = [title, "", "| batching | requests | wall s | images/s | p50 s | p95 s | requests per group |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode in ("off", "on"):
        row = result[mode]
        groups = ", ".join(f"{k}: {v}" for k, v in row.get("group_sizes", {}).items())
        if "batches_logged" in row:  # the app's log: batches of two or more
            groups = f"{row['batches_logged']} batches of 2 or more"
        lines.append(f"| {mode} | {row['requests']} | {row['wall_s']:.2f} | {row['images_per_s']:.3f} | "
                     f"{row['p50_s']:.3f} | {row['p95_s']:.3f} | {groups} |")
    gap = result["images_batched_vs_alone"]
    return lines + ["", f"Throughput on / off: {result['throughput_on_over_off']:.2f}x; p95 on / off: "
                    f"{result['p95_on_over_off']:.2f}x.",
                    f"Batched vs alone, {gap['images']} images: {gap['identical_images']} identical, max "
                    f"{gap['max_levels']} uint8 levels, mean {gap['mean_levels']:.4f}, "
                    f"{100 * gap['pixels_differing']:.3f} % of pixels differ.", ""]


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"{s['users']} users x {s['requests']} requests, txt2img {s['size']} {s['kind']}, {s['steps']} steps "
             f"{s['sampler']}, {s['device']}", ""]
    lines += _table("Through `Service.run` (in process):", report["service"])
    if "app" in report:
        lines += _table("Through the running app (`python app.py`, gradio_client users):", report["app"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.tiny:
        torch.set_num_threads(1)
    service = make_service(args)
    report: dict[str, Any] = {
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "device": str(service.manager.device)},
        "service": compare(run_mode(service, args, batching=False), run_mode(service, args, batching=True))}
    del service
    if args.app:
        request_for = functools.partial(user_request, args)
        report["app"] = compare(app_mode(args, request_for, batching=False), app_mode(args, request_for, batching=True))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "users.json").write_text(json.dumps(report, indent=2))
    (args.out / "users.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
