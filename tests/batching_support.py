"""Helpers of the batching tests (tests/api/test_batching.py, tests/ui/test_batch_users_app.py,
tests/serve/test_serve_batching.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from sd2_app.api.results import Result
from sd2_app.api.service import Service


class Blocker:
    """Holds the service's GPU gate until released, so requests queue up behind it."""

    def __init__(self, service: Service) -> None:
        self.release = threading.Event()
        entered = threading.Event()

        def hold() -> None:
            with service.gate.enter():
                entered.set()
                self.release.wait(30)

        self.thread = threading.Thread(target=hold, daemon=True)
        self.thread.start()
        assert entered.wait(10)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def image_gap(ours: Sequence[Image.Image], alone: Sequence[Image.Image]) -> int:
    """The largest difference, in uint8 levels, between batched images and the solo run's, pair by pair."""
    assert len(ours) == len(alone)
    return max(int(np.abs(np.asarray(a.convert("RGB"), dtype=int) - np.asarray(b.convert("RGB"), dtype=int)).max())
               for a, b in zip(ours, alone))


def pixel_gap(ours: Result, alone: Result) -> int:
    """`image_gap` of a batched result's images and the solo run's."""
    return image_gap(ours.images, alone.images)
