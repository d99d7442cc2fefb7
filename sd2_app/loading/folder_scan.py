"""A folder of small model files that prompts name by file stem (textual-inversion embeddings, LoRAs): which files
are used, and why each other one is not; and the folder's stamp, which changes when a file is added, removed,
renamed or rewritten, so a reader can tell it is time to scan again.

Only `.safetensors` files and pickles (listed to be refused by the reader, never opened) are looked at; a
stem must be a plain name (a prompt writes it) and unique regardless of case. No torch.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth")
LOOKED_AT = (".safetensors", *PICKLE_SUFFIXES)  # the files a scan (and a stamp) looks at
NAME = re.compile(r"^[\w][\w.\-+ ]{0,63}$")
T = TypeVar("T")


def scan_folder(folder: Path, read: Callable[[Path], T], refusal: type[Exception],
                kind: str) -> tuple[dict[str, T], dict[str, str]]:
    """({stem: read(path)}, {file name: why it is not used}) for the files of `folder` (not recursive), sorted
    by name; `read` raises `refusal` with the reason for a file it cannot use. Each refusal is logged as
    "`kind` not used: ..."."""
    found: dict[str, T] = {}
    refused: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in LOOKED_AT:
            continue
        try:
            if not NAME.match(path.stem):
                raise refusal(f"{path.name}: the name must be letters, digits, '.', '-', '+', '_' or spaces (at "
                              "most 64), starting with a letter or digit")
            if path.stem.lower() in {name.lower() for name in found}:
                raise refusal(f"{path.name}: another file already has the name {path.stem!r}")
            found[path.stem] = read(path)
        except refusal as error:
            refused[path.name] = str(error)
            log.warning("%s not used: %s", kind, error)
        except OSError as error:  # its text names the full path: visitors read `refused` (the API's list)
            refused[path.name] = f"{path.name}: could not be read ({error.strerror or type(error).__name__})"
            log.warning("%s not used: %s", kind, error)
    log.info("%d %s(s) in %s", len(found), kind, folder)
    return found, refused


def folder_stamp(folder: Path | None) -> tuple[tuple[str, int, int], ...]:
    """(name, size, modification time in ns) of each file `scan_folder` looks at in `folder`, by name; () when
    there is no such folder. One directory read and one stat per such file."""
    try:
        entries = list(os.scandir(folder)) if folder is not None else []
    except OSError:
        return ()
    stamp = []
    for entry in entries:
        if Path(entry.name).suffix.lower() in LOOKED_AT:
            try:
                info = entry.stat()
            except OSError:
                continue  # removed since the directory was read
            stamp.append((entry.name, info.st_size, info.st_mtime_ns))
    return tuple(sorted(stamp))


def folder_changed(folder: Path | None, stamp: tuple[tuple[str, int, int], ...]) -> bool:
    """Whether `folder` holds other files than it did when its stamp was `stamp`; a folder that did not exist
    then (stamp ()) and does now counts. False without a folder."""
    return folder is not None and folder_stamp(folder) != stamp
