"""The outputs folder: one folder per day of numbered PNGs, each written whole, none overwritten, old ones pruned.

Names are `<number>-<seed>-<task>[-mask|-depth].png`; the number is one past the highest in the day's folder,
read with any number of digits (past 99999 the names simply grow longer). A file is written under a hidden
temporary name in the same folder and renamed into place, so a half-written PNG is never visible under its
final name, and a name that exists already is never replaced.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

from PIL import Image

# zlib level of the PNGs the app encodes (results, previews): level 1 instead of PIL's 6 costs a little size and
# saves most of the encoding time (figures: docs/PERFORMANCE.md, "The whole request").
FAST_PNG_LEVEL = 1

_NUMBERED = re.compile(r"(\d+)-")
_DAY_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")


def fast_png(image: Image.Image) -> bytes:
    """`image` as a PNG file at `FAST_PNG_LEVEL`, with no text chunks (a preview, a mask or depth map shown)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=FAST_PNG_LEVEL)
    return buffer.getvalue()


def next_number(folder: Path) -> int:
    """One past the highest number in use in `folder` (0 for an empty one)."""
    used = [int(match.group(1)) for path in folder.glob("*.png") if (match := _NUMBERED.match(path.name))]
    return max(used, default=-1) + 1


def save_new_png(data: bytes, folder: Path, name: str) -> Path:
    """Write the encoded PNG `data` as `folder/name`, or under the next free number when that name is taken."""
    temporary = folder / f".{name}.{os.getpid()}.tmp"
    try:
        temporary.write_bytes(data)
        target = folder / name
        while target.exists():  # another writer took the number (only this process numbers under a lock)
            number, _, rest = target.name.partition("-")
            target = folder / f"{int(number) + 1:05d}-{rest}"
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def prune_older_than(outputs: Path, seconds: float) -> int:
    """Delete saved PNGs older than `seconds` from the day folders, then the emptied folders; returns the count."""
    cutoff = time.time() - seconds
    removed = 0
    for folder in (p for p in outputs.iterdir() if p.is_dir() and _DAY_FOLDER.fullmatch(p.name)):
        for path in folder.glob("*.png"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed


def folder_usage(outputs: Path) -> tuple[int, int]:
    """(files, bytes) under `outputs`."""
    files = nbytes = 0
    if outputs.is_dir():
        for path in outputs.rglob("*"):
            if path.is_file():
                files += 1
                nbytes += path.stat().st_size
    return files, nbytes
