"""Keeping a finished result: its provenance marks, one PNG encode, the outputs folder, the in-memory history.

`ResultKeeper.keep` marks every image (the invisible watermark unless it is off, the XMP "AI generated"
marker), encodes each as PNG once with its parameters (`Result.png`; a mask or depth map too, `Result.aux_png`),
hands the result to the outputs folder's `ResultWriter` (`sd2_app.api.saver`; none when saving is off) and puts
a `HistoryEntry` at the front of a short history; each phase's seconds go into the result's `timings`. One
keeper per Service, which delegates to it.

History is shared by every visitor of a public app, and any visitor may be a script, so it is kept fairly:

- A result is listed only under an owner who can ask for it again: a visitor with the server's cookie, or no
  owner at all (the Service used directly). An owner name made with `unlisted` (a cookieless request's one-off
  visitor id, an MCP or A1111-API call, which get their images in the response) lists nothing: such results are
  saved to the outputs folder when saving is on, and take no History place from anyone.
- Each owner keeps its `history_size` most recent entries, whatever the others do.
- All entries together hold at most `history_max_bytes` (decoded pixels and PNG files): the entry count alone
  would not bound memory, since one X/Y/Z plot of 64 cells at 1024x1024 holds hundreds of MB. Over it, the owner
  holding the most bytes among those with more than one entry loses its oldest entry first, so one owner's
  flood never pushes out another owner's only entry; only when every owner is down to one entry do the oldest
  go. The newest entry always stays, so its visitor can see it in History.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sd2_app.api.outputs import folder_usage
from sd2_app.api.results import HistoryEntry, Result
from sd2_app.api.saver import ResultWriter
from sd2_app.api.timing import timed
from sd2_app.pipelines.metadata import encode_pngs, mark_ai_generated
from sd2_app.pipelines.watermark import embed

log = logging.getLogger(__name__)

HISTORY_SIZE = 50  # the entries each owner keeps, by default
HISTORY_MAX_BYTES = 1024**3  # the images the in-memory history may hold (pixels and PNG files together)
UNLISTED = "unlisted:"  # how the name of an owner who can never ask for History begins (`unlisted`)


def unlisted(caller: str) -> str:
    """The owner name for results of `caller` that nobody can ask for in History: they are not kept there."""
    return UNLISTED + caller


def listed(owner: str | None) -> bool:
    """Whether results of `owner` go into History (see the module docstring)."""
    return owner is None or not owner.startswith(UNLISTED)


def png_sha256(data: bytes) -> str:
    """The hex sha256 of a PNG file, computed once when it is encoded: the UI names the file it shows by it
    (sd2_app/ui/runner.py, `cached_file`), so showing the image again, in History too, hashes nothing."""
    return hashlib.sha256(data).hexdigest()


def entry_bytes(entry: HistoryEntry) -> int:
    """What an entry holds in memory: its images' pixels, its PNG files and its parameters text."""
    pixels = sum(image.width * image.height * len(image.getbands()) for image in entry.images)
    return pixels + sum(map(len, entry.png)) + len(entry.parameters)


class ResultKeeper:
    """The results one Service has kept: saved to `outputs_dir` (None: not saved) and listed in its history."""

    def __init__(
        self,
        outputs_dir: str | Path | None,
        *,
        keep_days: float | None = None,  # delete saved results older than this (None: keep them)
        history_size: int = HISTORY_SIZE,  # entries each owner keeps
        history_max_bytes: int = HISTORY_MAX_BYTES,
        watermark: bool = True,
        save_in_background: bool = False,
    ) -> None:
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self.keep_days = keep_days
        self.watermark = watermark
        self._writer = (ResultWriter(self.outputs_dir, keep_days=keep_days, background=save_in_background)
                        if self.outputs_dir is not None else None)
        self._history: list[HistoryEntry] = []  # every owner's entries, newest first
        self.history_size = history_size
        self.history_max_bytes = history_max_bytes
        self._lock = threading.Lock()  # guards the history and the last seed
        self.last_seed: int | None = None
        # a batch's images are PNG-encoded at once (threads start when first used)
        self._encoders = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="sd2-png")

    def keep(self, result: Result, owner: str | None = None) -> Result:
        """Provenance (the watermark unless off, the XMP marker), one PNG encode, saving, history; each timed."""
        timings = result.timings
        with timed(timings, "mark"):
            result.images = [mark_ai_generated(embed(im) if self.watermark else im) for im in result.images]
        aux = {name: image for name, image in (("mask", result.mask_image), ("depth", result.depth_image))
               if image is not None}
        with timed(timings, "encode"):
            encoded = encode_pngs([*result.images, *aux.values()], self._encoders)
            result.png, result.aux_png = encoded[:len(result.images)], dict(zip(aux, encoded[len(result.images):]))
            result.png_sha256 = [png_sha256(data) for data in result.png]
        if self._writer is not None:
            with timed(timings, "save"):
                try:
                    result.saved = self._writer.save(result)
                except OSError as error:  # a full disk or a read-only folder must not throw the images away
                    log.warning("could not save to %s: %s", self.outputs_dir, error)
                    result.warnings.append(
                        f"The images could not be saved to the outputs folder ({error.strerror}).")
        with timed(timings, "history"):
            entry = HistoryEntry(result.created, result.task, result.seed, result.parameters, tuple(result.images),
                                 tuple(result.saved), owner, tuple(result.png), tuple(result.png_sha256),
                                 tuple(result.image_seeds))
            self.remember(entry)
            with self._lock:
                self.last_seed = result.seed
        return result

    def remember(self, entry: HistoryEntry) -> None:
        """Put `entry` at the front of the history, unless its owner is unlisted; then trim (module docstring)."""
        if listed(entry.owner):
            with self._lock:
                self._history.insert(0, entry)
                self._trim_history(entry.owner)

    def _drop_oldest_of(self, owner: str | None) -> HistoryEntry:
        index = max(i for i, entry in enumerate(self._history) if entry.owner == owner)
        return self._history.pop(index)

    def _trim_history(self, owner: str | None) -> None:
        """Bound `owner`'s entries to `history_size`, then all entries to `history_max_bytes` (module docstring)."""
        while sum(1 for entry in self._history if entry.owner == owner) > max(self.history_size, 1):
            self._drop_oldest_of(owner)
        held: dict[str | None, int] = {}
        counts: Counter[str | None] = Counter()
        for entry in self._history:
            held[entry.owner] = held.get(entry.owner, 0) + entry_bytes(entry)
            counts[entry.owner] += 1
        total = sum(held.values())
        while len(self._history) > 1 and total > self.history_max_bytes:
            several = [name for name, count in counts.items() if count > 1]
            victim = (self._drop_oldest_of(max(several, key=held.__getitem__)) if several
                      else self._history.pop())  # every owner has one entry: the oldest goes, the newest stays
            size = entry_bytes(victim)
            held[victim.owner] -= size
            counts[victim.owner] -= 1
            total -= size

    def history(self, owner: str | None = None) -> list[HistoryEntry]:
        """Recent results, newest first; only `owner`'s when one is given."""
        with self._lock:
            return [entry for entry in self._history if owner is None or entry.owner == owner]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every result handed to the background writer is on disk (False: `timeout` passed first)."""
        return self._writer.flush(timeout) if self._writer is not None else True

    def disk_usage(self) -> tuple[int, int, float | None] | None:
        """(files, bytes, days kept) of the saved results; None when saving is off."""
        if self.outputs_dir is None:
            return None
        files, nbytes = folder_usage(self.outputs_dir)
        return files, nbytes, self.keep_days
