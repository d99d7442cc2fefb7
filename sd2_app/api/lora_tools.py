"""The Service's LoRAs: the host's folder (sd2_app/loading/loras.py), which of them a prompt uses
(sd2_app/lora_tags.py), and the job that runs with them merged (sd2_app/pipelines/lora.py).

A request's LoRAs are read from its prompt where its job starts, so every front end (the web UI, the API,
A1111's, MCP, a plot's cells, a batch of users) gets them the same way; validation has already warned about
the names the folder lacks (they are left out, as A1111 leaves them out). Nothing here imports torch until a
prompt uses a LoRA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sd2_app.loading.loras import LoraLibrary
from sd2_app.lora_tags import LoraTag, lora_tags

if TYPE_CHECKING:
    from sd2_app.pipelines.lora import LoraCache


class LoraTools:
    """One Service's LoRA library and the cache of the files its jobs read."""

    def __init__(self, library: LoraLibrary | None = None) -> None:
        self.library = library or LoraLibrary()
        self._cache: LoraCache | None = None

    def names(self) -> list[str]:
        return self.library.names()

    def refused(self) -> dict[str, str]:
        return dict(self.library.refused)

    def used(self, prompt: str) -> list[LoraTag]:
        """The LoRAs of `prompt` that the library has (a validated prompt's tags are well formed)."""
        return [tag for tag in lora_tags(prompt) if tag.name in self.library.files] if self.library.files else []

    @contextmanager
    def merged(self, components: Any, prompt: str) -> Iterator[Any]:
        """`components` (a lent copy) with the LoRAs `prompt` uses merged into its models' weights for the
        block, and their names and hashes in its `loras` (the parameters' `Lora hashes`)."""
        tags = self.used(prompt)
        if not tags or not dataclasses.is_dataclass(components):
            yield components
            return
        from sd2_app.pipelines.lora import LoraCache, merged  # torch

        if self._cache is None:
            self._cache = LoraCache()
        weights = [(self._cache.get(self.library.files[tag.name]), tag.te, tag.unet) for tag in tags]
        with merged(components, weights):
            yield dataclasses.replace(components, loras=tuple((w.name, w.shorthash) for w, _, _ in weights))
