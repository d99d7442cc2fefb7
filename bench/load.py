"""Concurrent load for the benchmarks (bench/serve.py, bench/users.py): threads started together, and latency
percentiles."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable


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
