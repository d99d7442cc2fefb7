"""The app's own files in Gradio's cache folder (results and live previews), and their deletion by age.

Gradio's `delete_cache` deletes only the files Gradio itself recorded (gradio/route_utils.py,
`delete_files_created_by_app`, which walks `Blocks.temp_file_sets`); a file gets recorded when an output
that names it is processed (gradio/blocks.py, `Block.move_resource_to_block_cache`). The app writes its
result and preview PNGs itself (`sd2_app.ui.shown_files.cached_file`), so one whose output was never processed (the
job was stopped or the client left between the write and the output, a preview superseded before it was sent)
would stay on disk for good. So the app keeps its files in a folder of their own, `results_folder()`, and
sweeps that whole folder on `delete_cache`'s schedule and by the same rule (a file's ctime older than the age
goes), with the folders left empty. The folder's name does not change between runs, so what a stopped server
left behind goes at the next one's sweeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
from gradio.utils import get_upload_folder
from starlette.applications import Starlette

from sd2_app.ui.lifespans import Lifespan, inner_state

log = logging.getLogger(__name__)

RESULTS_FOLDER = "sd2-app"  # under Gradio's cache folder, which Gradio serves


def results_folder() -> Path:
    """Where the app writes the PNGs it shows; inside Gradio's cache folder, so Gradio serves them."""
    return Path(get_upload_folder()) / RESULTS_FOLDER


def shown_again(path: str | Path) -> None:
    """A file in the cache is on show once more: its age starts anew (`sweep` goes by ctime, which this sets).
    FileNotFoundError when a sweep has deleted it already."""
    os.utime(path)


def _older_than(path: Path, age: float, now: float) -> bool:
    return now - path.lstat().st_ctime > age  # ctime, as `delete_files_created_by_app` (reshowing touches it)


def sweep(folder: Path, age: float, now: float | None = None) -> int:
    """Delete the files under `folder` (one level of sub-folders, as `cached_file` writes them) older than `age`
    seconds, then the sub-folders that are empty and as old; how many files went."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir() and not entry.is_symlink():
                for file in list(entry.iterdir()):
                    if _older_than(file, age, now):
                        file.unlink()
                        removed += 1
                if _older_than(entry, age, now) and not any(entry.iterdir()):
                    entry.rmdir()  # deleting its files made it new: it goes at a later sweep
            elif _older_than(entry, age, now):
                entry.unlink()
                removed += 1
        except OSError:  # gone already (Gradio's own sweep) or just written into: the next sweep sees it again
            continue
    return removed


async def _sweep_on_schedule(frequency: float, age: float) -> None:
    while True:
        await asyncio.sleep(frequency)
        try:
            removed = await anyio.to_thread.run_sync(sweep, results_folder(), age)
        except Exception:  # noqa: BLE001  # a sweep that failed must not end the schedule
            log.exception("sweeping the cached results failed")
            continue
        if removed:
            log.info("deleted %d cached result file(s) older than %d s", removed, age)


def sweeping_lifespan(frequency: float, age: float, inner: Lifespan | None = None) -> Lifespan:
    """A FastAPI lifespan (`launch(app_kwargs={"lifespan": ...})`; Gradio runs it inside its own) that sweeps
    `results_folder()` every `frequency` seconds while the server runs, around `inner` when given."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Any]:
        task = asyncio.create_task(_sweep_on_schedule(frequency, age))
        try:
            async with inner_state(inner, app) as state:
                yield state
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    return lifespan
