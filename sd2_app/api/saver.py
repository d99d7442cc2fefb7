"""Saving results to the outputs folder: numbered while the request waits, written on a writer thread.

`ResultWriter.save(result)` creates the day folder and reserves the files' numbers under a lock: one past the
highest number on disk (`outputs.next_number`, past 99999 as well) or past the last one reserved, whichever is
higher, so two requests never get the same number even while earlier files are still being written. It then
writes the PNGs the result already carries (`Result.png` and `aux_png`, encoded once) under those names, each
whole under a temporary name and renamed into place (`outputs.save_new_png`), after pruning results older than
the retention.

With `background` on, the writing and pruning run on one writer thread, in the order the results came, after
the request has returned. `flush()` waits for what is still pending: the app calls it when it closes
(`sd2_app.ui.lifecycle.AppBlocks.close`, also on Ctrl+C and SIGTERM). A failure on the writer thread can no longer
reach the request: it goes to the server log. Errors before that point (the folder cannot be created) still
reach the caller as `OSError`, which the Service turns into the user's warning.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path

from PIL import Image

from sd2_app.api.outputs import next_number, prune_older_than, save_new_png
from sd2_app.api.results import Result
from sd2_app.pipelines.metadata import encode_png

log = logging.getLogger(__name__)


class ResultWriter:
    """The outputs folder's writer: one per Service."""

    def __init__(self, folder: Path, *, keep_days: float | None = None, background: bool = False) -> None:
        self.folder = folder
        self.keep_days = keep_days
        self._numbers: dict[Path, int] = {}  # one past the last number reserved in each day folder
        self._lock = threading.Lock()  # guards the numbers
        self._write_lock = threading.Lock()  # one writer at a time (pruning walks the folders it writes)
        self._pending: set[Future[list[Path]]] = set()
        # One thread, so results are written in the order they came; Python finishes its queued work at exit.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd2-save") if background else None

    def save(self, result: Result) -> list[Path]:
        """The result's files (images, then its mask or depth map), written now or queued for the writer."""
        day = self.folder / datetime.fromtimestamp(result.created).strftime("%Y-%m-%d")
        with self._lock:
            day.mkdir(parents=True, exist_ok=True)
            number = max(next_number(day), self._numbers.get(day, 0))
            self._numbers[day] = number + len(result.images)
        stem = f"{result.seed}-{result.task}"
        data = result.png if len(result.png) == len(result.images) else [_encode(im) for im in result.images]
        files: list[tuple[str, bytes | Image.Image]] = [
            (f"{number + index:05d}-{result.image_seed(index)}-{result.task}.png", encoded)
            for index, encoded in enumerate(data)]
        files += [(f"{number:05d}-{stem}-{name}.png", result.aux_png.get(name, image)) for name, image in
                  (("mask", result.mask_image), ("depth", result.depth_image)) if image is not None]
        if self._thread is None:
            return self._write(day, files)
        future = self._thread.submit(self._write_logged, day, files)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return [day / name for name, _ in files]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued result is written; False when `timeout` seconds passed first."""
        with self._lock:
            pending = list(self._pending)
        if pending:
            log.info("waiting for %d result(s) still being written to %s", len(pending), self.folder)
        _, not_done = wait(pending, timeout=timeout)
        return not not_done

    def _forget(self, future: Future[list[Path]]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _write(self, day: Path, files: list[tuple[str, bytes | Image.Image]]) -> list[Path]:
        with self._write_lock:
            if self.keep_days is not None and self.folder.is_dir():
                prune_older_than(self.folder, self.keep_days * 86400.0)
            day.mkdir(parents=True, exist_ok=True)  # a prune may have emptied and removed it
            paths = [save_new_png(item if isinstance(item, bytes) else _encode(item), day, name)
                     for name, item in files]
        log.info("saved %d file(s) to %s", len(paths), day)
        return paths

    def _write_logged(self, day: Path, files: list[tuple[str, bytes | Image.Image]]) -> list[Path]:
        try:
            return self._write(day, files)
        except Exception as error:  # noqa: BLE001  # the request has returned: the server log is all that is left
            log.warning("could not save %s to %s: %s", ", ".join(name for name, _ in files), day, error)
            return []


def _encode(image: Image.Image) -> bytes:
    return encode_png(image)

