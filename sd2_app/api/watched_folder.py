"""A folder's library (LoRAs, textual-inversion embeddings) read again when the folder's files change.

A1111 looks at its embeddings folder again before each generation and reads its LoRA list again on Refresh, so a
file put there is used without a restart; users expect the same here. `WatchedFolder.library` is the library as
last read; when `recheck_s` has passed since the last look it first compares the folder with the library's stamp
(`sd2_app.loading.folder_scan.folder_stamp`: a directory read and a stat per file) and, when a file was added,
removed, renamed or rewritten, reads it again (`rescanned`). A caller that finds another thread reading gets the
library as it was, so no request waits on a scan it did not start; `refresh` looks at once and waits (the A1111
API's /refresh-loras and /refresh-embeddings). A library is immutable: a job that took one keeps it, whatever a
later read makes. Each process looks for itself (a Ray front and its replicas; ZeroGPU's forked workers).
"""

from __future__ import annotations

import threading
import time
from typing import Generic, Protocol, TypeVar

from sd2_app.fork_safety import renew_in_forked_child


class FolderLibrary(Protocol):
    def changed(self) -> bool:
        """Whether the folder's files are not those the library was read from."""
        ...

    def rescanned(self) -> FolderLibrary:
        """The library of the same folder (and settings) read now."""
        ...


L = TypeVar("L", bound=FolderLibrary)

RECHECK_S = 2.0  # how often, at most, `WatchedFolder.library` looks whether the folder changed


class WatchedFolder(Generic[L]):
    """`library`, read again when its folder's files change (module docstring)."""

    recheck_s = RECHECK_S  # the seconds between looks, at least: set on one instance, or on the class for all

    def __init__(self, library: L) -> None:
        self._library = library
        self._checked = time.monotonic()
        self._reading = threading.Lock()
        renew_in_forked_child(self, _reading=threading.Lock)  # ZeroGPU's forked workers (sd2_app/fork_safety.py)

    @property
    def library(self) -> L:
        """The library; read again first when `recheck_s` has passed since the last look and the files changed."""
        if time.monotonic() - self._checked >= self.recheck_s and self._reading.acquire(blocking=False):
            try:
                self._read_if_changed()
            finally:
                self._reading.release()
        return self._library

    def refresh(self) -> L:
        """Look at the folder now and read it again if its files changed; the library."""
        with self._reading:
            self._read_if_changed()
        return self._library

    def _read_if_changed(self) -> None:
        self._checked = time.monotonic()
        if self._library.changed():
            self._library = self._library.rescanned()  # type: ignore[assignment]
