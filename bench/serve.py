"""Ray Serve scale-out: throughput and latency of 1 vs 2 replicas under a fixed concurrent load, and the
added latency of the Serve path over the local Service.

    python -m bench.serve [--tiny] [--clients 4] [--jobs 24] [--steps 20] [--size 128] [--batch-users] [--out DIR]

With --tiny (the default on a machine without a GPU) the replicas run the tiny checkpoints on CPU, one
thread each, so the figures show the Serve path's overhead and its scaling, not SD2's speed. Without it the
replicas load the real checkpoints on GPUs (one per replica), and the same measurements apply to full-size
images. --batch-users deploys the replicas with `batch_users` (max_ongoing_requests = the batcher's MAX_IMAGES)
and reports how many requests each of their batches held. Writes serve.json and serve.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.load import latency_summary, run_concurrently

ROOT = Path(__file__).resolve().parents[1]


def _request(args: argparse.Namespace, seed: int) -> Any:
    from sd2_app.api.requests import Sampling, Txt2ImgRequest

    sampling = Sampling(sampler="Euler", steps=args.steps, cfg_scale=1.0 if args.tiny else 7.5, seed=seed)
    return Txt2ImgRequest("a red fox", checkpoint=args.checkpoint, width=args.size, height=args.size,
                          sampling=sampling)


def _load(service: Any, args: argparse.Namespace) -> dict[str, float]:
    """`args.clients` threads each run `args.jobs / args.clients` jobs back to back; latencies and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = max(1, args.jobs // args.clients)

    def client(index: int) -> None:
        for j in range(per_client):
            start = time.perf_counter()
            service.run(_request(args, seed=1000 * index + j))
            with lock:
                latencies.append(time.perf_counter() - start)

    wall = run_concurrently(client, args.clients)
    return {"jobs": len(latencies), "wall_s": wall, "jobs_per_s": len(latencies) / wall, **latency_summary(latencies)}


def _single(service: Any, args: argparse.Namespace, repeats: int = 5) -> float:
    """Median latency of one job at a time (no queueing)."""
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        service.run(_request(args, seed))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _front(handle: Any, config: Any) -> Any:
    from sd2_app.checkpoints.catalog import REGISTRY
    from sd2_app.serve.backend import remote_service

    return remote_service(handle, REGISTRY, config, outputs_dir=None, allowed_repos=())


def _batch_groups(handle: Any, replicas: int) -> dict[int, int]:
    """{requests in a group: groups} summed over the replicas' batchers (each replica's `stats`)."""
    seen: dict[int, dict[int, int]] = {}
    for _ in range(50 * replicas):
        stats = handle.stats.remote().result(timeout_s=30)
        seen[stats["pid"]] = stats["batch_groups"] or {}
        if len(seen) == replicas:
            break
    total: dict[int, int] = {}
    for groups in seen.values():
        for size, count in groups.items():
            total[size] = total.get(size, 0) + count
    return dict(sorted(total.items()))


def _local(args: argparse.Namespace) -> Any:
    from sd2_app.api.service import Service
    from sd2_app.manager import ModelManager

    manager = ModelManager("cpu" if args.tiny else None, tiny=args.tiny)
    return Service(manager, outputs_dir=None, allowed_repos=())


def _serve_run(args: argparse.Namespace, count: int, report: dict[str, Any]) -> None:
    """Deploy `count` replicas, warm them, measure (one job at a time with one replica; the load) into `report`."""
    from ray import serve

    from sd2_app.api.batching import MAX_IMAGES
    from sd2_app.serve.config import load_config
    from sd2_app.serve.deployment import build_app

    config = load_config(None, tiny=args.tiny, min_replicas=count, max_replicas=count,
                         num_gpus=0.0 if args.tiny else 1.0, device="cpu" if args.tiny else None,
                         max_models_per_replica=1, preload=(args.checkpoint,), batch_users=args.batch_users,
                         max_ongoing_requests=MAX_IMAGES if args.batch_users else 1)
    handle = serve.run(build_app(config), name=config.app_name, route_prefix=None)
    front = _front(handle, config)
    # Warm-up: concurrent jobs until every replica has run one. A checkpoint is routed to the replicas that
    # announced it; another replica gets it only after a request waited out Serve's matching timeout.
    warm = argparse.Namespace(**{**vars(args), "jobs": 4 * count, "clients": 2 * count})
    _load(front, warm)
    if count == 1:
        report["serve_single_s"] = _single(front, args)
    report["runs"][f"serve-{count}"] = _load(front, args)
    if args.batch_users:  # the groups of the warm-up, the single jobs and the measured load together
        report["runs"][f"serve-{count}"]["batch_groups"] = _batch_groups(handle, count)
    serve.delete(config.app_name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny checkpoints on CPU replicas")
    p.add_argument("--checkpoint", default="sd21-base")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--jobs", type=int, default=24)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--batch-users", action="store_true", help="batching across users on each replica")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    if args.tiny:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("SD2APP_CACHE", tempfile.mkdtemp(prefix="sd2-serve-bench-"))
        import torch

        torch.set_num_threads(1)

    import ray
    from ray import serve

    env = {k: os.environ[k] for k in ("SD2APP_CACHE", "OMP_NUM_THREADS", "HF_HUB_OFFLINE") if k in os.environ}
    env["PYTHONPATH"] = str(ROOT)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    report: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    local = _local(args)
    local.run(_request(args, 0))  # load and warm
    report["local_single_s"] = _single(local, args)
    report["runs"]["local"] = _load(local, args)
    del local
    for count in (int(n) for n in args.replicas.split(",")):
        _serve_run(args, count, report)
    serve.shutdown()
    ray.shutdown()
    runs = report["runs"]
    if "serve-1" in runs and "serve-2" in runs:
        report["scaling_2_over_1"] = runs["serve-2"]["jobs_per_s"] / runs["serve-1"]["jobs_per_s"]
    if "serve_single_s" in report:
        report["serve_overhead_s"] = report["serve_single_s"] - report["local_single_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2))
    (args.out / "serve.md").write_text(_markdown(report))
    print(_markdown(report))
    return report


def _markdown(report: dict[str, Any]) -> str:
    lines = ["| path | jobs | wall s | jobs/s | p50 s | p95 s |", "| --- | --- | --- | --- | --- | --- |"]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | {run['jobs']} | {run['wall_s']:.2f} | {run['jobs_per_s']:.2f} | "
                     f"{run['p50_s']:.3f} | {run['p95_s']:.3f} |")
    lines.append("")
    lines.append(f"One job at a time: local {report['local_single_s']:.3f} s, "
                 f"Serve {report.get('serve_single_s', float('nan')):.3f} s "
                 f"(+{report.get('serve_overhead_s', float('nan')):.3f} s).")
    if "scaling_2_over_1" in report:
        lines.append(f"Throughput with 2 replicas / 1 replica: {report['scaling_2_over_1']:.2f}x.")
    for name, run in report["runs"].items():
        if "batch_groups" in run:
            lines.append(f"{name}: requests per group run on the replicas (size: groups) {run['batch_groups']}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
