"""LoRA files for SD2: a folder of safetensors files in the layout A1111 and kohya-ss/sd-scripts write.

Each LoRA layer is a pair `<layer>.lora_down.weight` (rank, in[, kh, kw]) and `<layer>.lora_up.weight`
(out, rank[, 1, 1]) with an optional scalar `<layer>.alpha`; `<layer>` is `lora_unet_` or `lora_te_` followed
by the diffusers / transformers module path with "_" for "." (sd-scripts networks/lora.py, `LoRANetwork`). The
layer's weight change is multiplier x alpha / rank x up @ down (Hu et al. 2021, "LoRA", eq. 3;
pipelines/lora.py merges it).

Here only the header of each file is read (the tensors' names, dtypes and shapes), at start-up and whenever
the folder changes (`sd2_app.api.lora_tools`): the names say the layout and the shapes the model it was made
for. A file is refused, with the reason, when it is a pickle, too large, unreadable, another layout (LyCORIS
LoHa/LoKr, diffusers/PEFT, SDXL's) or for SD 1.x. The tensors are read when a prompt first uses the file
(pipelines/lora.py). No torch: a front end that holds no models lists the LoRAs too.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd2_app.loading.embeddings import SD1_WIDTH, SD2_WIDTH
from sd2_app.loading.folder_scan import PICKLE_SUFFIXES, folder_changed, folder_stamp, scan_folder

MAX_FILE_BYTES = 2**30  # 1 GiB: a LoRA (even a full-rank LoCon) for SD2 is well below it
MAX_HEADER_BYTES = 16 * 2**20  # the JSON header; a LoRA's is tens of kilobytes
PREFIXES = ("lora_unet_", "lora_te_")
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
# key fragments of layouts that are not plain LoRA, each with what to call it
_OTHER_LAYOUTS = (
    ("hada_w1", "a LyCORIS LoHa"), ("lokr_w1", "a LyCORIS LoKr"), (".lora_mid.", "a LyCORIS LoCon with a Tucker "
     "core"), (".oft_", "an OFT"), ("lora_te1_", "an SDXL"), ("lora_te2_", "an SDXL"),
    ("lora_unet_input_blocks", "an SDXL"), (".lora_A.", "a diffusers/PEFT"), (".lora.down.", "a diffusers"),
)
CROSS_KEY = "attn2_to_k" + DOWN  # a cross-attention key projection: its input is the text encoder's width


class LoraFileError(ValueError):
    """A file in the LoRA folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class LoraFile:
    """One usable LoRA file: its prompt name (the file stem), where it is, its size and its layer names."""

    name: str
    path: Path
    size: int
    layers: tuple[str, ...] = field(repr=False)


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> {"dtype", "shape", "data_offsets"}); raises
    LoraFileError when it is not one."""
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise LoraFileError(f"{path.name}: not a safetensors file (too short)")
        length = struct.unpack("<Q", head)[0]
        if length > MAX_HEADER_BYTES:
            raise LoraFileError(f"{path.name}: not a safetensors file (a {length}-byte header)")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, ValueError) as error:
            raise LoraFileError(f"{path.name}: not a safetensors file (its header is no JSON)") from error
    if not isinstance(header, dict):
        raise LoraFileError(f"{path.name}: not a safetensors file (its header is no JSON object)")
    header.pop("__metadata__", None)
    return header


def lora_layers(keys: Iterable[str]) -> tuple[str, ...]:
    """The LoRA layers among a file's tensor names: each `<layer>` (with a LoRA prefix) that has both its
    lora_down and its lora_up weight, sorted."""
    names = set(keys)
    return tuple(sorted(key[:-len(DOWN)] for key in names if key.endswith(DOWN) and key.startswith(PREFIXES)
                        and key[:-len(DOWN)] + UP in names))


def _layers(header: dict[str, Any], name: str) -> tuple[str, ...]:
    """The LoRA layers the header describes, or LoraFileError naming what the file is instead."""
    for fragment, what in _OTHER_LAYOUTS:
        if any(fragment in key for key in header):
            raise LoraFileError(f"{name}: {what} file; LoRA files in A1111's (kohya-ss) layout for SD 2.x are read")
    downs = sorted(key[:-len(DOWN)] for key in header if key.endswith(DOWN) and key.startswith(PREFIXES))
    if not downs:
        raise LoraFileError(f"{name}: no LoRA layers (lora_unet_*/lora_te_* with lora_down and lora_up weights)")
    missing = [layer for layer in downs if layer + UP not in header]
    if missing:
        raise LoraFileError(f"{name}: the layer {missing[0]} has a lora_down weight without its lora_up weight")
    layers = lora_layers(header)
    width = next((shape[1] for key, info in header.items() if key.endswith(CROSS_KEY)
                  and len(shape := info.get("shape") or []) >= 2), None)
    if width == SD1_WIDTH:  # any other width is checked against the model when a job merges it
        raise LoraFileError(f"{name}: a LoRA for SD 1.x ({SD1_WIDTH}-wide text features); SD 2.x reads "
                            f"{SD2_WIDTH}-wide ones")
    return layers


def describe(path: Path) -> LoraFile:
    """Check one file's size and header (`scan_folder` checked its name); raises LoraFileError."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraFileError(f"{path.name}: a pickle file, which this app never opens (unpickling can run code); "
                            "use the .safetensors version of the LoRA")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise LoraFileError(f"{path.name}: {size} bytes; a LoRA file may have {MAX_FILE_BYTES} at most")
    return LoraFile(path.stem, path, size, _layers(read_header(path), path.name))


@dataclass(frozen=True)
class LoraLibrary:
    """The LoRA files of one folder as `scan` described them; immutable, so requests can share it freely (a folder
    whose files changed is read again into a new library: `sd2_app.api.watched_folder`)."""

    folder: Path | None = None
    files: dict[str, LoraFile] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # file name -> why it is not used
    stamp: tuple[tuple[str, int, int], ...] = ()  # the folder as it was scanned (`folder_stamp`)

    @classmethod
    def scan(cls, folder: str | Path | None) -> LoraLibrary:
        """Every LoRA file in `folder` (not recursive). A folder that does not exist is an empty library; files
        that cannot be used are logged and kept in `refused` with the reason."""
        if folder is None or not Path(folder).is_dir():
            return cls(None if folder is None else Path(folder))
        stamp = folder_stamp(Path(folder))  # before the scan: a file changed during it is scanned again next time
        found, refused = scan_folder(Path(folder), describe, LoraFileError, "LoRA")
        return cls(Path(folder), found, refused, stamp)

    def changed(self) -> bool:
        """Whether the folder holds other files than when it was scanned (`folder_changed`)."""
        return folder_changed(self.folder, self.stamp)

    def rescanned(self) -> LoraLibrary:
        return LoraLibrary.scan(self.folder)

    def names(self) -> list[str]:
        return sorted(self.files)
