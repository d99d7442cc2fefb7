"""A folder of model files named by file stem (textual-inversion embeddings, LoRAs, single-file checkpoints): which
files are used, and why each other one is not; a safetensors file's header, read alone; and the folder's stamp,
which changes when a file is added, removed, renamed or rewritten, so a reader can tell it is time to scan again.

Only `.safetensors` files and pickles (listed to be refused by the reader, never opened) are looked at; a
stem must be a plain name (a prompt writes it) and unique regardless of case. No torch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth")
LOOKED_AT = (".safetensors", *PICKLE_SUFFIXES)  # the files a scan (and a stamp) looks at
NAME = re.compile(r"^[\w][\w.\-+ ]{0,63}$")
MAX_HEADER_BYTES = 16 * 2**20  # a safetensors JSON header: a LoRA's is tens of kilobytes, a whole SD2 file's ~0.2 MB
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


def safetensors_header(path: Path, refusal: type[Exception]) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> {"dtype", "shape", "data_offsets"}), its metadata
    left out; raises `refusal` saying why when it is not one. Reads the header only."""
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise refusal(f"{path.name}: not a safetensors file (too short)")
        length = struct.unpack("<Q", head)[0]
        if length > MAX_HEADER_BYTES:
            raise refusal(f"{path.name}: not a safetensors file (a {length}-byte header)")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, ValueError) as error:
            raise refusal(f"{path.name}: not a safetensors file (its header is no JSON)") from error
    if not isinstance(header, dict):
        raise refusal(f"{path.name}: not a safetensors file (its header is no JSON object)")
    header.pop("__metadata__", None)
    return header


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
