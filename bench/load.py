"""Concurrent load for the benchmarks (bench/serve.py, bench/users.py, bench/users_app.py): threads started
together, latency percentiles, users sending requests back to back."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def run_concurrently(worker: Callable[[int], None], count: int) -> float:
    """`worker(0)` ... `worker(count - 1)` in their own threads, started together; the wall seconds until all end."""
    threads = [threading.Thread(target=worker, args=(index,)) for index in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50 and p95 (nearest rank) of request latencies in seconds."""
    ordered = sorted(latencies)
    nearest = min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))
    return {"p50_s": statistics.median(ordered), "p95_s": ordered[nearest]}


Call = Callable[[int, int], np.ndarray]  # (user, index) -> the request's first image as (H, W, 3) uint8


def load(call: Call, users: int, requests: int) -> dict[str, Any]:
    """Every user makes `requests` calls back to back, all users at once; latencies, wall time, images."""
    latencies: list[float] = []
    images: dict[tuple[int, int], np.ndarray] = {}
    failures: list[str] = []
    lock = threading.Lock()
    start_together = threading.Barrier(users)

    def user(number: int) -> None:
        start_together.wait()
        for index in range(requests):
            started = time.perf_counter()
            try:
                image = call(number, index)
            except Exception as e:  # noqa: BLE001 - reported for every user together, after the load
                with lock:
                    failures.append(f"user {number} request {index}: {type(e).__name__}: {e}")
                return
            with lock:
                latencies.append(time.perf_counter() - started)
                images[(number, index)] = image

    wall = run_concurrently(user, users)
    if failures:
        raise RuntimeError(f"{len(failures)} of {users} users' requests failed; first: {failures[0]}")
    return {"requests": len(latencies), "wall_s": wall, "images_per_s": len(latencies) / wall,
            **latency_summary(latencies), "images": images}
