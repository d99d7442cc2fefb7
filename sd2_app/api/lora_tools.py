"""The Service's LoRAs: the host's folder (sd2_app/loading/loras.py), which of them a prompt uses
(sd2_app/lora_tags.py), and the job that runs with them merged (sd2_app/pipelines/lora.py).

A request's LoRAs are read from its prompt where its job starts, so every front end (the web UI, the API,
A1111's, MCP, a plot's cells, a batch of users) gets them the same way; validation has already warned about
the names the folder lacks (they are left out, as A1111 leaves them out). Nothing here imports torch until a
prompt uses a LoRA.

The folder is read again when its files change (`sd2_app.api.watched_folder`), as A1111's Refresh of its LoRA
list does, so a LoRA put there is usable without a restart; validation's LoRA names follow (`current_in`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sd2_app.api.watched_folder import WatchedFolder
from sd2_app.loading.loras import LoraLibrary
from sd2_app.lora_tags import LoraTag, lora_tags

if TYPE_CHECKING:
    from sd2_app.api.checks import Catalog
    from sd2_app.pipelines.lora import LoraCache


class LoraTools:
    """One Service's LoRA library, read again when the folder changes (`watch`), and the cache of the files its
    jobs read."""

    def __init__(self, library: LoraLibrary | None = None) -> None:
        self.watch = WatchedFolder(library or LoraLibrary())
        self._cache: LoraCache | None = None

    @property
    def library(self) -> LoraLibrary:
        return self.watch.library

    def refresh(self) -> LoraLibrary:
        """Look at the folder now (A1111's /refresh-loras); the library."""
        return self.watch.refresh()

    def names(self) -> list[str]:
        return self.library.names()

    def current_in(self, catalog: Catalog) -> Catalog:
        """`catalog` with the LoRA names the folder has now, where this library reads a folder (validation warns
        of a tag whose name it lacks); as it is otherwise."""
        library = self.library
        names = frozenset(library.files)
        if library.folder is None or names == catalog.loras:
            return catalog
        return dataclasses.replace(catalog, loras=names)

    def refused(self) -> dict[str, str]:
        return dict(self.library.refused)

    def used(self, prompt: str, library: LoraLibrary | None = None) -> list[LoraTag]:
        """The LoRAs of `prompt` that `library` (None: the current one) has (a validated prompt's tags are well
        formed)."""
        files = (library or self.library).files
        return [tag for tag in lora_tags(prompt) if tag.name in files] if files else []

    @contextmanager
    def merged(self, components: Any, prompt: str) -> Iterator[Any]:
        """`components` (a lent copy) with the LoRAs `prompt` uses merged into its models' weights for the
        block, and their names and hashes in its `loras` (the parameters' `Lora hashes`)."""
        library = self.library  # one library for the whole job, whatever a rescan does meanwhile
        tags = self.used(prompt, library)
        if not tags or not dataclasses.is_dataclass(components):
            yield components
            return
        from sd2_app.pipelines.lora import LoraCache, merged  # torch

        if self._cache is None:
            self._cache = LoraCache()
        weights = [(self._cache.get(library.files[tag.name]), tag.te, tag.unet) for tag in tags]
        with merged(components, weights):
            yield dataclasses.replace(components, loras=tuple((w.name, w.shorthash) for w, _, _ in weights))
