"""The in-memory history's bounds (through the served app: tests/reliability/test_reliability_addresses.py,
`test_history_memory_is_bounded_in_bytes_not_only_in_entries`, and tests/reliability/test_reliability_history.py)."""

from __future__ import annotations

from PIL import Image

from sd2_app.api.keeper import HISTORY_MAX_BYTES, ResultKeeper, entry_bytes, unlisted
from sd2_app.api.results import HistoryEntry


def test_an_entry_counts_its_pixels_and_its_png_files() -> None:
    images = (Image.new("RGB", (64, 32)), Image.new("L", (10, 10)), Image.new("RGBA", (8, 8)))
    entry = HistoryEntry(0.0, "txt2img", 1, "", images, (), "someone", (b"x" * 1000, b"y" * 24))
    assert entry_bytes(entry) == 64 * 32 * 3 + 10 * 10 + 8 * 8 * 4 + 1024
    assert entry_bytes(HistoryEntry(0.0, "txt2img", 1, "a cat", (), (), None)) == 5  # its parameters text
    assert HISTORY_MAX_BYTES == 1024**3


def _entry(owner: str | None, seed: int) -> HistoryEntry:
    return HistoryEntry(float(seed), "txt2img", seed, "", (Image.new("L", (10, 10)),), (), owner)  # 100 bytes


def _seeds(keeper: ResultKeeper, owner: str | None = None) -> list[int]:
    return [entry.seed for entry in keeper.history(owner)]


def test_each_owner_keeps_its_newest_entries_and_unlisted_owners_none() -> None:
    keeper = ResultKeeper(None, history_size=2)
    for seed, owner in enumerate(["a", "b", "a", "a", unlisted("mcp"), "a", None, None, None]):
        keeper.remember(_entry(owner, seed))
    assert _seeds(keeper, "a") == [5, 3] and _seeds(keeper, "b") == [1] and _seeds(keeper) == [8, 7, 5, 3, 1]
    assert _seeds(keeper, unlisted("mcp")) == []


def test_over_the_byte_bound_the_owner_holding_most_loses_its_oldest_first() -> None:
    keeper = ResultKeeper(None, history_max_bytes=450)  # four entries and a half
    for seed, owner in enumerate(["quiet", "flood", "flood", "other", "flood", "flood", "flood"]):
        keeper.remember(_entry(owner, seed))
    assert _seeds(keeper) == [6, 5, 3, 0]  # the flood keeps its newest two; the others their only one
    keeper.history_max_bytes = 250  # room for two and a half: now each owner is down to its newest, then the oldest go
    keeper.remember(_entry("late", 7))
    assert _seeds(keeper) == [7, 6]
    keeper.history_max_bytes = 1
    keeper.remember(_entry("late", 8))
    assert _seeds(keeper) == [8]  # the newest always stays
