"""What the Service needs from the model manager, as a typed protocol (`ModelManager` implements it).

The service knows the manager only through these methods: it never reads or writes the manager's state.
Test doubles implement the same protocol (tests/ui_doubles.py). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sd2_app.checkpoints.catalog import CheckpointSpec
    from sd2_app.checkpoints.components import Components


@runtime_checkable
class ModelHost(Protocol):
    """Loads checkpoints and lends them to one job at a time."""

    @property
    def registry(self) -> Mapping[str, CheckpointSpec]:
        """The checkpoints it can load, by key (read only: use `add_checkpoints` to add some)."""
        ...

    def add_checkpoints(self, specs: Mapping[str, CheckpointSpec]) -> None:
        """Make more checkpoints loadable (the operator's allow-listed repos)."""
        ...

    def use(self, key: str) -> AbstractContextManager[Components]:
        """Hold the GPU for one job; yields the checkpoint's `Components` (loaded on first use)."""
        ...

    def free_memory(self) -> None:
        """Inside `use`: move every other checkpoint off the GPU (the fallback ladder's low-memory rung)."""
        ...

    def tokenizer(self, key: str) -> Any:
        """`key`'s tokenizer without loading its models (None where there is none, e.g. a test double)."""
        ...

    def load(self, key: str) -> object: ...

    def unload(self, key: str) -> bool:
        """Forget `key`; False where it was not loaded."""
        ...

    def report(self) -> tuple[Sequence[object], object]:
        """(one row per checkpoint: where it is loaded, from which repo; bytes per memory tier against the
        budgets), read together: the UI shows both at once, and a remote host answers in one round trip."""
        ...
