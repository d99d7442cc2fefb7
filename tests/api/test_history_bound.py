"""The in-memory history's byte bound (through the served app: tests/reliability/test_reliability_addresses.py,
`test_history_memory_is_bounded_in_bytes_not_only_in_entries`)."""

from __future__ import annotations

from PIL import Image

from sd2_app.api.keeper import HISTORY_MAX_BYTES, entry_bytes
from sd2_app.api.results import HistoryEntry


def test_an_entry_counts_its_pixels_and_its_png_files() -> None:
    images = (Image.new("RGB", (64, 32)), Image.new("L", (10, 10)), Image.new("RGBA", (8, 8)))
    entry = HistoryEntry(0.0, "txt2img", 1, "", images, (), "someone", (b"x" * 1000, b"y" * 24))
    assert entry_bytes(entry) == 64 * 32 * 3 + 10 * 10 + 8 * 8 * 4 + 1024
    assert HISTORY_MAX_BYTES == 1024**3
